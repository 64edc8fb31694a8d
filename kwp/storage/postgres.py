"""PostgreSQL storage on adbapi with psycopg 3, for one node or several.

The transactions are those of kwp.storage.queries; the cursor of this pool
turns their ``?`` placeholders into psycopg's ``%s``.  What differs from
SQLite:

- Claims lock the rows they take (``FOR UPDATE OF d SKIP LOCKED``), so two
  nodes never hand out the same delivery.
- Ids come from the sequence ``webhook_ids``.  A transaction that takes ids
  first takes a transaction-level advisory lock (ID_LOCK), held until its
  commit: ids become visible in their order across nodes, so a reader that
  resumes after id N (a stream, ``list?after=``, the relay) never misses a
  smaller id committed later.  The lock also makes that transaction's one
  ``pg_notify`` free: PostgreSQL serialises commits that notify anyway.
- Each committed batch sends one notification on CHANNEL.  Every node
  listens on a connection of its own read by the reactor, and turns other
  nodes' notifications into the same ``on_stored`` / ``on_queue_changed``
  calls as its own commits.  A poll each POLL_INTERVAL catches webhooks whose
  notification was lost, and runs at once after the listener reconnects.
- The figures of each queue (``queue_sizes``, as SQLite keeps them) are
  the sums of ``queue_size_changes``: triggers append one row per statement
  and queue that changes them, and a node folds each queue's rows into one
  each FOLD_INTERVAL.  Appending takes no lock that another transaction
  holds, so transactions that close deliveries of one queue on several
  nodes never wait for each other on a counter row, nor deadlock on it.
- The schema is versioned in ``kwp_schema``; start-up migrates it one step
  per transaction under a session advisory lock (MIGRATION_LOCK), so nodes
  starting together migrate once.  A build refuses a database whose
  ``compat`` version is newer than the schema it knows.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from typing import Sequence

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from twisted.enterprise import adbapi
from twisted.internet import task, threads
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from kwp.storage import StorageError, StorageUnavailable, redacted
from kwp.storage.queries import Dialect, News
from kwp.storage.service import AdbapiStorage

log = Logger()

# Advisory lock keys (arbitrary, fixed): the schema migration, and the order
# of ids at commit.
MIGRATION_LOCK = 0x6B7770_01
ID_LOCK = 0x6B7770_02
FOLD_LOCK = 0x6B7770_03
CHANNEL = "kwp"
# A notification's payload must stay under 8000 bytes; a larger one says
# only "look", and the listeners poll.
MAX_PAYLOAD = 7900
POLL_INTERVAL = 1.0
POLL_ROWS = 10_000
RECONNECT_DELAY = 1.0
FOLD_INTERVAL = 1.0
# Connections per node.
POOL_SIZE = 4
# How long after a batch the next one is written (a lone webhook is written
# at once), unless COMMIT_BATCH webhooks wait already: commits that store
# webhooks are serialised across the cluster (ID_LOCK, NOTIFY), so under load
# fewer, larger batches: at 1,500 receives/s a node commits less than 50
# times a second (some 30 webhooks each).  Under heavier load batches of 40
# go without waiting for the window, and one may be written while another
# commits: its transaction waits for ID_LOCK meanwhile, but the webhooks of
# the next batch are received meanwhile instead of waiting for the commit.
COMMIT_WINDOW = 0.02
COMMIT_BATCH = 40
FULL_BATCHES = 2
# How long an unleased pull holds what it took, should its node die.
PULL_HOLD = 300.0
# Attempts of a transaction that met a deadlock or lost its connection
# before the commit.
ATTEMPTS = 3
# Connection settings kwp uses unless the URL sets them.
CONNECT_DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "kwp",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


def connection_params(url: str) -> dict:
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise StorageError(f"invalid database URL: {e}") from None
    for key, value in CONNECT_DEFAULTS.items():
        params.setdefault(key, value)
    return params


# --- the schema ------------------------------------------------------------------

_V1 = [
    "CREATE SEQUENCE webhook_ids",
    """CREATE TABLE webhooks (
        id BIGINT PRIMARY KEY,
        channel TEXT COLLATE "C" NOT NULL,
        headers TEXT NOT NULL,
        body BYTEA NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        delivery_id TEXT,
        done_at DOUBLE PRECISION
    )""",
    "CREATE INDEX webhooks_channel ON webhooks (channel, id)",
    "CREATE INDEX webhooks_done ON webhooks (channel, done_at) WHERE done_at IS NOT NULL",
    """CREATE TABLE deliveries (
        webhook_id BIGINT NOT NULL,
        channel TEXT COLLATE "C" NOT NULL,
        consumer TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        queued_at DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        claim TEXT,
        lease_until DOUBLE PRECISION,
        handouts INTEGER NOT NULL DEFAULT 0,
        taken_at DOUBLE PRECISION,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_attempt_at DOUBLE PRECISION,
        last_status INTEGER,
        last_error TEXT,
        next_attempt_at DOUBLE PRECISION,
        closed_at DOUBLE PRECISION,
        PRIMARY KEY (webhook_id, consumer)
    )""",
    "CREATE INDEX deliveries_ready ON deliveries (channel, consumer, seq) WHERE state = 'pending' AND claim IS NULL",
    "CREATE INDEX deliveries_open ON deliveries (channel, consumer, seq, state) WHERE state IN ('pending', 'dead')",
    "CREATE INDEX deliveries_leased ON deliveries (channel, consumer, lease_until) WHERE lease_until IS NOT NULL",
    "CREATE INDEX deliveries_claim ON deliveries (claim) WHERE claim IS NOT NULL",
    # Every delivery row is updated a few times in its short life: vacuum
    # the queue table early rather than at a fifth of it dead.
    "ALTER TABLE deliveries SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,"
    " autovacuum_analyze_scale_factor = 0.02)",
    """CREATE TABLE attempts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        webhook_id BIGINT NOT NULL,
        consumer TEXT COLLATE "C" NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        status_code INTEGER,
        error TEXT,
        duration_ms DOUBLE PRECISION,
        response_excerpt TEXT
    )""",
    "CREATE INDEX attempts_delivery ON attempts (webhook_id, consumer, id)",
    """CREATE TABLE consumers (
        channel TEXT COLLATE "C" NOT NULL,
        consumer TEXT COLLATE "C" NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        last_success_at DOUBLE PRECISION,
        last_error_at DOUBLE PRECISION,
        last_error_message TEXT,
        PRIMARY KEY (channel, consumer)
    )""",
    """CREATE TABLE seen_deliveries (
        channel TEXT COLLATE "C" NOT NULL,
        delivery_id TEXT COLLATE "C" NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (channel, delivery_id)
    )""",
    "ALTER TABLE seen_deliveries SET (autovacuum_vacuum_scale_factor = 0.05)",
]

# The forwarding lease of each queue (as SQLite's schema 5).
_V2 = [
    "ALTER TABLE consumers ADD COLUMN lease_owner TEXT",
    "ALTER TABLE consumers ADD COLUMN lease_token BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE consumers ADD COLUMN lease_until DOUBLE PRECISION",
]

_IS_OPEN = "(state IN ('pending', 'dead'))::int"
_IS_DEAD = "(state = 'dead')::int"


def _counting(event: str, *transitions: str) -> list[str]:
    """A trigger that appends, after each statement of event on deliveries,
    what it changed in each queue's figures: the rows of the transition
    tables ("new" counted in, "old" counted out)."""
    changes = " UNION ALL ".join(
        f"SELECT channel, consumer, {'-' if t == 'old' else ''}{_IS_OPEN} AS open,"
        f" {'-' if t == 'old' else ''}{_IS_DEAD} AS dead FROM {t}_rows"
        for t in transitions
    )
    return [
        f"""CREATE FUNCTION queue_sizes_{event}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            INSERT INTO queue_size_changes (channel, consumer, open, dead)
            SELECT channel, consumer, SUM(open), SUM(dead) FROM ({changes}) AS changes
            GROUP BY channel, consumer HAVING SUM(open) <> 0 OR SUM(dead) <> 0;
            RETURN NULL;
        END $$""",
        f"CREATE TRIGGER deliveries_{event} AFTER {event.upper()} ON deliveries REFERENCING "
        + " ".join(f"{t.upper()} TABLE AS {t}_rows" for t in transitions)
        + f" FOR EACH STATEMENT EXECUTE FUNCTION queue_sizes_{event}()",
    ]


# The figures of each queue (SQLite's schema 5 keeps them in a table of one
# row per queue): the sums of its rows of queue_size_changes.  The triggers
# come before the count of what the database holds: creating them waits for
# the transactions writing deliveries and holds back new ones until the
# commit, so every delivery is counted once, by the count or by a trigger.
# And the index for pruning delivery ids by age.
_V3 = [
    """CREATE TABLE queue_size_changes (
        channel TEXT COLLATE "C" NOT NULL,
        consumer TEXT COLLATE "C" NOT NULL,
        open INTEGER NOT NULL,
        dead INTEGER NOT NULL
    )""",
    "CREATE INDEX queue_size_changes_queue ON queue_size_changes (channel, consumer)",
    "CREATE VIEW queue_sizes AS SELECT channel, consumer, SUM(open) AS open, SUM(dead) AS dead"
    " FROM queue_size_changes GROUP BY channel, consumer",
    *_counting("insert", "new"),
    *_counting("update", "old", "new"),
    *_counting("delete", "old"),
    f"""INSERT INTO queue_size_changes (channel, consumer, open, dead)
        SELECT channel, consumer, SUM({_IS_OPEN}), SUM({_IS_DEAD}) FROM deliveries
        GROUP BY channel, consumer HAVING SUM({_IS_OPEN}) > 0""",
    "CREATE INDEX seen_deliveries_age ON seen_deliveries (channel, seen_at)",
]

# (statements, compat): the steps oldest first; compat is the oldest schema
# version whose builds still work on the database once the step has run.
MIGRATIONS: list[tuple[list[str], int]] = [(_V1, 1), (_V2, 1), (_V3, 1)]
# The tables a store consists of (kwp copy moves them in this order).
TABLES = ("webhooks", "deliveries", "attempts", "consumers", "seen_deliveries")


def schema_version(connection: psycopg.Connection) -> tuple[int, int]:
    """(version, compat) of the database; (0, 0) before the first step."""
    row = connection.execute("SELECT to_regclass('kwp_schema') IS NOT NULL").fetchone()
    if not row[0]:
        return 0, 0
    return connection.execute("SELECT version, compat FROM kwp_schema").fetchone()


def migrate(connection: psycopg.Connection) -> None:
    """Bring the schema up to date, one step per transaction, while holding
    MIGRATION_LOCK; ``connection`` is in autocommit mode."""
    connection.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        version, compat = schema_version(connection)
        if compat > len(MIGRATIONS):
            raise StorageError(
                f"the database has schema version {version} (compatible from {compat}),"
                f" newer than this kwp knows ({len(MIGRATIONS)})"
            )
        for number, (statements, step_compat) in enumerate(MIGRATIONS[version:], start=version + 1):
            with connection.transaction():
                if number == 1:
                    connection.execute("CREATE TABLE kwp_schema (version INTEGER NOT NULL, compat INTEGER NOT NULL)")
                    connection.execute("INSERT INTO kwp_schema VALUES (0, 0)")
                for statement in statements:
                    connection.execute(statement)
                connection.execute(
                    "UPDATE kwp_schema SET version = %s, compat = GREATEST(compat, %s)", (number, step_compat)
                )
    finally:
        connection.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


# --- the dialect -----------------------------------------------------------------


# The type of each column that Dialect.insert_rows fills.
_ARRAY_TYPES = {
    "id": "bigint",
    "seq": "bigint",
    "webhook_id": "bigint",
    "channel": "text",
    "consumer": "text",
    "headers": "text",
    "body": "bytea",
    "received_at": "float8",
    "queued_at": "float8",
    "delivery_id": "text",
    "done_at": "float8",
}


class PostgresDialect(Dialect):
    skip_locked = " FOR UPDATE OF d SKIP LOCKED"
    row_lock = " FOR UPDATE"
    pull_hold = PULL_HOLD

    def __init__(self, node: str):
        self.node = node

    def order_ids(self, txn) -> None:
        txn.execute("SELECT pg_advisory_xact_lock(?)", (ID_LOCK,))

    def allocate_ids(self, txn, count: int) -> list[int]:
        txn.execute("SELECT nextval('webhook_ids') FROM generate_series(1, ?)", (count,))
        return sorted(row[0] for row in txn.fetchall())

    def insert_rows(self, txn, table: str, columns: tuple[str, ...], rows: Sequence[tuple]) -> None:
        # One array per column: the statement's text is the same for any
        # number of rows, so psycopg parses it once and prepares it, where a
        # multi-row VALUES list is new text for each batch size and, past
        # 4 KB, is parsed again on every execution.
        if not rows:
            return
        arrays = ", ".join(f"?::{_ARRAY_TYPES[c]}[]" for c in columns)
        txn.execute_binary(
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays})",
            [list(values) for values in zip(*rows)],
        )

    def announce(self, txn, news: News, last: int) -> None:
        payload = json.dumps({"node": self.node, "last": last, "stored": news}, separators=(",", ":"))
        if len(payload.encode()) > MAX_PAYLOAD:
            payload = json.dumps({"node": self.node, "last": last, "stored": None})
        txn.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))

    def announce_queue(self, txn, channel: str, consumer: str, wanted: bool = False) -> None:
        message = {"node": self.node, "queue": [channel, consumer]}
        if wanted:
            message["wanted"] = True
        payload = json.dumps(message)
        txn.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))


# --- the pool --------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _psycopg_sql(sql: str) -> str:
    """SQL with ``?`` placeholders (kwp.storage.queries never writes a
    ``?`` or ``%`` inside a literal) in psycopg's ``%s`` style."""
    return sql.replace("%", "%%").replace("?", "%s")


