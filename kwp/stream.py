"""The live stream of a channel (CONTRACT §9): Server-Sent Events.

A stream is a tap: it reads the webhooks of its channel from the storage in
id order and changes no queue.  The receive path tells the ``StreamHub``
"channel X stored webhooks"; each woken stream then reads what follows its
cursor from ``storage.events_after``, so the database stays the truth and a
stream that starts from the history (``Last-Event-ID``, ``?after=``) goes
over to the live webhooks without missing or repeating one: both are the
same reads from the same cursor.  Streams at the same position share one
read, so a store costs one query per position, not one per stream.

A slow client is never buffered for: a stream stops reading while its
connection's send buffer is full (it is that connection's producer), and
reads on from its cursor once the buffer drains.  A client that reads
nothing for STALL_LIMIT seconds is disconnected.

``?format=smee`` speaks the wire format of smee.io, whose client
(``smee-client``) then posts each webhook to a local target.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from kwp.auth import Access, authorize, unknown_consumer
from kwp.config import Config
from kwp.errors import ApiError, bad_request
from kwp.headers import passed_on
from kwp.history import scope
from kwp.pull import MAX_ID
from kwp.storage import Event, EventQuery

log = Logger()

MAX_STREAMS = 100
KEEPALIVE = 15.0
# smee.io's ping comes every second keep-alive: every 30 seconds.
SMEE_PING_TICKS = 2
# Webhooks read per storage query.
PAGE = 100
STALL_LIMIT = 60.0

FIRST_LINE = b": kwp\n"
KEEPALIVE_LINE = b": keep-alive\n\n"
SMEE_PING = b"event: ping\ndata: {}\n\n"


def _one_line(body: bytes) -> bytes:
    """The stored JSON body on one line: an SSE data field ends at a line break."""
    if b"\n" in body or b"\r" in body:
        return json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode()
    return body


def encode_webhook(event: Event) -> bytes:
    """A webhook as kwp's stream sends it: the item of a pull."""
    return b'id: %d\nevent: webhook\ndata: {"id":%d,"headers":%s,"payload":%s,"received_at":%d}\n\n' % (
        event.id,
        event.id,
        event.headers_json.encode(),
        _one_line(event.body),
        int(event.received_at),
    )


def encode_smee(event: Event) -> bytes:
    """A webhook as smee.io sends it: the headers, then body, query and the
    receive time in milliseconds, in one object; no event name."""
    data, _ = passed_on(json.loads(event.headers_json))
    data.update(body=json.loads(event.body), query={}, timestamp=int(event.received_at * 1000))
    return b"id: %d\ndata: %s\n\n" % (event.id, json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())


@dataclass(frozen=True)
class StreamSpec:
    """What a stream request asks for."""

    # Only the webhooks routed to this consumer.
    consumer: str | None = None
    # Start after this webhook id (from the history); None: live only.
    after: int | None = None
    smee: bool = False

    @classmethod
    def parse(cls, access: Access, args: dict[str, str], last_event_id: str | None) -> "StreamSpec":
        """Last-Event-ID (what an EventSource sends when it reconnects) wins
        over ?after=; ?consumer= names a consumer of the channel."""
        fmt = args.get("format")
        if fmt not in (None, "smee", "kwp"):
            raise bad_request("'format' must be smee or kwp")
        after = None
        for name, raw in (("after", args.get("after")), ("Last-Event-ID", last_event_id)):
            raw = None if raw is None else raw.strip()
            if not raw:
                continue
            if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > MAX_ID:
                raise bad_request(f"'{name}' must be a webhook id")
            after = int(raw)
        consumer = scope(access, args.get("consumer"))
        if consumer is not None and access.channel.consumer(consumer) is None:
            raise unknown_consumer(access.channel, consumer)
        return cls(consumer, after, fmt == "smee")


