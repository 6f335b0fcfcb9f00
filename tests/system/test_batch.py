"""`run --batch N|N% [--batch-fail K]` against real daemons: one job per
batch, each started only once the one before has answered; a failure limit
that leaves the rest not run; a CLI that leaves stops the rollout."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import time

import yaml

from safcm.common.protocol import MsgType
from tests import schemas
from tests.system.conftest import (
    SETTLE,
    accepted_fake,
    by_host,
    enrol,
    jobs_list,
    jobs_show,
    logged,
    run_json,
)
from tests.system.fake import ping_result

NOT_RUN = "not run: the batch failure limit was reached"
# The job timeout of a run with a stopped minion, in seconds: its "no
# response" comes this soon.
SHORT_TIMEOUT = "2"


def answer(fake, job) -> None:
    """The fake minion's result for `job`, confirmed by the master."""
    fake.send_raw(fake.seal(MsgType.RESULT, ping_result(time.time()), jid=job.jid))
    receipt = fake.recv()
    assert receipt.type is MsgType.RESULT_RECEIPT and receipt.body["jid"] == job.jid


def test_each_batch_starts_when_the_one_before_has_answered(sandbox, fake):
    enrol(sandbox, "web1", "web3")
    web2 = accepted_fake(sandbox, fake, "web2")
    run = sandbox.spawn_cli("run", "web*", "ping", "--batch", "1", "--json")
    # Batch 2 is web2's job; it holds it, unanswered.
    _frame, job = web2.recv_job(SETTLE * 1000)
    [second, first] = jobs_list(sandbox)
    assert second["jid"] == job.jid
    assert [h["host"] for h in jobs_show(sandbox, first["jid"])["hosts"]] == ["web1"]
    assert [h["host"] for h in jobs_show(sandbox, job.jid)["hosts"]] == ["web2"]
    # Nothing goes to web3 while web2 has not answered: the master has only
    # these two jobs (it stores a job before it publishes it).
    assert len(jobs_list(sandbox)) == 2
    answer(web2, job)
    out, err = run.communicate(timeout=SETTLE)
    assert run.returncode == 0, err
    doc = schemas.loads(out, "run")
    assert [b["hosts"] for b in doc["batches"]] == [["web1"], ["web2"], ["web3"]]
    jids = [b["jid"] for b in doc["batches"]]
    assert jids[:2] == [first["jid"], job.jid] and doc["jid"] == jids[0]
    assert {h["host"]: h["status"] for h in doc["hosts"]} == dict.fromkeys(
        ["web1", "web2", "web3"], "ok"
    )
    assert doc["summary"]["not run"] == 0 and doc["summary"]["hosts"] == 3
    # Each batch's job was submitted after every host of the one before returned.
    shown = [jobs_show(sandbox, jid) for jid in jids]
    for before, after in itertools.pairwise(shown):
        assert after["submitted"] >= max(h["returned"] for h in before["hosts"])


def test_a_percentage_is_rounded_up(sandbox):
    enrol(sandbox, "web1", "web2", "web3", "db1")
    # 30% of 4 hosts is 1.2: batches of 2, never of 1.
    code, doc = run_json(sandbox, "*", "ping", "--batch", "30%")
    assert code == 0
    assert [b["hosts"] for b in doc["batches"]] == [["db1", "web1"], ["web2", "web3"]]
    assert doc["summary"]["ok"] == 4 and doc["summary"]["not run"] == 0
    human = sandbox.cli("run", "*", "ping", "--batch", "75%")
    assert human.returncode == 0, human.stderr
    assert "batch 1 of 2: job " in human.stdout and " on 3 hosts: ping" in human.stdout
    assert "batch 2 of 2: job " in human.stdout and " on 1 host: ping" in human.stdout
    assert "4 hosts targeted: 0 changed, 4 ok" in human.stdout
    assert "not run" not in human.stdout


def plant_failure(sandbox, host: str) -> None:
    """A non-empty directory where the host's /etc/motd must go: its files run fails."""
    os.makedirs(os.path.join(sandbox.root(host), "etc/motd/kept"))


