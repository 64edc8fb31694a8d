"""Pull delivery: GET (take and delete), long-poll, lease/ack, list, delete.

A GET claims rows page by page under its own claim id and streams them as a
JSON array.  Only when the response has been written completely, down to the
kernel, are the claimed rows deleted; a client that goes away releases them.  With a lease
the rows are not deleted but hidden until the lease ends or they are acked.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from kwp.errors import ApiError, bad_request
from kwp.notify import Notifier
from kwp.storage import StoredWebhook

log = Logger()

PAGE = 200
MAX_LIMIT = 10000
MAX_WAIT = 60
MAX_LEASE = 3600
MAX_ID = 2**63 - 1
# Seconds a long-poll refused for its token's cap is told to wait.
WAITERS_RETRY_AFTER = 5


def int_arg(args: dict[str, str], name: str, low: int, high: int) -> int | None:
    raw = args.get(name)
    if raw is None:
        return None
    # int() would also take " 7", "+7", "1_000" and non-ASCII digits.
    if not (raw.isascii() and raw.isdigit()):
        raise bad_request(f"'{name}' must be a whole number from {low} to {high}")
    # Longer than high: out of range, and int() refuses over 4300 digits.
    value = int(raw) if len(raw) <= len(str(high)) else high + 1
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be from {low} to {high}, got {value}")
    return value


@dataclass(frozen=True)
class PullQuery:
    limit: int | None = None
    wait: int = 0
    lease: int | None = None
    raw: bool = False

    @classmethod
    def parse(cls, args: dict[str, str]) -> "PullQuery":
        return cls(
            limit=int_arg(args, "limit", 1, MAX_LIMIT),
            wait=int_arg(args, "wait", 0, MAX_WAIT) or 0,
            lease=int_arg(args, "lease", 1, MAX_LEASE),
            raw=bool(int_arg(args, "raw", 0, 1)),
        )


def parse_ids(body: bytes) -> list[int]:
    """The ids of an ack body {"ids": [...]}; raises ApiError 400."""
    try:
        ids = json.loads(body)["ids"]
    except (ValueError, TypeError, KeyError):
        raise bad_request('the body must be {"ids": [id, ...]}') from None
    if not isinstance(ids, list) or not all(type(i) is int and 0 <= i <= MAX_ID for i in ids):
        raise bad_request('"ids" must be a list of webhook ids')
    if len(ids) > MAX_LIMIT:
        raise bad_request(f"at most {MAX_LIMIT} ids per ack")
    return ids


def encode(item: StoredWebhook, with_deliveries: bool, raw: bool = False) -> bytes:
    """One item of the pull array.  The stored body is valid JSON and is
    spliced in as is; with raw it goes as base64 in "body" instead, for a
    consumer that must pass on the exact bytes."""
    if raw:
        body = b'"body":"%s"' % base64.b64encode(item.body)
    else:
        body = b'"payload":%s' % item.body
    deliveries = b',"deliveries":%d' % item.deliveries if with_deliveries else b""
    return b'{"id":%d,"headers":%s,%s,"received_at":%d%s}' % (
        item.id,
        item.headers_json.encode(),
        body,
        int(item.received_at),
        deliveries,
    )


@implementer(IPushProducer)
class _Throttle:
    """Lets the writer wait while the transport's buffer is full."""

    def __init__(self):
        self._paused: Deferred | None = None

    def pauseProducing(self):
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self):
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self):
        self.resumeProducing()

    def writable(self) -> Deferred | None:
        return self._paused


