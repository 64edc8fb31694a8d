"""Push delivery (CONTRACT §5.2): one ``Forwarder`` service per channel with
``forward``, children of ``Forwarders``.

A forwarder works on a window of its channel's first ``concurrency`` pending
webhooks, in receive order, and has each of them in flight at most once; with
``concurrency: 1`` that is strict order.  It sleeps until the notifier says a
webhook arrived, the earliest retry time comes, an attempt ends or the queue
API pokes it: nothing is polled.

It keeps the head of the queue as last read (the window and up to LOOKAHEAD
webhooks behind it) and reads again when that runs short, an attempt fails
or the queue changes.  A failure is written before the webhook's slot in the
window is free again, so attempts, last error, next attempt time and the
dead state survive a restart, like the pause switch.  A success frees its
slot at once when the target answered within FAST_ANSWER: the storage
records successes in batches while the next attempts go out, and a crash
before such a batch commits sends those webhooks again, in order.  A slower
answer keeps its slot until its success is written, which then costs little,
so that a crash repeats only the attempt in flight; so does every answer on
a database that several nodes share (CONTRACT §10: only the attempt in
flight at a node's death may be repeated).  A webhook is deleted
only once delivered.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
from urllib.parse import unquote, urlsplit, urlunsplit
from dataclasses import dataclass, replace
from datetime import timezone
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Callable

from hyperlink import URL
from treq.auth import add_basic_auth
from treq.client import HTTPClient
from twisted.application.service import MultiService, Service
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseFailed
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from kwp import verify
from kwp.config import DEFAULT_CONSUMER, DEFAULT_LEASE_SECONDS, Channel, Config, Consumer
from kwp.errors import ApiError
from kwp.headers import passed_on
from kwp.receive import stored_headers
from kwp.storage import DEAD, PENDING, Attempt, ForwardItem, QueueState

log = Logger()

# Bytes of a target's response body kept (for the error message and the retry
# API); the rest is not read, the connection is dropped instead.
MAX_BODY_KEPT = 64 * 1024
MAX_ERROR_LENGTH = 1024
# Each retry delay is the doubled schedule plus up to this share at random.
JITTER = 0.25
# A Retry-After further away than this is read as this.
MAX_RETRY_AFTER = 86400
# After a storage failure, before the forwarder looks at the queue again.
ERROR_PAUSE = 1.0
# How often a forwarder without the lease tries to take it, at most: a node
# that dies is replaced within the lease plus this.
LEASE_RETRY = 1.0
# How often a retry waiting for the lease looks whether it came.
LEASE_POLL = 0.05
# How long a stop waits for attempts in flight before cancelling them.
STOP_GRACE = 10
# A retry time this close counts as due (float rounding of timer deadlines).
EPSILON = 0.001
# Webhooks read beyond the window, so that a read of the queue is not needed
# for each attempt.
LOOKAHEAD = 32
# An attempt answered within this many seconds frees its slot before its
# success is written (a commit costs about as much as such an attempt).
FAST_ANSWER = 0.01

# Outcomes as reported to ``report(channel, outcome, seconds)`` (the metrics' statuses).
OK = "ok"
NETWORK_ERROR = "network_error"
UNEXPECTED_STATUS = "unexpected_status"
INTERNAL_ERROR = "internal_error"

OWN_HEADERS = frozenset({"x-kwp-delivery-id", "x-kwp-attempt"})


class LeaseUnavailable(Exception):
    """A retry did not get the forwarding lease in time."""


@dataclass(frozen=True)
class AttemptResult:
    success: bool
    outcome: str
    status_code: int | None = None
    body: str | None = None
    error: str | None = None
    retry_after: float | None = None

    def as_json(self) -> dict:
        return {"success": self.success, "status_code": self.status_code, "body": self.body, "error": self.error}


def backoff(interval: float, max_delay: float, failures: int, randomness: float) -> float:
    """The wait after the ``failures``-th failed attempt: ``interval`` doubled
    each time, plus up to JITTER of it (``randomness`` in [0, 1)), at most
    ``max_delay``; once the doubling reaches ``max_delay``, up to JITTER
    less than it, so that retries at the cap do not keep in step with each
    other or with a target that fails periodically."""
    base = interval * 2 ** min(failures - 1, 64)
    if base >= max_delay:
        return max_delay * (1 - JITTER * randomness)
    return min(max_delay, base * (1 + JITTER * randomness))


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), MAX_RETRY_AFTER))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


def delivery_id(channel: str, webhook_id: int, consumer: str = DEFAULT_CONSUMER) -> str:
    """The X-Kwp-Delivery-Id of a webhook to a consumer, from the forwarder
    and the relay alike: the same for every attempt and replay."""
    if consumer == DEFAULT_CONSUMER:
        return f"{channel}-{webhook_id}"
    return f"{channel}.{consumer}-{webhook_id}"


def outgoing_headers(
    channel: Channel, consumer: Consumer, ignored: frozenset[str], item: ForwardItem, attempt: int, now: float
) -> tuple[Headers, list[str]]:
    """The headers of one attempt: the stored ones that are passed on (see
    kwp.headers, minus ``ignored``), signed at ``now`` when the consumer's
    forward says so, plus the delivery id and the attempt number; and the
    names of stored headers left out because they cannot be sent."""
    forward = consumer.forward
    replaced = OWN_HEADERS | verify.forward_signature_names(forward)
    stored = stored_headers(json.loads(item.headers_json), ignored | replaced)
    kept, unsendable = passed_on(stored, forward.headers)
    headers = Headers()
    for name, value in kept.items():
        headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    webhook = delivery_id(channel.name, item.id, consumer.name)
    for name, value in verify.forward_signature(forward, item.body, webhook, now).items():
        headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    headers.addRawHeader(b"X-Kwp-Delivery-Id", webhook.encode())
    headers.addRawHeader(b"X-Kwp-Attempt", str(attempt).encode())
    return headers, unsendable


def _pool(reactor) -> HTTPConnectionPool:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    return pool


def http_client(reactor) -> tuple[HTTPClient, HTTPConnectionPool]:
    """treq over a persistent connection pool; no redirects followed and no
    cookies kept (a target's Set-Cookie must not leak into later requests)."""
    pool = _pool(reactor)
    no_cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    return HTTPClient(Agent(reactor, pool=pool), cookiejar=no_cookies), pool


def push_client(reactor) -> tuple["PushClient", HTTPConnectionPool]:
    pool = _pool(reactor)
    return PushClient(Agent.usingEndpointFactory(reactor, _Endpoints(reactor), pool=pool)), pool


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """The Agent's endpoints (TCP, and TLS for https), each made once: an
    Agent makes one per request, and each encodes the host name anew."""

    def __init__(self, reactor):
        self._reactor = reactor
        self._tls = BrowserLikePolicyForHTTPS()
        self._made: dict[tuple, object] = {}

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._made.get(key)
        if endpoint is None:
            if uri.scheme not in (b"http", b"https"):
                raise SchemeNotSupported(f"unsupported scheme {uri.scheme!r}")
            endpoint = HostnameEndpoint(self._reactor, uri.host.decode("ascii"), uri.port)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
            self._made[key] = endpoint
        return endpoint


@implementer(IBodyProducer)
class _Bytes:
    """A request body that is all there at once."""

    def __init__(self, body: bytes):
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer) -> Deferred:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class PushClient:
    """The forwarder's HTTP client: the part of treq's ``request`` that it
    uses, straight on twisted's Agent.  It never follows a redirect, keeps
    no cookie and leaves the answer undecoded and unbuffered; treq's parsing
    of the URL and its cookie and decoding agents would cost more per
    request than the request itself."""

    def __init__(self, agent: Agent):
        self._agent = agent
        self._urls: dict[str, bytes] = {}
        self._agents: dict[tuple[str, str] | None, IAgent] = {None: agent}

    def request(
        self, method: str, url: str, *, data: bytes, headers: Headers, auth=None, allow_redirects=False, unbuffered=True
    ) -> Deferred:
        if allow_redirects or not unbuffered:
            raise ValueError("a PushClient follows no redirect and buffers no answer")
        uri = self._urls.get(url)
        if uri is None:
            uri = self._urls[url] = URL.from_text(url).to_uri().to_text().encode("ascii")
        agent = self._agents.get(auth)
        if agent is None:
            agent = self._agents[auth] = add_basic_auth(self._agent, *auth)
        return agent.request(method.encode("ascii"), uri, headers, _Bytes(data))