@lru_cache(maxsize=64)
def _binary_sql(sql: str) -> str:
    return _psycopg_sql(sql).replace("%s", "%b")


class _Transaction(adbapi.Transaction):
    # The pipeline its statements are sent in.
    pipeline: psycopg.Pipeline

    @property
    def rowcount(self) -> int:
        # A pipelined statement's row count is known once its result is in.
        self.pipeline.sync()
        return self._cursor.rowcount

    def execute(self, sql, args=None):
        if args is None:
            return self._cursor.execute(sql)
        return self._cursor.execute(_psycopg_sql(sql), args)

    def execute_binary(self, sql, args):
        """execute, with the parameters sent in binary: an array's strings
        go as they are, where the text format quotes and escapes each."""
        return self._cursor.execute(_binary_sql(sql), args)


def _lost(error: BaseException) -> bool:
    return isinstance(error, psycopg.OperationalError) and not isinstance(error, errors.DiskFull)


class _Pool(adbapi.ConnectionPool):
    """adbapi's pool, with the placeholder conversion, a connection that the
    server closed replaced without a traceback, and a transaction that met a
    deadlock or a lost connection before its commit run again."""

    transactionFactory = _Transaction

    def _forget(self, conn: adbapi.Connection) -> None:
        """Roll back, or drop a connection that is gone or cannot."""
        raw = conn._connection
        if not raw.closed:
            try:
                raw.rollback()
                return
            except psycopg.Error:
                pass
        self.disconnect(raw)

    def _runInteraction(self, interaction, *args, **kw):
        for attempt in range(1, ATTEMPTS + 1):
            conn = self.connectionFactory(self)
            trans = self.transactionFactory(self, conn)
            committing = False
            try:
                # Statements go without waiting for each one's answer until
                # a result is read, then the rest with the commit: a batch
                # of webhooks takes three round trips (BEGIN, the ids, the
                # rows with their notification and the commit), not seven.
                with conn._connection.pipeline() as trans.pipeline:
                    result = interaction(trans, *args, **kw)
                    committing = True
                    # Sent with the rest, at the sync that ends the pipeline
                    # (Connection.commit would sync once more).
                    trans.execute("COMMIT")
                trans.close()
            except (errors.DeadlockDetected, errors.SerializationFailure):
                # A statement failed, so the server skipped the COMMIT sent
                # after it.
                self._forget(conn)
                if attempt == ATTEMPTS:
                    raise
                time.sleep(0.01 * attempt)
                continue
            except BaseException as e:
                self._forget(conn)
                # A connection lost before the COMMIT was sent committed
                # nothing, and the transaction may be tried once more on a
                # new one: the server may have restarted since the
                # connection was last used (psycopg waits for BEGIN's answer,
                # so such a connection fails there).
                if _lost(e) and attempt == 1 and not committing:
                    continue
                raise
            return result


