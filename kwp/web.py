"""HTTP: the root resource, which answers receive requests before the router;
the Klein routes (authorize, parse, call, encode); and the Site whose Request
class enforces body limits and time limits before Twisted buffers anything."""

from __future__ import annotations

import functools
import json
from urllib.parse import unquote_to_bytes

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from kwp import __version__, console, verify
from kwp.auth import Access, authorize, authorize_admin, authorize_metrics, bearer_token, identify, unknown_consumer
from kwp.config import Channel, Config, redacted
from kwp.errors import ApiError, bad_request, not_found
from kwp.logs import printable
from kwp.history import History, Listing, Window, encode_event, encode_page, replay_targets
from kwp.ops import Metrics, channels_overview
from kwp.pull import MAX_ID, MAX_LIMIT, Puller, PullQuery, encode, int_arg, parse_ids
from kwp.receive import Received, Receiver, check_headers, header_map, too_large
from kwp.stream import StreamHub, StreamSpec

log = Logger()

# Defaults of KwpSite: a request must arrive completely (line, headers, body)
# within RECEIVE_TIMEOUT, because the idle time-out alone lets a client trickle
# one byte at a time for ever.
RECEIVE_TIMEOUT = 60
IDLE_TIMEOUT = 30
# Bytes of a refused body read and thrown away so the client can read the
# answer; a client that sends more is disconnected.
DISCARD_LIMIT = 8 * 1024 * 1024
# twisted.web sends "Unknown Status" for the codes it does not know.
REASONS = {**http.RESPONSES, 422: b"Unprocessable Entity", 429: b"Too Many Requests"}
# One line per request, written by KwpSite.log.
ACCESS_FORMAT = "{method} {path} {status} {size}B {duration_ms:.1f}ms channel={channel}"


def receive_channel(method: bytes, path: bytes) -> str | None:
    """The channel of a receive request, ``POST /api/webhook/{channel}``, or
    None for any other request: exactly the requests that the Klein router
    would send to its receive route.  As there, the query string is left out,
    the path's first byte is dropped (twisted.web), the rest is
    percent-decoded (twisted.web and Klein) and leading slashes are ignored
    (werkzeug)."""
    if method != b"POST":
        return None
    route = unquote_to_bytes(path.split(b"?", 1)[0][1:]).lstrip(b"/").split(b"/")
    if len(route) != 3 or route[0] != b"api" or route[1] != b"webhook" or not route[2]:
        return None
    try:
        return route[2].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _peer_host(transport) -> str:
    return getattr(transport.getPeer(), "host", "") or ""


def _authorization(request) -> str | None:
    value = request.getHeader(b"authorization")
    return value and value.decode("latin-1")


