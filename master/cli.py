"""Command line of safcm-master.

The one place that turns errors into messages and exit codes:

    0  every targeted host succeeded
    1  a host failed or did not respond, or the daemon was lost after a run
       was requested (the job may go on: `jobs show` tells)
    2  nothing was done: bad usage, a configuration error, the daemon is not
       running or refused the request
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Any, NoReturn, TextIO

from safcm.common.cliargs import add_verbosity
from safcm.common.errors import (
    ConfigError,
    ConfigProblem,
    DaemonError,
    ProtocolError,
    RemoteError,
    SafcmError,
    UsageError,
)
from safcm.common.protocol import JOB_OUTCOMES, MsgType, jid_problem, minion_id_problem
from safcm.common.text import escape
from safcm.common.version import VERSION
from safcm.master import jsonout, render
from safcm.master.control import ControlClient, raise_for_error
from safcm.master.jobstore import DEFAULT_LIST_LIMIT, PENDING, outcome
from safcm.master.settings import DEFAULT_CONFIG_PATH, MasterSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Seconds the CLI waits beyond a job's own timeout for the daemon's last word.
RUN_GRACE = 30.0
# Seconds the CLI waits for the answer to keys and jobs requests.
REQUEST_TIMEOUT = 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="safcm-master",
        description="The safcm master: compiles the configuration and runs jobs on minions.",
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

    daemon = sub.add_parser("daemon", help="run the master daemon (logs to stderr)")
    add_verbosity(daemon)

    keys = sub.add_parser("keys", help="list, accept, reject or delete minion keys")
    keys_sub = _ConfigSubparsers(
        keys.add_subparsers(dest="action", metavar="ACTION", required=True), config
    )
    kl = keys_sub.add_parser("list", help="every key with its state, fingerprint and presence")
    kl.add_argument("--json", action="store_true", help="print one JSON document")
    for action, what in (("accept", "accept"), ("reject", "reject"), ("delete", "forget")):
        p = keys_sub.add_parser(action, help=f"{what} the keys of these minions")
        p.add_argument("ids", nargs="+", metavar="ID", help="minion id or glob ('web*')")
        if action == "accept":
            p.add_argument(
                "--fingerprint",
                metavar="FP",
                help="accept the key with this fingerprint (needed when several keys "
                "claimed the id; compare with 'safcm-minion fingerprint' on the host)",
            )
    keys_sub.add_parser("fingerprint", help="print the master's key fingerprint")

    run = sub.add_parser("run", help="run a module (files, ping) on the targeted minions")
    run.add_argument(
        "target", metavar="TARGET", help="glob ('web*'), comma list ('web1,db1') or group ('@web')"
    )
    run.add_argument(
        "module",
        metavar="MODULE",
        choices=("files", "ping"),
        help="files: make the files as configured; ping: check the minions answer",
    )
    run.add_argument("-G", "--group", action="store_true", help="TARGET is a group name")
    run.add_argument(
        "--dry-run", action="store_true", help="report what would change, change nothing"
    )
    run.add_argument(
        "--timeout",
        type=_duration,
        metavar="DURATION",
        help="how long to wait for results: 90, 90s, 5m, 1h (default: job_timeout)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON document at the end")

    jobs = sub.add_parser("jobs", help="list and show the job history")
    jobs_sub = _ConfigSubparsers(
        jobs.add_subparsers(dest="action", metavar="ACTION", required=True), config
    )
    jl = jobs_sub.add_parser("list", help="recent jobs, newest first")
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
    jl.add_argument("--module", choices=("files", "ping"), help="only jobs of this module")
    jl.add_argument(
        "--status",
        choices=JOB_OUTCOMES,
        metavar="STATUS",
        help="only jobs with at least one host in this state: " + ", ".join(JOB_OUTCOMES),
    )
    jl.add_argument("--user", help="only jobs submitted by this user")
    jl.add_argument("--json", action="store_true", help="print one JSON document")
    js = jobs_sub.add_parser("show", help="one job with every host's result and diffs")
    js.add_argument("jid", metavar="JID", help="a job id, or 'last' for the newest job")
    js.add_argument("--host", help="only this host's result")
    js.add_argument("--json", action="store_true", help="print one JSON document")

    show = sub.add_parser("show", help="print a host's compiled file list, without contacting it")
    show.add_argument("host", metavar="HOST", help="minion id from hosts.yaml")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.add_argument(
        "--repo",
        metavar="DIR",
        help="configuration repository (default: config_dir of the settings)",
    )

    check = sub.add_parser(
        "check",
        help="validate the settings and the repository and compile the hosts; touch nothing",
    )
    check.add_argument("hosts", nargs="*", metavar="HOST", help="only these hosts (default: all)")
    check.add_argument("--json", action="store_true", help="one JSON document on stdout")

    demo = sub.add_parser("demo", help="run a master and three sandboxed minions on 127.0.0.1")
    demo.add_argument(
        "--keep", action="store_true", help="leave the demo directory in place at the end"
    )
    return parser


class _ArgumentError(Exception):
    """Bad usage found by argparse, raised instead of exiting so that main()
    can report it as every other error (also as JSON under --json)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(self, message)


