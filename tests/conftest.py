from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from tests.forward_support import Target
from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Backend,
    Daemon,
    KwpDatabases,
    LocalKwp,
    LogCapture,
    PostgresDatabases,
    write_config,
)

BASIC_CONFIG = {
    "server": {"admin-token": "admin-secret-token"},
    "channels": [
        {
            "name": "github",
            "api-read-token": "github-token",
            "webhook-secret": "gh-secret",
            "secret-header": "X-Hub-Signature-256",
        },
        {"name": "open", "token": "open-token"},
        {"name": "small", "token": "small-token", "max-body-size": 1000},
    ],
}


def _tracked(make, stop):
    """The body of a fixture whose value starts things: make(...) each time
    the test calls it, stop(thing) for each of them at teardown."""
    started = []

    def start(*args, **kwargs):
        started.append(make(*args, **kwargs))
        return started[-1]

    yield start
    for thing in started:
        stop(thing)


def _blockon_stop(thing) -> None:
    pytest_twisted.blockon(defer.ensureDeferred(thing.stop()))


@pytest.fixture(params=["sqlite", "postgresql"])
def kwp_databases(request, tmp_path):
    """The databases of the kwp a test starts, on each backend in turn:
    kwp_databases.new() is a SQLite file in tmp_path (kwp.db first) or a
    PostgreSQL database of the test's own.  A test about SQLite only says so with
    tests.support.SQLITE_ONLY."""
    if request.param == "sqlite":
        yield KwpDatabases(lambda n: str(tmp_path / ("kwp.db" if n == 1 else f"kwp{n}.db")))
        return
    postgres = request.getfixturevalue("postgres_databases")
    created = []

    def create(_):
        created.append(postgres.create())
        return created[-1]

    yield KwpDatabases(create)
    for url in created:
        postgres.drop(url)


@pytest.fixture
def local_kwp(kwp_databases):
    """Start kwp's Site in this process: local_kwp(config_dict=BASIC_CONFIG,
    receive_timeout=..., idle_timeout=...)."""

    def make(config_data=BASIC_CONFIG, **site_options):
        kwp = LocalKwp(config_data, kwp_databases.new(), **site_options)
        kwp.start()
        return kwp

    yield from _tracked(make, _blockon_stop)


@pytest.fixture
def target():
    """A local forward target on 127.0.0.1: target(port=0, tls=None)."""
    yield from _tracked(lambda port=0, tls=None: Target().listen(port, tls), _blockon_stop)


@pytest.fixture
def daemon(tmp_path, kwp_databases):
    """Start the real `twistd -n kwp`: daemon(config_dict, extra_args=...);
    the daemons of one test share its database (db_name: a SQLite file of
    that name in tmp_path instead)."""
    database = kwp_databases.new()

    def make(config_data=BASIC_CONFIG, extra_args=(), env=None, db_name=None):
        config_path = write_config(tmp_path / "config.yml", config_data)
        db = database if db_name is None else tmp_path / db_name
        return Daemon(tmp_path, config_path, db, extra_args, env).start()

    yield from _tracked(make, Daemon.kill)


@pytest.fixture(scope="session")
def postgres_databases():
    """Creates a database of its own for each test that asks."""
    databases = PostgresDatabases()
    databases.sweep()
    yield databases
    databases.drop_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """The test's database on each backend: backend.start() gives a started
    storage service on it, backend.execute(sql) runs SQL on it."""
    if request.param == "sqlite":
        b = Backend("sqlite", str(tmp_path / "kwp.db"))
        yield b
        b.stop_all()
        return
    databases = request.getfixturevalue("postgres_databases")
    b = Backend("postgresql", databases.create())
    yield b
    b.stop_all()
    databases.drop(b.url)


@pytest.fixture
def captured_log():
    """What this process logs during the test: captured_log.events, .text()."""
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


@pytest.fixture(scope="module")
def browser():
    """Chromium driven by Playwright, one per test module."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
