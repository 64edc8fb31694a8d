"""Operations from the outside, against the real `twistd -n kwp`: metrics,
SIGHUP reloads under load, a broken file, check-config, a full disk."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater

from tests.support import metric_samples, until, write_config

KWP = str(Path(sys.executable).with_name("kwp"))

CONFIG = {
    "server": {"admin-token": "admin-secret-token", "metrics": True},
    "channels": [
        {"name": "github", "token": "github-token", "webhook-secret": "gh-secret", "secret-header": "X-Gh"},
        {"name": "open", "token": "open-token", "max-queue": 3},
        {"name": "quiet", "token": "quiet-token", "monitoring-metrics": False},
    ],
}
GH = {"X-Gh": "gh-secret"}


async def post(d, channel: str, body: bytes = b"{}", headers=None) -> int:
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    response = await treq.post(f"{d.base}/api/webhook/{channel}", data=body, headers=all_headers)
    await response.content()
    return response.code


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_metrics_count_what_was_sent(daemon):
    d = daemon(CONFIG)
    sent = {"ok": 7, "unauthorized": 4, "invalid_json": 2}
    requests = (
        [post(d, "github", b"{}", GH) for _ in range(sent["ok"])]
        + [post(d, "github", b"{}") for _ in range(sent["unauthorized"])]
        + [post(d, "github", b"{nope", GH) for _ in range(sent["invalid_json"])]
        + [post(d, "open") for _ in range(5)]
        + [post(d, f"guess-{n}") for n in range(6)]
        + [post(d, "quiet") for _ in range(2)]
    )
    codes = await gatherResults([ensureDeferred(r) for r in requests])
    assert sorted(codes) == sorted([200] * 7 + [401] * 4 + [422] * 2 + [200] * 3 + [503] * 2 + [404] * 6 + [200] * 2)

    response = await treq.get(f"{d.base}/api/metrics")
    assert response.code == 200
    samples = metric_samples((await response.content()).decode())
    received = samples["kwp_webhook_receive_total"]
    assert received == {
        (("channel", "github"), ("status", "ok")): 7,
        (("channel", "github"), ("status", "unauthorized")): 4,
        (("channel", "github"), ("status", "invalid_json")): 2,
        (("channel", "open"), ("status", "ok")): 3,
        (("channel", "open"), ("status", "queue_full")): 2,
        (("channel", "_unknown"), ("status", "channel_not_found")): 6,
    }
    queues = {(("channel", "github"), ("consumer", "default")), (("channel", "open"), ("consumer", "default"))}
    assert samples["kwp_queue_depth"] == dict(zip(sorted(queues), (7, 3)))
    ages = samples["kwp_queue_oldest_age_seconds"]
    assert set(ages) == queues
    assert all(age >= 0 for age in ages.values())
    assert samples["kwp_channel_security_config"][(("channel", "github"), ("feature", "secret"))] == 1
    assert "quiet" not in str(samples) and "guess" not in str(samples)


@pytest_twisted.ensureDeferred
async def test_sighup_adds_a_channel_without_a_failed_request(daemon, tmp_path):
    d = daemon(CONFIG)
    stop = []

    async def load() -> list[int]:
        codes = []
        for _ in range(3000):
            if stop:
                break
            codes.append(await post(d, "github", b'{"load": true}', GH))
        return codes

    loads = gatherResults([ensureDeferred(load()) for _ in range(4)])
    await sleep(0.3)
    assert await post(d, "added") == 404
    data = json.loads(json.dumps(CONFIG))
    data["channels"].append({"name": "added", "token": "added-token"})
    write_config(tmp_path / "config.yml", data)
    for _ in range(10):
        d.signal(signal.SIGHUP)
        await sleep(0.01)

    async def added_answers() -> bool:
        return await post(d, "added") == 200

    await until(added_answers, 10, "the added channel answers")
    await sleep(0.3)
    stop.append(True)
    results = await loads
    codes = [code for codes in results for code in codes]
    assert len(codes) > 20
    assert set(codes) == {200}
    await until(lambda: "config reloaded" in d.log(), 10, "config reloaded logged")
    assert "added: added" in d.log()
    assert 1 <= d.log().count("config reloaded") <= 10
    assert d.proc.poll() is None


@pytest_twisted.ensureDeferred
async def test_a_broken_file_is_refused_and_the_old_channels_keep_working(daemon, tmp_path):
    d = daemon(CONFIG)
    broken = json.loads(json.dumps(CONFIG))
    broken["channels"].append({"name": "added", "token": "added-token", "max-qeueu": 3})
    broken["channels"][0]["secret-type"] = "rot13"
    write_config(tmp_path / "config.yml", broken)
    d.signal(signal.SIGHUP)
    await until(lambda: "config reload refused" in d.log(), 10, "a refused reload logged")
    log = d.log()
    assert "max-qeueu" in log and "rot13" in log
    assert await post(d, "github", b"{}", GH) == 200
    assert await post(d, "added") == 404
    (tmp_path / "config.yml").write_text("channels: [unclosed\n")
    d.signal(signal.SIGHUP)
    await until(lambda: d.log().count("config reload refused") >= 2, 10, "a second refused reload logged")
    assert await post(d, "github", b"{}", GH) == 200
    assert d.proc.poll() is None


def run_kwp(*args) -> subprocess.CompletedProcess:
    return subprocess.run([KWP, *args], capture_output=True, text=True, timeout=60)


def test_check_config_reports_every_error(tmp_path):
    bad = json.loads(json.dumps(CONFIG))
    bad["server"]["metrix"] = True
    bad["channels"][0]["secret-type"] = "rot13"
    bad["channels"][1]["max-queue"] = 0
    bad["channels"].append({"name": "bad name!", "token": "open-token"})
    bad["channels"].append({"name": "fan", "token": "fan-token", "consumers": [{"name": "ci", "filter": "body.["}]})
    path = write_config(tmp_path / "bad.yml", bad)
    result = run_kwp("check-config", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    errors = result.stderr.strip().splitlines()
    assert errors[-1] == f"{path}: 6 error(s)"
    joined = "\n".join(errors)
    for needle in ["'metrix'", "did you mean 'metrics'", "rot13", "'max-queue'", "bad name!", "same token",
                   "channels[4] (fan): consumers[0] (ci): key 'filter': invalid JMESPath expression"]:
        assert needle in joined

    good = json.loads(json.dumps(CONFIG))
    good["channels"].append({"name": "fan", "token": "fan-token", "consumers": [
        {"name": "ci", "filter": "body.action == 'push'"}, {"name": "chat", "forward": {"url": "http://chat/hook"}}]})
    good = write_config(tmp_path / "good.yml", good)
    result = run_kwp("check-config", str(good))
    assert result.returncode == 0
    assert result.stdout == f"{good}: OK, 4 channels, 5 consumers (1 forwarding)\n"
    # The warnings of a start-up, on stderr.
    assert f"warning: {good}: channel 'open': no webhook-secret" in result.stderr

    missing = run_kwp("check-config", str(tmp_path / "missing.yml"))
    assert missing.returncode == 1 and "cannot read the file" in missing.stderr
