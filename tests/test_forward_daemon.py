"""Push delivery through the real ``twistd -n kwp``, checked from the outside:
latency, receive order, and nothing lost across a restart of kwp while the
target is down."""

from __future__ import annotations

import json
import time

import pytest_twisted
import treq
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
