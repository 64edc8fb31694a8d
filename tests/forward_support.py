"""Fakes for deterministic forwarder tests: an in-memory storage with the
forward part of IStorage, and an HTTP client whose answers the test gives."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from kwp.config import DEFAULT_CONSUMER
from kwp.storage import PENDING, Attempt, ForwardItem, QueueState


class MemoryStorage:
    """The push part of IStorage over dicts, answering synchronously; each
    queue is a (channel, consumer) pair."""

    node = "this-node"
    shared = False

    def __init__(self):
        self.rows: dict[int, tuple[tuple[str, str], ForwardItem]] = {}
        self.states: dict[tuple[str, str], QueueState] = {}
        self.attempts: list[tuple[int, str, Attempt]] = []
        self._next_id = 1
        # queue -> [owner, token, until]: the forwarding leases.
        self.leases: dict[tuple[str, str], list] = {}
        self.queue_callbacks: list = []

    def add(self, channel: str, body: bytes = b'{"n": 1}', headers: dict | None = None, at: float = 0.0,
            consumer: str = DEFAULT_CONSUMER) -> int:
        webhook_id = self._next_id
        self._next_id += 1
        headers_json = json.dumps(headers if headers is not None else {"content-type": "application/json"})
        self.rows[webhook_id] = ((channel, consumer), ForwardItem(webhook_id, headers_json, body, at))
        return webhook_id

    def item(self, webhook_id: int) -> ForwardItem | None:
        row = self.rows.get(webhook_id)
        return row[1] if row else None

    def _items(self, queue: tuple[str, str]) -> list[ForwardItem]:
        return [item for q, item in sorted(self.rows.values(), key=lambda r: r[1].id) if q == queue]

    def _note(self, queue: tuple[str, str], **values) -> None:
        self.states[queue] = replace(self.states.get(queue, QueueState()), **values)

    def forward_window(self, channel, limit, now, *, consumer=DEFAULT_CONSUMER):
        return succeed([i for i in self._items((channel, consumer)) if i.state == PENDING][:limit])

    def forward_get(self, channel, webhook_id, *, consumer=DEFAULT_CONSUMER):
        row = self.rows.get(webhook_id)
        return succeed(row[1] if row and row[0] == (channel, consumer) else None)

    def on_queue_changed(self, callback):
        self.queue_callbacks.append(callback)

    def on_lease_wanted(self, callback):
        pass

    def want_lease(self, channel, *, consumer=DEFAULT_CONSUMER):
        return succeed(None)

    def acquire_lease(self, channel, owner, now, seconds, *, consumer=DEFAULT_CONSUMER):
        lease = self.leases.setdefault((channel, consumer), [None, 0, None])
        if lease[0] not in (None, owner) and lease[2] > now:
            return succeed(None)
        if lease[0] != owner:
            lease[1] += 1
        lease[0], lease[2] = owner, now + seconds
        return succeed(lease[1])

    def renew_lease(self, channel, owner, token, now, seconds, *, consumer=DEFAULT_CONSUMER):
        lease = self.leases.get((channel, consumer))
        if lease is None or lease[:2] != [owner, token]:
            return succeed(None)
        lease[2] = now + seconds
        return succeed(self.states.get((channel, consumer), QueueState()))

    def release_lease(self, channel, owner, token, *, consumer=DEFAULT_CONSUMER):
        lease = self.leases.get((channel, consumer))
        if lease is not None and lease[:2] == [owner, token]:
            lease[0] = lease[2] = None
        return succeed(None)

    def _fenced(self, channel, consumer, token) -> bool:
        return token is None or self.leases.get((channel, consumer), [None, 0])[1] == token

    def forward_succeeded(self, channel, webhook_id, attempt, *, consumer=DEFAULT_CONSUMER, token=None):
        if not self._fenced(channel, consumer, token):
            return succeed(False)
        self.attempts.append((webhook_id, consumer, attempt))
        self.rows.pop(webhook_id, None)
        self._note((channel, consumer), last_success_at=attempt.at)
        return succeed(True)

    def forward_failed(self, channel, webhook_id, attempt, next_attempt_at, state, *, consumer=DEFAULT_CONSUMER, token=None):
        if not self._fenced(channel, consumer, token):
            return succeed(False)
        self.attempts.append((webhook_id, consumer, attempt))
        if webhook_id in self.rows:
            queue, item = self.rows[webhook_id]
            self.rows[webhook_id] = (
                queue,
                replace(
                    item,
                    forward_attempts=item.forward_attempts + 1,
                    last_attempt_at=attempt.at,
                    last_error=attempt.error,
                    next_attempt_at=next_attempt_at,
                    state=state,
                ),
            )
        self._note((channel, consumer), last_error_at=attempt.at, last_error_message=attempt.error)
        return succeed(True)

    def queue_state(self, channel, *, consumer=DEFAULT_CONSUMER):
        return succeed(self.states.get((channel, consumer), QueueState()))

    def set_paused(self, channel, paused, *, consumer=DEFAULT_CONSUMER):
        self._note((channel, consumer), paused=paused)
        return succeed(None)

    def queue(self, channel, limit, after, *, consumer=DEFAULT_CONSUMER):
        items = self._items((channel, consumer))
        state = self.states.get((channel, consumer), QueueState())
        return succeed((state, len(items), [i for i in items if i.id > after][:limit]))

    def clear(self, channel, now, *, consumer=DEFAULT_CONSUMER):
        doomed = [i.id for i in self._items((channel, consumer))]
        for webhook_id in doomed:
            del self.rows[webhook_id]
        return succeed(len(doomed))


class FakeResponse:
    def __init__(self, code: int, body: bytes = b"", headers: dict | None = None, chunks: int = 1):
        self.code = code
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})
        self._body = body
        self._chunks = chunks
        self.transport = StringTransport()

    def deliverBody(self, protocol) -> None:
        protocol.makeConnection(self.transport)
        for _ in range(self._chunks):
            if self.transport.producerState == "stopped":
                break
            protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))


@dataclass
class Sent:
    url: str
    body: bytes
    headers: Headers
    kwargs: dict
    at: float = 0.0
    answer: Deferred = field(default_factory=Deferred)
    cancelled: bool = False
    response: FakeResponse | None = None

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode())
        return values[0].decode("latin-1") if values else None

    @property
    def attempt(self) -> int:
        return int(self.header("x-kwp-attempt"))

    @property
    def delivery_id(self) -> str:
        return self.header("x-kwp-delivery-id")

    def respond(self, code: int, body: bytes = b"", headers: dict | None = None, chunks: int = 1) -> None:
        self.response = FakeResponse(code, body, headers, chunks)
        self.answer.callback(self.response)

    def fail(self, error: Exception) -> None:
        self.answer.errback(Failure(error))


class FakeClient:
    """``request`` records what was sent and answers with ``script`` (a list
    of status codes or exceptions, used in order) or, when it is empty,
    leaves the answer to the test through ``sent[i].respond``."""

    def __init__(self, clock=None, script=()):
        self.clock = clock
        self.sent: list[Sent] = []
        self.script = list(script)

    def request(self, method, url, data=None, headers=None, **kwargs):
        assert method == "POST"
        sent = Sent(url, data, headers, kwargs, self.clock.seconds() if self.clock else 0.0)

        def cancel(_):
            sent.cancelled = True

        sent.answer = Deferred(cancel)
        self.sent.append(sent)
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                sent.fail(step)
            elif isinstance(step, tuple):
                sent.respond(*step)
            else:
                sent.respond(step)
        return sent.answer

    def waiting(self) -> list[Sent]:
        return [s for s in self.sent if not s.answer.called]



class Target(Resource):
    """A webhook receiver on 127.0.0.1 in this process.  ``status`` is what it
    answers (``None``: never answers), unless ``judge(body, headers)`` gives
    another status; every request is kept in ``received``."""

    isLeaf = True

    def __init__(self, clock=None):
        super().__init__()
        from twisted.internet import reactor

        self.clock = clock or reactor
        self.status = 200
        self.body = b"ok"
        self.delay = 0.0
        self.judge = None
        self.received: list[dict] = []
        self._waiters: list[tuple[int, Deferred]] = []
        self._protocols: set = set()
        self.port = None
        self.tls = None

    def listen(self, port: int = 0, tls=None) -> "Target":
        """Listen on 127.0.0.1, over TLS with the server context factory
        ``tls`` if given (``url`` is then https to localhost)."""
        from twisted.internet import reactor

        site = Site(self)
        build = site.buildProtocol

        def tracked(addr):
            protocol = build(addr)
            self._protocols.add(protocol)
            return protocol

        site.buildProtocol = tracked
        if tls is None:
            self.port = reactor.listenTCP(port, site, interface="127.0.0.1")
        else:
            self.port = reactor.listenSSL(port, site, tls, interface="127.0.0.1")
        self.tls = tls
        return self

    async def stop(self) -> None:
        """Down for good: no listener and no open connection."""
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        for protocol in self._protocols:
            if getattr(protocol, "transport", None) is not None:
                protocol.transport.abortConnection()
        self._protocols.clear()

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port.getHost().port}/hook"
        return f"http://127.0.0.1:{self.port.getHost().port}/hook"

    def render_POST(self, request):
        body = request.content.read()
        headers = {
            k.decode().lower(): b", ".join(v).decode("latin-1") for k, v in request.requestHeaders.getAllRawHeaders()
        }
        status = self.status
        if self.judge is not None:
            status = self.judge(body, headers) or status
        self.received.append({"body": body, "headers": headers, "at": time.monotonic(), "status": status})
        for waiter in [w for w in self._waiters if len(self.received) >= w[0]]:
            self._waiters.remove(waiter)
            waiter[1].callback(None)
        if status is None:
            return NOT_DONE_YET

        def answer():
            if not request._disconnected:
                request.setResponseCode(status)
                request.write(self.body)
                request.finish()

        if self.delay:
            self.clock.callLater(self.delay, answer)
        else:
            answer()
        return NOT_DONE_YET

    def wait_for(self, count: int, timeout: float = 10) -> Deferred:
        """Fires once ``count`` requests have arrived; fails after ``timeout``."""
        from twisted.internet import reactor

        d = Deferred()
        if len(self.received) >= count:
            d.callback(None)
        else:
            self._waiters.append((count, d))
        return d.addTimeout(timeout, reactor)

    def delivered(self) -> list[bytes]:
        """Bodies of the requests answered with a 2xx."""
        return [r["body"] for r in self.received if r["status"] is not None and 200 <= r["status"] < 300]


def assert_sent_as_posted(got: dict, raw: bytes, webhook_id: int) -> None:
    """The target got the body byte for byte, the sender's headers and
    kwp's own, for a first attempt of channel push."""
    assert got["body"] == raw
    assert got["headers"]["x-custom"] == "yes"
    assert got["headers"]["content-type"] == "application/json"
    assert got["headers"]["x-kwp-delivery-id"] == f"push-{webhook_id}"
    assert got["headers"]["x-kwp-attempt"] == "1"
