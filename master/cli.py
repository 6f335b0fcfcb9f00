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
import json
import os
import sys
from typing import Any, TextIO

from common.errors import (
    ConfigError,
    DaemonError,
    ProtocolError,
    RemoteError,
    SafcmError,
    UsageError,
)
from common.protocol import NO_RESPONSE, MsgType, jid_problem, minion_id_problem
from common.text import escape
from common.version import VERSION
from master import render
from master.control import ControlClient, raise_for_error
from master.jobstore import DEFAULT_LIST_LIMIT, outcome
from master.settings import DEFAULT_CONFIG_PATH, MasterSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Seconds the CLI waits beyond a job's own timeout for the daemon's last word.
RUN_GRACE = 30.0
# Seconds the CLI waits for the answer to keys and jobs requests.
REQUEST_TIMEOUT = 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safcm-master",
        description="The safcm master: compiles the configuration and runs jobs on minions.",
    )
    config_help = f"master settings (default: {DEFAULT_CONFIG_PATH})"
    parser.add_argument("-c", "--config", default=None, metavar="FILE", help=config_help)
    parser.add_argument("--version", action="version", version=f"safcm-master {VERSION}")
    # -c is also accepted after the subcommand: each subparser has it too,
    # with no default of its own, so it overrides only when given.
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "-c", "--config", default=argparse.SUPPRESS, metavar="FILE", help=config_help
    )
    sub = _ConfigSubparsers(parser.add_subparsers(dest="command", metavar="COMMAND"), config)

    sub.add_parser("daemon", help="run the master daemon (logs to stderr)")

    keys = sub.add_parser("keys", help="list, accept, reject or delete minion keys")
    keys_sub = _ConfigSubparsers(
        keys.add_subparsers(dest="action", metavar="ACTION", required=True), config
    )
    keys_sub.add_parser("list", help="every key with its state, fingerprint and presence")
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
    jl.add_argument("--json", action="store_true", help="print one JSON document")
    js = jobs_sub.add_parser("show", help="one job with every host's result and diffs")
    js.add_argument("jid", metavar="JID")
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

    demo = sub.add_parser("demo", help="run a master and three sandboxed minions on 127.0.0.1")
    demo.add_argument(
        "--keep", action="store_true", help="leave the demo directory in place at the end"
    )
    return parser


class _ConfigSubparsers:
    """Adds subcommands that also take -c (see build_parser)."""

    def __init__(self, action: Any, config: argparse.ArgumentParser) -> None:
        self.action = action
        self.config = config

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return self.action.add_parser(name, parents=[self.config], **kwargs)


def _duration(text: str) -> float:
    """A duration on the command line, as in the settings files (30, 30s, 5m, 1h)."""
    from common import settings as common_settings

    try:
        return common_settings.duration(text)
    except common_settings.BadValue as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # The reader (head, a closed pager) went away; keep the final flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except ConfigError as e:
        _error("configuration error:")
        for problem in e.problems:
            print(f"  {escape(str(problem))}", file=sys.stderr)
        return EXIT_USAGE
    except RemoteError as e:
        _error(escape(str(e)))
        for p in e.problems:
            where = p["file"] if p["line"] is None else f"{p['file']}:{p['line']}"
            print(f"  {escape(where)}: {escape(p['message'])}", file=sys.stderr)
        return EXIT_USAGE
    except ProtocolError as e:  # a request this side cannot even encode
        _error(f"invalid request: {escape(str(e))}")
        return EXIT_USAGE
    except (UsageError, DaemonError) as e:
        _error(escape(str(e)))
        return EXIT_USAGE
    except SafcmError as e:
        _error(escape(str(e)))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> None:
    print(f"safcm-master: {message}", file=sys.stderr)


