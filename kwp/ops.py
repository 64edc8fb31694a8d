"""Operations: Prometheus metrics and live reload of the config file.

``Metrics`` keeps its own ``CollectorRegistry``, so two apps (or two tests)
never share counters.  Channel series follow the running config at scrape
time: a channel with ``monitoring-metrics: false``, or one removed by a
reload, has no series.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults, maybeDeferred
from twisted.logger import Logger

from kwp import verify
from kwp.config import Channel, Config, ConfigError

log = Logger()

# Channel names cannot start with "_": this label never collides with one,
# and it keeps the names that strangers post to out of the series.
UNKNOWN_CHANNEL = "_unknown"
FORWARD_STATUSES = frozenset({"ok", "network_error", "unexpected_status", "internal_error"})
RECEIVE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FORWARD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def security_features(channel: Channel) -> dict[str, bool]:
    """What protects a channel, one flag per ``kwp_channel_security_config`` feature."""
    scheme = verify.scheme_for(channel)
    return {
        "secret": scheme.kind != "none",
        "hmac": scheme.signed,
        "provider": channel.provider is not None,
        "replay_protection": scheme.tolerance is not None,
        "allowed_ips": bool(channel.allowed_ips),
        "max_queue": channel.max_queue is not None,
    }


def _monitored(config: Config, name: str) -> bool:
    channel = config.channel(name)
    return channel is not None and channel.monitoring_metrics


class _Scrape:
    """One scrape: the registry's series of visible channels, then the gauges
    computed from the config and the database for this scrape."""

    def __init__(self, registry: CollectorRegistry, config: Config, stats: dict | None, now: float):
        self._registry = registry
        self._config = config
        self._stats = stats
        self._now = now

    def _visible(self, labels: dict[str, str]) -> bool:
        channel = labels.get("channel")
        return channel is None or channel == UNKNOWN_CHANNEL or _monitored(self._config, channel)

    def collect(self):
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if self._visible(s.labels)]
            yield family
        channels = [c for c in self._config.channels if c.monitoring_metrics]
        security = GaugeMetricFamily(
            "kwp_channel_security_config",
            "1 when the feature protects the channel, else 0",
            labels=["channel", "feature"],
        )
        for channel in channels:
            for feature, on in security_features(channel).items():
                security.add_metric([channel.name, feature], 1 if on else 0)
        yield security
        yield GaugeMetricFamily(
            "kwp_database_up",
            "1 when the queue statistics could be read from the database",
            value=int(self._stats is not None),
        )
        if self._stats is None:
            return
        depth = GaugeMetricFamily("kwp_queue_depth", "Webhooks stored and not yet delivered", labels=["channel"])
        age = GaugeMetricFamily(
            "kwp_queue_oldest_age_seconds",
            "Age of the oldest stored webhook (0 when none)",
            labels=["channel"],
        )
        for channel in channels:
            count, oldest = self._stats.get(channel.name, (0, None))
            depth.add_metric([channel.name], count)
            age.add_metric([channel.name], max(0.0, self._now - oldest) if oldest is not None else 0.0)
        yield depth
        yield age


class Metrics:
    """The counters and histograms of kwp, and the scrape of /api/metrics.

    ``config`` returns the running config; recording functions are cheap
    and never touch the database."""

    def __init__(self, config: Callable[[], Config], storage, clock):
        self._config = config
        self._storage = storage
        self._clock = clock
        self.registry = CollectorRegistry()
        self._received = Counter(
            "kwp_webhook_receive",
            "Answers to POST /api/webhook/{channel} by status (ok or the error code)",
            ["channel", "status"],
            registry=self.registry,
        )
        self._receive_seconds = Histogram(
            "kwp_webhook_receive_duration_seconds",
            "Time from the start of a receive request to its answer",
            ["channel"],
            buckets=RECEIVE_BUCKETS,
            registry=self.registry,
        )
        self._forwarded = Counter(
            "kwp_webhook_forward",
            "Forward attempts by outcome",
            ["channel", "status"],
            registry=self.registry,
        )
        self._forward_seconds = Histogram(
            "kwp_webhook_forward_duration_seconds",
            "Duration of forward attempts",
            ["channel"],
            buckets=FORWARD_BUCKETS,
            registry=self.registry,
        )

    def received(self, config: Config, name: str, status: str, seconds: float) -> None:
        """Count one answer of the receive route, under the config the request used."""
        channel = config.channel(name)
        if channel is None:
            name = UNKNOWN_CHANNEL
        elif not channel.monitoring_metrics:
            return
        self._received.labels(name, status).inc()
        self._receive_seconds.labels(name).observe(seconds)

    def forward_outcome(self, channel: str, status: str, seconds: float) -> None:
        """Count one forward attempt of channel: status is one of FORWARD_STATUSES."""
        if status not in FORWARD_STATUSES:
            raise ValueError(f"unknown forward status {status!r}")
        if not _monitored(self._config(), channel):
            return
        self._forwarded.labels(channel, status).inc()
        self._forward_seconds.labels(channel).observe(seconds)

    async def scrape(self) -> bytes:
        """The Prometheus text exposition, with queue statistics read from the
        database (on its thread) for this scrape."""
        try:
            stats = await self._storage.queue_stats()
        except Exception:
            log.failure("metrics: cannot read the queue statistics")
            stats = None
        return generate_latest(_Scrape(self.registry, self._config(), stats, self._clock.seconds()))


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def channels_overview(storage, channels: Sequence[Channel]) -> dict:
    """The body of GET /api/channels for these channels: each with its one
    consumer, ``default``, and that queue's figures."""
    stats = await storage.queue_stats()
    pushed = [c.name for c in channels if c.forward is not None]
    forward = await storage.forward_stats(pushed) if pushed else {}
    states = dict(zip(pushed, await gatherResults([storage.channel_state(name) for name in pushed])))
    listed = []
    for channel in channels:
        size, oldest = stats.get(channel.name, (0, None))
        consumer = {
            "name": "default",
            "kind": "pull",
            "queue_size": size,
            "oldest_pending_at": _seconds(oldest),
            "dead": 0,
            "paused": False,
            "last_success_at": None,
            "last_error_at": None,
            "last_error_message": None,
        }
        if channel.forward is not None:
            dead, oldest = forward[channel.name]
            state = states[channel.name]
            consumer.update(
                kind="push",
                oldest_pending_at=_seconds(oldest),
                dead=dead,
                paused=state.paused,
                last_success_at=_seconds(state.last_success_at),
                last_error_at=_seconds(state.last_error_at),
                last_error_message=state.last_error_message,
            )
        listed.append({"name": channel.name, "provider": channel.provider, "consumers": [consumer]})
    return {"channels": listed}


