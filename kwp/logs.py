"""What kwp's log looks like and where it goes: the text and JSON observers,
the direct writer of request lines, the escaping of what a request brings
into a log line, and the file twistd would log to."""

from __future__ import annotations

import json
import signal
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python import logfile

LOG_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
}


def printable(text: str) -> str:
    """text with every character that is not printable (newline, carriage
    return, escape, NUL, bidi overrides, line separators, ...) written as its
    Python escape, so that what a request carries cannot forge or garble a
    log line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _printable_lines(text: str) -> str:
    """printable() for a formatted text record, whose newlines (each followed
    by a tab: Twisted's continuation lines) and tabs stay."""
    if text.replace("\n", "").replace("\t", "").isprintable():
        return text
    return "\n".join("\t".join(printable(part) for part in line.split("\t")) for line in text.split("\n"))


class _TimeStamps:
    """Twisted's formatTime, computed once per second.  The text log shows
    whole seconds, and formatting the time costs as much as the rest of a
    request's log line."""

    def __init__(self):
        self._second: int | None = None
        self._text = ""

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(None)
        second = int(when)
        if second != self._second:
            self._second, self._text = second, formatTime(second)
        return self._text


class TextAccessLog:
    """Writes the line of each request to the text log's stream, exactly as
    the text observer prints an info event of kwp.web.  Going through the
    logger (event, publisher, level filter, format string) costs about 25us
    a request, a tenth of a whole receive; twisted.web's own access log
    bypasses the logger likewise.  The stream is flushed once per reactor
    turn, not once per line: a turn that answers a batch of webhooks writes
    all their lines with one system call.  The line's fields are escaped
    already (KwpSite.log)."""

    def __init__(self, stream, reactor):
        self._stream = stream
        self._reactor = reactor
        self._stamps = _TimeStamps()
        self._flush = None

    def __call__(self, when: float, line: str) -> None:
        self._stream.write(f"{self._stamps(when)} [kwp.web#info] {line}\n")
        if self._flush is None:
            self._flush = self._reactor.callLater(0, self._flushed)

    def _flushed(self) -> None:
        self._flush = None
        self._stream.flush()


# Keys of Twisted's legacy events (twisted.python.log), which are no fields
# of the event's message.
_LEGACY_KEYS = frozenset({"message", "format", "isError", "system", "time", "why", "failure", "printed"})


def _iso_time(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_record(event: dict) -> dict[str, Any]:
    """The flat JSON object of a log event: ``time`` (ISO 8601, UTC,
    milliseconds), ``level``, ``namespace``, the rendered ``message``, the
    event's own fields whose values are strings, numbers, booleans or null
    (a request line's method, path, status, size, duration_ms, channel),
    and for a failure its ``traceback`` as one string."""
    record: dict[str, Any] = {
        "time": _iso_time(event.get("log_time") or 0.0),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace") or "-",
        "message": eventAsText(event, includeTimestamp=False, includeTraceback=False, includeSystem=False),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in record:
            continue
        if value is None or isinstance(value, (str, int, float, bool)):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


class JsonLogObserver:
    """One flat JSON object per line (json_record), for log shippers."""

    def __init__(self, stream):
        self._stream = stream

    def __call__(self, event: dict) -> None:
        self._stream.write(json.dumps(json_record(event)) + "\n")
        self._stream.flush()


def make_access_log(log_format: str, level: str, stream, reactor) -> TextAccessLog | None:
    """The direct writer of request lines for a text log at info or debug
    level; None otherwise (JSON lines stay events of the logger)."""
    if log_format != "text" or level not in ("debug", "info"):
        return None
    return TextAccessLog(stream, reactor)


def make_log_observer(log_format: str, level: str, stream=None):
    stream = stream or sys.stdout
    if log_format == "json":
        observer = JsonLogObserver(stream)
    else:
        # textFileLogObserver(stream), with the time stamps cached and what
        # is not printable escaped.
        stamps = _TimeStamps()
        observer = FileLogObserver(
            stream, lambda event: _printable_lines(formatEventAsClassicLogText(event, formatTime=stamps))
        )
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=LOG_LEVELS[level])])


def log_stream(twistd_options, reactor) -> IO[str]:
    """Where twistd itself would log: standard output in the foreground
    (-n) without --logfile, else --logfile or twistd.log, a file rotated as
    twistd rotates it (every megabyte, and on SIGUSR1).  Standard output
    when not run by twistd (twistd_options None)."""
    if twistd_options is None:
        return sys.stdout
    name = twistd_options.get("logfile")
    foreground = twistd_options.get("nodaemon")
    if name == "-" or (foreground and not name):
        if not foreground:
            raise SystemExit("kwp: a daemon cannot log to standard output; give --logfile a file")
        return sys.stdout
    stream = logfile.LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):
        signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(stream.rotate))
    return stream
