"""kwp's receive path in process, for profilers.

N POSTs of the benchmark's body are fed to kwp's own service, built by
``kwp.tap.makeService`` as ``twistd kwp`` builds it (a temporary config and
database, the real SQLite storage and its writer thread, the text access
log, here written to /dev/null), over in-memory transports: WAVE connections
at a time, each wave answered before the next is fed, so every wave is one
batch of the storage's group commit.  No socket, no client, no other
process: under callgrind the instruction counts repeat from run to run.

    python bench/receive_loop.py --requests 5000     # CPU time per request
    python bench/receive_loop.py --callgrind         # instructions per request
    python bench/receive_loop.py --callgrind --fanout   # with three filtered consumers
    python bench/receive_loop.py --callgrind --bare     # bench/bare.py's floor instead of kwp
    python bench/receive_loop.py --callgrind --postgresql postgresql://postgres@127.0.0.1/test
                                  # on a new database of that server (kwp's instructions only)

--callgrind runs this script twice under ``valgrind --tool=callgrind``, with
--requests N and 2N, and prints the difference of the two totals divided by
N: the instructions of one receive, start-up and shut-down cancelled out,
in all and by thread (the reactor's, the storage's writer).  The output
files, one per thread, stay in --out for callgrind_annotate.  See
docs/PERFORMANCE.md, "Profiling".
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

BENCH = Path(__file__).resolve().parent
CHANNEL = "bench"
BODY = (BENCH / "post.lua").read_text().split("wrk.body = '", 1)[1].split("'", 1)[0].encode()
REQUEST = (
    b"POST /api/webhook/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"User-Agent: kwp-bench\r\nX-GitHub-Event: pull_request\r\nContent-Length: %d\r\n\r\n%s"
) % (CHANNEL.encode(), len(BODY), BODY)
CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")


class Transport(StringTransport):
    """One connection's far end: reports the status of each complete answer."""

    def __init__(self, answered):
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self._answered = answered
        self._buffer = b""

    def write(self, data):
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = self._buffer[:end]
            length = CONTENT_LENGTH.search(head)
            if length is None:
                raise RuntimeError(f"an answer without Content-Length: {head!r}")
            if len(self._buffer) < end + 4 + int(length.group(1)):
                return
            self._buffer = self._buffer[end + 4 + int(length.group(1)) :]
            self._answered(int(head[9:12]))

    def writeSequence(self, data):
        self.write(b"".join(data))


class Loop:
    """Feeds the requests wave by wave; done fires with the refused count."""

    def __init__(self, reactor, site, requests: int, wave: int):
        self.reactor = reactor
        self.left = requests
        self.waiting = 0
        self.refused = 0
        self.done = Deferred()
        self.protocols = []
        for port in range(wave):
            protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000 + port))
            protocol.makeConnection(Transport(self.answered))
            self.protocols.append(protocol)

    def feed(self) -> None:
        wave = self.protocols[: min(len(self.protocols), self.left)]
        self.left -= len(wave)
        self.waiting = len(wave)
        for protocol in wave:
            protocol.dataReceived(REQUEST)

    def answered(self, status: int) -> None:
        self.refused += status != 200
        self.waiting -= 1
        if self.waiting:
            return
        # Called from inside the answer's write: the next step waits for
        # the request to finish.
        if self.left:
            self.reactor.callLater(0, self.feed)
        else:
            self.reactor.callLater(0, self.done.callback, self.refused)

    def close(self) -> None:
        for protocol in self.protocols:
            protocol.connectionLost(Failure(ConnectionDone()))


class Bare:
    """bench/bare.py's Site in place of kwp's service: the floor of the
    benchmark, fed the same requests."""

    def __init__(self):
        from bare import QuietSite, Receive

        self.site = QuietSite(Receive(), parsePOSTFormSubmission=False)

    def startService(self) -> None:
        pass

    def stopService(self) -> Deferred:
        return succeed(None)