class CappedBody(Protocol):
    """Keeps the first ``limit`` bytes of a response body and then hangs up
    (``truncated`` tells), so a huge or endless body costs neither memory
    nor time."""

    def __init__(self, limit: int):
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.truncated = False
        self.done = Deferred(lambda _: self._hang_up())

    def _hang_up(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        room = self._limit - self._size
        if room > 0:
            self._parts.append(data[:room])
            self._size += min(room, len(data))
        if len(data) > room:
            self.truncated = True
            self._hang_up()

    def connectionLost(self, reason) -> None:
        # The status line decides the outcome; a body cut short (by the
        # target or by the cap) is kept as far as it came.
        if not self.done.called:
            self.done.callback(b"".join(self._parts))


def _describe(error: BaseException) -> str:
    if isinstance(error, ResponseFailed) and error.reasons:
        error = error.reasons[0].value
    detail = str(error)
    name = type(error).__name__
    return (f"{name}: {detail}" if detail else name)[:MAX_ERROR_LENGTH]


def _cancelled(error: BaseException) -> bool:
    """Whether error is a cancellation (the Agent wraps it in ResponseFailed)."""
    if isinstance(error, ResponseFailed):
        return any(reason.check(CancelledError) for reason in error.reasons)
    return isinstance(error, CancelledError)


def _observe(d: Deferred) -> Deferred:
    """A new Deferred with d's result, leaving d's own chain as it was."""
    observer = Deferred()

    def pass_on(result):
        observer.callback(result)
        return result

    d.addBoth(pass_on)
    return observer


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without user info, and that user info as HTTP basic
    credentials (``https://user:pw@host/hook``), or None."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    credentials = (unquote(parts.username), unquote(parts.password or ""))
    return urlunsplit(parts._replace(netloc=host)), credentials


class Forwarder(Service):
    """Delivers one push consumer's webhooks to its ``forward.url``.

    It forwards only while it holds the consumer's forwarding lease in the
    storage (several nodes may share it): it takes the lease when free,
    renews it every third of ``lease_seconds``, writes each outcome fenced
    by the lease's token, and gives it up when it stops.  Without the lease
    it tries again every LEASE_RETRY seconds, or at once when the storage
    says the lease was released."""

    def __init__(
        self,
        channel: Channel,
        consumer: Consumer,
        ignored_headers: frozenset[str],
        storage,
        notifier,
        clock,
        client,
        report: Callable[[str, str, str, float], None] | None = None,
        randomness: Callable[[], float] = random.random,
        grace: float = STOP_GRACE,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ):
        self.name = forwarder_name(channel.name, consumer.name)
        self.channel = channel
        self.consumer = consumer
        self.queue_key = (channel.name, consumer.name)
        self.identity = _identity(channel, consumer, ignored_headers)
        self.forward = consumer.forward
        self._url, self._auth = split_credentials(consumer.forward.url)
        self._ignored = ignored_headers
        self._storage = storage
        self._notifier = notifier
        self._clock = clock
        self._client = client
        self._report = report or (lambda channel, consumer, outcome, seconds: None)
        self._random = randomness
        self._grace = grace
        # Deliveries started and not finished (attempt, then the record of
        # its outcome), and the ids among them that hold a slot of the window.
        self._attempts: dict[int, Deferred] = {}
        self._in_flight: set[int] = set()
        # The head of the queue as last read, less the webhooks delivered
        # since (None: read it again); whether the queue may hold more.
        self._ahead: list[ForwardItem] | None = None
        self._read_full = False
        self._reads = 0
        self._arrivals = 0
        self._arrivals_read = 0
        # Successes being written; and those written, with the number of
        # reads started before, until a read started after shows them gone.
        self._recording: set[int] = set()
        self._recorded: dict[int, int] = {}
        # No attempt starts before this time (after a failed write).
        self._resume_at = 0.0
        self._paused: bool | None = None
        # Counts the changes of the pause switch heard here: a read that
        # began before one of them is out of date when it ends.
        self._pause_changes = 0
        self._kicked = False
        self._sleeper: Deferred | None = None
        self._waiter: Deferred | None = None
        self._loop: Deferred | None = None
        self._lease_seconds = lease_seconds
        self._owner = storage.node
        self._token: int | None = None
        self._renewal: task.LoopingCall | None = None
        # Until then this forwarder neither forwards nor takes the lease: it
        # hands the lease to another node that asked for it (inf while its
        # attempts in flight end).
        self._yield_until = 0.0

    # --- the service -------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop = ensureDeferred(self._run())
        self._loop.addErrback(lambda f: log.failure("forwarder {forwarder} stopped", f, forwarder=self.name))

    def stopService(self) -> Deferred:
        super().stopService()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.cancel()
        self._kick()
        return ensureDeferred(self._stopped())

    async def _stopped(self) -> None:
        if self._loop is not None:
            await self._loop
        await self._wait_in_flight()
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        token, self._token = self._token, None
        if token is not None:
            try:
                await self._storage.release_lease(self.channel.name, self._owner, token, consumer=self.consumer.name)
            except Exception:
                log.failure("forwarder {forwarder}: cannot release the lease", forwarder=self.name)

    async def _wait_in_flight(self) -> None:
        if not self._attempts:
            return

        def cancel_late() -> None:
            log.warn(
                "forwarder {forwarder}: {n} attempts still in flight after {grace}s; cancelled, to be sent again",
                forwarder=self.name,
                n=len(self._attempts),
                grace=self._grace,
            )
            for d in list(self._attempts.values()):
                d.cancel()

        deadline = self._clock.callLater(self._grace, cancel_late)
        await DeferredList([_observe(d) for d in self._attempts.values()], consumeErrors=True)
        if deadline.active():
            deadline.cancel()

    # --- the loop ----------------------------------------------------------

    def _kick(self) -> None:
        self._kicked = True
        sleeper, self._sleeper = self._sleeper, None
        if sleeper is not None:
            sleeper.callback(None)

    def _listen(self) -> None:
        if self._waiter is not None:
            return
        waiter = self._waiter = self._notifier.wait(self.queue_key)

        def arrived(_):
            self._waiter = None
            self._arrivals += 1
            self._kick()

        waiter.addCallbacks(arrived, lambda f: f.trap(CancelledError))

    async def _sleep(self, delay: float | None) -> None:
        if self._kicked:
            return
        self._sleeper = Deferred()
        call = self._clock.callLater(delay, self._kick) if delay is not None else None
        try:
            await self._sleeper
        finally:
            if call is not None and call.active():
                call.cancel()

    async def _run(self) -> None:
        while self.running:
            try:
                delay = await self._step()
            except Exception:
                log.failure("forwarder {forwarder}: cannot read the queue", forwarder=self.name)
                delay = ERROR_PAUSE
            if self.running:
                await self._sleep(delay)

    async def _step(self) -> float | None:
        """Start every attempt that is due; return how long to sleep at most
        (None: until something happens)."""
        self._kicked = False
        if self._yield_until > self._clock.seconds():
            return None if self._yield_until == math.inf else self._yield_until - self._clock.seconds()
        if self._token is None and not await self._take_lease():
            return min(LEASE_RETRY, self._lease_seconds / 3)
        # Listen before reading, so an insert during the read is not missed.
        self._listen()
        if self._paused is None:
            changes = self._pause_changes
            state = await self._storage.queue_state(self.channel.name, consumer=self.consumer.name)
            if changes != self._pause_changes:
                return 0
            self._paused = state.paused
        limit = self.forward.concurrency
        if self._paused or len(self._in_flight) >= limit:
            return None
        now = self._clock.seconds()
        if now < self._resume_at:
            return self._resume_at - now
        if self._ahead is None or (len(self._ahead) < limit and self._more()):
            if not await self._read(limit):
                return None
        wake_at = None
        for item in self._ahead[:limit]:
            # A hand-over of the lease asked for while the window was read
            # waits for the attempts in flight: no more may start.
            if not self.running or self._paused or self._yield_until > now or len(self._in_flight) >= limit:
                break
            if item.id in self._attempts:
                continue
            if item.next_attempt_at is None or item.next_attempt_at <= now + EPSILON:
                self._start(item)
            elif wake_at is None or item.next_attempt_at < wake_at:
                wake_at = item.next_attempt_at
        return None if wake_at is None else wake_at - now

    def _more(self) -> bool:
        """Whether the queue may hold more than the last read saw."""
        return self._read_full or self._arrivals != self._arrivals_read

    async def _read(self, limit: int) -> bool:
        """Read the head of the queue into ``_ahead``; False when it changed
        meanwhile (the forwarder was kicked: read again)."""
        self._ahead = None
        self._reads += 1
        reads, self._arrivals_read = self._reads, self._arrivals
        asked = limit + LOOKAHEAD + len(self._recording) + len(self._recorded)
        window = await self._storage.forward_window(
            self.channel.name, asked, self._clock.seconds(), consumer=self.consumer.name
        )
        if reads != self._reads:
            return False
        done = self._recording | self._recorded.keys()
        self._ahead = [item for item in window if item.id not in done]
        self._read_full = len(window) == asked
        self._recorded = {i: n for i, n in self._recorded.items() if n >= reads}
        return True

    def _forget_ahead(self) -> None:
        """The queue changed in a way the last read cannot tell: read it again."""
        self._ahead = None
        self._reads += 1

    # --- the lease ---------------------------------------------------------

    async def _take_lease(self) -> bool:
        queue = self.channel.name, self._owner
        self._token = await self._storage.acquire_lease(
            *queue, self._clock.seconds(), self._lease_seconds, consumer=self.consumer.name
        )
        if self._token is None:
            return False
        log.info("forwarder {forwarder}: forwarding (lease token {token})", forwarder=self.name, token=self._token)
        self._paused = None
        self._forget_ahead()
        self._renewal = task.LoopingCall(self._renew)
        self._renewal.clock = self._clock
        self._renewal.start(self._lease_seconds / 3, now=False)
        return True

    async def _renew(self) -> None:
        token = self._token
        if token is None or not self.running:
            return
        changes = self._pause_changes
        try:
            state = await self._storage.renew_lease(
                self.channel.name, self._owner, token, self._clock.seconds(), self._lease_seconds,
                consumer=self.consumer.name,
            )
        except Exception:
            log.failure("forwarder {forwarder}: cannot renew the lease", forwarder=self.name)
            return
        if state is None:
            self._lost(token)
        elif changes == self._pause_changes and state.paused != self._paused:
            self._paused = state.paused
            self._kick()

    def _lost(self, token: int) -> None:
        """The lease of token went to another node: stop forwarding."""
        if self._token != token:
            return
        log.warn("forwarder {forwarder}: lost the lease (token {token}) to another node", forwarder=self.name, token=token)
        self._token = None
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.cancel()
        self._forget_ahead()
        self._kick()

    def lease_wanted(self) -> None:
        """Another node has a retry to make: hand it the lease once the
        attempts in flight here end, so that no webhook is in flight from
        two nodes at once."""
        if self._token is not None and self._yield_until != math.inf:
            self._yield_until = math.inf
            ensureDeferred(self._hand_over(self._token))

    async def _hand_over(self, token: int) -> None:
        try:
            await self._wait_in_flight()
            if self._token == token:
                self._token = None
                if self._renewal is not None and self._renewal.running:
                    self._renewal.stop()
                await self._storage.release_lease(self.channel.name, self._owner, token, consumer=self.consumer.name)
                log.info("forwarder {forwarder}: handed the lease over to another node", forwarder=self.name)
        except Exception:
            log.failure("forwarder {forwarder}: cannot release the lease", forwarder=self.name)
        finally:
            self._yield_until = self._clock.seconds() + LEASE_RETRY
            self._kick()

    async def _hold_lease(self) -> None:
        """Have the lease, asked of the node that holds it; raises
        LeaseUnavailable when it does not come in time."""
        now = self._clock.seconds()
        deadline = now + self._lease_seconds + self._grace + LEASE_RETRY
        asked_at = None
        while self._token is None:
            if not self.running or now >= deadline:
                raise LeaseUnavailable(self.name)
            # Asked again each LEASE_RETRY: the lease may have gone to
            # another node that asked too.
            if asked_at is None or now - asked_at >= LEASE_RETRY:
                asked_at = now
                await self._storage.want_lease(self.channel.name, consumer=self.consumer.name)
            await task.deferLater(self._clock, LEASE_POLL, lambda: None)
            now = self._clock.seconds()

    def queue_changed(self) -> None:
        """The pause switch or the lease changed, maybe on another node."""
        self._paused = None
        self._pause_changes += 1
        self._forget_ahead()
        self._kick()

    def _start(self, item: ForwardItem) -> Deferred:
        self._in_flight.add(item.id)
        d = ensureDeferred(self._deliver(item))
        self._attempts[item.id] = d

        def finished(result):
            self._attempts.pop(item.id, None)
            self._free(item.id)
            return result

        d.addBoth(finished)
        d.addErrback(lambda f: f.trap(CancelledError))
        return d

    def _free(self, webhook_id: int) -> None:
        """The slot of webhook_id in the window is free."""
        self._in_flight.discard(webhook_id)
        self._kick()

    # --- one attempt -------------------------------------------------------

    async def _deliver(self, item: ForwardItem) -> AttemptResult:
        token = self._token
        attempt = item.forward_attempts + 1
        started = self._clock.seconds()
        result = await self._attempt(item, attempt)
        now = self._clock.seconds()
        logged = Attempt(now, result.status_code, result.error, round((now - started) * 1000, 3), result.body)
        queue = dict(consumer=self.consumer.name, token=token)
        try:
            if result.success:
                fast = not self._storage.shared and now - started < FAST_ANSWER
                written = await self._record_success(item, logged, fast, queue)
            else:
                max_attempts = self.forward.max_attempts
                dead = item.state == DEAD or (max_attempts is not None and attempt >= max_attempts)
                delay = None if dead else self._delay(attempt, result.retry_after)
                written = await self._storage.forward_failed(
                    self.channel.name, item.id, logged, None if dead else now + delay, DEAD if dead else PENDING, **queue
                )
                self._forget_ahead()
            if not written:
                # Another node holds the lease now and owns this delivery.
                self._lost(token)
            elif not result.success:
                if not dead:
                    log.info(
                        "forwarder {forwarder}: webhook {id} attempt {n} failed ({error}); next in {delay:.1f}s",
                        forwarder=self.name,
                        id=item.id,
                        n=attempt,
                        error=result.error,
                        delay=delay,
                    )
                elif item.state != DEAD:
                    log.warn(
                        "forwarder {forwarder}: webhook {id} is dead after {n} attempts: {error}",
                        forwarder=self.name,
                        id=item.id,
                        n=attempt,
                        error=result.error,
                    )
        except Exception:
            log.failure(
                "forwarder {forwarder}: cannot record the outcome for webhook {id}", forwarder=self.name, id=item.id
            )
            self._report(self.channel.name, self.consumer.name, INTERNAL_ERROR, now - started)
            # Held back a moment, so a broken database does not turn into a
            # stream of deliveries of the same webhook.
            self._resume_at = self._clock.seconds() + ERROR_PAUSE
            self._forget_ahead()
            return replace(result, success=False, outcome=INTERNAL_ERROR, error="internal error: storage failed")
        self._report(self.channel.name, self.consumer.name, result.outcome, now - started)
        return result

    async def _record_success(self, item: ForwardItem, logged: Attempt, fast: bool, queue: dict) -> bool:
        """Write the success; the webhook leaves the window at once, and
        after a fast answer its slot too."""
        self._recording.add(item.id)
        if self._ahead and self._ahead[0].id == item.id:
            del self._ahead[0]
        elif self._ahead is not None:
            self._ahead = [i for i in self._ahead if i.id != item.id]
        written = self._storage.forward_succeeded(self.channel.name, item.id, logged, **queue)
        if fast:
            self._free(item.id)
        try:
            ok = await written
        finally:
            self._recording.discard(item.id)
        if ok:
            self._recorded[item.id] = self._reads
        return ok

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = backoff(self.forward.interval_seconds, self.forward.max_delay_seconds, attempt, self._random())
        return max(delay, retry_after) if retry_after is not None else delay

    async def _attempt(self, item: ForwardItem, attempt: int) -> AttemptResult:
        try:
            headers, unsendable = outgoing_headers(
                self.channel, self.consumer, self._ignored, item, attempt, self._clock.seconds()
            )
        except Exception:
            log.failure(
                "forwarder {forwarder}: cannot build the request for webhook {id}", forwarder=self.name, id=item.id
            )
            return AttemptResult(False, INTERNAL_ERROR, error="internal error: cannot build the request")
        if unsendable:
            log.warn(
                "forwarder {forwarder}: webhook {id}: headers {names} are not valid HTTP; sent without them",
                forwarder=self.name,
                id=item.id,
                names=unsendable,
            )
        exchange = ensureDeferred(self._post(item.body, headers))
        timed_out = []

        def too_slow() -> None:
            timed_out.append(True)
            exchange.cancel()

        deadline = self._clock.callLater(self.forward.timeout_seconds, too_slow)
        try:
            status, body, retry_after = await exchange
        except Exception as e:
            if timed_out:
                return AttemptResult(
                    False, NETWORK_ERROR, error=f"no complete answer within {self.forward.timeout_seconds:g}s"
                )
            if _cancelled(e):
                raise CancelledError() from e
            return AttemptResult(False, NETWORK_ERROR, error=_describe(e))
        finally:
            if deadline.active():
                deadline.cancel()
        text = body.decode("utf-8", "replace")
        expected = self.forward.expected_status
        if status == expected or (expected is None and 200 <= status < 300):
            return AttemptResult(True, OK, status, text)
        error = f"unexpected status {status}" + (f": {text[:200]}" if text else "")
        wait = retry_after_seconds(retry_after, self._clock.seconds()) if status in (429, 503) else None
        return AttemptResult(False, UNEXPECTED_STATUS, status, text, error, wait)

    async def _post(self, body: bytes, headers: Headers) -> tuple[int, bytes, str | None]:
        response = await self._client.request(
            "POST", self._url, data=body, headers=headers, auth=self._auth, allow_redirects=False, unbuffered=True
        )
        reader = CappedBody(MAX_BODY_KEPT)
        response.deliverBody(reader)
        content = await reader.done
        retry_after = response.headers.getRawHeaders(b"retry-after")
        return response.code, content, retry_after[0].decode("latin-1") if retry_after else None

    # --- the queue API -----------------------------------------------------

    def set_paused(self, paused: bool) -> None:
        self._paused = paused
        self._pause_changes += 1
        self._kick()

    def poke(self) -> None:
        self._forget_ahead()
        self._kick()

    async def retry(self, webhook_id: int) -> AttemptResult | None:
        """One attempt now (or the one in flight); None when there is no
        such webhook.  Made with the lease: a node without it asks for it
        and waits (LeaseUnavailable when it does not come)."""
        running = self._attempts.get(webhook_id)
        if running is None and self._token is None:
            await self._hold_lease()
            running = self._attempts.get(webhook_id)
        if running is None:
            item = await self._storage.forward_get(self.channel.name, webhook_id, consumer=self.consumer.name)
            if item is None or webhook_id in self._recorded:
                return None
            running = self._attempts.get(webhook_id) or self._start(item)
        return await _observe(running)


def _timestamp(value: float | None):
    return None if value is None else round(value, 3)


def encode_queue(state: QueueState, size: int, items: list[ForwardItem]) -> bytes:
    """The body of GET .../queue; stored payloads are valid JSON, spliced as is."""
    status = json.dumps(
        {
            "paused": state.paused,
            "queue_size": size,
            "last_success_at": _timestamp(state.last_success_at),
            "last_error_at": _timestamp(state.last_error_at),
            "last_error_message": state.last_error_message,
        }
    ).encode()
    encoded = []
    for item in items:
        forward = json.dumps(
            {
                "forward_attempts": item.forward_attempts,
                "last_attempt_at": _timestamp(item.last_attempt_at),
                "last_attempt_error": item.last_error,
                "next_attempt_at": _timestamp(item.next_attempt_at),
                "state": item.state,
            }
        ).encode()
        encoded.append(
            b'{"id":%d,"headers":%s,"payload":%s,"received_at":%d,%s'
            % (item.id, item.headers_json.encode(), item.body, int(item.received_at), forward[1:])
        )
    return b'{"status":%s,"items":[%s]}' % (status, b",".join(encoded))


def _identity(channel: Channel, consumer: Consumer, ignored: frozenset[str]) -> tuple:
    """What a forwarder is built from; a reload that changes it replaces it."""
    return consumer.forward, ignored


def forwarder_name(channel: str, consumer: str) -> str:
    return f"{channel}/{consumer}"


class Forwarders(MultiService):
    """The forwarders of every push consumer, and the queue API.

    ``report(channel, consumer, outcome, seconds)`` is called after every
    attempt with one of OK, NETWORK_ERROR, UNEXPECTED_STATUS, INTERNAL_ERROR
    and how long the attempt took (the metrics of ops.Metrics.forward_outcome)."""

    def __init__(
        self,
        config: Config,
        storage,
        notifier,
        clock,
        client,
        pool: HTTPConnectionPool | None = None,
        report: Callable[[str, str, str, float], None] | None = None,
        grace: float = STOP_GRACE,
        randomness: Callable[[], float] = random.random,
    ):
        super().__init__()
        self._storage = storage
        self._notifier = notifier
        self._clock = clock
        self._client = client
        self._pool = pool
        self.report = report
        self._grace = grace
        self._random = randomness
        self._lease_seconds = config.server.lease_seconds
        storage.on_queue_changed(self._queue_changed)
        storage.on_lease_wanted(self._lease_wanted)
        for channel, consumer in _push_consumers(config):
            self._add(channel, consumer, config.server.ignored_headers)

    def _queue_changed(self, channel: str, consumer: str) -> None:
        forwarder = self.get(channel, consumer)
        if forwarder is not None:
            forwarder.queue_changed()

    def _lease_wanted(self, channel: str, consumer: str) -> None:
        forwarder = self.get(channel, consumer)
        if forwarder is not None:
            forwarder.lease_wanted()

    def _add(self, channel: Channel, consumer: Consumer, ignored: frozenset[str]) -> None:
        forwarder = Forwarder(
            channel,
            consumer,
            ignored,
            self._storage,
            self._notifier,
            self._clock,
            self._client,
            report=lambda *outcome: self.report and self.report(*outcome),
            randomness=self._random,
            grace=self._grace,
            lease_seconds=self._lease_seconds,
        )
        forwarder.setServiceParent(self)

    def get(self, channel: str, consumer: str = DEFAULT_CONSUMER) -> Forwarder | None:
        return self.namedServices.get(forwarder_name(channel, consumer))

    async def update(self, config: Config) -> None:
        """Add, replace and remove forwarders for a new config.  A replaced
        forwarder finishes its attempts in flight before the new one starts,
        so no webhook is sent by both."""
        ignored = config.server.ignored_headers
        self._lease_seconds = config.server.lease_seconds
        wanted = {forwarder_name(ch.name, c.name): (ch, c) for ch, c in _push_consumers(config)}
        for forwarder in list(self):
            pair = wanted.get(forwarder.name)
            if pair is None or _identity(*pair, ignored) != forwarder.identity:
                stopped = self.removeService(forwarder)
                if stopped is not None:
                    await stopped
        for name, (channel, consumer) in wanted.items():
            if name not in self.namedServices:
                self._add(channel, consumer, ignored)

    async def _stop(self) -> None:
        await super().stopService()
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    def stopService(self) -> Deferred:
        return ensureDeferred(self._stop())

    # --- the queue API, also while a reload swaps the consumer's forwarder ---

    async def queue(self, channel: str, consumer: str, limit: int, after: int) -> bytes:
        state, size, items = await self._storage.queue(channel, limit, after, consumer=consumer)
        return encode_queue(state, size, items)

    async def set_paused(self, channel: str, consumer: str, paused: bool) -> None:
        await self._storage.set_paused(channel, paused, consumer=consumer)
        forwarder = self.get(channel, consumer)
        if forwarder is not None:
            forwarder.set_paused(paused)

    async def clear(self, channel: str, consumer: str) -> int:
        cleared = await self._storage.clear(channel, self._clock.seconds(), consumer=consumer)
        forwarder = self.get(channel, consumer)
        if forwarder is not None:
            forwarder.poke()
        return cleared

    async def retry(self, channel: str, consumer: str, webhook_id: int) -> AttemptResult | None:
        """None when there is no such webhook; LookupError while the
        consumer's forwarder is being replaced (or it has none)."""
        forwarder = self.get(channel, consumer)
        if forwarder is None:
            raise LookupError(forwarder_name(channel, consumer))
        try:
            return await forwarder.retry(webhook_id)
        except LeaseUnavailable:
            late = "the node forwarding this consumer did not hand it over in time; try again"
            raise ApiError(503, "internal_error", late, {"Retry-After": "1"}) from None


def _push_consumers(config: Config):
    return [(ch, c) for ch in config.channels for c in ch.consumers if c.forward is not None]
