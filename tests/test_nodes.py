"""Three real ``twistd kwp`` nodes on one PostgreSQL database, load balanced
by the test (CONTRACT §10)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time

import psycopg
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task, threads
from twisted.internet.defer import ensureDeferred, gatherResults

from tests.forward_support import Target
from tests.support import Daemon, PrivatePostgres, until, write_config

ADMIN = "admin-secret-token"
LEASE_SECONDS = 2
CONFIG = {
    "server": {"admin-token": ADMIN, "lease-seconds": LEASE_SECONDS},
    "channels": [
        {"name": "open", "token": "open-token"},
        {"name": "wake", "token": "wake-token"},
        {"name": "held", "token": "held-token", "forward": {"url": "http://127.0.0.1:9/hook"}},
    ],
}


def start_nodes(workdir, config: dict, url: str, count: int = 3) -> list[Daemon]:
    config_path = write_config(workdir / "config.yml", config)
    nodes = []
    for i in range(count):
        (workdir / f"node{i}").mkdir()
        nodes.append(Daemon(workdir / f"node{i}", config_path, url).start())
    return nodes


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, postgres_databases):
    url = postgres_databases.create()
    started = start_nodes(tmp_path_factory.mktemp("nodes"), CONFIG, url)
    yield started
    for node in started:
        node.kill()
    postgres_databases.drop(url)


async def post(node: Daemon, channel: str, payload) -> tuple[int, dict]:
    response = await treq.post(
        f"{node.base}/api/webhook/{channel}",
        json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    return response.code, json.loads(await response.content())


async def get(node: Daemon, path: str, token: str = ADMIN, timeout: float = 15):
    response = await treq.get(f"{node.base}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_producers_and_pull_consumers_on_every_node_lose_nothing_and_get_nothing_twice(nodes):
    total = 300
    received: list[int] = []
    produced = []

    async def produce(first: int) -> None:
        for n in range(first, total, 4):
            code, body = await post(nodes[n % 3], "open", {"n": n})
            assert code == 200, body
            produced.append(n)

    async def consume(node: Daemon, leased: bool) -> None:
        deadline = time.monotonic() + 60
        while len(received) < total and time.monotonic() < deadline:
            lease = "&lease=60" if leased else ""
            code, items = await get(node, f"/api/webhook/open?limit=7&wait=1{lease}", "open-token")
            assert code == 200, items
            received.extend(item["payload"]["n"] for item in items)
            if leased and items:
                response = await treq.post(
                    f"{node.base}/api/webhook/open/ack",
                    json.dumps({"ids": [item["id"] for item in items]}).encode(),
                    headers={"Authorization": "Bearer open-token", "Content-Type": "application/json"},
                )
                assert json.loads(await response.content()) == {"acked": len(items)}

    await gatherResults(
        [ensureDeferred(produce(first)) for first in range(4)]
        + [ensureDeferred(consume(node, leased)) for node, leased in zip(nodes, (False, True, False))]
    )
    assert len(produced) == total
    assert sorted(received) == list(range(total))


@pytest_twisted.ensureDeferred
async def test_a_long_poll_on_one_node_wakes_when_another_node_stores(nodes):
    for first, second in ((0, 1), (2, 0)):
        started = time.monotonic()
        poll = ensureDeferred(get(nodes[first], "/api/webhook/wake?wait=20", "wake-token"))
        await task.deferLater(reactor, 0.3, lambda: None)
        stored_at = time.monotonic()
        code, body = await post(nodes[second], "wake", {"from": second})
        assert code == 200
        code, items = await poll
        woke_after = time.monotonic() - stored_at
        assert code == 200 and [item["payload"] for item in items] == [{"from": second}]
        assert woke_after < 1.0, f"woken {woke_after:.2f}s after the store"
        assert time.monotonic() - started < 5


@pytest_twisted.ensureDeferred
async def test_a_pause_on_one_node_is_seen_by_every_node(nodes):
    response = await treq.post(f"{nodes[0].base}/api/webhook/held/queue/pause", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.code == 204
    for node in nodes:
        code, queue = await get(node, "/api/webhook/held/queue")
        assert code == 200 and queue["status"]["paused"] is True
    response = await treq.post(f"{nodes[2].base}/api/webhook/held/queue/resume", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.code == 204
    for node in nodes:
        assert (await get(node, "/api/webhook/held/queue"))[1]["status"]["paused"] is False


@pytest.fixture
def private_postgres():
    server = PrivatePostgres()
    server.start()
    yield server
    server.remove()


@pytest_twisted.ensureDeferred
async def test_a_database_restart_under_load_loses_no_200_and_answers_503_while_down(tmp_path, private_postgres):
    nodes = start_nodes(tmp_path, {"channels": [{"name": "open", "token": "open-token"}]}, private_postgres.url)
    stored: dict[int, int] = {}
    stored_at = []
    refused = []
    unhealthy = []
    counter = itertools.count()
    end = time.monotonic() + 8

    async def produce(offset: int) -> None:
        while time.monotonic() < end:
            n = next(counter)
            code, body = await post(nodes[n % 3], "open", {"n": n})
            if code == 200:
                stored[body["id"]] = n
                stored_at.append(time.monotonic())
            else:
                assert (code, body["error"]) == (503, "storage_unavailable"), body
                refused.append(time.monotonic())
                await task.deferLater(reactor, 0.05, lambda: None)

    producers = gatherResults([ensureDeferred(produce(i)) for i in range(4)])
    try:
        await task.deferLater(reactor, 2, lambda: None)
        await threads.deferToThread(private_postgres.stop, "immediate")
        down_at = time.monotonic()
        await until(lambda: refused and refused[-1] > down_at, what="a 503 while the database is down")
        response = await treq.get(f"{nodes[1].base}/api/health", timeout=5)
        unhealthy.append(response.code)
        await task.deferLater(reactor, 1, lambda: None)
        await threads.deferToThread(private_postgres.start)
        up_at = time.monotonic()
        await producers
    finally:
        for node in nodes:
            node.kill()
    assert unhealthy == [503]
    assert len(stored) > 100 and any(at > up_at for at in stored_at), "stores before and after the restart"
    with psycopg.connect(private_postgres.url) as connection:
        rows = dict(connection.execute("SELECT id, body FROM webhooks").fetchall())
    assert {i: json.loads(rows[i]) for i in stored if i in rows} == {i: {"n": n} for i, n in stored.items()}


def connected_to(port: int, pids) -> list[int]:
    """The pids among pids with a TCP connection to 127.0.0.1:port."""
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    found = []
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                found.append(pid)
                break
    return found


@pytest_twisted.ensureDeferred
async def test_push_order_is_kept_while_the_forwarding_node_is_killed_and_another_takes_over(tmp_path, postgres_databases):
    target = Target().listen()
    target.delay = 0.1
    config = {
        "server": {"lease-seconds": LEASE_SECONDS},
        "channels": [{"name": "ordered", "token": "t", "forward": {"url": target.url, "interval-seconds": 1}}],
    }
    url = postgres_databases.create()
    nodes = start_nodes(tmp_path, config, url)
    try:
        for n in range(40):
            assert (await post(nodes[n % 3], "ordered", {"n": n}))[0] == 200
        await target.wait_for(10, timeout=10)
        [forwarding] = connected_to(target.port.getHost().port, [node.proc.pid for node in nodes])
        before = len(target.received)
        os.kill(forwarding, signal.SIGKILL)
        killed_at = time.monotonic()
        await until(lambda: {json.loads(r["body"])["n"] for r in target.received} == set(range(40)), timeout=30, what="every webhook delivered")
        taken_over = target.received[before]["at"] if len(target.received) > before else None
    finally:
        for node in nodes:
            node.kill()
        await target.stop()
        postgres_databases.drop(url)
    order = [json.loads(r["body"])["n"] for r in target.received]
    # In order; only the attempt in flight at the kill may come twice.
    assert [n for i, n in enumerate(order) if n not in order[:i]] == list(range(40))
    assert len(order) - 40 <= 1
    assert taken_over is not None and taken_over - killed_at <= LEASE_SECONDS + 1


@pytest_twisted.ensureDeferred
async def test_a_retry_on_a_node_without_the_lease_waits_for_the_attempt_in_flight_on_the_holder(tmp_path, postgres_databases):
    target = Target().listen()
    target.status, target.delay = 500, 1.0
    config = {
        "server": {"admin-token": ADMIN, "lease-seconds": LEASE_SECONDS},
        "channels": [{"name": "push", "token": "t", "forward": {"url": target.url, "interval-seconds": 3600}}],
    }
    url = postgres_databases.create()
    nodes = start_nodes(tmp_path, config, url, count=2)
    try:
        code, body = await post(nodes[0], "push", {"n": 1})
        assert code == 200
        await target.wait_for(1)
        [holder] = connected_to(target.port.getHost().port, [node.proc.pid for node in nodes])
        other = next(node for node in nodes if node.proc.pid != holder)
        response = await treq.post(
            f"{other.base}/api/webhook/push/queue/retry/{body['id']}",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
        )
        result = json.loads(await response.content())
    finally:
        for node in nodes:
            node.kill()
        await target.stop()
        postgres_databases.drop(url)
    assert response.code == 200 and (result["success"], result["status_code"]) == (False, 500), result
    first, retried = target.received
    # Sent by the other node only once the holder's attempt had its answer.
    assert retried["at"] - first["at"] >= target.delay
