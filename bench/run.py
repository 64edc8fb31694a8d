"""kwp's benchmark: the real ``twistd -n kwp`` side by side with a bare Klein
app (bench/baseline.py) under the same wrk load, interleaved round by round.

    python bench/run.py            # the full run (make bench)
    python bench/run.py --quick    # tiny counts and 1-second wrk runs (smoke test)

Every server listens on 127.0.0.1 with a temporary config and database.  The
figures are ratios measured in the same round, so that the load of the machine
weighs on both sides alike; each round's ratio is printed and the median is
judged against the targets of issue 7.  After every kwp load round the rows in
the database are counted and compared with the 2xx answers wrk saw.
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

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LUA = ROOT / "bench" / "post.lua"
BASELINE = ROOT / "bench" / "baseline.py"
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

TARGETS = {
    "receive": "durable receive >= 0.8x baseline",
    "idle_rss": "idle RSS <= 1.3x baseline",
    "drain_rss": "100k drain RSS growth < 60 MB",
    "drain_rate": "100k drain >= 20,000 webhooks/s",
    "longpoll": "long-poll wake p50 < 20 ms",
    "forward": "forward p50 < 50 ms",
    "pending": "receive with 1M pending >= 0.9x empty",
    "scrape": "receive p99 with 4 scrapers and 400k pending <= 2x unscraped",
}
SCRAPERS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class Server:
    """A server process on 127.0.0.1:port, its output in a log file."""

    name = "server"

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{self.name}-{self.port}.log"

    def args(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> "Server":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen within {START_TIMEOUT}s")

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


class Baseline(Server):
    name = "baseline"

    def __init__(self, workdir: Path, form_parsing: bool = True):
        super().__init__(workdir)
        self.form_parsing = form_parsing

    def args(self) -> list[str]:
        return [sys.executable, str(BASELINE), str(self.port)] + ([] if self.form_parsing else ["--no-form-parsing"])


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


def write_config(path: Path, forward_url: str | None = None, metrics: bool = False) -> Path:
    lines = ["server:", "  metrics: true"] if metrics else []
    lines += ["channels:", f"  - name: {CHANNEL}", f"    token: {TOKEN}"]
    if forward_url is not None:
        lines += ["    forward:", f"      url: {forward_url!r}", "      interval-seconds: 1"]
    path.write_text("\n".join(lines) + "\n")
    return path


def create_db(path: Path, pending: int) -> None:
    """A kwp database (schema from kwp itself) holding pending webhooks,
    written in one transaction."""
    from kwp.storage.sqlite import SQLiteStorage

    SQLiteStorage(str(path), reactor=None).prepare()
    connection = sqlite3.connect(path)
    try:
        now = time.time()
        with connection:
            connection.executemany(
                "INSERT INTO webhooks (channel, headers, body, received_at) VALUES (?, ?, ?, ?)",
                ((CHANNEL, STORED_HEADERS, BODY, now) for _ in range(pending)),
            )
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()


def count_rows(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT COUNT(*) FROM webhooks").fetchone()[0]
    finally:
        connection.close()


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


def run_wrk(url: str, seconds: int, connections: int) -> WrkResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA), url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
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


def bench_receive(args, work: Path, report: Report) -> None:
    """The baseline, the baseline without form parsing (kwp turns it off
    too; shown for comparison, not judged), kwp on an empty database and kwp
    with N pending, in a rotating order each round."""
    report.say(
        f"== durable receive: {args.rounds} rounds x {args.seconds}s, wrk -t1 -c{args.connections}, "
        f"{len(BODY)}-byte JSON body"
    )
    config = write_config(work / "receive.yml")
    full_template = work / "pending-template.db"
    started = time.monotonic()
    create_db(full_template, args.pending)
    report.say(f"  filled a database with {args.pending:,} pending webhooks in {time.monotonic() - started:.1f}s")
    kinds = ["baseline", "kwp", "kwp-pending", "baseline-noform"]
    rps: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    idle: dict[str, list[int]] = {k: [] for k in kinds}
    peak: dict[str, list[int]] = {k: [] for k in kinds}
    for round_no in range(args.rounds):
        order = kinds[round_no % len(kinds) :] + kinds[: round_no % len(kinds)]
        for kind in order:
            db = work / f"receive-{round_no}-{kind}.db"
            before = 0
            if kind.startswith("baseline"):
                server = Baseline(work, form_parsing=kind == "baseline")
            else:
                if kind == "kwp-pending":
                    shutil.copyfile(full_template, db)
                    before = args.pending
                server = Kwp(work, config, db)
            server.start()
            try:
                time.sleep(args.settle)
                idle[kind].append(server.rss_kb())
                cpu_before = server.cpu_seconds()
                result = run_wrk(server.url(f"/api/webhook/{CHANNEL}"), args.seconds, args.connections)
                cpu[kind].append((server.cpu_seconds() - cpu_before) / max(result.answered, 1) * 1e6)
                peak[kind].append(server.peak_kb())
            finally:
                server.stop()
            rps[kind].append(result.rps)
            report.say(
                f"  round {round_no + 1} {kind:12s} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.1f} ms  "
                f"p99 {result.p99_ms:6.1f} ms  CPU {cpu[kind][-1]:4.0f} us/req  idle RSS {idle[kind][-1] / 1024:5.1f} MB  "
                f"loaded RSS {peak[kind][-1] / 1024:5.1f} MB"
            )
            if kind.startswith("kwp"):
                honesty(report, kind, result, count_rows(db) - before)
                db.unlink()
        report.say(
            f"  round {round_no + 1} ratios: kwp/baseline {rps['kwp'][-1] / rps['baseline'][-1]:.2f}  "
            f"pending/empty {rps['kwp-pending'][-1] / rps['kwp'][-1]:.2f}  "
            f"(kwp/baseline-noform {rps['kwp'][-1] / rps['baseline-noform'][-1]:.2f})   load {load()}"
        )
    full_template.unlink()
    receive_ratio = median([k / b for k, b in zip(rps["kwp"], rps["baseline"])])
    pending_ratio = median([p / k for p, k in zip(rps["kwp-pending"], rps["kwp"])])
    idle_ratio = median([k / b for k, b in zip(idle["kwp"], idle["baseline"])])
    noform_ratio = median([k / b for k, b in zip(rps["kwp"], rps["baseline-noform"])])
    report.say(
        f"  median: baseline {median(rps['baseline']):.0f} req/s, kwp {median(rps['kwp']):.0f} req/s, "
        f"kwp with {args.pending:,} pending {median(rps['kwp-pending']):.0f} req/s; "
        f"baseline without form parsing {median(rps['baseline-noform']):.0f} req/s "
        f"(kwp/that {noform_ratio:.2f}, not a target)"
    )
    report.say(
        f"  median CPU per request (server process, all threads): baseline {median(cpu['baseline']):.0f} us, "
        f"baseline without form parsing {median(cpu['baseline-noform']):.0f} us, "
        f"kwp {median(cpu['kwp']):.0f} us, kwp with {args.pending:,} pending {median(cpu['kwp-pending']):.0f} us"
    )
    report.say(
        f"  median RSS: idle baseline {median(idle['baseline']) / 1024:.1f} MB, kwp {median(idle['kwp']) / 1024:.1f} MB; "
        f"loaded baseline {median(peak['baseline']) / 1024:.1f} MB, kwp {median(peak['kwp']) / 1024:.1f} MB"
    )
    report.judge("receive", None if args.quick else receive_ratio >= 0.8, f"{receive_ratio:.2f}x (median of rounds)")
    report.judge("idle_rss", None if args.quick else idle_ratio <= 1.3, f"{idle_ratio:.2f}x")
    report.judge(
        "pending", None if args.quick else pending_ratio >= 0.9, f"{pending_ratio:.2f}x with {args.pending:,} pending"
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


def bench_drain(args, work: Path, report: Report) -> None:
    report.say(f"== drain: one GET of a {args.drain:,}-webhook backlog, streamed, {args.drain_rounds} rounds")
    config = write_config(work / "drain.yml")
    growths, rates = [], []
    for round_no in range(args.drain_rounds):
        db = work / f"drain-{round_no}.db"
        create_db(db, args.drain)
        kwp = Kwp(work, config, db).start()
        try:
            time.sleep(args.settle)
            idle = kwp.rss_kb()
            sampler = RssSampler(kwp.pid, args.drain_timeout)
            sampler.start()
            started = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", kwp.port, timeout=args.drain_timeout)
            connection.request("GET", f"/api/webhook/{CHANNEL}", headers={"Authorization": f"Bearer {TOKEN}"})
            response = connection.getresponse()
            chunks = []
            while chunk := response.read(256 * 1024):
                chunks.append(chunk)
            elapsed = time.monotonic() - started
            connection.close()
            sampler.done.set()
            sampler.join()
        finally:
            kwp.stop()
        items = json.loads(b"".join(chunks)) if response.status == 200 else []
        left = count_rows(db)
        db.unlink()
        growth = (sampler.largest - idle) / 1024
        rate = len(items) / elapsed
        growths.append(growth)
        rates.append(rate)
        ok = len(items) == args.drain and len({i["id"] for i in items}) == args.drain and left == 0
        report.honest &= ok
        report.say(
            f"  round {round_no + 1}: {len(items):,} webhooks in {elapsed:.2f}s = {rate:,.0f}/s, RSS idle "
            f"{idle / 1024:.1f} MB, peak {sampler.largest / 1024:.1f} MB (+{growth:.1f} MB); "
            f"left in the database {left} -> {'OK' if ok else 'MISMATCH'}   load {load()}"
        )
    growth, rate = median(growths), median(rates)
    report.judge("drain_rss", None if args.quick else growth < 60, f"+{growth:.1f} MB (median)")
    report.judge("drain_rate", None if args.quick else rate >= 20000, f"{rate:,.0f} webhooks/s (median)")


def post_webhook(port: int, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", f"/api/webhook/{CHANNEL}", body=body, headers={"Content-Type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def bench_longpoll(args, work: Path, report: Report) -> None:
    """A client holds GET ?wait=30; once it is parked, another POSTs; the
    figure is the time from sending the POST to the long-poll's answer."""
    report.say(f"== long-poll wake: {args.polls} times GET ?wait=30, then one POST")
    kwp = Kwp(work, write_config(work / "poll.yml"), work / "poll.db").start()
    wakes, posts = [], []
    try:
        for n in range(args.polls):
            connection = http.client.HTTPConnection("127.0.0.1", kwp.port, timeout=40)
            connection.request("GET", f"/api/webhook/{CHANNEL}?wait=30", headers={"Authorization": f"Bearer {TOKEN}"})
            answer: dict = {}

            def read(connection=connection, answer=answer):
                response = connection.getresponse()
                answer["body"] = response.read()
                answer["at"] = time.perf_counter()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            time.sleep(0.05)
            sent = time.perf_counter()
            status = post_webhook(kwp.port, b'{"n":%d}' % n)
            posts.append((time.perf_counter() - sent) * 1000)
            reader.join(35)
            connection.close()
            items = json.loads(answer.get("body", b"[]"))
            if status != 200 or [i["payload"] for i in items] != [{"n": n}]:
                report.honest = False
                report.say(f"  poll {n}: POST {status}, long-poll got {items!r} -> MISMATCH")
                continue
            wakes.append((answer["at"] - sent) * 1000)
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
    create_db(template, args.scrape_pending)
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
            honesty(report, kind, result, count_rows(db) - args.scrape_pending)
            db.unlink()
    template.unlink()
    ratio = median([s / q for s, q in zip(p99["scraped"], p99["quiet"])])
    report.judge("scrape", None if args.quick else ratio <= 2, f"p99 {ratio:.2f}x (median of rounds)")


