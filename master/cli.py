"""Command line of safcm-master.

The one place that turns errors into messages and exit codes:

    0  every targeted host succeeded
    1  a host failed, did not respond or was not run (run --batch-fail, or
       named in the target with a key not accepted), or the daemon was lost
       after a run was requested (the job may go on: `jobs show` tells);
       `daemon`: it did not start, its PostgreSQL store cannot be reached
       (systemd starts it again)
    2  nothing was done: bad usage, a configuration error, the daemon is not
       running or refused the request
  141  the output was closed early (`| head -1`): the command stopped quietly,
       as a Unix tool that SIGPIPE ends (a run's job goes on)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from safcm.common.cliargs import add_verbosity
from safcm.common.errors import (
    ConfigError,
    ConfigProblem,
    DaemonError,
    ProtocolError,
    RemoteError,
    SafcmError,
    ScratchFileError,
    StoreError,
    UsageError,
)
from safcm.common.lightwire import ENVELOPE_SLACK, MAX_JOB_TIMEOUT, MAX_TARGET_CHARS
from safcm.common.text import escape
from safcm.common.version import VERSION
from safcm.common.wire import JOB_OUTCOMES, MsgType
from safcm.master import modules, render
from safcm.master.client import ControlClient, raise_for_error
from safcm.master.lightcli import (  # noqa: F401  (parse_when: re-exported, cli.parse_when)
    REQUEST_TIMEOUT,
    check_list_arguments,
    list_filters,
    parse_when,
)
from safcm.master.outcomes import DEFAULT_LIST_LIMIT, PENDING, outcome
from safcm.master.settings import DEFAULT_CONFIG_PATH, DEFAULT_SETTINGS_NAME, MasterSettings
from safcm.master.tables import write_json, write_json_streamed

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

    from safcm.master.resultspool import ResultSpool

# NOTE: safcm-master enters master/lightcli.py, which answers keys list, jobs
# list and --version without this module (argparse alone costs them 10 ms)
# and hands every other command line here, unchanged. The commands that
# should still be light here (--help, completion, the light ones when the
# shortcut declines) import this module too (issue 10; bench/cli.py measures
# it). So what only some commands use is
# imported where it is used: the JSON writer and format, the repository and
# compiler (check, show), the daemon, the demo, the wire's schemas and crypto
# (never: the daemon checks what the CLI sends). tests/system/test_cli.py
# fails if a light command loads cryptography, jinja2, yaml, jsonschema,
# zmq, sqlite3 or the full protocol.

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# The output was closed early (`| head -1`): 128 + SIGPIPE, what a shell
# reports for a tool that the closed pipe ended, so that `set -o pipefail`
# sees the same as for any other tool.
EXIT_PIPE = 141
# Seconds the CLI waits beyond a job's own timeout for the daemon's last word.
RUN_GRACE = 30.0


# Exit codes, as each command's --help gives them (the module docstring has the rule).
_NOTHING_DONE = (
    "  2  nothing was done: bad usage, a configuration error, the daemon is not\n"
    "     running or refused the request"
)
_EXITS_REQUEST = f"exit codes:\n  0  done\n{_NOTHING_DONE}"


# Every command that prints on stdout ends so when its reader goes away.
_EXIT_PIPE = (
    f"\n{EXIT_PIPE}  the output was closed early (| head -1): stopped quietly, as Unix tools do"
)


def _epilog(examples: list[str], exits: str, *, prints: bool = True) -> str:
    """A command's --help epilog: its examples and exit codes (`prints`: it
    writes on stdout, so it can end with EXIT_PIPE)."""
    return (
        "examples:\n"
        + "".join(f"  {e}\n" for e in examples)
        + "\n"
        + exits
        + (_EXIT_PIPE if prints else "")
    )


# Each command: its help line and its epilog (_ARGUMENTS adds its arguments).
_COMMANDS: dict[str, tuple[str, str]] = {
    "daemon": (
        "run the master daemon (logs to stderr)",
        _epilog(
            [
                "safcm-master daemon               # as the systemd unit runs it",
                "safcm-master -c ./master.yaml daemon -v",
            ],
            "exit codes:\n  0  stopped by SIGTERM or SIGINT\n"
            "  1  it did not start: its PostgreSQL store cannot be reached or used\n"
            "     (the unit starts it again)\n"
            "  2  it did not start: bad settings, an unusable state_dir, a port in use",
            prints=False,
        ),
    ),
    "keys": (
        "list, accept, reject or delete minion keys",
        _epilog(
            [
                "safcm-master keys list",
                "safcm-master keys accept web1 'db*'",
                "safcm-master keys accept web1 --fingerprint 'SHA256:...'",
                "safcm-master keys delete web2",
            ],
            _EXITS_REQUEST,
        ),
    ),
    "run": (
        f"run a module ({', '.join(modules.names())}) on the targeted minions",
        _epilog(
            [
                "safcm-master run '*' ping",
                "safcm-master run 'web*' files --dry-run",
                "safcm-master run @db cmd --shell --timeout 5m -- 'df -h / | tail -1'",
                "safcm-master run web1,db1 sync --json | jq '.summary'",
                "safcm-master run '*' files --batch 25% --batch-fail 2",
            ],
            "exit codes:\n  0  every targeted host succeeded\n"
            "  1  a host failed, did not respond or was not run (--batch-fail, or named\n"
            "     in TARGET with a key not accepted), or the daemon was lost after the\n"
            "     job was requested (the job may go on: see jobs show JID)\n" + _NOTHING_DONE,
        ),
    ),
    "jobs": (
        "list and show the job history",
        _epilog(
            [
                "safcm-master jobs list --since 2h --status failed",
                "safcm-master jobs show last",
                "safcm-master jobs show 20261202T015011.123456Z --host web1",
            ],
            _EXITS_REQUEST,
        ),
    ),
    "show": (
        "print a host's compiled file list, without contacting it",
        _epilog(
            [
                "safcm-master show web1",
                "safcm-master show web1 --json | jq -r '.files[].path'",
                "safcm-master show web1 --repo ./my-repo-checkout",
            ],
            "exit codes:\n  0  printed\n"
            "  2  an unknown host, or errors in the settings or the repository",
        ),
    ),
    "check": (
        "validate the settings and the repository and compile the hosts; touch nothing",
        _epilog(
            [
                "safcm-master check",
                "safcm-master check web1 db1",
                "safcm-master check --json | jq -r '.problems[].message'",
            ],
            "exit codes:\n  0  no problems\n  2  problems, each printed with its file and line",
        ),
    ),
    "facts": (
        "print what each minion reports about its host (OS, kernel, CPUs, memory)",
        _epilog(
            [
                "safcm-master facts",
                "safcm-master facts web1 'db*'",
                'safcm-master facts --json | jq -r \'.hosts[] | select(.facts.os_id == "debian")'
                " | .host'",
            ],
            "exit codes:\n  0  printed (a host that reported no facts yet says so)\n"
            "  2  a host the master does not know (no key, no facts), bad usage, errors\n"
            "     in the settings, or the master's database cannot be read (it is root's)",
        ),
    ),
    "demo": (
        "run a master and three sandboxed minions on 127.0.0.1",
        _epilog(
            ["safcm-master demo", "safcm-master demo --keep   # look at the logs afterwards"],
            "exit codes:\n  0  the demo ran through\n"
            "  2  it could not run (not root, the example repository is missing) or a\n"
            "     step failed",
        ),
    ),
    "completion": (
        "print the bash completion script (or minion ids, job ids for it)",
        _epilog(
            [
                "source <(safcm-master completion bash)            # in ~/.bashrc",
                "safcm-master completion bash > /etc/bash_completion.d/safcm-master",
            ],
            "exit codes:\n  0  printed (hosts and jids print nothing if the daemon cannot be\n"
            "     reached)",
        ),
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. With `command` (the subcommand the arguments
    name, see _command_named; "" for none), only that subcommand gets its
    arguments and the others their name and help line: all that parsing
    needs, and a few milliseconds less for every command."""
    parser = _Parser(
        prog="safcm-master",
        description="The safcm master: compiles the configuration and runs jobs on minions.",
        epilog=_epilog(
            [
                "safcm-master check",
                "safcm-master keys list",
                "safcm-master run 'web*' files --dry-run",
                "safcm-master jobs show last",
                "safcm-master COMMAND --help   # each command's own examples",
            ],
            "exit codes:\n  0  success: every targeted host succeeded\n"
            "  1  a host failed, did not respond or was not run, or the daemon was lost\n"
            "     during a run; daemon: its PostgreSQL store cannot be reached\n" + _NOTHING_DONE,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_help = f"master settings (default: {DEFAULT_CONFIG_PATH})"
    parser.add_argument("-c", "--config", default=None, metavar="FILE", help=config_help)
    parser.add_argument("--version", action="version", version=f"safcm-master {VERSION}")
    # -c is also accepted after the subcommand: each subparser has it too,
    # with no default of its own, so it overrides only when given.
    config = _Parser(add_help=False)
    config.add_argument(
        "-c", "--config", default=argparse.SUPPRESS, metavar="FILE", help=config_help
    )
    sub = _ConfigSubparsers(parser.add_subparsers(dest="command", metavar="COMMAND"), config)
    for name, (help_line, epilog) in _COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_line,
            description=help_line[0].upper() + help_line[1:] + ".",
            epilog=epilog,
        )
        if command is None or command == name:
            _ARGUMENTS[name](p, config)
    return parser


def _command_named(argv: list[str]) -> str | None:
    """The subcommand `argv` names, as argparse will find it: the first word
    that is neither an option nor the value of -c/--config (or an
    abbreviation of it). "" if it names none (--version, --help, a word that
    is not a command: argparse needs no command's arguments for those), None
    if in doubt (then every command gets its arguments)."""
    words = iter(argv)
    for word in words:
        if word == "-c" or (len(word) > 2 and "--config".startswith(word)):
            next(words, None)
        elif word == "--":
            return None  # rare enough: build every command
        elif not word.startswith("-"):
            return word if word in _COMMANDS else ""
    return ""


def _daemon_arguments(p: argparse.ArgumentParser, config: argparse.ArgumentParser) -> None:
    add_verbosity(p)


def _keys_arguments(keys: argparse.ArgumentParser, config: argparse.ArgumentParser) -> None:
    keys_sub = _ConfigSubparsers(
        keys.add_subparsers(dest="action", metavar="ACTION", required=True), config
    )
    kl = keys_sub.add_parser(
        "list",
        help="every key with its state, fingerprint and presence",
        epilog=_epilog(
            ["safcm-master keys list", "safcm-master keys list --json | jq -r '.keys[].host'"],
            _EXITS_REQUEST,
        ),
    )
    kl.add_argument("--json", action="store_true", help="print one JSON document")
    for action, what in (("accept", "accept"), ("reject", "reject"), ("delete", "forget")):
        done = f"{action}ed already" if action != "delete" else ""
        p = keys_sub.add_parser(
            action,
            help=f"{what} the keys of these minions",
            epilog=_epilog(
                [f"safcm-master keys {action} web1", f"safcm-master keys {action} 'web*' db1"],
                "exit codes:\n  0  done"
                + (f", also when the keys matched were {done} ('nothing changed')" if done else "")
                + "\n  2  nothing was done: a pattern matches no key, or only keys a pattern"
                " leaves\n     as they are (named, a key changes from any state); bad usage,"
                " the daemon\n     is not running or refused the request",
            ),
        )
        p.add_argument(
            "ids",
            nargs="+",
            metavar="ID",
            help="minion id or glob ('web*'); a glob "
            + ("deletes pending and rejected" if action == "delete" else f"{action}s pending")
            + " keys only, a key named changes from any state",
        )
        if action == "accept":
            p.add_argument(
                "--fingerprint",
                metavar="FP",
                help="accept the key with this fingerprint (needed when several keys "
                "claimed the id; compare with 'safcm-minion fingerprint' on the host)",
            )
    keys_sub.add_parser(
        "fingerprint",
        help="print the master's key fingerprint",
        epilog=_epilog(
            ["safcm-master keys fingerprint   # for master_fingerprint in minion.yaml"],
            "exit codes:\n  0  printed\n"
            "  1  the daemon is not running and the key file cannot be read (not root?)\n"
            "  2  bad usage or a configuration error",
        ),
    )


def _run_arguments(run: argparse.ArgumentParser, config: argparse.ArgumentParser) -> None:
    run.add_argument(
        "target", metavar="TARGET", help="glob ('web*'), comma list ('web1,db1') or group ('@web')"
    )
    run.add_argument(
        "module",
        metavar="MODULE",
        choices=modules.names(),
        # argparse formats help with %: a module's line is taken as written
        help="; ".join(
            f"{name}: {line}".replace("%", "%%") for name, line in modules.summaries().items()
        ),
    )
    run.add_argument(
        "argv",
        nargs="*",
        metavar="-- COMMAND [ARG...]",
        help="cmd only: the command and its arguments, after '--' when they have options; "
        "run without a shell, as root, in /, with stdin from /dev/null and only PATH, "
        "LANG=C.UTF-8 and HOME set (minion.yaml root: does not apply)",
    )
    run.add_argument(
        "--shell",
        action="store_true",
        help="cmd only: run the arguments, joined by spaces, with /bin/sh -c",
    )
    run.add_argument("-G", "--group", action="store_true", help="TARGET is a group name")
    run.add_argument(
        "--dry-run", action="store_true", help="report what would change, change nothing"
    )
    run.add_argument(
        "--timeout",
        type=_job_timeout,
        metavar="DURATION",
        help="how long to wait for results: 90, 90s, 5m, 1h, up to "
        f"{MAX_JOB_TIMEOUT} s (a day less {ENVELOPE_SLACK} s; default: job_timeout); "
        "cmd: the command is killed (its whole process group) at it, and reported as timed out",
    )
    run.add_argument(
        "--batch",
        metavar="N|N%",
        help="rolling batches of N hosts, or N%% of them: each batch is a job that starts "
        "when every host of the one before has answered",
    )
    run.add_argument(
        "--batch-fail",
        metavar="K",
        help="with --batch: start no further batch once K hosts failed or did not respond",
    )
    run.add_argument("--json", action="store_true", help="print one JSON document at the end")


def _jobs_arguments(jobs: argparse.ArgumentParser, config: argparse.ArgumentParser) -> None:
    jobs_sub = _ConfigSubparsers(
        jobs.add_subparsers(dest="action", metavar="ACTION", required=True), config
    )
    jl = jobs_sub.add_parser(
        "list",
        help="recent jobs, newest first",
        epilog=_epilog(
            [
                "safcm-master jobs list",
                "safcm-master jobs list --since 2h --status failed",
                "safcm-master jobs list --host web1 --module files --limit 50",
                "safcm-master jobs list --since 2026-12-01 --until 2026-12-02T12:00 --json",
            ],
            _EXITS_REQUEST,
        ),
    )
    jl.add_argument("--host", help="only jobs that went to this host")
    jl.add_argument("--target", help="only jobs run with exactly this target")
    jl.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIST_LIMIT,
        help="at most this many jobs (default: %(default)s)",
    )
    when = (
        "a time (2026-12-02T01:00, 2026-12-02, or 01:00 today; local unless it ends"
        " in Z or an offset) or a duration back from now (30m, 2h, 7d)"
    )
    jl.add_argument("--since", metavar="WHEN", help=f"only jobs submitted at or after {when}")
    jl.add_argument("--until", metavar="WHEN", help="only jobs submitted at or before WHEN")
    jl.add_argument("--module", choices=modules.names(), help="only jobs of this module")
    jl.add_argument(
        "--status",
        choices=JOB_OUTCOMES,
        metavar="STATUS",
        help="only jobs with at least one host in this state: " + ", ".join(JOB_OUTCOMES),
    )
    jl.add_argument("--user", help="only jobs submitted by this user")
    jl.add_argument("--json", action="store_true", help="print one JSON document")
    js = jobs_sub.add_parser(
        "show",
        help="one job with every host's result and diffs",
        epilog=_epilog(
            [
                "safcm-master jobs show last",
                "safcm-master jobs show 20261202T015011.123456Z --host web1",
                "safcm-master jobs show last --json | jq '.hosts[].status'",
            ],
            _EXITS_REQUEST,
        ),
    )
    js.add_argument("jid", metavar="JID", help="a job id, or 'last' for the newest job")
    js.add_argument("--host", help="only this host's result")
    js.add_argument("--json", action="store_true", help="print one JSON document")


