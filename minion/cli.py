"""Command line of safcm-minion."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safcm-minion",
        description="The safcm minion: applies the master's jobs to this host.",
    )
    parser.add_argument(
        "-c",
        "--config",
        default="/etc/safcm/minion.yaml",
        help="minion configuration file (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("daemon", help="run the minion daemon")
    sub.add_parser("fingerprint", help="print this minion's key fingerprint")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    print(f"safcm-minion: '{args.command}' is not available yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
