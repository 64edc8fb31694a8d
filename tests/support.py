"""Test helpers: an in-process kwp on 127.0.0.1, and the real twistd daemon."""

from __future__ import annotations

import glob
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import pytest_twisted
import treq
import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import formatEvent
from urllib.parse import urlsplit

from kwp.config import parse_config
from kwp.storage import open_storage
from kwp.storage.postgres import PostgresStorage
from kwp.tap import make_app
from kwp.web import KwpSite

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))
# Debian's Chromium, which Playwright drives (make test installs it): the
# browser Playwright would download cannot be fetched here.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The exit statuses of a stop by SIGTERM: 0 only (stock twistd would end by
# re-raising the signal).
CLEAN_EXIT = (0,)


# The PostgreSQL server of the tests, and a database there that they may
# connect to; each test gets a database of its own (PostgresDatabases).
POSTGRES_URL = os.environ.get("KWP_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_url(name: str, base: str = POSTGRES_URL) -> str:
    """base with its database replaced by name."""
    return urlsplit(base)._replace(path="/" + name, query="").geturl()


class PostgresDatabases:
    """The PostgreSQL databases of one test process: a template migrated
    once, a fresh copy of it for each test (as Synapse's tests do), every
    one dropped at the end.  Databases of test processes that died are
    dropped when the next one starts."""

    def __init__(self, base: str = POSTGRES_URL):
        self.base = base
        self.prefix = f"kwp_test_{os.getpid()}_"
        self._count = 0
        self._template: str | None = None

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.base, autocommit=True)

    def sweep(self) -> None:
        with self._admin() as admin:
            names = [r[0] for r in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'kwp_test_%'")]
            for name in names:
                pid = name.split("_")[2]
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create(self, migrated: bool = True) -> str:
        """The URL of a new database (an empty one unless migrated)."""
        with self._admin() as admin:
            if migrated and self._template is None:
                self._template = self.prefix + "template"
                admin.execute(f'CREATE DATABASE "{self._template}"')
                PostgresStorage(postgres_url(self._template, self.base), reactor).prepare()
            self._count += 1
            name = f"{self.prefix}{self._count}"
            template = f' TEMPLATE "{self._template}"' if migrated else ""
            admin.execute(f'CREATE DATABASE "{name}"{template}')
        return postgres_url(name, self.base)

    def drop(self, url: str) -> None:
        with self._admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path[1:]}" WITH (FORCE)')

    def drop_all(self) -> None:
        with self._admin() as admin:
            names = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (self.prefix + "%",))
            for (name,) in list(names):
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PrivatePostgres:
    """A PostgreSQL server of one test's own, on a free 127.0.0.1 port with
    its data in a temp directory, for tests that stop and start it.  Run as
    the postgres user when the tests run as root (initdb refuses root)."""

    def __init__(self):
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        self.dir = Path(tempfile.mkdtemp(prefix="kwp-pg-"))
        self.port = free_port()
        self._as = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bin / program), *args], check=True, capture_output=True, timeout=60)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Backend:
    """One test's database on SQLite or PostgreSQL: storages started on it
    (stopped at the end) and SQL run on it directly."""

    def __init__(self, name: str, url: str):
        self.name = name
        self.url = url
        self._started: list = []

    def open(self):
        """A prepared storage service, not started."""
        return open_storage(self.url, reactor)

    def start(self):
        storage = self.open()
        storage.startService()
        self._started.append(storage)
        return storage

    def stop_all(self) -> None:
        for storage in self._started:
            if storage.running:
                pytest_twisted.blockon(storage.stopService())

    def execute(self, sql: str, args=()) -> list:
        """Rows of one statement in its own transaction (``?`` placeholders)."""
        if self.name == "sqlite":
            import sqlite3

            with sqlite3.connect(self.url) as connection:
                return connection.execute(sql, args).fetchall()
        with psycopg.connect(self.url) as connection:
            cursor = connection.execute(sql.replace("?", "%s"), args)
            return cursor.fetchall() if cursor.description else []


class KwpDatabases:
    """The databases of the kwp a test starts (the kwp_databases fixture)."""

    def __init__(self, create):
        self._create = create
        self._count = 0

    def new(self) -> str:
        """A SQLite path or a PostgreSQL URL, of a database not used yet."""
        self._count += 1
        return self._create(self._count)


