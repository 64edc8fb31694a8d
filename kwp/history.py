"""The history of a channel (CONTRACT §8): listing with filters, one event
with its delivery log, replay of one event or of a window, purge; and the
background pruner that applies the retention.

A consumer's token sees only the webhooks routed to its consumer, and of
each only its own delivery; it replays to its own consumer only and cannot
purge.  Everything here is plain logic over the storage interface, so the
routes stay thin and the rules are testable without sockets.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable


from kwp.auth import Access, unknown_consumer
from kwp.config import CONSUMER_NAME, Channel, Config
from kwp.errors import ApiError, bad_request, not_found
from kwp.pull import MAX_ID, int_arg
from kwp.routing import Filter, compile_filter, document
from kwp.storage import DEAD, DELIVERED, FILTERED, PENDING, Delivery, Event, EventQuery, Retention


DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
STATES = (PENDING, DELIVERED, DEAD, FILTERED)
# Events read from the storage per query while a filter is applied (or a
# window is gathered for a replay), and at most per listing request: a
# filter that matches little returns a short page (even an empty one) with
# next_before, so one request stays cheap.  Each event read holds its body.
SCAN_PAGE = 100
SCAN_LIMIT = 2000
# Webhooks a bulk replay queues again at most per call, and per transaction.
MAX_REPLAY = 100_000
REPLAY_CHUNK = 500

_SECONDS = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?\Z")


def retention(config: Config) -> Retention:
    """The storage's Retention for a config: the server's retention-hours
    and history-max, and the channels that override either."""
    server = config.server
    overrides = {
        c.name: (
            (c.retention_hours if c.retention_hours is not None else server.retention_hours) * 3600,
            c.history_max if c.history_max is not None else server.history_max,
        )
        for c in config.channels
        if c.retention_hours is not None or c.history_max is not None
    }
    return Retention(server.retention_hours * 3600, server.history_max, overrides)


# --- what a request asks for -------------------------------------------------------


def _seconds(value: Any, name: str) -> float | None:
    """A unix time in seconds, from a query string or a JSON body."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if 0 <= value < 10**12:
            return float(value)
    elif isinstance(value, str) and _SECONDS.match(value) and float(value) < 10**12:
        return float(value)
    raise bad_request(f"'{name}' must be a unix time in seconds")


def _state(value: Any) -> str | None:
    if value is None or value in STATES:
        return value
    raise bad_request(f"'state' must be one of {', '.join(STATES)}")


def _filter(value: Any) -> Filter | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request("'filter' must be a JMESPath expression")
    try:
        return compile_filter(value)
    except ValueError as e:
        raise bad_request(f"'filter': {e}") from None


def _consumer_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not CONSUMER_NAME.match(value):
        raise bad_request("'consumer' must be a consumer name ([A-Za-z0-9_.-]{1,64})")
    return value


def scope(access: Access, requested: str | None) -> str | None:
    """The consumer a history request is about: a consumer token's own (403
    for another name), else the one the request names, if any."""
    mine = access.consumer
    if mine is None:
        return requested
    if requested is not None and requested != mine.name:
        raise ApiError(403, "forbidden", f"the token does not give access to consumer {requested!r}")
    return mine.name


def _only_routed(access: Access, state: str | None) -> None:
    if access.consumer is not None and state == FILTERED:
        raise ApiError(403, "forbidden", "a consumer's token sees only the webhooks routed to its consumer")


def _configured(channel: Channel, name: str) -> str:
    if channel.consumer(name) is None:
        raise unknown_consumer(channel, name)
    return name


