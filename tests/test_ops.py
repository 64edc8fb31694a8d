"""Metrics, reload, the redacted config and limits: unit tests and tests on a
real 127.0.0.1 listener in this process."""

from __future__ import annotations

import json
import sqlite3
from ipaddress import ip_network

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater

from kwp import ops
from kwp.auth import authorize_admin
from kwp.config import (
    CHANNEL_KEYS,
    CONSUMER_KEYS,
    FORWARD_KEYS,
    SERVER_KEYS,
    Channel,
    ConfigError,
    parse_config,
    redacted,
)
from kwp.storage import QueueStats
from kwp.errors import ApiError
from kwp.storage import StorageUnavailable
from kwp.storage.sqlite import SQLiteStorage
from tests.fakes import FakeStorage
from tests.support import body_json, metric_samples, scrape, until

CONFIG = {
    "server": {"admin-token": "admin-secret-token", "metrics": True},
    "channels": [
        {
            "name": "github",
            "token": "github-token",
            "webhook-secret": "gh-secret",
            "secret-header": "X-Hub-Signature-256",
        },
        {"name": "open", "token": "open-token", "max-queue": 2},
        {"name": "quiet", "token": "quiet-token", "monitoring-metrics": False},
    ],
}


class Holder:
    def __init__(self, config):
        self.config = config


def make_metrics(config_data=CONFIG, stats=None, now=1000.0):
    holder = Holder(parse_config(config_data))
    clock = Clock()
    clock.advance(now)
    return holder, ops.Metrics(lambda: holder.config, FakeStorage(stats), clock)


def test_receive_counts_by_channel_and_status():
    holder, metrics = make_metrics()
    for status in ["ok", "ok", "unauthorized"]:
        metrics.received(holder.config, "github", status, 0.003)
    metrics.received(holder.config, "attacker-chosen-name", "channel_not_found", 0.001)
    metrics.received(holder.config, "quiet", "ok", 0.001)
    samples = scrape(metrics)
    total = samples["kwp_webhook_receive_total"]
    assert total == {
        (("channel", "github"), ("status", "ok")): 2,
        (("channel", "github"), ("status", "unauthorized")): 1,
        (("channel", "_unknown"), ("status", "channel_not_found")): 1,
    }
    assert samples["kwp_webhook_receive_duration_seconds_count"][(("channel", "github"),)] == 3
    assert samples["kwp_webhook_receive_duration_seconds_bucket"][(("channel", "github"), ("le", "0.005"))] == 3
    assert samples["kwp_webhook_receive_duration_seconds_bucket"][(("channel", "github"), ("le", "0.0025"))] == 0


def test_each_app_has_its_own_registry():
    holder, first = make_metrics()
    _, second = make_metrics()
    first.received(holder.config, "github", "ok", 0.001)
    assert scrape(second).get("kwp_webhook_receive_total", {}) == {}
    assert scrape(first)["kwp_webhook_receive_total"] == {(("channel", "github"), ("status", "ok")): 1}


def test_forward_outcomes_and_their_statuses():
    holder, metrics = make_metrics()
    metrics.forward_outcome("github", "default", "ok", 0.2)
    metrics.forward_outcome("github", "default", "network_error", 15.0)
    metrics.forward_outcome("quiet", "default", "ok", 0.2)
    with pytest.raises(ValueError):
        metrics.forward_outcome("github", "default", "teapot", 0.1)
    samples = scrape(metrics)
    queue = (("channel", "github"), ("consumer", "default"))
    assert samples["kwp_webhook_forward_total"] == {
        (*queue, ("status", "ok")): 1,
        (*queue, ("status", "network_error")): 1,
    }
    assert samples["kwp_webhook_forward_duration_seconds_count"] == {queue: 2}


def test_security_config_queue_depth_and_oldest_age():
    stats = {("open", "default"): QueueStats(5, 940.0, 2), ("quiet", "default"): QueueStats(3, 10.0)}
    holder, metrics = make_metrics(stats=stats, now=1000.0)
    samples = scrape(metrics)
    security = samples["kwp_channel_security_config"]
    assert security[(("channel", "github"), ("feature", "secret"))] == 1
    assert security[(("channel", "github"), ("feature", "allowed_ips"))] == 0
    assert security[(("channel", "github"), ("feature", "hmac"))] == 0
    assert security[(("channel", "open"), ("feature", "secret"))] == 0
    assert security[(("channel", "open"), ("feature", "max_queue"))] == 1
    assert {dict(k)["channel"] for k in security} == {"github", "open"}
    github, open_ = (("channel", "github"), ("consumer", "default")), (("channel", "open"), ("consumer", "default"))
    assert samples["kwp_queue_depth"] == {github: 0, open_: 5}
    assert samples["kwp_queue_oldest_age_seconds"] == {github: 0, open_: 60}
    assert samples["kwp_queue_dead"] == {github: 0, open_: 2}
    assert samples["kwp_database_up"] == {(): 1}


