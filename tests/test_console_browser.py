"""The web console in Debian's Chromium, driven by Playwright, against the
real ``twistd -n kwp``: sign-in and sign-out, each view whose API kwp has,
each action with its effect checked through the API, what a channel token may
not see, themes, a phone-sized screen and the keyboard.

The history (CONTRACT §8) and the live stream (§9) are not in kwp yet: their
views are checked here to say so in words, and, at the end, against answers
shaped as the contract says, given to the page by the test (page.route).

KWP_SCREENSHOTS=1 also writes the pictures of docs/CONSOLE.md to docs/console/."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from playwright.sync_api import expect

from tests.reliability.clients import post, request, wait_for
from tests.support import ROOT, Daemon, write_config

ADMIN = "admin-secret-token"
UI_TOKEN = "console-ui-token"
GITHUB_SECRET = "gh-secret"
SHOTS = ROOT / "docs" / "console"
EVERY_QUEUE = ["github/default", "open/default", "push/default", "dead/default", "gh/ci", "gh/chat"]
# Playwright's waits (the overview polls every 3 s).
expect.set_options(timeout=10_000)


class _Target(BaseHTTPRequestHandler):
    """A forward target answering server.status (502 until a test changes it)."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b"ok" if self.server.status == 200 else b"Bad Gateway"
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def target():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Target)
    server.status = 502
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def kwp(tmp_path_factory, target):
    workdir = tmp_path_factory.mktemp("console")
    url = f"http://127.0.0.1:{target.server_address[1]}/hook"
    forward = {"url": url, "interval-seconds": 3600, "timeout-seconds": 5}
    config = {
        "server": {"admin-token": ADMIN},
        "channels": [
            {"name": "github", "token": "github-token", "provider": "github", "webhook-secret": GITHUB_SECRET},
            {"name": "open", "token": "open-token", "note": "pulled by the deploy job"},
            {"name": "push", "token": "push-token", "forward": {**forward, "max-attempts": 10}},
            {"name": "dead", "token": "dead-token", "forward": {**forward, "max-attempts": 1}},
            {
                "name": "gh",
                "token": "gh-token",
                "consumers": [
                    {"name": "ci", "token": "ci-token"},
                    {"name": "chat", "forward": {**forward, "max-attempts": 10}},
                ],
            },
        ],
    }
    d = Daemon(workdir, write_config(workdir / "config.yml", config), workdir / "kwp.db",
               env={"UI_ACCESS_TOKEN": UI_TOKEN}).start()
    yield d
    d.kill()


@pytest.fixture
def open_page(browser, kwp):
    """open_page(**context options): a fresh tab (its own sessionStorage);
    at the end, no script error and no Content-Security-Policy violation may
    have happened in it."""
    contexts = []
    problems: list[str] = []

    def make(**options):
        options = {"viewport": {"width": 1100, "height": 760}, **options}
        context = browser.new_context(base_url=kwp.base, permissions=["clipboard-read", "clipboard-write"], **options)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        page.on("console", lambda m: "Content Security Policy" in m.text and problems.append(m.text))
        return page

    yield make
    for context in contexts:
        context.close()
    assert problems == []


@pytest.fixture
def page(open_page):
    return open_page()


def api(kwp, method, path, token=ADMIN, body=None):
    """(status, parsed JSON or None) of one call of the API."""
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    status, _, raw = request(kwp.port, method, path, body, headers)
    return status, json.loads(raw) if raw else None


def store(kwp, channel, payload, headers=None) -> int:
    status, _, body = post(kwp.port, channel, payload, headers)
    assert status == 200, body
    return json.loads(body)["id"]


def consumer(kwp, channel, name="default") -> dict:
    _, body = api(kwp, "GET", "/api/channels")
    return next(c for c in next(c for c in body["channels"] if c["name"] == channel)["consumers"] if c["name"] == name)


def queue_item(kwp, channel, webhook_id, query=""):
    _, body = api(kwp, "GET", f"/api/webhook/{channel}/queue?limit=10000{query}")
    return next((i for i in body["items"] if i["id"] == webhook_id), None)


