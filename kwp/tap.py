"""``twistd kwp``: command-line options and the wiring of the services."""

from __future__ import annotations

import gc
import os
import signal
import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints, threads
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from kwp.config import ConfigError, load_config, unsafe_settings
from kwp.forward import Forwarders, push_client
from kwp.logs import LOG_LEVELS, log_stream, make_access_log, make_log_observer
from kwp.history import retention
from kwp.notify import Notifier
from kwp.ops import Reloader
from kwp.storage import StorageError, open_storage, redacted
from kwp.storage.prune import Pruner
from kwp.web import IDLE_TIMEOUT, RECEIVE_TIMEOUT, KwpApp, KwpSite

log = Logger()

# How long a stop waits for requests in flight before closing the database.
STOP_GRACE = 10

# option: (environment variables, first wins; default)
DEFAULTS = {
    "config": (("KWP_CONFIG", "CONFIG_FILE"), "config.yml"),
    "database": (("KWP_DATABASE", "DATABASE_URL"), "data/kwp.db"),
    "log-format": (("KWP_LOG_FORMAT",), "text"),
    "log-level": (("KWP_LOG_LEVEL", "LOG_LEVEL"), "info"),
}


def bind_address_endpoint(value: str) -> str:
    """BIND_ADDRESS as host:port (the Rust project's form) as an endpoint string."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise usage.UsageError(f"BIND_ADDRESS must be host:port, got {value!r}")
    host = host.strip("[]")
    if not host:
        return f"tcp:{port}"
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"


def positive_seconds(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return seconds


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "kwp: a webhooks proxy. Options win over KWP_* environment variables."
    optParameters = [
        ["config", "c", None, "YAML file with channels and server settings [env KWP_CONFIG; config.yml]"],
        [
            "database",
            "d",
            None,
            "SQLite file path, sqlite:///path, :memory: or postgresql://user:pass@host:port/db"
            " [env KWP_DATABASE; data/kwp.db]",
        ],
        ["log-format", None, None, "text or json [env KWP_LOG_FORMAT; text]"],
        ["log-level", None, None, "debug, info, warn or error [env KWP_LOG_LEVEL; info]"],
        ["receive-timeout", None, RECEIVE_TIMEOUT, "seconds a request may take to arrive whole", positive_seconds],
        ["idle-timeout", None, IDLE_TIMEOUT, "seconds an idle connection is kept open", positive_seconds],
    ]

    def __init__(self, environ=None):
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self["listen"] = []

    def opt_listen(self, endpoint):
        """Twisted server endpoint string, repeatable [env KWP_LISTEN; tcp:8080]"""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self):
        for key, (names, default) in DEFAULTS.items():
            if self[key] is None:
                self[key] = next((self.environ[n] for n in names if self.environ.get(n)), default)
        if not self["listen"]:
            if self.environ.get("KWP_LISTEN"):
                self["listen"] = [self.environ["KWP_LISTEN"]]
            elif self.environ.get("BIND_ADDRESS"):
                self["listen"] = [bind_address_endpoint(self.environ["BIND_ADDRESS"])]
            else:
                self["listen"] = ["tcp:8080"]
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format must be text or json, got {self['log-format']!r}")
        self["log-level"] = self["log-level"].lower()
        if self["log-level"] not in LOG_LEVELS:
            raise usage.UsageError(f"--log-level must be debug, info, warn or error, got {self['log-level']!r}")
        # The Rust project's variable, kept out of the command line (and so
        # out of ps) on purpose.
        self["ui-access-token"] = self.environ.get("UI_ACCESS_TOKEN") or None


# By default the collector's youngest generation is collected every 700 new
# container objects: every few requests, while the requests waiting for their
# commit are alive and get traversed and promoted again and again (about 14%
# of the CPU under load, by perf).  10,000 makes that rarer; the garbage
# cycles it lets wait are a few MB at most.
GC_THRESHOLD = (10_000, 10, 10)


def tune_gc() -> None:
    """Set the collector up for a long-running server: what is alive at
    start-up (modules, config, services) is frozen out of its generations for
    good, and the youngest generation is collected less often."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