def test_a_database_failure_still_answers_the_scrape():
    holder, metrics = make_metrics(stats=RuntimeError("disk on fire"))
    metrics.received(holder.config, "github", "ok", 0.001)
    samples = scrape(metrics)
    assert samples["kwp_database_up"] == {(): 0}
    assert "kwp_queue_depth" not in samples
    assert samples["kwp_webhook_receive_total"][(("channel", "github"), ("status", "ok"))] == 1


class SlowStats:
    """queue_stats answers with a Deferred that the test fires; counts reads."""

    def __init__(self):
        self.reads: list[Deferred] = []

    def queue_stats(self):
        self.reads.append(Deferred())
        return self.reads[-1]


def test_queue_figures_are_read_once_for_concurrent_scrapes_and_kept_a_few_seconds():
    holder = Holder(parse_config(CONFIG))
    clock = Clock()
    clock.advance(1000)
    storage = SlowStats()
    metrics = ops.Metrics(lambda: holder.config, storage, clock)
    scrapes = [Deferred.fromCoroutine(metrics.scrape()) for _ in range(4)]
    scrapes[1].addErrback(lambda f: f.trap(CancelledError))
    scrapes[1].cancel()
    assert len(storage.reads) == 1 and not any(s.called for s in scrapes if s is not scrapes[1])
    storage.reads[0].callback({("open", "default"): QueueStats(5, 940.0)})
    queue = (("channel", "open"), ("consumer", "default"))
    for scrape_ in scrapes[:1] + scrapes[2:]:
        assert metric_samples(scrape_.result)["kwp_queue_depth"][queue] == 5
    clock.advance(ops.QUEUE_STATS_MAX_AGE - 0.1)
    assert scrape(metrics)["kwp_queue_oldest_age_seconds"][queue] == pytest.approx(64.9)
    assert len(storage.reads) == 1
    clock.advance(0.1)
    again = Deferred.fromCoroutine(metrics.scrape())
    assert len(storage.reads) == 2
    storage.reads[1].errback(RuntimeError("disk on fire"))
    assert metric_samples(again.result)["kwp_database_up"] == {(): 0}
    # A failure is not kept: the next scrape asks again.
    Deferred.fromCoroutine(metrics.scrape())
    assert len(storage.reads) == 3


def test_series_follow_the_running_config():
    holder, metrics = make_metrics()
    metrics.received(holder.config, "github", "ok", 0.001)
    metrics.received(holder.config, "open", "ok", 0.001)
    data = json.loads(json.dumps(CONFIG))
    data["channels"] = [c for c in data["channels"] if c["name"] != "github"]
    data["channels"][0]["monitoring-metrics"] = False
    holder.config = parse_config(data)
    samples = scrape(metrics)
    assert samples.get("kwp_webhook_receive_total", {}) == {}
    assert samples.get("kwp_queue_depth", {}) == {}


def test_security_features_of_providers():
    github = Channel(name="gh", token="t", secrets=("s",), provider="github")
    stripe = Channel(name="st", token="t2", secrets=("s",), provider="stripe", allowed_ips=(ip_network("10.0.0.0/8"),))
    nothing = Channel(name="n", token="t3")
    assert ops.security_features(github) == {
        "secret": True,
        "hmac": True,
        "provider": True,
        "replay_protection": False,
        "allowed_ips": False,
        "max_queue": False,
    }
    assert ops.security_features(stripe)["replay_protection"] is True
    assert ops.security_features(stripe)["allowed_ips"] is True
    assert not any(ops.security_features(nothing).values())


# --- reload ------------------------------------------------------------------


