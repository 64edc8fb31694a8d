"""End to end: the real `twistd -n kwp`, started and spoken to as a user does."""

from __future__ import annotations

import json
import os
import select
import signal
from datetime import datetime
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from twisted.python import usage

from kwp.tap import Options, bind_address_endpoint
from tests.conftest import BASIC_CONFIG
from tests.support import CLEAN_EXIT, ROOT, TWISTD, daemon_env, free_port, write_config



def http(method, url, body=None, headers=None, timeout=10):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post(d, channel, payload, headers=None):
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return http("POST", f"{d.base}/api/webhook/{channel}", json.dumps(payload).encode(), all_headers)


def pull(d, channel, token, query=""):
    status, body = http("GET", f"{d.base}/api/webhook/{channel}{query}", headers={"Authorization": f"Bearer {token}"})
    assert status == 200, body
    return json.loads(body)


def test_receive_pull_and_restart_keeps_what_was_stored(daemon):
    d = daemon()
    for n in range(3):
        status, body = post(d, "github", {"n": n}, {"X-Hub-Signature-256": "gh-secret"})
        assert status == 200, body
    status, body = post(d, "github", {"n": 9}, {"X-Hub-Signature-256": "nope"})
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    assert [i["payload"] for i in pull(d, "github", "github-token", "?limit=1")] == [{"n": 0}]

    assert d.stop() in CLEAN_EXIT
    d.start()
    items = pull(d, "github", "admin-secret-token")
    assert [i["payload"] for i in items] == [{"n": 1}, {"n": 2}]
    assert items[0]["headers"]["x-hub-signature-256"] == "gh-secret"
    assert pull(d, "github", "github-token") == []


def test_sigterm_lets_a_held_long_poll_finish_and_exits_zero(daemon):
    d = daemon()
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(b"GET /api/webhook/open?wait=30 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer open-token\r\n\r\n")
        time.sleep(0.3)
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert d.proc.wait(15) in CLEAN_EXIT
        assert time.monotonic() - started < 10
    assert "kwp stopped" in d.log()


def test_bad_config_stops_startup_with_a_clear_line_before_binding(tmp_path):
    config = write_config(tmp_path / "bad.yml", {"channels": [{"name": "x", "api-read-tokn": "t"}]})
    port = free_port()
    result = subprocess.run(
        [TWISTD, "--pidfile=", "-n", "kwp", "-c", str(config), "-l", f"tcp:{port}:interface=127.0.0.1",
         "-d", str(tmp_path / "k.db")],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, env=daemon_env(),
    )
    assert result.returncode != 0
    assert "channels[0] (x): key 'api-read-tokn': unknown key (did you mean 'api-read-token'?)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "k.db").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-d", "{tmp}/file/sub/kwp.db"], "cannot open database"),
        (["-l", "nonsense:1"], "invalid --listen endpoint"),
        (["--log-format", "xml"], "--log-format must be text or json"),
        (["-c", "{tmp}/missing.yml"], "cannot read the file"),
    ],
)
def test_startup_failures_exit_non_zero(tmp_path, args, message):
    (tmp_path / "file").write_text("")
    config = write_config(tmp_path / "config.yml", BASIC_CONFIG)
    base = ["-c", str(config), "-d", str(tmp_path / "ok.db"), "-l", f"tcp:{free_port()}:interface=127.0.0.1"]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = subprocess.run(
        [TWISTD, "--pidfile=", "-n", "kwp", *base, *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, env=daemon_env(),
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "daemonized"])
def test_a_port_in_use_stops_startup_with_one_line(tmp_path, foreground):
    config = write_config(tmp_path / "config.yml", BASIC_CONFIG)
    pidfile = tmp_path / "twistd.pid"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [TWISTD, "--pidfile", str(pidfile), *(["-n"] if foreground else []), "kwp", "-c", str(config),
             "-l", f"tcp:{port}:interface=127.0.0.1", "-d", str(tmp_path / "k.db")],
            cwd=tmp_path, capture_output=True, text=True, timeout=30, env=daemon_env(),
        )
    assert result.returncode == 1
    message = f"kwp: cannot listen on 127.0.0.1:{port}: Address already in use"
    if foreground:
        assert result.stderr == message + "\n"
    else:
        # twistd's parent prints what the daemon told it, and points at the log.
        assert message in result.stderr and len(result.stderr.splitlines()) == 2
        # The daemon logs its failure as it exits, after its parent returned.
        log = tmp_path / "twistd.log"
        deadline = time.monotonic() + 10
        while message not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert message in log.read_text()
    assert "Traceback" not in result.stdout + result.stderr
    assert not pidfile.exists()


