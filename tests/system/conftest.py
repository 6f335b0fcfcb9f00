"""Fixtures for end-to-end tests: real daemons in subprocesses, real sockets on
127.0.0.1 with free ports, real keys, minion roots under a temporary directory."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import tempfile

import pytest

from safcm.common.crypto import KeyPair
from safcm.common.lightwire import MAX_JOB_TIMEOUT
from safcm.common.protocol import MsgType
from safcm.master.control import ControlClient
from safcm.master.sandbox import Sandbox, wait_for
from tests import schemas
from tests.schemas import validate
from tests.system.fake import FakeMinion

REPO = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "repo")
# Heartbeat interval of test minions, in seconds: short, so presence and
# enrolment settle quickly.
HEARTBEAT = 0.2
# Seconds a test waits for daemons to reach a state.
SETTLE = 30.0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def sandbox(request):
    base = tempfile.mkdtemp(prefix="safcm-t-", dir="/tmp")
    sb = Sandbox(base, REPO, heartbeat_interval=HEARTBEAT, job_timeout=20)
    yield sb
    sb.close()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for daemon in [sb.master, *sb.minions.values()]:
            print(f"----- log of {daemon.name}\n{daemon.log_text()[-6000:]}")
    shutil.rmtree(base, ignore_errors=True)


def keys(sb: Sandbox) -> dict[str, dict]:
    """Every minion key the master knows, by id."""
    with ControlClient(sb.control_path) as client:
        body = client.request(MsgType.KEYS, {"action": "list", "ids": []}).body
    return {k["id"]: k for k in body["keys"]}


def wait_state(sb: Sandbox, minion: str, state: str, connected: bool | None = None) -> None:
    def ok():
        k = keys(sb).get(minion)
        return k and k["state"] == state and (connected is None or k["connected"] == connected)

    wait_for(ok, SETTLE, f"{minion} to be {state}")


def enrol(sb: Sandbox, *minions: str, **settings) -> None:
    """Start the master if needed, start the minions, accept them, wait until connected."""
    if not sb.master.running:
        sb.start_master()
    for minion in minions:
        sb.add_minion(minion, **settings)
        sb.start_minion(minion)
    for minion in minions:
        wait_state(sb, minion, "pending")
    result = sb.cli("keys", "accept", *minions)
    assert result.returncode == 0, result.stderr
    for minion in minions:
        wait_state(sb, minion, "accepted", connected=True)


def run_json(sb: Sandbox, *args: str) -> tuple[int, dict]:
    """`run ... --json`: its exit code and its document, checked against its schema
    (docs/schema/run.json, or error.json for an error)."""
    result = sb.cli("run", *args, "--json")
    assert result.stdout, f"no output (exit {result.returncode}): {result.stderr}"
    doc = json.loads(result.stdout)
    return result.returncode, validate(doc, "error" if "error" in doc else "run")


def jobs_show(sb: Sandbox, jid: str) -> dict:
    result = sb.cli("jobs", "show", jid, "--json")
    assert result.returncode == 0, result.stderr
    return schemas.loads(result.stdout, "jobs-show")


def jobs_list(sb: Sandbox, *args: str) -> list[dict]:
    """`jobs list ARGS --json`: the jobs, checked against docs/schema/jobs-list.json."""
    result = sb.cli("jobs", "list", *args, "--json")
    assert result.returncode == 0, result.stderr
    return schemas.loads(result.stdout, "jobs-list")["jobs"]


def by_host(doc: dict) -> dict[str, dict]:
    """The hosts of a run or jobs show document, by host."""
    return {h["host"]: h for h in doc["hosts"]}


def changed_paths(doc: dict, host: str) -> list[str]:
    return [c["path"] for c in by_host(doc)[host]["result"]["apply"]["changes"]]


def logged(daemon, text: str) -> None:
    wait_for(lambda: text in daemon.log_text(), SETTLE, f"{daemon.name} to log {text!r}")


@pytest.fixture
def fake(sandbox):
    """make(minion_id, keys=None): a scriptable minion (tests/system/fake.py),
    closed at the end of the test."""
    fakes = []

    def make(minion_id: str, keys: KeyPair | None = None) -> FakeMinion:
        f = FakeMinion(sandbox, minion_id, keys)
        fakes.append(f)
        return f

    yield make
    for f in fakes:
        f.close()


def accepted_fake(sandbox: Sandbox, fake, minion_id: str) -> FakeMinion:
    """A scriptable minion that enrolled and that the administrator accepted."""
    f = fake(minion_id)
    assert f.enrol() == "pending"
    assert sandbox.cli("keys", "accept", minion_id).returncode == 0
    assert f.enrol() == "accepted"
    return f


def clock_from_file(offset: pathlib.Path) -> list[str]:
    """A wrapper for a daemon whose wall clock is off by what `offset` says
    (libfaketime's "+0", "-300": seconds), read again at every call, so a
    test steps the clock by writing the file. Without libfaketime's shared
    memory, which outlives the process."""
    offset.write_text("+0\n")
    [library] = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    return [
        "env",
        f"LD_PRELOAD={library}",
        f"FAKETIME_TIMESTAMP_FILE={offset}",
        "FAKETIME_NO_CACHE=1",
        "FAKETIME_DISABLE_SHM=1",
    ]


def assert_unsealable_run_fails_at_once(
    runner: Sandbox, holder: Sandbox, offset: pathlib.Path, timeout: float
) -> None:
    """With web1 stopped, `runner` runs a ping of the longest timeout on it;
    then the wall clock of `holder`'s master (clock_from_file(offset)) steps
    back five minutes and web1, a minion of `holder`, starts again. The
    envelope would now have to outlive MAX_ENVELOPE_TTL by that clock: the
    run must hear within `timeout` that web1 failed, and why."""
    run = runner.spawn_cli("run", "web1", "ping", "--timeout", str(MAX_JOB_TIMEOUT))
    try:
        logged(runner.master, "ping on web1 by root")
        offset.write_text("-300\n")
        holder.start_minion("web1")
        out, err = run.communicate(timeout=timeout)
    finally:
        run.kill()
    assert run.returncode == 1, err
    assert "web1: FAILED" in out
    assert "error: the master cannot seal this host's envelope: ttl must be" in out
    assert "1 failed, 0 no response" in out