def test_the_failure_limit_stops_the_rollout_and_reports_the_rest_as_not_run(sandbox):
    enrol(sandbox, "web1", "web2", "web3", "db1")
    plant_failure(sandbox, "db1")
    sandbox.stop(sandbox.minions["web1"])
    # db1 fails, web1 does not respond: two failures, and web2 and web3 are
    # never sent the job.
    code, doc = run_json(
        sandbox,
        "*",
        "files",
        "--batch",
        "1",
        "--batch-fail",
        "2",
        "--timeout",
        SHORT_TIMEOUT,
    )
    assert code == 1
    hosts = by_host(doc)
    assert hosts["db1"]["status"] == "failed" and hosts["web1"]["status"] == "no response"
    for host in ("web2", "web3"):
        assert hosts[host] == {"host": host, "status": "skipped", "reason": NOT_RUN}
        assert os.listdir(sandbox.root(host)) == []
    assert [b["hosts"] for b in doc["batches"]] == [["db1"], ["web1"]]
    summary = doc["summary"]
    assert (summary["failed"], summary["no response"], summary["skipped"]) == (1, 1, 2)
    assert summary["not run"] == 2 and summary["hosts"] == 2
    assert len(jobs_list(sandbox)) == 2
    logged(sandbox.master, "stopped after 2 failed hosts (--batch-fail 2); 2 hosts not run")

    human = sandbox.cli(
        "run", "*", "files", "--batch", "1", "--batch-fail", "2", "--timeout", SHORT_TIMEOUT
    )
    assert human.returncode == 1
    assert "batch 1 of 4: job " in human.stdout and "batch 2 of 4: job " in human.stdout
    assert "batch 3 of 4" not in human.stdout
    assert "4 hosts targeted: 0 changed, 0 unchanged, 1 failed, 1 no response" in human.stdout
    assert "2 not run: stopped after 2 failures: web2, web3" in human.stdout
    assert len(jobs_list(sandbox)) == 4

    # Without a limit, a failure stops nothing: every batch runs.
    code, doc = run_json(sandbox, "db1,web2,web3", "files", "--batch", "1")
    assert code == 1 and doc["summary"]["not run"] == 0
    assert by_host(doc)["web3"]["status"] == "changed"


def test_a_cli_that_leaves_mid_rollout_stops_further_batches(sandbox, fake):
    enrol(sandbox, "web2")
    web1 = accepted_fake(sandbox, fake, "web1")
    run = sandbox.spawn_cli("run", "web1,web2", "ping", "--batch", "1")
    _frame, job = web1.recv_job(SETTLE * 1000)
    assert "batch 1 of 2" in run.stdout.readline()  # the CLI has heard of the job
    run.send_signal(signal.SIGINT)
    _out, err = run.communicate(timeout=SETTLE)
    assert run.returncode == 130
    assert f"job {job.jid} (batch 1 of 2) goes on, no further batch starts" in err
    logged(sandbox.master, "its CLI left; batch 1 of 2 completes, 1 hosts will not be run")
    # The running batch completes; the next never starts.
    answer(web1, job)
    logged(sandbox.master, "stopped, as no CLI watches it; 1 hosts not run")
    assert [j["jid"] for j in jobs_list(sandbox)] == [job.jid]
    assert jobs_show(sandbox, job.jid)["hosts"][0]["status"] == "ok"


def test_usage_errors(sandbox):
    for args, message in [
        (["--batch", "0"], "--batch '0'"),
        (["--batch", "101%"], "--batch '101%'"),
        (["--batch", "ten"], "--batch 'ten'"),
        (["--batch-fail", "2"], "--batch-fail needs --batch"),
        (["--batch", "2", "--batch-fail", "0"], "--batch-fail '0'"),
    ]:
        # No daemon runs: these are refused before the CLI connects.
        result = sandbox.cli("run", "*", "ping", *args)
        assert result.returncode == 2, args
        assert message in result.stderr and "daemon" not in result.stderr, result.stderr
        code, doc = run_json(sandbox, "*", "ping", *args)
        assert code == 2 and doc["error"]["kind"] == "usage"


def test_every_batch_gets_the_configuration_compiled_at_the_start(sandbox):
    # web1's trigger edits the repository while its batch runs: web2's batch,
    # started after, still gets what was compiled before the first.
    motd = os.path.join(sandbox.config_dir, "all", "files", "etc", "motd")
    with open(os.path.join(sandbox.config_dir, "web1", "triggers.yaml"), "w") as f:
        yaml.safe_dump({"/etc/app/feature-flags.conf": [f"echo edited mid-rollout >> {motd}"]}, f)
    enrol(sandbox, "web1", "web2")
    before = sandbox.cli("show", "web2", "--json")
    [compiled] = [
        f for f in schemas.loads(before.stdout, "show")["files"] if f["path"] == "/etc/motd"
    ]
    code, doc = run_json(sandbox, "web*", "files", "--batch", "1")
    assert code == 0 and [b["hosts"] for b in doc["batches"]] == [["web1"], ["web2"]]
    with open(motd) as f:
        assert "edited mid-rollout" in f.read()  # the repository did change in between
    with open(os.path.join(sandbox.root("web2"), "etc/motd"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == compiled["sha256"]
