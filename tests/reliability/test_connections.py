"""Idle connections and slowloris clients against the daemon: cut off by the
idle and receive time-outs, while valid webhooks keep being answered quickly
and memory stays bounded."""

from __future__ import annotations

import resource
import socket
import threading
import time

from tests.reliability.clients import drain, post

IDLE = 1000
SLOW = 50


def open_sockets(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for n in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        sockets.append(s)
        if n % 25 == 24:
            # Stay within twistd's default listen backlog of 50: a dropped SYN
            # is retried only after a second.
            time.sleep(0.01)
    return sockets


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_idle_and_slowloris_clients_are_cut_off_while_webhooks_flow(daemon):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * IDLE:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * IDLE), hard))
    d = daemon(extra_args=["--receive-timeout", "5", "--idle-timeout", "3"])
    assert post(d.port, "open", {"warm": "up"})[0] == 200
    rss_before = d.memory_kib("VmRSS")

    idle = open_sockets(d.port, IDLE)
    slow = open_sockets(d.port, SLOW)
    stop = threading.Event()

    def trickle():
        # One byte of a request line each 0.5 s: never idle, never complete.
        n = 0
        while not stop.wait(0.5) and n < 120:
            n += 1
            for s in slow:
                try:
                    s.send(b"G" if n == 1 else b"x")
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    latencies = []
    try:
        deadline = time.monotonic() + 8
        n = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            status, _, _ = post(d.port, "open", {"n": n})
            latencies.append(time.monotonic() - started)
            assert status == 200
            n += 1
            time.sleep(0.02)
        peak = d.memory_kib("VmRSS")
        # Idle ones go after 3 s, trickling ones after 5 s; allow for a loaded machine.
        cut = time.monotonic() + 20
        while time.monotonic() < cut and not all(closed_by_server(s) for s in idle + slow):
            time.sleep(0.2)
        assert all(closed_by_server(s) for s in idle), sum(not closed_by_server(s) for s in idle)
        assert all(closed_by_server(s) for s in slow), sum(not closed_by_server(s) for s in slow)
    finally:
        stop.set()
        trickler.join(5)
        for s in idle + slow:
            s.close()

    latencies.sort()
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    assert len(latencies) >= 20 and p95 < 1.0, (len(latencies), p95)
    # A thousand connections cost some kilobytes each, not megabytes.
    assert peak - rss_before < 100 * 1024, (rss_before, peak)
    assert d.proc.poll() is None
    assert len(drain(d.port, "open")) == n + 1
