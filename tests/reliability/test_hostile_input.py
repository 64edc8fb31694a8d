"""Hostile input: the config loader, the token and handshake parsers, and the
request path of the real daemon over raw sockets.  No 5xx, every error in the
contract's JSON shape, and the process keeps answering."""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kwp import verify
from kwp.auth import authorize
from kwp.config import CHANNEL_KEYS, FORWARD_KEYS, SERVER_KEYS, ConfigError, load_config, parse_config
from kwp.errors import ApiError
from tests.conftest import BASIC_CONFIG
from tests.reliability.clients import request
from tests.support import daemon_in

CODES = {
    "channel_not_found", "ip_blocked", "unauthorized", "forbidden", "payload_too_large", "invalid_content_type",
    "invalid_json", "bad_request", "queue_full", "not_found", "too_many_requests", "storage_unavailable",
    "internal_error",
}

# --- the config loader -------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.sampled_from(["github", "meta", "stripe", "hmac-sha256", "plain", "10.0.0.0/8", "::1", "X-Sig",
                     "{{ raw }}", "{{ raw | nope }}", "{{ signature }}", "{% if %}", "http://127.0.0.1:1/x"]),
)
_values = st.recursive(
    _scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=10,
)
_channel = st.dictionaries(st.sampled_from(CHANNEL_KEYS + ("token",)), _values, max_size=8)
_forward = st.dictionaries(st.sampled_from(FORWARD_KEYS), _values, max_size=6)


@settings(max_examples=400, deadline=None)
@given(
    server=st.dictionaries(st.sampled_from(SERVER_KEYS), _values, max_size=5),
    channels=st.lists(st.one_of(_channel, _channel.map(lambda c: {**c, "forward": {}}), _values), max_size=3),
    forward=_forward,
)
def test_parse_config_raises_only_config_error(server, channels, forward):
    channels = [dict(c, forward=forward) if isinstance(c, dict) and "forward" in c else c for c in channels]
    try:
        config = parse_config({"server": server, "channels": channels})
    except ConfigError as e:
        assert e.errors and all(isinstance(line, str) for line in e.errors)
        return
    assert all(config.channel(c.name) is c for c in config.channels)


@settings(max_examples=300, deadline=None)
@given(document=st.one_of(_values, st.dictionaries(st.text(max_size=10), _values, max_size=4)))
def test_parse_config_of_any_document_raises_only_config_error(document):
    try:
        parse_config(document)
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.lists(st.sampled_from(["[", "{", "]", "}", ":", "- ", "&a ", "*a", "!!", "\n", "  ", "x",
                                                "channels", ",", "'", '"', "\t", "%YAML 1.1\n", "---\n"]),
                               max_size=60).map("".join)))
def test_load_config_of_any_text_raises_only_config_error(tmp_path, text):
    path = tmp_path / "config.yml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_config(str(path))
    except ConfigError:
        pass


# --- tokens and handshakes ---------------------------------------------------

_config = parse_config({
    **BASIC_CONFIG,
    "channels": [*BASIC_CONFIG["channels"],
                 {"name": "meta", "token": "meta-token", "provider": "meta", "webhook-secret": "app",
                  "verify-token": "vt"}],
})
# Header values reach kwp decoded as latin-1 and query strings as UTF-8 with
# replacement, so any code point but a lone surrogate.
_any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=300)
@given(authorization=st.one_of(st.none(), _any_text, _any_text.map(lambda t: "Bearer " + t)),
       name=st.one_of(st.sampled_from(["open", "github", "nope", ""]), _any_text))
def test_authorize_answers_a_channel_or_an_api_error(authorization, name):
    try:
        channel = authorize(_config, name, authorization)
    except ApiError as e:
        assert e.code in CODES and e.status in (401, 403, 404)
        return
    assert channel.name == name


