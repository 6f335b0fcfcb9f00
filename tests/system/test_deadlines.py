"""A job's deadline covers its triggers: a minion still working reports so, and
the run that started the job waits for its result instead of calling the
host "no response"."""

from __future__ import annotations

import os
import time

import yaml

from safcm.common.protocol import MsgType
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


def test_a_result_after_no_response_is_stored_as_late(sandbox, fake):
    enrol(sandbox, "web1")
    web3 = accepted_fake(sandbox, fake, "web3")
    web3.heartbeat()
    assert web3.recv_sealed().type is MsgType.HEARTBEAT_REPLY
    run = sandbox.spawn_cli("run", "web3", "ping", "--json", "--timeout", str(TIMEOUT))
    _frame, job = web3.recv_job(10_000)
    web3.send_raw(web3.seal(MsgType.JOB_RECEIPT, {"jid": job.jid}, jid=job.jid))
    out, _ = run.communicate(timeout=30)
    # The CLI heard "no response" at the deadline, once.
    assert by_host(schemas.loads(out, "run"))["web3"]["status"] == "no response"
    [stored] = jobs_show(sandbox, job.jid)["hosts"]
    assert stored["status"] == "no response" and stored["received"] is not None

    # The truth of what happened on the host is still stored when it comes.
    web3.send_raw(web3.seal(MsgType.RESULT, ping_result(time.time()), jid=job.jid))
    receipt = web3.recv_sealed()
    assert receipt.type is MsgType.RESULT_RECEIPT and receipt.body["jid"] == job.jid
    logged(sandbox.master, f"job {job.jid}: late result from web3, stored after the deadline")
    [stored] = jobs_show(sandbox, job.jid)["hosts"]
    assert stored["status"] == "ok" and stored["result"]["ping"]["version"] == "fake"
    assert sandbox.master.log_text().count(f"job {job.jid}: no response from web3") == 1
    # Progress after the end changes nothing, and is not passed on.
    web3.send_raw(web3.seal(MsgType.JOB_PROGRESS, {"jid": job.jid, "elapsed": 9.0}, jid=job.jid))
    web3.send_raw(web3.seal(MsgType.RESULT, ping_result(time.time()), jid=job.jid))
    assert web3.recv_sealed().type is MsgType.RESULT_RECEIPT  # a duplicate, confirmed again
    logged(sandbox.master, f"job {job.jid}: duplicate result from web3")
    assert f"job {job.jid}: web3 still working" not in sandbox.master.log_text()