def _args(request) -> dict[str, str]:
    return {k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace") for k, v in request.args.items()}


def _page(request) -> tuple[int, int]:
    """``limit`` (default 100) and ``after`` (default 0) of a listing."""
    args = _args(request)
    return int_arg(args, "limit", 1, MAX_LIMIT) or 100, int_arg(args, "after", 0, MAX_ID) or 0


def _error(request, error: ApiError) -> bytes:
    request.setResponseCode(error.status, REASONS.get(error.status, b"Error"))
    request.setHeader(b"content-type", b"application/json")
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    return error.body()


def _api_error(failure) -> ApiError:
    """What a failed request answers.  A body nested deeper than the JSON
    parser's recursion allows is the client's doing: 400, as for any other
    body a route cannot read.  What is not an ApiError, or a 5xx with a
    cause, is logged for the operator."""
    error = failure.value
    if isinstance(error, RecursionError):
        return bad_request("the body is nested too deeply")
    if not isinstance(error, ApiError):
        log.failure("unexpected error", failure=failure)
        return ApiError(500, "internal_error", "internal error")
    if error.code == "storage_unavailable":
        # The storage's refusal, which says why; no traceback to read.
        log.warn("request refused: {message}", message=error.message)
    elif error.status >= 500 and error.__cause__ is not None:
        log.failure("request failed", failure=failure)
    return error


def _failure_body(request, failure) -> bytes:
    """The JSON error body of a failed request."""
    return _error(request, _api_error(failure))


def _finish(request, body: bytes) -> None:
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


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
    other request may not exceed the largest body limit of the config.  A
    body that passes its limit while it arrives (chunked), and a refused one
    that declares more than DISCARD_LIMIT, are answered at once, without
    reading the rest, and the connection closed."""

    kwp_config: Config | None = None
    kwp_headers: dict[str, str] | None = None
    kwp_refusal: ApiError | None = None
    # The channel whose header checks passed in gotLength, if any.
    kwp_checked: Channel | None = None
    kwp_channel: str = "-"
    # The channel of a receive request (receive_channel), found in gotLength.
    kwp_receive: str | None = None
    # Answered before the end of its body (KwpRequest._answer_now).
    kwp_answered = False

    def __init__(self, channel, *args, **kwargs):
        super().__init__(channel, *args, **kwargs)
        self._limit: int | None = None
        self.kwp_started = channel.site.reactor.seconds()

    def gotLength(self, length):
        config = self.kwp_config = self.channel.site.config
        name = receive_channel(getattr(self.channel, "_command", b""), getattr(self.channel, "_path", b""))
        if name is not None:
            self.kwp_channel = self.kwp_receive = name
            # Kept for the route, which would otherwise build the same map again.
            headers = self.kwp_headers = header_map(self.requestHeaders.getAllRawHeaders())
            try:
                channel = check_headers(config, name, headers, _peer_host(self.channel.transport), length)
                self.kwp_checked = channel
                self._limit = config.body_limit(channel)
            except ApiError as refusal:
                self._refuse(refusal, length)
                return
        else:
            self._limit = config.largest_body_limit
            if length is not None and length > self._limit:
                self._refuse(too_large(self._limit), length)
                return
        super().gotLength(length)

    def _refuse(self, refusal: ApiError, length: int | None = None) -> None:
        self.kwp_refusal = refusal
        self.content = _Discard()
        # No "100 Continue" for a request that is refused already.
        self.requestHeaders.removeHeader(b"expect")
        self._last_on_its_connection()
        if length is not None and length > DISCARD_LIMIT:
            # Too much to read and throw away.
            self._answer_now()

    def _answer_now(self) -> None:
        """Answer the refusal before the body has ended; the connection
        closes after the answer and the rest of the body is not read."""
        self.kwp_answered = True
        channel = self.channel
        channel.answered_early = True
        self.requestReceived(channel._command, channel._path, channel._version)

    def _last_on_its_connection(self) -> None:
        """Answer with Connection: close, and close after the answer."""
        self.setHeader(b"connection", b"close")
        self.channel.persistent = False

    def handleContentChunk(self, data):
        if self.kwp_answered:
            # What was read with the chunk that passed the limit.
            return
        super().handleContentChunk(data)
        if self.kwp_refusal is not None:
            if self.content.size > DISCARD_LIMIT:
                self.channel.transport.abortConnection()
        elif self._limit is not None and self.content.tell() > self._limit:
            # Only a chunked body gets here: a declared length over the
            # limit was refused in gotLength.
            self.content.close()
            self._refuse(too_large(self._limit))
            self._answer_now()

    def process(self):
        refusal = self._unroutable()
        if refusal is None and self.kwp_channel == "-":
            # Refused in gotLength: only the receive route (which counts its
            # refusals) answers its own.
            refusal = self.kwp_refusal
        if refusal is None:
            return super().process()
        _finish(self, _error(self, refusal))

    def _unroutable(self) -> ApiError | None:
        """What Klein and twisted.web would answer without a JSON body: a URL
        or Host that is not UTF-8 (Klein's text 400), and ``*`` (twisted.web's
        empty 405; ``OPTIONS *`` is left to it)."""
        if self.path == b"*":
            if self.method == b"OPTIONS":
                return None
            return ApiError(405, "bad_request", "only OPTIONS may be asked of *", {"Allow": "OPTIONS"})
        try:
            if self.kwp_receive is None:
                # As twisted.web splits it into postpath: without the first
                # byte.  receive_channel decoded the path of a receive already.
                unquote_to_bytes(self.path.split(b"?", 1)[0][1:]).decode("utf-8")
            (self.getHeader(b"host") or b"").decode("utf-8")
        except UnicodeDecodeError:
            return bad_request("the URL and the Host header must be UTF-8")
        return None

    def close_when_written(self) -> Deferred:
        """Close the connection after this response; the Deferred fires with
        True when all of the response reached the kernel before it closed,
        False when the connection was lost first.  Call before the first
        write."""
        self._last_on_its_connection()
        return self.channel.closed()

    def requestReceived(self, command, path, version):
        self.channel.request_received()
        self._kwp_site = self.channel.site
        self._kwp_site.request_started()
        super().requestReceived(command, path, version)

    # In flight from requestReceived until finish or connectionLost, counted
    # here rather than through notifyFinish, whose Deferred per request
    # costs more than the count.
    _kwp_site: KwpSite | None = None
    # Cancelled when the connection is lost before the answer (a receive).
    kwp_answer: Deferred | None = None

    def _kwp_ended(self) -> None:
        site, self._kwp_site = self._kwp_site, None
        if site is not None:
            site.request_ended()

    def finish(self):
        super().finish()
        self._kwp_ended()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        answer, self.kwp_answer = self.kwp_answer, None
        if answer is not None and not self.finished:
            answer.cancel()
        self._kwp_ended()


class KwpChannel(http.HTTPChannel):
    """An HTTP/1.1 connection that its Site knows about, so a stop can close
    every connection after its last response was flushed.

    A request must arrive whole within the site's receive time-out, counted
    from its first byte: Twisted creates the Request only once the request
    line is complete, so a deadline kept there would let a client trickle the
    request line for ever.  One timer per connection serves the deadlines
    of all its requests: a new request moves it (DelayedCall.reset) instead
    of cancelling one timer and scheduling another."""

    # The deadline's timer; once the request is received it may still run
    # out, and then finds no request being received.
    _deadline = None
    _receiving = False
    # Set when the request being received was answered before the end of
    # its body: the end that may still arrive is no request.
    answered_early = False

    def connectionMade(self):
        super().connectionMade()
        self._closed: list[Deferred] = []
        self.site.connections.add(self)

    def closed(self) -> Deferred:
        """Fires when the connection is gone: True when it was closed from
        this side after its write buffer was flushed, False when it was lost
        or aborted.  Reading stops once a close is asked for, so a client's
        end of stream cannot pass for a flushed close."""
        d = Deferred()
        self._closed.append(d)
        return d

    def dataReceived(self, data):
        if not self._receiving and data and not self._handlingRequest:
            self._receiving = True
            if self._deadline is None:
                self._deadline = self.site.reactor.callLater(self.site.receive_timeout, self._too_slow)
            else:
                self._deadline.reset(self.site.receive_timeout)
        super().dataReceived(data)

    def allContentReceived(self):
        if not self.answered_early:
            super().allContentReceived()

    def request_received(self) -> None:
        """The request being received is complete: its deadline no longer holds."""
        self._receiving = False

    def _too_slow(self) -> None:
        self._deadline = None
        if not self._receiving:
            return
        log.info("request not received within {timeout}s; disconnecting", timeout=self.site.receive_timeout)
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._receiving = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connectionLost(reason)
        flushed = reason.check(ConnectionDone) is not None and self.transport.disconnecting
        waiters, self._closed = self._closed, []
        for d in waiters:
            d.callback(flushed)
        self.site.connections.discard(self)
        if not self.site.connections:
            self.site.fire_closed()

    def _respondToBadRequestAndDisconnect(self):
        # Twisted answers a request it cannot parse (request line, header
        # syntax, header count or size, framing) with a bare 400; the
        # contract wants every error as JSON.
        self.answer_and_close(ApiError(400, "bad_request", "malformed HTTP request"))

    def lineLengthExceeded(self, line):
        # A request or header line over MAX_LENGTH: Twisted would just hang up.
        self._respondToBadRequestAndDisconnect()

    def answer_and_close(self, error: ApiError) -> None:
        """Answer the request being received with error, without reading
        the rest of it, and close the connection."""
        body = error.body()
        reason = REASONS.get(error.status, b"Error")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (error.status, reason, len(body), body)
        )
        self.loseConnection()


class KwpSite(Site):
    """The Site of kwp: its Request class, time-outs, and one log line per
    request with no query string, header or body in it."""

    def __init__(
        self,
        app: "KwpApp",
        reactor,
        receive_timeout: float = RECEIVE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        access_log=None,
    ):
        # No route reads form fields from a POST body; parsing the Content-Type
        # of every POST to find out costs about a sixth of a receive.
        super().__init__(
            app.resource(),
            requestFactory=KwpRequest,
            timeout=idle_timeout,
            reactor=reactor,
            parsePOSTFormSubmission=False,
        )
        self.protocol = KwpChannel
        self.app = app
        self.receive_timeout = receive_timeout
        # access_log(when, line) writes each request's line itself (the text
        # log, see tap.TextAccessLog); None sends it through the logger.
        self.access_log = access_log
        self.noisy = False
        self.connections: set[KwpChannel] = set()
        self._in_flight = 0
        self._idle: list[Deferred] = []
        self._closed: list[Deferred] = []

    def request_started(self) -> None:
        """Count a request in flight until request_ended."""
        self._in_flight += 1

    def request_ended(self) -> None:
        self._in_flight -= 1
        if not self._in_flight and self._idle:
            # One turn later, so that what the request's own notifyFinish
            # callbacks start (settling a pull) is under way first.
            self.reactor.callLater(0, self._fire_idle)

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
        # What the client wrote is escaped: a %0A in the channel name of the
        # URL is a newline once decoded.
        method = printable(request.method.decode("latin-1"))
        path = printable(request.path.decode("latin-1"))
        duration_ms = round((now - getattr(request, "kwp_started", now)) * 1000, 3)
        channel = printable(request.kwp_channel)
        if self.access_log is not None:
            # ACCESS_FORMAT as an f-string: no dict of fields, no format
            # string parsed again for every request.
            line = f"{method} {path} {request.code} {request.sentLength}B {duration_ms:.1f}ms channel={channel}"
            self.access_log(now, line)
            return
        length = request.getHeader(b"content-length")
        log.info(
            ACCESS_FORMAT,
            method=method,
            path=path,
            status=request.code,
            size=request.sentLength,
            duration_ms=duration_ms,
            channel=channel,
            request_size=int(length) if length and length.isdigit() else None,
        )


class KwpRoot(Resource):
    """The root resource: receive requests are answered by the app directly,
    every other request by the Klein router.  Receive is the route a burst of
    senders hits, and going through the router's matching and Deferred chain
    cost it about 50 us of CPU per request, more than a third of the HTTP and
    application work of a receive (docs/PERFORMANCE.md)."""

    isLeaf = True

    def __init__(self, app: "KwpApp"):
        super().__init__()
        self._app = app
        self._router = app.app.resource()

    def render(self, request):
        if isinstance(request, KwpRequest):
            name = request.kwp_receive
        else:
            name = receive_channel(request.method, request.uri)
        if name is None:
            return self._router.render(request)
        d = self._app.answer_receive(request, name)
        d.addCallbacks(functools.partial(_finish, request), lambda failure: failure.trap(CancelledError))
        return NOT_DONE_YET


class KwpApp:
    app = Klein()

    def __init__(self, config: Config, storage, notifier, clock, forwarders=None, ui_token: str | None = None):
        self.config = config
        self.storage = storage
        self.notifier = notifier
        self.clock = clock
        self.forwarders = forwarders
        self.streams = StreamHub(storage, clock, ui_token=ui_token)
        self.history = History(storage, clock, wake=notifier.fire)
        # UI_ACCESS_TOKEN: an admin token from the environment, beside the config's.
        self.ui_token = ui_token
        self.console = console.Console()
        self.metrics = Metrics(lambda: self.config, storage, clock)
        self.receiver = Receiver(storage, clock, self.metrics.filter_failed)
        self.puller = Puller(storage, notifier, clock)

    def resource(self) -> KwpRoot:
        return KwpRoot(self)

    def _config(self, request) -> Config:
        """The config a request started with, even if a reload came since."""
        return getattr(request, "kwp_config", None) or self.config

    def _access(self, request, name: str, authorization: str | None = None) -> Access:
        """What the request's token (or ``authorization``) reaches of the channel."""
        request.kwp_channel = name
        return authorize(self._config(request), name, authorization or _authorization(request), self.ui_token)

    async def _queue(self, request, name: str, kind: str | None = None) -> tuple[Channel, str]:
        """The channel and the consumer whose queue a per-queue request acts
        on.  ``kind`` "pull" or "push" refuses a consumer of the other kind
        (400).  A consumer that a reload removed is reached by the admin
        token while it still holds webhooks, whatever the kind."""
        access = self._access(request, name)
        channel = access.channel
        name_of_queue = access.queue(_args(request).get("consumer"))
        consumer = channel.consumer(name_of_queue)
        if consumer is None:
            if not access.identity.admin or not await self.storage.holds(channel.name, name_of_queue):
                raise unknown_consumer(channel, name_of_queue)
            return channel, name_of_queue
        what, query = (f"channel {name!r}", "") if consumer.implicit else (f"consumer {consumer.name!r}", f"?consumer={consumer.name}")
        if kind == "pull" and consumer.forward is not None:
            raise bad_request(f"{what} delivers by push; see GET /api/webhook/{name}/queue{query}")
        if kind == "push" and (consumer.forward is None or self.forwarders is None):
            raise bad_request(f"{what} has no forward block; its queue is read with GET /api/webhook/{name}{query}")
        return channel, name_of_queue

    @app.handle_errors(ApiError)
    def _api_error(self, request, failure):
        return _failure_body(request, failure)

    @app.handle_errors(HTTPException)
    def _http_error(self, request, failure):
        error = failure.value
        # The router's redirects (to merge repeated slashes) are not followed
        # by webhook senders and would carry no Location: such a path is not
        # an endpoint.
        if isinstance(error, NotFound) or (error.code or 0) < 400:
            return _error(request, not_found("no such endpoint"))
        if isinstance(error, MethodNotAllowed):
            allowed = ", ".join(error.valid_methods or ())
            return _error(request, ApiError(405, "bad_request", "method not allowed", {"Allow": allowed}))
        return _error(request, ApiError(error.code or 400, "bad_request", error.name))

    @app.handle_errors(Exception)
    def _unexpected(self, request, failure):
        if failure.check(CancelledError):
            return b""
        return _failure_body(request, failure)

    def answer_receive(self, request, name: str) -> Deferred:
        """The answer body of POST /api/webhook/{name}, with its status and
        headers set on request.  Every answer is counted, refusals included
        (those decided in KwpRequest.gotLength too); fails only with
        CancelledError, when the client has gone."""
        request.kwp_channel = name
        config = self._config(request)
        started = getattr(request, "kwp_started", None) or self.clock.seconds()
        d = self._receive(request, config, name)
        if isinstance(request, KwpRequest):
            request.kwp_answer = d
        else:
            request.notifyFinish().addErrback(lambda _: d.cancel())

        def answered(received: Received) -> bytes:
            self.metrics.received(config, name, "ok", self.clock.seconds() - started)
            request.setHeader(b"content-type", b"application/json")
            return received.body()

        def failed(failure):
            if failure.check(CancelledError):
                # A webhook already handed to the storage is stored all the same.
                return failure
            error = _api_error(failure)
            self.metrics.received(config, name, error.code, self.clock.seconds() - started)
            return _error(request, error)

        return d.addCallbacks(answered, failed)

    @app.route("/api/webhook/<string:name>", methods=["POST"])
    def receive(self, request, name):
        # KwpRoot answers these before the router sees them; the route is
        # declared all the same so that the router's 405s list POST here.
        return self.answer_receive(request, name)

    def _receive(self, request, config: Config, name: str) -> Deferred:
        """A Deferred Received for the request (see Receiver.receive)."""
        refusal = getattr(request, "kwp_refusal", None)
        if refusal is not None:
            return fail(refusal)
        headers = getattr(request, "kwp_headers", None) or header_map(request.requestHeaders.getAllRawHeaders())
        body = request.content.read()
        channel = getattr(request, "kwp_checked", None)
        if channel is None:
            # A request that is not a KwpRequest: nothing was checked yet.
            try:
                channel = check_headers(config, name, headers, _peer_host(request.transport), len(body))
            except ApiError:
                return fail()
        return self.receiver.receive(config, channel, headers, body)

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
        channel, consumer = await self._queue(request, name, "pull")
        query = PullQuery.parse(args)
        if request.method == b"HEAD":
            # The router sends HEAD here too, and twisted.web drops the body it
            # writes: a pull would delete (or lease) webhooks nobody received.
            request.setHeader(b"content-type", b"application/json")
            return b""
        config = self._config(request)
        token = bearer_token(_authorization(request))
        return await self.puller.take(request, channel.name, consumer, query, token, config.server.max_waiters_per_token)

    @app.route("/api/webhook/<string:name>/sign", methods=["POST"])
    def sign(self, request, name):
        access = self._access(request, name)
        access.require_channel_token()
        channel = access.channel
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
        access = self._access(request, name)
        access.require_channel_token()
        channel = access.channel
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
        try:
            headers.update(verify.sender_headers(channel, body, self.clock.seconds(), secret))
        except verify.NotSigned as e:
            # A Standard Webhooks secret that is not base64.
            raise bad_request(str(e)) from None
        check_headers(config, name, headers, None, len(body))
        received = await self.receiver.receive(config, channel, headers, body)
        request.setHeader(b"content-type", b"application/json")
        return received.body()

    @app.route("/api/webhook/<string:name>/ack", methods=["POST"])
    async def ack(self, request, name):
        channel, consumer = await self._queue(request, name)
        ids = parse_ids(request.content.read())
        acked = await self.storage.ack(channel.name, ids, self.clock.seconds(), consumer=consumer)
        return _json(request, {"acked": acked})

    @app.route("/api/webhook/<string:name>/list", methods=["GET"])
    async def list(self, request, name):
        channel, consumer = await self._queue(request, name)
        items = await self.storage.list(channel.name, *_page(request), consumer=consumer)
        request.setHeader(b"content-type", b"application/json")
        return b"[" + b",".join(encode(item, True) for item in items) + b"]"

    @app.route("/api/webhook/<string:name>/<int:webhook_id>", methods=["DELETE"])
    async def delete(self, request, name, webhook_id):
        channel, consumer = await self._queue(request, name)
        now = self.clock.seconds()
        if webhook_id > MAX_ID or not await self.storage.delete(channel.name, webhook_id, now, consumer=consumer):
            raise not_found(f"no webhook {webhook_id} on channel {name!r}")
        request.setResponseCode(http.NO_CONTENT)
        return b""

    @app.route("/api/webhook/<string:name>/queue", methods=["GET"])
    async def queue(self, request, name):
        channel, consumer = await self._queue(request, name, "push")
        body = await self.forwarders.queue(channel.name, consumer, *_page(request))
        request.setHeader(b"content-type", b"application/json")
        return body

    @app.route("/api/webhook/<string:name>/queue/<any(pause, resume):action>", methods=["POST"])
    async def pause(self, request, name, action):
        channel, consumer = await self._queue(request, name, "push")
        await self.forwarders.set_paused(channel.name, consumer, action == "pause")
        request.setResponseCode(http.NO_CONTENT)
        return b""

    @app.route("/api/webhook/<string:name>/queue/clear", methods=["POST"])
    async def clear(self, request, name):
        channel, consumer = await self._queue(request, name, "push")
        await self.forwarders.clear(channel.name, consumer)
        request.setResponseCode(http.NO_CONTENT)
        return b""

    @app.route("/api/webhook/<string:name>/queue/retry/<int:webhook_id>", methods=["POST"])
    async def retry(self, request, name, webhook_id):
        channel, consumer = await self._queue(request, name, "push")
        if webhook_id > MAX_ID:
            # No row can have it, and SQLite cannot even be asked for it.
            raise not_found(f"no webhook {webhook_id} on channel {name!r}")
        if channel.consumer(consumer) is None:
            raise bad_request(f"consumer {consumer!r} was removed from the config: nothing forwards its webhooks")
        try:
            result = await self.forwarders.retry(channel.name, consumer, webhook_id)
        except LookupError:
            restarting = "the consumer's forwarder is restarting; try again"
            raise ApiError(503, "internal_error", restarting, {"Retry-After": "1"}) from None
        if result is None:
            raise not_found(f"no webhook {webhook_id} on channel {name!r}")
        return _json(request, result.as_json())

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

    @app.route("/api/metrics", methods=["GET"])
    async def metrics_text(self, request):
        config = self._config(request)
        if not config.server.metrics:
            raise not_found("metrics are off (server.metrics)")
        authorize_metrics(config, _authorization(request))
        body = await self.metrics.scrape()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return body

    @app.route("/api/config", methods=["GET"])
    def effective_config(self, request):
        config = self._config(request)
        authorize_admin(config, _authorization(request), self.ui_token)
        return _json(request, redacted(config))

    # --- the history (§8) and the live stream (§9) ---

    @app.route("/api/webhook/<string:name>/events", methods=["GET"])
    async def events(self, request, name):
        access = self._access(request, name)
        items, next_before = await self.history.page(access, Listing.parse(access, _args(request)))
        request.setHeader(b"content-type", b"application/json")
        return encode_page(items, next_before)

    @app.route("/api/webhook/<string:name>/events/<int:webhook_id>", methods=["GET"])
    async def event(self, request, name, webhook_id):
        access = self._access(request, name)
        event = await self.history.event(access, webhook_id)
        request.setHeader(b"content-type", b"application/json")
        return encode_event(event, with_log=True)

    @app.route("/api/webhook/<string:name>/events/<int:webhook_id>/replay", methods=["POST"])
    async def replay(self, request, name, webhook_id):
        access = self._access(request, name)
        targets = replay_targets(access, request.content.read())
        return _json(request, await self.history.replay(access, webhook_id, targets))

    @app.route("/api/webhook/<string:name>/replay", methods=["POST"])
    async def replay_window(self, request, name):
        access = self._access(request, name)
        count, next_after = await self.history.replay_window(access, Window.parse(access, request.content.read()))
        return _json(request, {"count": count, "next_after": next_after})

    @app.route("/api/webhook/<string:name>/events/<int:webhook_id>", methods=["DELETE"])
    async def purge(self, request, name, webhook_id):
        await self.history.purge(self._access(request, name), webhook_id)
        request.setResponseCode(http.NO_CONTENT)
        return b""

    @app.route("/api/webhook/<string:name>/stream", methods=["GET"])
    async def stream(self, request, name):
        # Here a ?token= stands in for a missing Authorization header: smee
        # clients and browsers' EventSource cannot send one.
        token = _args(request).get("token")
        authorization = _authorization(request) or (token and f"Bearer {token}")
        access = self._access(request, name, authorization)
        last_event_id = request.getHeader(b"last-event-id")
        spec = StreamSpec.parse(access, _args(request), last_event_id and last_event_id.decode("latin-1"))
        if request.method == b"HEAD":
            self.streams.check_room(access.channel.name)
            request.setHeader(b"content-type", b"text/event-stream")
            request.setHeader(b"cache-control", b"no-cache")
            return b""
        return await self.streams.open(request, access.channel.name, spec, authorization)

    @app.route("/api/channels", methods=["GET"])
    async def channels(self, request):
        config = self._config(request)
        identity = identify(config, _authorization(request), self.ui_token)
        return _json(request, await channels_overview(self.storage, config, identity))

    @app.route("/", methods=["GET"])
    def home(self, request):
        return console.redirect(request)

    @app.route("/ui", methods=["GET"])
    def console_without_slash(self, request):
        return console.redirect(request)

    @app.route("/ui/", methods=["GET"], branch=True)
    def console_files(self, request):
        return self.console
