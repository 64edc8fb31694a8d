"""The direct writer of request lines against Twisted's text observer."""

from __future__ import annotations

import io

from twisted.logger import LogLevel

from kwp.tap import TextAccessLog, make_access_log, make_log_observer


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
