"""The files of deploy/ parse with the tools that read them, where those tools
are installed; TLS through a Twisted endpoint string works for real."""

from __future__ import annotations

import http.client
import os
import pwd
import re
import shutil
import ssl
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from twisted.internet.task import Clock

from kwp.config import parse_config
from kwp.ops import Metrics
from kwp.storage import QueueStats
from tests.fakes import FakeStorage
from tests.support import ROOT, free_port, scrape

DEPLOY = ROOT / "deploy"
VENV = Path(sys.executable).parent.parent


def test_systemd_unit_and_tls_drop_in_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "kwp.service"
    # verify checks that ExecStart exists: point it at this virtualenv.
    unit.write_text((DEPLOY / "kwp.service").read_text().replace("/opt/kwp/.venv", str(VENV)))
    (tmp_path / "kwp.service.d").mkdir()
    shutil.copy(DEPLOY / "kwp-tls.conf", tmp_path / "kwp.service.d" / "tls.conf")
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in result.stderr.splitlines() if "kwp.service" in line or "tls.conf" in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


def test_systemd_template_unit_for_several_nodes_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "kwp@.service"
    unit.write_text((DEPLOY / "kwp@.service").read_text().replace("/opt/kwp/.venv", str(VENV)))
    instance = tmp_path / "kwp@8081.service"
    instance.symlink_to(unit)
    result = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in result.stderr.splitlines() if "kwp@" in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


def test_supervisord_program_parses(tmp_path):
    options = pytest.importorskip("supervisor.options", reason="supervisor is not installed (pip install supervisor)")
    # The parser checks that the user and the log directory exist.
    user = pwd.getpwuid(os.getuid()).pw_name
    program = (DEPLOY / "supervisord.conf").read_text()
    program = program.replace("user=kwp", f"user={user}").replace("/var/log/kwp", str(tmp_path))
    path = tmp_path / "supervisord.conf"
    path.write_text(f"[supervisord]\nlogfile={tmp_path}/supervisord.log\n\n{program}")
    server = options.ServerOptions()
    server.configfile = str(path)
    server.process_config(do_usage=False)
    [group] = server.process_group_configs
    [process] = group.process_configs
    assert process.name == "kwp"
    assert process.command.split()[1:] == ["--nodaemon", "--pidfile=", "kwp"]
    assert process.stopwaitsecs == 30
    assert process.environment["KWP_LISTEN"] == "tcp:8080:interface=127.0.0.1"


def _exposed_names() -> set[str]:
    """The sample names of a scrape with a webhook received, forwarded and queued."""
    config = parse_config({"server": {"metrics": True}, "channels": [{"name": "a", "token": "t"}]})
    clock = Clock()
    clock.advance(1000.0)
    metrics = Metrics(lambda: config, FakeStorage({("a", "default"): QueueStats(1, 900.0)}), clock)
    metrics.received(config, "a", "ok", 0.1)
    metrics.forward_outcome("a", "default", "ok", 0.1)
    metrics.filter_failed("a", "default")
    return set(scrape(metrics))


def test_alert_rules_use_metrics_that_exist():
    rules = yaml.safe_load((DEPLOY / "kwp-alerts.yml").read_text())
    [group] = rules["groups"]
    exposed = _exposed_names()
    for rule in group["rules"]:
        assert rule["alert"] and rule["expr"] and rule["labels"]["severity"] in ("critical", "warning", "info")
        used = set(re.findall(r"\bkwp_[a-z_]+", rule["expr"]))
        assert used <= exposed, (rule["alert"], used - exposed)


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "kwp-alerts.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrape_job_sends_the_metrics_token_and_loads_the_rules(tmp_path):
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert (job["job_name"], job["metrics_path"]) == ("kwp", "/api/metrics")
    assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]
    assert config["rule_files"] == ["kwp-alerts.yml"]
    assert 'up{job="kwp"}' in (DEPLOY / "kwp-alerts.yml").read_text()
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    token = tmp_path / "kwp-metrics-token"
    token.write_text("scraper-token\n")
    shutil.copy(DEPLOY / "kwp-alerts.yml", tmp_path / "kwp-alerts.yml")
    text = (DEPLOY / "prometheus.yml").read_text().replace("/etc/prometheus/kwp-metrics-token", str(token))
    (tmp_path / "prometheus.yml").write_text(text)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "privkey.pem", directory / "fullchain.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_nginx_site_parses(tmp_path):
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if not nginx:
        pytest.skip("nginx is not installed")
    key, cert = _self_signed(tmp_path)
    site = (DEPLOY / "nginx.conf").read_text()
    site = site.replace("/etc/letsencrypt/live/hooks.example.com/privkey.pem", str(key))
    site = site.replace("/etc/letsencrypt/live/hooks.example.com/fullchain.pem", str(cert))
    (tmp_path / "kwp.conf").write_text(site)
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n include {tmp_path}/kwp.conf;\n}}\n"
    )
    result = subprocess.run([nginx, "-t", "-c", str(main)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_tls_through_an_endpoint_string(daemon, tmp_path):
    key, cert = _self_signed(tmp_path)
    port = free_port()
    daemon(extra_args=["--listen", f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"])
    context = ssl.create_default_context(cafile=str(cert))
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        connection.request("GET", "/api/health")
        response = connection.getresponse()
        assert response.status == 200
        assert response.read() == b'{"status": "ok"}'
    finally:
        connection.close()
