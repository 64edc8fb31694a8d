"""Push delivery through the real ``twistd -n kwp``, checked from the outside:
latency, receive order, and nothing lost across a restart of kwp while the
target is down."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timezone

import pytest_twisted
import treq
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.support import CLEAN_EXIT, free_port, until


def config(url: str) -> dict:
    return {
        "channels": [
            {
                "name": "push",
                "token": "push-token",
                "forward": {"url": url, "interval-seconds": 0.1, "max-delay-seconds": 0.3, "timeout-seconds": 2},
            }
        ]
    }


async def post(daemon, body: dict) -> int:
    response = await treq.post(
        f"{daemon.base}/api/webhook/push",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.code == 200, await response.text()
    return json.loads(await response.content())["id"]


async def _is_empty(daemon) -> bool:
    return await queue_size(daemon) == 0


async def queue_size(daemon) -> int:
    response = await treq.get(
        f"{daemon.base}/api/webhook/push/queue", headers={"Authorization": "Bearer push-token"}
    )
    return json.loads(await response.content())["status"]["queue_size"]


@pytest_twisted.ensureDeferred
async def test_arrives_within_milliseconds_and_in_receive_order(daemon, target):
    t = target()
    kwp = daemon(config(t.url))
    latencies = []
    for n in range(20):
        started = time.monotonic()
        await post(kwp, {"n": n})
        await t.wait_for(n + 1, timeout=5)
        latencies.append(t.received[n]["at"] - started)
    latencies.sort()
    print(
        f"twistd forward latency over 20 webhooks (POST sent -> target got it): "
        f"median {latencies[10] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    assert latencies[-1] < 1.0

    for n in range(20, 60):
        await post(kwp, {"n": n})
    await t.wait_for(60, timeout=10)
    assert [json.loads(r["body"])["n"] for r in t.received] == list(range(60))
    assert [r["headers"]["x-kwp-attempt"] for r in t.received] == ["1"] * 60
    assert len({r["headers"]["x-kwp-delivery-id"] for r in t.received}) == 60


@pytest_twisted.ensureDeferred
async def test_nothing_lost_across_a_restart_while_the_target_is_down(daemon, target):
    port = free_port()
    kwp = daemon(config(f"http://127.0.0.1:{port}/hook"))
    for n in range(10):
        await post(kwp, {"n": n})
    await deferLater(reactor, 0.5)
    assert await queue_size(kwp) == 10
    assert kwp.stop() in CLEAN_EXIT

    kwp = daemon(config(f"http://127.0.0.1:{port}/hook"))
    for n in range(10, 15):
        await post(kwp, {"n": n})
    t = target(port)
    await t.wait_for(15, timeout=10)
    await until(lambda: _is_empty(kwp), 10, "the queue is empty")
    assert [json.loads(body)["n"] for body in t.delivered()] == list(range(15))
    assert kwp.stop() in CLEAN_EXIT


SENDER_SECRET = "whsec_" + base64.b64encode(b"the sender's key, not ours").decode()
FORWARD_SECRET = "whsec_" + base64.b64encode(b"kwp signs for the inside with this").decode()


@pytest_twisted.ensureDeferred
async def test_standard_webhooks_signature_is_made_afresh_for_each_attempt(daemon, target):
    t = target()
    inside = Webhook(FORWARD_SECRET)
    verdicts = []

    def verify(body, headers):
        try:
            inside.verify(body, headers)
        except WebhookVerificationError as e:
            verdicts.append(str(e))
            return 401
        verdicts.append("ok")
        return None

    t.judge = verify
    t.status = 500
    kwp = daemon(
        {
            "channels": [
                {
                    "name": "push",
                    "token": "push-token",
                    "provider": "standard-webhooks",
                    "webhook-secret": SENDER_SECRET,
                    "forward": {
                        "url": t.url,
                        "interval-seconds": 1.5,
                        "sign-scheme": "standard-webhooks",
                        "sign-secret": FORWARD_SECRET,
                    },
                }
            ]
        }
    )
    body = b'{"type": "user.created", "data": {"id": 1}}'
    signed = Webhook(SENDER_SECRET).sign("msg_from_the_sender", datetime.now(timezone.utc), body.decode())
    response = await treq.post(
        f"{kwp.base}/api/webhook/push",
        data=body,
        headers={
            "Content-Type": "application/json",
            "webhook-id": "msg_from_the_sender",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": signed,
        },
    )
    assert response.code == 200, await response.text()
    webhook_id = json.loads(await response.content())["id"]
    await t.wait_for(1)
    t.status = 200
    await t.wait_for(2)
    await until(lambda: _is_empty(kwp), 10, "the queue is empty")
    assert verdicts == ["ok", "ok"]
    first, second = (r["headers"] for r in t.received)
    assert first["webhook-id"] == second["webhook-id"] == first["x-kwp-delivery-id"] == f"push-{webhook_id}"
    assert int(second["webhook-timestamp"]) > int(first["webhook-timestamp"])
    assert second["webhook-signature"].count("v1,") == 1 and second["webhook-signature"] != signed
    assert t.delivered() == [body]
