"""`safcm-master demo`: a master and three minions on 127.0.0.1, end to end.

Everything is real: the daemons are subprocesses, the sockets listen on
127.0.0.1, keys are generated and accepted, and each minion's root is a
directory under the demo directory standing in for its `/`. The demo uses the
example repository (configs/repo), made a git repository so that the job
history records its commit, and walks through: enrolment, a first run that
creates files, a second that changes nothing, a file changed behind the
master's back found by a dry run, and the job history. Then it cleans up.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from safcm.common.errors import UsageError
from safcm.common.protocol import MsgType
from safcm.master.control import ControlClient
from safcm.master.sandbox import Sandbox, wait_for

MINIONS = ("web1", "web2", "db1")
# Seconds the demo waits for minions to enrol and connect.
STARTUP_TIMEOUT = 60.0
EXAMPLE_REPO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "repo"
)
# The file the demo changes on web1 behind the master's back.
CHANGED_FILE = "etc/motd"


def main(*, keep: bool = False, repo: str = EXAMPLE_REPO) -> int:
    if not os.path.isdir(repo):
        raise UsageError(
            f"the example repository {repo} is missing: this installation of safcm "
            "is incomplete; reinstall it"
        )
    if os.geteuid() != 0:
        raise UsageError("the demo needs root: its minions set file owners")
    base = tempfile.mkdtemp(prefix="safcm-demo-", dir="/tmp")
    sandbox = Sandbox(base, repo, log_level="info")
    try:
        _git_init(sandbox.config_dir)
        return _walk_through(sandbox, keep)
    finally:
        sandbox.close()
        if keep:
            print(f"\nthe demo directory stays: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _walk_through(sb: Sandbox, keep: bool) -> int:
    step(
        "Start a master and three minions (web1, web2, db1) on 127.0.0.1",
        f"each minion's root is a directory under {sb.base}/roots",
    )
    sb.start_master()
    for minion in MINIONS:
        sb.add_minion(minion)
        sb.start_minion(minion)
    wait_for(
        lambda: _keys_in_state(sb, "pending") >= len(MINIONS),
        STARTUP_TIMEOUT,
        "the minions to enrol",
    )
    show(sb, "keys", "list")

    step("Compare fingerprints, then accept the three keys")
    show(sb, "keys", "fingerprint")
    for minion in MINIONS:
        result = sb.minion_cli(minion, "fingerprint", check=True)
        print(f"  minion {minion} says: {result.stdout.strip()}")
    show(sb, "keys", "accept", *MINIONS)
    wait_for(lambda: _connected(sb) >= len(MINIONS), STARTUP_TIMEOUT, "the minions to connect")
    show(sb, "keys", "list")

    step("What web1 will get, compiled on the master without contacting it")
    show(sb, "show", "web1")

    step("First run: every file is created, triggers run")
    show(sb, "run", "*", "files")
    step("Second run: nothing changes")
    show(sb, "run", "*", "files")

    path = os.path.join(sb.root("web1"), CHANGED_FILE)
    step(
        f"Someone edits /{CHANGED_FILE} on web1 by hand; a dry run shows the diff "
        "and changes nothing"
    )
    with open(path, "a") as f:
        f.write("edited by hand on web1\n")
    show(sb, "run", "web1", "files", "--dry-run")

    step("The job history")
    show(sb, "jobs", "list")
    jid = _first_jid(sb)
    show(sb, "jobs", "show", jid, "--host", "web1")
    step("Done; stopping the daemons" + ("" if keep else " and removing the demo directory"))
    return 0


def step(title: str, note: str = "") -> None:
    print(f"\n\x1b[1m==> {title}\x1b[0m" if sys.stdout.isatty() else f"\n==> {title}")
    if note:
        print(f"    ({note})")


def show(sb: Sandbox, *args: str) -> None:
    """Run one safcm-master command as an administrator would, and show it."""
    print(f"$ safcm-master {' '.join(shlex.quote(a) for a in args)}", flush=True)
    env = {"NO_COLOR": ""} if sys.stdout.isatty() else {"NO_COLOR": "1"}
    result = sb.cli(*args, env=env)
    sys.stdout.write(result.stdout)
    sys.stdout.write(result.stderr)
    sys.stdout.flush()
    if result.returncode not in (0, 1):
        raise UsageError(f"'safcm-master {' '.join(args)}' failed (exit {result.returncode})")


def _keys(sb: Sandbox) -> list[dict]:
    with ControlClient(sb.control_path) as client:
        return client.request(MsgType.KEYS, {"action": "list", "ids": []}).body["keys"]


def _keys_in_state(sb: Sandbox, state: str) -> int:
    return sum(1 for k in _keys(sb) if k["state"] == state)


def _connected(sb: Sandbox) -> int:
    return sum(1 for k in _keys(sb) if k["connected"])


def _first_jid(sb: Sandbox) -> str:
    with ControlClient(sb.control_path) as client:
        jobs = client.request(
            MsgType.JOBS,
            {"action": "list", "host": None, "target": None, "limit": 100, "jid": None},
        ).body["jobs"]
    return jobs[-1]["jid"]


def _git_init(repo: str) -> None:
    """Make the demo's copy of the repository a git repository, if git is installed."""
    if shutil.which("git") is None:
        return
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "safcm demo",
        "GIT_AUTHOR_EMAIL": "demo@localhost",
        "GIT_COMMITTER_NAME": "safcm demo",
        "GIT_COMMITTER_EMAIL": "demo@localhost",
    }
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "example repository"]):
        subprocess.run(["git", "-C", repo, *args], check=True, env=env, capture_output=True)
