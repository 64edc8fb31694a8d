"""The HTTP layer on a real 127.0.0.1 listener: receive checks, pull, auth."""

from __future__ import annotations

import gc
import json
import socket
import struct
import time

import pytest
import pytest_twisted
import treq
from hypothesis import given, settings, strategies as st
from prometheus_client import generate_latest
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, fail, gatherResults, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.server import Site

from kwp.config import parse_config
from kwp.notify import Notifier
from kwp.storage import NewWebhook, StorageUnavailable
from kwp.web import KwpApp, KwpSite, receive_channel
from tests.conftest import BASIC_CONFIG
from tests.support import assert_error, body_json, metric_samples, until

GH = {"X-Hub-Signature-256": "gh-secret"}


@pytest_twisted.ensureDeferred
async def test_receive_then_pull_returns_and_deletes(local_kwp):
    kwp = local_kwp()
    response = await kwp.post("github", {"action": "opened"}, GH)
    assert response.code == 200
    assert (await body_json(response))["status"] == "ok"

    items = await body_json(await kwp.get("/api/webhook/github", "github-token"))
    assert len(items) == 1
    item = items[0]
    assert item["payload"] == {"action": "opened"}
    assert item["headers"]["x-hub-signature-256"] == "gh-secret"
    assert item["headers"]["content-type"] == "application/json"
    assert "host" not in item["headers"] and "content-length" not in item["headers"]
    assert isinstance(item["received_at"], int) and isinstance(item["id"], int)

    assert await body_json(await kwp.get("/api/webhook/github", "github-token")) == []


@pytest_twisted.ensureDeferred
async def test_head_on_the_pull_path_takes_nothing(local_kwp):
    # HEAD is routed like GET but its body is dropped: a pull would lose them.
    kwp = local_kwp()
    await kwp.post("open", {"n": 1})
    for query in ("", "?limit=1", "?lease=60", "?raw=1"):
        response = await treq.head(kwp.url(f"/api/webhook/open{query}"), headers={"Authorization": "Bearer open-token"})
        assert response.code == 200
        assert response.headers.getRawHeaders("connection") is None
    # The checks of GET still apply.
    assert (await treq.head(kwp.url("/api/webhook/open"))).code == 401
    bad = await treq.head(kwp.url("/api/webhook/open?limit=0"), headers={"Authorization": "Bearer open-token"})
    assert bad.code == 400
    items = await body_json(await kwp.get("/api/webhook/open", "open-token"))
    assert [i["payload"] for i in items] == [{"n": 1}] and "deliveries" not in items[0]


@pytest_twisted.ensureDeferred
async def test_any_json_value_is_accepted_and_returned_exactly(local_kwp):
    kwp = local_kwp()
    values = [{"a": [1, 2.5, None]}, [1, "x"], "text", 42, None, {"u": "é\u2603"}]
    for value in values:
        assert (await kwp.post("open", value)).code == 200
    items = await body_json(await kwp.get("/api/webhook/open", "open-token"))
    assert [i["payload"] for i in items] == values
    assert [i["id"] for i in items] == sorted(i["id"] for i in items)


@pytest_twisted.ensureDeferred
async def test_raw_body_is_kept_byte_for_byte(local_kwp):
    kwp = local_kwp()
    raw = b'{ "b" : 1,\n  "a" : [ 1.50, 2e3 ] }'
    await kwp.post("open", raw)
    rows = await kwp.storage.list("open", 10, 0)
    assert rows[0].body == raw


@pytest_twisted.ensureDeferred
async def test_receive_checks_in_contract_order(local_kwp):
    kwp = local_kwp()
    await assert_error(await kwp.post("nope", {}), 404, "channel_not_found")
    await assert_error(await kwp.post("github", {}), 401, "unauthorized")
    await assert_error(await kwp.post("github", {}, {"X-Hub-Signature-256": "wrong"}), 401, "unauthorized")
    # An unauthenticated oversized body is 401, not 413.
    await assert_error(await kwp.post("github", b"x" * 300_000), 401, "unauthorized")
    await assert_error(await kwp.post("github", b"x" * 300_000, GH), 413, "payload_too_large")
    await assert_error(await kwp.post("small", b"[" + b"1," * 600 + b"1]"), 413, "payload_too_large")
    await assert_error(await kwp.post("open", {}, {"Content-Type": "text/plain"}), 415, "invalid_content_type")
    await assert_error(await kwp.post("open", b"{not json"), 422, "invalid_json")
    await assert_error(await kwp.post("open", b"NaN"), 422, "invalid_json")
    await assert_error(await kwp.post("open", b"\xff\xfe{}"), 422, "invalid_json")
    await assert_error(await kwp.post("open", b""), 422, "invalid_json")
    assert await kwp.storage.list("open", 10, 0) == []
    assert await kwp.storage.list("github", 10, 0) == []


