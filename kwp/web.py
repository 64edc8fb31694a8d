"""HTTP: the Klein routes (authorize, parse, call, encode) and the Site whose
Request class enforces body limits and time limits before Twisted buffers
anything."""

from __future__ import annotations

import json
from urllib.parse import unquote

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from kwp import __version__, verify
from kwp.auth import authorize
from kwp.config import Config
from kwp.errors import ApiError, bad_request, not_found
from kwp.pull import MAX_LIMIT, Puller, PullQuery, encode, int_arg
from kwp.receive import Receiver, check_headers, header_map, too_large

log = Logger()

RECEIVE_PREFIX = "/api/webhook/"
# A request must arrive completely (line, headers, body) within this time;
# the idle time-out alone lets a client trickle one byte at a time for ever.
RECEIVE_TIMEOUT = 60
IDLE_TIMEOUT = 30
# Bytes of a refused body read and thrown away so the client can read the
# answer; a client that sends more is disconnected.
DISCARD_LIMIT = 8 * 1024 * 1024


def _peer_host(transport) -> str:
    return getattr(transport.getPeer(), "host", "") or ""


def _args(request) -> dict[str, str]:
    return {k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace") for k, v in request.args.items()}


def _error(request, error: ApiError) -> bytes:
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", b"application/json")
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    return error.body()


def _json(request, value, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value).encode()


class _Discard:
    """A content sink that counts and drops what it is given."""

    def __init__(self):
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def seek(self, *args) -> None:
        pass

    def tell(self) -> int:
        return 0

    def read(self, *args) -> bytes:
        return b""

    def close(self) -> None:
        pass


class KwpRequest(Request):
    """Decides what it can from the headers alone, before the body is buffered.

    For a POST to a channel the checks of steps 1-4 run in gotLength; a refused
    request has its body read into nothing and then gets the refusal.  Every
    other request may not exceed the largest body limit of the config."""

    kwp_config: Config | None = None
    kwp_headers: dict[str, str] | None = None
    kwp_refusal: ApiError | None = None
    kwp_channel: str = "-"

    def __init__(self, channel, *args, **kwargs):
        super().__init__(channel, *args, **kwargs)
        self._limit: int | None = None
        clock = channel.site.reactor
        self.kwp_started = clock.seconds()
        self._deadline = clock.callLater(RECEIVE_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        log.info("request not received within {timeout}s; disconnecting", timeout=RECEIVE_TIMEOUT)
        self.channel.transport.abortConnection()

    def gotLength(self, length):
        config = self.kwp_config = self.channel.site.config
        method = getattr(self.channel, "_command", b"")
        path = unquote(getattr(self.channel, "_path", b"").decode("latin-1").split("?", 1)[0])
        if method == b"POST" and path.startswith(RECEIVE_PREFIX) and "/" not in path[len(RECEIVE_PREFIX) :]:
            self.kwp_channel = path[len(RECEIVE_PREFIX) :]
            # Kept for the route, which would otherwise build the same map again.
            headers = self.kwp_headers = header_map(self.requestHeaders.getAllRawHeaders())
            try:
                channel = check_headers(config, self.kwp_channel, headers, _peer_host(self.channel.transport), length)
                self._limit = config.body_limit(channel)
            except ApiError as refusal:
                self._refuse(refusal)
                return
        else:
            self._limit = config.largest_body_limit
            if length is not None and length > self._limit:
                self._refuse(ApiError(413, "payload_too_large", f"the body exceeds {self._limit} bytes"))
                return
        super().gotLength(length)

    def _refuse(self, refusal: ApiError) -> None:
        self.kwp_refusal = refusal
        self.content = _Discard()
        # No "100 Continue" for a request that is refused already.
        self.requestHeaders.removeHeader(b"expect")
        self.setHeader(b"connection", b"close")

    def handleContentChunk(self, data):
        super().handleContentChunk(data)
        if self.kwp_refusal is not None:
            if self.content.size > DISCARD_LIMIT:
                self.channel.transport.abortConnection()
        elif self._limit is not None and self.content.tell() > self._limit:
            self.content.close()
            refusal = ApiError(413, "payload_too_large", f"the body exceeds {self._limit} bytes")
            if self.kwp_channel != "-":
                config = self.kwp_config
                refusal = too_large(config, config.channel(self.kwp_channel))
            self._refuse(refusal)

    def requestReceived(self, command, path, version):
        if self._deadline.active():
            self._deadline.cancel()
        self.channel.site.track(self.notifyFinish())
        super().requestReceived(command, path, version)

    def connectionLost(self, reason):
        if self._deadline.active():
            self._deadline.cancel()
        super().connectionLost(reason)


class KwpChannel(http.HTTPChannel):
    """An HTTP/1.1 connection that its Site knows about, so a stop can close
    every connection after its last response was flushed."""

    def connectionMade(self):
        super().connectionMade()
        self.site.connections.add(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.site.connections.discard(self)
        if not self.site.connections:
            self.site.fire_closed()


class KwpSite(Site):
    """The Site of kwp: its Request class, time-outs, and one log line per
    request with no query string, header or body in it."""

    def __init__(self, app: "KwpApp", reactor, access_log=None):
        # No route reads form fields from a POST body; parsing the Content-Type
        # of every POST to find out costs about a sixth of a receive.
        super().__init__(
            app.resource(),
            requestFactory=KwpRequest,
            timeout=IDLE_TIMEOUT,
            reactor=reactor,
            parsePOSTFormSubmission=False,
        )
        self.protocol = KwpChannel
        self.app = app
        # access_log(when, line) writes each request's line itself (the text
        # log, see tap.TextAccessLog); None sends it through the logger.
        self.access_log = access_log
        self.noisy = False
        self.connections: set[KwpChannel] = set()
        self._in_flight = 0
        self._idle: list[Deferred] = []
        self._closed: list[Deferred] = []

    def track(self, finished: Deferred) -> None:
        """Count a request in flight until finished fires."""
        self._in_flight += 1

        def done(_):
            self._in_flight -= 1
            if not self._in_flight:
                # One turn later, so that what the request's own notifyFinish
                # callbacks start (settling a pull) is under way first.
                self.reactor.callLater(0, self._fire_idle)

        finished.addBoth(done)

    def _fire_idle(self) -> None:
        if not self._in_flight:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def idle(self) -> Deferred:
        """Fires when no request is in flight."""
        if not self._in_flight:
            return succeed(None)
        d = Deferred()
        self._idle.append(d)
        return d

    def close_connections(self) -> Deferred:
        """Close every connection once what was written to it is flushed."""
        if not self.connections:
            return succeed(None)
        d = Deferred()
        self._closed.append(d)
        for channel in list(self.connections):
            channel.loseConnection()
        return d

    def fire_closed(self) -> None:
        waiters, self._closed = self._closed, []
        for d in waiters:
            d.callback(None)

    @property
    def config(self) -> Config:
        return self.app.config

    def log(self, request):
        now = self.reactor.seconds()
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1")
        duration_ms = (now - getattr(request, "kwp_started", now)) * 1000
        if self.access_log is not None:
            self.access_log(
                now,
                f"{method} {path} {request.code} {request.sentLength}B {duration_ms:.1f}ms "
                f"channel={request.kwp_channel}",
            )
            return
        log.info(
            "{method} {path} {status} {size}B {duration_ms:.1f}ms channel={channel}",
            method=method,
            path=path,
            status=request.code,
            size=request.sentLength,
            duration_ms=duration_ms,
            channel=request.kwp_channel,
            request_size=request.getHeader(b"content-length"),
        )


class KwpApp:
    app = Klein()

    def __init__(self, config: Config, storage, notifier, clock):
        self.config = config
        self.storage = storage
        self.notifier = notifier
        self.clock = clock
        self.receiver = Receiver(storage, notifier, clock)
        self.puller = Puller(storage, notifier, clock)

    def resource(self):
        return self.app.resource()

    def _config(self, request) -> Config:
        """The config a request started with, even if a reload came since."""
        return getattr(request, "kwp_config", None) or self.config

    def _authorize(self, request, name: str):
        request.kwp_channel = name
        authorization = request.getHeader(b"authorization")
        return authorize(self._config(request), name, authorization and authorization.decode("latin-1"))

    @app.handle_errors(ApiError)
    def _api_error(self, request, failure):
        if failure.value.status >= 500 and failure.value.__cause__ is not None:
            log.failure("request failed", failure=failure)
        return _error(request, failure.value)

    @app.handle_errors(HTTPException)
    def _http_error(self, request, failure):
        error = failure.value
        if isinstance(error, NotFound):
            return _error(request, not_found("no such endpoint"))
        if isinstance(error, MethodNotAllowed):
            allowed = ", ".join(error.valid_methods or ())
            return _error(request, ApiError(405, "bad_request", "method not allowed", {"Allow": allowed}))
        return _error(request, ApiError(error.code or 400, "bad_request", error.name))

    @app.handle_errors(Exception)
    def _unexpected(self, request, failure):
        if failure.check(CancelledError):
            return b""
        log.failure("unexpected error", failure=failure)
        return _error(request, ApiError(500, "internal_error", "internal error"))

    @app.route("/api/webhook/<string:name>", methods=["POST"])
    async def receive(self, request, name):
        request.kwp_channel = name
        config = self._config(request)
        if request.kwp_refusal is not None:
            raise request.kwp_refusal
        headers = getattr(request, "kwp_headers", None)
        if headers is None:
            # Not through KwpRequest (tests on an in-memory Site): decide now.
            headers = header_map(request.requestHeaders.getAllRawHeaders())
            check_headers(config, name, headers, _peer_host(request.transport), None)
        received = await self.receiver.receive(config, config.channel(name), headers, request.content.read())
        request.setHeader(b"content-type", b"application/json")
        return received.body()

    @app.route("/api/webhook/<string:name>", methods=["GET"])
    async def pull(self, request, name):
        args = _args(request)
        channel = self._config(request).channel(name)
        challenge = channel and verify.meta_handshake(channel, args)
        if challenge is verify.REFUSED:
            raise ApiError(403, "forbidden", "the subscription handshake does not match verify-token")
        if challenge is not None:
            request.kwp_channel = name
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return challenge.encode()
        channel = self._authorize(request, name)
        return await self.puller.take(request, channel.name, PullQuery.parse(args))

    @app.route("/api/webhook/<string:name>/sign", methods=["POST"])
    def sign(self, request, name):
        channel = self._authorize(request, name)
        try:
            signed = verify.sign(channel, request.content.read(), self.clock.seconds())
        except ValueError as e:
            raise bad_request(str(e)) from None
        return _json(
            request,
            {
                "signature": signed.signature,
                "header_name": signed.header_name,
                "header_value": signed.header_value,
                "headers": signed.headers,
            },
        )

    @app.route("/api/webhook/<string:name>/test-send", methods=["POST"])
    async def test_send(self, request, name):
        """Run a payload through the channel's own receive path, signed or
        carrying the secret as its sender would, and answer what it answered."""
        channel = self._authorize(request, name)
        config = self._config(request)
        try:
            spec = json.loads(request.content.read())
            payload = spec["payload"]
            secret = spec.get("secret")
        except (ValueError, TypeError, KeyError, AttributeError):
            raise bad_request('the body must be {"payload": ..., "secret": optional}') from None
        if secret is not None and not isinstance(secret, str):
            raise bad_request('"secret" must be a string')
        body = json.dumps(payload).encode()
        headers = {"content-type": "application/json", "user-agent": f"kwp-test-send/{__version__}"}
        headers.update(verify.sender_headers(channel, body, self.clock.seconds(), secret))
        check_headers(config, name, headers, None, len(body))
        received = await self.receiver.receive(config, channel, headers, body)
        return _json(request, json.loads(received.body()))

    @app.route("/api/webhook/<string:name>/ack", methods=["POST"])
    async def ack(self, request, name):
        channel = self._authorize(request, name)
        try:
            ids = json.loads(request.content.read())["ids"]
        except (ValueError, TypeError, KeyError):
            raise bad_request('the body must be {"ids": [id, ...]}') from None
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise bad_request('"ids" must be a list of whole numbers')
        acked = await self.storage.ack(channel.name, ids)
        return _json(request, {"acked": acked})

    @app.route("/api/webhook/<string:name>/list", methods=["GET"])
    async def list(self, request, name):
        channel = self._authorize(request, name)
        args = _args(request)
        limit = int_arg(args, "limit", 1, MAX_LIMIT) or 100
        after = int_arg(args, "after", 0, 2**63 - 1) or 0
        items = await self.storage.list(channel.name, limit, after)
        request.setHeader(b"content-type", b"application/json")
        return b"[" + b",".join(encode(item, True) for item in items) + b"]"

    @app.route("/api/webhook/<string:name>/<int:webhook_id>", methods=["DELETE"])
    async def delete(self, request, name, webhook_id):
        channel = self._authorize(request, name)
        if not await self.storage.delete(channel.name, webhook_id):
            raise not_found(f"no webhook {webhook_id} on channel {name!r}")
        request.setResponseCode(http.NO_CONTENT)
        return b""

    @app.route("/api/health", methods=["GET"])
    async def health(self, request):
        try:
            await self.storage.ping()
        except Exception:
            log.failure("health check: the database does not answer")
            return _json(request, {"status": "unavailable"}, 503)
        return _json(request, {"status": "ok"})

    @app.route("/api/version", methods=["GET"])
    def version(self, request):
        return _json(request, {"version": __version__})
