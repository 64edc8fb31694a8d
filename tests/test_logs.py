"""The direct writer of request lines against Twisted's text observer."""

from __future__ import annotations

import io
import json

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from kwp.config import parse_config
from kwp.notify import Notifier
from kwp.logs import TextAccessLog, make_access_log, make_log_observer
from kwp.web import KwpApp, KwpSite


def test_request_lines_are_written_as_the_text_observer_prints_them():
    line = "POST /api/webhook/a 200 25B 1.5ms channel=a"
    through_logger, direct = io.StringIO(), io.StringIO()
    write = TextAccessLog(direct, Clock())
    for when in (1_700_000_000.7, 1_700_000_000.9, 1_700_000_001.2):
        event = {
            "log_namespace": "kwp.web",
            "log_level": LogLevel.info,
            "log_format": "{line}",
            "line": line,
            "log_time": when,
        }
        make_log_observer("text", "info", through_logger)(event)
        write(when, line)
    assert direct.getvalue() == through_logger.getvalue()
    assert len(set(direct.getvalue().splitlines())) == 2


def test_request_lines_take_the_direct_path_only_for_text_at_info():
    assert isinstance(make_access_log("text", "info", io.StringIO(), Clock()), TextAccessLog)
    assert isinstance(make_access_log("text", "debug", io.StringIO(), Clock()), TextAccessLog)
    assert make_access_log("text", "warn", io.StringIO(), Clock()) is None
    assert make_access_log("json", "info", io.StringIO(), Clock()) is None


class _Flushes(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushes = 0

    def flush(self):
        self.flushes += 1


def test_request_lines_are_flushed_once_per_reactor_turn():
    clock, stream = Clock(), _Flushes()
    write = TextAccessLog(stream, clock)
    for n in range(3):
        write(1_700_000_000.0, f"line {n}")
    assert stream.getvalue().count("\n") == 3 and stream.flushes == 0
    clock.advance(0)
    assert stream.flushes == 1
    write(1_700_000_000.0, "line 3")
    clock.advance(0)
    assert stream.flushes == 2
    clock.advance(0)
    assert stream.flushes == 2


class _Answered:
    """What KwpSite.log reads of a request that was answered."""

    method = b"POST"
    path = b"/api/webhook/a"
    code = 200
    sentLength = 25
    kwp_channel = "a"
    kwp_started = 1_700_000_000.0

    def getHeader(self, name):
        return b"2"


def test_the_site_writes_the_same_line_directly_and_through_the_logger():
    clock = Clock()
    clock.advance(1_700_000_000.0015)
    app = KwpApp(parse_config({"channels": [{"name": "a", "token": "t"}]}), None, Notifier(), clock)
    direct, through_logger = io.StringIO(), io.StringIO()
    KwpSite(app, clock, access_log=TextAccessLog(direct, clock)).log(_Answered())
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        KwpSite(app, clock).log(_Answered())
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("log_namespace") == "kwp.web"]
    # The logger stamps events with the wall clock, the direct path with the site's.
    event["log_time"] = clock.seconds()
    make_log_observer("text", "info", through_logger)(event)
    assert direct.getvalue() == through_logger.getvalue()
    assert direct.getvalue().endswith(" [kwp.web#info] POST /api/webhook/a 200 25B 1.5ms channel=a\n")


class _Forging(_Answered):
    """A request whose URL carried control characters: the channel name is
    percent-decoded, the path is the raw bytes of the request line."""

    method = b"P\x1bOST"
    path = b"/api/webhook/x%0A\x1b[2J\r"
    kwp_channel = "x\n2026-01-01T00:00:00+0000 [kwp.web#info] forged\r\u202e"


def test_what_a_request_brings_is_escaped_in_its_line_on_both_paths():
    clock = Clock()
    clock.advance(1_700_000_000.0)
    app = KwpApp(parse_config({"channels": [{"name": "a", "token": "t"}]}), None, Notifier(), clock)
    direct = io.StringIO()
    KwpSite(app, clock, access_log=TextAccessLog(direct, clock)).log(_Forging())
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        KwpSite(app, clock).log(_Forging())
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("log_namespace") == "kwp.web"]
    text, records = io.StringIO(), io.StringIO()
    make_log_observer("text", "info", text)(event)
    make_log_observer("json", "info", records)(event)
    for output in (direct.getvalue(), text.getvalue()):
        assert output.count("\n") == 1 and output.endswith("\n")
        assert output[:-1].isprintable(), output
        assert "channel=x\\n2026-01-01T00:00:00+0000 [kwp.web#info] forged\\r\\u202e" in output
        assert "P\\x1bOST /api/webhook/x%0A\\x1b[2J\\r 200" in output
    [record] = [json.loads(line) for line in records.getvalue().splitlines()]
    assert record["channel"] == "x\\n2026-01-01T00:00:00+0000 [kwp.web#info] forged\\r\\u202e"
    assert record["path"] == "/api/webhook/x%0A\\x1b[2J\\r"


def test_the_text_log_escapes_what_is_not_printable_in_any_event():
    # A field of any event (a failure's message, a forward target's answer)
    # may hold a carriage return or a terminal escape; a newline only starts
    # a continuation line (a tab first), never a line of its own.
    out = io.StringIO()
    make_log_observer("text", "info", out)({
        "log_namespace": "kwp.x", "log_level": LogLevel.warn, "log_time": 1_700_000_000.0,
        "log_format": "got {answer}", "answer": "a\rb\x1b[31mc\x00d\ne",
    })
    first, second, end = out.getvalue().split("\n")
    assert first.endswith(" [kwp.x#warn] got a\\rb\\x1b[31mc\\x00d") and second == "\te" and end == ""


def test_json_records_are_flat_and_rendered():
    out = io.StringIO()
    observer = make_log_observer("json", "debug", out)
    observer({"log_namespace": "kwp.web", "log_level": LogLevel.info, "log_time": 1_700_000_000.25,
              "log_format": "{method} {path}", "method": "GET", "path": "/a", "status": 200, "size": 2,
              "duration_ms": 1.5, "channel": "a", "log_logger": object(), "log_source": object(),
              "nested": {"x": 1}})
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    observer({"log_namespace": "kwp.storage", "log_level": LogLevel.critical, "log_time": 1_700_000_001.0,
              "log_format": "cannot store: {reason}", "reason": "disk\nfull", "log_failure": failure})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    request, failed = map(json.loads, lines)
    assert request == {"time": "2023-11-14T22:13:20.250Z", "level": "info", "namespace": "kwp.web",
                       "message": "GET /a", "method": "GET", "path": "/a", "status": 200, "size": 2,
                       "duration_ms": 1.5, "channel": "a"}
    assert (failed["level"], failed["message"], failed["reason"]) == ("critical", "cannot store: disk\nfull", "disk\nfull")
    assert failed["traceback"].startswith("Traceback") and "ZeroDivisionError" in failed["traceback"]
    assert set(failed) == {"time", "level", "namespace", "message", "reason", "traceback"}
