"""Durable storage of received webhooks, behind a small interface.

The routes and services only see ``IStorage``; ``open_storage`` picks the
backend from the database URL, so another backend can be added without
touching them.
"""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Interface


class StorageError(Exception):
    """The database cannot be opened or used."""


class StorageUnavailable(StorageError):
    """Nothing can be written now (disk full, read-only database), while what
    is stored stays intact: a sender should retry later."""


class Outcome:
    """Why an insert stored nothing."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


DUPLICATE = Outcome("duplicate")
QUEUE_FULL = Outcome("queue_full")

PENDING = "pending"
DEAD = "dead"


@dataclass(frozen=True)
class NewWebhook:
    channel: str
    headers_json: str
    body: bytes
    received_at: float
    delivery_id: str | None = None
    dedup_window: float = 0
    max_queue: int | None = None


@dataclass(frozen=True)
class StoredWebhook:
    id: int
    headers_json: str
    body: bytes
    received_at: float
    deliveries: int = 0


@dataclass(frozen=True)
class ForwardItem:
    """A webhook as the forwarder and the queue API see it."""

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
class ChannelState:
    paused: bool = False
    last_success_at: float | None = None
    last_error_at: float | None = None
    last_error_message: str | None = None


class IStorage(Interface):
    def insert(webhook: NewWebhook):
        """Deferred firing with the new id, DUPLICATE or QUEUE_FULL, only
        after the transaction holding it has committed."""

    def claim(channel: str, claim_id: str, limit: int, now: float, lease_seconds: float | None):
        """Deferred list of StoredWebhook, oldest first, that no other claim
        holds, now held by claim_id (and hidden until now + lease_seconds)."""

    def finish_claim(claim_id: str):
        """Deferred: delete every webhook held by claim_id (an unleased pull
        whose response was written)."""

    def release_claim(claim_id: str):
        """Deferred: give back every webhook held by claim_id."""

    def ack(channel: str, ids: list[int]):
        """Deferred number of handed-out webhooks of channel deleted."""

    def list(channel: str, limit: int, after: int):
        """Deferred list of the stored webhooks of channel with id > after."""

    def delete(channel: str, webhook_id: int):
        """Deferred bool: whether the webhook existed and was deleted."""

    def forward_window(channel: str, limit: int, now: float):
        """Deferred list of ForwardItem: the first ``limit`` pending webhooks
        of channel in receive order, leaving out those a pull lease holds."""

    def forward_get(channel: str, webhook_id: int):
        """Deferred ForwardItem of channel (pending or dead), or None."""

    def forward_succeeded(channel: str, webhook_id: int, now: float):
        """Deferred: delete the delivered webhook, note the success."""

    def forward_failed(channel: str, webhook_id: int, now: float, error: str, next_attempt_at, state: str):
        """Deferred: count a failed attempt on the webhook, note the error."""

    def channel_state(channel: str):
        """Deferred ChannelState (defaults for a channel never seen)."""

    def set_paused(channel: str, paused: bool):
        """Deferred: store whether the channel's forwarding is paused."""

    def queue(channel: str, limit: int, after: int):
        """Deferred (ChannelState, size, list of ForwardItem with id > after)."""

    def clear(channel: str):
        """Deferred number of webhooks of channel deleted."""

    def queue_stats():
        """Deferred dict: channel name -> (number stored, received_at of the
        oldest), for the channels that have anything stored."""

    def forward_stats(channels: list[str]):
        """Deferred dict: channel name -> (number of dead webhooks, received_at
        of the oldest pending one or None), for each of channels."""

    def ping():
        """Deferred that fires when the database answers."""


def open_storage(url: str, reactor) -> "IStorage":
    """The storage service for a database URL; raises StorageError when the
    database cannot be opened, so start-up fails before any port is bound."""
    from kwp.storage.sqlite import SQLiteStorage, sqlite_path

    if url.startswith(("postgres://", "postgresql://")):
        raise StorageError(f"database {url.split('://')[0]}:// is not supported yet by this version of kwp")
    storage = SQLiteStorage(sqlite_path(url), reactor)
    storage.prepare()
    return storage
