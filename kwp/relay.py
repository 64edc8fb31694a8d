"""The relay agent behind ``kwp relay``: pull a channel in lease mode and
POST each webhook, in order, to a target on the inside network.

Only outbound connections.  A webhook is acked only after the target answered
2xx, so whatever restarts (the relay, the proxy, the target) an unacked
webhook comes back when its lease ends: delivery is at least once, and each
POST carries ``X-Kwp-Delivery-Id`` so the target can drop a repeat.  No
redirect is followed, and no answer of the proxy is read beyond
``max_response`` bytes.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import random
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from kwp.config import DEFAULT_CONSUMER
from kwp.forward import MAX_BODY_KEPT, OWN_HEADERS, CappedBody, delivery_id, http_client
from kwp.headers import passed_on
from kwp.receive import stored_headers

log = Logger()

# How much longer than `wait` a long-poll may take before it counts as lost.
POLL_SLACK = 30
# The largest answer of the proxy read (a poll of `batch` webhooks, bodies in
# base64); a larger one is a failure, retried with backoff.
MAX_RESPONSE = 32 * 1024 * 1024


class RelayError(Exception):
    """A failure that retrying cannot fix (bad token, unknown channel)."""


@dataclass(frozen=True)
class RelaySettings:
    # The channel's pull URL, https://proxy/api/webhook/NAME, with
    # ?consumer=NAME for one consumer of a channel that has several.
    source: str
    token: str
    target: str
    lease: int = 60
    wait: int = 30
    batch: int = 10
    timeout: float = 30
    min_delay: float = 1
    max_delay: float = 60
    max_response: int = MAX_RESPONSE

    @property
    def channel(self) -> str:
        """The channel's name: the last segment of the source URL's path."""
        return channel_of(self.source)

    @property
    def consumer(self) -> str:
        """The consumer ``?consumer=`` names in the source URL, else the
        implicit one of a channel without consumers."""
        return parse_qs(urlsplit(self.source).query).get("consumer", [DEFAULT_CONSUMER])[-1]


@dataclass(frozen=True)
class Item:
    id: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def parse(cls, item: dict) -> "Item":
        if not isinstance(item, dict):
            raise ValueError(f"{item!r} is not a webhook")
        if "body" not in item:
            raise RelayError("the proxy ignored raw=1 (it is older than this relay); cannot relay byte for byte")
        return cls(item["id"], item["headers"], base64.b64decode(item["body"]))


class Backoff:
    """Exponential delays from min_delay to max_delay with 'equal jitter':
    each delay is between half and all of the exponential step."""

    def __init__(self, min_delay: float, max_delay: float, random: Callable[[], float] = random.random):
        self._min = min_delay
        self._max = max_delay
        self._random = random
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        step = min(self._max, self._min * 2 ** (self.failures - 1))
        return step / 2 + self._random() * step / 2

    def reset(self) -> None:
        self.failures = 0


def channel_of(source: str) -> str:
    return unquote(urlsplit(source).path.rstrip("/").rpartition("/")[2])


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (localhost or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _with_path(url: str, suffix: str, query: dict | None = None) -> str:
    """url with suffix added to its path and query added to its own query."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + suffix
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode([*parse_qsl(parts.query), *(query or {}).items()]), ""))


def target_headers(channel: str, consumer: str, item: Item, attempt: int) -> tuple[Headers, list[str]]:
    """The headers of a POST to the target: the stored ones that are passed
    on (kwp.headers), the delivery id and the attempt number; and the names
    of stored headers left out because they cannot be sent."""
    stored = stored_headers(item.headers, OWN_HEADERS)
    kept, unsendable = passed_on(stored)
    headers = Headers()
    for name, value in kept.items():
        headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    headers.addRawHeader(b"x-kwp-delivery-id", delivery_id(channel, item.id, consumer).encode())
    headers.addRawHeader(b"x-kwp-attempt", str(attempt).encode())
    return headers, unsendable


