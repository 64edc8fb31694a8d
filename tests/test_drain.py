"""A GET without limit over a 100,000-webhook backlog (about 100 MiB) on the
real daemon: every webhook arrives exactly once and the daemon's memory stays
flat, even while the client reads nothing at first."""

from __future__ import annotations

import sqlite3

import pytest

from tests.drain import CONFIG, drain, fill
from tests.support import CLEAN_EXIT, daemon_in

COUNT = 100_000


@pytest.mark.timeout(120)
def test_a_100k_backlog_streams_in_flat_memory(tmp_path):
    db_path = tmp_path / "kwp.db"
    fill(db_path, COUNT, payload_size=1000)
    daemon = daemon_in(tmp_path, CONFIG)
    try:
        result = drain(daemon, stall=2.0, timeout=90)
        assert result.body_bytes > 100 * 2**20
        assert sorted(result.ns) == list(range(COUNT))
        assert result.growth_mib < 60, f"daemon memory grew by {result.growth_mib:.0f} MiB"
    finally:
        assert daemon.stop() in CLEAN_EXIT
    # Every webhook left the queue and stays in the history.
    connection = sqlite3.connect(db_path)
    assert connection.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall() == [
        ("delivered", COUNT)
    ]
    assert connection.execute("SELECT COUNT(*) FROM webhooks WHERE done_at IS NOT NULL").fetchone()[0] == COUNT
    connection.close()