def _show_arguments(show: argparse.ArgumentParser, config: argparse.ArgumentParser) -> None:
    show.add_argument("host", metavar="HOST", help="minion id from hosts.yaml")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.add_argument(
        "--repo",
        metavar="DIR",
        help="configuration repository (default: config_dir of the settings)",
    )


def _check_arguments(check: argparse.ArgumentParser, config: argparse.ArgumentParser) -> None:
    check.add_argument("hosts", nargs="*", metavar="HOST", help="only these hosts (default: all)")
    check.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _facts_arguments(facts: argparse.ArgumentParser, config: argparse.ArgumentParser) -> None:
    facts.add_argument(
        "hosts", nargs="*", metavar="HOST", help="minion ids or globs ('web*'; default: all)"
    )
    facts.add_argument("--json", action="store_true", help="print one JSON document")


def _demo_arguments(demo: argparse.ArgumentParser, config: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--keep", action="store_true", help="leave the demo directory in place at the end"
    )


def _completion_arguments(p: argparse.ArgumentParser, config: argparse.ArgumentParser) -> None:
    p.add_argument(
        "what",
        choices=("bash", "hosts", "jids"),
        help="bash: the script; hosts: the minion ids the daemon knows; jids: recent job ids"
        " (the script asks for these two, quietly)",
    )


