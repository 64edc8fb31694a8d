"""Durable storage of received webhooks, behind a small interface.

A webhook is stored once; each consumer it is routed to gets a delivery of
it: its place in that consumer's queue, with the state of its pulls or
pushes.  A webhook whose deliveries are all done stays as history until the
retention prunes it.  The routes and services only see ``IStorage``;
``open_storage`` picks the backend from the database URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from zope.interface import Attribute, Interface

from kwp.config import DEFAULT_CONSUMER


class StorageError(Exception):
    """The database cannot be opened or used."""


class StorageUnavailable(StorageError):
    """Nothing can be written now (disk full, read-only database, database
    down), while what is stored stays intact: a sender should retry later."""


class Outcome:
    """Why an insert stored nothing."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


DUPLICATE = Outcome("duplicate")
QUEUE_FULL = Outcome("queue_full")

# States of a delivery.  Pending and dead ones are open: their webhook is
# never pruned.  Delivered ones were pulled, acked or forwarded; deleted ones
# left the queue by DELETE or clear without being delivered.
PENDING = "pending"
DEAD = "dead"
DELIVERED = "delivered"
DELETED = "deleted"
OPEN_STATES = (PENDING, DEAD)
# The state of a webhook that no consumer took.
FILTERED = "filtered"


@dataclass(frozen=True)
class Route:
    """A consumer a new webhook is queued for, and that consumer's queue limit."""

    consumer: str = DEFAULT_CONSUMER
    max_queue: int | None = None


@dataclass(frozen=True)
class NewWebhook:
    channel: str
    headers_json: str
    body: bytes
    received_at: float
    delivery_id: str | None = None
    dedup_window: float = 0
    # No route: the webhook is kept as history only (filtered).
    routes: tuple[Route, ...] = (Route(),)


@dataclass(frozen=True)
class StoredWebhook:
    id: int
    headers_json: str
    body: bytes
    received_at: float
    deliveries: int = 0


@dataclass(frozen=True)
class ForwardItem:
    """A webhook as a push consumer and the queue API see it."""

    id: int
    headers_json: str
    body: bytes
    received_at: float
    forward_attempts: int = 0
    last_attempt_at: float | None = None
    last_error: str | None = None
    next_attempt_at: float | None = None
    state: str = PENDING


@dataclass(frozen=True)
class QueueState:
    """A consumer's pause switch and the outcomes of its last pushes."""

    paused: bool = False
    last_success_at: float | None = None
    last_error_at: float | None = None
    last_error_message: str | None = None


@dataclass(frozen=True)
class QueueStats:
    size: int = 0
    # When the delivery at the head of the queue was queued; None when empty.
    oldest_at: float | None = None
    dead: int = 0


@dataclass(frozen=True)
class Attempt:
    """One push attempt of a delivery, as the delivery log keeps it."""

    at: float
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None
    response_excerpt: str | None = None


@dataclass(frozen=True)
class Delivery:
    """A webhook's delivery to one consumer, as the history shows it."""

    consumer: str
    state: str
    attempts: int = 0
    handouts: int = 0
    taken_at: float | None = None
    delivered_at: float | None = None
    next_attempt_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    log: tuple[Attempt, ...] = ()


@dataclass(frozen=True)
class Event:
    """A webhook in the history, with its deliveries."""

    id: int
    received_at: float
    headers_json: str
    body: bytes
    deliveries: tuple[Delivery, ...] = ()

    @property
    def state(self) -> str:
        """pending when a delivery is pending, else dead when one is dead,
        delivered when it has any delivery, filtered when it has none."""
        states = {d.state for d in self.deliveries}
        for state in (PENDING, DEAD):
            if state in states:
                return state
        return DELIVERED if states else FILTERED


@dataclass(frozen=True)
class EventQuery:
    """Which events of a channel a listing or a bulk replay takes."""

    before: int | None = None
    since: float | None = None
    until: float | None = None
    state: str | None = None
    consumer: str | None = None


@dataclass(frozen=True)
class Retention:
    """How long the history keeps a webhook once every delivery of it is
    done, and how many such webhooks a channel keeps at most."""

    seconds: float = 72 * 3600
    history_max: int = 100_000
    # channel -> (seconds, history_max), for channels that override them.
    channels: Mapping[str, tuple[float, int]] = field(default_factory=dict)

    def of(self, channel: str) -> tuple[float, int]:
        return self.channels.get(channel, (self.seconds, self.history_max))

    def keeps(self, channel: str) -> bool:
        return self.of(channel)[0] > 0


