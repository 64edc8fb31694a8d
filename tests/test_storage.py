"""The storage service on each backend (a temp-file SQLite database, a
PostgreSQL database of the test's own), with the real reactor's threads."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.task import Clock

from kwp.config import parse_config
from kwp.storage import DUPLICATE, QUEUE_FULL, Attempt, NewWebhook, QueueStats, Route, StorageError, open_storage
from kwp.storage import queries
from kwp.storage.postgres import PULL_HOLD, PostgresStorage
from kwp.storage.prune import Pruner
from kwp.storage.sqlite import MIGRATIONS, SQLiteStorage, sqlite_path
from tests.support import until


def started(path) -> SQLiteStorage:
    s = SQLiteStorage(str(path), reactor)
    s.prepare()
    s.startService()
    return s


@pytest.fixture
def storage(backend):
    return backend.start()


def hook(n=0, channel="a", max_queue=None, **kwargs):
    if max_queue is not None:
        kwargs["routes"] = (Route(max_queue=max_queue),)
    return NewWebhook(channel, '{"x":"1"}', b'{"n":%d}' % n, 1000.0 + n, **kwargs)


def test_database_urls():
    assert sqlite_path("sqlite:///var/lib/kwp.db") == "/var/lib/kwp.db"
    assert sqlite_path("sqlite://rel/kwp.db") == "rel/kwp.db"
    assert sqlite_path("data/kwp.db") == "data/kwp.db"
    assert sqlite_path(":memory:") == ":memory:"


def test_prepare_creates_parents_sets_wal_and_migrates(tmp_path):
    path = tmp_path / "deep" / "er" / "kwp.db"
    SQLiteStorage(str(path), reactor).prepare()
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    SQLiteStorage(str(path), reactor).prepare()


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest_twisted.ensureDeferred
async def test_the_database_and_the_directories_kwp_creates_are_private_whatever_the_umask(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    path = shared / "new" / "deeper" / "kwp.db"
    umask = os.umask(0)
    try:
        s = started(path)
        await s.insert(hook(1))
        modes = {p.name: _mode(p) for p in (shared, path.parent.parent, path.parent)}
        files = {name: _mode(path.parent / name) for name in ("kwp.db", "kwp.db-wal", "kwp.db-shm")}
        await s.stopService()
    finally:
        os.umask(umask)
    assert modes == {"shared": 0o755, "new": 0o700, "deeper": 0o700}
    assert files == {"kwp.db": 0o600, "kwp.db-wal": 0o600, "kwp.db-shm": 0o600}


def test_unopenable_and_newer_databases_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot open database"):
        open_storage(str(tmp_path / "file" / "kwp.db"), reactor)
    newer = tmp_path / "newer.db"
    sqlite3.connect(newer).execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StorageError, match="newer than this kwp knows"):
        open_storage(str(newer), reactor)


@pytest_twisted.ensureDeferred
async def test_concurrent_inserts_commit_in_batches(storage):
    transactions = []
    run = storage._run

    def counting(f, *args):
        transactions.append(f.__name__)
        return run(f, *args)

    storage._run = counting
    ids = await gatherResults([storage.insert(hook(i)) for i in range(50)])
    assert ids == sorted(ids) and len(set(ids)) == 50
    # Inserts within the commit window share one transaction.
    assert transactions.count("insert_batch") == 1
    await gatherResults([storage.insert(hook(i)) for i in range(50, 53)])
    assert transactions.count("insert_batch") == 2
    rows = await storage.list("a", 100, 0)
    assert [r.body for r in rows] == [b'{"n":%d}' % i for i in range(53)]


@pytest_twisted.ensureDeferred
async def test_one_batch_mixes_plain_deduplicated_and_limited_webhooks_in_order(storage):
    """Plain webhooks are written by multi-row INSERTs (150 rows each); the
    others are decided in their place in the batch, after those before them."""
    await storage.insert(hook(-1, channel="q"))
    batch = [hook(i) for i in range(400)]
    batch[10] = hook(10, delivery_id="d1", dedup_window=60)
    batch[11] = hook(11, delivery_id="d1", dedup_window=60)
    batch[200] = hook(200, channel="q", max_queue=3)
    batch[201] = hook(201, channel="q")
    batch[202] = hook(202, channel="q", max_queue=3)
    results = await gatherResults([storage.insert(w) for w in batch])
    assert results[11] is DUPLICATE and results[202] is QUEUE_FULL
    stored = {i: r for i, r in enumerate(results) if i not in (11, 202)}
    assert list(stored.values()) == sorted(stored.values())
    rows = await storage.list("a", 1000, 0) + await storage.list("q", 1000, 0)
    assert {r.id: r.body for r in rows if r.body != b'{"n":-1}'} == {
        new_id: b'{"n":%d}' % i for i, new_id in stored.items()
    }


@pytest_twisted.ensureDeferred
async def test_a_stop_writes_what_waits_in_the_commit_window(backend):
    s = backend.start()
    inserted = s.insert(hook(1))
    await s.stopService()
    assert isinstance(await inserted, int)
    assert backend.execute("SELECT COUNT(*) FROM webhooks") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_claims_are_exclusive_and_settle(storage):
    for i in range(5):
        await storage.insert(hook(i))
    first = await storage.claim("a", "c1", 3, 2000.0, None)
    second = await storage.claim("a", "c2", 10, 2000.0, None)
    assert [r.id for r in first] == [1, 2, 3] and [r.id for r in second] == [4, 5]
    await storage.release_claim("c1")
    await storage.finish_claim("c2", 2000.0)
    assert [r.id for r in await storage.list("a", 10, 0)] == [1, 2, 3]
    assert [r.deliveries for r in await storage.claim("a", "c3", 10, 2000.0, None)] == [1, 1, 1]


@pytest_twisted.ensureDeferred
async def test_leases_expire_and_ack_deletes(storage):
    for i in range(2):
        await storage.insert(hook(i))
    leased = await storage.claim("a", "c1", 10, 2000.0, 30)
    assert await storage.claim("a", "c2", 10, 2029.0, 30) == []
    again = await storage.claim("a", "c2", 10, 2030.0, 30)
    assert [r.deliveries for r in again] == [2, 2]
    assert await storage.ack("b", [r.id for r in leased], 2031.0) == 0
    assert await storage.ack("a", [leased[0].id, 999], 2031.0) == 1
    assert await storage.ack("a", [leased[0].id], 2031.0) == 0


@pytest_twisted.ensureDeferred
async def test_unfinished_pulls_are_released_on_restart(backend):
    """On PostgreSQL other nodes may still be streaming their pulls: what an
    unfinished pull took comes back after PULL_HOLD instead."""
    s = backend.start()
    await s.insert(hook(1))
    await s.insert(hook(2))
    await s.claim("a", "gone", 1, 2000.0, None)
    await s.claim("a", "leased", 1, 2000.0, 2 * PULL_HOLD)
    await s.stopService()
    s = backend.start()
    back_at = 2000.0 if backend.name == "sqlite" else 2000.0 + PULL_HOLD
    if back_at > 2000.0:
        assert await s.claim("a", "early", 10, back_at - 1, None) == []
    assert [r.id for r in await s.claim("a", "new", 10, back_at, None)] == [1]


@pytest_twisted.ensureDeferred
async def test_dedup_window_and_queue_limit(storage):
    first = await storage.insert(hook(1, delivery_id="d1", dedup_window=60))
    assert isinstance(first, int)
    assert await storage.insert(hook(2, delivery_id="d1", dedup_window=60)) is DUPLICATE
    await storage.delete("a", first, 1001.0)
    assert await storage.insert(hook(3, delivery_id="d1", dedup_window=60)) is DUPLICATE
    assert isinstance(await storage.insert(hook(70, delivery_id="d1", dedup_window=60)), int)
    assert isinstance(await storage.insert(hook(80, channel="b", delivery_id="d1", dedup_window=60)), int)

    oldest = await storage.insert(hook(1, channel="q", max_queue=2))
    assert isinstance(await storage.insert(hook(2, channel="q", max_queue=2)), int)
    assert await storage.insert(hook(3, channel="q", max_queue=2, delivery_id="dq")) is QUEUE_FULL
    # A refused webhook's delivery id is not remembered: its retry can get in.
    await storage.delete("q", oldest, 1003.0)
    assert isinstance(await storage.insert(hook(4, channel="q", max_queue=2, delivery_id="dq")), int)


@pytest_twisted.ensureDeferred
async def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_runs(storage):
    bad = NewWebhook("a", "{}", None, 1.0)  # NOT NULL body: the batch fails
    results = await gatherResults(
        [storage.insert(hook(1)).addErrback(lambda f: "failed"), storage.insert(bad).addErrback(lambda f: "failed")]
    )
    assert results == ["failed", "failed"]
    assert await storage.list("a", 10) == []
    assert isinstance(await storage.insert(hook(2)), int)


@pytest_twisted.ensureDeferred
async def test_a_stopped_storage_fails_instead_of_hanging(storage):
    storage.stopService()
    with pytest.raises(StorageError):
        await storage.insert(hook(1))
    with pytest.raises(StorageError):
        await storage.ping()
    storage.startService()


@pytest_twisted.ensureDeferred
async def test_ids_are_never_reused_across_deletes_and_restarts(backend):
    s = backend.start()
    ids = await gatherResults([s.insert(hook(i)) for i in range(3)])
    await s.delete("a", ids[-1], 2000.0)
    await s.stopService()
    s = backend.start()
    assert await s.insert(hook(5)) == 4
    await s.delete("a", 4, 2000.0)
    assert await s.insert(hook(6, delivery_id="d")) == 5


@pytest_twisted.ensureDeferred
async def test_ids_follow_rows_another_program_wrote_into_sqlite(tmp_path):
    path = str(tmp_path / "kwp.db")
    s = started(path)
    ids = await gatherResults([s.insert(hook(i)) for i in range(3)])
    await s.delete("a", ids[-1], 2000.0)
    await s.stopService()
    # A row written by another program meanwhile (as the benchmark fills one).
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(
            "INSERT INTO webhooks (id, channel, headers, body, received_at) VALUES (10, 'a', '{}', X'7B7D', 1.0)"
        )
    s = started(path)
    try:
        assert await s.insert(hook(5)) == 11
        await s.delete("a", 11, 2000.0)
        assert await s.insert(hook(6, delivery_id="d")) == 12
    finally:
        await s.stopService()


@pytest_twisted.ensureDeferred
async def test_queue_stats_count_each_channel_and_give_its_oldest_arrival(storage):
    for channel, at in [("a", 30.0), ("b", 10.0), ("a", 40.0), ("b", 20.0), ("b", 50.0)]:
        await storage.insert(NewWebhook(channel, "{}", b"{}", at))
    assert await storage.queue_stats() == {
        ("a", "default"): QueueStats(2, 30.0, 0),
        ("b", "default"): QueueStats(3, 10.0, 0),
    }


def routed(n, *consumers, channel="a", **kwargs):
    return hook(n, channel=channel, routes=tuple(Route(c) for c in consumers), **kwargs)


@pytest_twisted.ensureDeferred
async def test_a_database_of_the_first_release_keeps_every_queue_lease_dead_letter_and_pause(tmp_path):  # SQLite
    """tests/data/kwp-v3.db was written by the storage of release 0.1.0:
    channel "pull" with webhooks 1-5 (1 and 2 leased for ever, 3 pulled),
    duplicate ids d0-d4; channel "push" with 6 dead, 7 failed once and due
    at 9999, 8 forwarded, and its forwarding paused."""
    path = tmp_path / "kwp.db"
    path.write_bytes((Path(__file__).parent / "data" / "kwp-v3.db").read_bytes())
    s = started(path)
    try:
        assert [r.id for r in await s.list("pull", 10)] == [1, 2, 4, 5]
        assert [(r.id, r.deliveries) for r in await s.claim("pull", "new", 10, 3000.0, None)] == [(4, 1), (5, 1)]
        assert await s.ack("pull", [1, 2], 3001.0) == 2
        state, size, items = await s.queue("push", 10)
        assert state.paused and state.last_success_at == 3003.0 and state.last_error_message == "network down"
        assert size == 2
        assert [(i.id, i.state, i.forward_attempts, i.last_error) for i in items] == [
            (6, "dead", 1, "unexpected status 500"),
            (7, "pending", 1, "network down"),
        ]
        assert [(i.id, i.next_attempt_at) for i in await s.forward_window("push", 5, 3000.0)] == [(7, 9999.0)]
        again = NewWebhook("pull", "{}", b"{}", 1500.0, delivery_id="d0", dedup_window=86400)
        assert await s.insert(again) is DUPLICATE
        assert await s.insert(hook(9)) == 9
    finally:
        await s.stopService()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


@pytest_twisted.ensureDeferred
async def test_each_consumer_has_its_own_queue_claims_and_acks(storage):
    for i in range(3):
        await storage.insert(routed(i, "ci", "chat"))
    ci = await storage.claim("a", "c1", 2, 2000.0, 30, consumer="ci")
    assert [r.id for r in ci] == [1, 2]
    assert [r.id for r in await storage.claim("a", "c2", 10, 2000.0, 30, consumer="chat")] == [1, 2, 3]
    assert await storage.ack("a", [1, 2], 2001.0, consumer="ci") == 2
    assert [r.id for r in await storage.list("a", 10, consumer="ci")] == [3]
    assert [r.id for r in await storage.list("a", 10, consumer="chat")] == [1, 2, 3]
    assert await storage.list("a", 10) == []
    assert await storage.delete("a", 3, 2002.0, consumer="chat")
    assert not await storage.delete("a", 3, 2002.0, consumer="chat")
    assert await storage.clear("a", 2003.0, consumer="ci") == 1
    stats = await storage.queue_stats()
    assert stats == {("a", "chat"): QueueStats(2, 1000.0, 0)}


@pytest_twisted.ensureDeferred
async def test_a_full_consumer_refuses_the_webhook_for_every_consumer(storage):
    full = (Route("ci", max_queue=1), Route("chat"))
    assert isinstance(await storage.insert(hook(1, routes=full)), int)
    assert await storage.insert(hook(2, routes=full, delivery_id="x", dedup_window=60)) is QUEUE_FULL
    assert [r.id for r in await storage.list("a", 10, consumer="chat")] == [1]
    # Not remembered as seen: the sender's retry gets in once there is room.
    await storage.ack("a", [r.id for r in await storage.claim("a", "c", 1, 2000.0, 5, consumer="ci")], 2000.0, consumer="ci")
    assert isinstance(await storage.insert(hook(3, routes=full, delivery_id="x", dedup_window=60)), int)


@pytest_twisted.ensureDeferred
async def test_paused_and_outcomes_are_per_consumer(storage):
    await storage.set_paused("a", True, consumer="chat")
    assert (await storage.queue_state("a", consumer="chat")).paused
    assert not (await storage.queue_state("a", consumer="ci")).paused
    assert not (await storage.queue_state("a")).paused


@pytest_twisted.ensureDeferred
async def test_queue_stats_read_no_row_of_the_queues(tmp_path):
    """The figures of every queue come from sizes kept by triggers and one
    index seek per queue, not from a walk over the deliveries."""
    path = tmp_path / "kwp.db"
    s = started(path)
    await s.insert(routed(1, "ci", "chat"))
    await s.stopService()
    connection = sqlite3.connect(path)
    sqlite_queries = []
    connection.set_trace_callback(sqlite_queries.append)
    assert queries.queue_stats(connection.cursor()) == {
        ("a", "ci"): QueueStats(1, 1001.0, 0),
        ("a", "chat"): QueueStats(1, 1001.0, 0),
    }
    connection.set_trace_callback(None)
    plans = [row[3] for query in sqlite_queries for row in connection.execute("EXPLAIN QUERY PLAN " + query)]
    assert plans == ["SCAN queue_sizes"] + ["SEARCH deliveries USING INDEX deliveries_open (channel=? AND consumer=?)"] * 2


@pytest_twisted.ensureDeferred
async def test_queue_sizes_follow_every_way_a_webhook_comes_and_goes(storage):
    for i in range(12):
        await storage.insert(hook(i, channel="ab"[i % 2]))
    await storage.insert(hook(99, channel="c"))
    await storage.claim("a", "pull", 2, 2000.0)
    await storage.finish_claim("pull", 2000.0)
    leased = await storage.claim("a", "lease", 2, 2000.0, 60)
    await storage.ack("a", [leased[0].id], 2000.0)
    await storage.delete("b", (await storage.list("b", 1))[0].id, 2000.0)
    await storage.forward_succeeded("b", (await storage.list("b", 1))[0].id, Attempt(2000.0, 200))
    await storage.forward_failed("b", (await storage.list("b", 1))[0].id, Attempt(2000.0, 500), None, "dead")
    await storage.clear("c", 2000.0)
    await storage.replay("b", [2], None, 2001.0)
    # One batch fanned out to two consumers of a channel, then one more
    # for one of them.
    await gatherResults([storage.insert(hook(200 + i, channel="f", routes=(Route("x"), Route("y")))) for i in range(5)])
    await storage.insert(hook(300, channel="f", routes=(Route("y"),)))
    assert [len(await storage.list(channel, 100)) for channel in "abc"] == [3, 5, 0]
    # a: 1006 (leased), 1008, 1010; b: 1005 (dead), 1007, 1009, 1011 and
    # the replayed 1001 at the tail.
    counted = {
        ("a", "default"): QueueStats(3, 1006.0, 0),
        ("b", "default"): QueueStats(4, 1007.0, 1),
        ("f", "x"): QueueStats(5, 1200.0, 0),
        ("f", "y"): QueueStats(6, 1200.0, 0),
    }
    assert await storage.queue_stats() == counted


def test_the_migration_counts_what_an_older_database_holds(tmp_path):
    path = tmp_path / "kwp.db"
    connection = sqlite3.connect(path)
    for number, migration in enumerate(MIGRATIONS[:3], start=1):
        with connection:
            migration(connection.cursor())
            connection.execute(f"PRAGMA user_version = {number}")
    with connection:
        connection.executemany(
            "INSERT INTO webhooks (channel, headers, body, received_at) VALUES (?, '{}', X'7B7D', ?)",
            [("a", 10.0), ("b", 20.0), ("a", 30.0)],
        )
    connection.close()
    SQLiteStorage(str(path), reactor).prepare()
    connection = sqlite3.connect(path)
    assert queries.queue_stats(connection.cursor()) == {
        ("a", "default"): QueueStats(2, 10.0, 0),
        ("b", "default"): QueueStats(1, 20.0, 0),
    }


# --- forgetting delivery ids ---------------------------------------------------


def seen(backend) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    rows = backend.execute("SELECT channel, delivery_id FROM seen_deliveries ORDER BY channel, delivery_id")
    for channel, delivery in rows:
        result.setdefault(channel, []).append(delivery)
    return result


@pytest_twisted.ensureDeferred
async def test_delivery_ids_are_forgotten_after_their_channels_window_in_small_batches(backend):
    storage = backend.start()
    now = 1_000_000.0
    ages = {"short": {"keep": 30, "drop": 90}, "long": {"keep": 1800, "drop": 7200},
            "gone": {"keep": 80000, "drop": 90000}}
    for channel, by_fate in ages.items():
        for fate, age in by_fate.items():
            for n in range(5):
                await storage.insert(NewWebhook(channel, "{}", b"{}", now - age, f"{fate}-{n}", dedup_window=10**9))
    config = parse_config({"channels": [
        {"name": "short", "token": "t1", "dedup-window-seconds": 60},
        {"name": "long", "token": "t2", "dedup-window-seconds": 3600},
    ]})
    batches = []
    prune_seen = storage.prune_seen

    def counting(channel, before, limit):
        return prune_seen(channel, before, limit).addCallback(lambda n: batches.append((channel, n)) or n)

    storage.prune_seen = counting
    clock = Clock()
    clock.advance(now - 60)
    pruner = Pruner(storage, lambda: config, clock, interval=60, seen_interval=60, seen_batch=2)
    pruner.startService()
    try:
        clock.advance(59)
        assert batches == []
        clock.advance(1)
        await until(lambda: not pruner.busy, what="the pruning run")
    finally:
        await pruner.stopService()
        await storage.stopService()
    kept = [f"keep-{n}" for n in range(5)]
    assert seen(backend) == {"gone": kept, "long": kept, "short": kept}
    assert max(n for _, n in batches) == 2
    assert [n for channel, n in batches if channel == "short"] == [2, 2, 1]
    # Within its window an id is still a duplicate; after it, it is new.
    storage = backend.start()
    assert await storage.insert(NewWebhook("short", "{}", b"{}", now, "keep-0", 60)) is DUPLICATE
    assert isinstance(await storage.insert(NewWebhook("short", "{}", b"{}", now, "drop-0", 60)), int)


class FlakyIds:
    """seen_channels fails once, then names one channel whose prune_seen
    answers with the Deferreds the test fires."""

    def __init__(self):
        self.calls = 0
        self.batches: list[Deferred] = []

    def seen_channels(self):
        self.calls += 1
        return fail(RuntimeError("database locked")) if self.calls == 1 else succeed(["a"])

    def prune_seen(self, channel, before, limit):
        self.batches.append(Deferred())
        return self.batches[-1]

    def prune(self, now, batch):
        return succeed(0)


def test_a_failed_run_is_logged_and_the_timer_goes_on_and_a_stop_waits_for_the_batch(captured_log):
    ids = FlakyIds()
    clock = Clock()
    config = parse_config({"channels": [{"name": "a", "token": "t"}]})
    pruner = Pruner(ids, lambda: config, clock, 60, seen_interval=60, seen_batch=10)
    pruner.startService()
    clock.advance(60)
    assert "pruning failed" in captured_log.text()
    clock.advance(60)
    assert len(ids.batches) == 1
    ids.batches[0].callback(10)
    assert len(ids.batches) == 2
    stopped = pruner.stopService()
    assert not stopped.called
    ids.batches[1].callback(10)
    assert stopped.called and len(ids.batches) == 2
    assert clock.getDelayedCalls() == []


def test_the_daemon_prunes_with_the_running_config(tmp_path):
    from kwp.tap import Options, makeService
    from tests.support import write_config

    path = write_config(tmp_path / "config.yml", {"channels": [{"name": "a", "token": "t"}]})
    options = Options(environ={})
    options.parseOptions(["-c", str(path), "-d", str(tmp_path / "kwp.db"), "-l", "tcp:0:interface=127.0.0.1"])
    service = makeService(options, reactor=Clock())
    children = list(service)
    assert children.index(service.app.storage) < children.index(service.pruner) < children.index(service.listeners[0])
    service.app.config = parse_config({"channels": [{"name": "b", "token": "t"}]})
    assert [c.name for c in service.pruner._config().channels] == ["b"]


@pytest_twisted.ensureDeferred
async def test_the_forwarding_lease_has_one_owner_and_fences_every_outcome(backend):
    a, b = backend.start(), backend.start()
    await a.insert(routed(1, "push"))
    token = await a.acquire_lease("a", "node-a", 100.0, 10, consumer="push")
    assert await a.acquire_lease("a", "node-a", 101.0, 10, consumer="push") == token
    assert await b.acquire_lease("a", "node-b", 105.0, 10, consumer="push") is None
    await b.set_paused("a", True, consumer="push")
    assert (await a.renew_lease("a", "node-a", token, 105.0, 10, consumer="push")).paused
    assert await b.acquire_lease("a", "node-b", 114.9, 10, consumer="push") is None
    taken = await b.acquire_lease("a", "node-b", 115.0, 10, consumer="push")
    assert taken > token
    assert await a.renew_lease("a", "node-a", token, 115.0, 10, consumer="push") is None
    # The old owner's outcomes are refused and change nothing.
    assert not await a.forward_succeeded("a", 1, Attempt(116.0, 200), consumer="push", token=token)
    assert not await a.forward_failed("a", 1, Attempt(116.0, 500), 200.0, "dead", consumer="push", token=token)
    [item] = await b.forward_window("a", 10, 116.0, consumer="push")
    assert (item.id, item.forward_attempts, item.state) == (1, 0, "pending")
    assert await b.forward_failed("a", 1, Attempt(117.0, 500, "x"), 200.0, "pending", consumer="push", token=taken)
    await b.release_lease("a", "node-b", taken, consumer="push")
    again = await a.acquire_lease("a", "node-a", 118.0, 10, consumer="push")
    assert again > taken
    assert await a.forward_succeeded("a", 1, Attempt(119.0, 200), consumer="push", token=again)
    assert await a.queue_stats() == {}
    # Without a token, outcomes are written as on a single node.
    await a.insert(routed(2, "push"))
    assert await b.forward_succeeded("a", 2, Attempt(120.0, 200), consumer="push")


@pytest_twisted.ensureDeferred
async def test_callbacks_hear_what_was_stored_replayed_and_paused(storage):
    stored, changed = [], []
    storage.on_stored(lambda channel, consumers: stored.append((channel, dict(consumers))))
    storage.on_queue_changed(lambda channel, consumer: changed.append((channel, consumer)))
    await gatherResults([storage.insert(routed(1, "ci", "chat")), storage.insert(routed(2, "ci")), storage.insert(routed(3))])
    assert stored == [("a", {"ci": 2, "chat": 1})]
    await storage.insert(hook(4, delivery_id="x", dedup_window=60))
    assert await storage.insert(hook(5, delivery_id="x", dedup_window=60)) is DUPLICATE
    assert stored[1:] == [("a", {"default": 1})]
    await storage.ack("a", [r.id for r in await storage.claim("a", "c", 1, 2000.0, 5, consumer="ci")], 2000.0, consumer="ci")
    await storage.replay("a", [1], ["ci"], 2001.0)
    assert stored[2:] == [("a", {"ci": 1})]
    await storage.set_paused("a", True, consumer="chat")
    assert changed == [("a", "chat")]


def held_writes(storage, clock) -> list:
    """The storage's batches, each (time, size, the Deferred that ends its
    write), written only when the test fires that Deferred."""
    writes = []

    def held(f, dialect, batch):
        writes.append((clock.seconds(), len(batch), Deferred()))
        return writes[-1][2]

    storage._run = held
    return writes


@pytest.mark.parametrize("backend_class", [SQLiteStorage, PostgresStorage])
def test_a_lone_webhook_is_written_at_once_and_under_load_batches_gather_for_the_window(backend_class, tmp_path):
    clock = Clock()
    clock.advance(1000)
    storage = backend_class(str(tmp_path / "unused.db") if backend_class is SQLiteStorage else "postgresql:///unused", clock)
    window = storage.commit_window
    writes = held_writes(storage, clock)
    storage.insert(hook(1))
    clock.advance(0)
    assert [(at, size) for at, size, _ in writes] == [(1000, 1)]
    # Webhooks that arrive while a batch is written wait for the window after it.
    storage.insert(hook(2))
    storage.insert(hook(3))
    clock.advance(0.004)
    writes[0][2].callback([1])
    clock.advance(window - 0.001)
    assert len(writes) == 1
    clock.advance(0.001)
    assert [(at, size) for at, size, _ in writes][1:] == [(pytest.approx(1000.004 + window), 2)]
    writes[1][2].callback([2, 3])
    # Idle again: the next one goes at once.
    clock.advance(window)
    storage.insert(hook(4))
    clock.advance(0)
    assert len(writes) == 3 and writes[2][0] == pytest.approx(1000.004 + 2 * window)


def test_a_full_batch_is_written_without_waiting_for_the_window(tmp_path):
    clock = Clock()
    storage = PostgresStorage("postgresql:///unused", clock)
    writes = held_writes(storage, clock)
    storage.insert(hook(0))
    clock.advance(0)
    for n in range(storage.commit_batch + 5):
        storage.insert(hook(n))
    writes[0][2].callback([1])
    clock.advance(0)
    assert [(at, size) for at, size, _ in writes][1:] == [(0, storage.commit_batch + 5)]
    writes[1][2].callback(list(range(storage.commit_batch + 5)))
    for n in range(storage.commit_batch - 1):
        storage.insert(hook(n))
    clock.advance(0)
    assert len(writes) == 2
    storage.insert(hook(99))
    clock.advance(0)
    assert [(at, size) for at, size, _ in writes][2:] == [(0, storage.commit_batch)]
