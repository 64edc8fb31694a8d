"""The benchmark still runs: its quick mode, with tiny counts and 1-second
wrk runs.  The figures are not judged here; its own honesty checks are."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed: apt-get install wrk (make bench does)")
def test_quick_benchmark_runs_and_checks_itself():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for section in ("== durable receive", "== drain", "== long-poll wake", "== forward", "== receive while scraped"):
        assert section in out
    assert "kwp/baseline" in out and "honesty kwp: " in out and "MISMATCH" not in out
    assert "PASS  honesty" in out
