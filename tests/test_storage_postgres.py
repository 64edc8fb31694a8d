"""What only PostgreSQL does: migrations shared by nodes, several storages
(nodes) on one database, notifications, and "cannot write now"."""

from __future__ import annotations

import threading

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError, ensureDeferred, gatherResults

from kwp.storage import Attempt, Route, StorageError, StorageUnavailable, open_storage
from kwp.storage import postgres
from kwp.storage.postgres import CHANNEL, ID_LOCK, MIGRATIONS, PostgresStorage, fold_queue_sizes
from tests.support import POSTGRES_URL, Backend, free_port, until
from tests.test_storage import hook, routed


@pytest.fixture
def database(postgres_databases):
    url = postgres_databases.create()
    backend = Backend("postgresql", url)
    yield backend
    backend.stop_all()
    postgres_databases.drop(url)


@pytest.fixture
def nodes(database):
    """Two storages on one database, as two nodes have them."""
    return database.start(), database.start()


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def test_nodes_starting_together_migrate_once(postgres_databases):
    url = postgres_databases.create(migrated=False)
    errors = []

    def start():
        try:
            PostgresStorage(url, reactor).prepare()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert Backend("postgresql", url).execute("SELECT version, compat FROM kwp_schema") == [(len(MIGRATIONS), 1)]
    finally:
        postgres_databases.drop(url)


def test_an_older_build_refuses_a_newer_database_unless_compatible(database):
    database.execute("UPDATE kwp_schema SET version = 99, compat = 2")
    database.open()
    database.execute("UPDATE kwp_schema SET compat = 99")
    with pytest.raises(StorageError, match="newer than this kwp knows"):
        database.open()


def test_a_database_that_does_not_answer_stops_start_up_without_its_password():
    with pytest.raises(StorageError, match="cannot open database") as e:
        open_storage(f"postgres://kwp:s3cret@127.0.0.1:{free_port()}/kwp", reactor)
    assert "s3cret" not in str(e.value) and "kwp:***@" in str(e.value)


@pytest_twisted.ensureDeferred
async def test_claims_on_two_nodes_never_take_the_same_delivery(nodes):
    a, b = nodes
    ids = await gatherResults([a.insert(hook(i)) for i in range(300)])
    taken = []
    for round_ in range(30):
        pages = await gatherResults(
            [node.claim("a", f"{name}{round_}", 7, 2000.0, 60) for node, name in ((a, "a"), (b, "b"), (a, "c"))]
        )
        taken += [r.id for page in pages for r in page]
    assert sorted(taken) == sorted(ids[: len(taken)]) and len(set(taken)) == len(taken) > 200


@pytest_twisted.ensureDeferred
async def test_two_nodes_closing_the_last_deliveries_of_webhooks_leave_them_done(nodes, database):
    a, b = nodes
    for round_ in range(5):
        ids = await gatherResults([a.insert(routed(i, "ci", "chat")) for i in range(40)])
        await a.claim("a", f"ci{round_}", 100, 2000.0, 60, consumer="ci")
        await a.claim("a", f"chat{round_}", 100, 2000.0, 60, consumer="chat")
        await gatherResults([a.ack("a", ids, 2001.0, consumer="ci"), b.ack("a", ids, 2001.0, consumer="chat")])
    assert database.execute("SELECT COUNT(*), COUNT(done_at) FROM webhooks") == [(200, 200)]


@pytest_twisted.ensureDeferred
async def test_a_claim_given_back_while_its_transaction_runs_is_released_after_it(database):
    """A pull whose client leaves during a claim: the route's Deferred is
    cancelled and the claim given back while the claim's transaction waits
    for a lock; the release must not run beside it and find nothing."""
    storage = database.start()
    for n in range(3):
        await storage.insert(hook(n))
    with psycopg.connect(database.url) as blocker:
        blocker.execute("LOCK TABLE deliveries IN EXCLUSIVE MODE")
        taking = storage.claim("a", "gone", 10, 2000.0, None)
        taking.cancel()
        taking.addErrback(lambda f: f.trap(CancelledError))
        releasing = storage.release_claim("gone")
        await sleep(0.3)
    assert await releasing == 3
    assert [r.id for r in await storage.claim("a", "next", 10, 2000.0, None)] == [1, 2, 3]


