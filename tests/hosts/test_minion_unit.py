"""The shipped safcm-minion.service under a real systemd: a minion that dies
is restarted by systemd (Restart=on-failure), keeps its keys, reconnects and
runs the next job."""

from __future__ import annotations

from tests.hosts.fleet import MINION_UNIT
from tests.hosts.machine import wait_until
from tests.system.conftest import by_host, run_json, wait_state

# Seconds to wait for systemd's restart: the unit's RestartSec=5, plus start-up.
RESTART_WAIT = 60.0


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
