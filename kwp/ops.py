"""Operations: Prometheus metrics and live reload of the config file.

``Metrics`` keeps its own ``CollectorRegistry``, so two apps (or two tests)
never share counters.  Channel series follow the running config at scrape
time: a channel with ``monitoring-metrics: false``, or one removed by a
reload, has no series.
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from kwp import verify
from kwp.auth import Identity
from kwp.config import Channel, Config, ConfigError
from kwp.storage import QueueState, QueueStats

log = Logger()

# Channel names cannot start with "_": this label never collides with one,
# and it keeps the names that strangers post to out of the series.
UNKNOWN_CHANNEL = "_unknown"
FORWARD_STATUSES = frozenset({"ok", "network_error", "unexpected_status", "internal_error"})
# The queue figures are read from the database at most once in this many
# seconds, whatever the number of scrapers.
QUEUE_STATS_MAX_AGE = 5.0
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
        labels = ["channel", "consumer"]
        depth = GaugeMetricFamily("kwp_queue_depth", "Webhooks pending in a consumer's queue", labels=labels)
        age = GaugeMetricFamily(
            "kwp_queue_oldest_age_seconds",
            "How long the head of a consumer's queue has waited (0 when empty)",
            labels=labels,
        )
        dead = GaugeMetricFamily("kwp_queue_dead", "Dead letters of a consumer (push attempts given up)", labels=labels)
        for channel in channels:
            for consumer in channel.consumers:
                stats = self._stats.get((channel.name, consumer.name), QueueStats())
                queue = [channel.name, consumer.name]
                depth.add_metric(queue, stats.size)
                age.add_metric(queue, max(0.0, self._now - stats.oldest_at) if stats.oldest_at is not None else 0.0)
                dead.add_metric(queue, stats.dead)
        yield depth
        yield age
        yield dead


class Metrics:
    """The counters and histograms of kwp, and the scrape of /api/metrics.

    ``config`` returns the running config; recording functions are cheap
    and never touch the database."""

    def __init__(self, config: Callable[[], Config], storage, clock):
        self._config = config
        self._storage = storage
        self._clock = clock
        self._stats: dict | None = None
        self._stats_at: float | None = None
        self._reading = False
        self._readers: list[Deferred] = []
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
            ["channel", "consumer", "status"],
            registry=self.registry,
        )
        self._forward_seconds = Histogram(
            "kwp_webhook_forward_duration_seconds",
            "Duration of forward attempts",
            ["channel", "consumer"],
            buckets=FORWARD_BUCKETS,
            registry=self.registry,
        )
        # (channel, status) -> the children of _received and _receive_seconds:
        # .labels() checks and joins its arguments on every call.
        self._receive_series: dict[tuple[str, str], tuple] = {}
        self._filter_errors = Counter(
            "kwp_filter_errors",
            "Webhooks whose consumer filter failed to evaluate (taken as no match)",
            ["channel", "consumer"],
            registry=self.registry,
        )

    def received(self, config: Config, name: str, status: str, seconds: float) -> None:
        """Count one answer of the receive route, under the config the request used."""
        channel = config.channel(name)
        if channel is None:
            name = UNKNOWN_CHANNEL
        elif not channel.monitoring_metrics:
            return
        series = self._receive_series.get((name, status))
        if series is None:
            series = self._receive_series[name, status] = (
                self._received.labels(name, status),
                self._receive_seconds.labels(name),
            )
        series[0].inc()
        series[1].observe(seconds)

    def forward_outcome(self, channel: str, consumer: str, status: str, seconds: float) -> None:
        """Count one forward attempt of a consumer: status is one of FORWARD_STATUSES."""
        if status not in FORWARD_STATUSES:
            raise ValueError(f"unknown forward status {status!r}")
        if not _monitored(self._config(), channel):
            return
        self._forwarded.labels(channel, consumer, status).inc()
        self._forward_seconds.labels(channel, consumer).observe(seconds)

    def filter_failed(self, channel: str, consumer: str) -> None:
        if _monitored(self._config(), channel):
            self._filter_errors.labels(channel, consumer).inc()

    async def scrape(self) -> bytes:
        """The Prometheus text exposition, with the queue statistics of
        :meth:`queue_stats`."""
        stats = await self.queue_stats()
        return generate_latest(_Scrape(self.registry, self._config(), stats, self._clock.seconds()))

    def queue_stats(self) -> Deferred:
        """Deferred queue statistics, None when the database could not give
        them.  They are read (on the database's thread) at most once in
        QUEUE_STATS_MAX_AGE seconds; scrapes that come while a read runs share
        it, and one that is cancelled leaves it to the others."""
        if self._stats_at is not None and self._clock.seconds() - self._stats_at < QUEUE_STATS_MAX_AGE:
            return succeed(self._stats)
        reader = Deferred(self._readers.remove)
        self._readers.append(reader)
        if not self._reading:
            self._reading = True
            maybeDeferred(self._storage.queue_stats).addBoth(self._read)
        return reader

    def _read(self, result) -> None:
        self._reading = False
        if isinstance(result, Failure):
            log.failure("metrics: cannot read the queue statistics", result)
            result = None
        else:
            self._stats, self._stats_at = result, self._clock.seconds()
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.callback(result)


def _queues(config: Config, channels) -> set[str]:
    return {f"{ch.name}/{c.name}" for ch in config.channels if ch.name in channels for c in ch.consumers}


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def channels_overview(storage, config: Config, identity: Identity) -> dict:
    """The body of GET /api/channels: the channels and consumers identity
    reaches, each queue with its figures (queue_stats) and, for a push
    consumer, its forwarding state (queue_state).  The admin also sees the
    queues of consumers a reload removed, while they hold webhooks."""
    stats = await storage.queue_stats()
    channels = []
    for channel in config.channels:
        if not identity.reaches(channel):
            continue
        mine = identity.consumer
        queues = [(c.name, c) for c in channel.consumers if mine is None or c.name == mine.name]
        if identity.admin:
            known = {c.name for c in channel.consumers}
            queues += sorted((name, None) for (of, name) in stats if of == channel.name and name not in known)
        channels.append((channel, queues))
    pushed = [(ch.name, name) for ch, queues in channels for name, c in queues if c is not None and c.forward is not None]
    states = dict(zip(pushed, await gatherResults([storage.queue_state(ch, consumer=name) for ch, name in pushed])))
    listed = []
    for channel, queues in channels:
        consumers = []
        for name, consumer in queues:
            figures = stats.get((channel.name, name), QueueStats())
            state = states.get((channel.name, name), QueueState())
            consumers.append(
                {
                    "name": name,
                    "kind": "push" if consumer is not None and consumer.forward is not None else "pull",
                    "removed": consumer is None,
                    "queue_size": figures.size + figures.dead,
                    "oldest_pending_at": _seconds(figures.oldest_at),
                    "dead": figures.dead,
                    "paused": state.paused,
                    "last_success_at": _seconds(state.last_success_at),
                    "last_error_at": _seconds(state.last_error_at),
                    "last_error_message": state.last_error_message,
                }
            )
        listed.append(
            {
                "name": channel.name,
                "provider": channel.provider,
                "named_consumers": channel.named_consumers,
                "consumers": consumers,
            }
        )
    return {"channels": listed}


def describe_change(old: Config, new: Config) -> str:
    """A one-line summary of what a reload changes in the channels and
    their consumers.  A removed consumer's webhooks stay stored."""
    before = {c.name: c for c in old.channels}
    after = {c.name: c for c in new.channels}
    kept = after.keys() & before.keys()
    parts = [f"{len(new.channels)} channels"]
    for label, names in (
        ("added", after.keys() - before.keys()),
        ("removed", before.keys() - after.keys()),
        ("changed", {n for n in kept if after[n] != before[n]}),
        ("consumers added", _queues(new, kept) - _queues(old, kept)),
        ("consumers removed (their webhooks stay, for the admin token with ?consumer=)", _queues(old, kept) - _queues(new, kept)),
    ):
        if names:
            parts.append(f"{label}: {', '.join(sorted(names))}")
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