class StreamHub:
    """The open streams of every channel, and their wake-up."""

    def __init__(
        self,
        storage,
        clock,
        limit: int = MAX_STREAMS,
        keepalive: float = KEEPALIVE,
        stall_limit: float = STALL_LIMIT,
        ui_token: str | None = None,
    ):
        # An admin token from the environment (UI_ACCESS_TOKEN), beside the config's.
        self.ui_token = ui_token
        self._storage = storage
        self._clock = clock
        self._limit = limit
        self.keepalive = keepalive
        self.stall_limit = stall_limit
        self._streams: dict[str, set[_Stream]] = defaultdict(set)
        self._due: set[str] = set()
        self.closed = False

    def stored(self, channel: str) -> None:
        """Webhooks of channel were committed.  The streams read once for
        every store of the same reactor turn (a committed batch)."""
        if channel in self._due or not self._streams.get(channel):
            return
        self._due.add(channel)
        self._clock.callLater(0, self._wake, channel)

    def _wake(self, channel: str) -> None:
        """Streams that are up to date (the usual case) share one read per
        position and consumer, and each webhook is encoded once per format;
        the others read on their own once they can."""
        self._due.discard(channel)
        groups: dict[tuple, list[_Stream]] = defaultdict(list)
        for stream in list(self._streams.get(channel, ())):
            if stream.idle():
                groups[(stream.consumer, stream.cursor)].append(stream)
            else:
                stream.wake()
        for (consumer, cursor), members in groups.items():
            if len(members) == 1:
                members[0].wake()
            else:
                ensureDeferred(self._read_for(channel, consumer, cursor, members))

    async def _read_for(self, channel: str, consumer: str | None, cursor: int, members: list["_Stream"]) -> None:
        for stream in members:
            stream.reading()
        try:
            events = await self._storage.events_after(channel, cursor, PAGE, consumer)
        except Exception:
            log.failure("stream of channel {channel}", channel=channel)
            for stream in members:
                stream.finish()
            return
        encoded: dict = {}
        for stream in members:
            stream.take(events, encoded)

    def count(self, channel: str) -> int:
        return len(self._streams.get(channel, ()))

    def check_room(self, channel: str) -> None:
        if self.count(channel) >= self._limit:
            raise ApiError(
                429,
                "too_many_requests",
                f"channel {channel!r} has {self._limit} streams open already",
                {"Retry-After": "10"},
            )
        if self.closed:
            raise ApiError(503, "internal_error", "kwp is stopping", {"Retry-After": "5"})

    async def open(self, request, channel: str, spec: StreamSpec, authorization: str | None = None) -> bytes:
        """Serve the stream on request until the client goes or the hub
        closes (then b"" ends the response).  Raises ApiError 429 when the
        channel has its limit of streams.  ``authorization`` (the request's
        Authorization value) is checked again at each reload."""
        self.check_room(channel)
        stream = _Stream(self, request, channel, spec, authorization)
        self._streams[channel].add(stream)
        try:
            cursor = spec.after if spec.after is not None else await self._newest(channel)
        except BaseException:
            self._drop(stream)
            raise
        stream.begin(cursor)
        return await stream.done

    async def _newest(self, channel: str) -> int:
        newest = await self._storage.events(channel, EventQuery(), 1)
        return newest[0].id if newest else 0

    def _drop(self, stream: "_Stream") -> None:
        streams = self._streams.get(stream.channel)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._streams[stream.channel]

    def follow(self, config: Config) -> None:
        """After a reload: end the streams whose token no longer reaches
        what they show (a token rotated out, a consumer removed)."""
        for streams in list(self._streams.values()):
            for stream in list(streams):
                if not stream.allowed(config):
                    log.info("a stream of channel {channel} lost its access in a reload", channel=stream.channel)
                    stream.finish()

    def close(self) -> None:
        """End every stream (the process is stopping); the clients reconnect
        elsewhere or later and resume."""
        self.closed = True
        for streams in list(self._streams.values()):
            for stream in list(streams):
                stream.finish()


