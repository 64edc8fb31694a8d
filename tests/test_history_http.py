"""The routes of the history (§8) and of the stream (§9) on a real
127.0.0.1 listener: tokens, errors, HEAD, and the stream over HTTP."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

from kwp.storage import Attempt, NewWebhook, Route
from tests.support import SSEReader, assert_error, body_json, until

CONFIG = {
    "server": {"admin-token": "admin-token"},
    "channels": [
        {
            "name": "gh",
            "token": "owner-token",
            "consumers": [
                {"name": "ci", "token": "ci-token"},
                {"name": "chat", "token": "chat-token"},
            ],
        },
        {"name": "plain", "token": "plain-token"},
    ],
}


async def store(kwp, n, *consumers, channel="gh"):
    webhook = NewWebhook(
        channel,
        json.dumps({"content-type": "application/json", "x-n": str(n)}),
        json.dumps({"n": n}).encode(),
        1000.0 + n,
        routes=tuple(Route(c) for c in consumers),
    )
    webhook_id = await kwp.storage.insert(webhook)
    kwp.app.streams.stored(channel)
    return webhook_id


def call(kwp, method, path, token=None, body=None, headers=None):
    all_headers = {"Authorization": f"Bearer {token}"} if token else {}
    all_headers.update(headers or {})
    return treq.request(method, kwp.url(path), headers=all_headers, data=body)


@pytest.fixture
def kwp(local_kwp):
    return local_kwp(CONFIG)


@pytest_twisted.ensureDeferred
async def test_events_and_one_event_for_each_kind_of_token(kwp):
    await store(kwp, 1, "ci", "chat")
    await store(kwp, 2, "chat")
    page = await body_json(await call(kwp, "GET", "/api/webhook/gh/events", "owner-token"))
    assert [i["id"] for i in page["items"]] == [2, 1] and page["next_before"] is None
    assert page["items"][1]["payload"] == {"n": 1}
    assert [c["name"] for c in page["items"][1]["consumers"]] == ["chat", "ci"]
    for token in ("admin-token", "owner-token"):
        response = await call(kwp, "GET", "/api/webhook/gh/events?limit=1", token)
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
        assert (await body_json(response))["next_before"] == 2
    mine = await body_json(await call(kwp, "GET", "/api/webhook/gh/events", "ci-token"))
    assert [(i["id"], [c["name"] for c in i["consumers"]]) for i in mine["items"]] == [(1, ["ci"])]
    detail = await body_json(await call(kwp, "GET", "/api/webhook/gh/events/1", "ci-token"))
    assert [c["log"] for c in detail["consumers"]] == [[]]
    await assert_error(await call(kwp, "GET", "/api/webhook/gh/events/2", "ci-token"), 404, "not_found")
    await assert_error(await call(kwp, "GET", "/api/webhook/gh/events/99", "owner-token"), 404, "not_found")
    await assert_error(
        await call(kwp, "GET", "/api/webhook/gh/events/99999999999999999999", "owner-token"), 404, "not_found"
    )
    await assert_error(await call(kwp, "GET", "/api/webhook/gh/events"), 401, "unauthorized")
    await assert_error(await call(kwp, "GET", "/api/webhook/gh/events", "plain-token"), 403, "forbidden")
    await assert_error(await call(kwp, "GET", "/api/webhook/nope/events", "admin-token"), 404, "channel_not_found")
    await assert_error(await call(kwp, "GET", "/api/webhook/gh/events?consumer=chat", "ci-token"), 403, "forbidden")
    bad = await call(kwp, "GET", "/api/webhook/gh/events?filter=body.%5B", "owner-token")
    assert "JMESPath" in (await assert_error(bad, 400, "bad_request"))["message"]


@pytest_twisted.ensureDeferred
async def test_head_answers_like_get_without_a_body(kwp):
    await store(kwp, 1, "ci")
    for path in ("/api/webhook/gh/events", "/api/webhook/gh/events/1", "/api/webhook/gh/stream"):
        response = await call(kwp, "HEAD", path, "owner-token")
        assert response.code == 200 and await response.content() == b""
    assert (await call(kwp, "HEAD", "/api/webhook/gh/events/7", "owner-token")).code == 404
    assert (await call(kwp, "HEAD", "/api/webhook/gh/events?limit=0", "owner-token")).code == 400
    assert (await call(kwp, "HEAD", "/api/webhook/gh/stream")).code == 401
    stream = await call(kwp, "HEAD", "/api/webhook/gh/stream", "owner-token")
    assert stream.headers.getRawHeaders("content-type") == ["text/event-stream"]
    assert kwp.app.streams.count("gh") == 0


@pytest_twisted.ensureDeferred
async def test_replay_routes(kwp):
    await store(kwp, 1, "ci", "chat")
    taken = await kwp.storage.claim("gh", "c", 10, 2000.0, None, consumer="ci")
    await kwp.storage.finish_claim("c", 2001.0)
    assert [t.id for t in taken] == [1]
    answer = await call(kwp, "POST", "/api/webhook/gh/events/1/replay", "owner-token")
    assert answer.headers.getRawHeaders("content-type") == ["application/json"]
    assert await body_json(answer) == {"replayed": ["ci"], "already_pending": ["chat"]}
    answer = await call(kwp, "POST", "/api/webhook/gh/events/1/replay", "chat-token", b'{"consumers": ["chat"]}')
    assert await body_json(answer) == {"replayed": [], "already_pending": ["chat"]}
    await assert_error(
        await call(kwp, "POST", "/api/webhook/gh/events/1/replay", "chat-token", b'{"consumers": ["ci"]}'),
        403,
        "forbidden",
    )
    await assert_error(
        await call(kwp, "POST", "/api/webhook/gh/events/1/replay", "owner-token", b'{"consumers": ["x"]}'),
        404,
        "not_found",
    )
    await assert_error(await call(kwp, "POST", "/api/webhook/gh/events/5/replay", "owner-token"), 404, "not_found")
    await kwp.storage.forward_failed("gh", 1, Attempt(2002.0, 500, "x"), None, "dead", consumer="chat")
    answer = await call(kwp, "POST", "/api/webhook/gh/replay", "owner-token", b'{"state": "dead"}')
    assert await body_json(answer) == {"count": 1, "next_after": None}
    await assert_error(await call(kwp, "POST", "/api/webhook/gh/replay", "owner-token", b"{}"), 400, "bad_request")


@pytest_twisted.ensureDeferred
async def test_purge_route(kwp):
    await store(kwp, 1, "ci")
    await assert_error(await call(kwp, "DELETE", "/api/webhook/gh/events/1", "ci-token"), 403, "forbidden")
    response = await call(kwp, "DELETE", "/api/webhook/gh/events/1", "owner-token")
    assert response.code == 204 and await response.content() == b""
    await assert_error(await call(kwp, "DELETE", "/api/webhook/gh/events/1", "admin-token"), 404, "not_found")
    assert await body_json(await call(kwp, "GET", "/api/webhook/gh/events", "owner-token")) == {
        "items": [],
        "next_before": None,
    }


async def open_stream(kwp, query="", token="owner-token", headers=None):
    all_headers = {"Accept": "text/event-stream", **(headers or {})}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    response = await treq.get(
        kwp.url(f"/api/webhook/gh/stream{query}"), headers=all_headers, unbuffered=True, persistent=False
    )
    reader = SSEReader()
    response.deliverBody(reader)
    return response, reader


@pytest_twisted.ensureDeferred
async def test_a_stream_resumed_after_a_dropped_connection_misses_and_repeats_nothing(kwp):
    await store(kwp, 0, "ci")
    response, reader = await open_stream(kwp)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    await until(lambda: reader.received.startswith(b": "), what="the first comment")
    for n in range(1, 4):
        await store(kwp, n, "ci")
    await until(lambda: len(reader.webhooks()) == 3, what="three webhooks")
    last = reader.events()[-1]["id"]
    reader.drop()
    await reader.closed
    await until(lambda: kwp.app.streams.count("gh") == 0, what="the stream's end")
    # While nobody listens.
    for n in range(4, 7):
        await store(kwp, n, "ci")
    response, again = await open_stream(kwp, "?after=1", headers={"Last-Event-ID": last})
    await until(lambda: len(again.webhooks()) == 3, what="the missed webhooks")
    await store(kwp, 7, "ci")
    await until(lambda: len(again.webhooks()) == 4, what="a live webhook")
    received = [w["payload"]["n"] for w in reader.webhooks() + again.webhooks()]
    assert received == list(range(1, 8))
    # A tap: the queue still holds every one.
    assert len(await kwp.storage.list("gh", 100, consumer="ci")) == 8
    again.drop()
    await again.closed


@pytest_twisted.ensureDeferred
async def test_the_stream_takes_a_token_in_the_query_and_never_logs_it(local_kwp):
    lines = []
    kwp = local_kwp(CONFIG, access_log=lambda when, line: lines.append(line))
    response, reader = await open_stream(kwp, "?format=smee&token=ci-token", token=None)
    await until(lambda: reader.events(), what="the ready event")
    assert reader.events()[0]["event"] == "ready"
    await store(kwp, 1, "chat")
    await store(kwp, 2, "ci")
    await until(lambda: reader.webhooks(), what="a webhook")
    assert [w["body"] for w in reader.webhooks()] == [{"n": 2}]
    kwp.app.streams.close()
    await reader.closed
    await assert_error(await treq.get(kwp.url("/api/webhook/gh/events?token=ci-token")), 401, "unauthorized")
    await assert_error(await treq.get(kwp.url("/api/webhook/gh/stream?token=wrong-one")), 401, "unauthorized")
    await until(lambda: len(lines) == 3, what="three log lines")
    assert [line.split()[:3] for line in lines] == [
        ["GET", "/api/webhook/gh/stream", "200"],
        ["GET", "/api/webhook/gh/events", "401"],
        ["GET", "/api/webhook/gh/stream", "401"],
    ]
    assert not any("token" in line or "?" in line for line in lines)


@pytest_twisted.ensureDeferred
async def test_the_cap_of_streams_a_channel(kwp):
    kwp.app.streams._limit = 2
    opened = [await open_stream(kwp) for _ in range(2)]
    await until(lambda: kwp.app.streams.count("gh") == 2)
    refused = await call(kwp, "GET", "/api/webhook/gh/stream", "owner-token")
    await assert_error(refused, 429, "too_many_requests")
    assert refused.headers.getRawHeaders("retry-after") == ["10"]
    for _, reader in opened:
        reader.drop()
        await reader.closed
    await until(lambda: kwp.app.streams.count("gh") == 0)
    response, reader = await open_stream(kwp)
    assert response.code == 200
    reader.drop()
    await reader.closed


@pytest_twisted.ensureDeferred
async def test_the_delivery_log_of_a_target_that_fails_then_succeeds(local_kwp, target):
    t = target()
    t.status, t.body = 502, b"bad gateway " * 200
    push = {"url": t.url, "interval-seconds": 0.05, "max-delay-seconds": 0.1}
    kwp = local_kwp({"channels": [{"name": "gh", "token": "owner-token", "consumers": [{"name": "chat", "forward": push}]}]})
    response = await treq.post(kwp.url("/api/webhook/gh"), data=b'{"n": 1}', headers={"Content-Type": "application/json"})
    webhook_id = (await body_json(response))["id"]
    await until(lambda: len(t.received) >= 2, what="two failed attempts")
    t.status, t.body = 200, b"thanks"
    await until(lambda: t.delivered(), what="the delivery")

    async def delivered():
        event = await body_json(await call(kwp, "GET", f"/api/webhook/gh/events/{webhook_id}", "owner-token"))
        return event["consumers"][0]["state"] == "delivered" and event

    await until(delivered, what="the delivery recorded")
    [chat] = (await delivered())["consumers"]
    log = chat["log"]
    assert chat["name"] == "chat" and chat["attempts"] == len(log) == len(t.received)
    assert [entry["status_code"] for entry in log] == [502] * (len(log) - 1) + [200]
    assert all(entry["error"].startswith("unexpected status 502") for entry in log[:-1]) and log[-1]["error"] is None
    assert [len(entry["response_excerpt"]) for entry in log] == [1024] * (len(log) - 1) + [6]
    assert all(entry["duration_ms"] >= 0 for entry in log) and log == sorted(log, key=lambda e: e["at"])
    assert chat["last_status"] == 200 and chat["delivered_at"] >= log[-1]["at"]