@pytest_twisted.ensureDeferred
async def test_ids_become_visible_in_their_order_across_nodes(nodes, database):
    """A node's insert waits while another transaction holds the id order
    lock: no id is committed while a smaller one may still come."""
    a, _ = nodes
    with psycopg.connect(database.url) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", (ID_LOCK,))
        inserted = a.insert(hook(1))
        await sleep(0.3)
        assert not inserted.called
        other.commit()
        assert await inserted == 1


@pytest_twisted.ensureDeferred
async def test_one_notification_per_batch_wakes_the_other_nodes(nodes, database):
    a, b = nodes
    heard = []
    b.on_stored(lambda channel, consumers: heard.append((channel, dict(consumers))))
    await until(lambda: b._listener.listening and a._listener.listening)
    with psycopg.connect(database.url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        await gatherResults([a.insert(routed(i, "ci")) for i in range(50)])
        await until(lambda: heard, timeout=2, what="the other node heard")
        assert heard == [("a", {"ci": 50})]
        assert len(list(listener.notifies(timeout=0.2))) == 1


@pytest_twisted.ensureDeferred
async def test_a_pause_on_one_node_is_heard_by_the_others(nodes):
    a, b = nodes
    changed = []
    b.on_queue_changed(lambda channel, consumer: changed.append((channel, consumer)))
    await until(lambda: b._listener.listening)
    await a.set_paused("a", True, consumer="push")
    await until(lambda: changed == [("a", "push")], timeout=2, what="the pause was heard")
    assert (await b.queue_state("a", consumer="push")).paused


@pytest_twisted.ensureDeferred
async def test_webhooks_whose_notification_was_lost_are_found_by_the_poll(nodes, database):
    a, b = nodes
    heard = []
    b.on_stored(lambda channel, consumers: heard.append((channel, dict(consumers))))
    await until(lambda: b._known is not None)
    # Written as a node would, but without its notification.
    database.execute("INSERT INTO webhooks (id, channel, headers, body, received_at) VALUES (nextval('webhook_ids'), 'q', '{}', '\\x7b7d', 1.0)")
    database.execute("INSERT INTO deliveries (seq, webhook_id, channel, consumer, queued_at) SELECT id, id, 'q', 'ci', 1.0 FROM webhooks")
    await until(lambda: heard, timeout=1.5, what="the poll found it")
    assert heard == [("q", {"ci": 1})]


@pytest_twisted.ensureDeferred
async def test_a_lost_listening_connection_reconnects_and_finds_what_it_missed(nodes, database):
    a, b = nodes
    heard = []
    b.on_stored(lambda channel, consumers: heard.append((channel, dict(consumers))))
    await until(lambda: b._listener.listening and b._known is not None)
    b._poller.stop()  # only the reconnection may find it
    pid = b._listener._reader.connection.info.backend_pid
    database.execute("SELECT pg_terminate_backend(?)", (pid,))
    await until(lambda: not b._listener.listening, what="the listener saw the loss")
    await a.insert(routed(1, "ci"))
    await until(lambda: heard, timeout=3, what="the reconnected listener found it")
    assert heard == [("a", {"ci": 1})]
    await a.insert(routed(2, "ci"))
    await until(lambda: len(heard) == 2, timeout=2, what="notifications again")


@pytest_twisted.ensureDeferred
async def test_a_database_that_refuses_writes_answers_unavailable_and_comes_back(database):
    storage = database.start()
    assert await storage.insert(hook(1)) == 1
    name = database.url.rsplit("/", 1)[1]
    admin = Backend("postgresql", POSTGRES_URL)

    def read_only(on: bool) -> None:
        admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ?", (name,))

    read_only(True)
    with pytest.raises(StorageUnavailable):
        await storage.insert(hook(2))
    read_only(False)
    again = await storage.insert(hook(3))
    assert [r.id for r in await storage.list("a", 10)] == [1, again]


@pytest_twisted.ensureDeferred
async def test_a_transaction_that_loses_its_connection_after_sending_its_commit_is_not_run_again(database):
    storage = database.start()
    assert await storage.insert(hook(1)) == 1
    runs = []

    def lose_the_connection_before_the_commit_is_answered(txn):
        # The COMMIT goes in the same round trip as this statement, so that
        # the client cannot know whether it was made.
        runs.append(txn)
        txn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(StorageUnavailable):
        await storage._run(lose_the_connection_before_the_commit_is_answered)
    assert len(runs) == 1
    again = await storage.insert(hook(2))
    assert [r.id for r in await storage.list("a", 10)] == [1, again]


@pytest_twisted.ensureDeferred
async def test_a_database_that_cannot_be_reached_answers_unavailable():
    storage = PostgresStorage(f"postgresql://postgres@127.0.0.1:{free_port()}/kwp", reactor)
    storage.startService()
    try:
        with pytest.raises(StorageUnavailable):
            await storage.insert(hook(1))
        with pytest.raises(StorageUnavailable):
            await storage.ping()
    finally:
        await storage.stopService()


# --- the queue figures ------------------------------------------------------------

FIGURES = "SELECT channel, consumer, open, dead FROM queue_sizes WHERE open <> 0 OR dead <> 0 ORDER BY channel, consumer"
COUNTED = (
    "SELECT channel, consumer, COUNT(*) FILTER (WHERE state IN ('pending', 'dead')),"
    " COUNT(*) FILTER (WHERE state = 'dead') FROM deliveries GROUP BY channel, consumer"
    " HAVING COUNT(*) FILTER (WHERE state IN ('pending', 'dead')) > 0 ORDER BY channel, consumer"
)


def test_the_migration_counts_what_a_database_of_schema_2_holds(postgres_databases, monkeypatch):
    url = postgres_databases.create(migrated=False)
    database = Backend("postgresql", url)
    try:
        monkeypatch.setattr(postgres, "MIGRATIONS", MIGRATIONS[:2])
        database.open()
        monkeypatch.undo()
        database.execute(
            "INSERT INTO deliveries (webhook_id, channel, consumer, seq, queued_at, state) VALUES"
            " (1, 'a', 'ci', 1, 1.0, 'pending'), (2, 'a', 'ci', 2, 1.0, 'dead'), (3, 'a', 'ci', 3, 1.0, 'delivered'),"
            " (1, 'a', 'chat', 1, 1.0, 'deleted'), (1, 'b', 'default', 1, 1.0, 'pending')"
        )
        database.open()
        assert database.execute(FIGURES) == [("a", "ci", 2, 1), ("b", "default", 1, 0)]
    finally:
        postgres_databases.drop(url)


@pytest_twisted.ensureDeferred
async def test_nodes_closing_deliveries_of_one_queue_do_not_wait_for_each_other(nodes, database):
    """Counting a queue's figures takes no lock that another transaction
    holds until its commit: while one node's close of a delivery has not
    committed, another node closes one of the same queue and stores into it
    under its limit."""
    a, b = nodes
    for i in range(3):
        await a.insert(hook(i))
    with psycopg.connect(database.url) as other:
        other.execute("UPDATE deliveries SET state = 'deleted', closed_at = 2000 WHERE webhook_id = 1")
        done = gatherResults([b.delete("a", 2, 2000.0), a.insert(hook(3, max_queue=10))])
        await until(lambda: done.called, timeout=3, what="the close and the store, while the other is open")
        assert await done == [True, 4]
        assert database.execute(FIGURES) == [("a", "default", 3, 0)]
    assert database.execute(FIGURES) == [("a", "default", 2, 0)]


def rolled_back(monkeypatch, storages) -> list:
    """The transactions that the pools of storages roll back from now on: a
    deadlock or serialization failure tried again, or any error (those of
    other tests' storages, still closing, are not counted)."""
    forgotten = []
    forget = postgres._Pool._forget
    pools = {s._pool for s in storages}

    def counted(pool, conn):
        if pool in pools:
            forgotten.append(conn)
        forget(pool, conn)

    monkeypatch.setattr(postgres._Pool, "_forget", counted)
    return forgotten


@pytest_twisted.ensureDeferred
async def test_queue_figures_stay_exact_while_three_nodes_work_on_the_same_queues(database, monkeypatch):
    nodes = [database.start() for _ in range(3)]
    rollbacks = rolled_back(monkeypatch, nodes)
    routes = (Route("ci", max_queue=10_000), Route("chat"))
    total = 240

    async def receive(node, first):
        for n in range(first, total, 3):
            await node.insert(hook(n, routes=routes))

    async def pull(node, name):
        for round_ in range(40):
            claim = f"{name}{round_}"
            if round_ % 2:
                await node.claim("a", claim, 4, 2000.0, None, consumer="ci")
                await node.finish_claim(claim, 2001.0)
            else:
                taken = await node.claim("a", claim, 4, 2000.0, 60, consumer="ci")
                await node.ack("a", [r.id for r in taken], 2001.0, consumer="ci")

    async def push(node):
        # Two nodes see the same window: their outcomes meet on the same rows.
        for _ in range(30):
            for i, item in enumerate(await node.forward_window("a", 3, 3000.0, consumer="chat")):
                if i == 0:
                    await node.forward_failed("a", item.id, Attempt(2002.0, 500), None, "dead", consumer="chat")
                elif i == 1:
                    await node.forward_succeeded("a", item.id, Attempt(2002.0, 200), consumer="chat")
                else:
                    await node.delete("a", item.id, 2002.0, consumer="chat")

    async def replay(node):
        for round_ in range(10):
            await node.replay("a", range(1, total + 1, 7), ["chat"], 2003.0, state="dead")
            await sleep(0.05)

    async def fold(node):
        for _ in range(20):
            await node._run(fold_queue_sizes)
            await sleep(0.03)

    a, b, c = nodes
    work = [receive(node, first) for first, node in enumerate(nodes)]
    work += [pull(a, "a"), pull(b, "b"), pull(c, "c"), push(b), push(c), replay(a)]
    work += [fold(node) for node in nodes]
    await gatherResults([ensureDeferred(w) for w in work])
    counted = database.execute(COUNTED)
    assert database.execute(FIGURES) == counted
    assert {consumer for _, consumer, *_ in counted} == {"ci", "chat"} and any(dead for *_, dead in counted)
    await a._run(fold_queue_sizes)
    assert database.execute(FIGURES) == counted
    assert database.execute("SELECT COUNT(*) FROM queue_size_changes") == [(len(counted),)]
    assert rollbacks == []


@pytest_twisted.ensureDeferred
async def test_a_node_folds_the_changes_of_each_queue_into_one_row(database):
    storage = database.start()
    for i in range(3):
        await storage.insert(routed(i, "ci", "chat"))
    await storage.delete("a", 1, 2000.0, consumer="ci")
    assert database.execute("SELECT COUNT(*) FROM queue_size_changes") == [(7,)]
    await until(
        lambda: database.execute("SELECT COUNT(*) FROM queue_size_changes") == [(2,)],
        timeout=postgres.FOLD_INTERVAL + 2,
        what="the changes folded",
    )
    assert database.execute(FIGURES) == [("a", "chat", 3, 0), ("a", "ci", 2, 0)]
