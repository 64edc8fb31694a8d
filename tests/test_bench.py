"""The benchmark still runs and checks itself: its quick mode (tiny counts,
1-second wrk runs) with the peers that need no download, and the pieces
whose own checks the figures rely on.  The figures are not judged here.

The FastAPI and Express peers need their environments, which ``make bench``
installs (bench/.venv-fastapi, bench/express/node_modules): their test is
skipped where those are missing, and the quick run here leaves them out."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys

import pytest

from kwp.pull import encode
from kwp.storage import StoredWebhook
from tests.support import ROOT, free_port

sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed: apt-get install wrk (make bench does)")
def test_quick_benchmark_runs_and_checks_itself():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--peers", "klein,twisted"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for section in (
        "== durable receive", "== drain", "== push", "== long-poll wake", "== forward", "== receive while scraped",
        "== PostgreSQL",
    ):
        assert section in out
    assert "kwp/klein" in out and "kwp/twisted" in out and "kwp/memory" in out
    assert "honesty kwp: " in out and "honesty kwp-pending: " in out and "MISMATCH" not in out
    assert re.search(r"concurrency 1: .* 0 repeated, in order\), left pending 0 -> OK", out)
    assert re.search(r"concurrency 8: .* 0 repeated, .*left pending 0 -> OK", out)
    assert "honesty kwp on postgresql: " in out and "honesty kwp on sqlite: " in out
    assert re.search(r"1,000 webhooks claimed and acked .*\n  honesty: 1000 distinct of 1000 taken, 1000 acked, 0 left open -> OK", out)
    assert re.search(r"of 1500 POSTs answered 2xx .* -> OK\); [1-9]\d* notifications heard", out)
    assert "PASS  honesty" in out


def deliver(port: int, numbers: list[int]) -> dict:
    """POSTs to the push target on one keep-alive connection; its summary."""
    target = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "push_target.py"), str(port), str(len(set(numbers))), "10"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        bench.wait_listening(port, target, "push target", lambda: "")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for number in numbers:
            connection.request("POST", "/hook", body=json.dumps({"number": number}))
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b""
        connection.close()
        out, _ = target.communicate(timeout=10)
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
    return json.loads(out)


def test_push_target_counts_deliveries_in_order():
    tally = deliver(free_port(), [0, 1, 2])
    assert (tally["deliveries"], tally["distinct"], tally["repeated"], tally["in_order"]) == (3, 3, 0, True)
    assert tally["last_at"] >= tally["first_at"]


def test_push_target_sees_repeats_and_disorder():
    tally = deliver(free_port(), [0, 2, 2, 1])
    assert (tally["deliveries"], tally["distinct"], tally["repeated"], tally["in_order"]) == (4, 3, 1, False)


@pytest.mark.parametrize("count", [0, 3, 201])
def test_memory_drain_streams_the_array_kwp_streams(tmp_path, count):
    server = bench.MemoryDrain(tmp_path, count).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", f"/api/webhook/{bench.CHANNEL}")
        body = connection.getresponse().read()
        connection.close()
    finally:
        server.stop()
    received_at = int(re.search(rb'"received_at":(\d+)', body).group(1)) if count else 0
    items = [StoredWebhook(n, bench.STORED_HEADERS, bench.BODY, received_at) for n in range(1, count + 1)]
    assert body == b"[" + b",".join(encode(item, with_deliveries=False) for item in items) + b"]"


@pytest.mark.parametrize("peer", ["fastapi", "express"])
def test_durable_peer_answers_200_only_for_what_it_stored(tmp_path, peer):
    missing = bench.peer_missing(peer)
    if missing:
        pytest.skip(missing)
    server = {"fastapi": bench.FastAPI, "express": bench.Express}[peer](tmp_path, tmp_path / "peer.db").start()
    statuses = []
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for body in (bench.BODY, bench.BODY, b"{not json", bench.BODY):
            connection.request(
                "POST", f"/api/webhook/{bench.CHANNEL}", body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.close()
    finally:
        server.stop()
    assert statuses == [200, 200, 422, 200]
    assert server.stored() == 3