@implementer(IPushProducer)
class _Stream:
    """One client's stream: the producer of its connection."""

    def __init__(self, hub: StreamHub, request, channel: str, spec: StreamSpec, authorization: str | None):
        self._hub = hub
        self._request = request
        self.channel = channel
        self._spec = spec
        self._authorization = authorization
        self._encode = encode_smee if spec.smee else encode_webhook
        self.cursor = 0
        # Fires with b"" when the server ends the stream; cancelled when the
        # client goes.
        self.done = Deferred(lambda _: self._end())
        self._started = False
        self._ended = False
        self._reading = False
        self._again = False
        self._paused_since: float | None = None
        self._ticks = 0
        self._keepalive: task.LoopingCall | None = None

    def begin(self, cursor: int) -> None:
        if self._ended:
            return
        self.cursor = cursor
        request = self._request
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        request.registerProducer(self, True)
        # The id sets the client's last event id at once, so that a client
        # that reconnects before any webhook came resumes from here.
        if self._spec.smee:
            first = FIRST_LINE + b"\nid: %d\nevent: ready\ndata: {}\n\n" % cursor
        else:
            first = FIRST_LINE + b"id: %d\n\n" % cursor
        request.write(first)
        self._keepalive = task.LoopingCall(self._tick)
        self._keepalive.clock = self._hub._clock
        self._keepalive.start(self._hub.keepalive, now=False)
        self._started = True
        self.wake()

    def allowed(self, config: Config) -> bool:
        """Whether its token still reaches the channel, and the consumer it streams."""
        try:
            access = authorize(config, self.channel, self._authorization, self._hub.ui_token)
            consumer = self._spec.consumer
            return (
                access.consumer is None or access.consumer.name == consumer
            ) and (consumer is None or access.channel.consumer(consumer) is not None)
        except ApiError:
            return False

    @property
    def consumer(self) -> str | None:
        return self._spec.consumer

    def idle(self) -> bool:
        """Whether it could read now: started, not reading, not held back."""
        return self._started and not (self._ended or self._reading or self._paused_since is not None)

    def wake(self) -> None:
        """Read what follows the cursor, now or as soon as the stream can."""
        self._again = True
        if self.idle():
            self.reading()
            ensureDeferred(self._read()).addErrback(self._failed)

    def reading(self) -> None:
        """A read for it starts: what is stored from now on needs another."""
        self._reading = True
        self._again = False

    async def _read(self) -> None:
        try:
            events = await self._hub._storage.events_after(self.channel, self.cursor, PAGE, self.consumer)
        except BaseException:
            self._reading = False
            raise
        self.take(events, {})

    def take(self, events: list[Event], encoded: dict) -> None:
        """Write the webhooks a read found, until the connection's buffer is
        full; read again when more may follow.  ``encoded`` holds what other
        streams of the same read encoded already."""
        self._reading = False
        for event in events:
            if self._ended or self._paused_since is not None:
                self._again = True
                break
            key = (self._spec.smee, event.id)
            data = encoded.get(key)
            if data is None:
                data = encoded[key] = self._encode(event)
            self._request.write(data)
            self.cursor = event.id
        else:
            if len(events) == PAGE:
                self._again = True
        if self._again:
            self.wake()

    def _failed(self, failure) -> None:
        log.failure("stream of channel {channel}", failure, channel=self.channel)
        # The client reconnects with its last event id and resumes.
        self.finish()

    def _tick(self) -> None:
        now = self._hub._clock.seconds()
        if self._paused_since is not None:
            if now - self._paused_since >= self._hub.stall_limit:
                log.info(
                    "a stream of channel {channel} read nothing for {seconds:.0f}s; disconnecting",
                    channel=self.channel,
                    seconds=now - self._paused_since,
                )
                self._request.transport.abortConnection()
            return
        self._ticks += 1
        data = KEEPALIVE_LINE
        if self._spec.smee and self._ticks % SMEE_PING_TICKS == 0:
            data += SMEE_PING
        self._request.write(data)

    # --- IPushProducer: the connection's send buffer ---

    def pauseProducing(self) -> None:
        if self._paused_since is None:
            self._paused_since = self._hub._clock.seconds()

    def resumeProducing(self) -> None:
        self._paused_since = None
        if self._again:
            self.wake()

    def stopProducing(self) -> None:
        self._end()

    # --- the end ---

    def _end(self) -> bool:
        """Stop for good; whether it was running until now."""
        if self._ended:
            return False
        self._ended = True
        self._hub._drop(self)
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        return True

    def finish(self) -> None:
        """End the response from this side."""
        if self._end() and self._started:
            self._request.unregisterProducer()
        if not self.done.called:
            self.done.callback(b"")