class Relay:
    """``run()`` relays until ``stop()``; ``http`` is a treq HTTPClient (or
    anything with its ``request`` and responses with ``code``/``content()``)."""

    def __init__(self, settings: RelaySettings, http, clock, random: Callable[[], float] = random.random):
        self._settings = settings
        self._http = http
        self._clock = clock
        self._proxy_backoff = Backoff(settings.min_delay, settings.max_delay, random)
        self._target_backoff = Backoff(settings.min_delay, settings.max_delay, random)
        self._auth = Headers({b"authorization": [f"Bearer {settings.token}".encode("latin-1")]})
        self._poll_url = _with_path(
            settings.source, "", {"lease": settings.lease, "wait": settings.wait, "limit": settings.batch, "raw": 1}
        )
        self._ack_url = _with_path(settings.source, "/ack")
        self._list_url = _with_path(settings.source, "/list", {"limit": 1})
        # Delivered to the target, not yet acked at the proxy.
        self._unacked: list[int] = []
        self._order_checked = False
        self._stopping = False
        self._interruptible: Deferred | None = None
        self._done: Deferred | None = None
        self.delivered = 0

    def stop(self) -> Deferred:
        """Stop after the POST in flight, if any; fires when the relay has
        stopped."""
        self._stopping = True
        if self._interruptible is not None:
            self._interruptible.cancel()
        if self._done is None:
            return succeed(None)
        done = Deferred()
        self._done.addBoth(lambda result: done.callback(None) or result)
        return done

    def start(self) -> Deferred:
        """Relay until stop(); fails with RelayError on a refusal."""
        self._done = ensureDeferred(self._run())
        return self._done

    async def _run(self) -> None:
        log.info("relaying {source} to {target}", source=self._settings.source, target=self._settings.target)
        try:
            while not self._stopping:
                await self._flush_acks(retry=True)
                items = await self._poll()
                if items and not self._order_checked:
                    if not await self._order_is_safe(items[0].id):
                        continue
                    self._order_checked = True
                for item in items:
                    if self._stopping:
                        break
                    await self._deliver(item)
        except CancelledError:
            if not self._stopping:
                raise
        await self._flush_acks(retry=False)
        log.info("relay stopped after {n} deliveries", n=self.delivered)

    async def _interrupt(self, d: Deferred):
        """Await d unless stop() comes first (then CancelledError)."""
        if self._stopping:
            d.cancel()
        self._interruptible = d
        try:
            return await d
        finally:
            self._interruptible = None

    async def _sleep(self, seconds: float) -> None:
        await self._interrupt(task.deferLater(self._clock, seconds, lambda: None))

    def _call(self, method: str, url: str, headers: Headers, data: bytes | None, timeout: float, limit: int):
        """(status, response, body, truncated) of one request, with no
        redirect followed and at most limit bytes of body read; failing with
        TimeoutError after timeout."""

        async def call():
            response = await self._http.request(
                method, url, headers=headers, data=data, allow_redirects=False, unbuffered=True
            )
            reader = CappedBody(limit)
            response.deliverBody(reader)
            body = await reader.done
            return response.code, response, body, reader.truncated

        return ensureDeferred(call()).addTimeout(timeout, self._clock)

    async def _proxy(self, method: str, url: str, data: bytes | None = None, timeout=None, interruptible=True):
        """The JSON answer of the proxy, or None after a failure worth
        retrying (logged).  Raises RelayError on a refusal."""
        headers = self._auth.copy()
        if data is not None:
            headers.setRawHeaders(b"content-type", [b"application/json"])
        limit = self._settings.max_response
        call = self._call(method, url, headers, data, timeout or self._settings.timeout, limit)
        try:
            status, response, body, truncated = await (self._interrupt(call) if interruptible else call)
            if status in (400, 401, 403, 404):
                raise RelayError(f"the proxy refused {method} {urlsplit(url).path}: {status} {body[:200]!r}")
            if 300 <= status < 400:
                location = (response.headers.getRawHeaders(b"location") or [b"?"])[0].decode("latin-1")
                raise RelayError(f"the proxy redirects {urlsplit(url).path} to {location!r} ({status}); "
                                 "relay from the URL it names (redirects are not followed)")
            if not 200 <= status < 300:
                raise ValueError(f"status {status}")
            if truncated:
                raise ValueError(f"the answer is larger than {limit} bytes (--max-response-size; or a smaller --batch)")
            answer = json.loads(body)
        except (CancelledError, RelayError):
            raise
        except Exception as e:
            if self._stopping:
                # treq reports a cancelled request as a failed one.
                raise CancelledError() from e
            log.warn("proxy {method} {path} failed: {failure}", method=method, path=urlsplit(url).path, failure=e)
            return None
        self._proxy_backoff.reset()
        return answer

    async def _proxy_backoff_sleep(self) -> None:
        delay = self._proxy_backoff.next()
        log.info("retrying the proxy in {delay:.1f}s", delay=delay)
        await self._sleep(delay)

    async def _poll(self) -> list[Item]:
        answer = await self._proxy("GET", self._poll_url, timeout=self._settings.wait + POLL_SLACK)
        if answer is None:
            await self._proxy_backoff_sleep()
            return []
        try:
            if not isinstance(answer, list):
                raise ValueError("not a list")
            items = [Item.parse(i) for i in answer]
        except RelayError:
            raise
        except Exception as e:
            log.warn("the proxy's answer is not a list of webhooks ({error}); retrying", error=e)
            await self._proxy_backoff_sleep()
            return []
        if items:
            log.info("leased {n} webhook(s) {first}..{last}", n=len(items), first=items[0].id, last=items[-1].id)
        return items

    async def _order_is_safe(self, first: int) -> bool:
        """After a start, a crashed predecessor may still hold leases on
        webhooks ahead in the queue; delivering now would overtake them.  The
        head of the queue (the list, in queue order, leased ones included)
        must be the first webhook this relay leased; else wait until every
        lease, ours included, has run out, and poll again."""
        answer = await self._proxy("GET", self._list_url)
        if answer is None:
            await self._proxy_backoff_sleep()
            return False
        if not answer or answer[0]["id"] == first:
            return True
        log.info(
            "webhook {ahead} is leased elsewhere (an earlier relay?); waiting {lease}s for its lease to end",
            ahead=answer[0]["id"],
            lease=self._settings.lease,
        )
        await self._sleep(self._settings.lease + 1)
        return False

    async def _deliver(self, item: Item) -> None:
        """POST item until the target answers 2xx, or stop()."""
        attempt = 0
        while not self._stopping:
            attempt += 1
            headers, unsendable = target_headers(self._settings.channel, self._settings.consumer, item, attempt)
            if unsendable and attempt == 1:
                log.warn("webhook {id}: headers {names} are not valid HTTP; sent without them", id=item.id,
                         names=unsendable)
            try:
                # Not interrupted by stop(): its outcome decides the ack.
                status, *_ = await self._call(
                    "POST", self._settings.target, headers, item.body, self._settings.timeout, MAX_BODY_KEPT
                )
            except Exception as e:
                failure = f"{type(e).__name__}: {e}"
            else:
                if 200 <= status < 300:
                    log.info("delivered {id} ({status}, attempt {attempt})", id=item.id, status=status, attempt=attempt)
                    self._target_backoff.reset()
                    self.delivered += 1
                    self._unacked.append(item.id)
                    await self._flush_acks(retry=False)
                    return
                failure = f"status {status}"
            delay = self._target_backoff.next()
            log.warn(
                "target refused {id} ({failure}, attempt {attempt}); retrying in {delay:.1f}s",
                id=item.id,
                failure=failure,
                attempt=attempt,
                delay=delay,
            )
            await self._sleep(delay)

    async def _flush_acks(self, retry: bool) -> None:
        """Ack what was delivered; with retry, until the proxy took it."""
        while self._unacked:
            ids = list(self._unacked)
            answer = await self._proxy("POST", self._ack_url, json.dumps({"ids": ids}).encode(), interruptible=False)
            if answer is not None:
                del self._unacked[: len(ids)]
                log.debug("acked {ids}", ids=ids)
            elif not retry or self._stopping:
                return
            else:
                await self._proxy_backoff_sleep()


async def run_relay(reactor, settings: RelaySettings) -> None:
    """The relay on the real reactor with a treq client, stopped by the
    reactor's shutdown (SIGINT, SIGTERM)."""
    client, pool = http_client(reactor)
    relay = Relay(settings, client, reactor)
    reactor.addSystemEventTrigger("before", "shutdown", relay.stop)
    try:
        await relay.start()
    except RelayError as e:
        log.error("{error}; giving up", error=e)
        raise SystemExit(1)
    finally:
        await pool.closeCachedConnections()
