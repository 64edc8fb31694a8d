"""Drain a backlog of N webhooks (default 100,000 of about 1 KiB) from a real
`twistd -n kwp` in one GET and report the time and the daemon's memory.

    .venv/bin/python bench/drain.py [N] [payload-bytes]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.drain import drain, fill, start_daemon  # noqa: E402


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        db_path = workdir / "kwp.db"
        started = time.monotonic()
        fill(db_path, count, size)
        print(f"filled {count} webhooks of ~{size} B in {time.monotonic() - started:.1f}s")
        daemon = start_daemon(workdir, db_path)
        try:
            result = drain(daemon, stall=2.0, timeout=600)
        finally:
            daemon.stop()
        assert sorted(result.ns) == list(range(count)), "not every webhook arrived exactly once"
        print(
            f"drained {len(result.ns)} webhooks ({result.body_bytes / 2**20:.0f} MiB) in {result.seconds:.1f}s "
            f"(including a 2 s stall); daemon RSS before {result.rss_before_kib / 1024:.0f} MiB, "
            f"peak {result.peak_kib / 1024:.0f} MiB, growth {result.growth_mib:.1f} MiB"
        )


if __name__ == "__main__":
    main()
