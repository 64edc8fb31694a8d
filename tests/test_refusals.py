"""What a client can send that kwp must refuse cleanly: bodies nested deeper
than the JSON parser allows, ids that are not text, chunked bodies over the
limit; and the status lines of the refusals."""

from __future__ import annotations

import json
import socket
import time

import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread
from twisted.web.test.requesthelper import DummyChannel
from twisted.web.server import Request

from kwp.errors import ApiError
from kwp.web import _error
from tests.conftest import BASIC_CONFIG
from tests.support import assert_error, body_json, metric_samples

DEEP_BODIES = [b"[" * 1000, b"[" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"[" * 990 + b"]" * 990]

CONFIG = {
    "server": {"admin-token": "admin", "metrics": True, "default-body-limit": 1_000_000},
    "channels": [
        *BASIC_CONFIG["channels"],
        {"name": "tg", "token": "tg-token", "provider": "telegram", "webhook-secret": "tg-secret"},
        {"name": "full", "token": "full-token", "max-queue": 1},
        {"name": "gh", "token": "gh-token", "provider": "github", "webhook-secret": "gh-secret"},
        {"name": "sw", "token": "sw-token", "provider": "standard-webhooks", "webhook-secret": "whsec_c2VjcmV0"},
    ],
}


def _failures(captured_log) -> list[dict]:
    return [e for e in captured_log.events if "log_failure" in e or e.get("log_level").name in ("error", "critical")]


@pytest_twisted.ensureDeferred
async def test_json_nested_deeper_than_the_parser_allows_is_invalid_json(local_kwp, captured_log):
    kwp = local_kwp(CONFIG)
    for body in DEEP_BODIES:
        await assert_error(await kwp.post("open", body), 422, "invalid_json")
    assert await kwp.storage.list("open", 10, 0) == []
    counted = metric_samples(await (await kwp.get("/api/metrics")).content())["kwp_webhook_receive_total"]
    assert counted == {(("channel", "open"), ("status", "invalid_json")): len(DEEP_BODIES)}
    assert _failures(captured_log) == []


@pytest_twisted.ensureDeferred
async def test_deep_bodies_on_the_other_routes_are_client_errors(local_kwp, captured_log):
    kwp = local_kwp(CONFIG)
    auth = {"Authorization": "Bearer open-token", "Content-Type": "application/json"}
    for body in DEEP_BODIES:
        for route in ("ack", "test-send"):
            response = await treq.post(kwp.url(f"/api/webhook/open/{route}"), data=body, headers=auth)
            await assert_error(response, 400, "bad_request")
        spec = b'{"payload": ' + body + b"}"
        response = await treq.post(kwp.url("/api/webhook/open/test-send"), data=spec, headers=auth)
        assert 400 <= response.code < 500
        assert (await body_json(response))["error"] in ("bad_request", "invalid_json")
    gh = {"Authorization": "Bearer gh-token"}
    signed = await treq.post(kwp.url("/api/webhook/gh/sign"), data=DEEP_BODIES[1], headers=gh)
    assert signed.code == 200
    assert _failures(captured_log) == []


@pytest_twisted.ensureDeferred
async def test_a_test_send_secret_that_cannot_sign_is_a_client_error(local_kwp, captured_log):
    kwp = local_kwp(CONFIG)
    auth = {"Authorization": "Bearer sw-token"}
    for secret in ("not-base64!!", "whsec_!!!", "\u00e9", "\ud800", "\u0000"):
        response = await treq.post(kwp.url("/api/webhook/sw/test-send"), json={"payload": {}, "secret": secret},
                                   headers=auth)
        body = await assert_error(response, 400, "bad_request")
        assert secret not in body["message"]
    assert _failures(captured_log) == []


