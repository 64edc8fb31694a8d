"""kwp.relay.Relay on a task.Clock with a scripted HTTP client."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError

from kwp.relay import Backoff, Relay, RelayError, RelaySettings

SOURCE = "http://proxy.test/api/webhook/ch"
TARGET = "http://target.test/hook"


class Response:
    def __init__(self, code, body: bytes):
        self.code = code
        self._body = body

    def content(self):
        return succeed(self._body)


class Call:
    def __init__(self, method, url, headers, data):
        self.method, self.url, self.headers, self.data = method, url, headers, data
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

    def respond(self, code=200, body=None):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.d.callback(Response(code, raw))

    def fail(self, error):
        self.d.errback(error)


class FakeHTTP:
    def __init__(self):
        self.calls: list[Call] = []

    def request(self, method, url, headers=None, data=None):
        call = Call(method, url, headers, data)
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
    def __init__(self, **settings):
        self.clock = task.Clock()
        self.http = FakeHTTP()
        self.relay = Relay(RelaySettings(SOURCE, "tok", TARGET, **settings), self.http, self.clock, random=lambda: 1.0)
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
    assert first.header(b"x-kwp-delivery-id") == "5" and first.header(b"x-kwp-attempt") == "1"
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
    assert retried.header(b"x-kwp-delivery-id") == "1" and retried.header(b"x-kwp-attempt") == "5"
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


def test_older_webhooks_leased_by_an_earlier_relay_are_not_overtaken():
    h = Harness(lease=30)
    h.poll([item(8), item(9)], older=[3])
    assert all(c.d.called for c in h.http.calls)
    h.clock.advance(31)
    h.poll([item(3, deliveries=2), item(8, deliveries=2)])
    assert h.target().header(b"x-kwp-delivery-id") == "3"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refusal_by_the_proxy_stops_the_relay(status):
    h = Harness()
    h.http.next().respond(status, {"error": "unauthorized"})
    assert isinstance(h.done.result.value, RelayError)
    h.done.addErrback(lambda f: None)


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
