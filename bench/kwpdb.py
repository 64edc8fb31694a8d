"""Everything the benchmark knows of kwp's database, in one place: filling
a database with pending webhooks, and counting what it holds.  When kwp's
storage changes, this is the file to adapt.

A database is filled through kwp's own storage code (the batch writer its
group commit runs, on a plain connection, in one transaction), so the rows
are what kwp itself would write; the counts are plain queries.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from kwp.storage import NewWebhook, open_storage
from kwp.storage.queries import insert_batch
from kwp.storage.sqlite import SQLiteStorage

BATCH = 10_000


def fill(path: Path, channel: str, headers_json: str, bodies: Iterable[bytes]) -> None:
    """Create the database at path (kwp's schema) holding one pending
    webhook of channel per body, in order."""
    open_storage(str(path), reactor=None)
    connection = sqlite3.connect(path)
    try:
        now = time.time()
        batch: list[NewWebhook] = []
        with connection:
            cursor = connection.cursor()
            for body in bodies:
                batch.append(NewWebhook(channel, headers_json, body, now))
                if len(batch) == BATCH:
                    insert_batch(cursor, SQLiteStorage.dialect, batch)
                    batch = []
            if batch:
                insert_batch(cursor, SQLiteStorage.dialect, batch)
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()


def _count(path: Path, query: str, *args) -> int:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(query, args).fetchone()[0]
    finally:
        connection.close()


def stored(path: Path) -> int:
    """The webhooks the database holds, pending or in the history."""
    return _count(path, "SELECT COUNT(*) FROM webhooks")


def deliveries(path: Path) -> int:
    """The deliveries the database holds: a webhook has one per consumer
    that took it."""
    return _count(path, "SELECT COUNT(*) FROM deliveries")


def pending(path: Path, channel: str) -> int:
    """The webhooks of channel not yet delivered (to any consumer)."""
    return _count(
        path, "SELECT COUNT(*) FROM deliveries WHERE channel = ? AND state IN ('pending', 'dead')", channel
    )


# --- PostgreSQL ------------------------------------------------------------------


class PostgresDatabases:
    """Databases of the benchmark on the PostgreSQL server at admin_url,
    each created empty (kwp migrates it at start) and dropped at the end."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.prefix = f"kwp_bench_{os.getpid()}_"
        self._count = 0

    def _admin(self):
        import psycopg

        return psycopg.connect(self.admin_url, autocommit=True)

    def reachable(self) -> str | None:
        """None when the server answers, else why not."""
        try:
            with self._admin():
                return None
        except Exception as e:
            return str(e).strip().splitlines()[0]

    def create(self) -> str:
        self._count += 1
        name = f"{self.prefix}{self._count}"
        with self._admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return urlsplit(self.admin_url)._replace(path="/" + name, query="").geturl()

    def drop_all(self) -> None:
        with self._admin() as admin:
            names = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (self.prefix + "%",))
            for (name,) in list(names):
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_count(url: str, query: str, *args) -> int:
    import psycopg

    with psycopg.connect(url) as connection:
        return connection.execute(query, args).fetchone()[0]


def pg_stored(url: str) -> int:
    return pg_count(url, "SELECT COUNT(*) FROM webhooks")


def pg_open(url: str, channel: str) -> int:
    """The deliveries of channel still pending or dead."""
    return pg_count(url, "SELECT COUNT(*) FROM deliveries WHERE channel = %s AND state IN ('pending', 'dead')", channel)


def pg_fill(url: str, work: Path, channel: str, headers_json: str, bodies: Iterable[bytes]) -> None:
    """Fill the empty PostgreSQL database at url as fill() does a SQLite
    one, through ``kwp copy``'s code."""
    from kwp.storage.postgres import copy_from_sqlite

    source = work / "pg-fill.db"
    fill(source, channel, headers_json, bodies)
    try:
        copy_from_sqlite(str(source), url)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{source}{suffix}").unlink(missing_ok=True)


def pg_activity(url: str) -> tuple[int, int]:
    """The transactions committed in the database at url, and the rows
    updated in its deliveries table, so far (PostgreSQL's statistics)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        commits = connection.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()[0]
        updated = connection.execute(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'deliveries'"
        ).fetchone()[0]
    return commits, updated
