"""Consumers through the real ``twistd -n kwp``: one webhook fanned out to
pull and push consumers by their filters, each consumer's own queue, leases,
pause and max-queue, what each token reaches, a database of release 0.1.0,
and reloads that add, change and remove consumers."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest_twisted
import treq

from tests.support import SQLITE_ONLY, assert_error, body_json, metric_samples, until, write_config

CHANNEL_TOKEN = "gh-token"


def config(chat_url: str, audit_url: str, **extra) -> dict:
    return {
        "server": {"admin-token": "admin-token", "metrics": True},
        "channels": [
            {
                "name": "gh",
                "token": CHANNEL_TOKEN,
                "consumers": [
                    {"name": "ci", "token": "ci-token", "filter": "headers.\"x-github-event\" == 'push'"},
                    {
                        "name": "chat",
                        "forward": {"url": chat_url, "interval-seconds": 0.1, "max-delay-seconds": 0.2},
                        "filter": "contains(['opened', 'closed'], body.action)",
                    },
                    {"name": "audit", "forward": {"url": audit_url, "interval-seconds": 0.1}},
                    {"name": "sized", "token": "sized-token", "filter": "length(body.items) > `1`", "max-queue": 2},
                ],
                **extra,
            }
        ],
    }


async def post(kwp, body: dict, event: str = "push"):
    return await treq.post(
        f"{kwp.base}/api/webhook/gh",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-GitHub-Event": event},
    )


async def call(kwp, method: str, path: str, token: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return await treq.request(method, f"{kwp.base}{path}", data=data, headers=headers)


async def ids(kwp, consumer: str, token: str = CHANNEL_TOKEN) -> list[int]:
    response = await call(kwp, "GET", f"/api/webhook/gh/list?consumer={consumer}", token)
    assert response.code == 200, await response.text()
    return [item["id"] for item in await body_json(response)]


async def pulled_away(kwp, consumer: str, token: str = CHANNEL_TOKEN) -> None:
    """Wait until consumer's queue lists nothing: a pull deletes what it
    returned in a transaction that starts when its connection closes, and
    may commit after the client has read the response."""

    async def gone():
        response = await call(kwp, "GET", f"/api/webhook/gh/list?consumer={consumer}", token)
        return response.code == 404 or await body_json(response) == []

    await until(gone, what=f"the webhooks pulled from {consumer} deleted")


@pytest_twisted.ensureDeferred
async def test_one_webhook_fans_out_to_pull_and_push_consumers_by_their_filters(daemon, target):
    chat, audit = target(), target()
    kwp = daemon(config(chat.url, audit.url))
    opened = await body_json(await post(kwp, {"action": "opened", "items": [1, 2]}))
    labeled = await body_json(await post(kwp, {"action": "labeled"}, event="issues"))
    await until(lambda: len(chat.received) == 1 and len(audit.received) == 2, what="the pushes")
    assert json.loads(chat.received[0]["body"]) == {"action": "opened", "items": [1, 2]}
    assert chat.received[0]["headers"]["x-kwp-delivery-id"] == f"gh.chat-{opened['id']}"
    assert [json.loads(r["body"])["action"] for r in audit.received] == ["opened", "labeled"]
    assert await ids(kwp, "ci") == [opened["id"]]
    assert await ids(kwp, "sized") == [opened["id"]]
    # ci pulls its own queue with its own token; nothing else moves.
    pulled = await body_json(await call(kwp, "GET", "/api/webhook/gh", "ci-token"))
    assert [item["payload"]["action"] for item in pulled] == ["opened"]
    await pulled_away(kwp, "ci")
    assert await ids(kwp, "sized") == [opened["id"]]
    assert labeled["id"] > opened["id"]


@pytest_twisted.ensureDeferred
async def test_a_filter_that_fails_takes_nothing_and_is_counted(daemon, target):
    chat, audit = target(), target()
    kwp = daemon(config(chat.url, audit.url))
    # length() of a number is a type error for sized's filter.
    assert (await post(kwp, {"action": "opened", "items": 7})).code == 200
    await until(lambda: len(audit.received) == 1 and len(chat.received) == 1, what="the pushes")
    assert await ids(kwp, "sized") == [] and len(await ids(kwp, "ci")) == 1
    samples = metric_samples(await (await call(kwp, "GET", "/api/metrics", "admin-token")).content())
    assert samples["kwp_filter_errors_total"] == {(("channel", "gh"), ("consumer", "sized")): 1}
    await until(lambda: "the filter of consumer sized failed" in kwp.log(), what="the warning")


@pytest_twisted.ensureDeferred
async def test_leases_acks_and_deletes_are_per_consumer(daemon, target):
    chat, audit = target(), target()
    kwp = daemon(config(chat.url, audit.url))
    first = (await body_json(await post(kwp, {"action": "x", "items": [1, 2]})))["id"]
    second = (await body_json(await post(kwp, {"action": "y", "items": [1, 2]})))["id"]
    leased = await body_json(await call(kwp, "GET", "/api/webhook/gh?lease=60", "ci-token"))
    assert [(i["id"], i["deliveries"]) for i in leased] == [(first, 1), (second, 1)]
    assert await body_json(await call(kwp, "GET", "/api/webhook/gh?lease=60", "ci-token")) == []
    # The same webhooks are still in sized's queue, not leased there.
    assert [i["id"] for i in await body_json(await call(kwp, "GET", "/api/webhook/gh?lease=60", "sized-token"))] == [
        first,
        second,
    ]
    acked = await call(kwp, "POST", "/api/webhook/gh/ack?consumer=ci", CHANNEL_TOKEN, {"ids": [first]})
    assert await body_json(acked) == {"acked": 1}
    assert await ids(kwp, "ci") == [second] and await ids(kwp, "sized") == [first, second]
    assert (await call(kwp, "DELETE", f"/api/webhook/gh/{second}", "ci-token")).code == 204
    assert await ids(kwp, "ci") == [] and await ids(kwp, "sized") == [first, second]


@pytest_twisted.ensureDeferred
async def test_a_paused_consumer_holds_back_nobody_else(daemon, target):
    chat, audit = target(), target()
    kwp = daemon(config(chat.url, audit.url))
    assert (await call(kwp, "POST", "/api/webhook/gh/queue/pause?consumer=chat", CHANNEL_TOKEN)).code == 204
    for n in range(3):
        await post(kwp, {"action": "opened", "n": n})
    await until(lambda: len(audit.received) == 3, what="audit's deliveries")
    queue = await body_json(await call(kwp, "GET", "/api/webhook/gh/queue?consumer=chat", CHANNEL_TOKEN))
    assert queue["status"]["paused"] and queue["status"]["queue_size"] == 3 and chat.received == []
    assert (await call(kwp, "POST", "/api/webhook/gh/queue/resume?consumer=chat", CHANNEL_TOKEN)).code == 204
    await until(lambda: len(chat.received) == 3, what="chat's deliveries after resume")
    assert [json.loads(r["body"])["n"] for r in chat.received] == [0, 1, 2]


@pytest_twisted.ensureDeferred
async def test_a_full_consumer_refuses_the_webhook_for_all(daemon, target):
    chat, audit = target(), target()
    chat.status = audit.status = 503
    kwp = daemon(config(chat.url, audit.url))
    for n in range(2):
        assert (await post(kwp, {"action": "x", "items": [n, n]})).code == 200
    refused = await post(kwp, {"action": "x", "items": [9, 9]})
    await assert_error(refused, 503, "queue_full")
    assert refused.headers.getRawHeaders("retry-after") == ["30"]
    assert len(await ids(kwp, "ci")) == 2 and len(await ids(kwp, "sized")) == 2
    # A webhook that the full consumer would not take gets in.
    assert (await post(kwp, {"action": "x", "items": []})).code == 200
    assert len(await ids(kwp, "ci")) == 3


@pytest_twisted.ensureDeferred
async def test_what_each_token_reaches(daemon, target):
    chat, audit = target(), target()
    kwp = daemon(config(chat.url, audit.url))
    await assert_error(await call(kwp, "GET", "/api/webhook/gh", CHANNEL_TOKEN), 400, "bad_request")
    await assert_error(await call(kwp, "GET", "/api/webhook/gh?consumer=nope", CHANNEL_TOKEN), 404, "not_found")
    await assert_error(await call(kwp, "GET", "/api/webhook/gh/list?consumer=sized", "ci-token"), 403, "forbidden")
    await assert_error(await call(kwp, "GET", "/api/webhook/gh?consumer=chat", CHANNEL_TOKEN), 400, "bad_request")
    await assert_error(await call(kwp, "GET", "/api/webhook/gh/queue?consumer=ci", CHANNEL_TOKEN), 400, "bad_request")
    await assert_error(await call(kwp, "POST", "/api/webhook/gh/sign", "ci-token", {}), 403, "forbidden")
    await assert_error(await call(kwp, "POST", "/api/webhook/gh/test-send", "ci-token", {"payload": {}}), 403, "forbidden")
    assert (await call(kwp, "GET", "/api/webhook/gh?consumer=ci", "admin-token")).code == 200
    assert (await call(kwp, "GET", "/api/webhook/gh/list?consumer=ci", "ci-token")).code == 200


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_a_database_of_release_0_1_0_keeps_its_queues_leases_and_pause(daemon, tmp_path, target):
    t = target()
    shutil.copy(Path(__file__).parent / "data" / "kwp-v3.db", tmp_path / "kwp.db")
    kwp = daemon(
        {
            "server": {"admin-token": "admin-token"},
            "channels": [
                {"name": "pull", "token": "pull-token"},
                {"name": "push", "token": "push-token", "forward": {"url": t.url, "interval-seconds": 0.1}},
            ],
        }
    )
    # 3 was pulled; the leases of 1 and 2 ran out in 2001, so they come back.
    pulled = await body_json(await call(kwp, "GET", "/api/webhook/pull?lease=60", "pull-token"))
    assert [(i["id"], i["payload"], i["deliveries"]) for i in pulled] == [
        (1, {"n": 0}, 2), (2, {"n": 1}, 2), (4, {"n": 3}, 1), (5, {"n": 4}, 1),
    ]
    queue = await body_json(await call(kwp, "GET", "/api/webhook/push/queue", "push-token"))
    assert queue["status"]["paused"] is True
    assert [(i["id"], i["state"]) for i in queue["items"]] == [(6, "dead"), (7, "pending")]
    assert await body_json(await call(kwp, "POST", "/api/webhook/push/queue/retry/6", "push-token")) == {
        "success": True, "status_code": 200, "body": "ok", "error": None,
    }
    assert (await call(kwp, "POST", "/api/webhook/push/queue/resume", "push-token")).code == 204
    await until(lambda: len(t.received) == 2, what="the pending webhook after resume")
    assert [json.loads(r["body"]) for r in t.received] == [{"p": 0}, {"p": 1}]


@pytest_twisted.ensureDeferred
async def test_reload_adds_changes_and_removes_consumers_and_keeps_what_a_removed_one_holds(daemon, target, tmp_path):
    chat, audit = target(), target()
    data = config(chat.url, audit.url)
    kwp = daemon(data)
    await post(kwp, {"action": "x", "items": [1, 2]})
    assert len(await ids(kwp, "sized")) == 1
    consumers = data["channels"][0]["consumers"]
    data["channels"][0]["consumers"] = [c for c in consumers if c["name"] != "sized"] + [
        {"name": "late", "token": "late-token"}
    ]
    consumers[0]["filter"] = "body.action == 'y'"
    write_config(tmp_path / "config.yml", data)
    kwp.signal(signal.SIGHUP)
    await until(lambda: "config reloaded" in kwp.log(), what="the reload")
    assert "consumers removed (their webhooks stay, for the admin token with ?consumer=): gh/sized" in kwp.log()
    assert "consumers added: gh/late" in kwp.log()
    await post(kwp, {"action": "y"}, event="issues")
    assert len(await ids(kwp, "late")) == 1 and len(await ids(kwp, "ci")) == 2
    # The removed consumer's webhook: reached by the admin token only.
    await assert_error(await call(kwp, "GET", "/api/webhook/gh/list?consumer=sized", CHANNEL_TOKEN), 404, "not_found")
    assert len(await ids(kwp, "sized", "admin-token")) == 1
    assert len(await body_json(await call(kwp, "GET", "/api/webhook/gh?consumer=sized", "admin-token"))) == 1
    await pulled_away(kwp, "sized", "admin-token")
    await assert_error(await call(kwp, "GET", "/api/webhook/gh/list?consumer=sized", "admin-token"), 404, "not_found")