def test_reload_swaps_the_config_and_calls_the_hooks(captured_log):
    old = parse_config(CONFIG)
    data = json.loads(json.dumps(CONFIG))
    data["channels"].append({"name": "new", "token": "new-token"})
    new = parse_config(data)
    holder = Holder(old)
    reloader = ops.Reloader(lambda: succeed(new), holder)
    seen = []
    reloader.hooks.append(seen.append)
    reloader.hooks.append(lambda config: 1 / 0)
    result = reloader.reload()
    assert result.result is True
    assert holder.config is new
    assert seen == [new]
    assert "added: new" in captured_log.text()
    assert "could not follow the reload" in captured_log.text()


def test_an_invalid_file_is_refused_and_changes_nothing(captured_log):
    old = parse_config(CONFIG)
    holder = Holder(old)
    errors = ["config.yml: channels[0]: key 'nmae': unknown key (did you mean 'name'?)", "config.yml: other"]
    reloader = ops.Reloader(lambda: fail(ConfigError(errors)), holder)
    called = []
    reloader.hooks.append(called.append)
    assert reloader.reload().result is False
    assert holder.config is old
    assert called == []
    text = captured_log.text()
    assert "config reload refused" in text and "nmae" in text and "other" in text


def test_a_storm_of_reloads_loads_at_most_twice():
    holder = Holder(parse_config(CONFIG))
    loads: list[Deferred] = []

    def load():
        loads.append(Deferred())
        return loads[-1]

    reloader = ops.Reloader(load, holder)
    results = [reloader.reload() for _ in range(50)]
    assert len(loads) == 1
    first = parse_config(CONFIG)
    loads[0].callback(first)
    assert len(loads) == 2
    assert results[0].result is True
    assert not any(hasattr(r, "result") for r in results[1:])
    second = parse_config(CONFIG)
    loads[1].callback(second)
    assert [r.result for r in results] == [True] * 50
    assert holder.config is second
    reloader.reload()
    assert len(loads) == 3


def test_describe_change():
    old = parse_config(CONFIG)
    data = json.loads(json.dumps(CONFIG))
    data["channels"] = [c for c in data["channels"] if c["name"] != "quiet"]
    data["channels"][1]["max-queue"] = 9
    data["channels"].append({"name": "new", "token": "new-token"})
    assert ops.describe_change(old, parse_config(data)) == "3 channels; added: new; removed: quiet; changed: open"
    assert ops.describe_change(old, parse_config(CONFIG)) == "3 channels"


# --- the redacted config and admin authorization ---------------------------------


SECRETS = {
    "server": {"admin-token": "s-admin-token"},
    "channels": [
        {
            "name": "a",
            "token": "s-read-token",
            "webhook-secret": ["s-secret-1", "s-secret-2"],
            "secret-header": "X-Secret",
            "forward": {
                "url": "https://s-user:s-password@example.com:8443/hook?key=s-query-key&x",
                "sign-secret": "s-sign-secret",
                "sign-header": "X-Sig",
            },
        }
    ],
}


def test_redacted_config_holds_no_secret():
    config = parse_config(SECRETS)
    text = json.dumps(redacted(config))
    secrets = ["admin-token", "read-token", "secret-1", "secret-2", "user", "password", "query-key", "sign-secret"]
    for secret in secrets:
        assert f"s-{secret}" not in text
    plain = redacted(config)
    url = "https://<redacted>@example.com:8443/hook?key=<redacted>&x=<redacted>"
    assert plain["channels"][0]["forward"]["url"] == url
    assert plain["channels"][0]["webhook-secret"] == ["<redacted>", "<redacted>"]
    assert plain["server"]["admin-token"] == "<redacted>"
    assert plain["channels"][0]["secret-header"] == "X-Secret"


