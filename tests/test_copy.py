"""kwp copy: a single node's SQLite store into PostgreSQL, without loss."""

from __future__ import annotations

import pytest_twisted

from kwp.cli import main
from kwp.storage import DUPLICATE, Attempt, EventQuery, NewWebhook, Route
from kwp.storage.postgres import TABLES
from tests.support import Backend
from tests.test_storage import routed

ORDER = {
    "webhooks": "id",
    "deliveries": "webhook_id, consumer",
    "attempts": "id",
    "consumers": "channel, consumer",
    "seen_deliveries": "channel, delivery_id",
}


def rows(backend: Backend, name: str, columns: list[str]) -> list[tuple]:
    return backend.execute(f"SELECT {', '.join(columns)} FROM {name} ORDER BY {ORDER[name]}")


async def fill(storage) -> None:
    """A store with every kind of thing kwp keeps."""
    for i in range(6):
        await storage.insert(routed(i, "ci", "push", delivery_id=f"d{i}", dedup_window=86400))
    await storage.insert(routed(9))  # filtered: history only
    await storage.insert(NewWebhook("b", "{}", b"\x00\xff not json", 1.0))
    await storage.claim("a", "leased", 2, 2000.0, 3600, consumer="ci")  # 1 and 2 leased
    taken = await storage.claim("a", "done", 1, 2000.0, 60, consumer="ci")
    await storage.ack("a", [r.id for r in taken], 2001.0, consumer="ci")  # 3 delivered
    await storage.forward_failed("a", 1, Attempt(2002.0, 500, "unexpected status 500", 3.5, "oops"), None, "dead", consumer="push")
    await storage.forward_failed("a", 2, Attempt(2003.0, None, "refused", 1.0), 2500.0, "pending", consumer="push")
    await storage.forward_succeeded("a", 3, Attempt(2004.0, 200, None, 2.0, "ok"), consumer="push")
    await storage.set_paused("a", True, consumer="push")
    await storage.acquire_lease("a", "node-1", 2005.0, 10, consumer="push")
    await storage.delete("a", 6, 2006.0, consumer="ci")
    await storage.delete("a", 6, 2006.0, consumer="push")  # 6 done: history
    await storage.replay("a", [3], ["ci"], 2007.0)
    await storage.purge("b", 8)
    await storage.insert(NewWebhook("b", "{}", b"{}", 2.0))  # 10, then deleted: the sequence is ahead
    await storage.delete("b", 10, 2008.0)
    await storage.purge("b", 10)


@pytest_twisted.ensureDeferred
async def test_copy_moves_every_table_and_the_id_sequence_and_refuses_a_second_time(tmp_path, postgres_databases, capsys):
    source = Backend("sqlite", str(tmp_path / "kwp.db"))
    filled = source.start()
    await fill(filled)
    stats = await filled.queue_stats()
    await filled.stopService()
    url = postgres_databases.create(migrated=False)
    target = Backend("postgresql", url)
    storage = None
    try:
        assert main(["copy", "--from", f"sqlite://{source.url}", "--to", url]) == 0
        assert "copied 7 webhooks, 12 deliveries, 3 attempts, 1 consumers, 6 seen_deliveries" in capsys.readouterr().out
        for name in TABLES:
            columns = [c for (c,) in source.execute(f"SELECT name FROM pragma_table_info('{name}')")]
            assert rows(target, name, columns) == rows(source, name, columns), name
        # The figures of each queue, kept by triggers on both.
        figures = "SELECT channel, consumer, open, dead FROM queue_sizes WHERE open <> 0 OR dead <> 0 ORDER BY 1, 2"
        assert target.execute(figures) == source.execute(figures) == [("a", "ci", 5, 0), ("a", "push", 4, 1)]

        storage = target.start()
        assert await storage.queue_stats() == stats
        # The queues, leases, dead letters, pause and log work on as before.
        assert [r.id for r in await storage.list("a", 10, consumer="ci")] == [1, 2, 4, 5, 3]
        # 1 and 2 stay leased.
        assert [r.id for r in await storage.claim("a", "pull", 10, 3000.0, None, consumer="ci")] == [4, 5, 3]
        state, size, items = await storage.queue("a", 10, consumer="push")
        assert state.paused and size == 4
        assert [(i.id, i.state) for i in items] == [(1, "dead"), (2, "pending"), (4, "pending"), (5, "pending")]
        assert await storage.acquire_lease("a", "node-2", 2006.0, 10, consumer="push") is None
        [delivery] = [d for d in (await storage.event("a", 1)).deliveries if d.consumer == "push"]
        assert [(a.status_code, a.error, a.response_excerpt) for a in delivery.log] == [(500, "unexpected status 500", "oops")]
        assert [e.id for e in await storage.events("a", EventQuery(state="filtered"), 10)] == [7]
        assert await storage.insert(routed(0, delivery_id="d0", dedup_window=86400)) is DUPLICATE
        assert await storage.insert(NewWebhook("b", "{}", b"{}", 3.0, routes=(Route(),))) == 11
        await storage.forward_failed("a", 2, Attempt(3000.0, 503), 3100.0, "pending", consumer="push")
        assert (await storage.event("a", 2)).deliveries[1].attempts == 2
        await storage.stopService()

        assert main(["copy", "--from", source.url, "--to", url]) == 1
        assert "not empty" in capsys.readouterr().err
    finally:
        if storage is not None and storage.running:
            await storage.stopService()
        postgres_databases.drop(url)


def test_copy_refuses_a_missing_source_and_wrong_directions(tmp_path, capsys):
    assert main(["copy", "--from", str(tmp_path / "missing.db"), "--to", "postgresql://postgres@127.0.0.1/x"]) == 1
    assert "no SQLite database" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()
    assert main(["copy", "--from", "postgresql://a/b", "--to", str(tmp_path / "x.db")]) == 2