def test_json_logs_one_line_per_request_without_secrets(daemon):
    d = daemon(extra_args=["--log-format", "json", "--log-level", "info"])
    post(d, "github", {"private": "payload-text"}, {"X-Hub-Signature-256": "gh-secret"})
    pull(d, "github", "github-token")
    http("GET", f"{d.base}/api/webhook/github?token=query-secret", headers={"Authorization": "Bearer wrong-token"})
    d.stop()
    lines = [line for line in d.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) and {"time", "level", "namespace", "message"} <= set(r) for r in records)
    assert all(not isinstance(value, (dict, list)) for r in records for value in r.values())
    requests = [r for r in records if r["namespace"] == "kwp.web" and "status" in r]
    assert [(r["method"], r["path"], r["status"], r["channel"], r["level"]) for r in requests] == [
        ("POST", "/api/webhook/github", 200, "github", "info"), ("GET", "/api/webhook/github", 200, "github", "info"),
        ("GET", "/api/webhook/github", 401, "github", "info")]
    assert all(isinstance(r["duration_ms"], float) and isinstance(r["size"], int) for r in requests)
    assert requests[0]["message"].startswith("POST /api/webhook/github 200 ")
    assert datetime.fromisoformat(requests[0]["time"].replace("Z", "+00:00")).tzinfo is not None
    text = d.log()
    assert not [key for r in records for key in r if key.startswith("log_")]
    for raw in ("log_flattened", "__class_uuid__", "{path}", "{method}"):
        assert raw not in text
    for secret in ("gh-secret", "github-token", "payload-text", "query-secret", "wrong-token"):
        assert secret not in text


def test_text_logs_one_line_per_request_as_the_logger_prints_them(daemon):
    d = daemon()
    post(d, "open", {"private": "payload-text"})
    pull(d, "open", "open-token")
    # The channel name is percent-decoded: %0A would be a line of its own.
    forged = "nope%0A2026-01-01T00:00:00%2B0000%20[kwp.web%23info]%20forged%0D"
    assert post(d, forged, {})[0] == 404
    d.stop()
    lines = d.log().splitlines()
    requests = [line for line in lines if " [kwp.web#info] " in line]
    assert [line.split(" [kwp.web#info] ")[1].split()[:3] for line in requests] == [
        ["POST", "/api/webhook/open", "200"], ["GET", "/api/webhook/open", "200"], ["POST", f"/api/webhook/{forged}", "404"]]
    assert requests[2].endswith(" channel=nope\\n2026-01-01T00:00:00+0000 [kwp.web#info] forged\\r")
    stamp = lines[0].split(" ")[0]
    assert all(len(line.split(" ")[0]) == len(stamp) for line in requests)
    assert all(line.startswith((stamp[:4], "\t")) for line in lines), lines
    assert "payload-text" not in d.log()


# Runs a command that daemonizes (twistd without -n) as this process's child
# subreaper, so that the daemon, orphaned by twistd's double fork, is its
# child: it prints the status twistd's first process exits with, then waits
# for the daemon named in the pidfile and prints the daemon's exit status.
_REAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
with open(sys.argv[1] + ".out", "w") as out:
    print(subprocess.run(sys.argv[2:], stdout=out, stderr=out).returncode, flush=True)
with open(sys.argv[1]) as f:
    pid = int(f.read())
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def _line(proc: subprocess.Popen, timeout: float = 15) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else f"(nothing within {timeout}s)"


