"""The ``kwp`` command: ``kwp check-config FILE``."""

from __future__ import annotations

import argparse
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kwp", description="kwp webhooks proxy tools")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate a config file and report every error")
    check.add_argument("file", nargs="?", default="config.yml")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    return 2


if __name__ == "__main__":
    sys.exit(main())
