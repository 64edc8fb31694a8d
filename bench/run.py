"""kwp's benchmark: the real ``twistd -n kwp`` side by side with the servers
a user would otherwise run, under the same wrk load, interleaved round by
round.

    python bench/run.py            # the full run (make bench)
    python bench/run.py --quick    # tiny counts and 1-second wrk runs (smoke test)

The peers on durable receive: a bare Klein app (bench/baseline.py), a bare
twisted.web Resource that stores nothing (bench/bare.py, the floor for one
Twisted process), FastAPI on uvicorn committing each webhook to SQLite
(bench/fastapi_app.py, in bench/.venv-fastapi) and Express with
better-sqlite3 doing the same (bench/express/); ``make bench`` installs the
last two.  The drain is compared with an in-memory server
(bench/memory_drain.py); push throughput is measured against a local target
that answers at once (bench/push_target.py).

Every server listens on 127.0.0.1 with a temporary config and database, on
one CPU; wrk, the clients and the push target run on the other.  The
figures are ratios measured in the same round, so that the load of the
machine weighs on both sides alike; each round's ratio is printed and the
median is judged.  After every load round of a durable server its rows are
counted and compared with the 2xx answers wrk saw.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kwpdb

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
LUA = BENCH / "post.lua"
FASTAPI_PYTHON = BENCH / ".venv-fastapi" / "bin" / "python"
EXPRESS = BENCH / "express"
CHANNEL = "bench"
TOKEN = "bench-read-token"
BODY = (
    b'{"action":"opened","number":42,"repository":{"id":1296269,"full_name":"octo/hello"},'
    b'"sender":{"login":"octo"}}'
)
STORED_HEADERS = json.dumps(
    {"content-type": "application/json", "user-agent": "kwp-bench", "x-github-event": "pull_request"},
    separators=(",", ":"),
)
START_TIMEOUT = 30
STOP_TIMEOUT = 30
# Servers run on SERVER_CPU; wrk, the clients and the push target on LOAD_CPU.
SERVER_CPU, LOAD_CPU = 0, 1
PINNED = (os.cpu_count() or 1) >= 2

PEERS = ("klein", "twisted", "fastapi", "express")
# kwp's durable receive against each peer: the least ratio, and the target.
PEER_TARGETS = {
    "klein": (0.8, "durable receive >= 0.8x the bare Klein app"),
    "twisted": (0.9, "durable receive >= 0.9x the bare twisted.web Resource (stores nothing)"),
    "fastapi": (2.0, "durable receive >= 2.0x FastAPI + uvicorn + SQLite"),
    "express": (1.5, "durable receive >= 1.5x Express + better-sqlite3"),
}
TARGETS = {
    **{peer: text for peer, (_, text) in PEER_TARGETS.items()},
    "idle_rss": "idle RSS <= 1.3x the bare Klein app",
    "pending": "receive with 1M pending >= 0.9x empty",
    "fanout": "receive with 3 filtered consumers >= 0.8x one",
    "drain_ratio": "100k drain >= 0.5x the in-memory server",
    "drain_rss": "100k drain RSS growth < 60 MB",
    "drain_rate": "100k drain >= 20,000 webhooks/s",
    "push_1": "push in order (concurrency 1) >= 1,500 webhooks/s",
    "push_8": "push with concurrency 8 >= 3,000 webhooks/s",
    "longpoll": "long-poll wake p50 < 20 ms",
    "forward": "forward p50 < 50 ms",
    "scrape": "receive p99 with 4 scrapers and 400k pending <= 2x unscraped",
    "pg_receive": "receive on PostgreSQL >= 0.8x receive on SQLite (same wrk load)",
    "pg_wake": "long-poll wake across two nodes on PostgreSQL p50 <= 10 ms, p99 <= 50 ms",
    "pg_claim": "claim + ack across two nodes on PostgreSQL >= 1,000 webhooks/s with >= 10 per statement",
    "pg_notify": "at 1,500 receives/s on PostgreSQL, at most 50 NOTIFY-bearing commits per second",
}
# The PostgreSQL server of the postgres section; it creates and drops
# databases of its own there.
POSTGRES_URL = os.environ.get("KWP_BENCH_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/test")
PACED_RATE = 1500
PACED_CLIENTS = 128
SCRAPERS = 4
PUSH_TARGETS = {1: ("push_1", 1500), 8: ("push_8", 3000)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if PINNED else command


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def load() -> str:
    """The 1, 5 and 15-minute load averages."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def median(values):
    return statistics.median(values) if values else float("nan")