def _with_verbosity(settings: Any, args: argparse.Namespace) -> Any:
    level = getattr(args, "log_level", None)
    return settings if level is None else dataclasses.replace(settings, log_level=level)


class _ConfigSubparsers:
    """Adds subcommands that also take -c (see build_parser)."""

    def __init__(self, action: Any, config: argparse.ArgumentParser) -> None:
        self.action = action
        self.config = config

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return self.action.add_parser(name, parents=[self.config], **kwargs)


def _duration(text: str) -> float:
    """A duration on the command line, as in the settings files (30, 30s, 5m, 1h)."""
    from safcm.common import settings as common_settings

    try:
        return common_settings.duration(text)
    except common_settings.BadValue as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Under --json every failure is also a JSON document on stdout, with the
    # same exit code; the message still goes to stderr for the person watching.
    as_json = "--json" in argv
    try:
        args = parser.parse_args(argv)
    except _ArgumentError as e:
        if as_json:
            write_json(jsonout.error_document("usage", str(e)), sys.stdout)
        e.parser.print_usage(sys.stderr)
        _error(escape(str(e)))
        return EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    as_json = getattr(args, "json", False)
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # The reader (head, a closed pager) went away; keep the final flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except ConfigError as e:
        problems = [_problem(p) for p in e.problems]
        _fail(as_json, "config", "configuration error", problems)
        return EXIT_USAGE
    except RemoteError as e:
        _fail(as_json, e.code, str(e), e.problems)
        return EXIT_USAGE
    except ProtocolError as e:  # a request this side cannot even encode
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


def _problem(problem: ConfigProblem) -> dict[str, Any]:
    return {"file": problem.file, "line": problem.line, "message": problem.message}


def _fail(
    as_json: bool, kind: str, message: str, problems: list[dict[str, Any]] | None = None
) -> None:
    """Report an error: a line (and its problems) on stderr, and under --json
    the error document on stdout."""
    problems = problems or []
    if as_json:
        write_json(jsonout.error_document(kind, message, problems), sys.stdout)
    _error(escape(message) + (":" if problems else ""))
    for p in problems:
        where = p["file"] if p["line"] is None else f"{p['file']}:{p['line']}"
        print(f"  {escape(where)}: {escape(p['message'])}", file=sys.stderr)


def _error(message: str) -> None:
    print(f"safcm-master: {message}", file=sys.stderr)


def _settings(path: str | None) -> MasterSettings:
    """The settings from -c, or from the default file; defaults if that does not exist."""
    from safcm.master import settings

    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return MasterSettings()
        path = DEFAULT_CONFIG_PATH
    return settings.load(path)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from safcm.master import demo

        return demo.main(keep=args.keep)
    if args.command == "check":
        from safcm.master.check import check

        return check(args.config, args.hosts, sys.stdout, sys.stderr, as_json=args.json)
    if args.command == "show" and args.repo is not None:
        from safcm.master.show import show_host

        return show_host(args.repo, args.host, as_json=args.json, out=sys.stdout)
    settings = _settings(args.config)
    if args.command == "daemon":
        from safcm.master import daemon

        try:
            return daemon.main(_with_verbosity(settings, args))
        except (SafcmError, OSError) as e:
            # Anything that escapes the daemon stopped it before it served:
            # nothing was done (a port in use, an unusable state_dir).
            reason = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) else str(e)
            _error(f"the daemon did not start: {escape(reason)}")
            return EXIT_USAGE
    if args.command == "show":
        from safcm.master.show import show_host

        return show_host(settings.config_dir, args.host, as_json=args.json, out=sys.stdout)
    if args.command == "run":
        return run_command(settings, args, sys.stdout, sys.stderr)
    if args.command == "keys":
        return keys_command(settings, args, sys.stdout)
    return jobs_command(settings, args, sys.stdout)