def _settings(path: str | None) -> MasterSettings:
    """The settings from -c, or from the default file; defaults if that does not exist."""
    from master import settings

    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return MasterSettings()
        path = DEFAULT_CONFIG_PATH
    return settings.load(path)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from master import demo

        return demo.main(keep=args.keep)
    if args.command == "check":
        from master.check import check

        return check(args.config, args.hosts, sys.stdout, sys.stderr)
    if args.command == "show" and args.repo is not None:
        from master.show import show_host

        return show_host(args.repo, args.host, as_json=args.json, out=sys.stdout)
    settings = _settings(args.config)
    if args.command == "daemon":
        from master import daemon

        try:
            return daemon.main(settings)
        except (SafcmError, OSError) as e:
            # Anything that escapes the daemon stopped it before it served:
            # nothing was done (a port in use, an unusable state_dir).
            reason = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) else str(e)
            _error(f"the daemon did not start: {escape(reason)}")
            return EXIT_USAGE
    if args.command == "show":
        from master.show import show_host

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
    document: dict[str, Any] = {
        "target": args.target,
        "module": args.module,
        "dry_run": args.dry_run,
        "hosts": {},
    }
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
                    document.update(jid=jid, targeted=body["hosts"], skipped=body["skipped"])
                    if not args.json:
                        _print_started(out, style, body, args)
                    progress.show(0, tally.targeted)
                elif msg.type is MsgType.RUN_HOST_RESULT:
                    status = outcome(body["result"])
                    tally.add(status)
                    document["hosts"][body["host"]] = {"status": status, "result": body["result"]}
                    progress.clear()
                    if not args.json:
                        print(
                            render.render_host(body["host"], status, body["result"], style),
                            file=out,
                            flush=True,
                        )
                    progress.show(len(document["hosts"]), tally.targeted)
                elif msg.type is MsgType.RUN_PROGRESS:
                    # A host is still working (its triggers outlast the
                    # timeout); its deadline moved, and hearing this keeps us
                    # waiting: each reply restarts the wait.
                    continue
                elif msg.type is MsgType.RUN_DONE:
                    progress.clear()
                    document["summary"] = tally.as_dict()
                    if args.json:
                        write_json(document, out)
                    else:
                        print(
                            render.render_summary(tally, style, args.dry_run, args.module), file=out
                        )
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
        _error(
            f"{escape(lost)}, before it confirmed the job; it may have started: "
            "see safcm-master jobs list"
        )
    else:
        _error(f"{escape(lost)}; the job goes on: see safcm-master jobs show {jid}")
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
    style = render.Style(render.use_colour(out))
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
        from common import keyfile

        return keyfile.load_keys(os.path.join(settings.state_dir, "keys")).fingerprint()


# ---- jobs ----


def jobs_command(settings: MasterSettings, args: argparse.Namespace, out: TextIO) -> int:
    style = render.Style(not args.json and render.use_colour(out))
    if args.host is not None and (problem := minion_id_problem(args.host)):
        raise UsageError(f"--host: {problem}")
    if args.action == "show" and (problem := jid_problem(args.jid)):
        raise UsageError(problem)
    if args.action == "list":
        if args.limit < 1:
            raise UsageError("--limit must be at least 1")
        request = {
            "action": "list",
            "host": args.host,
            "target": args.target,
            "limit": args.limit,
            "jid": None,
        }
    else:
        request = {"action": "show", "host": args.host, "target": None, "limit": 1, "jid": args.jid}
    with ControlClient(settings.control_path) as client:
        reply = client.request(MsgType.JOBS, request, REQUEST_TIMEOUT)
    if args.json:
        write_json(reply.body, out)
        return EXIT_OK
    if args.action == "list":
        print(render.render_jobs_table(reply.body["jobs"], style), file=out)
        return EXIT_OK
    job, hosts = reply.body["job"], reply.body["hosts"]
    print(render.render_job_header(job, style), file=out)
    tally = render.Tally(targeted=len(hosts))
    for host in hosts:
        status = outcome(host["result"])
        if host["result"] is None and host["status"] != NO_RESPONSE:
            status = host["status"]  # still pending
        else:
            tally.add(status)
        print(render.render_host(host["host"], status, host["result"], style), file=out)
    print(render.render_summary(tally, style, job["dry_run"], job["module"]), file=out)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
