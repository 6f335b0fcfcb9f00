"""The trigger runner: real /bin/sh processes, timeouts, output caps, environment."""

from __future__ import annotations

import os
import signal
import time

import pytest

from safcm.common.model import TriggerStatus
from safcm.minion import triggers
from safcm.minion.triggers import run_trigger, run_triggers, would_run
from tests.procs import alive


def test_ok_with_output_and_environment(tmp_path):
    run = run_trigger('echo "$SAFCM_ROOT"; echo "$PATH"; pwd; echo err >&2', root=str(tmp_path))
    assert run.status is TriggerStatus.OK
    assert run.exit_code == 0
    assert run.output == f"{tmp_path}\n{triggers.TRIGGER_PATH}\n/\nerr\n"
    assert run.duration > 0


def test_environment_holds_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFCM_TEST_SECRET", "leak")
    run = run_trigger("env", root=str(tmp_path))
    names = {line.split("=", 1)[0] for line in run.output.splitlines()}
    # /bin/sh itself may add PWD, SHLVL or "_"; nothing comes from our environment.
    assert {"PATH", "SAFCM_ROOT"} <= names <= {"PATH", "SAFCM_ROOT", "PWD", "SHLVL", "_"}


def test_stdin_is_dev_null(tmp_path):
    run = run_trigger("cat; echo done", root=str(tmp_path), timeout=10)
    assert (run.status, run.output) == (TriggerStatus.OK, "done\n")


def test_failure_has_exit_code_and_later_triggers_still_run(tmp_path):
    runs = run_triggers(["echo one; exit 3", "echo two"], root=str(tmp_path))
    assert [(r.status, r.exit_code, r.output) for r in runs] == [
        (TriggerStatus.FAILED, 3, "one\n"),
        (TriggerStatus.OK, 0, "two\n"),
    ]


def test_killed_by_a_signal(tmp_path):
    run = run_trigger("kill -TERM $$", root=str(tmp_path))
    assert run.status is TriggerStatus.FAILED
    assert run.exit_code is None
    assert run.output == "[killed by signal SIGTERM]\n"


@pytest.mark.timeout(60)
def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    run = run_trigger(
        f"sleep 1000 & echo $! > {pidfile}; echo started; wait", root=str(tmp_path), timeout=0.5
    )
    assert run.status is TriggerStatus.TIMEOUT
    assert run.exit_code is None
    assert run.output == "started\n[killed after the trigger timeout of 0.5 s]\n"
    child = int(pidfile.read_text())
    for _ in range(100):  # up to 5 s for the kernel to finish the kill
        if not alive(child):
            break
        time.sleep(0.05)
    assert not alive(child)


@pytest.mark.timeout(60)
def test_a_daemon_holding_the_pipe_does_not_hold_us(tmp_path):
    pidfile = tmp_path / "pid"
    run = run_trigger(
        f"(sleep 20; echo late) & echo $! > {pidfile}; echo early", root=str(tmp_path), timeout=30
    )
    try:
        assert (run.status, run.exit_code, run.output) == (TriggerStatus.OK, 0, "early\n")
        assert alive(int(pidfile.read_text()))  # it was left running
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_shell_that_closes_its_output_still_times_out(tmp_path):
    run = run_trigger("exec >&- 2>&-; sleep 1000", root=str(tmp_path), timeout=0.5)
    assert run.status is TriggerStatus.TIMEOUT


def test_output_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(triggers, "TRIGGER_OUTPUT_MAX", 1000)
    run = run_trigger("head -c 250000 /dev/zero | tr '\\0' a", root=str(tmp_path))
    assert run.status is TriggerStatus.OK
    assert run.output == "a" * 1000 + "\n[output truncated: 249000 more bytes not shown]\n"


def test_undecodable_output_is_replaced(tmp_path):
    run = run_trigger("printf 'ok \\377\\n'", root=str(tmp_path))
    assert run.output == "ok \ufffd\n"


def test_shell_that_cannot_start(tmp_path, monkeypatch):
    monkeypatch.setattr(triggers, "SHELL", str(tmp_path / "no-such-shell"))
    run = run_trigger("true", root=str(tmp_path))
    assert run.status is TriggerStatus.FAILED
    assert run.exit_code is None
    assert run.output.startswith(f"could not start {tmp_path}/no-such-shell: ")


def test_would_run_lists_without_running(tmp_path):
    marker = tmp_path / "ran"
    listed = would_run([f"touch {marker}"])
    assert [(t.command, t.status, t.exit_code) for t in listed] == [
        (f"touch {marker}", TriggerStatus.WOULD_RUN, None)
    ]
    assert not marker.exists()