@dataclass(frozen=True)
class Listing:
    """GET .../events: which events, how many, and the JMESPath filter."""

    query: EventQuery
    limit: int = DEFAULT_LIMIT
    filter: Filter | None = None

    @classmethod
    def parse(cls, access: Access, args: dict[str, str]) -> "Listing":
        state = _state(args.get("state"))
        _only_routed(access, state)
        query = EventQuery(
            before=int_arg(args, "before", 1, MAX_ID),
            since=_seconds(args.get("since"), "since"),
            until=_seconds(args.get("until"), "until"),
            state=state,
            consumer=scope(access, _consumer_name(args.get("consumer"))),
        )
        return cls(query, int_arg(args, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT, _filter(args.get("filter")))


@dataclass(frozen=True)
class Window:
    """POST .../replay: the webhooks of a window to queue again."""

    query: EventQuery
    filter: Filter | None = None
    # Only webhooks with a greater id: where the previous call stopped.
    after: int = 0

    @classmethod
    def parse(cls, access: Access, body: bytes) -> "Window":
        spec = _json_object(body, "since, until, state, consumer, filter, after")
        known = {"since", "until", "state", "consumer", "filter", "after"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise bad_request(f"unknown key {unknown[0]!r}; the keys are {', '.join(sorted(known))}")
        since, state, flt = _seconds(spec.get("since"), "since"), _state(spec.get("state")), _filter(spec.get("filter"))
        if since is None and state is None and flt is None:
            raise bad_request("name at least one of 'since', 'state' and 'filter'")
        _only_routed(access, state)
        consumer = scope(access, _consumer_name(spec.get("consumer")))
        if consumer is not None:
            _configured(access.channel, consumer)
        after = spec.get("after", 0)
        if type(after) is not int or not 0 <= after <= MAX_ID:
            raise bad_request("'after' must be a webhook id")
        query = EventQuery(since=since, until=_seconds(spec.get("until"), "until"), state=state, consumer=consumer)
        return cls(query, flt, after)


def _json_object(body: bytes, keys: str) -> dict:
    if not body.strip():
        return {}
    try:
        spec = json.loads(body)
    except ValueError:
        raise bad_request(f"the body must be a JSON object ({keys})") from None
    if not isinstance(spec, dict):
        raise bad_request(f"the body must be a JSON object ({keys})")
    return spec


def replay_targets(access: Access, body: bytes) -> list[str] | None:
    """The consumers of POST .../events/{id}/replay: the body's
    ``consumers`` (each one the channel has: 404 otherwise), or None for
    those it was routed to.  A consumer's token names its own only."""
    spec = _json_object(body, "consumers")
    names = spec.get("consumers")
    if names is None:
        return None if access.consumer is None else [access.consumer.name]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad_request("'consumers' must be a list of consumer names")
    for name in names:
        scope(access, name)
        _configured(access.channel, name)
    return sorted(set(names))


# --- encoding ----------------------------------------------------------------------


def _ts(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _delivery(d: Delivery, with_log: bool) -> dict:
    encoded = {
        "name": d.consumer,
        "state": d.state,
        "attempts": d.attempts,
        "delivered_at": _ts(d.delivered_at),
        "next_attempt_at": _ts(d.next_attempt_at),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "taken_at": _ts(d.taken_at),
        "handouts": d.handouts,
    }
    if with_log:
        encoded["log"] = [
            {
                "at": _ts(a.at),
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": None if a.duration_ms is None else round(a.duration_ms, 1),
                "response_excerpt": a.response_excerpt,
            }
            for a in d.log
        ]
    return encoded


def encode_event(event: Event, with_log: bool = False) -> bytes:
    """One item of §8; the stored headers and body are valid JSON, spliced as is."""
    consumers = json.dumps([_delivery(d, with_log) for d in event.deliveries]).encode()
    return b'{"id":%d,"received_at":%d,"size":%d,"state":"%s","headers":%s,"payload":%s,"consumers":%s}' % (
        event.id,
        int(event.received_at),
        len(event.body),
        event.state.encode(),
        event.headers_json.encode(),
        event.body,
        consumers,
    )


def encode_page(events: list[Event], next_before: int | None) -> bytes:
    return b'{"items":[%s],"next_before":%s}' % (
        b",".join(encode_event(e) for e in events),
        b"null" if next_before is None else b"%d" % next_before,
    )


def _viewer(access: Access) -> str | None:
    """The consumer whose token asks, if it is a consumer's token."""
    return None if access.consumer is None else access.consumer.name


def _seen_by(event: Event, consumer: str | None) -> Event:
    """The event as a consumer's token sees it: its own delivery only."""
    if consumer is None:
        return event
    return replace(event, deliveries=tuple(d for d in event.deliveries if d.consumer == consumer))


def _matches(flt: Filter | None, event: Event) -> bool:
    if flt is None:
        return True
    try:
        return flt.matches(document(json.loads(event.headers_json), json.loads(event.body)))
    except Exception:
        # As in routing: an expression that fails on a webhook does not match it.
        return False


# --- the operations ------------------------------------------------------------------


class History:
    """§8 over a storage.  ``wake(channel)`` is told after a replay queued
    anything, so forwarders and long-polls of the channel look again."""

    def __init__(self, storage, clock, wake: Callable[[str], Any]):
        self._storage = storage
        self._clock = clock
        self._wake = wake

    async def page(self, access: Access, listing: Listing) -> tuple[list[Event], int | None]:
        """At most listing.limit events, newest first, and the ``before`` of
        the next page (None at the end).  With a filter at most SCAN_LIMIT
        events are read; a page may then be short while more remain."""
        channel, consumer = access.channel.name, _viewer(access)
        query, limit, flt = listing.query, listing.limit, listing.filter
        size = SCAN_PAGE if flt is not None else limit + 1
        found: list[Event] = []
        scanned = 0
        while True:
            events = await self._storage.events(channel, query, size)
            for event in events:
                if len(found) == limit:
                    return found, found[-1].id
                scanned += 1
                if _matches(flt, event):
                    found.append(_seen_by(event, consumer))
            if len(events) < size:
                return found, None
            query = replace(query, before=events[-1].id)
            if scanned >= SCAN_LIMIT and len(found) < limit:
                return found, events[-1].id

    async def event(self, access: Access, webhook_id: int) -> Event:
        """The event with each delivery's log; 404 when absent, or not
        routed to a consumer token's consumer."""
        channel, consumer = access.channel.name, _viewer(access)
        event = None if webhook_id > MAX_ID else await self._storage.event(channel, webhook_id)
        if event is not None and consumer is not None:
            event = _seen_by(event, consumer)
            if not event.deliveries:
                event = None
        if event is None:
            raise not_found(f"no webhook {webhook_id} in the history of channel {channel!r}")
        return event

    async def replay(self, access: Access, webhook_id: int, targets: list[str] | None) -> dict:
        """Queue one webhook again at the tail of each target's queue (None:
        the consumers it was routed to)."""
        channel = access.channel
        if access.consumer is not None:
            await self.event(access, webhook_id)
        results = [] if webhook_id > MAX_ID else await self._storage.replay(
            channel.name, [webhook_id], targets, self._clock.seconds()
        )
        if not results:
            raise not_found(f"no webhook {webhook_id} in the history of channel {channel.name!r}")
        _, replayed, already = results[0]
        if replayed:
            self._wake(channel.name)
        return {"replayed": replayed, "already_pending": already}

    async def replay_window(self, access: Access, window: Window) -> tuple[int, int | None]:
        """Queue again, in receive order, the oldest MAX_REPLAY webhooks of
        the window; the count queued and, when the window holds more, the
        ``after`` that continues it."""
        channel = access.channel.name
        query = window.query
        dead_letters = query.state == DEAD
        if dead_letters and query.consumer is None:
            # The storage's state of a webhook is pending while any of its
            # deliveries is: the dead ones beside them are picked out here.
            query = replace(query, state=None)

        def wanted(event: Event) -> bool:
            if dead_letters and not any(d.state == DEAD for d in event.deliveries):
                return False
            return _matches(window.filter, event)

        ids: deque[int] = deque(maxlen=MAX_REPLAY)
        more = False
        page = query
        while True:
            events = await self._storage.events(channel, page, SCAN_PAGE)
            for event in events:
                if event.id <= window.after:
                    break
                if wanted(event):
                    more = more or len(ids) == MAX_REPLAY
                    ids.append(event.id)
            if len(events) < SCAN_PAGE or events[-1].id <= window.after:
                break
            page = replace(page, before=events[-1].id)
        ordered = sorted(ids)
        targets = None if query.consumer is None else [query.consumer]
        state = DEAD if dead_letters else None
        count = 0
        for chunk in _chunks(ordered, REPLAY_CHUNK):
            results = await self._storage.replay(channel, chunk, targets, self._clock.seconds(), state)
            count += sum(1 for _, replayed, _ in results if replayed)
        if count:
            self._wake(channel)
        return count, (ordered[-1] if more else None)

    async def purge(self, access: Access, webhook_id: int) -> None:
        """Remove the webhook, its queues and its history: the admin's or
        the channel's token only."""
        access.require_channel_token()
        channel = access.channel.name
        if webhook_id > MAX_ID or not await self._storage.purge(channel, webhook_id):
            raise not_found(f"no webhook {webhook_id} in the history of channel {channel!r}")


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
