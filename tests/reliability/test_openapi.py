"""docs/openapi.yaml against the live daemon: schemathesis generates requests
from the spec and every answer must be no 5xx and conform to it (status
codes, content types, bodies, headers).

The daemon has metrics on, an admin token, and channels for every branch of
the spec: plain, secret-header, HMAC, Meta (handshake), a small body limit, a
full queue (503 queue_full with Retry-After), and two forward channels whose
retries stay pending: one whose target (a server in this test) answers 502,
one whose target port refuses connections."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import BASIC_CONFIG
from tests.reliability.clients import ADMIN, post
from tests.support import ROOT, daemon_in, free_port

schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml")


@schemathesis.check
def no_server_error_but_queue_full(ctx, response, case):
    """schemathesis' not_a_server_error, except for the 503 queue_full that
    the channel "full" must answer (the contract's refusal, not a failure)."""
    if response.status_code == 503 and case.path_parameters.get("channel") == "full":
        assert response.json()["error"] == "queue_full", response.text
        return True
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error_but_queue_full,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

TOKENS = {
    "github": "github-token",
    "open": "open-token",
    "small": "small-token",
    "meta": "meta-token",
    "signed": "signed-token",
    "full": "full-token",
    "push": "push-token",
    "gone": "gone-token",
}
# Channels a test webhook can be posted to without a secret.
OPEN_CHANNELS = {"open", "push", "gone"}
FORWARD = {"interval-seconds": 3600, "timeout-seconds": 5}


def spec_config(target_port: int, dead_port: int) -> dict:
    channels = [dict(c) for c in BASIC_CONFIG["channels"]]
    channels += [
        {"name": "meta", "token": TOKENS["meta"], "provider": "meta", "webhook-secret": "app-secret",
         "verify-token": "vt"},
        {"name": "signed", "token": TOKENS["signed"], "webhook-secret": "s3cret", "secret-type": "hmac-sha256",
         "secret-header": "X-Signature"},
        {"name": "full", "token": TOKENS["full"], "max-queue": 1},
        {"name": "push", "token": TOKENS["push"],
         "forward": {"url": f"http://127.0.0.1:{target_port}/hook", "max-attempts": 3, **FORWARD}},
        {"name": "gone", "token": TOKENS["gone"], "forward": {"url": f"http://127.0.0.1:{dead_port}/", **FORWARD}},
    ]
    return {"server": {**BASIC_CONFIG["server"], "metrics": True}, "channels": channels}


class _BadGateway(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b"Bad Gateway"
        self.send_response(502)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def target():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BadGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def spec_daemon(tmp_path_factory, target):
    d = daemon_in(tmp_path_factory.mktemp("openapi"), spec_config(target, free_port()))
    for channel in ("open", "push", "gone"):
        for n in range(3):
            assert post(d.port, channel, {"n": n})[0] == 200
    assert post(d.port, "full", {"n": 0})[0] == 200
    yield d
    d.kill()


def test_the_spec_describes_every_endpoint():
    operations = {(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())}
    assert operations == {
        ("POST", "/api/webhook/{channel}"),
        ("GET", "/api/webhook/{channel}"),
        ("POST", "/api/webhook/{channel}/ack"),
        ("GET", "/api/webhook/{channel}/list"),
        ("DELETE", "/api/webhook/{channel}/{id}"),
        ("POST", "/api/webhook/{channel}/sign"),
        ("POST", "/api/webhook/{channel}/test-send"),
        ("GET", "/api/webhook/{channel}/queue"),
        ("POST", "/api/webhook/{channel}/queue/pause"),
        ("POST", "/api/webhook/{channel}/queue/resume"),
        ("POST", "/api/webhook/{channel}/queue/clear"),
        ("POST", "/api/webhook/{channel}/queue/retry/{id}"),
        ("GET", "/api/webhook/{channel}/events"),
        ("GET", "/api/webhook/{channel}/events/{id}"),
        ("DELETE", "/api/webhook/{channel}/events/{id}"),
        ("POST", "/api/webhook/{channel}/events/{id}/replay"),
        ("POST", "/api/webhook/{channel}/replay"),
        ("GET", "/api/webhook/{channel}/stream"),
        ("GET", "/api/health"),
        ("GET", "/api/version"),
        ("GET", "/api/metrics"),
        ("GET", "/api/config"),
        ("GET", "/api/channels"),
    }


OPERATIONS = {op.label: op for op in (r.ok() for r in schema.get_all_operations())}
# Hypothesis starts from (and shrinks to) the first element; repeats weigh
# the draws towards answers past the token and channel checks.
AUTHORIZATIONS = ["admin", "own", "admin", "own", "other", "unknown", "none"]


def _channels(label: str) -> list[str | None]:
    """Configured channels to aim at (None: the generated name), the ones an
    operation succeeds on first and most often."""
    if "/queue" in label:
        return ["push", "gone", "push", "gone", "push", "gone", "open", "small", None]
    return ["open", "push", "signed", "open", *TOKENS, None]


def _authorization(kind: str, channel: str | None) -> str | None:
    if kind == "admin":
        return f"Bearer {ADMIN}"
    if kind == "own":
        return f"Bearer {TOKENS.get(channel, TOKENS['open'])}"
    if kind == "other":
        return f"Bearer {TOKENS['github' if channel == 'open' else 'open']}"
    if kind == "unknown":
        return "Bearer not-a-token"
    return None


def _aim(daemon, case, channel: str, known: bool) -> None:
    """Point a generated case at a configured channel, with a webhook there to
    find; known: use that webhook's id (else the generated one), and on
    channel meta answer its pull with the handshake."""
    params = case.path_parameters
    params["channel"] = channel
    # Something to pull, list, delete or retry (not before other POSTs: the
    # channel's webhooks would only pile up).
    if channel in OPEN_CHANNELS and (case.operation.method.upper() != "POST" or "id" in params):
        status, _, body = post(daemon.port, channel, {"fresh": True})
        if status == 200 and known and "id" in params:
            params["id"] = json.loads(body)["id"]
    if known and case.operation.label == "POST /api/webhook/{channel}/events/{id}/replay":
        # To the consumers it was routed to: generated names are no consumers.
        case.body = {}
    if channel == "meta" and known and case.operation.label == "GET /api/webhook/{channel}":
        case.query = {**(case.query or {}), "hub.mode": "subscribe", "hub.verify_token": "vt"}
        case.query.setdefault("hub.challenge", "1158201444")


def _check_pull_headers(case, response) -> None:
    """A plain pull that returned webhooks ends with Connection: close."""
    if case.operation.label != "GET /api/webhook/{channel}" or response.status_code != 200:
        return
    headers = {k.lower(): ", ".join(v) for k, v in response.headers.items()}
    if not headers.get("content-type", "").startswith("application/json"):
        return
    items = response.json()
    leased = "lease" in (case.query or {})
    assert (headers.get("connection", "").lower() == "close") == (bool(items) and not leased), (case.query, headers)
    if items:
        assert all(("body" in i) == (str((case.query or {}).get("raw")) == "1") for i in items)


STREAM = "GET /api/webhook/{channel}/stream"


def _call_stream(case, base_url: str) -> None:
    """The stream's 200 never ends: its headers and first line are checked
    and the connection closed; any other answer is validated as usual."""
    kwargs = case.as_transport_kwargs(base_url=base_url)
    with requests.request(**kwargs, stream=True, timeout=30) as response:
        if response.status_code != 200:
            response.content
            case.validate_response(response, checks=CHECKS)
            return
        assert response.headers["content-type"] == "text/event-stream"
        assert next(response.iter_lines()).startswith(b": ")


# Each operation is run as a hypothesis test of its own inside a plain test:
# schemathesis' own pytest integration and pytest-twisted's both wrap the
# hypothesis test and cannot be stacked.
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_the_daemon_answers_as_the_spec_says(spec_daemon, label):
    operation = OPERATIONS[label]

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        case=operation.as_strategy(),
        channel=st.sampled_from(_channels(label)),
        authorization=st.sampled_from(AUTHORIZATIONS),
        known=st.booleans(),
    )
    def check(case, channel, authorization, known):
        # A generated channel name is almost never a configured one.
        if channel is not None and "channel" in (case.path_parameters or {}):
            _aim(spec_daemon, case, channel, known)
        if case.query and "wait" in case.query:
            case.query["wait"] = 0
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        value = _authorization(authorization, (case.path_parameters or {}).get("channel"))
        if value is not None:
            case.headers["Authorization"] = value
        if label == STREAM:
            _call_stream(case, spec_daemon.base)
            return
        response = case.call_and_validate(base_url=spec_daemon.base, checks=CHECKS, timeout=30)
        _check_pull_headers(case, response)

    check()


@pytest.fixture(scope="module")
def quiet_daemon(tmp_path_factory):
    """Metrics off (the default)."""
    d = daemon_in(tmp_path_factory.mktemp("openapi-quiet"), BASIC_CONFIG)
    yield d
    d.kill()


# The status of each authorization with metrics off: /api/metrics is not
# there for anyone, /api/config is the admin's alone.
_METRICS_OFF_STATUSES = {
    "GET /api/metrics": {"admin": 404, "own": 404, "other": 404, "unknown": 404, "none": 404},
    "GET /api/config": {"admin": 200, "own": 403, "other": 403, "unknown": 401, "none": 401},
}


@pytest.mark.parametrize("label", ["GET /api/metrics", "GET /api/config"])
def test_metrics_off_answers_as_the_spec_says(quiet_daemon, label):
    operation = OPERATIONS[label]
    answers = set()

    @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(), authorization=st.sampled_from(AUTHORIZATIONS))
    def check(case, authorization):
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        value = _authorization(authorization, "open")
        if value is not None:
            case.headers["Authorization"] = value
        response = case.call_and_validate(base_url=quiet_daemon.base, checks=CHECKS, timeout=30)
        answers.add((authorization, response.status_code))

    check()
    assert answers and answers <= set(_METRICS_OFF_STATUSES[label].items())