def describe_change(old: Config, new: Config) -> str:
    """A one-line summary of what a reload changes in the channels."""
    before = {c.name: c for c in old.channels}
    after = {c.name: c for c in new.channels}
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(n for n in after.keys() & before.keys() if after[n] != before[n])
    parts = [f"{len(new.channels)} channels"]
    for label, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    return "; ".join(parts)


class Reloader:
    """Loads the config file again and swaps it in whole, one reload at a time.

    ``load`` returns a Deferred Config (or fails with ConfigError); ``app`` is
    anything with a ``config`` attribute, read by every new request.  Each
    callable in ``hooks`` is called with the new config after the swap, so
    services that follow the channels (forwarders) can add, change and stop
    theirs.  Reloads asked for while one runs are served together by one
    more run after it: a storm of SIGHUPs loads the file at most twice."""

    def __init__(self, load: Callable[[], Deferred], app: Any):
        self._load = load
        self._app = app
        self.hooks: list[Callable[[Config], Any]] = []
        self._waiters: list[Deferred] = []
        self._busy = False

    def reload(self) -> Deferred:
        """Fires with True when a new config was applied, False when refused."""
        waiter = Deferred()
        self._waiters.append(waiter)
        if not self._busy:
            self._busy = True
            ensureDeferred(self._run())
        return waiter

    async def _run(self) -> None:
        try:
            while self._waiters:
                waiters, self._waiters = self._waiters, []
                applied = await self._once()
                for waiter in waiters:
                    waiter.callback(applied)
        finally:
            self._busy = False

    async def _once(self) -> bool:
        try:
            config = await self._load()
        except ConfigError as e:
            log.error(
                "config reload refused, the running config stays:\n{errors}",
                errors="\n".join(f"  {line}" for line in e.errors),
            )
            return False
        except Exception:
            log.failure("config reload failed, the running config stays")
            return False
        old, self._app.config = self._app.config, config
        log.info("config reloaded from {path}: {change}", path=config.path, change=describe_change(old, config))
        results = await DeferredList([maybeDeferred(hook, config) for hook in self.hooks], consumeErrors=True)
        for ok, failure in results:
            if not ok:
                log.failure("a service could not follow the reload", failure=failure)
        return True
