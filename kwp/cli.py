"""The ``kwp`` command: ``kwp check-config FILE``, ``kwp relay ...``, ``kwp copy ...``."""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

from kwp.config import ConfigError, load_config


def check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        print(f"{path}: {len(e.errors)} error(s)", file=sys.stderr)
        return 1
    forwarding = sum(1 for c in config.channels if c.forward is not None)
    print(f"{path}: OK, {len(config.channels)} channels ({forwarding} forwarding)")
    return 0


def _bounded(low: int, high: int):
    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}")
        return int(text)

    return parse


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, got {text!r}")
    return text


def _add_relay(commands) -> None:
    relay = commands.add_parser(
        "relay",
        help="pull a channel in lease mode and POST each webhook to a local target",
        description="Long-polls a channel of a kwp proxy in lease mode and POSTs each webhook, in order, "
        "to a target; acks after a 2xx, retries with backoff otherwise. Outbound connections only.",
    )
    relay.add_argument("--from", dest="source", required=True, type=_http_url,
                       help="the channel's pull URL, e.g. https://proxy.example/api/webhook/github")
    relay.add_argument("--token", default=os.environ.get("KWP_TOKEN"),
                       help="the channel's api-read-token [env KWP_TOKEN]")
    relay.add_argument("--to", dest="target", required=True, type=_http_url, help="the URL to POST each webhook to")
    relay.add_argument("--lease", type=_bounded(1, 3600), default=60, help="seconds a leased batch stays hidden [60]")
    relay.add_argument("--wait", type=_bounded(0, 60), default=30, help="long-poll seconds [30]")
    relay.add_argument("--batch", type=_bounded(1, 10000), default=10, help="webhooks leased per poll [10]")
    relay.add_argument("--timeout", type=_bounded(1, 3600), default=30, help="seconds per request to the target [30]")
    relay.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])


def relay(args) -> None:
    """Run the relay until SIGINT or SIGTERM; exits the process."""
    from twisted.internet import task
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from kwp.relay import RelaySettings, run_relay

    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(args.log_level))
    # "Starting factory ..." for every new connection says nothing useful.
    levels.setLogLevelForNamespace("twisted.web.client._HTTP11ClientFactory", LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stdout), [levels])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    settings = RelaySettings(
        source=args.source,
        token=args.token,
        target=args.target,
        lease=args.lease,
        wait=args.wait,
        batch=args.batch,
        timeout=args.timeout,
    )
    task.react(run_relay, (settings,))


def copy_store(source: str, target: str) -> int:
    """kwp copy: a single node's SQLite store into an empty PostgreSQL database."""
    from kwp.storage import StorageError, is_postgres_url, redacted
    from kwp.storage.postgres import copy_from_sqlite
    from kwp.storage.sqlite import sqlite_path

    if is_postgres_url(source) or not is_postgres_url(target):
        print("kwp copy: --from must be a SQLite database and --to a postgresql:// URL", file=sys.stderr)
        return 2
    try:
        counts = copy_from_sqlite(sqlite_path(source), target)
    except StorageError as e:
        print(f"kwp copy: {e}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{n} {table}" for table, n in counts.items())
    print(f"kwp copy: copied {rows} to {redacted(target)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kwp", description="kwp webhooks proxy tools")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate a config file and report every error")
    check.add_argument("file", nargs="?", default="config.yml")
    _add_relay(commands)
    copy = commands.add_parser(
        "copy",
        help="copy a node's SQLite store into an empty PostgreSQL database",
        description="Copies every queue, lease, dead letter, pause switch, attempt log, the history, the "
        "remembered delivery ids and the id sequence of a SQLite store (stop the node first) into an empty "
        "PostgreSQL database, in one transaction. Refuses a target that holds anything.",
    )
    copy.add_argument("--from", dest="source", required=True, help="sqlite:///path/to/kwp.db or a file path")
    copy.add_argument("--to", dest="target", required=True, help="postgresql://user:password@host:port/database")
    args = parser.parse_args(argv)
    if args.command == "copy":
        return copy_store(args.source, args.target)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "relay":
        if not args.token:
            parser.error("relay: --token (or KWP_TOKEN) is required")
        relay(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