def test_redacted_config_speaks_config_yml():
    config = parse_config({
        "server": {"admin-token": "s-admin", "metrics": True},
        "channels": [
            {**SECRETS["channels"][0], "secret-type": "hmac-sha256",
             "secret-extract-template": '{{ raw | replace(from="sha256=", to="") }}'},
            {"name": "gh", "token": "s-gh-token", "provider": "github", "webhook-secret": "s-gh"},
            {"name": "meta", "token": "s-meta-token", "provider": "meta", "webhook-secret": "s-meta",
             "verify-token": "s-verify"},
            {"name": "fan", "token": "s-fan-token", "consumers": [
                {"name": "ci", "token": "s-ci-token", "filter": "body.action == 'push'"},
                {"name": "chat", "forward": {"url": "https://u:s-chat-password@chat/hook", "sign-header": "X-S",
                                             "sign-secret": "s-chat-sign"}},
            ]},
        ],
    })
    plain = redacted(config)
    assert set(plain["server"]) == set(SERVER_KEYS)
    hmac, gh, meta, fan = plain["channels"]
    # A channel without consumers shows its forward as in config.yml.
    assert set(hmac) == set(CHANNEL_KEYS) - {"consumers"} and set(hmac["forward"]) == set(FORWARD_KEYS)
    assert fan["forward"] is None and [set(c) for c in fan["consumers"]] == [set(CONSUMER_KEYS)] * 2
    ci, chat = fan["consumers"]
    assert (ci["token"], ci["filter"], chat["token"]) == ("<redacted>", "body.action == 'push'", None)
    assert chat["forward"]["url"] == "https://<redacted>@chat/hook" and chat["forward"]["sign-secret"] == "<redacted>"
    assert (hmac["api-read-token"], hmac["secret-type"], hmac["provider"]) == ("<redacted>", "hmac-sha256", None)
    assert hmac["secret-extract-template"] == '{{ raw | replace(from="sha256=", to="") }}'
    assert hmac["secret-sign-template"] is None and hmac["forward"]["sign-secret"] == "<redacted>"
    # A provider decides the secret type and the templates: none is shown.
    decided = {"secret-type", "secret-extract-template", "secret-sign-template", "consumers"}
    assert set(gh) == set(CHANNEL_KEYS) - decided
    assert (gh["provider"], gh["webhook-secret"], gh["verify-token"]) == ("github", ["<redacted>"], None)
    assert (meta["provider"], meta["verify-token"]) == ("meta", "<redacted>")
    text = json.dumps(plain)
    for secret in ("s-admin", "s-gh", "s-meta", "s-verify", "s-read-token", "s-secret-1", "s-sign-secret", "s-fan",
                   "s-ci", "s-chat"):
        assert secret not in text


def test_authorize_admin():
    config = parse_config(CONFIG)
    authorize_admin(config, "Bearer admin-secret-token")
    for header, status in [(None, 401), ("Basic x", 401), ("Bearer nope", 401), ("Bearer github-token", 403)]:
        with pytest.raises(ApiError) as e:
            authorize_admin(config, header)
        assert e.value.status == status
    no_admin = parse_config({"channels": [{"name": "a", "token": "t"}]})
    with pytest.raises(ApiError) as e:
        authorize_admin(no_admin, "Bearer t")
    assert e.value.status == 403


# --- storage failures -----------------------------------------------------------


def test_full_and_read_only_errors_are_recognized(tmp_path):
    connection = sqlite3.connect(tmp_path / "x.db")
    connection.execute("CREATE TABLE t (x)")
    connection.execute("PRAGMA query_only = 1")
    with pytest.raises(sqlite3.Error) as e:
        connection.execute("INSERT INTO t VALUES (1)")
    unavailable = SQLiteStorage(str(tmp_path / "kwp.db"), None)._unavailable
    assert isinstance(unavailable(e.value), StorageUnavailable)
    assert unavailable(sqlite3.OperationalError("database or disk is full")) is not None
    assert unavailable(sqlite3.OperationalError("no such table: x")) is None
    assert unavailable(ValueError("x")) is None


# --- on a real listener ---------------------------------------------------------

GH = {"X-Hub-Signature-256": "gh-secret"}


