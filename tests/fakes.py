"""Threadless stand-ins for tests on a task.Clock: an in-memory IStorage with
the claim/lease/ack semantics of kwp.storage.sqlite, a storage that only
answers the queue figures, and the part of a twisted.web Request that
kwp.pull.Puller uses."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from kwp.config import DEFAULT_CONSUMER
from kwp.storage import IStorage, NewWebhook, QueueState, StoredWebhook


@dataclass
class _Row:
    channel: str
    consumer: str
    headers_json: str
    body: bytes
    received_at: float
    claim: str | None = None
    lease_until: float | None = None
    deliveries: int = 0

    def stored(self, id: int) -> StoredWebhook:
        return StoredWebhook(id, self.headers_json, self.body, self.received_at, self.deliveries)


@implementer(IStorage)
class MemoryStorage:
    """Every call answers at once.  Each route of a webhook is a row in its
    consumer's queue; a delivered row is gone (no history).  No dedup
    windows and no max-queue."""

    def __init__(self):
        self.rows: dict[tuple[int, str], _Row] = {}
        self._next_id = 1

    def insert(self, webhook: NewWebhook):
        id, self._next_id = self._next_id, self._next_id + 1
        for route in webhook.routes:
            self.rows[id, route.consumer] = _Row(
                webhook.channel, route.consumer, webhook.headers_json, webhook.body, webhook.received_at
            )
        return succeed(id)

    def _of(self, channel, consumer):
        return sorted((id, row) for (id, _), row in self.rows.items() if (row.channel, row.consumer) == (channel, consumer))

    def claim(self, channel, claim_id, limit, now, lease_seconds=None, *, consumer=DEFAULT_CONSUMER):
        for _, row in self._of(channel, consumer):
            if row.lease_until is not None and row.lease_until <= now:
                row.claim = row.lease_until = None
        taken = [(id, row) for id, row in self._of(channel, consumer) if row.claim is None][:limit]
        for _, row in taken:
            row.claim = claim_id
            row.lease_until = None if lease_seconds is None else now + lease_seconds
            row.deliveries += 1
        return succeed([row.stored(id) for id, row in taken])

    def finish_claim(self, claim_id, now):
        for key in [key for key, row in self.rows.items() if row.claim == claim_id]:
            del self.rows[key]
        return succeed(None)

    def release_claim(self, claim_id):
        released = 0
        for row in self.rows.values():
            if row.claim == claim_id:
                row.claim = row.lease_until = None
                row.deliveries -= 1
                released += 1
        return succeed(released)

    def ack(self, channel, ids, now, *, consumer=DEFAULT_CONSUMER):
        acked = 0
        for id in ids:
            row = self.rows.get((id, consumer))
            if row is not None and row.channel == channel and row.deliveries > 0:
                del self.rows[id, consumer]
                acked += 1
        return succeed(acked)

    def list(self, channel, limit, after=0, *, consumer=DEFAULT_CONSUMER):
        return succeed([row.stored(id) for id, row in self._of(channel, consumer) if id > after][:limit])

    def delete(self, channel, webhook_id, now, *, consumer=DEFAULT_CONSUMER):
        row = self.rows.get((webhook_id, consumer))
        if row is None or row.channel != channel:
            return succeed(False)
        del self.rows[webhook_id, consumer]
        return succeed(True)

    def ping(self):
        return succeed(None)


class FakeStorage:
    """Answers the queue figures at once: queue_stats with stats
    ({(channel, consumer): QueueStats}), or fails with it when it is an
    exception; queue_state with states ({(channel, consumer): QueueState})."""

    def __init__(self, stats=None, states=None):
        self.stats = stats or {}
        self.states = states or {}

    def queue_stats(self):
        if isinstance(self.stats, Exception):
            return fail(self.stats)
        return succeed(dict(self.stats))

    def queue_state(self, channel, *, consumer=DEFAULT_CONSUMER):
        return succeed(self.states.get((channel, consumer), QueueState()))


class _Transport:
    def __init__(self):
        self.aborted = False

    def abortConnection(self):
        self.aborted = True


class FakeRequest:
    """Collects what is written.  With pause_after_write the 'transport'
    pauses its producer after every write, as a full socket buffer would."""

    def __init__(self, pause_after_write: bool = False):
        self.written: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        self.transport = _Transport()
        # As on twisted.web's Request: None once the connection is lost.
        self.channel = self.transport
        self.producer = None
        self.pause_after_write = pause_after_write
        self._finished: list[Deferred] = []
        self._closed: list[Deferred] = []

    @property
    def startedWriting(self) -> bool:
        return bool(self.written)

    def setHeader(self, name, value):
        self.headers[name] = value

    def notifyFinish(self) -> Deferred:
        d = Deferred()
        self._finished.append(d)
        return d

    def close_when_written(self) -> Deferred:
        d = Deferred()
        self._closed.append(d)
        return d

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        if self.channel is None:
            raise AttributeError("'NoneType' object has no attribute 'unregisterProducer'")  # as on twisted.web
        self.producer = None

    def write(self, data: bytes):
        self.written.append(data)
        if self.pause_after_write and self.producer is not None:
            self.producer.pauseProducing()

    def body(self) -> bytes:
        return b"".join(self.written)

    def finish(self):
        """The response went out completely, then the connection closed."""
        for d in self._finished:
            d.callback(None)
        for d in self._closed:
            d.callback(True)

    def lose(self):
        """The client went away first."""
        self.channel = None
        for d in self._finished:
            d.errback(Failure(ConnectionError("gone")))
        for d in self._closed:
            d.callback(False)
