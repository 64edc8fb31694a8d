"""Push delivery over real sockets: kwp in this process, a target on
127.0.0.1 that fails, recovers, refuses connections and answers slowly;
the queue API; the schema migration."""

from __future__ import annotations

import base64
import json
import sqlite3
import time

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from kwp.forward import MAX_BODY_KEPT
from kwp.storage import Attempt, NewWebhook
from kwp.storage.sqlite import MIGRATIONS, SQLiteStorage
from tests.forward_support import assert_sent_as_posted
from tests.support import free_port, metric_samples, until


def kwp_config(url: str, **forward) -> dict:
    return {
        "server": {"admin-token": "admin-token"},
        "channels": [
            {
                "name": "push",
                "token": "push-token",
                "forward": {"url": url, "interval-seconds": 0.05, "max-delay-seconds": 0.2, **forward},
            },
            {"name": "pull", "token": "pull-token"},
        ],
    }


async def queue(kwp, token="push-token", channel="push"):
    response = await kwp.get(f"/api/webhook/{channel}/queue", token)
    assert response.code == 200, await response.text()
    return json.loads(await response.content())


async def post_api(kwp, path, token="push-token"):
    return await treq.post(kwp.url(path), headers={"Authorization": f"Bearer {token}"})


@pytest_twisted.ensureDeferred
async def test_attempts_are_counted_in_the_metrics(local_kwp, target):
    t = target()
    t.status = 500
    config = kwp_config(t.url)
    config["server"]["metrics"] = True
    kwp = local_kwp(config)
    await kwp.post("push", {"n": 1})
    await t.wait_for(1)
    # The target answers after its waiters run: let it answer the 500 first.
    await deferLater(reactor, 0.01)
    t.status = 200
    await until(lambda: _empty(kwp))
    samples = metric_samples(await (await kwp.get("/api/metrics")).content())
    assert samples["kwp_webhook_forward_total"] == {
        (("channel", "push"), ("consumer", "default"), ("status", "unexpected_status")): 1,
        (("channel", "push"), ("consumer", "default"), ("status", "ok")): 1,
    }
    assert samples["kwp_webhook_forward_duration_seconds_count"] == {(("channel", "push"), ("consumer", "default")): 2}


@pytest_twisted.ensureDeferred
async def test_user_info_in_the_url_is_sent_as_basic_credentials(local_kwp, target):
    t = target()
    kwp = local_kwp(kwp_config(t.url.replace("http://", "http://hook%20user:p%40ss@")))
    await kwp.post("push", {"n": 1})
    await t.wait_for(1)
    assert t.received[0]["headers"]["authorization"] == "Basic " + base64.b64encode(b"hook user:p@ss").decode()
    await until(lambda: _empty(kwp))


@pytest_twisted.ensureDeferred
async def test_delivers_byte_for_byte_at_once_and_deletes(local_kwp, target):
    t = target()
    kwp = local_kwp(kwp_config(t.url))
    raw = b'{ "a" : [1.50, 2e3],\n "b": "\xc3\xa9" }'
    started = time.monotonic()
    response = await kwp.post("push", raw, {"X-Custom": "yes"})
    webhook_id = json.loads(await response.content())["id"]
    await t.wait_for(1)
    print(f"in-process forward latency: {(t.received[0]['at'] - started) * 1000:.1f} ms")
    assert t.received[0]["at"] - started < 1.0
    assert_sent_as_posted(t.received[0], raw, webhook_id)
    await until(lambda: _empty(kwp))
    status = (await queue(kwp))["status"]
    assert status["last_success_at"] is not None and status["last_error_at"] is None


async def _empty(kwp) -> bool:
    return (await queue(kwp))["status"]["queue_size"] == 0