class StartupError(SystemExit, Exception):
    """A start-up failure told in one line, once twistd has started: as a
    SystemExit, Python writes its message (to the log, where twistd has sent
    standard error by then) and exits with status 1, without a traceback; as
    an Exception, twistd removes its pid file and passes the message to the
    parent of a daemon, which prints it."""


def _cannot_listen(error: CannotListenError) -> StartupError:
    if error.interface:
        where = f"{error.interface}:{error.port}"
    else:
        where = f"port {error.port}" if isinstance(error.port, int) else str(error.port)
    reason = getattr(error.socketError, "strerror", None) or error.socketError
    message = f"kwp: cannot listen on {where}: {reason}"
    # Where the other start-up errors go (a daemon's is /dev/null).
    sys.__stderr__.write(message + "\n")
    return StartupError(message)


class KwpService(MultiService):
    """The storage, the forwarders, the pruner, the listeners, and a stop in
    a fixed order: stop listening, end the streams, let requests in flight
    finish (bounded), let the pruner's batch and forward attempts in flight
    finish (bounded), then close the database."""

    def __init__(self, app: KwpApp, site: KwpSite, listeners, log_observer, clock, load_config):
        super().__init__()
        self.app = app
        self.site = site
        self.log_observer = log_observer
        self._clock = clock
        self._reloader = Reloader(load_config, app)
        # Called with the new Config after each reload (forwarders follow it).
        self.on_reload = self._reloader.hooks
        self.on_reload.append(lambda config: defer.ensureDeferred(app.forwarders.update(config)))
        self.on_reload.append(lambda config: follow_retention(app.storage, config))
        self.on_reload.append(app.streams.follow)
        self._previous_sighup = None
        app.storage.setServiceParent(self)
        app.forwarders.setServiceParent(self)
        self.pruner = Pruner(app.storage, lambda: app.config, clock)
        self.pruner.setServiceParent(self)
        self.listeners = []
        for endpoint in listeners:
            listener = StreamServerEndpointService(endpoint, site)
            listener._raiseSynchronously = True
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def setServiceParent(self, parent):
        # twistd builds the application after makeService and starts logging
        # from its ILogObserver component: this is where --log-format lands.
        super().setServiceParent(parent)
        if hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)

    def reload(self) -> defer.Deferred:
        """Load the config file again and apply it whole, or keep the running
        one when the new file is invalid; fires with whether it was applied."""
        return self._reloader.reload()

    def _sighup(self, signum, frame):
        self._clock.callFromThread(self.reload)

    def privilegedStartService(self):
        # The listeners bind here (twistd calls it before dropping privileges).
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise _cannot_listen(e) from None

    def startService(self):
        # Before the listeners start: a SIGHUP sent once the port answers must
        # find the handler, not the default action (which ends the process).
        self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        # After the reactor has installed its own handlers.
        self._clock.callWhenRunning(signal.signal, signal.SIGTERM, self._sigterm)
        super().startService()

    def _sigterm(self, signum, frame):
        # The reactor's own handler makes twistd end by raising the signal
        # again, an exit by signal that supervisors report as a failure; a
        # SIGTERM is the ordinary stop, so kwp stops the reactor itself and
        # twistd exits with status 0.
        self._clock.callFromThread(self._stop_reactor)

    def _stop_reactor(self) -> None:
        log.info("SIGTERM: stopping")
        try:
            self._clock.stop()
        except ReactorNotRunning:
            # A second SIGTERM while stopping.
            pass

    @defer.inlineCallbacks
    def stopService(self):
        self.running = 0
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        yield defer.DeferredList([defer.maybeDeferred(s.stopService) for s in self.listeners])
        log.info("stopped listening; finishing requests in flight")
        self.app.notifier.close()
        self.app.streams.close()
        for step, what in ((self.site.idle, "requests in flight"), (self.site.close_connections, "connections")):
            try:
                yield step().addTimeout(STOP_GRACE, self._clock)
            except defer.TimeoutError:
                log.warn("{what} still open after {grace}s; stopping anyway", what=what, grace=STOP_GRACE)
        yield defer.maybeDeferred(self.pruner.stopService)
        yield defer.maybeDeferred(self.app.forwarders.stopService)
        yield defer.maybeDeferred(self.app.storage.stopService)
        log.info("kwp stopped")