SECTIONS = {
    "receive": bench_receive,
    "drain": bench_drain,
    "longpoll": bench_longpoll,
    "forward": bench_forward,
    "scrape": bench_scrape,
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny counts and 1-second runs; targets not judged")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved receive rounds (5)")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per server and round (10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--pending", type=int, default=1_000_000, help="webhooks pending for the full-database rounds")
    parser.add_argument("--drain", type=int, default=100_000, help="backlog drained by one GET (100,000)")
    parser.add_argument("--drain-rounds", type=int, default=3)
    parser.add_argument("--drain-timeout", type=float, default=120, help="seconds a drain may take at most")
    parser.add_argument("--polls", type=int, default=50, help="long-poll wakes and forwards measured (50)")
    parser.add_argument("--scrape-pending", type=int, default=400_000, help="webhooks pending while scraped (400,000)")
    parser.add_argument("--scrape-rounds", type=int, default=3, help="rounds of receive with and without scrapers (3)")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between one scraper's scrapes (1)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between start and the idle RSS reading")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.connections = 1, 1, 8
        args.pending, args.drain, args.drain_rounds, args.polls, args.settle = 2000, 1000, 1, 5, 0.3
        args.scrape_pending, args.scrape_rounds, args.scrape_interval = 2000, 1, 0.2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    report = Report()
    report.say(
        f"kwp benchmark{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"load at start {load()}"
    )
    report.say(f"  uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    with tempfile.TemporaryDirectory(prefix="kwp-bench-") as tmp:
        for name, section in SECTIONS.items():
            if args.only is None or name in args.only:
                section(args, Path(tmp), report)
    report.say(f"== summary (load at end {load()})")
    for key, ok in report.verdicts.items():
        report.say(f"  {'n/a ' if ok is None else ('PASS' if ok else 'FAIL')}  {TARGETS[key]}")
    report.say(f"  {'PASS' if report.honest else 'FAIL'}  honesty: every 2xx stored, every drained webhook returned once")
    failed = not report.honest or any(ok is False for ok in report.verdicts.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