@pytest_twisted.ensureDeferred
async def test_metrics_count_every_receive_outcome(local_kwp):
    kwp = local_kwp(CONFIG)
    statuses = []
    for _ in range(3):
        statuses.append((await kwp.post("github", {"n": 1}, GH)).code)
    statuses.append((await kwp.post("github", {"n": 1})).code)  # refused in gotLength
    statuses.append((await kwp.post("github", b"not json", GH)).code)
    statuses.append((await kwp.post("github", b"x" * 300_000, GH)).code)  # refused in gotLength
    statuses.append((await kwp.post("no-such-channel", {})).code)
    statuses.append((await kwp.post("quiet", {})).code)
    assert statuses == [200, 200, 200, 401, 422, 413, 404, 200]

    response = await kwp.get("/api/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    samples = metric_samples(await response.content())
    assert samples["kwp_webhook_receive_total"] == {
        (("channel", "github"), ("status", "ok")): 3,
        (("channel", "github"), ("status", "unauthorized")): 1,
        (("channel", "github"), ("status", "invalid_json")): 1,
        (("channel", "github"), ("status", "payload_too_large")): 1,
        (("channel", "_unknown"), ("status", "channel_not_found")): 1,
    }
    assert samples["kwp_queue_depth"] == {
        (("channel", "github"), ("consumer", "default")): 3,
        (("channel", "open"), ("consumer", "default")): 0,
    }
    assert samples["kwp_webhook_receive_duration_seconds_count"][(("channel", "github"),)] == 6
    assert "quiet" not in str(samples)


@pytest_twisted.ensureDeferred
async def test_a_metrics_token_is_needed_when_one_is_set(local_kwp):
    data = json.loads(json.dumps(CONFIG))
    data["server"]["metrics-token"] = "scraper-token"
    kwp = local_kwp(data)
    for token in (None, "wrong", "admin-secret-token", "github-token"):
        response = await kwp.get("/api/metrics", token)
        body = await body_json(response)
        assert (response.code, body["error"]) == (401, "unauthorized")
        assert "scraper-token" not in body["message"]
    response = await kwp.get("/api/metrics", "scraper-token")
    assert response.code == 200
    assert "kwp_queue_depth" in metric_samples(await response.content())
    data["server"]["metrics"] = False
    kwp.app.config = parse_config(data)
    assert (await kwp.get("/api/metrics", "scraper-token")).code == 404


@pytest_twisted.ensureDeferred
async def test_metrics_are_not_found_when_off(local_kwp):
    data = json.loads(json.dumps(CONFIG))
    data["server"]["metrics"] = False
    kwp = local_kwp(data)
    response = await kwp.get("/api/metrics")
    assert response.code == 404
    assert (await body_json(response))["error"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_config_endpoint_is_for_the_admin_only(local_kwp):
    kwp = local_kwp(CONFIG)
    response = await kwp.get("/api/config", "admin-secret-token")
    assert response.code == 200
    text = (await response.content()).decode()
    assert [c["name"] for c in json.loads(text)["channels"]] == ["github", "open", "quiet"]
    for secret in ["admin-secret-token", "github-token", "gh-secret", "open-token", "quiet-token"]:
        assert secret not in text
    assert (await kwp.get("/api/config", "github-token")).code == 403
    assert (await kwp.get("/api/config")).code == 401
    assert (await kwp.get("/api/config", "wrong")).code == 401


@pytest_twisted.ensureDeferred
async def test_max_queue_refuses_with_503_and_keeps_what_is_stored(local_kwp):
    kwp = local_kwp(CONFIG)
    assert [(await kwp.post("open", {"n": n})).code for n in range(2)] == [200, 200]
    full = await kwp.post("open", {"n": 2})
    assert full.code == 503
    assert full.headers.getRawHeaders("retry-after") == ["30"]
    assert (await body_json(full))["error"] == "queue_full"
    items = await body_json(await kwp.get("/api/webhook/open", "open-token"))
    assert [i["payload"] for i in items] == [{"n": 0}, {"n": 1}]

    # A pull deletes what it returned in a transaction that starts when its
    # connection closes, and may commit after the client has read the response.
    async def emptied():
        overview = await body_json(await kwp.get("/api/channels", "open-token"))
        return [c["queue_size"] for c in overview["channels"][0]["consumers"]] == [0]

    await until(emptied, what="the pulled webhooks deleted")
    assert (await kwp.post("open", {"n": 3})).code == 200


@pytest_twisted.ensureDeferred
async def test_a_request_in_flight_finishes_on_the_config_it_started_with(local_kwp):
    class Raw(Protocol):
        def __init__(self):
            self.received = b""
            self.done = Deferred()

        def dataReceived(self, data):
            self.received += data

        def connectionLost(self, reason):
            self.done.callback(self.received)

    kwp = local_kwp(CONFIG)
    body = b'{"late": true}'
    raw = Raw()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", kwp.port.getHost().port), raw)
    raw.transport.write(
        b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    await deferLater(reactor, 0.1, lambda: None)
    data = json.loads(json.dumps(CONFIG))
    data["channels"] = [c for c in data["channels"] if c["name"] != "open"]
    kwp.app.config = parse_config(data)
    raw.transport.write(body)
    response = await raw.done
    assert response.startswith(b"HTTP/1.1 200 ")
    assert (await kwp.post("open", {})).code == 404