_ARGUMENTS = {
    "daemon": _daemon_arguments,
    "keys": _keys_arguments,
    "run": _run_arguments,
    "jobs": _jobs_arguments,
    "show": _show_arguments,
    "check": _check_arguments,
    "facts": _facts_arguments,
    "demo": _demo_arguments,
    "completion": _completion_arguments,
}


class _ArgumentError(Exception):
    """Bad usage found by argparse, raised instead of exiting so that main()
    can report it as every other error (also as JSON under --json)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(self, message)

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        # argparse drops a write that fails: a reader gone away (--help | head)
        # must end the command as it ends any other (main(): EXIT_PIPE).
        if message:
            (file or sys.stderr).write(message)


def _with_verbosity(settings: MasterSettings, args: argparse.Namespace) -> MasterSettings:
    level = getattr(args, "log_level", None)
    return settings if level is None else settings._replace(log_level=level)


class _ConfigSubparsers:
    """Adds subcommands that also take -c (see build_parser)."""

    def __init__(self, action: Any, config: argparse.ArgumentParser) -> None:
        self.action = action
        self.config = config

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        # Raw: the epilog's examples and exit codes keep their lines.
        return self.action.add_parser(
            name,
            parents=[self.config],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )


def _job_timeout(text: str) -> float:
    """--timeout: a duration as in the settings files (30, 30s, 5m, 1h), within
    the bounds of job_timeout (common/settings.py job_timeout())."""
    from safcm.common import settings as common_settings

    try:
        return common_settings.job_timeout(text)
    except common_settings.BadValue as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_named(argv)
    parser = build_parser(command)
    # `run TARGET cmd [OPTIONS] -- COMMAND [ARG...]`: what follows the first
    # "--" is the command, whatever it looks like; argparse would give it to
    # the first positional that still takes arguments, or refuse it.
    after: list[str] | None = None
    if command == "run" and "--" in argv:
        cut = argv.index("--")
        argv, after = argv[:cut], argv[cut + 1 :]
    # Under --json every failure is also a JSON document on stdout, with the
    # same exit code; the message still goes to stderr for the person watching.
    as_json = "--json" in argv
    try:
        args = parser.parse_args(argv)
        if after is not None:
            if args.argv:
                parser.error("give the command after '--' only: run TARGET cmd -- COMMAND")
            args.argv = after
    except _ArgumentError as e:
        if as_json:
            write_json(_error_document("usage", str(e)), sys.stdout)
        e.parser.print_usage(sys.stderr)
        _error(escape(str(e)))
        return EXIT_USAGE
    except SystemExit as e:  # --help or --version printed
        code = EXIT_OK if e.code is None else int(e.code)
        return guarded(lambda: code, as_json)  # which writes it out now
    except BrokenPipeError:
        return output_closed()
    if args.command is None:

        def usage() -> int:
            parser.print_help()
            return EXIT_USAGE

        return guarded(usage, as_json)
    return guarded(lambda: _dispatch(args), getattr(args, "json", False))


def guarded(command: Callable[[], int], as_json: bool) -> int:
    """Run `command` and turn its errors into messages and exit codes: the
    one place that does (master/lightcli.py hands its errors here too)."""
    try:
        code = command()
        # What is still buffered is written now, so that a reader gone
        # away is found here and not at exit (a traceback, exit 120).
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return output_closed()
    except ConfigError as e:
        problems = [_problem(p) for p in e.problems]
        _fail(as_json, "config", "configuration error", problems)
        return EXIT_USAGE
    except RemoteError as e:
        # The daemon checks each request against the wire's schema (this side
        # does not load it): a request it refuses as invalid ("protocol") was
        # made of what the user typed.
        kind = "usage" if e.code == "protocol" else e.code
        _fail(as_json, kind, str(e), e.problems)
        return EXIT_USAGE
    except ProtocolError as e:  # a request too large to frame, a reply it cannot read
        _fail(as_json, "usage", f"invalid request: {e}")
        return EXIT_USAGE
    except UsageError as e:
        _fail(as_json, "usage", str(e))
        return EXIT_USAGE
    except DaemonError as e:
        _fail(as_json, "daemon", str(e))
        return EXIT_USAGE
    except SafcmError as e:
        _fail(as_json, "failed", str(e))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def output_closed() -> int:
    """The reader of stdout (head, a closed pager) went away: stop quietly,
    as a Unix tool that SIGPIPE ends, with nothing more written (the
    interpreter's last flush goes to /dev/null). The daemon's work goes on
    (a run's job too: jobs show has it)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_PIPE


def _problem(problem: ConfigProblem) -> dict[str, Any]:
    return {"file": problem.file, "line": problem.line, "message": problem.message}


def _fail(
    as_json: bool, kind: str, message: str, problems: list[dict[str, Any]] | None = None
) -> None:
    """Report an error: a line (and its problems) on stderr, and under --json
    the error document on stdout."""
    problems = problems or []
    if as_json:
        write_json(_error_document(kind, message, problems), sys.stdout)
    _error(escape(message) + (":" if problems else ""))
    for p in problems:
        where = p["file"] if p["line"] is None else f"{p['file']}:{p['line']}"
        print(f"  {escape(where)}: {escape(p['message'])}", file=sys.stderr)


def _error_document(kind: str, message: str, problems: Any = (), **extra: Any) -> Any:
    from safcm.master import jsonout

    return jsonout.error_document(kind, message, problems, **extra)


def _error(message: str) -> None:
    print(f"safcm-master: {message}", file=sys.stderr)


def _settings_path(path: str | None) -> str | None:
    """The settings file: from -c, or the default file; None (the defaults)
    if that does not exist."""
    if path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        return DEFAULT_CONFIG_PATH
    return path


def _settings(path: str | None) -> MasterSettings:
    """The settings from -c, or from the default file; defaults if that does not exist."""
    from safcm.master import settings

    path = _settings_path(path)
    return MasterSettings() if path is None else settings.load(path)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "completion" and args.what == "bash":
        from safcm.common.completion import bash_script

        sys.stdout.write(bash_script(build_parser(), "safcm-master"))
        return EXIT_OK
    if args.command == "demo":
        from safcm.master import demo

        return demo.main(keep=args.keep)
    if args.command == "check":
        from safcm.master.check import check

        path = _settings_path(args.config)
        return check(path, args.hosts, sys.stdout, sys.stderr, as_json=args.json)
    if args.command == "show" and args.repo is not None:
        from safcm.master.show import show_host

        facts = _host_facts(args.config, args.host)
        return show_host(args.repo, args.host, as_json=args.json, out=sys.stdout, facts=facts)
    if args.command == "completion":
        # Quiet, for Tab: bad settings only mean nothing to offer.
        try:
            settings = _settings(args.config)
        except SafcmError:
            return EXIT_OK
        return completion_words(settings, args.what, sys.stdout)
    settings = _settings(args.config)
    if args.command == "daemon":
        from safcm.master import daemon
        from safcm.master.settings import check_startup

        # As `check` does: a ConfigError naming each setting, nothing started.
        check_startup(settings, _settings_path(args.config) or DEFAULT_SETTINGS_NAME)

        try:
            return daemon.main(_with_verbosity(settings, args))
        except (SafcmError, OSError) as e:
            # Anything that escapes the daemon stopped it before it served:
            # nothing was done (a port in use, an unusable state_dir).
            reason = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) else str(e)
            _error(f"the daemon did not start: {escape(reason)}")
            if isinstance(e, StoreError) and settings.store != "sqlite":
                # A PostgreSQL store it cannot use is the database's trouble
                # (down, restarting, failing over), not this master's: exit 1,
                # which the unit restarts, so that a master of a cluster comes
                # back with its database. 2 stops the restarts for good.
                return EXIT_FAILED
            return EXIT_USAGE
    if args.command == "show":
        from safcm.master.show import show_host

        facts = _host_facts(args.config, args.host)
        return show_host(
            settings.config_dir, args.host, as_json=args.json, out=sys.stdout, facts=facts
        )
    if args.command == "facts":
        return facts_command(settings, args, sys.stdout)
    if args.command == "run":
        return run_command(settings, args, sys.stdout, sys.stderr)
    if args.command == "keys":
        return keys_command(settings, args, sys.stdout)
    return jobs_command(settings, args, sys.stdout)


# ---- completion ----

# Seconds a completion query waits for the daemon: Tab must not hang.
COMPLETION_TIMEOUT = 2.0
# Most job ids offered for completion, newest first.
COMPLETION_JIDS = 50


def completion_words(settings: MasterSettings, what: str, out: TextIO) -> int:
    """The words the bash completion asks for (common/completion.py), one a
    line: minion ids, or recent job ids and 'last'. Quiet: nothing at all if
    the daemon cannot be reached or refuses, and always exit 0."""
    try:
        with ControlClient(settings.control_path, timeout=COMPLETION_TIMEOUT) as client:
            if what == "hosts":
                keys = {"action": "list", "ids": []}
                body = client.request(MsgType.KEYS, keys, COMPLETION_TIMEOUT).body
                words = sorted({k["id"] for k in body["keys"]})
            else:
                jobs: dict[str, Any] = {
                    "action": "list",
                    "host": None,
                    "target": None,
                    "limit": COMPLETION_JIDS,
                    "jid": None,
                }
                body = client.request(MsgType.JOBS, jobs, COMPLETION_TIMEOUT).body
                words = ["last", *(job["jid"] for job in body["jobs"])]
    except (SafcmError, OSError):
        return EXIT_OK
    out.write("".join(f"{w}\n" for w in words))
    return EXIT_OK


# ---- run ----


def run_command(
    settings: MasterSettings, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    if not args.target.strip():
        raise UsageError(
            "TARGET is empty: give a glob ('web*'), a comma list ('web1,db1') or a group ('@web')"
        )
    if len(args.target) > MAX_TARGET_CHARS:
        raise UsageError(
            f"TARGET is at most {MAX_TARGET_CHARS} characters, this one has {len(args.target)};"
            " name a group (-G) instead of a long list"
        )
    request = {
        "target": args.target,
        "group": args.group,
        "module": args.module,
        "dry_run": args.dry_run,
        "timeout": args.timeout,
    }
    request.update(_batch_request(args))
    request.update(_cmd_request(args))
    style = render.Style(not args.json and render.use_colour(out))
    progress = Progress(err, enabled=not args.json and err.isatty())
    # What RUN_STARTED said, over every batch: the first jid, the hosts sent
    # the job, the hosts skipped, the notes.
    started: dict[str, Any] = {"hosts": [], "skipped": [], "notes": []}
    batches: list[dict[str, Any]] = []  # with --batch: {"jid", "hosts"} in order
    answered: set[str] = set()  # the hosts with a result or "no response"
    tally = render.Tally()
    jid = None  # the job running now (with --batch: the latest batch's)
    batch_of = ""  # with --batch: "batch i of n" of that job
    late_jid = None  # the latest job with a host that did not respond
    kind = "lost"  # of the error document if the run is cut short
    # Under --json, each host's result (None: no response) is kept in a
    # temporary file for the document at the end; text prints it and keeps
    # nothing of it. Made before the request: nothing is done without it.
    spool = _result_spool() if args.json else contextlib.nullcontext()
    with spool as results, ControlClient(settings.control_path) as client:
        client.send(MsgType.RUN, request)
        wait = (args.timeout or settings.job_timeout) + RUN_GRACE
        try:
            for msg in client.replies(wait):
                raise_for_error(msg)
                body = msg.body
                if msg.type is MsgType.RUN_STARTED:
                    jid = body["jid"]
                    started.setdefault("jid", jid)
                    started["hosts"] += body["hosts"]
                    started["skipped"] += body["skipped"]
                    started["notes"] += body.get("notes", [])
                    tally.targeted = len(started["hosts"])
                    if "batch" in body:
                        batches.append({"jid": jid, "hosts": body["hosts"]})
                        batch_of = f"batch {body['batch']['number']} of {body['batch']['of']}"
                    if not args.json:
                        _print_started(out, style, body, args)
                    progress.show(len(answered), tally.targeted)
                elif msg.type is MsgType.RUN_HOST_RESULT:
                    status = outcome(body["result"])
                    tally.add(status)
                    answered.add(body["host"])
                    if body["result"] is None:
                        late_jid = body["jid"]
                    progress.clear()
                    if results is not None:
                        results.add(body["host"], body["result"])
                    else:
                        print(
                            render.render_host(body["host"], status, body["result"], style),
                            file=out,
                            flush=True,
                        )
                    progress.show(len(answered), tally.targeted)
                elif msg.type is MsgType.RUN_PROGRESS:
                    # A host is still working (its triggers outlast the
                    # timeout); its deadline moved, and hearing this keeps us
                    # waiting: each reply restarts the wait.
                    continue
                elif msg.type is MsgType.RUN_DONE:
                    progress.clear()
                    not_run = body.get("not_run", [])
                    tally.targeted += len(not_run)
                    if results is not None:
                        _write_run_document(
                            out, started, request, results, batches if batches else None, not_run
                        )
                    else:
                        print(
                            render.render_summary(tally, style, args.dry_run, args.module), file=out
                        )
                        if not_run:
                            print(_not_run_line(not_run, args, style), file=out)
                        if late_jid is not None:
                            print(render.render_late_hint(late_jid, style), file=out)
                    named = (
                        [] if args.group else _named_but_skipped(args.target, started["skipped"])
                    )
                    if named and results is None:
                        print(
                            style.yellow(f"not run on {', '.join(named)}, named in the target"),
                            file=out,
                        )
                    ok = tally.failed == tally.no_response == len(not_run) == len(named) == 0
                    return EXIT_OK if ok else EXIT_FAILED
        except KeyboardInterrupt:
            progress.clear()
            if jid is not None and batch_of:
                _error(
                    f"interrupted; job {jid} ({batch_of}) goes on, no further batch starts. "
                    f"See: safcm-master jobs show {jid}"
                )
            elif jid is not None:
                _error(f"interrupted; job {jid} goes on. See: safcm-master jobs show {jid}")
            raise
        except RemoteError as e:
            if jid is None:
                raise  # the daemon refused the request: nothing was done
            lost = f"the master daemon failed during the run ({e})"
        except ScratchFileError as e:
            # Not the daemon: this side cannot keep the results for the document.
            kind, lost = "failed", f"the results could not be kept for --json ({e})"
        except BrokenPipeError:
            # Our reader went away (| head), not the daemon (ControlClient
            # takes a broken connection as the end of the replies): guarded()
            # ends the command quietly.
            progress.clear()
            raise
        except (DaemonError, ProtocolError, OSError) as e:
            lost = f"lost the master daemon during the run ({e})"
        else:
            lost = "the master daemon closed the connection before the job finished"
    # Once the request is sent, the job may have started: never "nothing was
    # done" (exit 2), since a daemon that stops answering need not have stopped.
    progress.clear()
    if jid is None:
        message = (
            f"{lost}, before it confirmed the job; it may have started: see safcm-master jobs list"
        )
    else:
        message = f"{lost}; the job goes on: see safcm-master jobs show {jid}"
    if args.json:
        write_json(_error_document(kind, message, jid=jid), out)
    _error(escape(message))
    return EXIT_FAILED


def _result_spool() -> ResultSpool:
    """run --json's ResultSpool (master/resultspool.py); UsageError, nothing
    done, if no temporary file can be made for it."""
    from safcm.master.resultspool import ResultSpool

    try:
        return ResultSpool()
    except ScratchFileError as e:
        raise UsageError(f"--json: {e}; set TMPDIR to a directory you can write") from e


def _write_run_document(
    out: TextIO,
    started: dict[str, Any],
    request: dict[str, Any],
    results: ResultSpool,
    batches: list[dict[str, Any]] | None,
    not_run: list[dict[str, Any]],
) -> None:
    """The `run --json` document (jsonout.run_document()), written a host at
    a time, each result read back from `results`, the ResultSpool, as its
    turn comes."""
    from safcm.master import jsonout

    try:
        write_json_streamed(
            out,
            jsonout.run_fields(started, request, results.statuses(), batches, not_run),
            "hosts",
            jsonout.run_hosts(started, results, not_run),
            dict,  # every field is known before the hosts
        )
    except ScratchFileError:
        # A result could not be read back: the error document goes on a line
        # of its own after what was written.
        out.write("\n")
        raise


def _cmd_request(args: argparse.Namespace) -> dict[str, Any]:
    """The RUN request's options of cmd: COMMAND [ARG...] and --shell."""
    if args.module != "cmd":
        if args.argv or args.shell:
            what = "a command" if args.argv else "--shell"
            raise UsageError(f"{what} is for cmd only, not for {args.module}")
        return {}
    if not args.argv or not args.argv[0]:
        raise UsageError("cmd needs a command: safcm-master run TARGET cmd -- COMMAND [ARG...]")
    return {"options": {"argv": list(args.argv), "shell": args.shell}}


def _batch_request(args: argparse.Namespace) -> dict[str, Any]:
    """The RUN request's batch fields from --batch and --batch-fail, checked
    here so that a mistake is said in the user's words (UsageError)."""
    if args.batch is None:
        if args.batch_fail is not None:
            raise UsageError("--batch-fail needs --batch: it stops a rollout in batches")
        return {}
    from safcm.master.batch import BatchSize, parse_fail_limit  # dataclasses: 7 ms

    size = BatchSize.parse(args.batch)
    fields: dict[str, Any] = {"batch": {"size": size.value, "percent": size.percent}}
    if args.batch_fail is not None:
        fields["batch_fail"] = parse_fail_limit(args.batch_fail)
    return fields


def _not_run_line(
    not_run: list[dict[str, Any]], args: argparse.Namespace, style: render.Style
) -> str:
    """After a rollout stopped by --batch-fail: which hosts were not run."""
    hosts = ", ".join(escape(h["host"]) for h in not_run)
    if args.batch_fail is None:  # the master's own reason
        why = escape(not_run[0]["reason"])
    else:
        limit = int(args.batch_fail)
        why = f"stopped after {limit} failure{'s' if limit != 1 else ''}"
    return style.red(f"{len(not_run)} not run: {why}: {hosts}")


def _print_started(
    out: TextIO, style: render.Style, body: dict[str, Any], args: argparse.Namespace
) -> None:
    hosts = body["hosts"]
    what = f"{args.module}{' (dry run)' if args.dry_run else ''}"
    on = f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}"
    if "batch" in body:
        batch = body["batch"]
        header = f"batch {batch['number']} of {batch['of']}: job {body['jid']} on {on}: {what}"
    else:
        header = f"job {body['jid']}: {what} on {on}"
    print(style.bold(header), file=out)
    for skipped in body["skipped"]:
        print(
            style.yellow(f"skipped {escape(skipped['host'])}: {escape(skipped['reason'])}"),
            file=out,
        )
    for note in body.get("notes", []):
        print(style.yellow(f"{escape(note['host'])}: {escape(note['note'])}"), file=out)
    out.flush()


def _named_but_skipped(target: str, skipped: list[dict[str, Any]]) -> list[str]:
    """The skipped hosts that the target names exactly (not by a pattern or
    a group): a run asked to reach them did not, so it did not succeed."""
    named = {item.strip() for item in target.split(",")}
    return sorted(escape(s["host"]) for s in skipped if s["host"] in named)


class Progress:
    """ "N of M hosts returned" on one line of a terminal, redrawn in place."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.shown = False

    def show(self, done: int, total: int) -> None:
        if self.enabled and done < total:
            self.stream.write(f"\r\x1b[K{done} of {total} hosts returned, waiting ...")
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


# ---- facts ----


def _host_facts(config: str | None, host: str) -> Any:
    """The facts `host` reported (HostFacts), for `show`; None if it reported
    none, or (with a warning) if they cannot be read: then it is in no
    detected group."""
    from safcm.master import facts

    try:
        stored = facts.read_facts(_settings(config).state_dir, _settings(config).store)
    except SafcmError as e:
        _error(f"warning: {escape(str(e))}; groups detected from facts are left out")
        return None
    return facts.host_facts(stored).get(host)


def facts_command(settings: MasterSettings, args: argparse.Namespace, out: TextIO) -> int:
    """`facts [HOST...]`: what the minions reported, read from the master's
    database (so it works whether or not the daemon runs)."""
    import fnmatch

    from safcm.common.ids import minion_id_problem, minion_pattern_problem
    from safcm.master import facts, jsonout

    try:
        stored = facts.read_facts(settings.state_dir, settings.store)
    except SafcmError as e:  # the database cannot be read: nothing was shown
        _fail(args.json, "failed", str(e))
        return EXIT_USAGE
    if not args.hosts:
        hosts = sorted(stored)
    else:
        chosen: set[str] = set()
        for pattern in args.hosts:
            if set(pattern) & set("*?["):
                if problem := minion_pattern_problem(pattern):
                    raise UsageError(problem)
                chosen.update(fnmatch.filter(stored, pattern))
            elif problem := minion_id_problem(pattern):
                raise UsageError(problem)
            else:
                chosen.add(pattern)
        hosts = sorted(chosen)
        # A named host without facts is one that has not reported yet only
        # if the master holds its key; otherwise it is a typo or a host that
        # never enrolled, and "no facts reported yet" would hide that.
        named = {h for h in args.hosts if not set(h) & set("*?[")} - stored.keys()
        if named:
            try:
                unknown = sorted(named - facts.read_key_ids(settings.state_dir, settings.store))
            except SafcmError as e:
                _fail(args.json, "failed", str(e))
                return EXIT_USAGE
            if unknown:
                them = "it" if len(unknown) == 1 else "them"
                raise UsageError(
                    f"unknown host {', '.join(unknown)}: the master holds no key and no facts"
                    f" for {them} (safcm-master keys list shows the minions it knows)"
                )
    if args.json:
        write_json(
            {"format": jsonout.FORMAT, "hosts": facts.to_document(hosts, stored, jsonout.iso_time)},
            out,
        )
    else:
        print(facts.format_table(hosts, stored, render.format_time), file=out)
    return EXIT_OK


# ---- keys ----


def keys_command(settings: MasterSettings, args: argparse.Namespace, out: TextIO) -> int:
    action = args.action
    style = render.Style(not getattr(args, "json", False) and render.use_colour(out))
    if action == "fingerprint":
        print(f"master key fingerprint: {_master_fingerprint(settings)}", file=out)
        return EXIT_OK
    ids = getattr(args, "ids", [])
    if ids:  # checked here, to say in the user's words what the daemon would refuse
        from safcm.common.ids import minion_pattern_problem

        for pattern in ids:
            if problem := minion_pattern_problem(pattern):
                raise UsageError(problem)
    with ControlClient(settings.control_path) as client:
        request = {"action": action, "ids": ids}
        if getattr(args, "fingerprint", None) is not None:
            request["fingerprint"] = args.fingerprint
        reply = client.request(MsgType.KEYS, request, REQUEST_TIMEOUT)
    body = reply.body
    if action == "list":
        if args.json:
            from safcm.master import jsonout

            write_json(jsonout.keys_document(body), out)
        else:
            print(render.render_keys(body, style), file=out)
        return EXIT_OK
    if not body["keys"]:
        print("nothing changed", file=out)
    verb = {"accept": "accepted", "reject": "rejected", "delete": "deleted"}[action]
    for key in body["keys"]:
        print(f"{verb} {escape(key['id'])} ({key['fingerprint']})", file=out)
    for key in body["left"]:
        print(
            f"left {escape(key['id'])} {key['state']}: a pattern does not {action} a key "
            f"{key['state']} already; name it to {action} it",
            file=out,
        )
    return EXIT_OK


def _master_fingerprint(settings: MasterSettings) -> str:
    """From the daemon if it runs; otherwise from the key file (root only)."""
    try:
        with ControlClient(settings.control_path) as client:
            reply = client.request(MsgType.KEYS, {"action": "list", "ids": []}, REQUEST_TIMEOUT)
        return reply.body["master"]
    except RemoteError:
        raise
    except DaemonError:
        from safcm.common import keyfile

        return keyfile.load_keys(os.path.join(settings.state_dir, "keys")).fingerprint()


# ---- jobs ----


def jobs_command(settings: MasterSettings, args: argparse.Namespace, out: TextIO) -> int:
    import time

    style = render.Style(not args.json and render.use_colour(out))
    # common/ids.py is imported as needed: it loads hashlib, which a plain
    # `jobs list` does without.
    if args.host is not None:
        from safcm.common.ids import minion_id_problem

        if problem := minion_id_problem(args.host):
            raise UsageError(f"--host: {problem}")
    show_last = args.action == "show" and args.jid == "last"
    if args.action == "show" and not show_last:
        from safcm.common.ids import jid_problem

        if problem := jid_problem(args.jid):
            raise UsageError(f"{problem} (or 'last' for the newest job)")
    if args.action == "list":
        check_list_arguments(args.limit, args.target, args.user)
        request = {
            "action": "list",
            "host": args.host,
            "target": args.target,
            "limit": args.limit,
            "jid": None,
            **list_filters(args, time.time()),
        }
    # One request per connection: the daemon closes it after its reply.
    if args.action == "list":
        with ControlClient(settings.control_path) as client:
            reply = client.request(MsgType.JOBS, request, REQUEST_TIMEOUT)
        if args.json:
            from safcm.master import jsonout

            write_json(jsonout.jobs_list_document(reply.body), out)
        else:
            print(render.render_jobs_table(reply.body["jobs"], style, args.limit), file=out)
        return EXIT_OK
    jid = args.jid
    if show_last:
        newest = {"action": "list", "host": None, "target": None, "limit": 1, "jid": None}
        with ControlClient(settings.control_path) as client:
            jobs = client.request(MsgType.JOBS, newest, REQUEST_TIMEOUT).body["jobs"]
        if not jobs:
            raise UsageError("no jobs in the history yet")
        jid = jobs[0]["jid"]
    from safcm.master import jsonout

    request = {
        "action": "show",
        "host": args.host,
        "target": None,
        "limit": 1,
        "jid": jid,
        "stream": True,
    }
    with ControlClient(settings.control_path) as client:
        client.send(MsgType.JOBS, request)
        parts = _job_parts(client)
        first = next(parts)
        job, hosts = first["job"], _hosts_of(first, parts)
        if args.json:
            tally: list[str] = []

            def documents() -> Iterator[dict[str, Any]]:
                for host in hosts:
                    document = jsonout.job_show_host(host)
                    tally.append(document["status"])
                    yield document

            try:
                write_json_streamed(
                    out,
                    jsonout.job_show_fields(job),
                    "hosts",
                    documents(),
                    lambda: {"summary": jsonout.counts(tally)},
                )
            except SafcmError:
                # The daemon stopped sending (or failed) midway: the error
                # document goes on a line of its own after what was written.
                out.write("\n")
                raise
            return EXIT_OK
        print(render.render_job_header(job, style), file=out)
        summary = render.Tally(targeted=0)
        for host in hosts:
            summary.targeted += 1
            status = jsonout.host_outcome(host)
            if status != PENDING:
                summary.add(status)
            late_at = host["returned"] if host["late"] else None
            print(
                render.render_host(host["host"], status, host["result"], style, late_at=late_at),
                file=out,
            )
    print(render.render_summary(summary, style, job["dry_run"], job["module"]), file=out)
    return EXIT_OK


def _job_parts(client: ControlClient) -> Iterator[dict[str, Any]]:
    """The JOB_REPLYs of a streamed `jobs show`, up to the last (the one
    without "more"); DaemonError if the daemon stops sending before it."""
    for reply in client.replies(REQUEST_TIMEOUT):
        raise_for_error(reply)
        if reply.type is not MsgType.JOB_REPLY:
            raise ProtocolError(f"the master answered jobs show with {reply.type.name}")
        yield reply.body
        if not reply.body.get("more"):
            return
    raise DaemonError(
        "the master daemon closed the connection before it had sent every host of the job"
    )


def _hosts_of(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The hosts of a streamed `jobs show`, part after part."""
    yield from first["hosts"]
    for part in rest:
        yield from part["hosts"]


if __name__ == "__main__":
    sys.exit(main())