@pytest_twisted.ensureDeferred
async def test_failing_target_is_retried_until_it_recovers(local_kwp, target):
    t = target()
    t.status, t.body = 500, b"down for maintenance"
    kwp = local_kwp(kwp_config(t.url))
    for n in range(3):
        await kwp.post("push", {"n": n})
    await t.wait_for(3)
    view = await queue(kwp)
    assert view["status"]["queue_size"] == 3
    assert view["status"]["last_error_message"].startswith("unexpected status 500: down for maintenance")
    head = view["items"][0]
    assert head["forward_attempts"] >= 1 and head["state"] == "pending"
    assert head["next_attempt_at"] is not None and head["last_attempt_error"].startswith("unexpected status 500")
    # Strict order: nothing behind the head was tried while it failed.
    assert {r["body"] for r in t.received} == {b'{"n": 0}'}
    t.status = 200
    await until(lambda: _empty(kwp))
    assert t.delivered() == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    attempts = [int(r["headers"]["x-kwp-attempt"]) for r in t.received if r["body"] == b'{"n": 0}']
    assert attempts == list(range(1, len(attempts) + 1))


@pytest_twisted.ensureDeferred
async def test_refused_connection_then_target_comes_up(local_kwp, target):
    port = free_port()
    kwp = local_kwp(kwp_config(f"http://127.0.0.1:{port}/hook"))
    await kwp.post("push", {"n": 1})
    await until(lambda: _has_error(kwp))
    view = await queue(kwp)
    assert "refused" in view["items"][0]["last_attempt_error"].lower()
    t = target(port)
    await t.wait_for(1)
    await until(lambda: _empty(kwp))
    assert t.delivered() == [b'{"n": 1}']


async def _has_error(kwp) -> bool:
    return (await queue(kwp))["status"]["last_error_at"] is not None


@pytest_twisted.ensureDeferred
async def test_slow_target_times_out_without_stalling_other_channels(local_kwp, target):
    slow, fast = target(), target()
    slow.status = None
    config = kwp_config(slow.url, **{"timeout-seconds": 0.3})
    config["channels"].append(
        {"name": "other", "token": "other-token", "forward": {"url": fast.url, "interval-seconds": 1}}
    )
    kwp = local_kwp(config)
    await kwp.post("push", {"slow": True})
    await slow.wait_for(1)
    await kwp.post("other", {"fast": True})
    await fast.wait_for(1, timeout=0.25)
    await until(lambda: _has_error(kwp))
    assert (await queue(kwp))["items"][0]["last_attempt_error"] == "no complete answer within 0.3s"


@pytest_twisted.ensureDeferred
async def test_huge_body_and_garbage_answers_are_bounded(local_kwp, target):
    t = target()
    t.status, t.body = 500, b"z" * (4 * 1024 * 1024)
    kwp = local_kwp(kwp_config(t.url, **{"max-attempts": 1}))
    await kwp.post("push", {"n": 1})
    await until(lambda: _has_error(kwp))
    item = (await queue(kwp))["items"][0]
    assert item["state"] == "dead" and len(item["last_attempt_error"]) < 1024
    t.body = b"y" * (4 * 1024 * 1024)
    response = await post_api(kwp, f"/api/webhook/push/queue/retry/{item['id']}")
    result = json.loads(await response.content())
    assert result["success"] is False and result["status_code"] == 500
    assert result["body"] == "y" * MAX_BODY_KEPT

    class Garbage(Protocol):
        def dataReceived(self, data):
            self.transport.write(b"NOT HTTP AT ALL\r\n\r\n")
            self.transport.loseConnection()

    garbage = reactor.listenTCP(0, Factory.forProtocol(Garbage), interface="127.0.0.1")
    try:
        config = kwp_config(f"http://127.0.0.1:{garbage.getHost().port}/", **{"max-attempts": 1})
        other = local_kwp(config)
        await other.post("push", {"n": 2})
        await until(lambda: _has_error(other))
        item = (await queue(other))["items"][0]
        assert item["state"] == "dead" and item["last_attempt_error"]
    finally:
        await garbage.stopListening()


