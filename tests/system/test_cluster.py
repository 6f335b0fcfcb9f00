"""Several masters on one PostgreSQL database (DESIGN section 10): real
masters on 127.0.0.2 and 127.0.0.3 sharing one key pair (copied, as an
administrator does), real minions whose `master:` lists both, a real
PostgreSQL server."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import yaml

from safcm.master.sandbox import Sandbox, wait_for
from tests.system.conftest import (
    HEARTBEAT,
    REPO,
    assert_unsealable_run_fails_at_once,
    clock_from_file,
    jobs_show,
    keys,
    run_json,
    wait_state,
)

# The two masters' addresses: one host, two loopback addresses, the same ports.
FIRST, SECOND = "127.0.0.2", "127.0.0.3"
# Seconds to wait for a takeover: the dead master's lease (master/cluster.py
# LEASE, 15 s) plus renewals, with room for a loaded machine.
TAKEOVER = 90.0


@pytest.fixture
def cluster(sandbox, pg_dsn, tmp_path):
    """(first, second): two masters of one cluster; minions added to the
    first list both masters."""
    sandbox.configure_master(interface=FIRST, store=pg_dsn)
    ports = {k: sandbox.master.settings[k] for k in ("publish_port", "return_port", "key_port")}
    second = Sandbox(
        str(tmp_path / "second"),
        REPO,
        heartbeat_interval=HEARTBEAT,
        interface=SECOND,
        store=pg_dsn,
        job_timeout=20,
        **ports,
    )
    # One identity for the cluster: the first master's key pair, copied.
    sandbox.master_fingerprint()  # creates it
    keys_dir = os.path.join(sandbox.master.settings["state_dir"], "keys")
    second_state = second.master.settings["state_dir"]
    os.makedirs(second_state, mode=0o700, exist_ok=True)
    shutil.copytree(keys_dir, os.path.join(second_state, "keys"))
    sandbox.start_master()
    second.start_master()
    yield sandbox, second
    second.close()


def add_minions(first: Sandbox, *ids: str) -> None:
    for minion in ids:
        first.add_minion(minion, master=[FIRST, SECOND])
        first.start_minion(minion)
    for minion in ids:
        wait_state(first, minion, "pending")


def test_accept_on_one_master_run_on_the_other(cluster):
    first, second = cluster
    add_minions(first, "web1", "web2", "web3")  # all connect to the first master
    assert second.cli("keys", "accept", "web*").returncode == 0
    for minion in ("web1", "web2", "web3"):
        wait_state(first, minion, "accepted", connected=True)
    # The second master reaches them through the first (it holds them).
    code, doc = run_json(second, "web*", "files")
    assert code == 0, doc
    assert doc["summary"]["changed"] == 3
    assert os.path.exists(os.path.join(first.root("web1"), "etc/motd"))
    # Both masters answer alike.
    assert keys(first)["web2"]["connected"] and keys(second)["web2"]["connected"]
    assert jobs_show(first, doc["jid"]) == jobs_show(second, doc["jid"])


def test_minions_move_to_the_other_master_when_theirs_dies(cluster):
    first, second = cluster
    add_minions(first, "web1")
    assert first.cli("keys", "accept", "web1").returncode == 0
    wait_state(first, "web1", "accepted", connected=True)
    first.kill(first.master)
    # Within the minion's liveness time it is the second master's.
    wait_for(
        lambda: "minion web1 is connected" in second.master.log_text(),
        60,
        "web1 to connect to the second master",
    )
    code, doc = run_json(second, "web1", "ping")
    assert code == 0, doc


def test_the_job_of_a_killed_master_is_finished_by_the_other_exactly_once(cluster):
    """A job runs on web1 and web2 from the first master, which is killed
    (SIGKILL) while web1's trigger runs. web1's result reaches the second
    master; web2 (frozen) never answers, and the second master, having taken
    the job over, records its "no response" at the deadline."""
    first, second = cluster
    marker = os.path.join(first.base, "trigger-started")
    release = os.path.join(first.base, "release")
    with open(os.path.join(first.config_dir, "web1", "triggers.yaml"), "w") as f:
        trigger = f"touch {marker}; while [ ! -e {release} ]; do sleep 0.05; done"
        yaml.safe_dump({"/etc/app/feature-flags.conf": [trigger]}, f)
    add_minions(first, "web1", "web2")
    assert first.cli("keys", "accept", "web1", "web2").returncode == 0
    wait_state(first, "web1", "accepted", connected=True)
    wait_state(first, "web2", "accepted", connected=True)
    web2 = first.minions["web2"].proc
    os.kill(web2.pid, signal.SIGSTOP)  # web2 will not answer
    cli = first.spawn_cli("run", "web*", "files", "--timeout", "20", "--json")
    try:
        wait_for(lambda: os.path.exists(marker), 60, "web1's trigger to start")
        first.kill(first.master)
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 1, err
        lost = json.loads(out)
        assert "the job goes on" in lost["error"]["message"], lost
        jid = lost["jid"]
        open(release, "w").close()  # web1's trigger ends; its result goes to the second master
        wait_for(
            lambda: (
                {h["host"]: h["status"] for h in jobs_show(second, jid)["hosts"]}
                == {"web1": "changed", "web2": "no response"}
            ),
            TAKEOVER,
            f"the second master to finish the job: {jobs_show(second, jid)}",
        )
    finally:
        os.kill(web2.pid, signal.SIGCONT)
    log = second.master.log_text()
    assert "took over 1 open jobs" in log and jid in log
    hosts = {h["host"]: h for h in jobs_show(second, jid)["hosts"]}
    triggers = hosts["web1"]["result"]["apply"]["triggers"]
    assert [t["status"] for t in triggers if "release" in t["command"]] == ["ok"]
    # Thawed, web2 finds the first master gone and is served by the second;
    # the finished job stays as it was recorded.
    wait_for(
        lambda: "minion web2 is connected" in second.master.log_text(),
        60,
        "web2 to connect to the second master",
    )
    code, doc = run_json(second, "web2", "ping")
    assert code == 0, doc
    after = {h["host"]: h for h in jobs_show(second, jid)["hosts"]}
    assert after["web1"] == hosts["web1"]  # stored once
    # web2 may still get the job's envelope it had buffered while frozen: it
    # then answers late, without applying it, and that is stored once too.
    if after["web2"]["status"] != "no response":
        assert after["web2"]["late"] is True, after["web2"]
        assert "not applied" in after["web2"]["result"]["error"], after["web2"]


def test_a_relayed_envelope_that_cannot_be_sealed_fails_the_host_on_its_jobs_master(
    cluster, tmp_path
):
    # The first master holds web1, and its wall clock steps back five minutes
    # (libfaketime) while the second master's job of the longest timeout
    # waits for web1: the envelope relayed to the first would have to outlive
    # MAX_ENVELOPE_TTL by its clock, so it cannot seal it. The second's run
    # hears web1 failed, and why, at once. Before, the first only logged it,
    # and the run waited for its deadline to say "no response".
    first, second = cluster
    offset = tmp_path / "offset"
    clock = clock_from_file(offset)
    first.stop(first.master)
    first.start_master(wrapper=clock)
    add_minions(first, "web1")
    assert second.cli("keys", "accept", "web1").returncode == 0
    wait_state(first, "web1", "accepted", connected=True)
    first.stop(first.minions["web1"])
    wait_state(first, "web1", "accepted", connected=False)
    assert_unsealable_run_fails_at_once(second, first, offset, TAKEOVER)