def percentile(values, p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def wait_listening(port: int, proc: subprocess.Popen, name: str, describe) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{describe()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen within {START_TIMEOUT}s")


class Server:
    """A server process on 127.0.0.1:port, pinned to SERVER_CPU, its output
    in a log file.  A durable server has a database whose rows stored()
    counts; the others store nothing (stored() is None)."""

    name = "server"
    db: Path | None = None

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{self.name}-{self.port}.log"

    def args(self) -> list[str]:
        raise NotImplementedError

    def stored(self) -> int | None:
        return None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> "Server":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                pinned(SERVER_CPU, self.args()), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_listening(self.port, self.proc, self.name, self.log_path.read_text)
        except RuntimeError:
            self.stop()
            raise
        return self

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS")

    def cpu_seconds(self) -> float:
        """User and system CPU time of the process, all its threads."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_kb(self) -> int:
        return proc_status_kb(self.pid, "VmHWM")

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
            raise RuntimeError(f"{self.name} did not stop within {STOP_TIMEOUT}s") from None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class Klein(Server):
    name = "klein"

    def args(self) -> list[str]:
        return [sys.executable, str(BENCH / "baseline.py"), str(self.port)]


class BareTwisted(Server):
    name = "twisted"

    def args(self) -> list[str]:
        return [sys.executable, str(BENCH / "bare.py"), str(self.port)]


class DurablePeer(Server):
    """A peer that commits one row per POST to its own SQLite table."""

    def __init__(self, workdir: Path, db: Path):
        super().__init__(workdir)
        self.db = db

    def stored(self) -> int:
        connection = sqlite3.connect(self.db)
        try:
            return connection.execute("SELECT COUNT(*) FROM webhooks").fetchone()[0]
        finally:
            connection.close()


class FastAPI(DurablePeer):
    name = "fastapi"

    def args(self) -> list[str]:
        return [str(FASTAPI_PYTHON), str(BENCH / "fastapi_app.py"), str(self.port), str(self.db)]


class Express(DurablePeer):
    name = "express"

    def args(self) -> list[str]:
        return ["node", str(EXPRESS / "server.js"), str(self.port), str(self.db)]


class Kwp(Server):
    name = "kwp"

    def __init__(self, workdir: Path, config: Path, db: Path):
        super().__init__(workdir)
        self.config = config
        self.db = db

    def args(self) -> list[str]:
        return [
            str(BIN / "twistd"),
            "--pidfile=",
            "-n",
            "kwp",
            "--config",
            str(self.config),
            "--database",
            str(self.db),
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
        ]

    def stored(self) -> int:
        if str(self.db).startswith("postgresql://"):
            return kwpdb.pg_stored(str(self.db))
        return kwpdb.stored(self.db)


class MemoryDrain(Server):
    name = "memory"

    def __init__(self, workdir: Path, count: int):
        super().__init__(workdir)
        self.count = count

    def args(self) -> list[str]:
        return [
            sys.executable,
            str(BENCH / "memory_drain.py"),
            str(self.port),
            str(self.count),
            BODY.decode(),
            STORED_HEADERS,
        ]


def peer_missing(peer: str) -> str | None:
    """Why a peer cannot run here, or None."""
    if peer == "fastapi" and not FASTAPI_PYTHON.exists():
        return f"{FASTAPI_PYTHON} is missing (make bench creates it)"
    if peer == "express":
        if shutil.which("node") is None:
            return "node is not installed"
        if not (EXPRESS / "node_modules" / "better-sqlite3").exists():
            return f"{EXPRESS}/node_modules is missing (make bench installs it)"
    return None


def write_config(path: Path, forward_url: str | None = None, concurrency: int = 1, metrics: bool = False) -> Path:
    lines = ["server:", "  metrics: true"] if metrics else []
    lines += ["channels:", f"  - name: {CHANNEL}", f"    token: {TOKEN}"]
    if forward_url is not None:
        lines += [
            "    forward:",
            f"      url: {forward_url!r}",
            "      interval-seconds: 1",
            f"      concurrency: {concurrency}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


# Three pull consumers whose filters (on the body and a header) all take the
# benchmark's webhook, so each receive queues three deliveries.
FANOUT_CONSUMERS = """    consumers:
      - name: ci
        filter: "body.action == 'opened'"
      - name: chat
        filter: "body.number > `10` && headers.\\"content-type\\" == 'application/json'"
      - name: audit
        filter: "contains(['octo'], body.sender.login)"
"""


def write_fanout_config(path: Path) -> Path:
    write_config(path)
    path.write_text(path.read_text() + FANOUT_CONSUMERS)
    return path


@dataclass
class WrkResult:
    rps: float
    sent: int
    statuses: dict[int, int]
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok_per_second(self) -> float:
        return self.rps * self.ok / max(self.answered, 1)


def run_wrk(url: str, seconds: int, connections: int) -> WrkResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA), url]
    out = subprocess.run(
        pinned(LOAD_CPU, command), capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    line = re.search(r"kwp-bench (.*)", out)
    if rps is None or line is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    fields = dict(item.split("=", 1) for item in line.group(1).split())
    statuses = {int(s): int(n) for s, n in (p.split(":") for p in fields.pop("status").split(",") if p)}
    return WrkResult(
        rps=float(rps.group(1)),
        sent=int(fields.pop("sent")),
        statuses=statuses,
        p50_ms=int(fields.pop("p50_us")) / 1000,
        p99_ms=int(fields.pop("p99_us")) / 1000,
        errors={k: int(v) for k, v in fields.items()},
    )


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    verdicts: dict[str, bool | None] = field(default_factory=dict)
    honest: bool = True

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def judge(self, key: str, ok: bool | None, figure: str) -> None:
        self.verdicts[key] = ok
        word = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        self.say(f"  [{word}] {TARGETS[key]}: {figure}")


def honesty(report: Report, label: str, result: WrkResult, stored: int) -> None:
    """Every 2xx must be a stored row.  Requests still in flight when wrk
    stops (sent, never answered) may or may not have been stored."""
    cut_off = result.sent - result.answered
    ok = result.ok <= stored <= result.ok + cut_off
    report.honest &= ok
    report.say(
        f"    honesty {label}: stored={stored} 2xx={result.ok} cut-off-in-flight={cut_off} "
        f"non-2xx={result.answered - result.ok} errors={result.errors} -> {'OK' if ok else 'MISMATCH'}"
    )


@dataclass
class Measured:
    """One server's figures over the rounds of a section."""

    rate: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    idle_kb: list[int] = field(default_factory=list)
    peak_kb: list[int] = field(default_factory=list)


def bench_receive(args, work: Path, report: Report) -> None:
    """kwp on an empty database, kwp with N pending, and each peer, in an
    order that rotates each round.  The rate is 2xx answers per second; CPU
    is per stored webhook for the durable servers, per 2xx for the others."""
    report.say(
        f"== durable receive: {args.rounds} rounds x {args.seconds}s, wrk -t1 -c{args.connections}, "
        f"{len(BODY)}-byte JSON body; peers: {', '.join(args.peers)}"
    )
    config = write_config(work / "receive.yml")
    fanout = write_fanout_config(work / "fanout.yml")
    full_template = work / "pending-template.db"
    started = time.monotonic()
    kwpdb.fill(full_template, CHANNEL, STORED_HEADERS, (BODY for _ in range(args.pending)))
    report.say(f"  filled a database with {args.pending:,} pending webhooks in {time.monotonic() - started:.1f}s")
    kinds = ["kwp", "kwp-fanout", "kwp-pending", *args.peers]
    figures = {kind: Measured() for kind in kinds}
    for round_no in range(args.rounds):
        order = kinds[round_no % len(kinds) :] + kinds[: round_no % len(kinds)]
        for kind in order:
            db = work / f"receive-{round_no}-{kind}.db"
            before = 0
            if kind == "kwp-pending":
                shutil.copyfile(full_template, db)
                before = args.pending
            server = {
                "kwp": lambda: Kwp(work, config, db),
                "kwp-pending": lambda: Kwp(work, config, db),
                "kwp-fanout": lambda: Kwp(work, fanout, db),
                "klein": lambda: Klein(work),
                "twisted": lambda: BareTwisted(work),
                "fastapi": lambda: FastAPI(work, db),
                "express": lambda: Express(work, db),
            }[kind]()
            server.start()
            try:
                time.sleep(args.settle)
                measured = figures[kind]
                measured.idle_kb.append(server.rss_kb())
                cpu_before = server.cpu_seconds()
                result = run_wrk(server.url(f"/api/webhook/{CHANNEL}"), args.seconds, args.connections)
                cpu = server.cpu_seconds() - cpu_before
                measured.peak_kb.append(server.peak_kb())
            finally:
                server.stop()
            stored = server.stored()
            if stored is not None:
                stored -= before
                honesty(report, kind, result, stored)
                if kind == "kwp-fanout":
                    queued = kwpdb.deliveries(db)
                    report.honest &= queued == 3 * stored
                    report.say(f"    fan-out: {queued} deliveries for {stored} webhooks (3 each expected)")
                db.unlink()
            measured.rate.append(result.ok_per_second)
            measured.cpu_us.append(cpu / max(result.ok if stored is None else stored, 1) * 1e6)
            report.say(
                f"  round {round_no + 1} {kind:11s} {result.ok_per_second:8.0f} 2xx/s  p50 {result.p50_ms:6.1f} ms  "
                f"p99 {result.p99_ms:6.1f} ms  CPU {measured.cpu_us[-1]:4.0f} us per "
                f"{'2xx   ' if stored is None else 'stored'}  idle RSS {measured.idle_kb[-1] / 1024:5.1f} MB  "
                f"loaded RSS {measured.peak_kb[-1] / 1024:5.1f} MB"
            )
        kwp_rate = figures["kwp"].rate[-1]
        ratios = "  ".join(f"kwp/{peer} {kwp_rate / figures[peer].rate[-1]:.2f}" for peer in args.peers)
        report.say(
            f"  round {round_no + 1} ratios: {ratios}  pending/empty {figures['kwp-pending'].rate[-1] / kwp_rate:.2f}"
            f"  fanout/one {figures['kwp-fanout'].rate[-1] / kwp_rate:.2f}"
            f"   load {load()}"
        )
    full_template.unlink()

    def ratio(a: str, b: str, series: str = "rate") -> float:
        return median([x / y for x, y in zip(getattr(figures[a], series), getattr(figures[b], series))])

    report.say("  medians (2xx/s; CPU per stored webhook, or per 2xx for the servers that store nothing):")
    for kind in kinds:
        measured = figures[kind]
        report.say(
            f"    {kind:11s} {median(measured.rate):8.0f} 2xx/s  CPU {median(measured.cpu_us):4.0f} us  "
            f"idle RSS {median(measured.idle_kb) / 1024:5.1f} MB  loaded RSS {median(measured.peak_kb) / 1024:5.1f} MB"
        )
    for peer in args.peers:
        least, _ = PEER_TARGETS[peer]
        value = ratio("kwp", peer)
        report.judge(
            peer,
            None if args.quick else value >= least,
            f"{value:.2f}x (median of rounds; CPU per webhook kwp {median(figures['kwp'].cpu_us):.0f} us, "
            f"{peer} {median(figures[peer].cpu_us):.0f} us)",
        )
    if "klein" in args.peers:
        idle = ratio("kwp", "klein", "idle_kb")
        report.judge("idle_rss", None if args.quick else idle <= 1.3, f"{idle:.2f}x")
    pending = ratio("kwp-pending", "kwp")
    report.judge("pending", None if args.quick else pending >= 0.9, f"{pending:.2f}x with {args.pending:,} pending")
    fanned = ratio("kwp-fanout", "kwp")
    report.judge(
        "fanout",
        None if args.quick else fanned >= 0.8,
        f"{fanned:.2f}x (CPU per webhook {median(figures['kwp-fanout'].cpu_us):.0f} us with three consumers, "
        f"{median(figures['kwp'].cpu_us):.0f} us with one)",
    )


class RssSampler(threading.Thread):
    """The largest VmRSS of a process seen while it runs, sampled every 10 ms."""

    def __init__(self, pid: int, limit_seconds: float):
        super().__init__(daemon=True)
        self.pid = pid
        self.limit = limit_seconds
        self.largest = 0
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.done.is_set() and time.monotonic() < deadline:
            self.largest = max(self.largest, proc_status_kb(self.pid, "VmRSS"))
            self.done.wait(0.01)


@dataclass
class Drained:
    ids: list[int]
    seconds: float
    cpu_seconds: float
    idle_kb: int
    peak_kb: int

    @property
    def rate(self) -> float:
        return len(self.ids) / self.seconds


def drain(server: Server, timeout: float) -> Drained:
    """One GET of the whole queue, read as a stream, parsed at the end."""
    idle = server.rss_kb()
    sampler = RssSampler(server.pid, timeout)
    sampler.start()
    cpu_before = server.cpu_seconds()
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    connection.request("GET", f"/api/webhook/{CHANNEL}", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    chunks = []
    while chunk := response.read(256 * 1024):
        chunks.append(chunk)
    elapsed = time.monotonic() - started
    cpu = server.cpu_seconds() - cpu_before
    connection.close()
    sampler.done.set()
    sampler.join()
    items = json.loads(b"".join(chunks)) if response.status == 200 else []
    return Drained([item["id"] for item in items], elapsed, cpu, idle, sampler.largest)


def bench_drain(args, work: Path, report: Report) -> None:
    """kwp and the in-memory server each stream a backlog to one GET, in
    alternating order; the ratio of their rates is taken in each round."""
    report.say(
        f"== drain: one GET of a {args.drain:,}-webhook backlog, streamed, against the in-memory server, "
        f"{args.drain_rounds} rounds"
    )
    config = write_config(work / "drain.yml")
    ratios, growths, rates = [], [], []
    cpus: dict[str, list[float]] = {"kwp": [], "memory": []}
    for round_no in range(args.drain_rounds):
        drained: dict[str, Drained] = {}
        for kind in ("kwp", "memory") if round_no % 2 == 0 else ("memory", "kwp"):
            db = work / f"drain-{round_no}.db"
            if kind == "kwp":
                kwpdb.fill(db, CHANNEL, STORED_HEADERS, (BODY for _ in range(args.drain)))
                server = Kwp(work, config, db)
            else:
                server = MemoryDrain(work, args.drain)
            server.start()
            try:
                time.sleep(args.settle)
                drained[kind] = result = drain(server, args.drain_timeout)
            finally:
                server.stop()
            left = 0
            if kind == "kwp":
                left = kwpdb.pending(db, CHANNEL)
                db.unlink()
            cpus[kind].append(result.cpu_seconds / max(len(result.ids), 1) * 1e6)
            ok = len(result.ids) == args.drain and len(set(result.ids)) == args.drain and left == 0
            report.honest &= ok
            report.say(
                f"  round {round_no + 1} {kind:6s}: {len(result.ids):,} webhooks in {result.seconds:.2f}s = "
                f"{result.rate:,.0f}/s, CPU {cpus[kind][-1]:.1f} us per webhook, "
                f"RSS idle {result.idle_kb / 1024:.1f} MB, peak {result.peak_kb / 1024:.1f} MB "
                f"(+{(result.peak_kb - result.idle_kb) / 1024:.1f} MB); left pending {left} -> "
                f"{'OK' if ok else 'MISMATCH'}"
            )
        kwp = drained["kwp"]
        ratios.append(kwp.rate / drained["memory"].rate)
        growths.append((kwp.peak_kb - kwp.idle_kb) / 1024)
        rates.append(kwp.rate)
        report.say(f"  round {round_no + 1} ratio: kwp/memory {ratios[-1]:.2f}   load {load()}")
    ratio, growth, rate = median(ratios), median(growths), median(rates)
    report.judge(
        "drain_ratio",
        None if args.quick else ratio >= 0.5,
        f"{ratio:.2f}x (median of rounds; CPU per webhook kwp {median(cpus['kwp']):.1f} us, "
        f"memory {median(cpus['memory']):.1f} us)",
    )
    report.judge("drain_rss", None if args.quick else growth < 60, f"+{growth:.1f} MB (median)")
    report.judge("drain_rate", None if args.quick else rate >= 20000, f"{rate:,.0f} webhooks/s (median)")


def numbered_bodies(count: int):
    """BODY with "number" counting 0 .. count-1: the push target checks order by it."""
    for number in range(count):
        yield BODY.replace(b'"number":42', b'"number":%d' % number)


def push_once(args, work: Path, concurrency: int, label: str) -> tuple[float, float, bool, str]:
    """kwp forwards a pre-filled backlog to the push target until it is
    empty: (webhooks/s, kwp's CPU per webhook in us, honest, details)."""
    port = free_port()
    target = subprocess.Popen(
        pinned(LOAD_CPU, [sys.executable, str(BENCH / "push_target.py"), str(port), str(args.push), str(args.push_timeout)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    db = work / f"push-{label}.db"
    try:
        wait_listening(port, target, "push target", lambda: "")
        kwpdb.fill(db, CHANNEL, STORED_HEADERS, numbered_bodies(args.push))
        config = write_config(work / f"push-{label}.yml", f"http://127.0.0.1:{port}/hook", concurrency)
        kwp = Kwp(work, config, db).start()
        try:
            cpu_before = kwp.cpu_seconds()
            out, _ = target.communicate(timeout=args.push_timeout + 30)
            cpu = kwp.cpu_seconds() - cpu_before
            deadline = time.monotonic() + 10
            while kwpdb.pending(db, CHANNEL) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            kwp.stop()
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
    tally = json.loads(out)
    left = kwpdb.pending(db, CHANNEL)
    db.unlink()
    complete = tally["distinct"] == args.push
    ok = complete and tally["repeated"] == 0 and left == 0 and (tally["in_order"] or concurrency > 1)
    seconds = (tally["last_at"] - tally["first_at"]) if complete else float("inf")
    rate = (args.push - 1) / seconds if seconds > 0 else 0.0
    details = (
        f"{tally['distinct']:,} of {args.push:,} delivered ({tally['deliveries']:,} deliveries, "
        f"{tally['repeated']} repeated, {'in order' if tally['in_order'] else 'not in order'}), left pending {left}"
    )
    return rate, cpu / max(tally["distinct"], 1) * 1e6, ok, details


def bench_push(args, work: Path, report: Report) -> None:
    """Push throughput: the rate from the first delivery to the last."""
    report.say(
        f"== push: kwp forwards a backlog of {args.push:,} to a keep-alive target that answers 200 at once, "
        f"concurrency 1 and 8, {args.push_rounds} rounds"
    )
    rates: dict[int, list[float]] = {c: [] for c in PUSH_TARGETS}
    cpus: dict[int, list[float]] = {c: [] for c in PUSH_TARGETS}
    for round_no in range(args.push_rounds):
        order = list(PUSH_TARGETS) if round_no % 2 == 0 else list(PUSH_TARGETS)[::-1]
        for concurrency in order:
            rate, cpu, ok, details = push_once(args, work, concurrency, f"{round_no}-{concurrency}")
            report.honest &= ok
            rates[concurrency].append(rate)
            cpus[concurrency].append(cpu)
            report.say(
                f"  round {round_no + 1} concurrency {concurrency}: {rate:,.0f} webhooks/s, kwp CPU {cpu:.0f} us "
                f"per webhook; {details} -> {'OK' if ok else 'MISMATCH'}   load {load()}"
            )
    for concurrency, (key, least) in PUSH_TARGETS.items():
        rate = median(rates[concurrency])
        report.judge(
            key,
            None if args.quick else rate >= least,
            f"{rate:,.0f} webhooks/s (median; kwp CPU {median(cpus[concurrency]):.0f} us per webhook)",
        )


def post_webhook(port: int, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", f"/api/webhook/{CHANNEL}", body=body, headers={"Content-Type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def wake_once(poll_port: int, post_port: int, n: int, report: Report, what: str) -> tuple[float, float] | None:
    """GET ?wait=30 on poll_port; once it is parked, a POST of {"n": n} to
    post_port.  The milliseconds from sending the POST to the long-poll's
    answer and to the POST's own; None (and dishonest) when the long-poll
    did not get that webhook."""
    connection = http.client.HTTPConnection("127.0.0.1", poll_port, timeout=40)
    connection.request("GET", f"/api/webhook/{CHANNEL}?wait=30", headers={"Authorization": f"Bearer {TOKEN}"})
    answer: dict = {}

    def read():
        response = connection.getresponse()
        answer["body"] = response.read()
        answer["at"] = time.perf_counter()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.05)
    sent = time.perf_counter()
    status = post_webhook(post_port, b'{"n":%d}' % n)
    posted = (time.perf_counter() - sent) * 1000
    reader.join(35)
    connection.close()
    items = json.loads(answer.get("body", b"[]"))
    if status != 200 or [i["payload"] for i in items] != [{"n": n}]:
        report.honest = False
        report.say(f"  {what} {n}: POST {status}, long-poll got {items!r} -> MISMATCH")
        return None
    return (answer["at"] - sent) * 1000, posted


def bench_longpoll(args, work: Path, report: Report) -> None:
    """A client holds GET ?wait=30; once it is parked, another POSTs; the
    figure is the time from sending the POST to the long-poll's answer."""
    report.say(f"== long-poll wake: {args.polls} times GET ?wait=30, then one POST")
    kwp = Kwp(work, write_config(work / "poll.yml"), work / "poll.db").start()
    wakes, posts = [], []
    try:
        for n in range(args.polls):
            wake = wake_once(kwp.port, kwp.port, n, report, "poll")
            if wake is not None:
                wakes.append(wake[0])
                posts.append(wake[1])
    finally:
        kwp.stop()
    report.say(
        f"  POST answered (durable) p50 {median(posts):.1f} ms; long-poll answered p50 {median(wakes):.1f} ms, "
        f"p95 {percentile(wakes, 95):.1f} ms   load {load()}"
    )
    p50 = median(wakes)
    report.judge("longpoll", None if args.quick else p50 < 20, f"p50 {p50:.1f} ms")


class _Target(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.arrived[body] = time.perf_counter()
        self.server.event.set()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def bench_forward(args, work: Path, report: Report) -> None:
    report.say(f"== forward: {args.polls} webhooks, one at a time, to a local target")
    target = ThreadingHTTPServer(("127.0.0.1", 0), _Target)
    target.arrived, target.event = {}, threading.Event()
    threading.Thread(target=target.serve_forever, daemon=True).start()
    config = write_config(work / "forward.yml", f"http://127.0.0.1:{target.server_port}/hook")
    kwp = Kwp(work, config, work / "forward.db").start()
    latencies = []
    try:
        for n in range(args.polls):
            body = b'{"forward":%d}' % n
            target.event.clear()
            sent = time.perf_counter()
            post_webhook(kwp.port, body)
            deadline = time.monotonic() + 10
            while body not in target.arrived and time.monotonic() < deadline:
                target.event.wait(0.5)
                target.event.clear()
            if body not in target.arrived:
                report.honest = False
                report.say(f"  webhook {n} was not forwarded within 10s -> MISMATCH")
                continue
            latencies.append((target.arrived[body] - sent) * 1000)
    finally:
        kwp.stop()
        target.shutdown()
    p50 = median(latencies)
    report.say(f"  forwarded p50 {p50:.1f} ms, p95 {percentile(latencies, 95):.1f} ms   load {load()}")
    report.judge("forward", None if args.quick else p50 < 50, f"p50 {p50:.1f} ms")


class Scraper(threading.Thread):
    """GET /api/metrics every ``interval`` seconds until stopped, as a
    Prometheus server does."""

    def __init__(self, port: int, interval: float):
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.scrapes = 0
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval * random.random() if not self.scrapes else self.interval):
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                connection.request("GET", "/api/metrics")
                response = connection.getresponse()
                response.read()
                self.scrapes += 1
                self.failures += response.status != 200
            except OSError:
                self.failures += 1
            finally:
                connection.close()


def bench_scrape(args, work: Path, report: Report) -> None:
    """Receive under wrk with a backlog, with and without SCRAPERS clients
    scraping /api/metrics, in alternating order."""
    report.say(
        f"== receive while scraped: {args.scrape_pending:,} pending, {SCRAPERS} scrapers every "
        f"{args.scrape_interval:g}s, "
        f"{args.scrape_rounds} rounds x {args.seconds}s, wrk -t1 -c{args.connections}"
    )
    config = write_config(work / "scrape.yml", metrics=True)
    template = work / "scrape-template.db"
    kwpdb.fill(template, CHANNEL, STORED_HEADERS, (BODY for _ in range(args.scrape_pending)))
    p99: dict[str, list[float]] = {"quiet": [], "scraped": []}
    for round_no in range(args.scrape_rounds):
        for kind in ("quiet", "scraped") if round_no % 2 == 0 else ("scraped", "quiet"):
            db = work / f"scrape-{round_no}-{kind}.db"
            shutil.copyfile(template, db)
            kwp = Kwp(work, config, db).start()
            scrapers = [Scraper(kwp.port, args.scrape_interval) for _ in range(SCRAPERS if kind == "scraped" else 0)]
            try:
                time.sleep(args.settle)
                for scraper in scrapers:
                    scraper.start()
                result = run_wrk(kwp.url(f"/api/webhook/{CHANNEL}"), args.seconds, args.connections)
            finally:
                for scraper in scrapers:
                    scraper.stop.set()
                for scraper in scrapers:
                    scraper.join(15)
                kwp.stop()
            p99[kind].append(result.p99_ms)
            scrapes = sum(s.scrapes for s in scrapers)
            failures = sum(s.failures for s in scrapers)
            report.say(
                f"  round {round_no + 1} {kind:8s} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.1f} ms  "
                f"p99 {result.p99_ms:6.1f} ms  scrapes {scrapes} ({failures} failed)   load {load()}"
            )
            report.honest &= failures == 0
            honesty(report, kind, result, kwpdb.stored(db) - args.scrape_pending)
            db.unlink()
    template.unlink()
    ratio = median([s / q for s, q in zip(p99["scraped"], p99["quiet"])])
    report.judge("scrape", None if args.quick else ratio <= 2, f"p99 {ratio:.2f}x (median of rounds)")


def postgres_cpu_seconds() -> float:
    """User and system CPU time of every PostgreSQL server process."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, _, rest = f.read().rpartition(")")
        except OSError:
            continue
        if head.endswith("(postgres"):
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def pg_receive(args, work: Path, databases, report: Report) -> None:
    """kwp on SQLite and kwp on PostgreSQL under the same wrk load, in an
    order that alternates each round; CPU per stored webhook of kwp, and of
    kwp and the PostgreSQL server together."""
    config = write_config(work / "pg-receive.yml")
    kinds = ("sqlite", "postgresql")
    rates = {kind: [] for kind in kinds}
    cpu = {kind: [] for kind in kinds}
    server_cpu = []
    for round_no in range(args.rounds):
        for kind in kinds if round_no % 2 == 0 else kinds[::-1]:
            db = databases.create() if kind == "postgresql" else work / f"pg-receive-{round_no}.db"
            server = Kwp(work, config, db).start()
            try:
                time.sleep(args.settle)
                kwp_before, pg_before = server.cpu_seconds(), postgres_cpu_seconds()
                result = run_wrk(server.url(f"/api/webhook/{CHANNEL}"), args.seconds, args.connections)
                kwp_used, pg_used = server.cpu_seconds() - kwp_before, postgres_cpu_seconds() - pg_before
            finally:
                server.stop()
            stored = server.stored()
            honesty(report, f"kwp on {kind}", result, stored)
            rates[kind].append(result.ok_per_second)
            cpu[kind].append(kwp_used / max(stored, 1) * 1e6)
            extra = ""
            if kind == "postgresql":
                server_cpu.append(pg_used / max(stored, 1) * 1e6)
                extra = f" + PostgreSQL {server_cpu[-1]:4.0f} us"
            else:
                db.unlink()
            report.say(
                f"  round {round_no + 1} {kind:10s} {result.ok_per_second:8.0f} 2xx/s  p50 {result.p50_ms:6.1f} ms  "
                f"p99 {result.p99_ms:6.1f} ms  CPU per stored webhook: kwp {cpu[kind][-1]:4.0f} us{extra}"
            )
        report.say(
            f"  round {round_no + 1} ratio postgresql/sqlite {rates['postgresql'][-1] / rates['sqlite'][-1]:.2f}"
            f"   load {load()}"
        )
    ratio = median([p / q for p, q in zip(rates["postgresql"], rates["sqlite"])])
    report.judge(
        "pg_receive",
        None if args.quick else ratio >= 0.8,
        f"{ratio:.2f}x (median of rounds: {median(rates['postgresql']):.0f} against {median(rates['sqlite']):.0f} 2xx/s; "
        f"CPU per webhook kwp {median(cpu['postgresql']):.0f} us + PostgreSQL {median(server_cpu):.0f} us, "
        f"against kwp on SQLite {median(cpu['sqlite']):.0f} us)",
    )


def pg_wake(args, nodes: list[Kwp], report: Report) -> None:
    """GET ?wait=30 on node A; once it is parked, a POST to node B; the
    figure is the time from sending the POST to the long-poll's answer."""
    a, b = nodes
    wakes = []
    for n in range(args.pg_polls):
        wake = wake_once(a.port, b.port, n, report, "wake")
        if wake is not None:
            wakes.append(wake[0])
    p50, p99 = (median(wakes), percentile(wakes, 99)) if wakes else (float("nan"), float("nan"))
    report.say(f"  {len(wakes)} wakes: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(wakes, default=p99):.1f} ms   load {load()}")
    report.judge("pg_wake", None if args.quick else p50 <= 10 and p99 <= 50, f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def pg_claim(args, work: Path, databases, report: Report) -> None:
    """A backlog taken by leased pulls and acked, by two clients on each of
    two nodes.  Webhooks per statement: each GET's page is claimed by one
    SELECT ... FOR UPDATE SKIP LOCKED and one UPDATE, and each ack closes
    its ids with one UPDATE (up to 500 ids per statement), so they are the
    sizes of kwp's answers; PostgreSQL's own counters (rows updated in
    deliveries per transaction) are printed beside them."""
    url = databases.create()
    kwpdb.pg_fill(url, work, CHANNEL, STORED_HEADERS, (BODY for _ in range(args.pg_backlog)))
    config = write_config(work / "pg-claim.yml")
    nodes = [Kwp(work, config, url).start() for _ in range(2)]
    taken: list[int] = []
    pages: list[int] = []
    acks: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(port: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        try:
            while True:
                connection.request("GET", f"/api/webhook/{CHANNEL}?limit={args.pg_page}&lease=60", headers=auth)
                items = json.loads(connection.getresponse().read())
                if not items:
                    return
                ids = [item["id"] for item in items]
                connection.request(
                    "POST", f"/api/webhook/{CHANNEL}/ack", body=json.dumps({"ids": ids}),
                    headers={**auth, "Content-Type": "application/json"},
                )
                acked = json.loads(connection.getresponse().read())["acked"]
                with lock:
                    taken.extend(ids)
                    pages.append(len(ids))
                    acks.append(acked)
        except Exception as e:
            failures.append(repr(e))
        finally:
            connection.close()

    commits_before, updated_before = kwpdb.pg_activity(url)
    threads = [threading.Thread(target=client, args=(node.port,)) for node in nodes for _ in range(2)]
    started = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.push_timeout)
        elapsed = time.perf_counter() - started
        cpu = sum(node.cpu_seconds() for node in nodes)
    finally:
        for node in nodes:
            node.stop()
    commits, updated = kwpdb.pg_activity(url)
    left = kwpdb.pg_open(url, CHANNEL)
    exact = not failures and len(taken) == len(set(taken)) == args.pg_backlog and sum(acks) == len(taken) and left == 0
    report.honest &= exact
    rate = len(taken) / elapsed
    per_claim, per_ack = sum(pages) / max(len(pages), 1), sum(acks) / max(len(acks), 1)
    report.say(
        f"  {len(taken):,} webhooks claimed and acked in {elapsed:.2f}s by 4 clients on 2 nodes: {rate:,.0f}/s; "
        f"{len(pages)} claims of {per_claim:.1f} and {len(acks)} acks of {per_ack:.1f} webhooks each; "
        f"PostgreSQL: {updated - updated_before:,} delivery rows updated in {commits - commits_before:,} commits; "
        f"kwp CPU {cpu:.1f}s   load {load()}"
    )
    report.say(
        f"  honesty: {len(set(taken))} distinct of {len(taken)} taken, {sum(acks)} acked, {left} left open"
        f"{', failures ' + str(failures[:3]) if failures else ''} -> {'OK' if exact else 'MISMATCH'}"
    )
    report.judge(
        "pg_claim",
        None if args.quick else rate >= 1000 and min(per_claim, per_ack) >= 10,
        f"{rate:,.0f} webhooks/s, {min(per_claim, per_ack):.1f} per statement at least",
    )


def pg_notify(args, server: Kwp, url: str, report: Report) -> None:
    """POSTs paced at PACED_RATE a second to one node by PACED_CLIENTS
    keep-alive connections; a LISTEN connection of the benchmark counts the
    notifications PostgreSQL delivers on kwp's channel: one per commit that
    sent one."""
    import psycopg

    before = kwpdb.pg_stored(url)
    listener = psycopg.connect(url, autocommit=True)
    listener.execute("LISTEN kwp")
    heard: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            for _ in listener.notifies(timeout=0.2):
                heard.append(time.perf_counter())

    def client(first: int, start: float, count: int) -> None:
        # Connected before the start, so that the paced requests do not
        # wait for PACED_CLIENTS connections to be accepted at once.
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.connect()
        headers = {"Content-Type": "application/json", "User-Agent": "kwp-bench", "X-GitHub-Event": "pull_request"}
        for k in range(first, count, PACED_CLIENTS):
            wait = start + k / PACED_RATE - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            try:
                connection.request("POST", f"/api/webhook/{CHANNEL}", body=BODY, headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as e:
                # Counted, and the next request goes on a new connection.
                errors.append(repr(e))
                connection.close()
                continue
            with lock:
                statuses[response.status] = statuses.get(response.status, 0) + 1
        connection.close()

    count = int(PACED_RATE * args.pg_paced_seconds)
    watcher = threading.Thread(target=listen)
    watcher.start()
    try:
        time.sleep(args.settle)
        start = time.perf_counter() + 0.5
        clients = [threading.Thread(target=client, args=(i, start, count)) for i in range(PACED_CLIENTS)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(args.pg_paced_seconds + 60)
        end = time.perf_counter()
        time.sleep(0.5)
    finally:
        done.set()
        watcher.join()
        listener.close()
    seconds = end - start
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    stored = kwpdb.pg_stored(url) - before
    # A request cut off by an error may have been stored or not.
    exact = ok <= stored <= ok + len(errors)
    report.honest &= exact
    received = ok / seconds
    commits = len([at for at in heard if start <= at <= end + 0.5])
    per_second = commits / seconds
    report.say(
        f"  {ok} of {count} POSTs answered 2xx in {seconds:.2f}s ({received:,.0f}/s, {stored} stored, "
        f"{len(errors)} errors{' ' + str(errors[:2]) if errors else ''} -> "
        f"{'OK' if exact else 'MISMATCH'}); {commits} notifications heard: {per_second:.1f} NOTIFY-bearing commits/s, "
        f"{ok / max(commits, 1):.1f} webhooks each   load {load()}"
    )
    report.judge(
        "pg_notify",
        None if args.quick else received >= 0.95 * PACED_RATE and per_second <= 50,
        f"{per_second:.1f} commits/s at {received:,.0f} receives/s",
    )


def bench_postgres(args, work: Path, report: Report) -> None:
    report.say(
        f"== PostgreSQL: receive against SQLite ({args.rounds} rounds x {args.seconds}s, wrk -t1 -c{args.connections}), "
        f"long-poll wake across two nodes ({args.pg_polls} times), claim + ack of {args.pg_backlog:,} across two "
        f"nodes, {PACED_RATE:,} receives/s paced for {args.pg_paced_seconds}s"
    )
    databases = kwpdb.PostgresDatabases(args.postgresql)
    try:
        pg_receive(args, work, databases, report)
        pg_claim(args, work, databases, report)
        # The wakes and the paced receives share two nodes on one database.
        url = databases.create()
        config = write_config(work / "pg-nodes.yml")
        nodes = [Kwp(work, config, url).start() for _ in range(2)]
        try:
            pg_wake(args, nodes, report)
            pg_notify(args, nodes[0], url, report)
        finally:
            for node in nodes:
                node.stop()
    finally:
        databases.drop_all()


SECTIONS = {
    "receive": bench_receive,
    "drain": bench_drain,
    "push": bench_push,
    "longpoll": bench_longpoll,
    "forward": bench_forward,
    "scrape": bench_scrape,
    "postgres": bench_postgres,
}


def peer_list(value: str) -> list[str]:
    peers = [p for p in value.split(",") if p]
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peers {sorted(unknown)}; known: {','.join(PEERS)}")
    return peers


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny counts and 1-second runs; targets not judged")
    parser.add_argument("--peers", type=peer_list, default=list(PEERS), help=f"receive peers ({','.join(PEERS)})")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved receive rounds (5)")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per server and round (10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--pending", type=int, default=1_000_000, help="webhooks pending for the full-database rounds")
    parser.add_argument("--drain", type=int, default=100_000, help="backlog drained by one GET (100,000)")
    parser.add_argument("--drain-rounds", type=int, default=5)
    parser.add_argument("--drain-timeout", type=float, default=120, help="seconds a drain may take at most")
    parser.add_argument("--push", type=int, default=20_000, help="backlog forwarded by the push rounds (20,000)")
    parser.add_argument("--push-rounds", type=int, default=3)
    parser.add_argument("--push-timeout", type=float, default=300, help="seconds a push round may take at most")
    parser.add_argument("--polls", type=int, default=50, help="long-poll wakes and forwards measured (50)")
    parser.add_argument("--scrape-pending", type=int, default=400_000, help="webhooks pending while scraped (400,000)")
    parser.add_argument("--scrape-rounds", type=int, default=3, help="rounds of receive with and without scrapers (3)")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between one scraper's scrapes (1)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between start and the idle RSS reading")
    parser.add_argument("--postgresql", default=POSTGRES_URL, help="PostgreSQL server of the postgres section")
    parser.add_argument("--pg-polls", type=int, default=200, help="long-poll wakes across two nodes (200)")
    parser.add_argument("--pg-backlog", type=int, default=20_000, help="webhooks claimed and acked (20,000)")
    parser.add_argument("--pg-page", type=int, default=100, help="webhooks per claim (GET ?limit=) (100)")
    parser.add_argument("--pg-paced-seconds", type=float, default=10, help="seconds of paced receives (10)")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.connections = 1, 1, 8
        args.pending, args.drain, args.drain_rounds, args.polls, args.settle = 2000, 1000, 1, 5, 0.3
        args.scrape_pending, args.scrape_rounds, args.scrape_interval = 2000, 1, 0.2
        args.push, args.push_rounds = 300, 1
        args.pg_polls, args.pg_backlog, args.pg_paced_seconds = 5, 1000, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.only is None or "receive" in args.only:
        missing = [f"{peer}: {why}" for peer in args.peers if (why := peer_missing(peer))]
        if missing:
            print("bench: peers cannot run:\n  " + "\n  ".join(missing), file=sys.stderr)
            return 2
    if args.only is None or "postgres" in args.only:
        unreachable = kwpdb.PostgresDatabases(args.postgresql).reachable()
        if unreachable:
            print(f"bench: PostgreSQL at {args.postgresql} cannot be reached: {unreachable}", file=sys.stderr)
            return 2
    if PINNED:
        os.sched_setaffinity(0, {LOAD_CPU})
    report = Report()
    report.say(
        f"kwp benchmark{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"load at start {load()}"
    )
    report.say(
        f"  servers on CPU {SERVER_CPU}; wrk, clients and the push target on CPU {LOAD_CPU}"
        if PINNED
        else "  one CPU: nothing pinned"
    )
    report.say(f"  uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    with tempfile.TemporaryDirectory(prefix="kwp-bench-") as tmp:
        for name, section in SECTIONS.items():
            if args.only is None or name in args.only:
                section(args, Path(tmp), report)
    report.say(f"== summary (load at end {load()})")
    for key, ok in report.verdicts.items():
        report.say(f"  {'n/a ' if ok is None else ('PASS' if ok else 'FAIL')}  {TARGETS[key]}")
    report.say(
        f"  {'PASS' if report.honest else 'FAIL'}  honesty: every 2xx stored, every drained or pushed webhook "
        "delivered once"
    )
    failed = not report.honest or any(ok is False for ok in report.verdicts.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