# On a test about SQLite itself (its files, its migrations from older
# releases): the kwp_databases fixture gives SQLite databases only.
SQLITE_ONLY = pytest.mark.parametrize("kwp_databases", ["sqlite"], indirect=True)


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class LocalKwp:
    """kwp's Site on a real 127.0.0.1 port in this process (real reactor,
    a SQLite file or a PostgreSQL database), for tests of the HTTP layer including KwpRequest."""

    def __init__(self, config_data: dict, database: str, **site_options):
        self.config = parse_config(config_data)
        self.storage = open_storage(database, reactor)
        self.app = make_app(self.config, self.storage, reactor)
        self.forwarders = self.app.forwarders
        self.site = KwpSite(self.app, reactor, **site_options)
        self.port = None

    def start(self) -> None:
        self.storage.startService()
        self.forwarders.startService()
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")

    async def stop(self) -> None:
        await self.port.stopListening()
        await self.forwarders.stopService()
        await self.storage.stopService()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"

    async def post(self, channel: str, body, headers=None, **kwargs):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"}
        all_headers.update(headers or {})
        return await treq.post(self.url(f"/api/webhook/{channel}"), data=data, headers=all_headers, **kwargs)

    async def get(self, path: str, token: str | None = None, **kwargs):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await treq.get(self.url(path), headers=headers, **kwargs)


async def body_json(response):
    return json.loads(await response.content())


async def assert_error(response, status: int, code: str) -> dict:
    """response is the contract's JSON error: status, code and a message."""
    assert response.code == status
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    body = await body_json(response)
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


async def until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll condition() on the reactor until it holds, at most timeout
    seconds; it may return a bool or an awaitable of one."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


def sse_events(text: bytes | str) -> list[dict[str, str]]:
    """The fields of each block of a text/event-stream (comments left out;
    a block of comments only is no event)."""
    if isinstance(text, bytes):
        text = text.decode()
    found = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
        if fields:
            found.append(fields)
    return found


class SSEReader(Protocol):
    """Reads a response body as it arrives: ``response.deliverBody(reader)``
    on a ``treq.get(..., unbuffered=True)`` answer."""

    def __init__(self):
        self.received = b""
        self.closed = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)

    def events(self) -> list[dict[str, str]]:
        # Only complete blocks: the last one may still be arriving.
        return sse_events(self.received.rpartition(b"\n\n")[0])

    def webhooks(self) -> list[dict]:
        """The data of each event that carries a webhook (kwp's or smee's format)."""
        return [json.loads(e["data"]) for e in self.events() if "data" in e and e.get("event") in (None, "webhook")]

    def drop(self) -> None:
        """Close the connection from the client's side."""
        self.transport.stopProducing()


def metric_samples(text: bytes | str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of a Prometheus exposition."""
    if isinstance(text, bytes):
        text = text.decode()
    result: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return result


def scrape(metrics) -> dict[str, dict[tuple, float]]:
    """metric_samples of metrics.scrape(), whose storage answers at once."""
    done = []
    Deferred.fromCoroutine(metrics.scrape()).addCallback(done.append)
    assert done, "the scrape did not finish"
    return metric_samples(done[0])


class LogCapture:
    """A twisted.logger observer that keeps the events it sees."""

    def __init__(self):
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def text(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment twistd runs kwp in: this one, with this checkout on
    PYTHONPATH (where twistd finds the kwp plugin), and extra."""
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


class Daemon:
    """``twistd -n kwp`` as a user starts it, in its own working directory."""

    def __init__(self, workdir: Path, config_path: Path, db_path: Path | str, extra_args=(), env=None):
        self.workdir = workdir
        self.config_path = config_path
        self.db_path = db_path
        self.extra_args = list(extra_args)
        self.env = daemon_env(**(env or {}))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "kwp.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        return [
            TWISTD,
            "--pidfile=",
            "-n",
            "kwp",
            "--config",
            str(self.config_path),
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--database",
            str(self.db_path),
            *self.extra_args,
        ]

    def start(self, timeout: float = 15) -> "Daemon":
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args(), cwd=self.workdir, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kwp exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"kwp did not listen within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def memory_kib(self, key: str) -> int:
        """A memory figure of the process (VmRSS, VmHWM for the peak), in KiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(f"{key}:"))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if getattr(self, "log_file", None):
            self.log_file.close()


def daemon_in(workdir: Path, config_data: dict) -> Daemon:
    """A started daemon with its config and database in workdir."""
    return Daemon(workdir, write_config(workdir / "config.yml", config_data), workdir / "kwp.db").start()


# npm packages the tests run, installed once per machine.
NPM_CACHE = Path(tempfile.gettempdir()) / "kwp-tests-npm"


def npm_package(spec: str) -> Path:
    """The node_modules folder holding the npm package spec (name@version),
    installed by the machine's npm on first use.  A missing npm skips the
    test; an install that fails fails it."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    folder = NPM_CACHE / spec.replace("/", "+")
    modules = folder / "node_modules"
    if (folder / ".installed").exists():
        return modules
    # Installed beside, then moved in: parallel runs never see half an install.
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=NPM_CACHE))
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(work), spec],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"npm install {spec} failed:\n{result.stdout}\n{result.stderr}")
    (work / ".installed").touch()
    try:
        work.rename(folder)
    except OSError:
        # Another run installed it first.
        shutil.rmtree(work, ignore_errors=True)
    return modules
