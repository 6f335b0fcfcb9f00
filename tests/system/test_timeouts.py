"""A job's timeout fits the life of its envelope: one limit, said in plain words
by the CLI, held by the RUN request's schema, and a host whose envelope cannot
be sealed anyway is answered with the reason, not left pending."""

from __future__ import annotations

import os
import sqlite3

import pytest

from safcm.common.errors import RemoteError
from safcm.common.lightwire import MAX_ENVELOPE_TTL, MAX_JOB_TIMEOUT
from safcm.common.protocol import MsgType
from safcm.master.control import ControlClient
from safcm.master.db import DB_NAME
from safcm.master.sandbox import wait_for
from tests.system.conftest import (
    SETTLE,
    assert_unsealable_run_fails_at_once,
    clock_from_file,
    enrol,
    jobs_show,
    wait_state,
)

# Seconds a refused command may take: it must not wait for any job.
REFUSED_IN = 30
LIMIT_WORDS = f"must be from 1 s to {MAX_JOB_TIMEOUT} s"


def test_a_timeout_an_envelope_cannot_outlive_is_refused_in_plain_words(sandbox):
    enrol(sandbox, "web1")
    # A day: the envelope would have to live a day and ENVELOPE_SLACK more.
    for timeout in ("24h", "86400", "90d"):
        result = sandbox.cli("run", "web1", "ping", "--timeout", timeout, timeout=REFUSED_IN)
        assert result.returncode == 2, result
        assert f"argument --timeout: {LIMIT_WORDS}" in result.stderr
        assert "invalid request" not in result.stderr
    # The longest timeout allowed runs: its envelope lives exactly MAX_ENVELOPE_TTL.
    result = sandbox.cli("run", "web1", "ping", "--timeout", str(MAX_JOB_TIMEOUT))
    assert result.returncode == 0, result.stderr
    assert "web1: ok" in result.stdout
    assert "cannot be sealed" not in sandbox.master.log_text()

    # The daemon holds the same limit for any client of the control socket.
    too_long = {
        "target": "web1",
        "group": False,
        "module": "ping",
        "dry_run": False,
        "timeout": float(MAX_JOB_TIMEOUT + 1),
    }
    with (
        ControlClient(sandbox.control_path) as client,
        pytest.raises(RemoteError, match="timeout"),
    ):
        client.request(MsgType.RUN, too_long, REFUSED_IN)


def test_a_host_whose_envelope_cannot_be_sealed_is_answered_with_the_reason(sandbox):
    # A job stored by an earlier master that took a longer timeout (job_timeout:
    # 2d): its envelope cannot be sealed. The host is answered at once with
    # the reason, not left pending until the deadline two days away.
    enrol(sandbox, "web1")
    sandbox.stop(sandbox.minions["web1"])
    wait_state(sandbox, "web1", "accepted", connected=False)
    request = {"target": "web1", "group": False, "module": "ping", "dry_run": False, "timeout": 60}
    with ControlClient(sandbox.control_path) as client:
        client.send(MsgType.RUN, request)
        started = next(iter(client.replies(SETTLE)))
    assert started.type is MsgType.RUN_STARTED, started
    jid = started.body["jid"]
    sandbox.stop(sandbox.master)
    with sqlite3.connect(os.path.join(sandbox.master.settings["state_dir"], DB_NAME)) as db:
        db.execute("UPDATE jobs SET deadline = deadline + ? WHERE jid = ?", (2 * 86400, jid))
    sandbox.start_master()
    sandbox.start_minion("web1")

    def answered():
        [host] = jobs_show(sandbox, jid)["hosts"]
        return host if host["status"] != "pending" else None

    host = wait_for(answered, SETTLE, "web1 to be answered")
    assert host["status"] == "failed"
    assert host["result"]["status"] == "error"
    assert "the master cannot seal this host's envelope" in host["result"]["error"]
    assert f"ttl must be an int in 1..{MAX_ENVELOPE_TTL}" in host["result"]["error"]
    shown = sandbox.cli("jobs", "show", jid)
    assert "web1: FAILED" in shown.stdout and "error: the master cannot seal" in shown.stdout


def test_a_waiting_run_hears_why_an_envelope_cannot_be_sealed(sandbox, tmp_path):
    # The master's wall clock steps back five minutes (libfaketime, reading
    # the offset from a file) while a job of the longest timeout waits for
    # web1: its envelope would now have to outlive MAX_ENVELOPE_TTL. The run
    # that waits hears web1 failed, and why, at once.
    offset = tmp_path / "offset"
    clock = clock_from_file(offset)
    sandbox.start_master(wrapper=clock)
    enrol(sandbox, "web1")
    sandbox.stop(sandbox.minions["web1"])
    wait_state(sandbox, "web1", "accepted", connected=False)
    assert_unsealable_run_fails_at_once(sandbox, sandbox, offset, SETTLE)
