"""A job's deadline covers its triggers: a minion still working reports so, and
the run that started the job waits for its result instead of calling the
host "no response"."""

from __future__ import annotations

import os
import re
import signal
import time

import yaml

from safcm.common.protocol import MsgType
from safcm.master.sandbox import wait_for
from tests import schemas
from tests.system.conftest import accepted_fake, by_host, enrol, jobs_show, logged, run_json
from tests.system.fake import ping_result

# The job's timeout, and a trigger that outlasts it by far, in seconds.
TIMEOUT = 1
TRIGGER_SLEEP = 4


def test_triggers_that_outlast_the_timeout_are_waited_for(sandbox):
    path = os.path.join(sandbox.config_dir, "web1", "triggers.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"/etc/app/feature-flags.conf": [f"sleep {TRIGGER_SLEEP}"]}, f)
    enrol(sandbox, "web1", "web2")

    code, doc = run_json(sandbox, "web*", "files", "--timeout", str(TIMEOUT))
    assert code == 0, doc
    assert doc["summary"]["no response"] == 0
    web1 = by_host(doc)["web1"]
    assert web1["status"] == "changed"
    [trigger] = [t for t in web1["result"]["apply"]["triggers"] if t["command"].startswith("sleep")]
    assert trigger["status"] == "ok" and trigger["duration"] >= TRIGGER_SLEEP
    stored = {h["host"]: h for h in jobs_show(sandbox, doc["jid"])["hosts"]}
    assert stored["web1"]["status"] == "changed" and stored["web2"]["status"] == "changed"
    assert f"job {doc['jid']}: web1 still working" in sandbox.master.log_text()


def test_a_result_after_the_deadline_is_stored_and_shown_as_late(sandbox):
    # web1's trigger starts, then its minion is frozen (SIGSTOP) so it can
    # neither answer nor report progress: the run ends with "no response" and
    # points to jobs show. Thawed, the minion sends its result, which is stored
    # and marked as late.
    marker = os.path.join(sandbox.base, "trigger-started")
    path = os.path.join(sandbox.config_dir, "web1", "triggers.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"/etc/app/feature-flags.conf": [f"touch {marker}; sleep 1"]}, f)
    enrol(sandbox, "web1")
    minion = sandbox.minions["web1"].proc
    cli = sandbox.spawn_cli("run", "web1", "files", "--timeout", str(TIMEOUT))
    try:
        wait_for(lambda: os.path.exists(marker), 60, "web1's trigger to start")
        os.kill(minion.pid, signal.SIGSTOP)
        out, err = cli.communicate(timeout=120)
    finally:
        os.kill(minion.pid, signal.SIGCONT)
    assert cli.returncode == 1, err
    assert "web1: no response" in out
    jid = re.search(r"job (\S+):", out).group(1)
    hint = "a result that arrives after the deadline is still stored: see safcm-master jobs show"
    assert f"{hint} {jid}" in out

    logged(sandbox.master, f"job {jid}: late result from web1")
    shown = jobs_show(sandbox, jid)
    [web1] = shown["hosts"]
    assert web1["status"] == "changed" and web1["late"] is True
    human = sandbox.cli("jobs", "show", jid)
    assert "result arrived after the deadline, at " in human.stdout
    # A host that answered in time is not late.
    code, doc = run_json(sandbox, "web1", "ping")
    assert code == 0 and jobs_show(sandbox, doc["jid"])["hosts"][0]["late"] is False


def test_a_result_after_no_response_is_stored_as_late(sandbox, fake):
    enrol(sandbox, "web1")
    web3 = accepted_fake(sandbox, fake, "web3")
    web3.heartbeat()
    assert web3.recv().type is MsgType.HEARTBEAT_REPLY
    run = sandbox.spawn_cli("run", "web3", "ping", "--json", "--timeout", str(TIMEOUT))
    _frame, job = web3.recv_job(10_000)
    web3.send_plain(MsgType.JOB_RECEIPT, {"jid": job.jid})
    out, _ = run.communicate(timeout=30)
    # The CLI heard "no response" at the deadline, once.
    assert by_host(schemas.loads(out, "run"))["web3"]["status"] == "no response"
    [stored] = jobs_show(sandbox, job.jid)["hosts"]
    assert stored["status"] == "no response" and stored["received"] is not None

    # The truth of what happened on the host is still stored when it comes.
    web3.send_raw(web3.seal(MsgType.RESULT, ping_result(time.time()), jid=job.jid))
    receipt = web3.recv()
    assert receipt.type is MsgType.RESULT_RECEIPT and receipt.body["jid"] == job.jid
    logged(sandbox.master, f"job {job.jid}: late result from web3, stored after the deadline")
    [stored] = jobs_show(sandbox, job.jid)["hosts"]
    assert stored["status"] == "ok" and stored["result"]["ping"]["version"] == "fake"
    assert sandbox.master.log_text().count(f"job {job.jid}: no response from web3") == 1
    # Progress after the end changes nothing, and is not passed on.
    web3.send_plain(MsgType.JOB_PROGRESS, {"jid": job.jid, "elapsed": 9.0})
    web3.send_raw(web3.seal(MsgType.RESULT, ping_result(time.time()), jid=job.jid))
    assert web3.recv().type is MsgType.RESULT_RECEIPT  # a duplicate, confirmed again
    logged(sandbox.master, f"job {job.jid}: duplicate result from web3")
    assert f"job {job.jid}: web3 still working" not in sandbox.master.log_text()
