"""A large backlog written straight into the database, a real daemon, and a
streaming drain that reads the whole JSON array while watching the daemon's
memory.  Used by tests/test_drain.py."""

from __future__ import annotations

import http.client
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from kwp.storage import NewWebhook
from kwp.storage.queries import insert_batch
from kwp.storage.sqlite import SQLiteStorage
from tests.support import Daemon

CHANNEL = "bulk"
TOKEN = "bulk-token"
CONFIG = {"channels": [{"name": CHANNEL, "token": TOKEN}]}


def fill(db_path: Path, count: int, payload_size: int) -> None:
    """count webhooks of about payload_size bytes each, ids 1..count, written
    by the storage's own batch insert."""
    SQLiteStorage(str(db_path), None).prepare()
    padding = "x" * payload_size
    connection = sqlite3.connect(db_path)
    with connection:
        for start in range(0, count, 10_000):
            batch = [
                NewWebhook(CHANNEL, '{"content-type":"application/json"}', b'{"n":%d,"pad":"%s"}' % (n, padding.encode()), 1.0e9)
                for n in range(start, min(count, start + 10_000))
            ]
            insert_batch(connection.cursor(), SQLiteStorage.dialect, batch)
    connection.close()


@dataclass
class Drained:
    seconds: float
    ns: list[int]
    rss_before_kib: int
    peak_kib: int
    body_bytes: int

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.rss_before_kib) / 1024


def drain(daemon: Daemon, stall: float, timeout: float) -> Drained:
    """GET the whole backlog in one response.  The client reads nothing for
    `stall` seconds first, so a server that ignores backpressure would have
    buffered the backlog in memory by then."""
    before = daemon.memory_kib("VmRSS")
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=timeout)
    connection.request("GET", f"/api/webhook/{CHANNEL}", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    assert response.status == 200, response.status
    time.sleep(stall)
    chunks = []
    deadline = started + timeout
    while time.monotonic() < deadline:
        chunk = response.read(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    else:
        raise TimeoutError(f"drain not finished within {timeout}s")
    seconds = time.monotonic() - started
    connection.close()
    peak = daemon.memory_kib("VmHWM")
    body = b"".join(chunks)
    items = json.loads(body)
    return Drained(seconds, [item["payload"]["n"] for item in items], before, peak, len(body))
