"""The console's serving (redirects, files, headers), GET /api/channels and
UI_ACCESS_TOKEN, on StubTreq; the browser tests are in test_console_browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python import usage

from kwp.config import parse_config
from kwp.console import load_assets
from kwp.notify import Notifier
from kwp.auth import identify
from kwp.ops import channels_overview
from kwp.storage import DEAD, Attempt, NewWebhook, QueueState, QueueStats, Route
from kwp.tap import Options, makeService
from kwp.web import KwpApp
from tests.conftest import BASIC_CONFIG
from tests.fakes import FakeStorage
from tests.support import ROOT, write_config

STATIC = ROOT / "kwp" / "console" / "static"
ADMIN = "admin-secret-token"
UI_TOKEN = "ui-access-token-value"
SECURITY = {
    "content-security-policy": "default-src 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
CONFIG = {
    "server": BASIC_CONFIG["server"],
    "channels": [
        *BASIC_CONFIG["channels"],
        {
            "name": "hub",
            "token": "hub-token",
            "provider": "github",
            "webhook-secret": "hub-secret",
            "forward": {"url": "http://127.0.0.1:9/hook"},
        },
        {
            "name": "gh",
            "token": "gh-token",
            "consumers": [
                {"name": "ci", "token": "ci-token"},
                {"name": "chat", "forward": {"url": "http://127.0.0.1:9/chat"}},
            ],
        },
    ],
}


class Answer:
    def __init__(self, response, body: bytes):
        self.code = response.code
        self.headers = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
        self.body = body

    def json(self):
        return json.loads(self.body)


def stub_app(config_data=CONFIG, storage=None, ui_token=UI_TOKEN):
    app = KwpApp(parse_config(config_data), storage or FakeStorage(), Notifier(), Clock(), ui_token=ui_token)
    return StubTreq(app.resource())


def ask(stub, method: str, path: str, token: str | None = None, **kwargs) -> Answer:
    """One request, answered at once: every fake answers synchronously."""
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    done = []
    d = stub.request(method, f"http://kwp.test{path}", headers=headers, allow_redirects=False, **kwargs)
    d.addBoth(done.append)
    stub.flush()
    response = done[0]
    if not hasattr(response, "code"):
        response.raiseException()
    body = []
    stub.content(response).addBoth(body.append)
    stub.flush()
    return Answer(response, body[0])


def assert_secure(answer: Answer) -> None:
    assert {name: answer.headers.get(name) for name in SECURITY} == SECURITY


@pytest.mark.parametrize("path", ["/", "/ui"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_root_and_ui_redirect_to_the_console(path, method):
    answer = ask(stub_app(), method, path)
    assert answer.code == 302
    assert answer.headers["location"] == "/ui/"
    assert_secure(answer)


def test_every_file_of_the_console_is_served_with_its_type_and_the_security_headers():
    stub = stub_app()
    files = {p.name for p in STATIC.iterdir()}
    # A file of a type the console does not serve would be left out silently.
    assert {name.decode() for name in load_assets()} == files
    types = {"html": "text/html", "js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
    for name in files:
        answer = ask(stub, "GET", f"/ui/{name}")
        assert answer.code == 200, name
        assert answer.body == (STATIC / name).read_bytes()
        assert answer.headers["content-type"].split(";")[0] == types[name.rpartition(".")[2]]
        assert answer.headers["cache-control"] == "no-cache"
        assert answer.headers["etag"].startswith('"')
        assert_secure(answer)


def test_ui_slash_is_the_index_and_head_answers_its_headers_without_a_body():
    stub = stub_app()
    index = (STATIC / "index.html").read_bytes()
    got = ask(stub, "GET", "/ui/")
    assert (got.code, got.body, got.headers["content-type"]) == (200, index, "text/html; charset=utf-8")
    head = ask(stub, "HEAD", "/ui/")
    assert (head.code, head.body) == (200, b"")
    assert head.headers["content-length"] == str(len(index))
    assert head.headers["etag"] == got.headers["etag"]
    assert_secure(head)


def test_a_file_unchanged_since_the_last_visit_is_answered_304():
    stub = stub_app()
    etag = ask(stub, "GET", "/ui/app.js").headers["etag"]
    again = ask(stub, "GET", "/ui/app.js", headers={"If-None-Match": etag})
    assert (again.code, again.body) == (304, b"")
    assert_secure(again)
    assert ask(stub, "GET", "/ui/app.js", headers={"If-None-Match": '"other"'}).code == 200


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/static/index.html", "/ui/app.js/x", "/ui/%2e%2e/setup.py"])
def test_a_path_that_is_no_console_file_is_a_json_404_with_the_security_headers(path):
    answer = ask(stub_app(), "GET", path)
    assert answer.code == 404
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"] == "not_found"
    assert_secure(answer)


def test_the_console_takes_no_other_method():
    answer = ask(stub_app(), "POST", "/ui/app.js")
    assert answer.code == 405 and answer.json()["error"] == "bad_request"
    assert set(answer.headers["allow"].split(", ")) == {"GET", "HEAD"}


def _consumer(**changes) -> dict:
    consumer = {
        "name": "default",
        "kind": "pull",
        "removed": False,
        "queue_size": 0,
        "oldest_pending_at": None,
        "dead": 0,
        "paused": False,
        "last_success_at": None,
        "last_error_at": None,
        "last_error_message": None,
    }
    consumer.update(changes)
    return consumer


def _channel(name, *consumers, provider=None, named=False) -> dict:
    return {"name": name, "provider": provider, "named_consumers": named, "consumers": list(consumers or [_consumer()])}


STATS = {
    ("open", "default"): QueueStats(3, 100.12345, 0),
    ("hub", "default"): QueueStats(3, 70.5, 2),
    ("gh", "ci"): QueueStats(4, 80.0, 0),
    ("gh", "chat"): QueueStats(1, 90.0, 1),
    # A consumer that a reload removed, with webhooks left in its queue.
    ("gh", "old"): QueueStats(2, 60.0, 0),
}
STATES = {
    ("hub", "default"): QueueState(True, 200.0, 300.0, "unexpected status 502"),
    ("gh", "chat"): QueueState(False, 400.0, None, None),
}
HUB = _channel(
    "hub",
    _consumer(
        kind="push",
        # Dead letters are in the queue, but not among those waiting.
        queue_size=5,
        oldest_pending_at=70.5,
        dead=2,
        paused=True,
        last_success_at=200.0,
        last_error_at=300.0,
        last_error_message="unexpected status 502",
    ),
    provider="github",
)
CI = _consumer(name="ci", queue_size=4, oldest_pending_at=80.0)
CHAT = _consumer(name="chat", kind="push", queue_size=2, oldest_pending_at=90.0, dead=1, last_success_at=400.0)
OLD = _consumer(name="old", removed=True, queue_size=2, oldest_pending_at=60.0)


def test_api_channels_gives_each_queue_its_figures_and_the_admin_the_queues_of_removed_consumers():
    storage = FakeStorage(stats=STATS, states=STATES)
    answer = ask(stub_app(storage=storage), "GET", "/api/channels", ADMIN)
    assert answer.code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json() == {
        "channels": [
            _channel("github"),
            _channel("open", _consumer(queue_size=3, oldest_pending_at=100.123)),
            _channel("small"),
            HUB,
            _channel("gh", CI, CHAT, OLD, named=True),
        ]
    }


@pytest.mark.parametrize(
    "token, channels",
    [
        (UI_TOKEN, [_channel("github"), _channel("open"), _channel("small"), HUB, _channel("gh", CI, CHAT, OLD, named=True)]),
        ("hub-token", [HUB]),
        # A channel token reaches every consumer of its channel, but a removed
        # one only through the admin token.
        ("gh-token", [_channel("gh", CI, CHAT, named=True)]),
        ("ci-token", [_channel("gh", CI, named=True)]),
    ],
)
def test_api_channels_lists_only_what_the_token_reaches(token, channels):
    storage = FakeStorage(stats={**STATS, ("open", "default"): QueueStats()}, states=STATES)
    assert ask(stub_app(storage=storage), "GET", "/api/channels", token).json() == {"channels": channels}


@pytest_twisted.ensureDeferred
async def test_api_channels_reads_the_figures_and_state_of_each_queue_on_either_backend(backend):
    storage = backend.start()
    both = (Route("ci"), Route("chat"))
    first, second, _ = [await storage.insert(NewWebhook("gh", "{}", b"{}", at, routes=both)) for at in (10.0, 20.0, 30.0)]
    await storage.forward_failed("gh", first, Attempt(40.0, 502, "unexpected status 502"), None, DEAD, consumer="chat")
    await storage.forward_succeeded("gh", second, Attempt(50.0, 200), consumer="chat")
    await storage.set_paused("gh", True, consumer="chat")
    config = parse_config(CONFIG)
    ci = _consumer(name="ci", queue_size=3, oldest_pending_at=10.0)
    chat = _consumer(
        name="chat",
        kind="push",
        queue_size=2,
        oldest_pending_at=30.0,
        dead=1,
        paused=True,
        last_success_at=50.0,
        last_error_at=40.0,
        last_error_message="unexpected status 502",
    )
    body = await channels_overview(storage, config, identify(config, "Bearer gh-token"))
    assert body == {"channels": [_channel("gh", ci, chat, named=True)]}


@pytest.mark.parametrize("authorization", [None, "Bearer", "Basic abc", "Bearer not-a-token", f"Bearer {UI_TOKEN} x"])
def test_api_channels_needs_a_valid_token(authorization):
    headers = {"Authorization": authorization} if authorization else {}
    answer = ask(stub_app(), "GET", "/api/channels", headers=headers)
    assert answer.code == 401 and answer.json()["error"] == "unauthorized"


def test_head_api_channels_answers_like_get_without_a_body():
    stub = stub_app()
    head = ask(stub, "HEAD", "/api/channels", "open-token")
    assert (head.code, head.body, head.headers["content-type"]) == (200, b"", "application/json")
    assert ask(stub, "HEAD", "/api/channels").code == 401


def test_ui_access_token_is_an_admin_token_for_the_whole_api():
    stub = stub_app()
    assert ask(stub, "GET", "/api/config", UI_TOKEN).code == 200
    signed = ask(stub, "POST", "/api/webhook/hub/sign", UI_TOKEN, data=b"{}")
    assert signed.code == 200 and signed.json()["header_name"] == "X-Hub-Signature-256"
    # Past the token check, for any channel name.
    assert ask(stub, "GET", "/api/webhook/nope/list", UI_TOKEN).json()["error"] == "channel_not_found"
    # The config's admin token still works, and a channel token is still a channel token.
    assert ask(stub, "GET", "/api/config", ADMIN).code == 200
    assert ask(stub, "GET", "/api/config", "open-token").code == 403
    assert ask(stub, "GET", "/api/config", "ci-token").code == 403
    # Without UI_ACCESS_TOKEN, its value is no token at all.
    assert ask(stub_app(ui_token=None), "GET", "/api/config", UI_TOKEN).code == 401


def test_ui_access_token_works_without_an_admin_token_in_the_config():
    config = {"channels": CONFIG["channels"]}
    stub = stub_app(config)
    assert ask(stub, "GET", "/api/config", UI_TOKEN).code == 200
    assert ask(stub, "GET", "/api/config", ADMIN).code == 401


def test_ui_access_token_comes_from_the_environment_only():
    options = Options(environ={"UI_ACCESS_TOKEN": "t0ken"})
    options.parseOptions([])
    assert options["ui-access-token"] == "t0ken"
    for environ in ({}, {"UI_ACCESS_TOKEN": ""}):
        options = Options(environ=environ)
        options.parseOptions([])
        assert options["ui-access-token"] is None
    with pytest.raises(usage.UsageError):
        Options(environ={}).parseOptions(["--ui-access-token", "t0ken"])


def _service(tmp_path, environ, reactor=None):
    path = write_config(tmp_path / "config.yml", CONFIG)
    options = Options(environ=environ)
    options.parseOptions(["-c", str(path), "-d", str(tmp_path / "kwp.db"), "-l", "tcp:0:interface=127.0.0.1"])
    return makeService(options, reactor=reactor or Clock())


def test_make_service_gives_the_app_the_ui_access_token(tmp_path):
    assert _service(tmp_path, {"UI_ACCESS_TOKEN": "t0ken"}).app.ui_token == "t0ken"
    assert _service(tmp_path, {}).app.ui_token is None


def test_a_ui_access_token_that_is_a_channel_or_consumer_token_stops_start_up(tmp_path):
    with pytest.raises(SystemExit, match="UI_ACCESS_TOKEN is the api-read-token of channel 'open'"):
        _service(tmp_path, {"UI_ACCESS_TOKEN": "open-token"})
    with pytest.raises(SystemExit, match="UI_ACCESS_TOKEN is the token of consumer 'ci' of channel 'gh'"):
        _service(tmp_path, {"UI_ACCESS_TOKEN": "ci-token"})


@pytest_twisted.ensureDeferred
async def test_a_reload_that_gives_a_consumer_the_ui_access_token_is_refused(tmp_path, captured_log):
    service = _service(tmp_path, {"UI_ACCESS_TOKEN": "t0ken"}, reactor)
    running = service.app.config
    data = json.loads(json.dumps(CONFIG))
    data["channels"][-1]["consumers"].append({"name": "late", "token": "t0ken"})
    write_config(tmp_path / "config.yml", data)
    assert await service.reload() is False
    assert service.app.config is running
    assert "UI_ACCESS_TOKEN is the token of consumer 'late' of channel 'gh'" in captured_log.text()


def test_the_wheel_ships_the_console(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "data", "tests", "docs",
                                      "bench", "deploy"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
         str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    wheel = next(Path(tmp_path / "dist").glob("kwp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"kwp/console/static/{p.name}" for p in STATIC.iterdir()} <= names
