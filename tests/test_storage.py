"""The SQLite storage service on a temp file, with the real reactor's threads."""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from kwp.storage import DEAD, DUPLICATE, PENDING, QUEUE_FULL, NewWebhook, StorageError, open_storage
from kwp.storage.sqlite import MIGRATIONS, SQLiteStorage, sqlite_path


def started(path) -> SQLiteStorage:
    s = SQLiteStorage(str(path), reactor)
    s.prepare()
    s.startService()
    return s


@pytest.fixture
def storage(tmp_path):
    s = started(tmp_path / "kwp.db")
    yield s
    s.stopService()


def hook(n=0, channel="a", **kwargs):
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


def test_unopenable_and_newer_databases_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot open database"):
        open_storage(str(tmp_path / "file" / "kwp.db"), reactor)
    newer = tmp_path / "newer.db"
    sqlite3.connect(newer).execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StorageError, match="newer than this kwp knows"):
        open_storage(str(newer), reactor)
    with pytest.raises(StorageError, match="not supported yet"):
        open_storage("postgresql://user:pw@host/db", reactor)


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
    assert transactions.count("_insert_batch") == 1
    await gatherResults([storage.insert(hook(i)) for i in range(50, 53)])
    assert transactions.count("_insert_batch") == 2
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
async def test_a_stop_writes_what_waits_in_the_commit_window(tmp_path):
    path = str(tmp_path / "kwp.db")
    s = started(path)
    inserted = s.insert(hook(1))
    await s.stopService()
    assert isinstance(await inserted, int)
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM webhooks").fetchone()[0] == 1


@pytest_twisted.ensureDeferred
async def test_claims_are_exclusive_and_settle(storage):
    for i in range(5):
        await storage.insert(hook(i))
    first = await storage.claim("a", "c1", 3, 2000.0, None)
    second = await storage.claim("a", "c2", 10, 2000.0, None)
    assert [r.id for r in first] == [1, 2, 3] and [r.id for r in second] == [4, 5]
    await storage.release_claim("c1")
    await storage.finish_claim("c2")
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
    assert await storage.ack("b", [r.id for r in leased]) == 0
    assert await storage.ack("a", [leased[0].id, 999]) == 1
    assert await storage.ack("a", [leased[0].id]) == 0


@pytest_twisted.ensureDeferred
async def test_unfinished_pulls_are_released_on_restart(tmp_path):
    path = str(tmp_path / "kwp.db")
    s = started(path)
    await s.insert(hook(1))
    await s.insert(hook(2))
    await s.claim("a", "gone", 1, 2000.0, None)
    await s.claim("a", "leased", 1, 2000.0, 60)
    s.stopService()
    s = started(path)
    try:
        assert [r.id for r in await s.claim("a", "new", 10, 2000.0, None)] == [1]
    finally:
        s.stopService()


@pytest_twisted.ensureDeferred
async def test_dedup_window_and_queue_limit(storage):
    first = await storage.insert(hook(1, delivery_id="d1", dedup_window=60))
    assert isinstance(first, int)
    assert await storage.insert(hook(2, delivery_id="d1", dedup_window=60)) is DUPLICATE
    await storage.delete("a", first)
    assert await storage.insert(hook(3, delivery_id="d1", dedup_window=60)) is DUPLICATE
    assert isinstance(await storage.insert(hook(70, delivery_id="d1", dedup_window=60)), int)
    assert isinstance(await storage.insert(hook(80, channel="b", delivery_id="d1", dedup_window=60)), int)

    oldest = await storage.insert(hook(1, channel="q", max_queue=2))
    assert isinstance(await storage.insert(hook(2, channel="q", max_queue=2)), int)
    assert await storage.insert(hook(3, channel="q", max_queue=2, delivery_id="dq")) is QUEUE_FULL
    # A refused webhook's delivery id is not remembered: its retry can get in.
    await storage.delete("q", oldest)
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
async def test_ids_are_never_reused_across_deletes_and_restarts(tmp_path):
    path = str(tmp_path / "kwp.db")
    s = started(path)
    ids = await gatherResults([s.insert(hook(i)) for i in range(3)])
    await s.delete("a", ids[-1])
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
        await s.delete("a", 11)
        assert await s.insert(hook(6, delivery_id="d")) == 12
    finally:
        await s.stopService()


@pytest_twisted.ensureDeferred
async def test_queue_stats_count_each_channel_and_give_its_oldest_arrival(storage):
    for channel, at in [("a", 30.0), ("b", 10.0), ("a", 40.0), ("b", 20.0), ("b", 50.0)]:
        await storage.insert(NewWebhook(channel, "{}", b"{}", at))
    assert await storage.queue_stats() == {"a": (2, 30.0), "b": (3, 10.0)}


@pytest_twisted.ensureDeferred
async def test_forward_stats_count_dead_webhooks_and_give_the_oldest_pending_arrival(storage):
    ids = [await storage.insert(NewWebhook(channel, "{}", b"{}", at)) for channel, at in
           [("a", 10.0), ("a", 20.0), ("a", 30.0), ("b", 40.0), ("c", 50.0)]]
    # The oldest of a is dead: the oldest pending one is the next.
    await storage.forward_failed("a", ids[0], 60.0, "unexpected status 500", None, DEAD)
    await storage.forward_failed("a", ids[1], 60.0, "unexpected status 500", 90.0, PENDING)
    await storage.forward_failed("b", ids[3], 60.0, "unexpected status 500", None, DEAD)
    stats = await storage.forward_stats(["a", "b", "empty"])
    assert stats == {"a": (1, 20.0), "b": (1, None), "empty": (0, None)}
    assert await storage.forward_stats([]) == {}

