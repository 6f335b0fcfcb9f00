"""A master whose keys and history live in PostgreSQL (`store:` in master.yaml):
real daemons, a real server (tests/pgserver.py)."""

from __future__ import annotations

import json
import os

from safcm.master.db import DB_NAME
from safcm.master.sandbox import Sandbox, wait_for
from tests.pgserver import free_port
from tests.system.conftest import (
    HEARTBEAT,
    REPO,
    enrol,
    jobs_show,
    keys,
    run_json,
    wait_state,
)


def test_a_master_on_postgresql_keeps_keys_and_history_across_a_restart(sandbox, pg_dsn):
    sandbox.configure_master(store=pg_dsn)
    enrol(sandbox, "web1", "web2")
    code, doc = run_json(sandbox, "web*", "files")
    assert code == 0 and doc["summary"]["changed"] == 2
    jid = doc["jid"]

    sandbox.stop(sandbox.master)
    sandbox.start_master()
    # The keys came back from the database, not from the state directory.
    assert {k["id"]: k["state"] for k in keys(sandbox).values()} == {
        "web1": "accepted",
        "web2": "accepted",
    }
    shown = jobs_show(sandbox, jid)
    assert [h["host"] for h in shown["hosts"]] == ["web1", "web2"]
    assert {h["status"] for h in shown["hosts"]} == {"changed"}
    listed = json.loads(sandbox.cli("jobs", "list", "--host", "web2", "--json").stdout)
    assert [j["jid"] for j in listed["jobs"]] == [jid]


def test_an_unreachable_database_is_one_line_without_the_password(sandbox):
    """Exit 1, which the unit restarts (RestartPreventExitStatus=2 stops only
    configuration errors): a master of a cluster comes back with its database."""
    port = free_port()  # nothing listens there
    sandbox.configure_master(store=f"postgresql://safcm:s3cret-pw@127.0.0.1:{port}/safcm")
    result = sandbox.run(
        [sandbox.python, "-m", "safcm.master.cli", "-c", sandbox.master.config, "daemon"]
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "did not start" in line]
    assert f"cannot connect to postgresql://safcm@127.0.0.1:{port}/safcm: " in error
    assert "Connection refused" in error
    assert "s3cret-pw" not in result.stderr
    # An SQLite store that cannot be opened is the master's own state_dir: 2.
    sandbox.configure_master(store="sqlite")
    with open(os.path.join(sandbox.master.settings["state_dir"], DB_NAME), "w") as f:
        f.write("not a database")
    result = sandbox.cli("daemon")
    assert result.returncode == 2, result.stderr
    assert "the daemon did not start: cannot open the master database" in result.stderr


def test_two_masters_on_one_database_share_keys_and_history(sandbox, pg_dsn, tmp_path):
    """A key accepted or rejected on one master holds on the other at once
    (LISTEN/NOTIFY), and both answer `jobs list` alike."""
    other = Sandbox(str(tmp_path / "other"), REPO, heartbeat_interval=HEARTBEAT, store=pg_dsn)
    try:
        sandbox.configure_master(store=pg_dsn)
        sandbox.start_master()
        other.start_master()
        sandbox.add_minion("web1")
        sandbox.start_minion("web1")
        wait_state(other, "web1", "pending")  # enrolled on the first, seen by the second

        assert other.cli("keys", "accept", "web1").returncode == 0
        wait_state(sandbox, "web1", "accepted", connected=True)
        code, doc = run_json(sandbox, "web1", "ping")
        assert code == 0
        listed = json.loads(other.cli("jobs", "list", "--json").stdout)
        assert [j["jid"] for j in listed["jobs"]] == [doc["jid"]]

        assert other.cli("keys", "reject", "web1").returncode == 0
        # The first master cuts the minion it served, and runs nothing more on it.
        wait_state(sandbox, "web1", "rejected", connected=False)
        code, doc = run_json(sandbox, "web1", "ping")
        assert code != 0
    finally:
        other.close()


def test_the_master_rides_out_a_database_restart(sandbox, pg_server, pg_dsn):
    """The database restarts under a running master (its connections break):
    what fails meanwhile fails with a clear error, never a traceback, and the
    master connects again by itself."""
    sandbox.configure_master(store=pg_dsn)
    enrol(sandbox, "web1")
    pg_server.restart()

    def ping() -> bool:
        code, doc = run_json(sandbox, "web1", "ping")
        if code != 0:
            assert "database" in doc["error"]["message"], doc
        return code == 0

    wait_for(ping, 60, "a ping after the database restart")
    assert sandbox.master.running
    # Key changes are heard again too: the listener connected anew.
    assert sandbox.cli("keys", "reject", "web1").returncode == 0
    wait_state(sandbox, "web1", "rejected", connected=False)
    assert "Traceback" not in sandbox.master.log_text()