# --- listening ---------------------------------------------------------------


@implementer(IReadDescriptor)
class _Reader:
    """The listening connection's socket, read by the reactor.

    The reactor watches a duplicate of libpq's descriptor: libpq closes its
    own as soon as it reads the end of the connection, and a descriptor
    closed under the reactor's feet could not be taken out of it."""

    def __init__(self, connection: psycopg.Connection, listener: "Listener"):
        self.connection = connection
        self._fileno = os.dup(connection.fileno())
        self._listener = listener

    def fileno(self) -> int:
        return self._fileno

    def close(self) -> None:
        self.connection.close()
        os.close(self._fileno)

    def logPrefix(self) -> str:
        return "kwp-listener"

    def doRead(self) -> None:
        pgconn = self.connection.pgconn
        try:
            pgconn.consume_input()
        except psycopg.Error as e:
            self._listener.lost(self, e)
            return
        while (notify := pgconn.notifies()) is not None:
            self._listener.received(notify.extra.decode("utf-8", "replace"))

    def connectionLost(self, reason) -> None:
        self._listener.lost(self, reason.value)


class Listener:
    """LISTEN on a dedicated autocommit connection, with reconnection."""

    def __init__(self, params: dict, reactor, received, connected):
        self._params = params
        self._reactor = reactor
        self._received = received
        self._connected = connected
        self._reader: _Reader | None = None
        self._retry = None
        self._running = False
        self._complained = False

    def start(self) -> None:
        self._running = True
        self._connect()

    def stop(self) -> None:
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._drop()

    @property
    def listening(self) -> bool:
        return self._reader is not None

    def _open(self) -> psycopg.Connection:
        connection = psycopg.connect(**self._params, autocommit=True)
        connection.execute(f"LISTEN {CHANNEL}")
        return connection

    def _connect(self) -> None:
        self._retry = None
        d = threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._open)
        d.addCallbacks(self._opened, self._failed)

    def _opened(self, connection: psycopg.Connection) -> None:
        if not self._running:
            connection.close()
            return
        if self._complained:
            log.info("listening to the database again")
        self._complained = False
        self._reader = _Reader(connection, self)
        self._reactor.addReader(self._reader)
        self._reader.doRead()
        self._connected()

    def _failed(self, failure) -> None:
        if not self._complained:
            log.warn("cannot listen to the database: {error}; retrying", error=failure.value)
            self._complained = True
        self._again()

    def _again(self) -> None:
        if self._running and self._retry is None:
            self._retry = self._reactor.callLater(RECONNECT_DELAY, self._connect)

    def _drop(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            self._reactor.removeReader(reader)
            reader.close()

    def lost(self, reader: _Reader, error) -> None:
        if reader is not self._reader:
            return
        self._drop()
        if self._running:
            log.warn("lost the database listening connection: {error}; reconnecting", error=error)
            self._complained = True
            self._again()

    def received(self, payload: str) -> None:
        self._received(payload)


def _stored_after(txn, known: int) -> tuple[int, News]:
    """The webhooks committed with an id above known: the largest id and
    what they queued."""
    txn.execute(
        "SELECT w.id, w.channel, d.consumer FROM webhooks AS w"
        " LEFT JOIN deliveries AS d ON d.webhook_id = w.id AND d.seq = w.id"
        " WHERE w.id > ? ORDER BY w.id LIMIT ?",
        (known, POLL_ROWS),
    )
    news: News = {}
    last = known
    for webhook_id, channel, consumer in txn.fetchall():
        last = max(last, webhook_id)
        counts = news.setdefault(channel, {})
        if consumer is not None:
            counts[consumer] = counts.get(consumer, 0) + 1
    return last, news


def _last_id(txn) -> int:
    txn.execute("SELECT COALESCE(MAX(id), 0) FROM webhooks")
    return txn.fetchone()[0]


def fold_queue_sizes(txn) -> None:
    """Replace the rows of queue_size_changes of each queue that has several
    by their sum (by none when it is zero), unless another node is folding.
    The rows are those committed when the statement starts: rows that commit
    meanwhile are folded next time.  Readers see the rows before or after,
    whose sums are the same."""
    txn.execute("SELECT pg_try_advisory_xact_lock(?)", (FOLD_LOCK,))
    if not txn.fetchone()[0]:
        return
    txn.execute(
        "WITH folded AS (DELETE FROM queue_size_changes WHERE (channel, consumer) IN"
        " (SELECT channel, consumer FROM queue_size_changes GROUP BY channel, consumer HAVING COUNT(*) > 1)"
        " RETURNING channel, consumer, open, dead)"
        " INSERT INTO queue_size_changes (channel, consumer, open, dead)"
        " SELECT channel, consumer, SUM(open), SUM(dead) FROM folded GROUP BY channel, consumer"
        " HAVING SUM(open) <> 0 OR SUM(dead) <> 0"
    )


# SQLSTATE classes and codes that mean "cannot write now": connection
# exceptions, insufficient resources (disk full, too many connections),
# operator intervention (shutdown, starting up), a read-only server.
_UNAVAILABLE_CLASSES = ("08", "53", "57")
_UNAVAILABLE_CODES = {"25006"}


class PostgresStorage(AdbapiStorage):
    commit_window = COMMIT_WINDOW
    shared = True
    commit_batch = COMMIT_BATCH
    full_batches = FULL_BATCHES

    def __init__(self, url: str, reactor):
        super().__init__(reactor)
        self.url = url
        self.params = connection_params(url)
        self.dialect = PostgresDialect(self.node)
        # Every webhook with an id up to this one was announced here.
        self._known: int | None = None
        self._listener = Listener(self.params, reactor, self._received, self._listening)
        self._poller: task.LoopingCall | None = None
        self._polling = False
        self._folder: task.LoopingCall | None = None

    def prepare(self) -> None:
        """Connect once, synchronously, and migrate.  Raises StorageError."""
        try:
            with psycopg.connect(**self.params, autocommit=True) as connection:
                migrate(connection)
        except psycopg.Error as e:
            raise StorageError(f"cannot open database {redacted(self.url)}: {e}") from None

    def _connection_pool(self) -> adbapi.ConnectionPool:
        return _Pool("psycopg", cp_min=1, cp_max=POOL_SIZE, cp_reactor=self._reactor, **self.params)

    def _unavailable(self, error: BaseException) -> StorageUnavailable | None:
        if isinstance(error, adbapi.ConnectionLost):
            return StorageUnavailable("the connection to the database was lost")
        if not isinstance(error, psycopg.Error):
            return None
        state = error.sqlstate or ""
        if state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_CODES:
            return StorageUnavailable(f"the database cannot take writes now ({type(error).__name__})")
        if isinstance(error, psycopg.OperationalError) and not state:
            return StorageUnavailable("the database cannot be reached")
        return None

    # --- the service -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._listener.start()
        self._poller = task.LoopingCall(self._poll)
        self._poller.clock = self._reactor
        self._poller.start(POLL_INTERVAL, now=False)
        self._folder = task.LoopingCall(self._fold)
        self._folder.clock = self._reactor
        self._folder.start(FOLD_INTERVAL, now=False)

    def stopService(self):
        for loop in (self._poller, self._folder):
            if loop is not None and loop.running:
                loop.stop()
        self._listener.stop()
        return super().stopService()

    def _fold(self):
        d = self._run(fold_queue_sizes)
        return d.addErrback(lambda f: log.debug("folding the queue figures failed: {f}", f=f.value))

    # --- what other nodes stored -------------------------------------------------

    def _listening(self) -> None:
        """The listener is (again) connected: what it missed meanwhile is
        found by a poll."""
        self._poll()

    def _poll(self) -> None:
        if self._polling or not self.running:
            return
        self._polling = True
        if self._known is None:
            d = self._run(_last_id).addCallback(self._start_known)
        else:
            d = self._run(_stored_after, self._known).addCallback(self._polled, self._known)
        d.addErrback(lambda f: log.debug("poll for new webhooks failed: {f}", f=f.value))

        def done(_):
            self._polling = False

        d.addBoth(done)

    def _start_known(self, last: int) -> None:
        if self._known is None:
            self._known = last

    def _polled(self, result: tuple[int, News], since: int) -> None:
        # What the poll found was not announced to this node when it began
        # (a notification may have come since: a wake too many is harmless).
        last, news = result
        if last > since:
            self._known = max(self._known, last)
            self._stored(news)

    def _received(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            node = message["node"]
        except (ValueError, KeyError, TypeError):
            log.warn("ignored a notification that kwp did not send: {payload!r}", payload=payload[:200])
            return
        if "queue" in message:
            if node != self.node:
                if message.get("wanted"):
                    self._lease_wanted(*message["queue"])
                else:
                    self._queue_changed(*message["queue"])
            return
        last = message["last"]
        if self._known is not None and last <= self._known:
            return
        if message["stored"] is None:
            # Too much to say in one notification: the poll reads it.
            if node != self.node:
                self._poll()
            return
        if self._known is not None:
            self._known = last
        if node != self.node:
            self._stored(message["stored"])


# --- kwp copy --------------------------------------------------------------------


def copy_from_sqlite(source: str, target_url: str) -> dict[str, int]:
    """Copy the SQLite store at path source, migrated to the current schema
    first, into the empty PostgreSQL database at target_url, in one
    transaction that checks the row counts before it commits: every table,
    and the id sequence.  Returns the rows copied per table; raises
    StorageError (nothing copied) when the source is missing or the target
    is not empty."""
    import sqlite3

    from kwp.storage.sqlite import SQLiteStorage

    if not os.path.isfile(source):
        raise StorageError(f"no SQLite database at {source}")
    SQLiteStorage(source, None).prepare()
    target = PostgresStorage(target_url, None)
    target.prepare()
    counts: dict[str, int] = {}
    reader = sqlite3.connect(source)
    try:
        # One read transaction: a consistent snapshot of the whole store.
        reader.execute("BEGIN")
        with psycopg.connect(**target.params) as writer:
            for table in TABLES:
                if writer.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                    raise StorageError(f"the target database is not empty (table {table} has rows); nothing copied")
            if writer.execute("SELECT is_called FROM webhook_ids").fetchone()[0]:
                raise StorageError("the target database is not empty (its id sequence was used); nothing copied")
            for table in TABLES:
                columns = [row[1] for row in reader.execute(f"PRAGMA table_info({table})")]
                names = ", ".join(columns)
                body = columns.index("body") if table == "webhooks" else None
                rows = reader.execute(f"SELECT {names} FROM {table}")
                with writer.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        if body is not None and isinstance(row[body], str):
                            row = (*row[:body], row[body].encode(), *row[body + 1 :])
                        copy.write_row(row)
                counts[table] = reader.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                copied = writer.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                if copied != counts[table]:
                    raise StorageError(f"{table}: {copied} rows arrived of {counts[table]}; nothing copied")
            sequence = reader.execute("SELECT seq FROM sqlite_sequence WHERE name = 'webhooks'").fetchone()
            largest = max(
                sequence[0] if sequence else 0,
                reader.execute("SELECT COALESCE(MAX(id), 0) FROM webhooks").fetchone()[0],
                reader.execute("SELECT COALESCE(MAX(seq), 0) FROM deliveries").fetchone()[0],
            )
            if largest:
                writer.execute("SELECT setval('webhook_ids', %s)", (largest,))
            writer.execute(
                "SELECT setval(pg_get_serial_sequence('attempts', 'id'), MAX(id)) FROM attempts HAVING COUNT(*) > 0"
            )
    except (sqlite3.Error, psycopg.Error) as e:
        raise StorageError(f"copy failed, nothing copied: {e}") from None
    finally:
        reader.close()
    return counts