def pull_ids(kwp, channel, query="", token=ADMIN) -> list[int]:
    status, body = api(kwp, "GET", f"/api/webhook/{channel}/list?limit=10000{query}", token)
    assert status == 200, body
    return [i["id"] for i in body]


def sign_in(page, token=ADMIN):
    page.goto("/")
    page.fill("#token", token)
    page.press("#token", "Enter")
    expect(page.locator("#channels")).to_be_visible()


def rows(page) -> list[str]:
    return page.locator("#channels tr[data-key]").evaluate_all("rows => rows.map(r => r.dataset.key)")


def shot(page, name: str) -> None:
    if os.environ.get("KWP_SCREENSHOTS") == "1":
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_a_bad_token_is_refused_in_words_and_kept_nowhere(page):
    page.goto("/")
    assert page.url.endswith("/ui/")
    shot(page, "sign-in")
    page.fill("#token", "not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text(
        "The token was refused: unknown token (GET /api/channels answered 401 unauthorized)."
    )
    assert page.evaluate("sessionStorage.length") == 0
    assert page.locator("#channels").count() == 0


def test_sign_in_keeps_the_token_in_the_tab_and_sign_out_forgets_it(page):
    sign_in(page)
    assert rows(page) == EVERY_QUEUE
    assert page.evaluate("sessionStorage.getItem('kwp.token')") == ADMIN
    assert page.evaluate("localStorage.getItem('kwp.token')") is None
    assert ADMIN not in page.url
    page.reload()
    expect(page.locator("#channels")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#token")).to_be_visible()
    expect(page.locator("main")).to_contain_text("Signed out.")
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.locator("#token")).to_be_visible()