@pytest_twisted.ensureDeferred
async def test_a_delivery_id_that_is_not_text_is_no_delivery_id(local_kwp, captured_log):
    # "\ud800" is valid JSON but no Unicode text: it cannot be stored as an id.
    kwp = local_kwp(CONFIG)
    headers = {"X-Telegram-Bot-Api-Secret-Token": "tg-secret"}
    for body in (b'{"update_id": "\\ud800"}', b'{"update_id": "a\\udfffb"}'):
        response = await kwp.post("tg", body, headers)
        assert response.code == 200 and (await body_json(response))["status"] == "ok"
    assert len(await kwp.storage.list("tg", 10, 0)) == 2
    assert _failures(captured_log) == []


def _post_chunks_without_end(port: int, chunks: int, size: int) -> tuple[bytes, float, bool]:
    """POST chunks to the small channel (limit 1000) and never send the last
    chunk: the answer, how long it took, and whether the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /api/webhook/small HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        started = time.monotonic()
        for _ in range(chunks):
            s.sendall(b"%x\r\n%s\r\n" % (size, b" " * size))
        s.settimeout(5)
        answer = b""
        try:
            while data := s.recv(65536):
                answer += data
            closed = True
        except TimeoutError:
            closed = False
        return answer, time.monotonic() - started, closed


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_is_answered_413_as_soon_as_it_passes_the_limit(local_kwp):
    kwp = local_kwp(CONFIG)
    answer, seconds, closed = await deferToThread(_post_chunks_without_end, kwp.port.getHost().port, 3, 500)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n"), answer
    assert b"\r\nconnection: close" in head.lower()
    assert json.loads(body)["error"] == "payload_too_large"
    assert closed and seconds < 4
    counted = metric_samples(await (await kwp.get("/api/metrics")).content())["kwp_webhook_receive_total"]
    assert counted == {(("channel", "small"), ("status", "payload_too_large")): 1}
    # The connection it was cut from left nothing behind.
    assert (await kwp.post("small", {"n": 1})).code == 200
    assert await kwp.storage.list("small", 10, 0) != []


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_on_another_route_is_answered_413_at_once(local_kwp):
    kwp = local_kwp(CONFIG)
    limit = kwp.config.largest_body_limit

    def exchange():
        with socket.create_connection(("127.0.0.1", kwp.port.getHost().port), timeout=10) as s:
            s.sendall(b"POST /api/webhook/open/ack HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer open-token\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (limit + 1, b" " * (limit + 1)))
            s.settimeout(5)
            answer = b""
            while data := s.recv(65536):
                answer += data
            return answer

    answer = await deferToThread(exchange)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "payload_too_large"


def _status_line(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            answer += s.recv(65536)
        return answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    "request_bytes, status_line",
    [
        (b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1"
         b"\r\n\r\n[", b"HTTP/1.1 422 Unprocessable Entity"),
        (b"POST /api/webhook/small HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000"
         b"\r\n\r\n" + b" " * 2000, b"HTTP/1.1 413 Request Entity Too Large"),
        (b"POST /api/webhook/small HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
         b"Content-Length: 99999999999\r\n\r\n", b"HTTP/1.1 413 Request Entity Too Large"),
        (b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2"
         b"\r\n\r\n{}", b"HTTP/1.1 415 Unsupported Media Type"),
        (b"PUT /api/webhook/open HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 405 Method Not Allowed"),
    ],
    ids=["422", "413", "413-at-once", "415", "405"],
)
@pytest_twisted.ensureDeferred
async def test_refusals_have_their_reason_phrase(local_kwp, request_bytes, status_line):
    kwp = local_kwp(CONFIG)
    assert await deferToThread(_status_line, kwp.port.getHost().port, request_bytes) == status_line


@pytest_twisted.ensureDeferred
async def test_queue_full_has_its_reason_phrase(local_kwp):
    kwp = local_kwp(CONFIG)
    assert (await kwp.post("full", {})).code == 200
    request = b"POST /api/webhook/full HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    line = await deferToThread(_status_line, kwp.port.getHost().port, request)
    assert line == b"HTTP/1.1 503 Service Unavailable"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 415, 422, 429, 500, 503])
def test_every_error_status_has_a_reason_phrase(status):
    request = Request(DummyChannel())
    _error(request, ApiError(status, "bad_request", "x"))
    assert request.code == status
    assert request.code_message not in (b"Unknown Status", b"Error")
