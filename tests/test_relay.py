"""kwp.relay.Relay on a task.Clock with a scripted HTTP client."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.web.resource import Resource
from twisted.web.server import Site

from kwp.cli import build_parser, main, relay_settings
from kwp.forward import http_client
from kwp.relay import MAX_RESPONSE, Backoff, Relay, RelayError, RelaySettings
from tests.forward_support import FakeResponse

SOURCE = "http://proxy.test/api/webhook/ch"
TARGET = "http://target.test/hook"


class Call:
    def __init__(self, method, url, headers, data, kwargs):
        self.method, self.url, self.headers, self.data, self.kwargs = method, url, headers, data, kwargs
        self.d = Deferred()

    @property
    def path(self):
        return urlsplit(self.url).path

    @property
    def query(self):
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}

    def header(self, name):
        values = self.headers.getRawHeaders(name)
        return values[0].decode() if values else None

    def respond(self, code=200, body=None, headers=None, chunks=1):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.response = FakeResponse(code, raw, headers, chunks)
        self.d.callback(self.response)

    def fail(self, error):
        self.d.errback(error)


class FakeHTTP:
    def __init__(self):
        self.calls: list[Call] = []

    def request(self, method, url, headers=None, data=None, **kwargs):
        call = Call(method, url, headers, data, kwargs)
        self.calls.append(call)
        return call.d

    def next(self) -> Call:
        """The one request waiting for an answer."""
        pending = [c for c in self.calls if not c.d.called]
        assert len(pending) == 1, [(c.method, c.url) for c in pending]
        return pending[0]


def item(id, body=b'{"n": 1}', deliveries=1, headers=None):
    return {
        "id": id,
        "headers": headers or {"content-type": "application/json"},
        "body": base64.b64encode(body).decode(),
        "received_at": 0,
        "deliveries": deliveries,
    }


class Harness:
    def __init__(self, source=SOURCE, **settings):
        self.clock = task.Clock()
        self.http = FakeHTTP()
        self.relay = Relay(RelaySettings(source, "tok", TARGET, **settings), self.http, self.clock, random=lambda: 1.0)
        self.done = self.relay.start()

    def poll(self, items, older=()):
        """Answer the long-poll; the first batch is checked against /list."""
        call = self.http.next()
        assert (call.method, call.path) == ("GET", "/api/webhook/ch")
        call.respond(200, items)
        if items and not self.relay._order_checked:
            check = self.http.next()
            assert (check.method, check.path, check.query) == ("GET", "/api/webhook/ch/list", {"limit": "1"})
            check.respond(200, [{"id": i} for i in older] or items[:1])

    def target(self, code=200) -> Call:
        call = self.http.next()
        assert (call.method, call.url) == ("POST", TARGET)
        call.respond(code, b"")
        return call

    def ack(self, ids, code=200):
        call = self.http.next()
        assert (call.method, call.path) == ("POST", "/api/webhook/ch/ack")
        assert json.loads(call.data) == {"ids": ids}
        call.respond(code, {"acked": len(ids)} if code == 200 else {"error": "internal_error"})


def test_poll_asks_for_a_lease_a_long_poll_and_raw_bodies():
    h = Harness(lease=45, wait=20, batch=7)
    call = h.http.next()
    assert call.query == {"lease": "45", "wait": "20", "limit": "7", "raw": "1"}
    assert call.header(b"authorization") == "Bearer tok"


def test_each_webhook_goes_to_the_target_byte_for_byte_then_is_acked():
    h = Harness()
    raw = b'{ "b" : 1,\n  "a" : [ 1.50, 2e3 ] }'
    headers = {"content-type": "application/json", "x-hub-signature-256": "sha256=ab", "connection": "close",
               "transfer-encoding": "chunked", "proxy-authorization": "x"}
    h.poll([item(5, raw, headers=headers), item(6)])
    first = h.target()
    assert first.data == raw
    assert first.header(b"x-hub-signature-256") == "sha256=ab"
    assert first.header(b"content-type") == "application/json"
    assert first.header(b"x-kwp-delivery-id") == "ch-5" and first.header(b"x-kwp-attempt") == "1"
    for hop in (b"connection", b"transfer-encoding", b"proxy-authorization"):
        assert first.header(hop) is None
    h.ack([5])
    h.target()
    h.ack([6])
    assert h.http.next().method == "GET"
    assert h.relay.delivered == 2


def test_a_failing_target_is_retried_with_backoff_and_order_is_kept():
    h = Harness(min_delay=1, max_delay=4)
    h.poll([item(1), item(2)])
    for delay in (1, 2, 4, 4):
        call = h.target(500)
        assert call.data == b'{"n": 1}'
        h.clock.advance(delay - 0.01)
        assert all(c.d.called for c in h.http.calls)
        h.clock.advance(0.01)
    retried = h.target(204)
    assert retried.header(b"x-kwp-delivery-id") == "ch-1" and retried.header(b"x-kwp-attempt") == "5"
    h.ack([1])
    h.target()
    h.ack([2])


def test_a_target_that_does_not_answer_times_out_and_is_retried():
    h = Harness(timeout=10, min_delay=1)
    h.poll([item(1)])
    h.http.next()
    h.clock.advance(10)
    h.clock.advance(1)
    assert h.target().header(b"x-kwp-attempt") == "2"


def test_failed_acks_do_not_hold_up_delivery_and_are_retried_before_the_next_poll():
    h = Harness(min_delay=1)
    h.poll([item(1), item(2)])
    h.target()
    h.ack([1], code=500)
    h.target()
    h.ack([1, 2], code=500)
    h.ack([1, 2], code=502)
    h.clock.advance(0.99)
    assert all(c.d.called for c in h.http.calls)
    h.clock.advance(0.01)
    h.ack([1, 2])
    assert h.http.next().method == "GET"
    assert h.relay.delivered == 2


def test_an_unreachable_proxy_is_retried_with_backoff():
    h = Harness(min_delay=2)
    h.http.next().fail(ConnectionRefusedError())
    h.clock.advance(1.99)
    assert all(c.d.called for c in h.http.calls)
    h.clock.advance(0.01)
    h.http.next().respond(503, b"")
    h.clock.advance(4)
    h.poll([item(1)])
    h.target()


def test_one_consumer_of_a_channel_is_relayed_with_its_own_delivery_ids():
    h = Harness(source=SOURCE + "?consumer=chat", lease=30)
    poll = h.http.next()
    assert (poll.path, poll.query["consumer"], poll.query["lease"]) == ("/api/webhook/ch", "chat", "30")
    poll.respond(200, [item(5)])
    check = h.http.next()
    assert (check.path, check.query) == ("/api/webhook/ch/list", {"consumer": "chat", "limit": "1"})
    check.respond(200, [{"id": 5}])
    assert h.target().header(b"x-kwp-delivery-id") == "ch.chat-5"
    ack = h.http.next()
    assert (ack.path, ack.query) == ("/api/webhook/ch/ack", {"consumer": "chat"})


def test_a_replayed_webhook_at_the_tail_is_not_taken_for_an_older_one_leased_elsewhere():
    h = Harness(lease=30)
    # 3 was replayed after 8 and 9: the head of the queue is 8, ours.
    h.poll([item(8), item(9), item(3)], older=[8, 9, 3])
    assert h.target().header(b"x-kwp-delivery-id") == "ch-8"


def test_older_webhooks_leased_by_an_earlier_relay_are_not_overtaken():
    h = Harness(lease=30)
    h.poll([item(8), item(9)], older=[3])
    assert all(c.d.called for c in h.http.calls)
    h.clock.advance(31)
    h.poll([item(3, deliveries=2), item(8, deliveries=2)])
    assert h.target().header(b"x-kwp-delivery-id") == "ch-3"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refusal_by_the_proxy_stops_the_relay(status):
    h = Harness()
    h.http.next().respond(status, {"error": "unauthorized"})
    assert isinstance(h.done.result.value, RelayError)
    h.done.addErrback(lambda f: None)


@pytest.mark.parametrize("answer", [{"not": "a list"}, ["body"], [{"id": 1, "headers": {}, "body": 7}], [{"body": ""}]])
def test_a_malformed_answer_of_the_proxy_is_retried_not_a_crash(answer):
    h = Harness()
    h.http.next().respond(200, answer)
    assert not h.done.called
    h.clock.advance(1)
    h.poll([item(5)])
    assert h.target().header(b"x-kwp-delivery-id") == "ch-5"


def test_stop_cancels_a_long_poll_at_once():
    h = Harness()
    poll = h.http.next()
    stopped = h.relay.stop()
    assert poll.d.called and stopped.called and h.done.called


def test_stop_lets_the_post_in_flight_finish_and_acks_it():
    h = Harness()
    h.poll([item(1), item(2)])
    stopped = h.relay.stop()
    assert not stopped.called
    h.target()
    h.ack([1])
    assert stopped.called and h.relay.delivered == 1
    assert [c.method for c in h.http.calls].count("POST") == 2


def test_stop_during_a_backoff_leaves_the_webhook_unacked():
    h = Harness()
    h.poll([item(1)])
    h.target(500)
    stopped = h.relay.stop()
    assert stopped.called and h.relay.delivered == 0
    assert h.clock.getDelayedCalls() == []


def test_backoff_doubles_up_to_the_cap_with_jitter():
    b = Backoff(1, 8, lambda: 1.0)
    assert [b.next() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    b.reset()
    assert b.next() == 1
    low = Backoff(1, 8, lambda: 0.0)
    assert [low.next() for _ in range(4)] == [0.5, 1, 2, 4]


def test_no_request_follows_a_redirect():
    h = Harness()
    h.poll([item(1)])
    h.target()
    h.ack([1])
    assert len(h.http.calls) == 5
    assert all(c.kwargs.get("allow_redirects") is False for c in h.http.calls)


def test_a_redirect_from_the_proxy_stops_the_relay_naming_the_location():
    h = Harness()
    h.http.next().respond(302, b"", headers={b"Location": b"https://elsewhere.example/steal"})
    error = h.done.result.value
    assert isinstance(error, RelayError) and "https://elsewhere.example/steal" in str(error)
    h.done.addErrback(lambda f: None)


def test_headers_never_passed_on_are_stripped_and_the_delivery_id_names_the_channel():
    h = Harness()
    headers = {"content-type": "application/json", "cookie": "s=1", "authorization": "Bearer x",
               "x-forwarded-for": "10.0.0.1", "x-real-ip": "10.0.0.1", "forwarded": "for=x",
               "x-http-method-override": "DELETE", "expect": "100-continue", "content-encoding": "gzip",
               "x-gitlab-token": "plain-secret", "x-kwp-delivery-id": "forged"}
    h.poll([item(7, headers=headers)])
    sent = h.target()
    names = sorted(name.decode().lower() for name, _ in sent.headers.getAllRawHeaders())
    assert names == ["content-type", "x-gitlab-token", "x-kwp-attempt", "x-kwp-delivery-id"]
    assert sent.header(b"x-kwp-delivery-id") == "ch-7"


def test_a_header_that_cannot_be_sent_is_left_out_instead_of_stopping_the_relay():
    h = Harness()
    h.poll([item(1, headers={"content-type": "application/json", "x bad": "1", "x-wide": "\u20ac", "x-ok": "1"})])
    sent = h.target()
    assert sorted(n.decode().lower() for n, _ in sent.headers.getAllRawHeaders()) == [
        "content-type", "x-kwp-attempt", "x-kwp-delivery-id", "x-ok"]
    h.ack([1])
    assert not h.done.called


def test_an_oversized_poll_answer_is_cut_off_and_retried_with_backoff(captured_log):
    h = Harness(max_response=4096, min_delay=2)
    poll = h.http.next()
    poll.respond(200, b"[" + b" " * 1024, chunks=100)
    assert poll.response.transport.producerState == "stopped"
    assert "the answer is larger than 4096 bytes" in captured_log.text()
    assert not h.done.called
    h.clock.advance(1.99)
    assert all(c.d.called for c in h.http.calls)
    h.clock.advance(0.01)
    h.poll([item(1)])
    h.target()


def test_the_channel_is_the_last_segment_of_the_source():
    assert RelaySettings("https://p.example/prefix/api/webhook/git%2Dhub/", "t", TARGET).channel == "git-hub"


class _Recorder(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []

    def render(self, request):
        self.requests.append((request.method, request.getHeader("authorization")))
        return b"[]"


class _Redirect(Resource):
    isLeaf = True

    def __init__(self, to: str):
        super().__init__()
        self.to = to.encode()

    def render(self, request):
        request.redirect(self.to)
        return b""


@pytest_twisted.ensureDeferred
async def test_a_real_redirect_is_not_followed_and_the_token_goes_nowhere():
    elsewhere = _Recorder()
    other = reactor.listenTCP(0, Site(elsewhere), interface="127.0.0.1")
    moved = f"http://127.0.0.1:{other.getHost().port}/api/webhook/ch"
    proxy = reactor.listenTCP(0, Site(_Redirect(moved)), interface="127.0.0.1")
    client, pool = http_client(reactor)
    settings = RelaySettings(f"http://127.0.0.1:{proxy.getHost().port}/api/webhook/ch", "tok", TARGET, wait=0)
    relay = Relay(settings, client, reactor)
    # A relay that followed the redirect would poll on; stopped, it would return.
    deadline = reactor.callLater(5, relay.stop)
    try:
        with pytest.raises(RelayError, match="redirects /api/webhook/ch to 'http://127.0.0.1:"):
            await relay.start()
        assert elsewhere.requests == []
    finally:
        if deadline.active():
            deadline.cancel()
        await pool.closeCachedConnections()
        await other.stopListening()
        await proxy.stopListening()


def settings_from(*argv, environ=None):
    args = build_parser().parse_args(["relay", "--to", TARGET, *argv])
    return relay_settings(args, environ or {})


@pytest.mark.parametrize("source", [
    "https://proxy.example/api/webhook/ch",
    "http://127.0.0.1:8080/api/webhook/ch",
    "http://127.8.9.10/api/webhook/ch",
    "http://localhost:8080/api/webhook/ch",
    "http://[::1]:8080/api/webhook/ch",
])
def test_https_or_a_loopback_source_is_accepted(source):
    assert settings_from("--from", source, "--token", "t").source == source


@pytest.mark.parametrize("source", ["http://proxy.example/api/webhook/ch", "http://10.0.0.5:8080/api/webhook/ch",
                                    "http://127.0.0.1.nip.io/api/webhook/ch"])
def test_an_http_source_on_another_machine_needs_allow_insecure(source, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["relay", "--from", source, "--to", TARGET, "--token", "t"], environ={})
    assert exit.value.code == 2
    assert "http:// to another machine" in capsys.readouterr().err
    assert settings_from("--from", source, "--token", "t", "--allow-insecure").source == source


def test_the_token_from_a_file_the_environment_or_the_command_line(tmp_path):
    source = ("--from", SOURCE.replace("http://proxy.test", "https://proxy.test"))
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    assert settings_from(*source, "--token-file", str(token_file)).token == "from-the-file"
    assert settings_from(*source, environ={"KWP_RELAY_TOKEN": "from-env"}).token == "from-env"
    assert settings_from(*source, "--token-file", str(token_file),
                         environ={"KWP_RELAY_TOKEN": "from-env"}).token == "from-the-file"
    assert settings_from(*source, "--token", "argv", environ={"KWP_RELAY_TOKEN": "from-env"}).token == "argv"
    with pytest.raises(ValueError, match="a token is required"):
        settings_from(*source, environ={"KWP_TOKEN": "the old name"})
    token_file.write_text("\n")
    with pytest.raises(ValueError, match="the file is empty"):
        settings_from(*source, "--token-file", str(token_file))
    with pytest.raises(ValueError, match="cannot read it: No such file"):
        settings_from(*source, "--token-file", str(tmp_path / "missing"))
    with pytest.raises(SystemExit):
        settings_from(*source, "--token-file", str(token_file), "--token", "t")


def test_the_source_must_be_a_channels_pull_url(capsys):
    for source in ("https://proxy.test/", "https://proxy.test/api/webhook/", "https://proxy.test/ch"):
        with pytest.raises(SystemExit):
            settings_from("--from", source, "--token", "t")
    assert "must be a channel's pull URL" in capsys.readouterr().err


def test_max_response_size_option():
    source = ("--from", "https://proxy.test/api/webhook/ch", "--token", "t")
    assert settings_from(*source).max_response == MAX_RESPONSE == 32 * 1024 * 1024
    assert settings_from(*source, "--max-response-size", "65536").max_response == 65536