def test_a_token_kwp_no_longer_accepts_ends_the_session_in_words(page):
    # As after a reload of config.yml took the token away.
    page.goto("/")
    page.evaluate("sessionStorage.setItem('kwp.token', 'removed-by-a-reload')")
    page.reload()
    expect(page.locator("main")).to_contain_text("kwp no longer accepts this token: unknown token. Sign in again.")
    expect(page.locator("#token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_ui_access_token_signs_in_as_an_admin(page):
    sign_in(page, UI_TOKEN)
    assert rows(page) == EVERY_QUEUE


def test_a_channel_token_sees_its_channel_and_no_other(page):
    sign_in(page, "open-token")
    assert rows(page) == ["open/default"]
    page.goto("/ui/#/c/push/queue")
    expect(page.get_by_role("alert")).to_have_text(
        "Could not read the queue: This token may not do that: the token does not give access to channel 'push' "
        "(GET /api/webhook/push/list answered 403 forbidden)."
    )
    assert page.locator("article.item").count() == 0


def test_the_overview_shows_every_queue_and_follows_it_live(page, kwp, target):
    target.status = 502
    store(kwp, "dead", {"doomed": True})
    assert wait_for(lambda: consumer(kwp, "dead")["dead"] == 1, 10)
    sign_in(page)
    open_row = page.locator('#channels tr[data-key="open/default"]')
    depth = consumer(kwp, "open")["queue_size"]
    expect(open_row.locator("td.depth")).to_have_text(str(depth))
    dead_row = page.locator('#channels tr[data-key="dead/default"]')
    expect(dead_row.locator("td.dead")).to_have_text("1")
    expect(dead_row).to_contain_text("unexpected status 502: Bad Gateway")
    expect(dead_row).to_contain_text("forwarding")
    # Stored meanwhile: the overview shows it without a reload.
    store(kwp, "open", {"live": True})
    expect(open_row.locator("td.depth")).to_have_text(str(depth + 1))
    expect(page.locator("main")).to_contain_text("Updated")


def test_a_pull_queue_shows_headers_and_payload_and_copies_the_payload(page, kwp):
    payload = {"title": "<img src=x onerror=window.pwned=1>", "emoji": "\u2603", "n": [1, 2.5, None]}
    webhook_id = store(kwp, "open", payload, {"X-Test": "<b>kept as text</b>"})
    sign_in(page)
    page.get_by_role("link", name="open").click()
    card = page.locator(f'article[data-id="{webhook_id}"]')
    pretty = json.dumps(payload, indent=2, ensure_ascii=False)
    expect(card.locator("pre.payload")).to_have_text(pretty)
    card.get_by_text("Headers (").click()
    expect(card.locator("table.kv")).to_contain_text("x-test<b>kept as text</b>")
    card.get_by_role("button", name="Copy payload").click()
    expect(card).to_contain_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == pretty
    assert page.evaluate("window.pwned") is None
    shot(page, "queue-pull")


def test_delete_asks_first_and_takes_the_webhook_out_of_the_queue(page, kwp):
    keep, gone = store(kwp, "open", {"keep": 1}), store(kwp, "open", {"delete": 1})
    sign_in(page)
    page.goto("/ui/#/c/open/queue")
    card = page.locator(f'article[data-id="{gone}"]')
    card.get_by_role("button", name="Delete").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text(f"Delete webhook #{gone} from this queue of open?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    listed = lambda: [i["id"] for i in api(kwp, "GET", "/api/webhook/open/list?limit=10000")[1]]  # noqa: E731
    assert gone in listed()
    card.get_by_role("button", name="Delete").click()
    dialog.get_by_role("button", name="Delete").click()
    expect(page.locator("main")).to_contain_text(f"Webhook #{gone} deleted.")
    expect(card).to_have_count(0)
    assert gone not in listed() and keep in listed()


def test_push_queue_pause_resume_retry_and_clear_act_through_the_api(page, kwp, target):
    target.status = 502
    webhook_id = store(kwp, "push", {"push": 1})
    assert wait_for(lambda: (queue_item(kwp, "push", webhook_id) or {}).get("forward_attempts") == 1, 10)
    sign_in(page)
    page.goto("/ui/#/c/push/queue")
    card = page.locator(f'article[data-id="{webhook_id}"]')
    expect(card).to_contain_text("1 attempt")
    expect(card).to_contain_text("last error: unexpected status 502: Bad Gateway")
    shot(page, "queue-push")

    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    assert api(kwp, "GET", "/api/webhook/push/queue")[1]["status"]["paused"] is True
    page.get_by_role("button", name="Resume").click()
    expect(page.get_by_role("button", name="Pause")).to_be_visible()
    assert api(kwp, "GET", "/api/webhook/push/queue")[1]["status"]["paused"] is False

    card.get_by_role("button", name="Retry now").click()
    expect(page.get_by_role("alert")).to_contain_text(f"Webhook #{webhook_id}: not delivered: the target answered 502.")
    assert queue_item(kwp, "push", webhook_id)["forward_attempts"] == 2
    target.status = 200
    card.get_by_role("button", name="Retry now").click()
    expect(page.locator("main")).to_contain_text(f"Webhook #{webhook_id}: delivered: the target answered 200.")
    assert queue_item(kwp, "push", webhook_id) is None
    expect(card).to_have_count(0)

    target.status = 502
    for n in range(2):
        store(kwp, "push", {"clear": n})
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("article.item")).to_have_count(2)
    page.get_by_role("button", name="Clear the queue").click()
    page.locator("dialog#confirm").get_by_role("button", name="Clear the queue").click()
    expect(page.locator("main")).to_contain_text("Queue cleared.")
    expect(page.locator("main")).to_contain_text("The queue is empty.")
    assert api(kwp, "GET", "/api/webhook/push/queue")[1]["status"]["queue_size"] == 0


CHAT, CI = "&consumer=chat", "&consumer=ci"


def test_the_overview_lists_each_channels_consumers_under_it_live(page, kwp, target):
    target.status = 502
    webhook_id = store(kwp, "gh", {"fan": "out"})
    # No filter: both consumers take it; chat's first push fails.
    assert wait_for(lambda: (queue_item(kwp, "gh", webhook_id, CHAT) or {}).get("forward_attempts") == 1, 10)
    sign_in(page)
    group = page.locator('#channels tbody[data-channel="gh"]')
    expect(group.locator("tr.channel")).to_have_text("gh 2 consumers")
    assert group.locator("tr[data-key]").evaluate_all("rows => rows.map(r => r.dataset.key)") == ["gh/ci", "gh/chat"]
    ci, chat = group.locator('tr[data-key="gh/ci"]'), group.locator('tr[data-key="gh/chat"]')
    assert ci.get_by_role("link", name="ci").get_attribute("href") == "#/c/gh/queue?consumer=ci"
    assert chat.get_by_role("link", name="chat").get_attribute("href") == "#/c/gh/queue?consumer=chat"
    expect(ci.locator('td[data-label="Kind"]')).to_have_text("pull")
    expect(chat.locator('td[data-label="Kind"]')).to_have_text("push")
    expect(chat).to_contain_text("forwarding")
    expect(chat).to_contain_text("unexpected status 502: Bad Gateway")
    depths = {name: consumer(kwp, "gh", name)["queue_size"] for name in ("ci", "chat")}
    expect(ci.locator("td.depth")).to_have_text(str(depths["ci"]))
    expect(chat.locator("td.depth")).to_have_text(str(depths["chat"]))
    # Stored meanwhile: each consumer's row follows its own queue.
    store(kwp, "gh", {"fan": "again"})
    expect(ci.locator("td.depth")).to_have_text(str(depths["ci"] + 1))
    expect(chat.locator("td.depth")).to_have_text(str(depths["chat"] + 1))
    shot(page, "overview")


def test_actions_on_a_push_consumer_go_to_its_queue_and_no_other(page, kwp, target):
    target.status = 502
    # chat delivers in order: what earlier tests left would hold this one back.
    assert api(kwp, "POST", "/api/webhook/gh/queue/clear?consumer=chat")[0] == 204
    webhook_id = store(kwp, "gh", {"to": "chat"})
    assert wait_for(lambda: (queue_item(kwp, "gh", webhook_id, CHAT) or {}).get("forward_attempts") == 1, 10)
    sign_in(page)
    page.locator('#channels tr[data-key="gh/chat"]').get_by_role("link", name="chat").click()
    expect(page).to_have_url(re.compile(r"#/c/gh/queue\?consumer=chat$"))
    expect(page.locator("main")).to_contain_text("Push consumer chat: kwp forwards these webhooks.")
    expect(page.get_by_role("link", name="Events")).to_have_attribute("href", "#/c/gh/events?consumer=chat")
    card = page.locator(f'article[data-id="{webhook_id}"]')
    expect(card).to_contain_text("1 attempt")
    shot(page, "queue-consumer")

    paused = lambda: api(kwp, "GET", "/api/webhook/gh/queue?consumer=chat")[1]["status"]["paused"]  # noqa: E731
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    assert paused() is True
    page.get_by_role("button", name="Resume").click()
    expect(page.get_by_role("button", name="Pause")).to_be_visible()
    assert paused() is False

    card.get_by_role("button", name="Retry now").click()
    expect(page.get_by_role("alert")).to_contain_text(f"Webhook #{webhook_id}: not delivered: the target answered 502.")
    assert queue_item(kwp, "gh", webhook_id, CHAT)["forward_attempts"] == 2

    card.get_by_role("button", name="Delete").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text(f"Delete webhook #{webhook_id} from this queue of gh/chat?")
    dialog.get_by_role("button", name="Delete").click()
    expect(card).to_have_count(0)
    assert queue_item(kwp, "gh", webhook_id, CHAT) is None
    # ci's delivery of the same webhook stays in ci's queue.
    assert webhook_id in pull_ids(kwp, "gh", CI)

    kept = [store(kwp, "gh", {"clear": n}) for n in range(2)]
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("article.item")).to_have_count(len(api(kwp, "GET", "/api/webhook/gh/queue?consumer=chat")[1]["items"]))
    page.get_by_role("button", name="Clear the queue").click()
    expect(dialog).to_contain_text("Clear the queue of gh/chat?")
    dialog.get_by_role("button", name="Clear the queue").click()
    expect(page.locator("main")).to_contain_text("The queue is empty.")
    assert api(kwp, "GET", "/api/webhook/gh/queue?consumer=chat")[1]["status"]["queue_size"] == 0
    assert set(kept) <= set(pull_ids(kwp, "gh", CI))


def test_a_consumer_token_sees_only_its_consumer(page, kwp, target):
    target.status = 502
    webhook_id = store(kwp, "gh", {"for": "ci"})
    assert wait_for(lambda: queue_item(kwp, "gh", webhook_id, CHAT) is not None, 10)
    sign_in(page, "ci-token")
    assert rows(page) == ["gh/ci"]
    expect(page.locator("#channels")).not_to_contain_text("chat")
    expect(page.locator("main")).to_contain_text("1 channel, 1 consumer,")
    page.get_by_role("link", name="ci", exact=True).click()
    expect(page).to_have_url(re.compile(r"#/c/gh/queue\?consumer=ci$"))
    card = page.locator(f'article[data-id="{webhook_id}"]')
    card.get_by_role("button", name="Delete").click()
    page.locator("dialog#confirm").get_by_role("button", name="Delete").click()
    expect(card).to_have_count(0)
    assert webhook_id not in pull_ids(kwp, "gh", token="ci-token")
    assert queue_item(kwp, "gh", webhook_id, CHAT) is not None

    page.goto("/ui/#/c/gh/queue?consumer=chat")
    expect(page.locator("main")).to_contain_text("Consumer chat is not among those this token reaches")
    expect(page.get_by_role("alert")).to_have_text(
        "Could not read the queue: This token may not do that: the token does not give access to consumer 'chat' "
        "(GET /api/webhook/gh/list answered 403 forbidden)."
    )
    page.goto("/ui/#/c/gh/debug")
    page.get_by_role("button", name="Sign", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("a consumer's token cannot do this; use the channel's token")
    page.goto("/ui/#/c/open/queue")
    expect(page.get_by_role("alert")).to_contain_text("the token does not give access to channel 'open'")


def _reload(kwp, config) -> None:
    reloads = kwp.log().count("config reloaded")
    write_config(kwp.config_path, config)
    kwp.signal(signal.SIGHUP)
    assert wait_for(lambda: kwp.log().count("config reloaded") > reloads, 10)


def test_the_admin_sees_and_clears_the_queue_of_a_removed_consumer(page, kwp, target):
    target.status = 502
    webhook_id = store(kwp, "gh", {"left": "behind"})
    assert wait_for(lambda: queue_item(kwp, "gh", webhook_id, CHAT) is not None, 10)
    config = yaml.safe_load(kwp.config_path.read_text())
    gh = next(c for c in config["channels"] if c["name"] == "gh")
    consumers = gh["consumers"]
    gh["consumers"] = [c for c in consumers if c["name"] != "chat"]
    _reload(kwp, config)
    try:
        sign_in(page)
        chat = page.locator('#channels tr[data-key="gh/chat"]')
        expect(chat).to_contain_text("removed")
        expect(chat.locator('td[data-label="Kind"]')).to_have_text("pull")
        assert "chat" not in [c["name"] for c in api(kwp, "GET", "/api/channels", "gh-token")[1]["channels"][0]["consumers"]]
        chat.get_by_role("link", name="chat").click()
        expect(page.locator("main")).to_contain_text("Consumer chat was removed from config.yml")
        expect(page.locator(f'article[data-id="{webhook_id}"]')).to_be_visible()
        page.get_by_role("button", name="Clear the queue").click()
        page.locator("dialog#confirm").get_by_role("button", name="Clear the queue").click()
        expect(page.locator("main")).to_contain_text("Queue cleared.")
        # Emptied, the removed consumer's queue is gone from the API and the overview.
        assert api(kwp, "GET", "/api/webhook/gh/list?consumer=chat")[0] == 404
        page.goto("/ui/#/")
        expect(page.locator('#channels tr[data-key="gh/ci"]')).to_be_visible()
        expect(chat).to_have_count(0)
        assert webhook_id in pull_ids(kwp, "gh", CI)
    finally:
        gh["consumers"] = consumers
        _reload(kwp, config)


def test_debug_signs_and_test_sends_with_kwps_answer_shown(page, kwp):
    sign_in(page)
    page.goto("/ui/#/c/github/debug")
    text = '{"zen": "Keep it logically awesome."}'
    page.fill("#debug-payload", text)
    page.get_by_role("button", name="Sign", exact=True).click()
    digest = hmac.new(GITHUB_SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()
    expect(page.locator("#debug-answer td.header-value")).to_have_text(f"sha256={digest}")
    expect(page.locator("#debug-answer")).to_contain_text("X-Hub-Signature-256")

    page.get_by_role("button", name="Test-send").click()
    expect(page.locator("#debug-answer")).to_contain_text("200: the receive path accepted it.")
    answer = json.loads(page.locator("#debug-answer pre").text_content())
    assert answer["status"] == "ok"
    stored = api(kwp, "GET", "/api/webhook/github/list?limit=10000")[1]
    assert [i["payload"] for i in stored if i["id"] == answer["id"]] == [json.loads(text)]
    shot(page, "debug")

    page.fill("#debug-secret", "not-the-secret")
    page.get_by_role("button", name="Test-send").click()
    # The receive path's 401 is about the webhook: the user stays signed in.
    expect(page.get_by_role("alert")).to_have_text("Refused: missing or invalid signature (401 unauthorized).")
    page.fill("#debug-payload", "{not json")
    page.get_by_role("button", name="Test-send").click()
    expect(page.get_by_role("alert")).to_contain_text("The payload is not valid JSON")


def test_views_whose_api_kwp_lacks_say_so_in_words(page):
    sign_in(page)
    page.goto("/ui/#/c/open/events")
    expect(page.get_by_role("alert")).to_have_text(
        "The history is not in this kwp yet: GET /api/webhook/open/events answered 404 not_found. "
        "The queue, live figures and debug views work without it."
    )
    page.goto("/ui/#/c/open/events/1")
    expect(page.get_by_role("alert")).to_contain_text("GET /api/webhook/open/events/1 answered 404 not_found")
    page.goto("/ui/#/c/open/tail")
    expect(page.get_by_role("alert")).to_have_text(
        "The live stream is not in this kwp yet: GET /api/webhook/open/stream answered 404 not_found."
    )
    page.goto("/ui/#/nowhere")
    expect(page.get_by_role("alert")).to_have_text("The console has no page #/nowhere.")


def _background(page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def test_dark_and_light_themes_follow_the_system_and_the_toggle(open_page):
    page = open_page(color_scheme="dark")
    sign_in(page)
    dark, light = "rgb(15, 18, 23)", "rgb(247, 248, 250)"
    assert _background(page) == dark
    toggle = page.locator("#theme")
    expect(toggle).to_have_text("Theme: auto")
    toggle.click()
    expect(toggle).to_have_text("Theme: dark")
    shot(page, "overview-dark")
    toggle.click()
    expect(toggle).to_have_text("Theme: light")
    assert _background(page) == light
    page.reload()
    expect(page.locator("#theme")).to_have_text("Theme: light")
    assert _background(page) == light
    page.locator("#theme").click()
    expect(page.locator("#theme")).to_have_text("Theme: auto")
    assert _background(page) == dark


def test_a_phone_sized_screen_scrolls_down_not_sideways(open_page, kwp):
    page = open_page(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    store(kwp, "open", {"phone": "a long line of text " * 8})
    sign_in(page)
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    assert page.evaluate(fits)
    # Each row of the overview is a block of labelled cells.
    expect(page.locator("#channels thead")).to_be_hidden()
    expect(page.locator('#channels tr[data-key="open/default"] td.depth')).to_be_visible()
    shot(page, "phone")
    page.goto("/ui/#/c/open/queue")
    expect(page.locator("article.item").first).to_be_visible()
    assert page.evaluate(fits)


def test_the_keyboard_reaches_every_step(page, kwp):
    webhook_id = store(kwp, "open", {"keyboard": True})
    page.goto("/")
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(ADMIN)
    page.keyboard.press("Enter")
    expect(page.locator("#channels")).to_be_visible()
    for _ in range(15):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "open":
            break
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{page.url.split('#')[0]}#/c/open/queue")
    card = page.locator(f'article[data-id="{webhook_id}"]')
    card.get_by_role("button", name="Delete").focus()
    page.keyboard.press("Enter")
    expect(page.locator("dialog#confirm")).to_be_visible()
    # The dialog starts on Cancel, and Escape closes it: nothing is deleted by accident.
    assert page.evaluate("document.activeElement.textContent") == "Cancel"
    page.keyboard.press("Escape")
    expect(page.locator("dialog#confirm")).to_be_hidden()
    assert any(i["id"] == webhook_id for i in api(kwp, "GET", "/api/webhook/open/list?limit=10000")[1])


def test_the_event_stream_parser_follows_the_sse_format(page):
    page.goto("/ui/")
    result = page.evaluate(
        """async (chunks) => {
            const { SSEParser } = await import("/ui/sse.js");
            const events = [];
            const comments = [];
            const parser = new SSEParser((e) => events.push(e), (c) => comments.push(c));
            for (const chunk of chunks) parser.push(chunk);
            return { events, comments, last: parser.lastEventId, retry: parser.retry };
        }""",
        [": hello\r\n", "id: 7\r", "\nevent: webhook\ndata: {\"a\"", ":1}\n\n", "data: one\ndata: two\r\n\r\n",
         "id: 9\n\n", "retry: 1500\ndata:x\n", "\n", "data: cut off at the end"],
    )
    assert result == {
        "events": [
            {"type": "webhook", "data": '{"a":1}', "id": "7"},
            {"type": "message", "data": "one\ntwo", "id": "7"},
            {"type": "message", "data": "x", "id": "9"},
        ],
        "comments": ["hello"],
        "last": "9",
        "retry": 1500,
    }


# --- The views of the history and the live stream, against answers shaped
# as CONTRACT §8 and §9 say, until kwp has those APIs. ----------------------


def _event(webhook_id: int, state: str, now: float) -> dict:
    return {
        "id": webhook_id,
        "received_at": int(now) - 60 * (3 - webhook_id),
        "size": 27,
        "headers": {"content-type": "application/json", "x-github-event": "push"},
        "payload": {"ref": "refs/heads/main", "n": webhook_id},
        "consumers": [
            {"name": "default", "state": state, "attempts": 3, "delivered_at": None, "next_attempt_at": None,
             "last_status": 502, "last_error": "unexpected status 502"},
        ],
    }


class History:
    """Answers the history routes of channel open as CONTRACT §8 says, and
    keeps what the page asked."""

    def __init__(self):
        now = time.time()
        self.events = {n: _event(n, "dead", now) for n in (2, 1)}
        self.asked: list[tuple[str, str, object]] = []

    def __call__(self, route):
        req = route.request
        path, _, query = req.url.partition("/api/webhook/open/")[2].partition("?")
        body = json.loads(req.post_data) if req.post_data else None
        self.asked.append((req.method, path + (f"?{query}" if query else ""), body))
        assert req.headers["authorization"] == f"Bearer {ADMIN}"
        parts = path.split("/")
        if req.method == "GET" and parts == ["events"]:
            return self._json(route, {"items": list(self.events.values()), "next_before": None})
        if req.method == "GET" and len(parts) == 2:
            item = dict(self.events[int(parts[1])])
            log = [{"at": item["received_at"] + 10 * n, "status_code": 502, "error": None, "duration_ms": 12,
                    "response_excerpt": "Bad Gateway"} for n in range(3)]
            item["consumers"] = [{**c, "log": log} for c in item["consumers"]]
            return self._json(route, item)
        if req.method == "POST" and parts[-1] == "replay" and len(parts) == 3:
            return self._json(route, {"replayed": (body or {}).get("consumers", ["default"]), "already_pending": []})
        if req.method == "POST" and parts == ["replay"]:
            return self._json(route, {"count": len(self.events)})
        if req.method == "DELETE" and len(parts) == 2:
            self.events.pop(int(parts[1]))
            return route.fulfill(status=204, body="")
        return self._json(route, {"error": "not_found", "message": "no such endpoint"}, 404)

    @staticmethod
    def _json(route, value, status=200):
        route.fulfill(status=status, content_type="application/json", body=json.dumps(value))


def test_the_event_list_searches_and_replays_a_selection_or_all_that_match(page):
    history = History()
    page.route("**/api/webhook/open/events**", history)
    page.route("**/api/webhook/open/replay", history)
    sign_in(page)
    page.goto("/ui/#/c/open/events")
    expect(page.locator("#events tbody tr")).to_have_count(2)
    page.select_option("#search-state", "dead")
    page.fill("#search-filter", "headers.\"x-github-event\" == 'push'")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"#/c/open/events\?.*state=dead"))
    expect(page.locator("#events tbody tr")).to_have_count(2)
    searched = history.asked[-1][1]
    assert searched.startswith("events?") and "state=dead" in searched and "limit=50" in searched
    assert "filter=headers.%22x-github-event%22+%3D%3D+%27push%27" in searched
    shot(page, "events")

    for webhook_id in (1, 2):
        page.get_by_role("checkbox", name=f"Select event {webhook_id}").check()
    page.get_by_role("button", name="Replay selected (2)").click()
    expect(page.locator("main")).to_contain_text("#1: replayed to default. #2: replayed to default.")
    assert [a for a in history.asked if a[0] == "POST"] == [
        ("POST", "events/1/replay", None),
        ("POST", "events/2/replay", None),
    ]
    page.get_by_role("button", name="Replay all matching").click()
    page.locator("dialog#confirm").get_by_role("button", name="Replay").click()
    expect(page.locator("main")).to_contain_text("Replayed 2 webhooks.")
    assert history.asked[-1] == ("POST", "replay", {"state": "dead", "filter": "headers.\"x-github-event\" == 'push'"})


def test_one_event_shows_its_deliveries_and_is_replayed_and_purged(page):
    history = History()
    page.route("**/api/webhook/open/events**", history)
    sign_in(page)
    page.goto("/ui/#/c/open/events")
    page.get_by_role("link", name="#2").click()
    expect(page.locator("h2").first).to_have_text("Webhook #2")
    expect(page.locator("pre.payload")).to_have_text(json.dumps(history.events[2]["payload"], indent=2))
    expect(page.locator("table.kv")).to_contain_text("x-github-eventpush")
    delivery = page.locator('[data-consumer="default"]')
    expect(delivery).to_contain_text("dead")
    expect(delivery).to_contain_text("3 attempts")
    delivery.get_by_text("Attempt log (3)").click()
    expect(delivery.locator("table.log tbody tr")).to_have_count(3)
    expect(delivery.locator("table.log")).to_contain_text("Bad Gateway")
    shot(page, "event")

    page.get_by_role("button", name="Replay", exact=True).click()
    expect(page.locator("main")).to_contain_text("Replayed to default.")
    assert history.asked[-1] == ("POST", "events/2/replay", {"consumers": ["default"]})
    page.get_by_role("button", name="Purge").click()
    page.locator("dialog#confirm").get_by_role("button", name="Purge").click()
    expect(page.locator("main")).to_contain_text("Webhook #2 purged.")
    expect(page.locator("#events tbody tr")).to_have_count(1)
    assert ("DELETE", "events/2", None) in history.asked


def test_the_live_tail_shows_webhooks_as_they_come_and_resumes_after_the_last(page):
    asked = []
    now = int(time.time())

    def stream(route):
        req = route.request
        asked.append({"url": req.url, "last-event-id": req.headers.get("last-event-id"),
                      "authorization": req.headers.get("authorization"), "accept": req.headers.get("accept")})
        webhook_id = 50 + len(asked) - 1
        item = {"id": webhook_id, "headers": {"content-type": "application/json"}, "payload": {"n": webhook_id},
                "received_at": now}
        # Each answer ends after one webhook: the page must open the stream again.
        body = f": kwp stream\n\nid: {webhook_id}\nevent: webhook\ndata: {json.dumps(item)}\n\n"
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    page.route("**/api/webhook/open/stream**", stream)
    sign_in(page)
    page.goto("/ui/#/c/open/tail")
    expect(page.locator("#tail article.item")).to_have_count(2, timeout=15_000)
    expect(page.locator("#tail article.item").first).to_have_attribute("data-id", "51")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#tail-status")).to_contain_text("Stopped. Start goes on from after #")
    shot(page, "tail")
    assert asked[0] == {"url": f"{page.url.split('/ui/')[0]}/api/webhook/open/stream", "last-event-id": None,
                        "authorization": f"Bearer {ADMIN}", "accept": "text/event-stream"}
    assert asked[1]["last-event-id"] == "50"
