"""SQLite storage on adbapi's thread pool, with one connection.

One connection (``cp_min = cp_max = 1``) makes every transaction serial, so a
claim can never hand the same delivery to two readers.  WAL and
``synchronous = FULL``: a commit is on disk before its webhooks are answered.
The schema is versioned with ``PRAGMA user_version``; MIGRATIONS upgrade a
database one version at a time, each in its own transaction.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from typing import Sequence

from twisted.enterprise import adbapi

from kwp.storage import StorageError, StorageUnavailable
from kwp.storage.queries import Dialect
from kwp.storage.service import AdbapiStorage


def _as_is(value):
    return value


# sqlite3 binds an int, float or str parameter as it is, but looks up an
# adapter for any other, and a lookup that finds none raises and clears two
# formatted AttributeErrors (no __adapt__, no __conform__): for the body
# (bytes) and each NULL of every row written, a sixth of the writer
# thread's instructions on the receive path.  An adapter registered for
# them is found at once and gives the value back unchanged.
sqlite3.register_adapter(bytes, bytes)
sqlite3.register_adapter(type(None), _as_is)


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


def _v4(cursor) -> None:
    """Figures that cost no walk over the table: the number of webhooks of
    each channel, kept by triggers (so every way a row comes or goes counts,
    whoever writes), for the metrics; and an index on the age of delivery
    ids, so that pruning them reads only the rows it deletes."""
    cursor.execute("CREATE TABLE queue_sizes (channel TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID")
    cursor.execute(
        """CREATE TRIGGER webhooks_size_up AFTER INSERT ON webhooks BEGIN
            INSERT INTO queue_sizes (channel, size) VALUES (new.channel, 1)
            ON CONFLICT (channel) DO UPDATE SET size = size + 1;
        END"""
    )
    cursor.execute(
        """CREATE TRIGGER webhooks_size_down AFTER DELETE ON webhooks BEGIN
            UPDATE queue_sizes SET size = size - 1 WHERE channel = old.channel;
        END"""
    )
    cursor.execute("INSERT INTO queue_sizes (channel, size) SELECT channel, COUNT(*) FROM webhooks GROUP BY channel")
    cursor.execute("CREATE INDEX seen_deliveries_age ON seen_deliveries (channel, seen_at)")


def _v5(cursor) -> None:
    """Consumers and history: a webhook's body is stored once, and each
    consumer it is routed to has a delivery of it with its own queue
    position, claim, lease, attempts and state.  Every webhook of an older
    database becomes a delivery to the channel's implicit consumer
    ``default``, keeping its claim, lease, attempts and dead state; the
    channel's pause and last outcomes become that consumer's.  A push
    consumer also has a forwarding lease (owner, expiry, and a fencing token
    that each new owner increments)."""
    cursor.execute(
        """CREATE TABLE deliveries (
            webhook_id INTEGER NOT NULL,
            channel TEXT NOT NULL,
            consumer TEXT NOT NULL,
            seq INTEGER NOT NULL,
            queued_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            claim TEXT,
            lease_until REAL,
            handouts INTEGER NOT NULL DEFAULT 0,
            taken_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_attempt_at REAL,
            last_status INTEGER,
            last_error TEXT,
            next_attempt_at REAL,
            closed_at REAL,
            PRIMARY KEY (webhook_id, consumer)
        )"""
    )
    cursor.execute(
        """INSERT INTO deliveries (webhook_id, channel, consumer, seq, queued_at, state, claim, lease_until,
               handouts, attempts, last_attempt_at, last_error, next_attempt_at)
           SELECT id, channel, 'default', id, received_at, state, claim, lease_until,
               deliveries, forward_attempts, last_attempt_at, last_error, next_attempt_at FROM webhooks"""
    )
    # Rebuilt without the columns that moved, keeping the id sequence.
    cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = 'webhooks'")
    sequence = cursor.fetchone()
    cursor.execute(
        """CREATE TABLE webhooks_v5 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            channel TEXT NOT NULL,
            headers TEXT NOT NULL,
            body BLOB NOT NULL,
            received_at REAL NOT NULL,
            delivery_id TEXT,
            done_at REAL
        )"""
    )
    cursor.execute(
        "INSERT INTO webhooks_v5 (id, channel, headers, body, received_at, delivery_id)"
        " SELECT id, channel, headers, body, received_at, delivery_id FROM webhooks"
    )
    # Its triggers (queue_sizes of schema 4) go with it.
    cursor.execute("DROP TABLE webhooks")
    cursor.execute("ALTER TABLE webhooks_v5 RENAME TO webhooks")
    if sequence is not None:
        cursor.execute("DELETE FROM sqlite_sequence WHERE name IN ('webhooks', 'webhooks_v5')")
        cursor.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('webhooks', ?)", sequence)
    cursor.execute("CREATE INDEX webhooks_channel ON webhooks (channel, id)")
    cursor.execute("CREATE INDEX webhooks_done ON webhooks (channel, done_at) WHERE done_at IS NOT NULL")
    # Claims and forward windows read the deliveries nobody holds; listings
    # and figures the open ones (state last, so counting by state needs no
    # table lookup); expired leases and finished claims are found directly.
    cursor.execute(
        "CREATE INDEX deliveries_ready ON deliveries (channel, consumer, seq)"
        " WHERE state = 'pending' AND claim IS NULL"
    )
    cursor.execute(
        "CREATE INDEX deliveries_open ON deliveries (channel, consumer, seq, state)"
        " WHERE state IN ('pending', 'dead')"
    )
    cursor.execute(
        "CREATE INDEX deliveries_leased ON deliveries (channel, consumer, lease_until) WHERE lease_until IS NOT NULL"
    )
    cursor.execute("CREATE INDEX deliveries_claim ON deliveries (claim) WHERE claim IS NOT NULL")
    cursor.execute(
        """CREATE TABLE attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            webhook_id INTEGER NOT NULL,
            consumer TEXT NOT NULL,
            at REAL NOT NULL,
            status_code INTEGER,
            error TEXT,
            duration_ms REAL,
            response_excerpt TEXT
        )"""
    )
    cursor.execute("CREATE INDEX attempts_delivery ON attempts (webhook_id, consumer, id)")
    cursor.execute(
        """CREATE TABLE consumers (
            channel TEXT NOT NULL,
            consumer TEXT NOT NULL,
            paused INTEGER NOT NULL DEFAULT 0,
            last_success_at REAL,
            last_error_at REAL,
            last_error_message TEXT,
            lease_owner TEXT,
            lease_token INTEGER NOT NULL DEFAULT 0,
            lease_until REAL,
            PRIMARY KEY (channel, consumer)
        )"""
    )
    cursor.execute(
        "INSERT INTO consumers (channel, consumer, paused, last_success_at, last_error_at, last_error_message)"
        " SELECT channel, 'default', paused, last_success_at, last_error_at, last_error_message FROM channel_state"
    )
    cursor.execute("DROP TABLE channel_state")
    # The figures of each queue, kept by triggers on every change of a
    # delivery's state: open counts pending and dead deliveries.
    cursor.execute("DROP TABLE queue_sizes")
    cursor.execute(
        """CREATE TABLE queue_sizes (
            channel TEXT NOT NULL,
            consumer TEXT NOT NULL,
            open INTEGER NOT NULL,
            dead INTEGER NOT NULL,
            PRIMARY KEY (channel, consumer)
        ) WITHOUT ROWID"""
    )
    add = """INSERT INTO queue_sizes (channel, consumer, open, dead) VALUES ({row}.channel, {row}.consumer, {open}, {dead})
             ON CONFLICT (channel, consumer) DO UPDATE SET open = open + excluded.open, dead = dead + excluded.dead"""
    is_open = "({row}.state IN ('pending', 'dead'))"
    is_dead = "({row}.state = 'dead')"
    cursor.execute(
        "CREATE TRIGGER deliveries_queued AFTER INSERT ON deliveries BEGIN "
        + add.format(row="new", open=is_open.format(row="new"), dead=is_dead.format(row="new"))
        + "; END"
    )
    cursor.execute(
        "CREATE TRIGGER deliveries_moved AFTER UPDATE OF state ON deliveries WHEN old.state != new.state BEGIN "
        + add.format(
            row="new",
            open=f"{is_open.format(row='new')} - {is_open.format(row='old')}",
            dead=f"{is_dead.format(row='new')} - {is_dead.format(row='old')}",
        )
        + "; END"
    )
    cursor.execute(
        "CREATE TRIGGER deliveries_gone AFTER DELETE ON deliveries BEGIN "
        + add.format(row="old", open=f"-{is_open.format(row='old')}", dead=f"-{is_dead.format(row='old')}")
        + "; END"
    )
    cursor.execute(
        "INSERT INTO queue_sizes (channel, consumer, open, dead) SELECT channel, consumer,"
        " SUM(state IN ('pending', 'dead')), SUM(state = 'dead') FROM deliveries GROUP BY channel, consumer"
    )


def _v6(cursor: sqlite3.Cursor) -> None:
    """New deliveries are counted into queue_sizes by the transaction that
    adds them (SQLiteDialect.add_deliveries), once per queue, instead of by
    a trigger once per row."""
    cursor.execute("DROP TRIGGER deliveries_queued")


# Migrations, oldest first; PRAGMA user_version counts how many have run.
MIGRATIONS = [_v1, _v2, _v3, _v4, _v5, _v6]


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


def _create_private(path: str) -> None:
    """Create the database file 0600, and the directories above it that are
    missing 0700, whatever the umask.  SQLite gives the -wal and -shm files
    it creates later the permissions of the database file.  What exists is
    left as it is."""
    missing = []
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        os.chmod(directory, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class SQLiteDialect(Dialect):
    def allocate_ids(self, txn, count: int) -> list[int]:
        # AUTOINCREMENT keeps the largest id ever used in sqlite_sequence and
        # gives a new row a larger one: taking numbers from it keeps ids and
        # queue positions unique and growing, across deletes and restarts.
        txn.execute("UPDATE sqlite_sequence SET seq = seq + ? WHERE name = 'webhooks' RETURNING seq", (count,))
        row = txn.fetchone()
        if row is None:
            txn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('webhooks', ?)", (count,))
            last = count
        else:
            last = row[0]
        return list(range(last - count + 1, last + 1))

    def add_deliveries(self, txn, rows: Sequence[tuple]) -> None:
        super().add_deliveries(txn, rows)
        queued = Counter((row[2], row[3]) for row in rows)
        if queued:
            txn.execute(
                "INSERT INTO queue_sizes (channel, consumer, open, dead) VALUES "
                + ", ".join(["(?, ?, ?, 0)"] * len(queued))
                + " ON CONFLICT (channel, consumer) DO UPDATE SET open = open + excluded.open",
                [v for (channel, consumer), n in queued.items() for v in (channel, consumer, n)],
            )


def _unsynced(connection, txn_function, *args):
    """txn_function in a transaction whose commit does not wait for the
    disk (WAL): a crash may undo it but nothing committed before it, and the
    next commit that waits for the disk takes it along."""
    connection.execute("PRAGMA synchronous = NORMAL")
    try:
        result = txn_function(connection.cursor(), *args)
        connection.commit()
        return result
    finally:
        connection.execute("PRAGMA synchronous = FULL")


# SQLite result codes that mean "cannot write now" rather than "broken".
_UNAVAILABLE_CODES = {13: "the disk is full", 8: "the database is read-only"}
_UNAVAILABLE_MESSAGES = {"database or disk is full": 13, "readonly database": 8}


class SQLiteStorage(AdbapiStorage):
    dialect = SQLiteDialect()

    def __init__(self, path: str, reactor):
        super().__init__(reactor)
        self.path = path

    def prepare(self) -> None:
        """Open the file once, synchronously, before the reactor runs: create
        parents, set up WAL and migrate.  Raises StorageError."""
        if self.path == ":memory:":
            return
        try:
            _create_private(self.path)
            connection = sqlite3.connect(self.path)
            try:
                _configure(connection)
            finally:
                connection.close()
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot open database {self.path}: {e}") from None

    def _connection_pool(self) -> adbapi.ConnectionPool:
        return adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_configure,
            cp_reactor=self._reactor,
        )

    def _run_unsynced(self, txn_function, *args):
        return self._run(_unsynced, txn_function, *args, with_connection=True)

    def _unavailable(self, error: BaseException) -> StorageUnavailable | None:
        if not isinstance(error, sqlite3.Error):
            return None
        code = getattr(error, "sqlite_errorcode", None)
        if code is None:
            code = next((c for text, c in _UNAVAILABLE_MESSAGES.items() if text in str(error)), None)
        reason = _UNAVAILABLE_CODES.get(code & 0xFF) if code is not None else None
        return StorageUnavailable(reason) if reason else None
