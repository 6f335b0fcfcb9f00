"""Nothing lost: late minions, dead minions, restarted masters and minions."""

from __future__ import annotations

import glob
import json
import os
import re
import resource
import signal
import socket
import subprocess
import time

import pytest
import yaml

from safcm.common.protocol import jid_time
from safcm.master.sandbox import free_ports, wait_for
from tests.schemas import validate
from tests.system.conftest import (
    SETTLE,
    by_host,
    enrol,
    jobs_list,
    jobs_show,
    keys,
    logged,
    run_json,
    wait_state,
)


def start_run(sb, *args: str) -> subprocess.Popen:
    """`safcm-master run ... --json` in the background."""
    return sb.spawn_cli("run", *args, "--json")


def finish(proc: subprocess.Popen) -> tuple[int, dict]:
    out, err = proc.communicate(timeout=120)
    assert out, err
    doc = json.loads(out)
    return proc.returncode, validate(doc, "error" if "error" in doc else "run")


def test_minion_started_after_the_publish_still_applies(sandbox):
    enrol(sandbox, "web1", "web2")
    sandbox.stop(sandbox.minions["web2"])
    proc = start_run(sandbox, "web*", "files", "--timeout", "20")
    wait_for(
        lambda: (
            "received" in sandbox.minions["web1"].log_text().split("done")[-1]
            or "job" in sandbox.minions["web1"].log_text()
        ),
        SETTLE,
        "web1 to get the job",
    )
    # web1 has its job, so web2's went out too (one publish, in the same pass),
    # while web2 was away: it is served when it subscribes.
    sandbox.start_minion("web2")
    code, doc = finish(proc)
    assert code == 0, doc
    assert by_host(doc)["web2"]["status"] == "changed"
    assert os.path.exists(os.path.join(sandbox.root("web2"), "etc/motd"))


# The minion's heartbeat interval where its publish port is unreachable:
# each side says so after a few of them.
UNREACHED_HEARTBEAT = 0.5


def test_a_minion_that_cannot_reach_the_publish_port_is_named_on_both_sides(sandbox):
    """A firewall that lets the return port through and not the publish
    port: the minion's heartbeats are answered, and no job ever reaches it.
    Before, each run said only "no response", at its deadline, and the
    minion's log nothing at all."""
    [closed] = free_ports(1)  # nothing listens there
    enrol(sandbox, "web1", heartbeat_interval=UNREACHED_HEARTBEAT, publish_port=closed)
    minion = sandbox.minions["web1"]
    wait_for(
        lambda: f"cannot reach the publish socket at tcp://127.0.0.1:{closed}" in minion.log_text(),
        SETTLE,
        "the minion to say it cannot reach the publish port",
    )
    code, doc = run_json(sandbox, "web1", "ping", "--timeout", "2")
    assert code == 1
    web1 = by_host(doc)["web1"]
    assert web1["status"] == "no response"
    port = sandbox.master.settings["publish_port"]
    assert web1["note"].startswith(
        f"connected, but not subscribed to the publish socket (port {port})"
    ), web1
    # And in `keys list`, where an administrator looks for who is there.
    assert keys(sandbox)["web1"]["not_subscribed"] and keys(sandbox)["web1"]["connected"]
    listed = sandbox.cli("keys", "list").stdout
    assert "connected, NOT SUBSCRIBED" in listed and f"(port {port}), so no job" in listed, listed


def test_stopped_minion_is_no_response(sandbox):
    enrol(sandbox, "web1", "web2")
    sandbox.stop(sandbox.minions["web2"])
    wait_for(lambda: not keys(sandbox)["web2"]["connected"], SETTLE, "web2 to count as gone")
    listed = keys(sandbox)
    assert listed["web1"]["connected"] and not listed["web1"]["not_subscribed"]
    assert not listed["web2"]["not_subscribed"]
    # Said at submit time, not only at the deadline.
    human = sandbox.cli("run", "web2", "ping", "--timeout", "2")
    assert human.returncode == 1
    assert "web2: not connected (last seen " in human.stdout.split("\n")[1], human.stdout
    code, doc = run_json(sandbox, "web*", "ping", "--timeout", "2")
    assert code == 1
    web2 = by_host(doc)["web2"]
    assert (web2["status"], web2["result"]) == ("no response", None)
    assert web2["note"].startswith("not connected (last seen ")
    assert doc["summary"]["no response"] == 1
    human = sandbox.cli("jobs", "show", doc["jid"])
    assert "web2: no response" in human.stdout
    stored = {h["host"]: h for h in jobs_show(sandbox, doc["jid"])["hosts"]}
    assert stored["web2"]["status"] == "no response" and stored["web2"]["result"] is None
    assert stored["web1"]["status"] == "ok" and stored["web1"]["returned"] is not None