def follow_retention(storage, config) -> None:
    """The storage keeps the history as the config says."""
    storage.retention = retention(config)


def make_app(config, storage, reactor, ui_token: str | None = None) -> KwpApp:
    """The app with its notifier and forwarders, whose attempts reach the
    app's metrics; ui_token is an admin token besides the config's."""
    follow_retention(storage, config)
    notifier = Notifier()
    # Webhooks stored by this node or (PostgreSQL) another one wake as many
    # waiters of each queue.
    storage.on_stored(lambda channel, consumers: [notifier.fire((channel, c), n) for c, n in consumers.items()])
    client, pool = push_client(reactor)
    forwarders = Forwarders(config, storage, notifier, reactor, client, pool=pool)
    app = KwpApp(config, storage, notifier, reactor, forwarders, ui_token)
    # Streams follow what is stored, by this node or another, too.
    storage.on_stored(lambda channel, consumers: app.streams.stored(channel))
    forwarders.report = app.metrics.forward_outcome
    return app


def load_beside_ui_token(path: str, ui_token: str | None):
    """The config of path; ConfigError too when ui_token (UI_ACCESS_TOKEN,
    an admin token) is also a channel's or a consumer's token, which would
    make that token's holder an admin."""
    config = load_config(path)
    if ui_token is None:
        return config
    for channel in config.channels:
        if channel.token == ui_token:
            raise ConfigError([f"UI_ACCESS_TOKEN is the api-read-token of channel {channel.name!r}; give it its own token"])
        for consumer in channel.consumers:
            if consumer.token == ui_token:
                raise ConfigError(
                    [
                        f"UI_ACCESS_TOKEN is the token of consumer {consumer.name!r} of channel {channel.name!r};"
                        " give it its own token"
                    ]
                )
    return config


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    ui_token = options["ui-access-token"]
    try:
        config = load_beside_ui_token(options["config"], ui_token)
    except ConfigError as e:
        raise SystemExit("kwp: invalid configuration:\n" + "\n".join(f"  {line}" for line in e.errors))
    try:
        storage = open_storage(options["database"], reactor)
    except StorageError as e:
        raise SystemExit(f"kwp: {e}")
    try:
        listeners = [endpoints.serverFromString(reactor, desc) for desc in options["listen"]]
    except (ValueError, TypeError, KeyError) as e:
        raise SystemExit(f"kwp: invalid --listen endpoint: {e}")
    app = make_app(config, storage, reactor, ui_token)
    # twistd's own options, when it runs kwp: where it would log.
    stream = log_stream(getattr(options, "parent", None), reactor)
    access_log = make_access_log(options["log-format"], options["log-level"], stream, reactor)
    site = KwpSite(app, reactor, options["receive-timeout"], options["idle-timeout"], access_log)
    observer = make_log_observer(options["log-format"], options["log-level"], stream)
    log.info(
        "kwp: {channels} channels from {path}, database {database}",
        channels=len(config.channels),
        path=config.path,
        database=redacted(options["database"]),
    )
    for warning in unsafe_settings(config):
        log.warn("{warning}", warning=warning)
    # Absolute: a daemonized twistd changes directory before any reload.
    path = os.path.abspath(options["config"])

    def reload_config():
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), load_beside_ui_token, path, ui_token)

    service = KwpService(app, site, listeners, observer, reactor, reload_config)
    tune_gc()
    return service