def write_json(document: Any, out: TextIO) -> None:
    """One JSON document: indented on a terminal, compact otherwise (for jq and
    scripts; the compact form uses the C encoder, which matters at thousands
    of hosts)."""
    if out.isatty():
        json.dump(document, out, indent=2, sort_keys=True)
    else:
        out.write(json.dumps(document, sort_keys=True, separators=(",", ":")))
    out.write("\n")


# ---- run ----


def run_command(
    settings: MasterSettings, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    if not args.target.strip():
        raise UsageError(
            "TARGET is empty: give a glob ('web*'), a comma list ('web1,db1') or a group ('@web')"
        )
    style = render.Style(not args.json and render.use_colour(out))
    progress = Progress(err, enabled=not args.json and err.isatty())
    request = {
        "target": args.target,
        "group": args.group,
        "module": args.module,
        "dry_run": args.dry_run,
        "timeout": args.timeout,
    }
    started: dict[str, Any] = {}
    results: dict[str, dict[str, Any] | None] = {}  # by host; None: no response
    tally = render.Tally()
    jid = None
    with ControlClient(settings.control_path) as client:
        client.send(MsgType.RUN, request)
        wait = (args.timeout or settings.job_timeout) + RUN_GRACE
        try:
            for msg in client.replies(wait):
                raise_for_error(msg)
                body = msg.body
                if msg.type is MsgType.RUN_STARTED:
                    jid = body["jid"]
                    tally.targeted = len(body["hosts"])
                    started = body
                    if not args.json:
                        _print_started(out, style, body, args)
                    progress.show(0, tally.targeted)
                elif msg.type is MsgType.RUN_HOST_RESULT:
                    status = outcome(body["result"])
                    tally.add(status)
                    results[body["host"]] = body["result"]
                    progress.clear()
                    if not args.json:
                        print(
                            render.render_host(body["host"], status, body["result"], style),
                            file=out,
                            flush=True,
                        )
                    progress.show(len(results), tally.targeted)
                elif msg.type is MsgType.RUN_PROGRESS:
                    # A host is still working (its triggers outlast the
                    # timeout); its deadline moved, and hearing this keeps us
                    # waiting: each reply restarts the wait.
                    continue
                elif msg.type is MsgType.RUN_DONE:
                    progress.clear()
                    if args.json:
                        write_json(jsonout.run_document(started, request, results), out)
                    else:
                        print(
                            render.render_summary(tally, style, args.dry_run, args.module), file=out
                        )
                        if tally.no_response:
                            print(render.render_late_hint(str(jid), style), file=out)
                    return EXIT_OK if tally.failed == tally.no_response == 0 else EXIT_FAILED
        except KeyboardInterrupt:
            progress.clear()
            if jid is not None:
                _error(f"interrupted; job {jid} goes on. See: safcm-master jobs show {jid}")
            raise
        except RemoteError as e:
            if jid is None:
                raise  # the daemon refused the request: nothing was done
            lost = f"the master daemon failed during the run ({e})"
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
        write_json(jsonout.error_document("lost", message, jid=jid), out)
    _error(escape(message))
    return EXIT_FAILED


def _print_started(
    out: TextIO, style: render.Style, body: dict[str, Any], args: argparse.Namespace
) -> None:
    hosts = body["hosts"]
    what = f"{args.module}{' (dry run)' if args.dry_run else ''}"
    print(
        style.bold(
            f"job {body['jid']}: {what} on {len(hosts)} host{'s' if len(hosts) != 1 else ''}"
        ),
        file=out,
    )
    for skipped in body["skipped"]:
        print(
            style.yellow(f"skipped {escape(skipped['host'])}: {escape(skipped['reason'])}"),
            file=out,
        )
    for note in body.get("notes", []):
        print(style.yellow(f"{escape(note['host'])}: {escape(note['note'])}"), file=out)
    out.flush()


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


# ---- keys ----


def keys_command(settings: MasterSettings, args: argparse.Namespace, out: TextIO) -> int:
    action = args.action
    style = render.Style(not getattr(args, "json", False) and render.use_colour(out))
    if action == "fingerprint":
        print(f"master key fingerprint: {_master_fingerprint(settings)}", file=out)
        return EXIT_OK
    with ControlClient(settings.control_path) as client:
        request = {"action": action, "ids": getattr(args, "ids", [])}
        if getattr(args, "fingerprint", None) is not None:
            request["fingerprint"] = args.fingerprint
        reply = client.request(MsgType.KEYS, request, REQUEST_TIMEOUT)
    body = reply.body
    if action == "list":
        if args.json:
            write_json(jsonout.keys_document(body), out)
        else:
            print(render.render_keys(body, style), file=out)
        return EXIT_OK
    if not body["keys"]:
        print("nothing changed", file=out)
    verb = {"accept": "accepted", "reject": "rejected", "delete": "deleted"}[action]
    for key in body["keys"]:
        print(f"{verb} {escape(key['id'])} ({key['fingerprint']})", file=out)
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
    style = render.Style(not args.json and render.use_colour(out))
    if args.host is not None and (problem := minion_id_problem(args.host)):
        raise UsageError(f"--host: {problem}")
    show_last = args.action == "show" and args.jid == "last"
    if args.action == "show" and not show_last and (problem := jid_problem(args.jid)):
        raise UsageError(f"{problem} (or 'last' for the newest job)")
    if args.action == "list":
        if args.limit < 1:
            raise UsageError("--limit must be at least 1")
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
            write_json(jsonout.jobs_list_document(reply.body), out)
        else:
            print(render.render_jobs_table(reply.body["jobs"], style), file=out)
        return EXIT_OK
    jid = args.jid
    if show_last:
        newest = {"action": "list", "host": None, "target": None, "limit": 1, "jid": None}
        with ControlClient(settings.control_path) as client:
            jobs = client.request(MsgType.JOBS, newest, REQUEST_TIMEOUT).body["jobs"]
        if not jobs:
            raise UsageError("no jobs in the history yet")
        jid = jobs[0]["jid"]
    request = {"action": "show", "host": args.host, "target": None, "limit": 1, "jid": jid}
    with ControlClient(settings.control_path) as client:
        reply = client.request(MsgType.JOBS, request, REQUEST_TIMEOUT)
    if args.json:
        write_json(jsonout.job_show_document(reply.body), out)
        return EXIT_OK
    job, hosts = reply.body["job"], reply.body["hosts"]
    print(render.render_job_header(job, style), file=out)
    tally = render.Tally(targeted=len(hosts))
    for host in hosts:
        status = jsonout.host_outcome(host)
        if status != PENDING:
            tally.add(status)
        late_at = host["returned"] if host["late"] else None
        print(
            render.render_host(host["host"], status, host["result"], style, late_at=late_at),
            file=out,
        )
    print(render.render_summary(tally, style, job["dry_run"], job["module"]), file=out)
    return EXIT_OK


def list_filters(args: argparse.Namespace, now: float) -> dict[str, Any]:
    """The filters of `jobs list` as JOBS request fields: those given only."""
    filters: dict[str, Any] = {}
    for name in ("since", "until"):
        text = getattr(args, name)
        if text is not None:
            try:
                filters[name] = parse_when(text, now)
            except ValueError as e:
                raise UsageError(f"--{name}: {e}") from None
    if "since" in filters and "until" in filters and filters["since"] > filters["until"]:
        raise UsageError("--until is before --since")
    for name in ("module", "status", "user"):
        if getattr(args, name) is not None:
            filters[name] = getattr(args, name)
    return filters


def parse_when(text: str, now: float) -> float:
    """A point in time (unix time) from the command line, judged at `now`:

    - a duration back from now, as in the settings files: 30m, 2h, 7d, 90 (seconds);
    - a date and time, ISO 8601: 2026-12-02T01:00, 2026-12-02 01:00:30, 2026-12-02
      (midnight); local time unless it ends in Z or an offset (+01:00);
    - a time of day, today: 01:00, 13:45:10 (local, or with Z or an offset).

    ValueError says what was expected.
    """
    from safcm.common import settings as common_settings

    text = text.strip()
    try:
        return now - common_settings.duration(text)
    except common_settings.BadValue:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        try:
            clock = datetime.time.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is neither a time (2026-12-02T01:00, 01:00) nor a duration"
                " back from now (30m, 2h, 7d)"
            ) from None
        # Today in the time's own zone, or the local one (then both are naive).
        today = datetime.datetime.fromtimestamp(now, clock.tzinfo).date()
        moment = datetime.datetime.combine(today, clock)
    # A naive time is local (astimezone() takes it so); an aware one keeps its zone.
    return moment.astimezone().timestamp() if moment.tzinfo is None else moment.timestamp()


if __name__ == "__main__":
    sys.exit(main())
