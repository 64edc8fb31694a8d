"""SQLite storage on adbapi's thread pool, with one connection and group commit.

One connection (``cp_min = cp_max = 1``) makes every transaction serial, so a
claim can never hand the same row to two readers.  Inserts that arrive while a
transaction runs wait in a queue and are written together in the next one:
one commit, one fsync per batch, and each caller's Deferred fires only after
the commit that holds its row.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kwp.storage import (
    DEAD,
    DUPLICATE,
    PENDING,
    QUEUE_FULL,
    ChannelState,
    ForwardItem,
    IStorage,
    NewWebhook,
    StorageError,
    StorageUnavailable,
    StoredWebhook,
)

log = Logger()


def sqlite_path(url: str) -> str:
    if url.startswith("sqlite://"):
        url = url[len("sqlite://") :]
        # sqlite:///abs/path keeps its leading slash; sqlite://rel/path does not.
    return url or ":memory:"


def _v1(cursor) -> None:
    cursor.execute(
        """CREATE TABLE webhooks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            channel TEXT NOT NULL,
            headers TEXT NOT NULL,
            body BLOB NOT NULL,
            received_at REAL NOT NULL,
            delivery_id TEXT,
            claim TEXT,
            lease_until REAL,
            deliveries INTEGER NOT NULL DEFAULT 0
        )"""
    )
    cursor.execute("CREATE INDEX webhooks_channel ON webhooks (channel, id)")
    cursor.execute("CREATE INDEX webhooks_claim ON webhooks (claim) WHERE claim IS NOT NULL")
    cursor.execute(
        """CREATE TABLE seen_deliveries (
            channel TEXT NOT NULL,
            delivery_id TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (channel, delivery_id)
        )"""
    )


def _v2(cursor) -> None:
    """Push delivery: the state of each webhook's attempts, and per channel
    the pause switch and the last outcomes."""
    for column in (
        "forward_attempts INTEGER NOT NULL DEFAULT 0",
        "last_attempt_at REAL",
        "last_error TEXT",
        "next_attempt_at REAL",
        "state TEXT NOT NULL DEFAULT 'pending'",
    ):
        cursor.execute(f"ALTER TABLE webhooks ADD COLUMN {column}")
    cursor.execute("CREATE INDEX webhooks_forward ON webhooks (channel, state, id)")
    cursor.execute(
        """CREATE TABLE channel_state (
            channel TEXT PRIMARY KEY,
            paused INTEGER NOT NULL DEFAULT 0,
            last_success_at REAL,
            last_error_at REAL,
            last_error_message TEXT
        )"""
    )


def _v3(cursor) -> None:
    """A claim first gives expired leases back, then reads only rows nobody
    holds: both through partial indexes, so the rows a long drain or a lease
    holds cost nothing to skip."""
    cursor.execute("CREATE INDEX webhooks_unclaimed ON webhooks (channel, id) WHERE claim IS NULL")
    cursor.execute(
        "CREATE INDEX webhooks_leased ON webhooks (channel, lease_until) WHERE lease_until IS NOT NULL"
    )


# Migrations, oldest first; PRAGMA user_version counts how many have run.
MIGRATIONS = [_v1, _v2, _v3]


def _configure(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA busy_timeout = 5000")
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() not in ("wal", "memory"):
        raise StorageError(f"cannot switch the database to WAL mode (got {mode})")
    connection.execute("PRAGMA synchronous = FULL")
    _migrate(connection)


def _migrate(connection: sqlite3.Connection) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StorageError(
            f"the database has schema version {version}, newer than this kwp knows ({len(MIGRATIONS)})"
        )
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        with connection:
            cursor = connection.cursor()
            migration(cursor)
            cursor.execute(f"PRAGMA user_version = {number}")


# A multi-row INSERT takes 5 parameters a row; 150 rows stay under 999, the
# smallest limit of parameters per statement that SQLite has shipped with.
_ROWS_PER_INSERT = 150
# How long the first webhook of a batch waits for others.  Each transaction
# hands the GIL between the reactor thread and the writer thread a dozen
# times, which under load costs the reactor thread far more than the insert
# itself; a short window makes batches larger and those hand-overs rarer.
COMMIT_WINDOW = 0.002
_INSERT = "INSERT INTO webhooks (channel, headers, body, received_at, delivery_id) VALUES "
_ROW = "(?, ?, ?, ?, ?)"


def _values(w: NewWebhook) -> tuple:
    return w.channel, w.headers_json, w.body, w.received_at, w.delivery_id


def _insert_rows(txn, rows: list[NewWebhook]) -> list[int]:
    """Insert rows and return their ids, in order, with a few statements.

    Each statement releases the GIL while SQLite runs and takes it back from
    the reactor's thread afterwards; under load that hand-over costs more
    than the insert itself, so a batch is written by one INSERT per 150
    rows, not by one per row."""
    txn.execute("SELECT COALESCE(MAX(id), 0) FROM webhooks")
    largest = txn.fetchone()[0]
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        txn.execute(_INSERT + ", ".join([_ROW] * len(chunk)), [v for w in chunk for v in _values(w)])
    # AUTOINCREMENT gives each new row a larger id than any row before it:
    # the ids above the old largest are the new rows, in the order inserted.
    txn.execute("SELECT group_concat(id) FROM webhooks WHERE id > ?", (largest,))
    return sorted(int(i) for i in txn.fetchone()[0].split(","))


def _insert_batch(txn, batch: list[NewWebhook]) -> list:
    """The new id, DUPLICATE or QUEUE_FULL of each webhook of batch, in order.

    Webhooks without a delivery id or a queue limit wait in ``plain`` and are
    inserted together; one with either is decided after those before it are
    in, so that its checks see them."""
    results: list = [None] * len(batch)
    plain: list[int] = []

    def insert_plain() -> None:
        for index, new_id in zip(plain, _insert_rows(txn, [batch[i] for i in plain])):
            results[index] = new_id
        plain.clear()

    for index, w in enumerate(batch):
        if w.delivery_id is None and w.max_queue is None:
            plain.append(index)
            continue
        if plain:
            insert_plain()
        if w.delivery_id is not None:
            txn.execute(
                "DELETE FROM seen_deliveries WHERE channel = ? AND delivery_id = ? AND seen_at < ?",
                (w.channel, w.delivery_id, w.received_at - w.dedup_window),
            )
            txn.execute(
                "INSERT OR IGNORE INTO seen_deliveries (channel, delivery_id, seen_at) VALUES (?, ?, ?)",
                (w.channel, w.delivery_id, w.received_at),
            )
            if txn.rowcount == 0:
                results[index] = DUPLICATE
                continue
        if w.max_queue is not None:
            txn.execute("SELECT COUNT(*) FROM webhooks WHERE channel = ?", (w.channel,))
            if txn.fetchone()[0] >= w.max_queue:
                if w.delivery_id is not None:
                    txn.execute(
                        "DELETE FROM seen_deliveries WHERE channel = ? AND delivery_id = ?",
                        (w.channel, w.delivery_id),
                    )
                results[index] = QUEUE_FULL
                continue
        txn.execute(_INSERT + _ROW, _values(w))
        results[index] = txn.lastrowid
    if plain:
        insert_plain()
    return results


_COLUMNS = "id, headers, body, received_at, deliveries"


def _rows(txn) -> list[StoredWebhook]:
    return [StoredWebhook(i, h, bytes(b), r, d) for i, h, b, r, d in txn.fetchall()]


def _claim(txn, channel, claim_id, limit, now, lease_seconds) -> list[StoredWebhook]:
    txn.execute(
        "UPDATE webhooks SET claim = NULL, lease_until = NULL"
        " WHERE channel = ? AND lease_until IS NOT NULL AND lease_until <= ?",
        (channel, now),
    )
    txn.execute(f"SELECT {_COLUMNS} FROM webhooks WHERE channel = ? AND claim IS NULL ORDER BY id LIMIT ?", (channel, limit))
    rows = _rows(txn)
    if rows:
        lease_until = None if lease_seconds is None else now + lease_seconds
        txn.executemany(
            "UPDATE webhooks SET claim = ?, lease_until = ?, deliveries = deliveries + 1 WHERE id = ?",
            [(claim_id, lease_until, row.id) for row in rows],
        )
    return [replace(r, deliveries=r.deliveries + 1) for r in rows]


def _finish_claim(txn, claim_id) -> None:
    txn.execute("DELETE FROM webhooks WHERE claim = ?", (claim_id,))


def _release_claim(txn, claim_id) -> None:
    txn.execute(
        "UPDATE webhooks SET claim = NULL, lease_until = NULL, deliveries = deliveries - 1 WHERE claim = ?",
        (claim_id,),
    )


def _release_orphans(txn) -> None:
    """Unleased claims belong to pulls that a stopped process never finished."""
    txn.execute(
        "UPDATE webhooks SET claim = NULL, deliveries = deliveries - 1 WHERE claim IS NOT NULL AND lease_until IS NULL"
    )


def _ack(txn, channel, ids) -> int:
    txn.executemany(
        "DELETE FROM webhooks WHERE channel = ? AND id = ? AND deliveries > 0", [(channel, i) for i in ids]
    )
    return txn.rowcount


def _page(txn, columns: str, channel, limit, after) -> None:
    txn.execute(
        f"SELECT {columns} FROM webhooks WHERE channel = ? AND id > ? ORDER BY id LIMIT ?", (channel, after, limit)
    )


def _list(txn, channel, limit, after) -> list[StoredWebhook]:
    _page(txn, _COLUMNS, channel, limit, after)
    return _rows(txn)


def _delete(txn, channel, webhook_id) -> bool:
    txn.execute("DELETE FROM webhooks WHERE channel = ? AND id = ?", (channel, webhook_id))
    return txn.rowcount > 0


_FORWARD_COLUMNS = (
    "id, headers, body, received_at, forward_attempts, last_attempt_at, last_error, next_attempt_at, state"
)


def _forward_rows(txn) -> list[ForwardItem]:
    return [ForwardItem(i, h, bytes(b), *rest) for i, h, b, *rest in txn.fetchall()]


def _forward_window(txn, channel, limit, now) -> list[ForwardItem]:
    # Rows still under a pull's lease (a channel that pulled before it got a
    # forward block) wait for the lease to end.
    txn.execute(
        f"SELECT {_FORWARD_COLUMNS} FROM webhooks WHERE channel = ?"
        " AND (claim IS NULL OR (lease_until IS NOT NULL AND lease_until <= ?))"
        " AND state = ? ORDER BY id LIMIT ?",
        (channel, now, PENDING, limit),
    )
    return _forward_rows(txn)


def _forward_get(txn, channel, webhook_id) -> ForwardItem | None:
    txn.execute(f"SELECT {_FORWARD_COLUMNS} FROM webhooks WHERE channel = ? AND id = ?", (channel, webhook_id))
    rows = _forward_rows(txn)
    return rows[0] if rows else None


def _note(txn, channel, **values) -> None:
    names = ", ".join(values)
    updates = ", ".join(f"{name} = excluded.{name}" for name in values)
    txn.execute(
        f"INSERT INTO channel_state (channel, {names}) VALUES (?{', ?' * len(values)}) "
        f"ON CONFLICT (channel) DO UPDATE SET {updates}",
        (channel, *values.values()),
    )


def _forward_succeeded(txn, channel, webhook_id, now) -> None:
    _delete(txn, channel, webhook_id)
    _note(txn, channel, last_success_at=now)


def _forward_failed(txn, channel, webhook_id, now, error, next_attempt_at, state) -> None:
    txn.execute(
        """UPDATE webhooks SET forward_attempts = forward_attempts + 1, last_attempt_at = ?,
           last_error = ?, next_attempt_at = ?, state = ? WHERE channel = ? AND id = ?""",
        (now, error, next_attempt_at, state, channel, webhook_id),
    )
    _note(txn, channel, last_error_at=now, last_error_message=error)


def _channel_state(txn, channel) -> ChannelState:
    txn.execute(
        "SELECT paused, last_success_at, last_error_at, last_error_message FROM channel_state WHERE channel = ?",
        (channel,),
    )
    row = txn.fetchone()
    if row is None:
        return ChannelState()
    return ChannelState(bool(row[0]), *row[1:])


def _set_paused(txn, channel, paused) -> None:
    _note(txn, channel, paused=int(paused))


def _queue(txn, channel, limit, after) -> tuple[ChannelState, int, list[ForwardItem]]:
    state = _channel_state(txn, channel)
    txn.execute("SELECT COUNT(*) FROM webhooks WHERE channel = ?", (channel,))
    size = txn.fetchone()[0]
    _page(txn, _FORWARD_COLUMNS, channel, limit, after)
    return state, size, _forward_rows(txn)


def _clear(txn, channel) -> int:
    txn.execute("DELETE FROM webhooks WHERE channel = ?", (channel,))
    return txn.rowcount


def _queue_stats(txn) -> dict[str, tuple[int, float]]:
    # Counting walks the (channel, id) index only; ids grow with receive
    # time, so the oldest row of a channel is the one with its smallest id.
    txn.execute(
        "SELECT c.channel, c.n, w.received_at FROM"
        " (SELECT channel, COUNT(*) AS n, MIN(id) AS first FROM webhooks GROUP BY channel) AS c"
        " JOIN webhooks AS w ON w.id = c.first"
    )
    return {channel: (count, oldest) for channel, count, oldest in txn.fetchall()}


def _forward_stats(txn, channels) -> dict[str, tuple[int, float | None]]:
    # Both walk the (channel, state, id) index.
    stats = {}
    for channel in channels:
        txn.execute("SELECT COUNT(*) FROM webhooks WHERE channel = ? AND state = ?", (channel, DEAD))
        dead = txn.fetchone()[0]
        txn.execute(
            "SELECT received_at FROM webhooks WHERE channel = ? AND state = ? ORDER BY id LIMIT 1", (channel, PENDING)
        )
        row = txn.fetchone()
        stats[channel] = (dead, row[0] if row else None)
    return stats


# SQLite result codes that mean "cannot write now" rather than "broken".
_UNAVAILABLE_CODES = {13: "the disk is full", 8: "the database is read-only"}
_UNAVAILABLE_MESSAGES = {"database or disk is full": 13, "readonly database": 8}


def _unavailable(error: BaseException) -> StorageUnavailable | None:
    """StorageUnavailable for a full disk or a read-only database, else None."""
    if not isinstance(error, sqlite3.Error):
        return None
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        code = next((c for text, c in _UNAVAILABLE_MESSAGES.items() if text in str(error)), None)
    reason = _UNAVAILABLE_CODES.get(code & 0xFF) if code is not None else None
    return StorageUnavailable(reason) if reason else None


def _ping(txn) -> None:
    txn.execute("SELECT 1")


@implementer(IStorage)
class SQLiteStorage(Service):
    name = "storage"

    def __init__(self, path: str, reactor):
        self.path = path
        self._reactor = reactor
        self._pool: adbapi.ConnectionPool | None = None
        self._queue: list[tuple[NewWebhook, Deferred]] = []
        self._writing = False
        self._flush: IDelayedCall | None = None
        self._pending: set[Deferred] = set()

    def prepare(self) -> None:
        """Open the file once, synchronously, before the reactor runs: create
        parents, set up WAL and migrate.  Raises StorageError."""
        if self.path == ":memory:":
            return
        try:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            connection = sqlite3.connect(self.path)
            try:
                _configure(connection)
            finally:
                connection.close()
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot open database {self.path}: {e}") from None

    def startService(self) -> None:
        super().startService()
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_configure,
            cp_reactor=self._reactor,
        )
        self._pool.start()
        self._run(_release_orphans).addErrback(lambda f: log.failure("releasing unfinished pulls", f))

    def stopService(self) -> Deferred:
        """Close the pool once the transactions already asked for are done."""
        if self._flush is not None:
            self._flush.cancel()
            self._write_next()
        super().stopService()
        pool, self._pool = self._pool, None

        def close(_):
            if pool is not None:
                pool.close()

        return DeferredList(list(self._pending)).addCallback(close)

    def _run(self, txn_function, *args) -> Deferred:
        if self._pool is None or not self.running:
            return fail(StorageError("the storage service is not running"))
        d = self._pool.runInteraction(txn_function, *args)
        self._pending.add(d)

        def settled(result):
            self._pending.discard(d)
            return result

        return d.addBoth(settled)

    def insert(self, webhook: NewWebhook) -> Deferred:
        d = Deferred()
        self._queue.append((webhook, d))
        self._schedule()
        return d

    def _schedule(self) -> None:
        """Write the queue COMMIT_WINDOW from now, unless a write is under way
        or planned already: the end of the running batch plans the next."""
        if not self._writing and self._flush is None:
            self._flush = self._reactor.callLater(COMMIT_WINDOW, self._write_next)

    def _write_next(self) -> None:
        self._flush = None
        batch, self._queue = self._queue, []
        self._writing = True
        done = self._run(_insert_batch, [w for w, _ in batch])

        def committed(results):
            for (_, d), result in zip(batch, results):
                d.callback(result)

        def failed(failure):
            unavailable = _unavailable(failure.value)
            if unavailable is not None:
                log.warn("cannot store webhooks: {reason}", reason=unavailable)
                unavailable.__cause__ = failure.value
                failure = Failure(unavailable)
            for _, d in batch:
                d.errback(failure)

        def next_batch(outcome):
            self._writing = False
            if self._queue:
                self._schedule()
            return outcome

        done.addBoth(next_batch).addCallbacks(committed, failed)

    def claim(self, channel, claim_id, limit, now, lease_seconds=None) -> Deferred:
        return self._run(_claim, channel, claim_id, limit, now, lease_seconds)

    def finish_claim(self, claim_id) -> Deferred:
        return self._run(_finish_claim, claim_id)

    def release_claim(self, claim_id) -> Deferred:
        return self._run(_release_claim, claim_id)

    def ack(self, channel, ids) -> Deferred:
        return self._run(_ack, channel, ids)

    def list(self, channel, limit, after=0) -> Deferred:
        return self._run(_list, channel, limit, after)

    def delete(self, channel, webhook_id) -> Deferred:
        return self._run(_delete, channel, webhook_id)

    def forward_window(self, channel, limit, now) -> Deferred:
        return self._run(_forward_window, channel, limit, now)

    def forward_get(self, channel, webhook_id) -> Deferred:
        return self._run(_forward_get, channel, webhook_id)

    def forward_succeeded(self, channel, webhook_id, now) -> Deferred:
        return self._run(_forward_succeeded, channel, webhook_id, now)

    def forward_failed(self, channel, webhook_id, now, error, next_attempt_at, state) -> Deferred:
        return self._run(_forward_failed, channel, webhook_id, now, error, next_attempt_at, state)

    def channel_state(self, channel) -> Deferred:
        return self._run(_channel_state, channel)

    def set_paused(self, channel, paused) -> Deferred:
        return self._run(_set_paused, channel, paused)

    def queue(self, channel, limit, after=0) -> Deferred:
        return self._run(_queue, channel, limit, after)

    def clear(self, channel) -> Deferred:
        return self._run(_clear, channel)

    def queue_stats(self) -> Deferred:
        return self._run(_queue_stats)

    def forward_stats(self, channels) -> Deferred:
        return self._run(_forward_stats, list(channels))

    def ping(self) -> Deferred:
        return self._run(_ping)