@settings(max_examples=300)
@given(args=st.dictionaries(st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge", "x"]), _any_text))
def test_meta_handshake_never_raises(args):
    result = verify.meta_handshake(_config.channel("meta"), args)
    assert result is None or result is verify.REFUSED or result == args.get("hub.challenge")


@settings(max_examples=300)
@given(headers=st.dictionaries(st.sampled_from(["x-github-delivery", "webhook-id", "x-gitlab-event-uuid",
                                                "x-shopify-webhook-id", "stripe-signature"]), _any_text),
       body=st.one_of(st.none(), _any_text, st.dictionaries(st.sampled_from(["id", "event_id", "type"]),
                                                            st.one_of(_any_text, st.integers(), st.none()))))
def test_delivery_ids_never_raise(headers, body):
    for channel in _config.channels:
        found = verify.delivery_id(channel, headers, body)
        assert found is None or (isinstance(found, str) and len(found) <= verify.MAX_DELIVERY_ID_LENGTH)


# --- the request path of the daemon ------------------------------------------


@pytest.fixture(scope="module")
def hostile_daemon(tmp_path_factory):
    """The daemon of this module's requests: after the last of them it still
    runs and answers, and it logged no traceback."""
    d = daemon_in(tmp_path_factory.mktemp("hostile"), BASIC_CONFIG)
    try:
        yield d
        assert request(d.port, "GET", "/api/health")[0] == 200
        assert d.proc.poll() is None
        assert "Traceback" not in d.log(), d.log()[-5000:]
    finally:
        d.kill()


def exchange(port: int, raw: bytes, method: str) -> tuple[int, dict, bytes] | None:
    """Send raw bytes; the parsed response, or None when the server closed
    the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        try:
            s.sendall(raw)
        except OSError:
            return None
        response = http.client.HTTPResponse(s, method=method)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def assert_contract_answer(raw: bytes, answer, method: str) -> None:
    # Every request here gets an answer, a JSON 400 for one that cannot be
    # parsed included: none may be cut off without one.
    assert answer is not None, (raw[:300], "closed without an answer")
    status, headers, body = answer
    assert status < 500, (raw[:300], status, body)
    if status >= 400:
        assert headers.get("content-type") == "application/json", (raw[:300], status, headers, body)
        if method != "HEAD":
            error = json.loads(body)
            assert set(error) == {"error", "message"} and error["error"] in CODES, (raw[:300], error)


_segment = st.one_of(
    st.sampled_from(["open", "github", "small", "nope", "..", ".", "..%2f..%2fetc%2fpasswd", "%2e%2e", "%00",
                     "open%2flist", "%ff%fe", "list", "ack", "sign", "test-send", "1", "-1", "0x10",
                     "99999999999999999999999", "%E2%80%AE", "\u202e".encode().decode("latin-1"), "open;x", ""]),
    _any_text.map(lambda t: quote(t, safe="")),
    st.binary(max_size=12).map(lambda b: "".join(f"%{c:02x}" for c in b)),
)
_query_keys = st.sampled_from(["limit", "after", "lease", "hub.mode", "hub.verify_token", "hub.challenge", "x", ""])
_query_values = st.one_of(st.sampled_from(["1", "0", "-1", "10001", "3601", "subscribe", "1e3", "%00", "%ff"]),
                          _any_text.map(lambda t: quote(t, safe="")))
_header_names = st.one_of(
    st.sampled_from(["Content-Type", "Authorization", "X-Hub-Signature-256", "X-Forwarded-For", "X-Real-IP",
                     "X-GitHub-Delivery", "Stripe-Signature", "Host", "Accept-Encoding", "Cookie"]),
    st.text("abcdefghijklmnopqrstuvwxyz-_~!#$%&'*+.^`|0123456789", min_size=1, max_size=20),
    st.binary(min_size=1, max_size=8).filter(lambda b: b"\r" not in b and b"\n" not in b and b":" not in b)
    .map(lambda b: b.decode("latin-1")),
)
_header_values = st.one_of(
    st.sampled_from(["application/json", "Bearer open-token", "Bearer admin-secret-token", "Bearer ", "gh-secret",
                     "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "1.2.3.4, ::1",
                     "text/plain"]),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b).map(lambda b: b.decode("latin-1")),
)
_bodies = st.one_of(
    st.just(b""), st.binary(max_size=300),
    st.sampled_from([b"{}", b"[]", b"null", b'{"ids": [1, 2]}', b'{"ids": "x"}', b'{"payload": {"a": 1}}',
                     b'{"payload": 1, "secret": 5}', b"NaN", b'"\\ud800"', b"\xff\xfe{}", b"{" * 2000,
                     b"[" * 100_000, b'{"a":' * 50 + b"1" + b"}" * 50, b"--x\r\nContent-Disposition: y\r\n\r\n"]),
)
_framing = {"content-length", "transfer-encoding", "expect", "connection"}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "PATCH", "TRACE", "G\x00T", "FOO"]),
    segments=st.lists(_segment, min_size=0, max_size=4),
    prefix=st.sampled_from(["/api/webhook/", "/api/", "/", "//api/webhook/", "/api/webhook/open/../", ""]),
    query=st.lists(st.tuples(_query_keys, _query_values), max_size=4),
    headers=st.lists(st.tuples(_header_names, _header_values), max_size=8),
    body=_bodies,
)
def test_malformed_requests_get_no_5xx_and_json_errors(hostile_daemon, method, segments, prefix, query, headers, body):
    path = prefix + "/".join(segments)
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query)
    lines = [f"{method} {path or '/'} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers if name.lower() not in _framing]
    lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    assert_contract_answer(raw, exchange(hostile_daemon.port, raw, method), method)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(5000)) + b"\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999"
        b"\r\n\r\n{}",
        b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /api/webhook/open HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n",
    ],
    ids=["huge-header", "header-count", "huge-line", "huge-length", "negative-length", "bad-chunk", "nul", "tls"],
)
def test_oversized_and_broken_requests(hostile_daemon, raw):
    assert_contract_answer(raw, exchange(hostile_daemon.port, raw, "GET"), "GET")
    assert request(hostile_daemon.port, "GET", "/api/health")[0] == 200