@pytest_twisted.ensureDeferred
async def test_queue_api_auth_pause_resume_retry_clear(local_kwp, target):
    t = target()
    kwp = local_kwp(kwp_config(t.url, **{"max-attempts": 1}))
    assert (await kwp.get("/api/webhook/push/queue")).code == 401
    assert (await kwp.get("/api/webhook/push/queue", "pull-token")).code == 403
    assert (await kwp.get("/api/webhook/nope/queue", "admin-token")).code == 404
    assert (await kwp.get("/api/webhook/pull/queue", "pull-token")).code == 400
    assert (await post_api(kwp, "/api/webhook/pull/queue/pause", "pull-token")).code == 400
    # Pull and push never hand out the same webhook: GET on a push channel is refused.
    pulled = await kwp.get("/api/webhook/push", "push-token")
    assert pulled.code == 400 and json.loads(await pulled.content())["error"] == "bad_request"

    assert (await post_api(kwp, "/api/webhook/push/queue/pause", "admin-token")).code == 204
    await kwp.post("push", {"n": 1})
    await kwp.post("push", {"n": 2})
    await deferLater(reactor, 0.2)
    assert t.received == []
    view = await queue(kwp)
    assert view["status"]["paused"] is True and view["status"]["queue_size"] == 2
    assert [i["payload"] for i in view["items"]] == [{"n": 1}, {"n": 2}]
    assert [set(i) for i in view["items"]][0] == {
        "id",
        "headers",
        "payload",
        "received_at",
        "forward_attempts",
        "last_attempt_at",
        "last_attempt_error",
        "next_attempt_at",
        "state",
    }

    # A retry is one attempt now, paused or not.
    first = view["items"][0]["id"]
    t.status, t.body = 418, b"teapot"
    response = await post_api(kwp, f"/api/webhook/push/queue/retry/{first}")
    assert response.code == 200
    assert json.loads(await response.content()) == {
        "success": False,
        "status_code": 418,
        "body": "teapot",
        "error": "unexpected status 418: teapot",
    }
    assert (await queue(kwp))["items"][0]["state"] == "dead"
    t.status = 200
    result = json.loads(await (await post_api(kwp, f"/api/webhook/push/queue/retry/{first}")).content())
    assert result == {"success": True, "status_code": 200, "body": "teapot", "error": None}
    assert (await post_api(kwp, f"/api/webhook/push/queue/retry/{first}")).code == 404
    # An id beyond SQLite's INTEGER is no webhook either, not a 500.
    for too_big in (2**63, 10**20):
        response = await post_api(kwp, f"/api/webhook/push/queue/retry/{too_big}")
        assert response.code == 404 and json.loads(await response.content())["error"] == "not_found"

    assert (await post_api(kwp, "/api/webhook/push/queue/resume")).code == 204
    await t.wait_for(2)
    await until(lambda: _empty(kwp))
    assert (await queue(kwp))["status"]["paused"] is False

    assert (await post_api(kwp, "/api/webhook/push/queue/pause")).code == 204
    await kwp.post("push", {"n": 3})
    assert (await post_api(kwp, "/api/webhook/push/queue/clear")).code == 204
    assert (await queue(kwp))["items"] == []


@pytest_twisted.ensureDeferred
async def test_v1_database_is_migrated_with_its_webhooks(tmp_path):
    path = str(tmp_path / "old.db")
    connection = sqlite3.connect(path)
    with connection:
        MIGRATIONS[0](connection.cursor())
        connection.execute("PRAGMA user_version = 1")
        connection.execute(
            "INSERT INTO webhooks (channel, headers, body, received_at) VALUES ('push', '{}', x'7b7d', 5)"
        )
    connection.close()
    storage = SQLiteStorage(path, reactor)
    storage.prepare()
    storage.startService()
    try:
        [item] = await storage.forward_window("push", 10, 0)
        assert (item.body, item.state, item.forward_attempts, item.next_attempt_at) == (b"{}", "pending", 0, None)
        await storage.forward_failed("push", item.id, Attempt(6, error="boom"), None, "dead")
        assert await storage.forward_window("push", 10, 0) == []
        state, size, [dead] = await storage.queue("push", 10, 0)
        assert (size, dead.state, dead.forward_attempts, state.last_error_message) == (1, "dead", 1, "boom")
        await storage.set_paused("push", True)
        assert (await storage.queue_state("push")).paused is True
        assert (await storage.queue_state("push")).last_error_at == 6
        await storage.forward_succeeded("push", item.id, Attempt(7, 200))
        assert await storage.forward_get("push", item.id) is None
        assert (await storage.queue_state("push")).last_success_at == 7
    finally:
        storage.stopService()