class IStorage(Interface):
    """Per-queue calls name a channel and take the consumer as the keyword
    ``consumer`` (DEFAULT_CONSUMER when left out)."""

    retention = Attribute("Retention: the app sets it at start and on reload")
    shared = Attribute("True where other nodes work on the same database (PostgreSQL)")

    def insert(webhook: NewWebhook):
        """Deferred firing with the new id, DUPLICATE or QUEUE_FULL, only
        after the transaction holding it has committed."""

    def claim(channel: str, claim_id: str, limit: int, now: float, lease_seconds: float | None, consumer: str):
        """Deferred list of StoredWebhook in queue order that no other claim
        holds, now held by claim_id (and hidden until now + lease_seconds)."""

    def finish_claim(claim_id: str, now: float):
        """Deferred: the deliveries held by claim_id (an unleased pull whose
        response was written) are delivered."""

    def release_claim(claim_id: str):
        """Deferred number of deliveries held by claim_id, given back."""

    def ack(channel: str, ids: list[int], now: float, consumer: str):
        """Deferred number of handed-out deliveries now delivered."""

    def list(channel: str, limit: int, after: int, consumer: str):
        """Deferred list of the pending deliveries of the queue, in queue
        order, after the one of webhook ``after``."""

    def delete(channel: str, webhook_id: int, now: float, consumer: str):
        """Deferred bool: whether the webhook was in the queue and left it."""

    def forward_window(channel: str, limit: int, now: float, consumer: str):
        """Deferred list of ForwardItem: the first ``limit`` pending
        deliveries in queue order, leaving out those a pull lease holds."""

    def forward_get(channel: str, webhook_id: int, consumer: str):
        """Deferred ForwardItem of the queue (pending or dead), or None."""

    def forward_succeeded(channel: str, webhook_id: int, attempt: Attempt, consumer: str, token: int | None):
        """Deferred bool: the delivery is delivered and the attempt logged;
        with ``token``, only while the forwarding lease has that fencing
        token (False: lost, nothing written).  Successes that come while
        others are written are written together, in one commit after it."""

    def forward_failed(
        channel: str, webhook_id: int, attempt: Attempt, next_attempt_at, state: str, consumer: str, token: int | None
    ):
        """Deferred bool: count and log a failed attempt of the delivery
        (fenced by ``token`` as forward_succeeded)."""

    def acquire_lease(channel: str, owner: str, now: float, seconds: float, consumer: str):
        """Deferred fencing token (int) of the queue's forwarding lease, now
        held by owner until now + seconds, or None while another owner
        holds it.  A new owner gets a larger token than any before."""

    def renew_lease(channel: str, owner: str, token: int, now: float, seconds: float, consumer: str):
        """Deferred QueueState when owner still holds the lease with token
        (extended to now + seconds), or None when it was lost."""

    def release_lease(channel: str, owner: str, token: int, consumer: str):
        """Deferred: give the lease up, so another node takes it at once."""

    def want_lease(channel: str, consumer: str):
        """Deferred: ask the node that holds the queue's forwarding lease
        (another one) to give it up once its attempts in flight end."""

    def on_lease_wanted(callback):
        """callback(channel, consumer) when another node asks for a queue's
        forwarding lease (PostgreSQL)."""

    def on_stored(callback):
        """callback(channel, {consumer: count}) after each commit that
        queued webhooks, on this node or (PostgreSQL) any other."""

    def on_queue_changed(callback):
        """callback(channel, consumer) after a commit that changed a queue's
        pause switch or released its forwarding lease, on any node."""

    def queue_state(channel: str, consumer: str):
        """Deferred QueueState (defaults for a queue never seen)."""

    def set_paused(channel: str, paused: bool, consumer: str):
        """Deferred: store whether the consumer's forwarding is paused."""

    def queue(channel: str, limit: int, after: int, consumer: str):
        """Deferred (QueueState, size, list of ForwardItem after ``after``)."""

    def clear(channel: str, now: float, consumer: str):
        """Deferred number of deliveries that left the queue."""

    def holds(channel: str, consumer: str):
        """Deferred bool: whether the queue has pending or dead deliveries."""

    def queue_stats():
        """Deferred dict: (channel, consumer) -> QueueStats, for the queues
        that hold anything pending or dead; cheap whatever the number of
        webhooks stored."""

    def seen_channels():
        """Deferred list of the channels that have delivery ids remembered."""

    def prune_seen(channel: str, before: float, limit: int):
        """Deferred number of delivery ids of channel seen before ``before``
        forgotten, at most ``limit`` in one short transaction."""

    def events(channel: str, query: EventQuery, limit: int):
        """Deferred list of Event of channel, newest first."""

    def event(channel: str, webhook_id: int):
        """Deferred Event with the log of each delivery, or None."""

    def events_after(channel: str, after: int, limit: int, consumer: str | None):
        """Deferred list of Event with id > after, oldest first (only those
        routed to ``consumer`` when given; deliveries left out)."""

    def replay(channel: str, ids: list[int], consumers: list[str] | None, now: float, state: str | None):
        """Deferred list of (id, replayed, already_pending): each webhook of
        ids that exists, in receive order, queued again at the tail of each
        consumer's queue as a new delivery.  ``consumers`` None: those it was
        routed to; ``state``: only its deliveries in that state."""

    def purge(channel: str, webhook_id: int):
        """Deferred bool: the webhook, its deliveries and log are gone."""

    def prune(now: float, batch: int):
        """Deferred number of webhooks the retention removed, at most batch."""

    def ping():
        """Deferred that fires when the database answers."""


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def redacted(url: str) -> str:
    """A database URL without its password, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def open_storage(url: str, reactor) -> "IStorage":
    """The storage service for a database URL; raises StorageError when the
    database cannot be opened, so start-up fails before any port is bound."""
    if is_postgres_url(url):
        from kwp.storage.postgres import PostgresStorage

        storage = PostgresStorage(url, reactor)
    else:
        from kwp.storage.sqlite import SQLiteStorage, sqlite_path

        storage = SQLiteStorage(sqlite_path(url), reactor)
    storage.prepare()
    return storage
