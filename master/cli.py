"""Command line of safcm-master."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safcm-master",
        description="The safcm master: compiles the configuration and runs jobs on minions.",
    )
    parser.add_argument(
        "-c",
        "--config",
        default="/etc/safcm/master.yaml",
        help="master configuration file (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("daemon", help="run the master daemon")
    sub.add_parser("keys", help="list, accept, reject or delete minion keys")
    sub.add_parser("run", help="run a module (files, ping) on the targeted minions")
    sub.add_parser("jobs", help="list and show the job history")
    sub.add_parser("show", help="print a host's compiled file list")
    sub.add_parser("demo", help="run a master and three sandboxed minions on 127.0.0.1")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    print(f"safcm-master: '{args.command}' is not available yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
