"""Everything the benchmark knows of kwp's database, in one place: filling
a database with pending webhooks, and counting what it holds.  When kwp's
storage changes, this is the file to adapt.

A database is filled through kwp's own storage code (the batch writer its
group commit runs, on a plain connection, in one transaction), so the rows
are what kwp itself would write; the counts are plain queries.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

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