def run(requests: int, wave: int, fanout: bool = False, bare: bool = False, postgresql: str | None = None) -> dict:
    from twisted.internet import reactor

    from kwp.tap import Options, makeService

    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="kwp-loop-") as tmp:
        config = Path(tmp) / "kwp.yml"
        config.write_text(f"channels:\n  - name: {CHANNEL}\n    token: loop-read-token\n")
        if fanout:
            from run import FANOUT_CONSUMERS

            config.write_text(config.read_text() + FANOUT_CONSUMERS)
        databases = None
        database = str(Path(tmp) / "kwp.db")
        if postgresql is not None:
            from kwpdb import PostgresDatabases

            databases = PostgresDatabases(postgresql)
            database = databases.create()
        options = Options()
        options.parseOptions(["--config", str(config), "--database", database, "--listen", "tcp:0:interface=127.0.0.1"])
        sys.stdout = open(os.devnull, "w")
        service = Bare() if bare else makeService(options, reactor)

        async def drive():
            service.startService()
            try:
                loop = Loop(reactor, service.site, requests, wave)
                started, cpu = time.perf_counter(), time.process_time()
                loop.feed()
                result["refused"] = await loop.done
                result["seconds"] = time.perf_counter() - started
                result["cpu"] = time.process_time() - cpu
                loop.close()
            finally:
                await service.stopService()
                reactor.stop()

        def start():
            Deferred.fromCoroutine(drive()).addErrback(lambda f: (result.update(error=f.getTraceback()), reactor.stop()))

        reactor.callWhenRunning(start)
        reactor.run()
        sys.stdout = sys.__stdout__
        if databases is not None:
            databases.drop_all()
    if "error" in result:
        raise SystemExit(result["error"])
    return result


def callgrind_totals(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def callgrind(args) -> None:
    out = Path(args.out or tempfile.mkdtemp(prefix="kwp-callgrind-"))
    out.mkdir(parents=True, exist_ok=True)
    # A fixed hash seed: dict and set layouts, and so the counts, repeat.
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    totals: dict[int, dict[str, int]] = {}
    for requests in (args.requests, 2 * args.requests):
        path = out / f"callgrind.out.{requests}"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={path}",
                sys.executable,
                __file__,
                "--requests",
                str(requests),
                "--wave",
                str(args.wave),
                *(["--fanout"] if args.fanout else []),
                *(["--bare"] if args.bare else []),
                *(["--postgresql", args.postgresql] if args.postgresql else []),
            ],
            env=environment,
            check=True,
            stderr=subprocess.DEVNULL,
        )
        # One file per thread, path-01 (the reactor's) first.
        totals[requests] = {
            part.name.rpartition("-")[2]: callgrind_totals(part) for part in sorted(out.glob(f"{path.name}-*"))
        }
    first, second = totals[args.requests], totals[2 * args.requests]
    per_thread = {t: (second[t] - first.get(t, 0)) / args.requests for t in second}
    print(
        f"callgrind: {sum(first.values()):,} instructions for {args.requests} receives, "
        f"{sum(second.values()):,} for {2 * args.requests}: {sum(per_thread.values()):,.0f} per receive; "
        f"by thread: {', '.join(f'{t} {n:,.0f}' for t, n in per_thread.items())} (01 is the reactor's; "
        f"files in {out})"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=None, help="receives (5000; with --callgrind 1000 and 2000)")
    parser.add_argument("--wave", type=int, default=50, help="connections fed at a time, one request each (50)")
    parser.add_argument("--callgrind", action="store_true", help="instructions per receive under callgrind")
    parser.add_argument(
        "--fanout", action="store_true", help="the three filtered consumers of bench/run.py's fanout section"
    )
    parser.add_argument("--bare", action="store_true", help="bench/bare.py's twisted.web Resource instead of kwp")
    parser.add_argument("--postgresql", help="a PostgreSQL server: kwp stores in a new database there")
    parser.add_argument("--out", help="where --callgrind keeps its output files (a new temporary folder)")
    args = parser.parse_args(argv)
    if args.callgrind:
        args.requests = args.requests or 1000
        callgrind(args)
        return
    args.requests = args.requests or 5000
    result = run(args.requests, args.wave, args.fanout, args.bare, args.postgresql)
    print(
        f"{args.requests} receives in waves of {args.wave}: {result['seconds']:.2f}s, "
        f"{args.requests / result['seconds']:,.0f}/s, CPU {result['cpu'] / args.requests * 1e6:.0f} us per receive "
        f"(all threads); refused {result['refused']}"
    )
    if result["refused"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