def slow_repo(sb) -> None:
    """Give web1 a trigger that takes a while, so a job is still running on it
    when the test kills the master."""
    path = os.path.join(sb.config_dir, "web1", "triggers.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"/etc/app/feature-flags.conf": ["sleep 3"]}, f)


def test_master_killed_after_sending_then_result_delivered_from_the_spool(sandbox):
    slow_repo(sandbox)
    enrol(sandbox, "web1")
    proc = start_run(sandbox, "web1", "files", "--timeout", "30")
    wait_for(
        lambda: (
            "job" in sandbox.minions["web1"].log_text()
            and "received" in sandbox.minions["web1"].log_text()
        ),
        SETTLE,
        "web1 to get the job",
    )
    sandbox.kill(sandbox.master)
    _, err = proc.communicate(timeout=30)
    # The CLI lost its daemon after the job started: not "nothing was done" (2).
    assert proc.returncode == 1, err
    [jid] = re.findall(r"the job goes on: see safcm-master jobs show (\S+)\n", err)
    spool = os.path.join(sandbox.minions["web1"].settings["state_dir"], "spool")
    wait_for(
        lambda: any(n.endswith(".result") for n in os.listdir(spool)),
        SETTLE,
        "web1 to spool its result",
    )

    sandbox.start_master()
    wait_for(
        lambda: not any(n.endswith(".result") for n in os.listdir(spool)),
        SETTLE,
        "the spooled result to be delivered",
    )
    [job] = jobs_list(sandbox)
    assert job["jid"] == jid
    [host] = jobs_show(sandbox, jid)["hosts"]
    assert host["returned"] is not None and host["result"]["status"] == "ok"
    assert any(t["command"] == "sleep 3" for t in host["result"]["apply"]["triggers"])


def ping_then_master_crash(sb, timeout: int) -> str:
    """With web1 stopped, start a ping to it, SIGKILL the master once the job is
    stored, and start the master again; returns the job's jid."""
    enrol(sb, "web1")
    sb.stop(sb.minions["web1"])
    proc = start_run(sb, "web1", "ping", "--timeout", str(timeout))
    wait_for(lambda: ": ping on web1 by " in sb.master.log_text(), SETTLE, "the job to start")
    sb.kill(sb.master)
    proc.communicate(timeout=30)
    sb.start_master()
    [job] = jobs_list(sb)
    return job["jid"]


def test_master_restart_republishes_undelivered_envelopes(sandbox):
    jid = ping_then_master_crash(sandbox, timeout=30)
    sandbox.start_minion("web1")
    wait_for(
        lambda: jobs_show(sandbox, jid)["hosts"][0]["status"] == "ok",
        SETTLE,
        "the job to reach web1 after the restart",
    )


def test_a_job_from_before_a_restart_still_ends_in_no_response(sandbox):
    jid = ping_then_master_crash(sandbox, timeout=3)
    wait_for(
        lambda: jobs_show(sandbox, jid)["hosts"][0]["status"] == "no response",
        SETTLE,
        "the restarted master to give up on web1 at the deadline",
    )


def test_restarted_minion_does_not_apply_a_job_twice(sandbox):
    slow_repo(sandbox)
    enrol(sandbox, "web1")
    proc = start_run(sandbox, "web1", "files", "--timeout", "30")
    log = sandbox.minions["web1"]
    wait_for(lambda: "received" in log.log_text(), SETTLE, "web1 to get the job")
    # SIGTERM while the job runs: the minion finishes the apply and stops.
    sandbox.stop(sandbox.minions["web1"], signal.SIGTERM)
    sandbox.start_minion("web1")
    code, doc = finish(proc)
    assert code == 0, doc
    text = log.log_text()
    assert text.count("job " + doc["jid"] + " received") == 1
    assert text.count("job " + doc["jid"] + " done") == 1


def test_history_survives_a_master_restart(sandbox):
    enrol(sandbox, "web1")
    _, first = run_json(sandbox, "web1", "files")
    _, second = run_json(sandbox, "web1", "ping")
    before = jobs_list(sandbox)
    shown = jobs_show(sandbox, first["jid"])
    assert sandbox.stop(sandbox.master) == 0  # SIGTERM: a clean stop, exit 0
    sandbox.start_master()
    assert jobs_list(sandbox) == before
    assert jobs_show(sandbox, first["jid"]) == shown
    assert [j["jid"] for j in before] == [second["jid"], first["jid"]]
    wait_state(sandbox, "web1", "accepted", connected=True)
    assert keys(sandbox)["web1"]["state"] == "accepted"
    # The minion reconnects without enrolling again.
    assert sandbox.minions["web1"].log_text().count("accepted by the master") == 1


def test_bad_settings_stop_the_daemons_at_start_up(sandbox):
    sandbox.configure_master(publish_port=70000, bogus=1)
    result = sandbox.cli("daemon")
    assert result.returncode == 2
    assert "publish_port: must be a TCP port number 1-65535, got '70000'" in result.stderr
    assert "bogus: unknown key" in result.stderr
    sandbox.add_minion("web1", heartbeat_interval="soon")
    result = sandbox.minion_cli("web1", "daemon")
    assert result.returncode == 2
    assert "heartbeat_interval: must be a duration" in result.stderr


def test_start_up_failures_are_one_line_and_exit_2(sandbox):
    sandbox.add_minion("web1", state_dir="/proc/nope")
    # A port in use: nothing was started.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sandbox.configure_master(return_port=taken.getsockname()[1])
        result = sandbox.cli("daemon")
    assert result.returncode == 2, result.stderr
    assert "the daemon did not start: cannot listen on tcp://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
    # A state directory that cannot be made.
    # A port free now may be one the stopped master was given for another
    # socket; of three different ones, at least one is neither of those two.
    taken_ports = {sandbox.master.settings["publish_port"], sandbox.master.settings["key_port"]}
    port = next(p for p in free_ports(3) if p not in taken_ports)
    sandbox.configure_master(return_port=port, state_dir="/proc/nope")
    result = sandbox.cli("daemon")
    assert result.returncode == 2, result.stderr
    assert "the daemon did not start: /proc/nope" in result.stderr
    assert "Traceback" not in result.stderr
    result = sandbox.minion_cli("web1", "daemon")
    assert result.returncode == 2, result.stderr
    assert "the daemon did not start: /proc/nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_daemon_on_one_state_directory_stops_at_once(sandbox):
    # Two minions on one state directory would interleave their heartbeat
    # numbers (the master then refuses one as replays) and share a spool.
    enrol(sandbox, "web1")
    result = sandbox.minion_cli("web1", "daemon")
    assert result.returncode == 2, result.stderr
    state_dir = sandbox.minions["web1"].settings["state_dir"]
    assert f"another safcm-minion is running with state_dir {state_dir}" in result.stderr
    result = sandbox.cli("daemon")
    assert result.returncode == 2, result.stderr
    assert "another safcm-master is running with state_dir" in result.stderr
    # The first ones go on.
    assert sandbox.cli("run", "web1", "ping").returncode == 0


def test_old_jobs_are_removed_after_keep_jobs(sandbox):
    sandbox.configure_master(keep_jobs="2s")
    enrol(sandbox, "web1")
    _, doc = run_json(sandbox, "web1", "ping")
    assert jobs_show(sandbox, doc["jid"])["jid"] == doc["jid"]
    wait_for(lambda: time.time() - jid_time(doc["jid"]) > 2.5, SETTLE, "the job to be 2.5 s old")
    sandbox.stop(sandbox.master)
    sandbox.start_master()  # retention runs at start-up (and hourly)
    assert jobs_list(sandbox) == []
    assert "removed 1 jobs older than keep_jobs" in sandbox.master.log_text()


def test_daemons_stop_cleanly_on_sigterm(sandbox):
    enrol(sandbox, "web1")
    assert sandbox.stop(sandbox.minions["web1"], signal.SIGTERM) == 0
    assert sandbox.stop(sandbox.master, signal.SIGTERM) == 0
    assert "web1: stopping" in sandbox.minions["web1"].log_text()
    assert not os.path.exists(sandbox.control_path)


def faketime(step: str) -> list[str]:
    """A command prefix that runs a program with its clock moved by `step`.
    libfaketime is preloaded directly, without its shared memory: the
    faketime wrapper keeps a /dev/shm segment per process id, which outlives a
    killed process and makes a later one with the same id fail ("sem_open:
    File exists")."""
    [library] = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    return ["env", f"LD_PRELOAD={library}", f"FAKETIME={step}", "FAKETIME_DISABLE_SHM=1"]


@pytest.mark.parametrize("step", ["-1h", "+1h"])
def test_a_minion_whose_clock_steps_keeps_working(sandbox, step):
    enrol(sandbox, "web1")
    code, _ = run_json(sandbox, "web1", "ping")
    assert code == 0
    # The host's wall clock steps by an hour (libfaketime), across a restart
    # of the minion: heartbeats are ordered by their counter, and envelope
    # times are the master's, learnt from its signed replies.
    minion = sandbox.minions["web1"]
    sandbox.stop(minion)
    sandbox.start_minion("web1", wrapper=faketime(step))
    wait_for(
        lambda: "clock is" in minion.log_text().split("starting;")[-1],
        SETTLE,
        "the minion to learn the master's time",
    )
    # A dry run: a job, its receipt and its result all cross the time window.
    # (Not a real apply: libfaketime's clock_nanosleep can fail with EINVAL in
    # the trigger runner's waits, which is the tool's flaw, not the clock's.)
    code, doc = run_json(sandbox, "web1", "files", "--dry-run")
    assert code == 0, doc
    # Its heartbeats still count (a point-in-time look could fall in a gap
    # of a busy machine's scheduling: wait for the condition instead).
    wait_for(lambda: keys(sandbox)["web1"]["connected"], SETTLE, "web1 to count as connected")
    assert "not newer than its last" not in sandbox.master.log_text()


def test_daemons_take_v_and_q(sandbox):
    sandbox.master.argv.append("-q")  # the settings say debug
    sandbox.start_master()
    sandbox.add_minion("web1")
    sandbox.minions["web1"].argv.append("-q")
    sandbox.start_minion("web1")
    wait_for(lambda: "web1" in keys(sandbox), SETTLE, "web1 to enrol")
    assert " debug " not in sandbox.master.log_text()
    assert " info " not in sandbox.minions["web1"].log_text()


def test_a_busy_minion_is_said_at_submit_time(sandbox):
    enrol(sandbox, "web1")
    path = os.path.join(sandbox.config_dir, "web1", "triggers.yaml")
    with open(path, "w") as f:  # a job that keeps web1 busy for a while
        yaml.safe_dump({"/etc/app/feature-flags.conf": ["sleep 8"]}, f)
    proc = start_run(sandbox, "web1", "files", "--timeout", "30")
    try:
        log = sandbox.minions["web1"]
        wait_for(lambda: "received (files" in log.log_text(), SETTLE, "web1 to get the job")

        def said_busy() -> bool:
            # A short timeout: the probe is queued behind the files job.
            result = sandbox.cli("run", "web1", "ping", "--timeout", "1")
            return "web1: busy with job " in result.stdout

        wait_for(said_busy, SETTLE, "a run to say that web1 is busy")
    finally:
        finish(proc)


def test_the_master_paces_its_garbage_collections(sandbox):
    # master/daemon.py run() starts the pacer (common/gcpace.py), whose
    # freezing keeps full collections of a large fleet's heap off the loop.
    sandbox.start_master()
    logged(sandbox.master, "garbage collection paced: what lives 60 s is frozen")


# A soft limit on open files below what the minion holds: every new socket
# and file fails with EMFILE until the limit is raised again.
NO_DESCRIPTORS_LEFT = 8


def test_a_minion_whose_reconnect_failed_tries_again(sandbox):
    """A reconnect that fails before it has a socket (no descriptor left, as
    a swarm of 2,000 identities met) must be tried again, after the backoff,
    or the minion stays away for good."""
    enrol(sandbox, "web1")
    minion = sandbox.minions["web1"]
    pid = minion.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (NO_DESCRIPTORS_LEFT, hard))
    try:
        sandbox.stop(sandbox.master)
        failed = "cannot open a socket to the key port: Too many open files"
        wait_for(
            lambda: failed in minion.log_text(),
            SETTLE,
            "the minion's reconnect to fail for want of a descriptor",
        )
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    sandbox.start_master()
    wait_state(sandbox, "web1", "accepted", connected=True)