@pytest_twisted.ensureDeferred
async def test_json_content_types(local_kwp):
    kwp = local_kwp()
    for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON",
                         "application/vnd.github+json"):
        response = await kwp.post("open", {}, {"Content-Type": content_type})
        assert response.code == 200, content_type
    for content_type in ("text/json", "application/jsonx", "application/x-www-form-urlencoded"):
        await assert_error(await kwp.post("open", {}, {"Content-Type": content_type}), 415, "invalid_content_type")


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and b"}" in data:
                break
        return b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_the_limit_is_refused(local_kwp):
    kwp = local_kwp()
    port = kwp.port.getHost().port
    chunk = b"x" * 500
    request = (
        b"POST /api/webhook/small HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 3
        + b"0\r\n\r\n"
    )
    answer = await _in_thread(_raw_exchange, port, request)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"payload_too_large"' in answer


@pytest_twisted.ensureDeferred
async def test_declared_length_over_the_limit_is_refused_before_the_body(local_kwp):
    kwp = local_kwp()
    port = kwp.port.getHost().port
    # Expect: 100-continue gets no 100 Continue: the headers refuse it already,
    # and the body that follows is read into nothing before the 413.
    request = (
        b"POST /api/webhook/small HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )

    def exchange():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(request)
            s.settimeout(1)
            try:
                early = s.recv(65536)
            except TimeoutError:
                early = b""
            s.settimeout(5)
            s.sendall(b"x" * 5000)
            answer = early
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                data = s.recv(65536)
                if not data:
                    break
                answer += data
            return early, answer

    early, answer = await _in_thread(exchange)
    assert b"100 Continue" not in early
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"payload_too_large"' in answer


async def _in_thread(f, *args):
    from twisted.internet.threads import deferToThread

    return await deferToThread(f, *args)


@pytest_twisted.ensureDeferred
async def test_pull_auth_rules(local_kwp):
    kwp = local_kwp()
    await assert_error(await kwp.get("/api/webhook/github"), 401, "unauthorized")
    await assert_error(await kwp.get("/api/webhook/github", "wrong"), 401, "unauthorized")
    response = await treq.get(kwp.url("/api/webhook/github"), headers={"Authorization": "Basic abc"})
    await assert_error(response, 401, "unauthorized")
    await assert_error(await kwp.get("/api/webhook/github", "open-token"), 403, "forbidden")
    await assert_error(await kwp.get("/api/webhook/nope", "admin-secret-token"), 404, "channel_not_found")
    assert (await kwp.get("/api/webhook/github", "admin-secret-token")).code == 200
    response = await treq.get(kwp.url("/api/webhook/github"), headers={"Authorization": "bearer github-token"})
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_pull_limit_and_bad_parameters(local_kwp):
    kwp = local_kwp()
    for i in range(5):
        await kwp.post("open", {"n": i})
    first = await body_json(await kwp.get("/api/webhook/open?limit=2", "open-token"))
    assert [i["payload"]["n"] for i in first] == [0, 1]
    rest = await body_json(await kwp.get("/api/webhook/open", "open-token"))
    assert [i["payload"]["n"] for i in rest] == [2, 3, 4]
    bad = ("limit=0", "limit=10001", "limit=x", "limit=", "limit=+5", "limit=%205", "limit=1_0", "limit=%D9%A5",
           "wait=61", "wait=-1", "wait=1e1", "lease=0", "lease=3601", "lease=1.5", "raw=2", "raw=yes")
    for query in bad:
        await assert_error(await kwp.get(f"/api/webhook/open?{query}", "open-token"), 400, "bad_request")


@pytest_twisted.ensureDeferred
async def test_concurrent_pulls_never_share_a_webhook(local_kwp):
    kwp = local_kwp()
    await _post_many(kwp, "open", 300)
    results = await _gather([kwp.get("/api/webhook/open?limit=40", "open-token") for _ in range(10)])
    ids = []
    for response in results:
        ids += [i["id"] for i in await body_json(response)]
    assert len(ids) == len(set(ids)) == 300


@pytest_twisted.ensureDeferred
async def test_webhooks_arriving_during_pulls_are_not_lost(local_kwp):
    kwp = local_kwp()
    seen = []
    posts = [kwp.post("open", {"n": i}) for i in range(200)]
    pulls = [kwp.get("/api/webhook/open?limit=15", "open-token") for _ in range(10)]
    for response in await _gather(posts):
        assert response.code == 200
    for response in await _gather(pulls):
        seen += [i["payload"]["n"] for i in await body_json(response)]
    seen += [i["payload"]["n"] for i in await body_json(await kwp.get("/api/webhook/open", "open-token"))]
    assert sorted(seen) == list(range(200))


@pytest_twisted.ensureDeferred
async def test_a_pull_whose_client_goes_away_deletes_nothing(local_kwp):
    kwp = local_kwp()
    await kwp.post("open", {"n": 1})
    port = kwp.port.getHost().port
    claim = kwp.storage.claim
    claims = []

    def claim_outlived_by_its_client(*args, **kwargs):
        # A client that closes after the response reached its kernel looks,
        # from the server, like one that read it: this claim answers only
        # once the server has seen the client go.
        kwp.storage.claim = claim
        claims.append(args)
        gone = ensureDeferred(until(lambda: not kwp.site.connections, what="the client gone"))
        return claim(*args, **kwargs).addCallback(lambda page: gone.addCallback(lambda _: page))

    kwp.storage.claim = claim_outlived_by_its_client

    def hang_up():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /api/webhook/open?wait=5 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer open-token\r\n\r\n")

    # The long-poll finds the webhook at once, but the client is gone before
    # the response is written: the webhook must stay.
    await _in_thread(hang_up)
    pulled = []

    async def given_back():
        # The claim is given back in a transaction of its own.
        pulled.extend(await body_json(await kwp.get("/api/webhook/open", "open-token")))
        return pulled

    await until(given_back, what="the webhook given back")
    assert len(claims) == 1
    assert [i["payload"] for i in pulled] == [{"n": 1}]


@pytest_twisted.ensureDeferred
async def test_long_poll_wakes_on_insert(local_kwp):
    kwp = local_kwp()
    started = reactor.seconds()
    pending = kwp.get("/api/webhook/open?wait=10", "open-token")
    await task.deferLater(reactor, 0.2, lambda: None)
    await kwp.post("open", {"late": True})
    items = await body_json(await pending)
    assert [i["payload"] for i in items] == [{"late": True}]
    assert reactor.seconds() - started < 5


def _hold_long_poll(port, channel="open", token="open-token"):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET /api/webhook/{channel}?wait=60 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    return s


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_a_long_poll_frees_it_at_once(local_kwp):
    kwp = local_kwp()
    s = _hold_long_poll(kwp.port.getHost().port)
    await until(lambda: kwp.app.notifier.waiting(("open", "default")) == 1)
    s.close()
    await until(lambda: kwp.app.notifier.waiting(("open", "default")) == 0, timeout=1)
    await kwp.post("open", {"n": 1})
    items = await body_json(await kwp.get("/api/webhook/open", "open-token"))
    assert [i["payload"] for i in items] == [{"n": 1}]


@pytest_twisted.ensureDeferred
async def test_a_long_poll_beyond_the_tokens_cap_is_refused_with_429(local_kwp):
    kwp = local_kwp({**BASIC_CONFIG, "server": {**BASIC_CONFIG["server"], "max-waiters-per-token": 2}})
    port = kwp.port.getHost().port
    held = [_hold_long_poll(port) for _ in range(2)]
    try:
        await until(lambda: kwp.app.notifier.waiting(("open", "default")) == 2)
        refused = await kwp.get("/api/webhook/open?wait=5", "open-token")
        await assert_error(refused, 429, "too_many_requests")
        assert refused.headers.getRawHeaders("retry-after") == ["5"]
        # A pull that does not wait, and another token, are not held back.
        assert await body_json(await kwp.get("/api/webhook/open", "open-token")) == []
        assert await body_json(await kwp.get("/api/webhook/open?wait=1", "admin-secret-token")) == []
        held.pop().close()
        await until(lambda: kwp.app.notifier.waiting(("open", "default")) == 1)
        assert await body_json(await kwp.get("/api/webhook/open?wait=1", "open-token")) == []
    finally:
        for s in held:
            s.close()


@pytest_twisted.ensureDeferred
async def test_a_thousand_idle_long_polls_hold_no_thread_and_no_cpu(local_kwp):
    import os
    import threading

    # One token may hold this many long-polls only when the config says so.
    kwp = local_kwp({**BASIC_CONFIG, "server": {**BASIC_CONFIG["server"], "max-waiters-per-token": 1000}})

    def threads() -> int:
        # Besides those of the storage's connection pool, which has a fixed
        # size (PostgreSQL's opens its connections as they are needed).
        return threading.active_count() - len(kwp.storage._pool.threadpool.threads)

    before = threads()
    port = kwp.port.getHost().port
    sockets = []
    try:
        for _ in range(50):
            sockets += [_hold_long_poll(port) for _ in range(20)]
            # Let the reactor accept them: the listen backlog is short.
            await task.deferLater(reactor, 0, lambda: None)
        await until(lambda: kwp.app.notifier.waiting(("open", "default")) == 1000, timeout=20)
        assert threads() == before
        cpu = sum(os.times()[:2])
        await task.deferLater(reactor, 1.0, lambda: None)
        assert sum(os.times()[:2]) - cpu < 0.2
        # One of them takes it; the others wait again.
        await kwp.post("open", {"n": 1})
        await until(lambda: kwp.app.notifier.waiting(("open", "default")) == 999)
        for _ in range(100):
            if not await kwp.storage.list("open", 1, 0):
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        assert await kwp.storage.list("open", 1, 0) == []
    finally:
        for s in sockets:
            s.close()


@pytest_twisted.ensureDeferred
async def test_raw_pull_returns_the_stored_bytes(local_kwp):
    import base64

    kwp = local_kwp()
    raw = b'{ "b" : 1,\n  "a" : [ 1.50, 2e3 ] }'
    await kwp.post("open", raw)
    items = await body_json(await kwp.get("/api/webhook/open?raw=1&lease=60", "open-token"))
    assert base64.b64decode(items[0]["body"]) == raw and "payload" not in items[0]
    assert items[0]["deliveries"] == 1


@pytest_twisted.ensureDeferred
async def test_long_poll_times_out_with_an_empty_array(local_kwp):
    kwp = local_kwp()
    assert await body_json(await kwp.get("/api/webhook/open?wait=1", "open-token")) == []


@pytest_twisted.ensureDeferred
async def test_lease_ack_and_redelivery(local_kwp):
    kwp = local_kwp()
    await _post_many(kwp, "open", 3)
    leased = await body_json(await kwp.get("/api/webhook/open?lease=1", "open-token"))
    assert [i["deliveries"] for i in leased] == [1, 1, 1]
    assert await body_json(await kwp.get("/api/webhook/open?lease=1", "open-token")) == []
    ack = await treq.post(kwp.url("/api/webhook/open/ack"), json={"ids": [leased[0]["id"], 999999]},
                          headers={"Authorization": "Bearer open-token"})
    assert await body_json(ack) == {"acked": 1}
    await task.deferLater(reactor, 1.1, lambda: None)
    again = await body_json(await kwp.get("/api/webhook/open?lease=30", "open-token"))
    assert [i["id"] for i in again] == [leased[1]["id"], leased[2]["id"]]
    assert [i["deliveries"] for i in again] == [2, 2]


@pytest_twisted.ensureDeferred
async def test_ack_of_another_channels_ids_changes_nothing(local_kwp):
    kwp = local_kwp()
    await kwp.post("open", {"n": 1})
    leased = await body_json(await kwp.get("/api/webhook/open?lease=60", "open-token"))
    ack = await treq.post(kwp.url("/api/webhook/github/ack"), json={"ids": [leased[0]["id"]]},
                          headers={"Authorization": "Bearer github-token"})
    assert await body_json(ack) == {"acked": 0}
    for body in (b"[]", b'{"ids": "1"}', b'{"ids": [true]}', b"nope", b'{"ids": [1.0]}', b'{"ids": [-1]}',
                 b'{"ids": [9223372036854775808]}', b'{"ids": [%s]}' % b",".join(b"1" for _ in range(10001))):
        response = await treq.post(kwp.url("/api/webhook/open/ack"), data=body,
                                   headers={"Authorization": "Bearer open-token"})
        await assert_error(response, 400, "bad_request")
    assert len(await kwp.storage.list("open", 10, 0)) == 1


@pytest_twisted.ensureDeferred
async def test_list_and_delete(local_kwp):
    kwp = local_kwp()
    await _post_many(kwp, "open", 3)
    listed = await body_json(await kwp.get("/api/webhook/open/list", "open-token"))
    assert len(listed) == 3
    after = await body_json(await kwp.get(f"/api/webhook/open/list?after={listed[0]['id']}&limit=1", "open-token"))
    assert [i["id"] for i in after] == [listed[1]["id"]]
    auth = {"Authorization": "Bearer open-token"}
    assert (await treq.delete(kwp.url(f"/api/webhook/open/{listed[0]['id']}"), headers=auth)).code == 204
    await assert_error(await treq.delete(kwp.url(f"/api/webhook/open/{listed[0]['id']}"), headers=auth),
                       404, "not_found")
    await assert_error(await treq.delete(kwp.url(f"/api/webhook/open/{2**64}"), headers=auth), 404, "not_found")
    assert len(await body_json(await kwp.get("/api/webhook/open/list", "open-token"))) == 2


@pytest_twisted.ensureDeferred
async def test_unknown_paths_and_methods_get_json_errors(local_kwp):
    kwp = local_kwp()
    await assert_error(await treq.get(kwp.url("/nope")), 404, "not_found")
    response = await treq.put(kwp.url("/api/webhook/open"), data=b"{}")
    await assert_error(response, 405, "bad_request")
    assert sorted(response.headers.getRawHeaders("allow")[0].split(", ")) == ["GET", "HEAD", "POST"]


@pytest.mark.parametrize(
    "method, path, channel",
    [
        (b"POST", b"/api/webhook/open", "open"),
        (b"POST", b"/api/webhook/open?x=1&y=/a/b", "open"),
        (b"POST", b"//api/webhook/open", "open"),
        (b"POST", b"/api//webhook/open", None),
        (b"POST", b"/api/webhook//open", None),
        (b"POST", b"/api/webhook/%6Fpen", "open"),
        (b"POST", b"/api/webhook/caf%C3%A9", "caf\u00e9"),
        (b"GET", b"/api/webhook/open", None),
        (b"HEAD", b"/api/webhook/open", None),
        (b"POST", b"/api/webhook/open/", None),
        (b"POST", b"/api/webhook/open/ack", None),
        (b"POST", b"/api/webhook/", None),
        (b"POST", b"/api/webhook/a%2Fb", None),
        (b"POST", b"/api/webhook/%FF", None),
        (b"POST", b"/x/api/webhook/open", None),
        (b"POST", b"/api/hook/open", None),
    ],
)
def test_receive_requests_are_told_from_the_others(method, path, channel):
    assert receive_channel(method, path) == channel


class _RouterSpy(KwpApp):
    """The Klein router, recording the receives it routes instead of answering them."""

    routed: list[str]

    def answer_receive(self, request, name):
        self.routed.append(name)
        return succeed(b"")


_router_spy = _RouterSpy(parse_config(BASIC_CONFIG), None, Notifier(), task.Clock())
# Paths near the receive route, each part either right or wrong in one of
# the ways that twisted.web, Klein and werkzeug treat differently.
_near_receive_paths = st.builds(
    "{}{}/{}/{}{}".format,
    st.sampled_from(["/", "//", "///", "x", "/%2F"]),
    st.sampled_from(["api", "%61pi", "API", "", "api/", "x/api"]),
    st.sampled_from(["webhook", "web%68ook", "webhooks", "/webhook"]),
    st.sampled_from(["open", "caf%C3%A9", "a%2Fb", "%2F", "%FF", "", "x%20y", ".", "..", "open/", "open/ack", "o//"]),
    st.sampled_from(["", "?", "?a=/api/webhook/b", "#x"]),
)


@given(path=_near_receive_paths)
@settings(max_examples=500, deadline=None)
def test_receive_requests_are_those_the_router_sends_to_its_receive_route(path):
    path = path.encode()
    _router_spy.routed = []
    channel = Site(_router_spy.app.resource()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % path)
    assert _router_spy.routed or transport.value(), "the router neither routed nor answered"
    assert receive_channel(b"POST", path) == (_router_spy.routed[0] if _router_spy.routed else None)


@pytest_twisted.ensureDeferred
async def test_the_router_alone_answers_a_receive_as_the_root_does(local_kwp):
    """KwpRoot answers receives before the Klein router sees them; the
    router's own route gives the same answers, on a stock Site whose requests
    were not checked in gotLength."""
    kwp = local_kwp()
    port = reactor.listenTCP(0, Site(kwp.app.app.resource()), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/api/webhook/github"
        json_type = {"Content-Type": "application/json"}
        await assert_error(await treq.post(url, data=b"{}", headers=json_type), 401, "unauthorized")
        response = await treq.post(url, data=b'{"a": 1}', headers={**json_type, **GH})
        assert (await body_json(response))["status"] == "ok"
        assert [bytes(item.body) for item in await kwp.storage.list("github", 10, 0)] == [b'{"a": 1}']
    finally:
        await port.stopListening()


class _HeldStorage:
    """Inserts that commit only when the test says so."""

    def __init__(self):
        self.held: list[Deferred] = []

    def insert(self, webhook):
        self.held.append(Deferred())
        return self.held[-1]


class _InMemoryReceive:
    """One connection to a KwpSite over an in-memory transport, on a Clock,
    with every log event of the test kept in ``events``."""

    def __init__(self, storage):
        clock = task.Clock()
        self.app = KwpApp(parse_config(BASIC_CONFIG), storage, Notifier(), clock)
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        self.channel = KwpSite(self.app, clock).buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        self.channel.makeConnection(self.transport)
        self.events: list[dict] = []

    def __enter__(self):
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc_info):
        gc.collect()
        globalLogPublisher.removeObserver(self.events.append)

    def post(self, body: bytes = b"{}") -> None:
        self.channel.dataReceived(
            b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    def failures(self) -> list[str]:
        return [e["log_format"] for e in self.events if "log_failure" in e]

    def counted(self) -> dict:
        return metric_samples(generate_latest(self.app.metrics.registry)).get("kwp_webhook_receive_total", {})


def test_a_sender_that_leaves_before_the_commit_gets_nothing_written():
    storage = _HeldStorage()
    with _InMemoryReceive(storage) as kwp:
        kwp.post()
        assert len(storage.held) == 1 and kwp.transport.value() == b""
        kwp.channel.connectionLost(Failure(ConnectionDone()))
        storage.held[0].callback(1)
    assert kwp.transport.value() == b""
    assert kwp.failures() == []
    assert kwp.counted() == {}


def test_each_request_on_a_kept_alive_connection_has_its_own_receive_deadline():
    storage = _HeldStorage()
    with _InMemoryReceive(storage) as kwp:
        clock = kwp.app.clock
        kwp.post()
        storage.held[0].callback(1)
        assert kwp.transport.value().startswith(b"HTTP/1.1 200 ")
        # A second request starts 20 s later and trickles in, a line every
        # 15 s (under the idle time-out): past the first request's deadline
        # (60 s) it is still read, and cut off 60 s after its own first byte.
        lines = [b"POST /api/webhook/open HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"]
        for wait, line in zip([20, 15, 15, 15], lines):
            clock.advance(wait)
            assert not kwp.transport.disconnecting
            kwp.channel.dataReceived(line)
        clock.advance(14.5)
        assert not kwp.transport.disconnecting
        clock.advance(0.5)
        assert kwp.transport.disconnecting


class _BrokenStorage:
    def __init__(self, error: Exception):
        self.error = error

    def insert(self, webhook):
        return fail(self.error)


def test_a_storage_failure_is_a_json_500_logged_and_counted():
    with _InMemoryReceive(_BrokenStorage(RuntimeError("disk on fire"))) as kwp:
        kwp.post()
    assert kwp.transport.value().startswith(b"HTTP/1.1 500 ")
    assert kwp.transport.value().endswith(b'{"error": "internal_error", "message": "the webhook could not be stored"}')
    assert kwp.failures() == ["request failed"]
    assert kwp.counted() == {(("channel", "open"), ("status", "internal_error")): 1.0}


def test_storage_that_cannot_take_writes_is_a_503_storage_unavailable_counted_as_such():
    with _InMemoryReceive(_BrokenStorage(StorageUnavailable("the disk is full"))) as kwp:
        kwp.post()
    head, _, body = kwp.transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 60\r\n" in head + b"\r\n"
    assert json.loads(body) == {"error": "storage_unavailable",
                                "message": "the webhook could not be stored now: the disk is full"}
    assert kwp.counted() == {(("channel", "open"), ("status", "storage_unavailable")): 1.0}


def test_an_unexpected_error_in_the_receive_is_a_json_500_logged_and_counted(monkeypatch):
    monkeypatch.setattr("kwp.receive.parse_json", lambda body: 1 / 0)
    with _InMemoryReceive(_HeldStorage()) as kwp:
        kwp.post()
    assert kwp.transport.value().startswith(b"HTTP/1.1 500 ")
    assert kwp.transport.value().endswith(b'{"error": "internal_error", "message": "internal error"}')
    assert kwp.failures() == ["unexpected error"]
    assert kwp.counted() == {(("channel", "open"), ("status", "internal_error")): 1.0}


@pytest_twisted.ensureDeferred
async def test_health_and_version(local_kwp):
    kwp = local_kwp()
    assert await body_json(await treq.get(kwp.url("/api/health"))) == {"status": "ok"}
    assert "version" in await body_json(await treq.get(kwp.url("/api/version")))
    kwp.storage.stopService()
    response = await treq.get(kwp.url("/api/health"))
    assert response.code == 503
    kwp.storage.startService()


async def _gather(deferreds):
    return await gatherResults([ensureDeferred(d) for d in deferreds])


async def _post_many(kwp, channel, n):
    for response in await _gather([kwp.post(channel, {"n": i}) for i in range(n)]):
        assert response.code == 200


def _trickle(port: int, data: bytes, interval: float, give_up: float) -> float | None:
    """Send data one byte per interval; the seconds until the server closed
    the connection, or None when it was still open after give_up seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        started = time.monotonic()
        for byte in data:
            if time.monotonic() - started > give_up:
                return None
            try:
                s.sendall(bytes([byte]))
            except OSError:
                return time.monotonic() - started
            s.settimeout(interval)
            try:
                if s.recv(65536) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                pass
            except OSError:
                return time.monotonic() - started
        return None


@pytest.mark.parametrize(
    "data",
    [
        # Still in the request line, which Twisted buffers before any Request exists.
        b"GET /api/webhook/open?" + b"x" * 200,
        b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 200,
        b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"z" * 100,
    ],
    ids=["request-line", "headers", "body"],
)
@pytest_twisted.ensureDeferred
async def test_a_request_trickling_in_is_cut_off_at_the_receive_timeout(local_kwp, data):
    kwp = local_kwp(receive_timeout=1.5, idle_timeout=1)
    # A byte every 0.3 s keeps the idle time-out from ever firing.
    closed_after = await _in_thread(_trickle, kwp.port.getHost().port, data, 0.3, 20)
    assert closed_after is not None and closed_after < 10


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT A REQUEST LINE\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(600)) + b"\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 9000 + b"\r\nX-Big2: " + b"b" * 9000
        + b"\r\n\r\n",
        b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["request-line", "header-line", "header-count", "header-size", "two-lengths", "transfer-encoding",
         "line-length"],
)
@pytest_twisted.ensureDeferred
async def test_a_request_twisted_cannot_parse_gets_a_json_400(local_kwp, request_bytes):
    kwp = local_kwp()
    answer = await _in_thread(_raw_exchange, kwp.port.getHost().port, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"\r\ncontent-type: application/json" in head.lower()
    assert json.loads(body)["error"] == "bad_request"
    assert (await treq.get(kwp.url("/api/health"))).code == 200


@pytest_twisted.ensureDeferred
async def test_a_pull_cut_off_while_its_last_page_is_still_buffered_deletes_nothing(local_kwp):
    kwp = local_kwp()
    # One page, several MB: written to the transport at once, far more than
    # the client reads before it goes away.
    filler = "x" * 30_000
    for n in range(150):
        await kwp.storage.insert(NewWebhook("open", "{}", json.dumps({"n": n, "f": filler}).encode(), 1.0))
    port = kwp.port.getHost().port

    def read_a_little_and_hang_up():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /api/webhook/open HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer open-token\r\n\r\n")
            first = s.recv(2048)
            time.sleep(0.5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return first

    assert (await _in_thread(read_a_little_and_hang_up)).startswith(b"HTTP/1.1 200 ")
    await task.deferLater(reactor, 1, lambda: None)
    assert len(await kwp.storage.list("open", 1000, 0)) == 150


@pytest_twisted.ensureDeferred
async def test_deleting_an_id_beyond_sqlite_integers_is_404(local_kwp):
    kwp = local_kwp()
    response = await treq.delete(kwp.url("/api/webhook/open/99999999999999999999999"),
                                 headers={"Authorization": "Bearer open-token"})
    await assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /api/webhook/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET %C2%80 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"POST /api/webhook/open HTTP/1.1\r\nHost: \xff\xfe\r\nContent-Length: 2\r\n\r\n{}", 400),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ],
    ids=["path", "path-without-slash", "host", "star"],
)
@pytest_twisted.ensureDeferred
async def test_urls_klein_cannot_route_get_json_errors(local_kwp, request_bytes, status):
    kwp = local_kwp()
    answer = await _in_thread(_raw_exchange, kwp.port.getHost().port, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"\r\ncontent-type: application/json" in head.lower()
    assert json.loads(body)["error"] == "bad_request"


@pytest_twisted.ensureDeferred
async def test_a_declared_length_too_large_to_discard_is_answered_at_once(local_kwp):
    kwp = local_kwp()
    request = (
        b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 99999999999\r\n\r\n{}"
    )
    answer = await _in_thread(_raw_exchange, kwp.port.getHost().port, request)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"payload_too_large"' in answer


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("//api/webhook/github", 401, "unauthorized"),
        ("/api//webhook/github", 404, "not_found"),
        ("/api/webhook//github", 404, "not_found"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_receive_path_with_merged_slashes_still_checks_the_secret(local_kwp, path, status, code):
    kwp = local_kwp()
    response = await treq.post(kwp.url(path), data=b"{}", headers={"Content-Type": "application/json"})
    await assert_error(response, status, code)
    assert await kwp.storage.list("github", 10, 0) == []
    response = await treq.post(kwp.url("//api/webhook/nope"), data=b"{}", headers={"Content-Type": "application/json"})
    await assert_error(response, 404, "channel_not_found")


@pytest.mark.parametrize("path", ["/api/webhook/open/ack", "/api/webhook/open/test-send", "/api/webhook/open/sign"])
@pytest.mark.parametrize("chunked", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_body_over_every_limit_is_refused_on_the_other_routes_too(local_kwp, path, chunked):
    kwp = local_kwp()
    body = b" " * (kwp.config.largest_body_limit + 1)
    framing = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" if chunked else b"Content-Length: %d\r\n\r\n%s"
    request = (b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer open-token\r\n" % path.encode()) + framing % (
        len(body),
        body,
    )
    answer = await _in_thread(_raw_exchange, kwp.port.getHost().port, request)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"payload_too_large"' in answer


def _exchange_until_closed(port: int, request: bytes) -> bytes:
    """Everything the server sends before it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_a_refused_request_is_the_last_on_its_connection(local_kwp):
    kwp = local_kwp()
    request = b"POST /api/webhook/github HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    answer = await _in_thread(_exchange_until_closed, kwp.port.getHost().port, request)
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in answer.lower()
