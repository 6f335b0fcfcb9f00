"""Command line of safcm-master."""

from __future__ import annotations

import argparse
import os
import sys

# DESIGN.md section 7: master.yaml's config_dir default.
DEFAULT_REPO_DIR = "/etc/safcm/config"


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
    show = sub.add_parser(
        "show",
        help="print a host's compiled file list, without contacting the host",
        description="Compile the configuration repository for HOST and print its files.",
    )
    show.add_argument("host", metavar="HOST", help="minion id from hosts.yaml")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.add_argument(
        "--repo",
        metavar="DIR",
        default=DEFAULT_REPO_DIR,
        help="configuration repository (default: %(default)s)",
    )
    sub.add_parser("demo", help="run a master and three sandboxed minions on 127.0.0.1")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "show":
        # Imported here: the compiler pulls in Jinja2, which other commands do not need.
        from master.show import show_host

        try:
            return show_host(args.repo, args.host, as_json=args.json, out=sys.stdout)
        except BrokenPipeError:
            # The reader (head, a closed pager) went away. Point stdout at
            # /dev/null so that the interpreter's final flush stays quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    print(f"safcm-master: '{args.command}' is not available yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