@pytest.mark.parametrize("logfile", [None, "logs/custom.log"])
def test_a_daemon_logs_to_its_log_file_and_exits_zero_on_sigterm(tmp_path, logfile):
    config = write_config(tmp_path / "config.yml", BASIC_CONFIG)
    port = free_port()
    pidfile = tmp_path / "twistd.pid"
    args = ["--pidfile", str(pidfile)] + ([f"--logfile={tmp_path / logfile}"] if logfile else [])
    (tmp_path / "logs").mkdir()
    reaper = subprocess.Popen(
        [sys.executable, "-c", _REAPER, str(pidfile), TWISTD, *args, "kwp", "-c", str(config),
         "-l", f"tcp:{port}:interface=127.0.0.1", "-d", str(tmp_path / "kwp.db")],
        cwd=tmp_path, env=daemon_env(), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert _line(reaper) == "0\n", (tmp_path / "twistd.pid.out").read_text()
        status, body = post(_Base(port), "open", {"n": 1})
        assert status == 200, body
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
        assert _line(reaper) == "0\n"
        assert reaper.wait(15) == 0
    finally:
        if reaper.poll() is None and pidfile.exists():
            # Not reaped yet, so the pid is still the daemon's.
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        reaper.kill()
    log = (tmp_path / (logfile or "twistd.log")).read_text()
    assert " [kwp.web#info] POST /api/webhook/open 200 " in log
    assert "kwp stopped" in log
    if logfile:
        assert not (tmp_path / "twistd.log").exists()


class _Base:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"


def test_environment_configures_the_tac_file(tmp_path):
    config = write_config(tmp_path / "config.yml", BASIC_CONFIG)
    port = free_port()
    env = daemon_env(
        KWP_CONFIG=str(config),
        BIND_ADDRESS=f"127.0.0.1:{port}",
        DATABASE_URL=f"sqlite:///{tmp_path}/tac.db",
    )
    proc = subprocess.Popen([TWISTD, "--pidfile=", "-ny", str(ROOT / "kwp.tac")], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                status, body = http("GET", f"http://127.0.0.1:{port}/api/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("twistd -ny kwp.tac did not answer within 15s")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert (tmp_path / "tac.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) in CLEAN_EXIT


def test_options_precedence():
    env = {"KWP_CONFIG": "env.yml", "CONFIG_FILE": "legacy.yml", "DATABASE_URL": "db.sqlite",
           "KWP_LOG_LEVEL": "WARN", "BIND_ADDRESS": "0.0.0.0:9000"}
    options = Options(environ=env)
    options.parseOptions(["--database", "cli.db"])
    assert options["config"] == "env.yml"
    assert options["database"] == "cli.db"
    assert options["log-level"] == "warn"
    assert options["log-format"] == "text"
    assert options["listen"] == ["tcp:9000:interface=0.0.0.0"]

    options = Options(environ={"KWP_LISTEN": "tcp:1", "BIND_ADDRESS": "x:2"})
    options.parseOptions(["-l", "tcp:7:interface=127.0.0.1", "-l", "unix:/tmp/k.sock"])
    assert options["listen"] == ["tcp:7:interface=127.0.0.1", "unix:/tmp/k.sock"]
    assert options["config"] == "config.yml" and options["database"] == "data/kwp.db"

    with pytest.raises(usage.UsageError):
        Options(environ={}).parseOptions(["--log-level", "loud"])
    assert bind_address_endpoint("[::1]:8080") == "tcp:8080:interface=\\:\\:1"
    with pytest.raises(usage.UsageError):
        bind_address_endpoint("8080")


def test_timeout_options():
    options = Options(environ={})
    options.parseOptions([])
    assert (options["receive-timeout"], options["idle-timeout"]) == (60, 30)
    options = Options(environ={})
    options.parseOptions(["--receive-timeout", "2.5", "--idle-timeout", "1"])
    assert (options["receive-timeout"], options["idle-timeout"]) == (2.5, 1.0)
    for bad in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(usage.UsageError):
            Options(environ={}).parseOptions(["--idle-timeout", bad])
