"""The web console in Debian's Chromium, driven by Playwright, against the
real ``twistd -n kwp`` (one browser and one daemon for the module): sign-in
and sign-out, each view, each action with its effect checked through the API
(queues, the history, replay, purge, the dead letters reaching a target), the
live tail (a webhook posted meanwhile, a resume after a restart or a dropped
connection), what a channel or consumer token may not see, errors in words,
themes, a phone-sized screen and the keyboard.

The tests that restart the daemon come last.

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
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from playwright.sync_api import expect

from tests.reliability.clients import drain, post, request, wait_for
from tests.support import ROOT, Daemon, write_config

ADMIN = "admin-secret-token"
UI_TOKEN = "console-ui-token"
GITHUB_SECRET = "gh-secret"
SHOTS = ROOT / "docs" / "console"
EVERY_QUEUE = ["github/default", "open/default", "push/default", "dead/default", "gh/ci", "gh/chat", "shop/billing",
               "shop/audit"]
# Playwright's waits (the overview polls every 3 s).
expect.set_options(timeout=10_000)


class _Target(BaseHTTPRequestHandler):
    """A forward target answering server.status (502 until a test changes it),
    keeping the bodies it took (answered 200) in server.taken.  HTTP/1.1 with
    keep-alive, as targets speak: an HTTP/1.0 answer without "Connection:
    close" is kept in twisted's pool and may be reused while this server's
    thread has yet to close it."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.server.status == 200:
            self.server.taken.append(json.loads(body))
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
    server.taken = []
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
            {
                "name": "shop",
                "token": "shop-token",
                "consumers": [
                    {"name": "billing", "token": "billing-token", "filter": "body.type == 'invoice'"},
                    {"name": "audit"},
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


# --- The history, replay, purge and the live tail ---------------------------------


def event(kwp, channel, webhook_id, token=ADMIN):
    """(status, body) of GET .../events/{id}."""
    return api(kwp, "GET", f"/api/webhook/{channel}/events/{webhook_id}", token)


def shown_ids(page, selector) -> list[int]:
    return [int(i) for i in page.locator(selector).evaluate_all("items => items.map(i => i.dataset.id)")]


def held_request(page, held: list):
    """The first route of held, once the page asked (Playwright hands routes
    over only while the test calls it)."""
    for _ in range(200):
        if held:
            return held[0]
        page.wait_for_timeout(50)
    raise AssertionError("the page did not open the stream again")


EVENT_ROWS = "#events tbody tr"


def test_the_event_list_searches_by_filter_consumer_state_and_time_page_by_page(page, kwp):
    run = f"run-{time.time_ns()}"
    ids = [store(kwp, "shop", {"type": "invoice" if n % 2 == 0 else "login", "n": n, "run": run}) for n in range(52)]
    invoices, logins = ids[0::2], ids[1::2]
    mine = f"body.run == '{run}'"
    sign_in(page)
    page.goto("/ui/#/c/shop/events")
    page.fill("#search-filter", mine)
    page.get_by_role("button", name="Search").click()
    # 50 a page, newest first; Load older goes on from next_before.
    expect(page.locator(EVENT_ROWS)).to_have_count(50)
    assert shown_ids(page, EVENT_ROWS) == ids[::-1][:50]
    page.get_by_role("button", name="Load older").click()
    expect(page.locator(EVENT_ROWS)).to_have_count(52)
    assert shown_ids(page, EVENT_ROWS) == ids[::-1]
    expect(page.get_by_role("button", name="Load older")).to_be_hidden()

    page.select_option("#search-consumer", "billing")
    page.select_option("#search-state", "pending")
    with page.expect_request("**/api/webhook/shop/events?*") as asked:
        page.get_by_role("button", name="Search").click()
    expect(page.locator(f'#events tr[data-id="{invoices[-1]}"]')).to_be_visible()
    assert shown_ids(page, EVENT_ROWS) == invoices[::-1]
    assert parse_qs(urlsplit(asked.value.url).query) == {
        "state": ["pending"], "consumer": ["billing"], "filter": [mine], "limit": ["50"]
    }
    row = page.locator(f'#events tr[data-id="{invoices[-1]}"]')
    expect(row.locator('td[data-label="State"]')).to_have_text("pending")
    expect(row.locator('td[data-label="Deliveries"]')).to_have_text("audit pending billing pending")

    # Filtered for billing: the webhooks its filter did not take.
    page.select_option("#search-state", "filtered")
    page.get_by_role("button", name="Search").click()
    expect(page.locator(f'#events tr[data-id="{logins[-1]}"]')).to_be_visible()
    assert shown_ids(page, EVENT_ROWS) == logins[::-1]
    expect(page.locator(f'#events tr[data-id="{logins[-1]}"] td[data-label="Deliveries"]')).to_have_text("audit pending")

    page.get_by_role("link", name="Reset").click()
    expect(page.locator("#search-filter")).to_have_value("")
    page.fill("#search-filter", mine)
    page.fill("#search-until", "2001-01-01T00:00")
    with page.expect_request("**/api/webhook/shop/events?*") as asked:
        page.get_by_role("button", name="Search").click()
    expect(page.locator("#events-note")).to_have_text("No event matches.")
    expect(page.locator("#events")).to_be_hidden()
    until = page.evaluate("new Date('2001-01-01T00:00').getTime() / 1000")
    assert parse_qs(urlsplit(asked.value.url).query)["until"] == [str(int(until))]
    page.fill("#search-since", "2001-01-01T00:00")
    page.fill("#search-until", "")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(rf"since={int(until)}"))
    expect(page.locator(EVENT_ROWS)).to_have_count(50)


def test_one_event_shows_its_deliveries_and_attempt_log_and_is_replayed_and_purged(page, kwp, target):
    target.status = 502
    # chat delivers in order: what earlier tests left would hold this one back.
    assert api(kwp, "POST", "/api/webhook/gh/queue/clear?consumer=chat")[0] == 204
    payload = {"ref": "refs/heads/main", "commits": [{"id": "c0ffee", "message": "Fix the build"}]}
    webhook_id = store(kwp, "gh", payload, {"X-GitHub-Event": "push"})
    assert wait_for(lambda: (queue_item(kwp, "gh", webhook_id, CHAT) or {}).get("forward_attempts") == 1, 10)
    assert api(kwp, "POST", f"/api/webhook/gh/queue/retry/{webhook_id}?consumer=chat")[0] == 200
    status, pulled = api(kwp, "GET", "/api/webhook/gh?consumer=ci&limit=1000")
    assert status == 200 and webhook_id in [i["id"] for i in pulled]

    sign_in(page)
    page.goto("/ui/#/c/gh/events")
    row = page.locator(f'#events tr[data-id="{webhook_id}"]')
    expect(row.locator('td[data-label="Deliveries"]')).to_have_text("chat pending ci delivered")
    shot(page, "events")
    row.get_by_role("link", name=f"#{webhook_id}").click()
    expect(page.locator("h2").first).to_have_text(f"Webhook #{webhook_id} pending")
    pretty = json.dumps(payload, indent=2)
    expect(page.locator("pre.payload")).to_have_text(pretty)
    expect(page.locator("table.kv")).to_contain_text("x-github-eventpush")
    ci, chat = page.locator('[data-consumer="ci"]'), page.locator('[data-consumer="chat"]')
    expect(ci.locator(".badge")).to_have_text("delivered")
    expect(ci.locator("header")).to_contain_text("handed out 1×")
    expect(chat.locator(".badge")).to_have_text("pending")
    expect(chat.locator("header .status")).to_contain_text(["2 attempts", "last status 502"])
    chat.get_by_text("Attempt log (2)").click()
    log = chat.locator("table.log tbody tr")
    expect(log).to_have_count(2)
    expect(log.locator('td[data-label="Status"]')).to_have_text(["502", "502"])
    expect(log.locator('td[data-label="Answer"]')).to_have_text(["Bad Gateway", "Bad Gateway"])
    page.get_by_role("button", name="Copy payload").click()
    expect(page.locator("main")).to_contain_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == pretty
    shot(page, "event")

    # Both consumers are ticked: ci takes it again, chat holds it still.
    page.get_by_role("button", name="Replay", exact=True).click()
    expect(page.locator("main")).to_contain_text("Replayed to ci. Already pending for chat.")
    expect(ci.locator(".badge")).to_have_text("pending")
    assert webhook_id in pull_ids(kwp, "gh", CI)

    page.get_by_role("button", name="Purge").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text(f"Purge webhook #{webhook_id} of gh?")
    dialog.get_by_role("button", name="Purge").click()
    expect(page.locator("main")).to_contain_text(f"Webhook #{webhook_id} purged.")
    expect(page).to_have_url(re.compile(r"#/c/gh/events$"))
    assert event(kwp, "gh", webhook_id)[0] == 404
    assert webhook_id not in pull_ids(kwp, "gh", CI) and queue_item(kwp, "gh", webhook_id, CHAT) is None
    page.goto(f"/ui/#/c/gh/events/{webhook_id}")
    expect(page.get_by_role("alert")).to_have_text(
        f"Could not read webhook #{webhook_id}: no webhook {webhook_id} in the history of channel 'gh' "
        f"(GET /api/webhook/gh/events/{webhook_id} answered 404 not_found)."
    )


def test_a_selection_and_everything_matching_are_replayed_into_the_queue(page, kwp):
    run = f"run-{time.time_ns()}"
    ids = [store(kwp, "open", {"run": run, "n": n}) for n in range(3)]
    mine = f"body.run == '{run}'"
    drain(kwp.port, "open")
    sign_in(page)
    page.goto("/ui/#/c/open/events")
    page.fill("#search-filter", mine)
    page.get_by_role("button", name="Search").click()
    states = page.locator('#events td[data-label="State"]')
    expect(states).to_have_text(["delivered"] * 3)
    for webhook_id in ids[:2]:
        page.get_by_role("checkbox", name=f"Select event {webhook_id}").check()
    page.get_by_role("button", name="Replay selected (2)").click()
    expect(page.locator("main")).to_contain_text(f"#{ids[0]}: replayed to default. #{ids[1]}: replayed to default.")
    expect(states).to_have_text(["delivered", "pending", "pending"])
    assert [i for i in ids if i in pull_ids(kwp, "open")] == ids[:2]

    # kwp queues at most 100,000 webhooks a call and names where to go on
    # (next_after). Here the first call is narrowed to the first webhook and
    # answered with the next_after kwp would then send.
    drain(kwp.port, "open")
    sent = []

    def narrowed(route):
        body = json.loads(route.request.post_data)
        sent.append(body)
        if len(sent) > 1:
            return route.continue_()
        response = route.fetch(post_data=json.dumps({**body, "filter": f"{mine} && body.n == `0`"}))
        route.fulfill(response=response, json={**response.json(), "next_after": ids[0]})

    page.route("**/api/webhook/open/replay", narrowed)
    page.get_by_role("button", name="Replay all matching").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text(f"Replay every webhook of open matching filter {mine}?")
    dialog.get_by_role("button", name="Replay").click()
    expect(page.locator("main")).to_contain_text("Replayed 3 webhooks.")
    assert sent == [{"filter": mine}, {"filter": mine, "after": ids[0]}]
    assert [i for i in ids if i in pull_ids(kwp, "open")] == ids
    expect(states).to_have_text(["pending"] * 3)


def test_the_dead_letters_of_a_push_consumer_are_replayed_to_its_target(page, kwp, target):
    target.status = 502
    webhook_id = store(kwp, "dead", {"dead": "letter"})
    assert wait_for(lambda: (queue_item(kwp, "dead", webhook_id) or {}).get("state") == "dead", 10)
    dead = consumer(kwp, "dead")["dead"]
    sign_in(page)
    page.goto("/ui/#/c/dead/queue")
    expect(page.locator(f'article[data-id="{webhook_id}"] .badge')).to_have_text("dead")
    target.status = 200
    page.get_by_role("button", name="Replay dead letters").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text("Replay the dead letters of dead?")
    dialog.get_by_role("button", name="Replay").click()
    expect(page.locator("main")).to_contain_text(f"{dead} dead letter{'s' if dead > 1 else ''} queued again.")
    assert wait_for(lambda: {"dead": "letter"} in target.taken, 10)
    assert wait_for(lambda: consumer(kwp, "dead")["dead"] == 0, 10)
    # The target's 200 is written a moment after it came (successes are
    # written in batches).
    assert wait_for(lambda: event(kwp, "dead", webhook_id)[1]["consumers"][0]["state"] == "delivered", 10)
    [delivery] = event(kwp, "dead", webhook_id)[1]["consumers"]
    assert [a["status_code"] for a in delivery["log"]] == [502, 200]


def test_the_live_tail_shows_a_webhook_posted_meanwhile_and_goes_on_after_a_stop(page, kwp):
    streams = []
    page.on("request", lambda r: "/stream" in r.url and streams.append(r))
    sign_in(page)
    page.goto("/ui/#/c/open/tail")
    status = page.locator("#tail-status")
    expect(status).to_have_text("Live: new webhooks of this channel appear at the top.")
    tail = page.locator("#tail article.item")
    first = store(kwp, "open", {"tail": 1}, {"X-Trace": "t-1"})
    expect(tail).to_have_count(1)
    expect(tail.first).to_have_attribute("data-id", str(first))
    expect(tail.first.locator("pre.payload")).to_have_text(json.dumps({"tail": 1}, indent=2))
    tail.first.get_by_text("Headers (").click()
    expect(tail.first.locator("table.kv")).to_contain_text("x-tracet-1")
    second = store(kwp, "open", {"tail": 2})
    expect(tail).to_have_count(2)
    assert shown_ids(page, "#tail article.item") == [second, first]
    shot(page, "tail")
    # The token goes in the Authorization header, never in the URL.
    assert [r.url for r in streams] == [f"{kwp.base}/api/webhook/open/stream"]
    headers = streams[0].all_headers()
    assert (headers["authorization"], headers["accept"], headers.get("last-event-id")) == (
        f"Bearer {ADMIN}", "text/event-stream", None)

    page.get_by_role("button", name="Stop").click()
    expect(status).to_have_text(f"Stopped. Start goes on from after #{second}.")
    third = store(kwp, "open", {"tail": 3})
    page.get_by_role("button", name="Start").click()
    expect(tail).to_have_count(3)
    assert shown_ids(page, "#tail article.item") == [third, second, first]
    assert streams[1].all_headers()["last-event-id"] == str(second)


def test_a_consumer_token_sees_only_its_consumers_history_and_tail(page, kwp):
    invoice = store(kwp, "shop", {"type": "invoice", "total": 12})
    login = store(kwp, "shop", {"type": "login"})
    sign_in(page, "billing-token")
    page.goto("/ui/#/c/shop/events")
    expect(page.locator(f'#events tr[data-id="{invoice}"]')).to_be_visible()
    _, listing = api(kwp, "GET", "/api/webhook/shop/events", "billing-token")
    assert shown_ids(page, EVENT_ROWS) == [i["id"] for i in listing["items"]]
    assert login not in shown_ids(page, EVENT_ROWS)
    assert set(page.locator('#events td[data-label="Deliveries"]').all_text_contents()) == {"billing pending"}

    page.goto(f"/ui/#/c/shop/events/{login}")
    expect(page.get_by_role("alert")).to_have_text(
        f"Could not read webhook #{login}: no webhook {login} in the history of channel 'shop' "
        f"(GET /api/webhook/shop/events/{login} answered 404 not_found)."
    )
    page.goto(f"/ui/#/c/shop/events/{invoice}")
    expect(page.locator("[data-consumer]")).to_have_count(1)
    expect(page.locator('[data-consumer="billing"]')).to_be_visible()
    page.get_by_role("button", name="Purge").click()
    page.locator("dialog#confirm").get_by_role("button", name="Purge").click()
    expect(page.get_by_role("alert")).to_have_text(
        "Could not purge: This token may not do that: a consumer's token cannot do this; use the channel's token "
        f"(DELETE /api/webhook/shop/events/{invoice} answered 403 forbidden)."
    )
    assert event(kwp, "shop", invoice)[0] == 200
    page.goto("/ui/#/c/shop/events?state=filtered")
    expect(page.get_by_role("alert")).to_have_text(
        "Could not read the history: This token may not do that: a consumer's token sees only the webhooks routed "
        "to its consumer (GET /api/webhook/shop/events answered 403 forbidden)."
    )

    page.goto("/ui/#/c/shop/tail")
    expect(page.locator("#tail-status")).to_contain_text("Live:")
    hidden, shown = store(kwp, "shop", {"type": "login"}), store(kwp, "shop", {"type": "invoice"})
    expect(page.locator(f'#tail article[data-id="{shown}"]')).to_be_visible()
    # The stream sends in id order: the login would have come first.
    assert shown_ids(page, "#tail article.item") == [shown]
    assert hidden < shown


def test_api_errors_are_said_in_words(page):
    sign_in(page, "open-token")
    page.goto("/ui/#/c/open/events?filter=body.%5B")
    expect(page.get_by_role("alert")).to_contain_text("Could not read the history: 'filter': ")
    expect(page.get_by_role("alert")).to_contain_text("(GET /api/webhook/open/events answered 400 bad_request).")
    page.goto("/ui/#/c/push/events")
    expect(page.get_by_role("alert")).to_have_text(
        "Could not read the history: This token may not do that: the token does not give access to channel 'push' "
        "(GET /api/webhook/push/events answered 403 forbidden)."
    )
    page.goto("/ui/#/c/push/tail")
    expect(page.get_by_role("alert")).to_have_text(
        "Could not open the live stream: This token may not do that: the token does not give access to channel "
        "'push' (GET /api/webhook/push/stream answered 403 forbidden)."
    )
    expect(page.locator("#tail-status")).to_have_text("Stopped.")
    page.goto("/ui/#/nowhere")
    expect(page.get_by_role("alert")).to_have_text("The console has no page #/nowhere.")


# --- Last: these restart the module's daemon. ---------------------------------


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_the_live_tail_resumes_after_the_daemon_restarts_or_the_connection_drops(page, kwp, how):
    newest = store(kwp, "open", {"before": how})
    sign_in(page)
    page.goto("/ui/#/c/open/tail")
    expect(page.locator("#tail-status")).to_contain_text("Live:")
    # The tail's next stream waits in the browser until the webhooks below are stored.
    held = []
    page.route("**/api/webhook/open/stream*", lambda route: held.append(route))
    if how == "restart":
        kwp.stop()  # SIGTERM: kwp ends every stream
    else:
        kwp.kill()  # SIGKILL: the connection drops in the middle of the stream
    kwp.start()
    meanwhile = [store(kwp, "open", {"meanwhile": n}) for n in range(3)]
    route = held_request(page, held)
    # No webhook was shown yet: the stream's first line gave the id to go on from.
    assert route.request.headers["last-event-id"] == str(newest)
    route.continue_()
    page.unroute("**/api/webhook/open/stream*")
    tail = page.locator("#tail article.item")
    expect(tail).to_have_count(3)
    assert shown_ids(page, "#tail article.item") == meanwhile[::-1]
    after = store(kwp, "open", {"after": how})
    expect(tail).to_have_count(4)
    assert shown_ids(page, "#tail article.item") == [after, *meanwhile[::-1]]
