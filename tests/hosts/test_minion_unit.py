"""The shipped safcm-minion.service under a real systemd: a minion that dies
is restarted by systemd (Restart=on-failure), keeps its keys, reconnects and
runs the next job; one with bad settings is not restarted; the commands it
runs get umask 022 under the unit's private one; a stop waits for the
running job without signalling its command."""

from __future__ import annotations

import json
import os

import yaml

from tests.hosts.fleet import MINION_CONFIG, MINION_UNIT, SHIPPED_UNIT
from tests.hosts.machine import COMMAND_TIMEOUT, wait_until
from tests.system.conftest import by_host, run_json, wait_state

# Seconds to wait for systemd's restart: the unit's RestartSec=5, plus start-up.
RESTART_WAIT = 60.0
# Seconds for a state the unit reaches by itself (a start, a stop, an exit).
UNIT_WAIT = 60.0


def test_a_killed_minion_is_restarted_by_systemd_and_runs_the_next_job(fresh_fleet):
    host = fresh_fleet.hosts["host1"]
    before = host.machine.show(MINION_UNIT, "MainPID", "NRestarts")
    assert before["NRestarts"] == "0"
    host.run("sh", "-c", f"kill -KILL {before['MainPID']}")

    def restarted() -> bool:
        now = host.machine.show(MINION_UNIT, "MainPID", "NRestarts", "ActiveState")
        return now["NRestarts"] == "1" and now["ActiveState"] == "active"

    wait_until(restarted, RESTART_WAIT, "systemd to restart the minion")
    assert host.minion_pid() not in (0, int(before["MainPID"]))
    wait_state(fresh_fleet.sandbox, "host1", "accepted", connected=True)

    fresh_fleet.repo({"all": {"files/etc/after-restart": "ok\n"}})
    code, doc = run_json(fresh_fleet.sandbox, "host1", "files")
    assert code == 0 and by_host(doc)["host1"]["status"] == "changed"
    with open(host.machine.path("/etc/after-restart")) as f:
        assert f.read() == "ok\n"
    # The same key pair: it was not made again after the restart.
    assert host.journal(MINION_UNIT).count("created a new key pair") == 1


def cmd_doc(out: str) -> dict:
    doc = json.loads(out)
    return by_host(doc)["host1"]["result"]["cmd"]


def test_commands_get_umask_022_and_the_minions_own_files_stay_private(fresh_fleet):
    """The unit's UMask=0077 is the daemon's alone (minion/children.py)."""
    host = fresh_fleet.hosts["host1"]
    script = "umask; touch /tmp/made-by-cmd; stat -c %a /tmp/made-by-cmd"
    result = fresh_fleet.sandbox.cli("run", "host1", "cmd", "--json", "--shell", "--", script)
    assert cmd_doc(result.stdout)["stdout"] == "0022\n644\n"
    # What the daemon wrote (keys, pinned master, spool, stores) is root's alone.
    loose = host.run("find", "/var/lib/safcm-minion", "-perm", "/077", "!", "-type", "l")
    assert loose.stdout == ""


def test_a_stop_waits_for_the_running_job_and_leaves_its_command_alone(fresh_fleet):
    """KillMode=mixed: SIGTERM reaches the daemon only, which finishes the
    job (here a command that waits to be told to end) before it exits."""
    host = fresh_fleet.hosts["host1"]
    started, go = "/tmp/cmd-started", "/tmp/cmd-may-end"
    script = f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done; echo done"
    run = fresh_fleet.sandbox.spawn_cli("run", "host1", "cmd", "--json", "--shell", "--", script)
    try:
        wait_until(lambda: os.path.exists(host.machine.path(started)), UNIT_WAIT, "the command")
        host.run("systemctl", "stop", "--no-block", MINION_UNIT)

        def stopping() -> bool:
            return host.machine.show(MINION_UNIT, "ActiveState")["ActiveState"] == "deactivating"

        wait_until(stopping, UNIT_WAIT, "systemd to stop the minion")
        host.run("touch", go)

        def stopped() -> dict[str, str] | None:
            state = host.machine.show(MINION_UNIT, "ActiveState", "Result")
            return state if state["ActiveState"] in ("inactive", "failed") else None

        state = wait_until(stopped, UNIT_WAIT, "the minion to stop")
        assert state["Result"] == "success"  # not a timeout: nothing was SIGKILLed
        # Started again, it sends the result it spooled before it stopped.
        host.run("systemctl", "start", MINION_UNIT)
        out, err = run.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    result = cmd_doc(out)
    assert (result["status"], result["stdout"]) == ("ok", "done\n"), err


def test_bad_settings_stop_the_minion_without_restarts(booted):
    """Exit 2 (a configuration error) is final: RestartPreventExitStatus=2."""
    settings = {
        "id": "solo",
        "master": "127.0.0.1",
        "trust_first_master": True,
        "root": "/nonexistent",
    }
    booted.write(MINION_CONFIG, yaml.safe_dump(settings), 0o600)
    booted.run("cp", SHIPPED_UNIT, f"/etc/systemd/system/{MINION_UNIT}")
    booted.run("systemctl", "daemon-reload")
    booted.run("systemctl", "start", MINION_UNIT)
    properties = ("ActiveState", "SubState", "ExecMainStatus", "NRestarts")

    def ended() -> dict[str, str] | None:
        # After the exit: "failed", or "auto-restart" when a restart is due.
        state = booted.show(MINION_UNIT, *properties)
        return state if state["SubState"] in ("failed", "auto-restart") else None

    state = wait_until(ended, UNIT_WAIT, "the minion to exit")
    assert state == {
        "ActiveState": "failed",
        "SubState": "failed",
        "ExecMainStatus": "2",
        "NRestarts": "0",
    }
    log = booted.run("journalctl", "--no-pager", "-o", "cat", "-u", MINION_UNIT).stdout
    assert "root: /nonexistent: cannot open the root directory" in log
