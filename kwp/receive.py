"""The receive pipeline: the ordered checks of CONTRACT §4.1, then storage.

``check_headers`` holds the checks that need no body (steps 1 to 4); the
Request subclass runs it as soon as the headers are in, before any body byte
is buffered.  ``Receiver.receive`` runs the rest over the complete body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from kwp import verify
from kwp.config import Channel, Config
from kwp.errors import ApiError, channel_not_found
from kwp.routing import route
from kwp.storage import DUPLICATE, QUEUE_FULL, NewWebhook, Route, StorageUnavailable

log = Logger()

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def header_map(raw_headers: Iterable[tuple[bytes, list[bytes]]]) -> dict[str, str]:
    """Lower-cased names, multi-valued headers joined with ", "."""
    headers: dict[str, str] = {}
    for name, values in raw_headers:
        key = name.decode("latin-1").lower()
        # Latin-1 decodes byte for byte: joining the bytes first is the same
        # text, without a generator per header.
        value = b", ".join(values).decode("latin-1")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def stored_headers(headers: dict[str, str], ignored: frozenset[str]) -> dict[str, str]:
    return {
        k: v
        for k, v in headers.items()
        if k not in HOP_BY_HOP and k not in ignored and not k.startswith("proxy-")
    }


def check_headers(
    config: Config, name: str, headers: dict[str, str], peer: str | None, length: int | None
) -> Channel:
    """Steps 1-4 of §4.1; returns the channel or raises ApiError.

    ``peer`` None skips the address check (a test-send comes from the token
    holder, not from the sender).  ``length`` is the declared Content-Length,
    None when unknown (chunked); a chunked body is then held to the same limit
    while it arrives."""
    channel = config.channel(name)
    if channel is None:
        raise channel_not_found(name)
    if channel.allowed_ips and peer is not None:
        ip = verify.client_ip(peer, headers, config.server.trusted_proxies)
        if not verify.ip_allowed(ip, channel.allowed_ips):
            raise ApiError(403, "ip_blocked", "the client address is not allowed on this channel")
    if not verify.plain_ok(channel, headers):
        raise ApiError(401, "unauthorized", "missing or invalid secret header")
    if length is not None and length > config.body_limit(channel):
        raise too_large(config.body_limit(channel))
    return channel


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body exceeds {limit} bytes")


def is_json_type(content_type: str | None) -> bool:
    if content_type == "application/json":
        # What nearly every sender sends: no need to take it apart.
        return True
    media = (content_type or "").split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder and one encoder for every request: json.loads and json.dumps
# build a new one on each call that passes options.
_decoder = json.JSONDecoder(parse_constant=_no_constants)
_headers_encoder = json.JSONEncoder(separators=(",", ":"))


def parse_json(body: bytes) -> Any:
    """The JSON value of body; raises ApiError 422.

    Only UTF-8 text of strict JSON is taken (no NaN or Infinity), so the stored
    bytes can be spliced unchanged into the JSON that pulls return.  A value
    nested deeper than the parser's recursion allows is refused like any other
    bad body."""
    try:
        return _decoder.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(422, "invalid_json", "the body is not valid UTF-8 JSON") from None


@dataclass(frozen=True)
class Received:
    """A 200 answer: stored (with its id), a duplicate, or a handshake."""

    status: str
    id: int | None = None
    challenge: str | None = None

    def body(self) -> bytes:
        if self.challenge is not None:
            return json.dumps({"challenge": self.challenge}).encode()
        if self.id is None:
            return json.dumps({"status": self.status}).encode()
        # The bytes json.dumps gives, without building a dict per request.
        return b'{"status": "%s", "id": %d}' % (self.status.encode(), self.id)


class Receiver:
    """Steps 5-9 of §4.1 over a complete request."""

    def __init__(self, storage, clock, filter_failed=None):
        self._storage = storage
        self._clock = clock
        # filter_failed(channel, consumer): a consumer's filter raised.
        self._filter_failed = filter_failed or (lambda channel, consumer: None)
        # Channel name -> (the Channel, a Route for each of its consumers,
        # whether any consumer has a filter), built once per Channel object:
        # a reload makes new ones.
        self._channel_routes: dict[str, tuple[Channel, tuple[Route, ...], bool]] = {}

    def _routes(self, channel: Channel, headers: dict[str, str], value) -> tuple[Route, ...]:
        entry = self._channel_routes.get(channel.name)
        if entry is None or entry[0] is not channel:
            routes = tuple(Route(c.name, c.max_queue) for c in channel.consumers)
            filtered = any(c.filter is not None for c in channel.consumers)
            entry = self._channel_routes[channel.name] = (channel, routes, filtered)
        _, routes, filtered = entry
        if not filtered:
            return routes

        def failed(consumer: str, error: Exception) -> None:
            log.warn(
                "channel {channel}: the filter of consumer {consumer} failed, so it does not take the webhook: {error}",
                channel=channel.name,
                consumer=consumer,
                error=error,
            )
            self._filter_failed(channel.name, consumer)

        taken = set(route(((c.name, c.filter) for c in channel.consumers), headers, value, failed))
        return tuple(r for r in routes if r.consumer in taken)

    def receive(self, config: Config, channel: Channel, headers: dict[str, str], body: bytes) -> Deferred:
        """Steps 5-9 for a channel whose header checks (check_headers)
        passed: a Deferred Received, failing with ApiError (or
        CancelledError, when cancelled while the storage writes).  A plain
        Deferred chain rather than a coroutine: this is the path a burst of
        senders takes, and the coroutine's own Deferred and steps cost more
        than the rest of the chain."""
        try:
            if not is_json_type(headers.get("content-type")):
                raise ApiError(415, "invalid_content_type", "Content-Type must be application/json")
            value = parse_json(body)
            now = self._clock.seconds()
            if not verify.signature_ok(channel, headers, body, now):
                raise ApiError(401, "unauthorized", "missing or invalid signature")
            challenge = verify.slack_url_verification(channel, value)
            if challenge is not None:
                return succeed(Received("challenge", challenge=challenge))
            kept = stored_headers(headers, config.server.ignored_headers)
            webhook = NewWebhook(
                channel=channel.name,
                headers_json=_headers_encoder.encode(kept),
                body=body,
                received_at=now,
                delivery_id=verify.delivery_id(channel, headers, value),
                dedup_window=channel.dedup_window_seconds,
                routes=self._routes(channel, kept, value),
            )
        except Exception:
            return fail()
        return self._storage.insert(webhook).addCallbacks(_stored, _not_stored)


def _stored(result) -> Received:
    if result is DUPLICATE:
        return Received("duplicate")
    if result is QUEUE_FULL:
        raise ApiError(503, "queue_full", "the channel's queue is full", {"Retry-After": "30"})
    return Received("ok", result)


def _not_stored(failure: Failure):
    error = failure.value
    if isinstance(error, CancelledError):
        # The sender has gone; the storage keeps the webhook all the same.
        return failure
    if isinstance(error, StorageUnavailable):
        # A full disk or a read-only database is a refusal for now, not a
        # bug: 503 with Retry-After makes senders retry later.
        message = f"the webhook could not be stored now: {error}"
        raise ApiError(503, "storage_unavailable", message, {"Retry-After": "60"}) from error
    raise ApiError(500, "internal_error", "the webhook could not be stored") from error