class Puller:
    def __init__(self, storage, notifier: Notifier, clock):
        self._storage = storage
        self._notifier = notifier
        self._clock = clock
        # Long-polls in progress per token.
        self._polls: dict[str, int] = {}

    async def take(
        self,
        request,
        channel: str,
        consumer: str,
        query: PullQuery,
        token: str | None = None,
        max_waiters: int | None = None,
    ) -> bytes:
        """Stream the pending webhooks of the consumer's queue to request; returns the
        closing bracket for the route to write.  A long-poll (``wait``) is
        refused with 429 while ``max_waiters`` others of the same token are
        in progress."""
        if not query.wait or token is None or max_waiters is None:
            return await self._take(request, (channel, consumer), query)
        polls = self._polls.get(token, 0)
        if polls >= max_waiters:
            raise ApiError(
                429,
                "too_many_requests",
                f"this token has {polls} long-polls in progress already (server.max-waiters-per-token)",
                {"Retry-After": str(WAITERS_RETRY_AFTER)},
            )
        self._polls[token] = polls + 1
        try:
            return await self._take(request, (channel, consumer), query)
        finally:
            self._polls[token] -= 1
            if not self._polls[token]:
                del self._polls[token]

    async def _take(self, request, queue: tuple[str, str], query: PullQuery) -> bytes:
        claim_id = uuid.uuid4().hex
        # Set when the first webhook is written without a lease: fires with
        # whether the response was handed to the kernel whole.
        delivered: list[Deferred] = []

        def settle(delivered_whole: bool):
            if delivered_whole:
                return self._storage.finish_claim(claim_id, self._clock.seconds())
            return self._storage.release_claim(claim_id).addCallback(given_back)

        def written(_):
            if delivered:
                return delivered[0].addCallback(settle)

        def dropped(_):
            return self._storage.release_claim(claim_id).addCallback(given_back)

        def given_back(released: int):
            if released:
                self._notifier.fire(queue, released)

        request.notifyFinish().addCallbacks(written, dropped).addErrback(
            lambda f: log.failure("settling pull {claim} on {queue}", f, claim=claim_id, queue="/".join(queue))
        )
        request.setHeader(b"content-type", b"application/json")
        throttle = _Throttle()
        request.registerProducer(throttle, True)
        try:
            await self._stream(request, queue, claim_id, query, throttle, delivered)
        except CancelledError:
            raise
        except Exception:
            # The status line is gone already: cut the response short so the
            # client cannot take a truncated array for a complete one.
            if request.startedWriting:
                request.transport.abortConnection()
            raise
        finally:
            # A request whose connection is lost has no channel to unregister from.
            if request.channel is not None:
                request.unregisterProducer()
        return b"]"

    async def _stream(self, request, queue, claim_id, query, throttle, delivered) -> None:
        channel, consumer = queue
        deadline = self._clock.seconds() + query.wait
        remaining = query.limit if query.limit is not None else float("inf")
        separator = b"["
        sent = 0
        while remaining > 0:
            asked = int(min(PAGE, remaining))
            # Waiting starts before the claim, so an insert between the claim
            # and the sleep still wakes it.
            waiter = self._notifier.wait_for_item(queue) if sent == 0 and query.wait else None
            try:
                page = await self._storage.claim(
                    channel, claim_id, asked, self._clock.seconds(), query.lease, consumer=consumer
                )
            except BaseException:
                if waiter is not None:
                    self._leave(waiter, queue)
                raise
            if waiter is not None:
                if not page and self._clock.seconds() < deadline and not self._notifier.closed:
                    if await self._sleep(waiter, deadline):
                        continue
                else:
                    self._leave(waiter, queue)
            if page and query.lease is None and not delivered:
                # A finished request may still sit in Twisted's write buffer,
                # and a client that goes away then never gets it; only a
                # connection closed behind the response proves it was sent.
                delivered.append(request.close_when_written())
            if page:
                request.write(separator + b",".join(encode(item, query.lease is not None, query.raw) for item in page))
                separator = b","
            sent += len(page)
            remaining -= len(page)
            if len(page) < asked:
                break
            paused = throttle.writable()
            if paused is not None:
                await paused
        if sent == 0:
            request.write(separator)
        elif query.lease is not None:
            # Wake as many long-polls when these leases run out.
            self._clock.callLater(query.lease, self._notifier.fire, queue, sent)

    def _leave(self, waiter: Deferred, queue: tuple[str, str]) -> None:
        """Stop waiting without having claimed since waiter fired: a wake it
        got (during its claim) may be for a webhook that the claim did not
        take, so it goes to the next waiter."""
        if waiter.called:
            self._notifier.fire(queue)
        else:
            waiter.addErrback(lambda f: f.trap(CancelledError))
            waiter.cancel()

    async def _sleep(self, waiter: Deferred, deadline: float) -> bool:
        """Whether waiter fired before the deadline."""
        waiter.addTimeout(deadline - self._clock.seconds(), self._clock)
        try:
            await waiter
        except TimeoutError:
            return False
        return True
