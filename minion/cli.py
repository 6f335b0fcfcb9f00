"""Command line of safcm-minion.

Exit codes: 0 success, 1 the daemon stopped on an error, 2 bad usage or a
configuration error (nothing was started).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from safcm.common.cliargs import add_verbosity
from safcm.common.errors import ConfigError, SafcmError
from safcm.common.text import escape
from safcm.common.version import VERSION
from safcm.minion.settings import DEFAULT_CONFIG_PATH

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# Exit codes, as each command's --help gives them.
_EXITS_CONFIG = "  2  bad usage or a configuration error (each problem is printed)"


def _epilog(examples: list[str], exits: str) -> str:
    return "examples:\n" + "".join(f"  {e}\n" for e in examples) + "\nexit codes:\n" + exits


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter  # the epilogs keep their lines
    parser = argparse.ArgumentParser(
        prog="safcm-minion",
        description="The safcm minion: applies the master's jobs to this host.",
        epilog=_epilog(
            [
                "safcm-minion check",
                "safcm-minion fingerprint",
                "safcm-minion -c ./minion.yaml daemon -v",
                "safcm-minion COMMAND --help   # each command's own examples",
            ],
            "  0  success\n  1  the daemon stopped on an error\n"
            "  2  bad usage or a configuration error; nothing was started",
        ),
        formatter_class=raw,
    )
    config_help = f"minion settings (default: {DEFAULT_CONFIG_PATH})"
    parser.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG_PATH, metavar="FILE", help=config_help
    )
    parser.add_argument("--version", action="version", version=f"safcm-minion {VERSION}")
    # -c also after the subcommand, overriding only when given.
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "-c", "--config", default=argparse.SUPPRESS, metavar="FILE", help=config_help
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    daemon = sub.add_parser(
        "daemon",
        parents=[config],
        help="run the minion daemon (logs to stderr)",
        epilog=_epilog(
            [
                "safcm-minion daemon               # as the systemd unit runs it",
                "safcm-minion -c ./minion.yaml daemon -q",
            ],
            "  0  stopped by SIGTERM or SIGINT\n  1  it stopped on an error\n"
            "  2  it did not start: bad settings, an unusable state_dir or root",
        ),
        formatter_class=raw,
    )
    add_verbosity(daemon)
    sub.add_parser(
        "check",
        parents=[config],
        help="validate the settings file and the root directory, print the minion's id, "
        "masters and the modules it accepts, and exit (0 ok, 2 errors)",
        epilog=_epilog(
            ["safcm-minion check", "safcm-minion check -c ./minion.yaml"],
            f"  0  the settings are valid\n{_EXITS_CONFIG}",
        ),
        formatter_class=raw,
    )
    sub.add_parser(
        "fingerprint",
        parents=[config],
        help="print this minion's key fingerprint (creating the keys if needed), "
        "to compare with 'safcm-master keys list'",
        epilog=_epilog(
            ["safcm-minion fingerprint"],
            f"  0  printed\n  1  the keys cannot be read or created\n{_EXITS_CONFIG}",
        ),
        formatter_class=raw,
    )
    completion = sub.add_parser(
        "completion",
        help="print the bash completion script",
        epilog=_epilog(
            [
                "source <(safcm-minion completion bash)            # in ~/.bashrc",
                "safcm-minion completion bash > /etc/bash_completion.d/safcm-minion",
            ],
            "  0  printed",
        ),
        formatter_class=raw,
    )
    completion.add_argument("what", choices=("bash",), help="the shell")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "completion":
        from safcm.common.completion import bash_script

        sys.stdout.write(bash_script(parser, "safcm-minion"))
        return EXIT_OK
    from safcm.minion import settings as minion_settings

    try:
        settings = minion_settings.load(args.config)
        if args.command in ("check", "daemon"):
            minion_settings.check_root(settings, args.config)
        if args.command == "check":
            pin = (
                f"pins master {settings.master_fingerprint}"
                if settings.master_fingerprint
                else "trusts the first master that answers"
            )
            masters = ", ".join(settings.master)
            print(f"{args.config}: ok; minion {settings.id}, master {masters}, {pin}")
            print(f"  accepts modules: {_accepted(settings.modules)}")
            return EXIT_OK
        if args.command == "fingerprint":
            from safcm.common import keyfile
            from safcm.minion.daemon import KEYS_DIR

            os.makedirs(settings.state_dir, mode=0o700, exist_ok=True)
            keys, _ = keyfile.load_or_create(os.path.join(settings.state_dir, KEYS_DIR))
            print(f"minion {settings.id} key fingerprint: {keys.fingerprint()}")
            return EXIT_OK
        from safcm.minion import daemon

        try:
            if args.log_level is not None:
                settings = dataclasses.replace(settings, log_level=args.log_level)
            return daemon.main(settings)
        except (SafcmError, OSError) as e:
            # It stopped before it served: nothing was done.
            reason = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) else str(e)
            print(f"safcm-minion: the daemon did not start: {escape(reason)}", file=sys.stderr)
            return EXIT_USAGE
    except ConfigError as e:
        print("safcm-minion: configuration error:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {escape(str(problem))}", file=sys.stderr)
        return EXIT_USAGE
    except SafcmError as e:
        print(f"safcm-minion: {escape(str(e))}", file=sys.stderr)
        return EXIT_FAILED


def _accepted(accepted: frozenset[str]) -> str:
    """minion.yaml `modules:` as `check` prints it, in the registry's order,
    and what it means for sync (it is refused whole without one of its steps)."""
    from safcm.common.modules import sync_steps
    from safcm.minion.modules import MODULES

    names = [name for name in MODULES if name in accepted]
    missing = [name for name in sync_steps() if name not in accepted]
    sync = f"sync is refused here: it needs {', '.join(missing)}" if missing else "sync runs here"
    return f"{', '.join(names) or 'none'}; {sync}"


if __name__ == "__main__":
    sys.exit(main())
