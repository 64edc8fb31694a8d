"""The ``kwp`` command: ``kwp check-config FILE``, ``kwp relay ...``, ``kwp copy ...``."""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

from kwp.config import ConfigError, load_config, unsafe_settings


def check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        print(f"{path}: {len(e.errors)} error(s)", file=sys.stderr)
        return 1
    consumers = [c for channel in config.channels for c in channel.consumers]
    forwarding = sum(1 for c in consumers if c.forward is not None)
    print(f"{path}: OK, {len(config.channels)} channels, {len(consumers)} consumers ({forwarding} forwarding)")
    for warning in unsafe_settings(config):
        print(f"warning: {warning}", file=sys.stderr)
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


def _source_url(text: str) -> str:
    url = _http_url(text)
    segments = urlsplit(url).path.rstrip("/").split("/")
    if len(segments) < 4 or segments[-3:-1] != ["api", "webhook"] or not segments[-1]:
        raise argparse.ArgumentTypeError(f"must be a channel's pull URL, .../api/webhook/NAME, got {text!r}")
    return url


def _add_relay(commands) -> None:
    relay = commands.add_parser(
        "relay",
        help="pull a channel in lease mode and POST each webhook to a local target",
        description="Long-polls a channel of a kwp proxy in lease mode and POSTs each webhook, in order, "
        "to a target; acks after a 2xx, retries with backoff otherwise. Outbound connections only. "
        "The token comes from --token, --token-file or KWP_RELAY_TOKEN.",
    )
    relay.add_argument("--from", dest="source", required=True, type=_source_url,
                       help="the channel's pull URL, e.g. https://proxy.example/api/webhook/github")
    token = relay.add_mutually_exclusive_group()
    token.add_argument("--token", help="the channel's api-read-token (visible in ps: prefer the two others)")
    token.add_argument("--token-file", metavar="PATH", help="a file holding the token")
    relay.add_argument("--to", dest="target", required=True, type=_http_url, help="the URL to POST each webhook to")
    relay.add_argument("--allow-insecure", action="store_true",
                       help="allow an http:// --from on another machine (the token and webhooks go unencrypted)")
    relay.add_argument("--lease", type=_bounded(1, 3600), default=60, help="seconds a leased batch stays hidden [60]")
    relay.add_argument("--wait", type=_bounded(0, 60), default=30, help="long-poll seconds [30]")
    relay.add_argument("--batch", type=_bounded(1, 10000), default=10, help="webhooks leased per poll [10]")
    relay.add_argument("--timeout", type=_bounded(1, 3600), default=30, help="seconds per request to the target [30]")
    relay.add_argument("--max-response-size", type=_bounded(1024, 2**40), metavar="BYTES",
                       help="the largest answer of the proxy read; a larger one is retried [33554432, 32 MiB]")
    relay.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])


def relay_settings(args, environ):
    """The relay's RelaySettings from its options; ValueError says what is wrong."""
    from kwp.relay import RelaySettings, is_loopback

    if urlsplit(args.source).scheme == "http" and not is_loopback(args.source) and not args.allow_insecure:
        raise ValueError(
            f"--from {args.source}: http:// to another machine sends the token and the webhooks unencrypted; "
            "use https://, or --allow-insecure"
        )
    token = args.token
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--token-file {args.token_file}: cannot read it: {getattr(e, 'strerror', None) or e}")
        if not token:
            raise ValueError(f"--token-file {args.token_file}: the file is empty")
    token = token or environ.get("KWP_RELAY_TOKEN")
    if not token:
        raise ValueError("a token is required: --token-file PATH, KWP_RELAY_TOKEN or --token")
    return RelaySettings(
        source=args.source,
        token=token,
        target=args.target,
        lease=args.lease,
        wait=args.wait,
        batch=args.batch,
        timeout=args.timeout,
        **({"max_response": args.max_response_size} if args.max_response_size else {}),
    )


def relay(settings, log_level: str) -> None:
    """Run the relay until SIGINT or SIGTERM; exits the process."""
    from twisted.internet import task
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from kwp.relay import run_relay

    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(log_level))
    # "Starting factory ..." for every new connection says nothing useful.
    levels.setLogLevelForNamespace("twisted.web.client._HTTP11ClientFactory", LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stdout), [levels])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
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


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: list[str] | None = None, environ=os.environ) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "copy":
        return copy_store(args.source, args.target)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "relay":
        try:
            settings = relay_settings(args, environ)
        except ValueError as e:
            parser.error(f"relay: {e}")
        relay(settings, args.log_level)
    return 2


if __name__ == "__main__":
    sys.exit(main())
