from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from tests.forward_support import Target
from tests.support import Daemon, LocalKwp, LogCapture, write_config

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


@pytest.fixture
def local_kwp(tmp_path):
    """Start kwp's Site in this process: local_kwp(config_dict=BASIC_CONFIG,
    receive_timeout=..., idle_timeout=...)."""
    started = []

    def start(config_data=BASIC_CONFIG, **site_options):
        kwp = LocalKwp(config_data, tmp_path / f"kwp{len(started)}.db", **site_options)
        kwp.start()
        started.append(kwp)
        return kwp

    yield start
    for kwp in started:
        pytest_twisted.blockon(defer.ensureDeferred(kwp.stop()))


@pytest.fixture
def target():
    """A local forward target on 127.0.0.1: target(port=0)."""
    targets = []

    def start(port=0):
        t = Target().listen(port)
        targets.append(t)
        return t

    yield start
    for t in targets:
        pytest_twisted.blockon(defer.ensureDeferred(t.stop()))


@pytest.fixture
def daemon(tmp_path):
    """Start the real `twistd -n kwp`: daemon(config_dict, extra_args=...)."""
    started = []

    def start(config_data=BASIC_CONFIG, extra_args=(), env=None, db_name="kwp.db"):
        config_path = write_config(tmp_path / "config.yml", config_data)
        d = Daemon(tmp_path, config_path, tmp_path / db_name, extra_args, env).start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


@pytest.fixture
def captured_log():
    """What this process logs during the test: captured_log.events, .text()."""
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)
