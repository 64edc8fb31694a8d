"""The direct writer of request lines against Twisted's text observer."""

from __future__ import annotations

import io

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from kwp.config import parse_config
from kwp.notify import Notifier
from kwp.tap import TextAccessLog, make_access_log, make_log_observer
from kwp.web import KwpApp, KwpSite


def test_request_lines_are_written_as_the_text_observer_prints_them():
    line = "POST /api/webhook/a 200 25B 1.5ms channel=a"
    through_logger, direct = io.StringIO(), io.StringIO()
    write = TextAccessLog(direct)
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
    assert isinstance(make_access_log("text", "info", io.StringIO()), TextAccessLog)
    assert isinstance(make_access_log("text", "debug", io.StringIO()), TextAccessLog)
    assert make_access_log("text", "warn", io.StringIO()) is None
    assert make_access_log("json", "info", io.StringIO()) is None


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
    KwpSite(app, clock, access_log=TextAccessLog(direct)).log(_Answered())
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