@pytest_twisted.ensureDeferred
async def test_a_header_the_target_refuses_shows_in_the_queue_api_and_the_metrics(local_kwp, target):
    t = target()
    t.judge = lambda body, headers: 431 if len(headers.get("x-big", "")) > 1000 else None
    t.body = b"Request Header Fields Too Large"
    config = kwp_config(t.url)
    config["server"]["metrics"] = True
    kwp = local_kwp(config)
    refused = json.loads(await (await kwp.post("push", {"n": 1}, {"X-Big": "b" * 2000})).content())["id"]
    await kwp.post("push", {"n": 2})
    await until(lambda: len(t.received) >= 3, what="a few attempts")
    view = await queue(kwp)
    head = view["items"][0]
    assert head["id"] == refused and head["state"] == "pending" and head["forward_attempts"] >= 2
    assert head["last_attempt_error"] == "unexpected status 431: Request Header Fields Too Large"
    assert view["status"]["last_error_message"] == head["last_attempt_error"]
    samples = metric_samples(await (await kwp.get("/api/metrics")).content())
    forwarded = samples["kwp_webhook_forward_total"]
    assert forwarded[(("channel", "push"), ("consumer", "default"), ("status", "unexpected_status"))] >= 2
    # In receive order, the refused webhook holds the next one until an
    # operator removes it (or max-attempts parks it).
    assert t.delivered() == []
    response = await treq.delete(kwp.url(f"/api/webhook/push/{refused}"), headers={"Authorization": "Bearer push-token"})
    assert response.code == 204
    await until(lambda: _empty(kwp))
    assert t.delivered() == [b'{"n": 2}']


def strict(body, headers):
    """As Node's, Go's and nginx's HTTP servers: 400 for a control character
    in a header value (Twisted's server lets it through)."""
    return 400 if any(ch < " " and ch != "\t" or ch == "\x7f" for v in headers.values() for ch in v) else None


@pytest_twisted.ensureDeferred
async def test_a_stored_header_that_is_not_valid_http_does_not_block_the_channel(local_kwp, target, captured_log):
    t = target()
    t.judge = strict
    config = kwp_config(t.url)
    config["server"]["metrics"] = True
    kwp = local_kwp(config)
    # Twisted's server stores a control character in a value...
    await kwp.post("push", {"n": 1}, {"X-Control": "a\x01b", "X-Fine": "yes"})
    # ... and a row written by anything else may hold a name no client sends.
    headers = json.dumps({"content-type": "application/json", "x bad name": "1", "x-fine": "too"})
    await kwp.storage.insert(NewWebhook("push", headers, b'{"n": 2}', time.time()))
    kwp.forwarders.get("push").poke()
    await until(lambda: _empty(kwp))
    assert t.delivered() == [b'{"n": 1}', b'{"n": 2}']
    assert [r["headers"].get("x-fine") for r in t.received] == ["yes", "too"]
    assert not any("x-control" in r["headers"] or "x bad name" in r["headers"] for r in t.received)
    samples = metric_samples(await (await kwp.get("/api/metrics")).content())
    assert samples["kwp_webhook_forward_total"] == {(("channel", "push"), ("consumer", "default"), ("status", "ok")): 2}
    assert "headers ['x-control'] are not valid HTTP; sent without them" in captured_log.text()
