"""Content travels only when needed (issue 11, point 5): a host that has a
job's content is sent its manifest only; one that lost it asks, and gets
only content of its own job."""

from __future__ import annotations

import hashlib
import os
import re
import shutil

from safcm.common.protocol import MsgType
from safcm.master.sandbox import wait_for
from tests.system.conftest import (
    SETTLE,
    accepted_fake,
    by_host,
    enrol,
    logged,
    run_json,
    wait_state,
)

MOTD = os.path.join("all", "files", "etc", "motd")


def carried(sandbox, minion: str, jid: str) -> tuple[int, int]:
    """(files, contents carried) of job `jid` as the minion logged its arrival."""
    pattern = rf"job {jid} received \(files, (\d+) files, (\d+) contents carried\)"
    found = wait_for(
        lambda: re.search(pattern, sandbox.minions[minion].log_text()), SETTLE, "the job's arrival"
    )
    return int(found.group(1)), int(found.group(2))


def test_a_host_is_sent_only_the_content_it_lacks(sandbox):
    enrol(sandbox, "web1")
    code, first = run_json(sandbox, "web1", "files")
    assert code == 0 and by_host(first)["web1"]["status"] == "changed"
    files, contents = carried(sandbox, "web1", first["jid"])
    assert files > 0 and contents > 0  # the first job carries everything

    code, again = run_json(sandbox, "web1", "files")
    assert code == 0 and by_host(again)["web1"]["status"] == "ok"
    assert carried(sandbox, "web1", again["jid"]) == (files, 0)  # a manifest, no content

    # One file changes in the repository: its content alone travels.
    with open(os.path.join(sandbox.config_dir, MOTD), "a") as f:
        f.write("maintenance on Sunday\n")
    code, changed = run_json(sandbox, "web1", "files")
    assert code == 0 and by_host(changed)["web1"]["status"] == "changed"
    assert carried(sandbox, "web1", changed["jid"]) == (files, 1)
    with open(os.path.join(sandbox.minions["web1"].settings["root"], "etc", "motd")) as f:
        assert f.read().endswith("maintenance on Sunday\n")


def test_a_host_that_lost_its_cache_asks_and_applies_the_job_whole(sandbox):
    enrol(sandbox, "web1")
    assert run_json(sandbox, "web1", "files")[0] == 0
    # The minion's content cache is lost (a reinstall of the state, a full
    # disk cleaned up), and one entry of what is left would be damaged.
    web1 = sandbox.minions["web1"]
    sandbox.stop(web1)
    shutil.rmtree(os.path.join(web1.settings["state_dir"], "content"))
    sandbox.start_minion("web1")
    wait_state(sandbox, "web1", "accepted", connected=True)
    code, doc = run_json(sandbox, "web1", "files")
    assert code == 0, doc
    assert by_host(doc)["web1"]["status"] == "ok"  # nothing to change, but all content needed
    _files, contents = carried(sandbox, "web1", doc["jid"])
    assert contents == 0
    logged(web1, f"job {doc['jid']}: asking the master for")
    logged(sandbox.master, f"job {doc['jid']}: sent web1")


def test_a_minion_gets_only_content_of_its_own_open_job(sandbox, fake):
    enrol(sandbox, "web1")
    assert run_json(sandbox, "web1", "files")[0] == 0
    web3 = accepted_fake(sandbox, fake, "web3")
    web3.heartbeat()
    assert web3.recv().type is MsgType.HEARTBEAT_REPLY
    run = sandbox.spawn_cli("run", "web*", "files", "--json", "--timeout", "30")
    try:
        _frame, job = web3.recv_job(10_000)
        web3.send_plain(MsgType.JOB_RECEIPT, {"jid": job.jid})
        mine = {f["digest"]: f["data"] for f in job.body["files"] if f["digest"] is not None}
        digest = next(iter(mine))

        # Its own job's content: sent, and it is what the digest names.
        web3.send_raw(
            web3.seal(MsgType.CONTENT_REQUEST, {"jid": job.jid, "digests": [digest]}, jid=job.jid)
        )
        reply = web3.recv()
        assert reply.type is MsgType.CONTENT and reply.body["jid"] == job.jid
        [blob] = reply.body["blobs"]
        assert hashlib.sha256(blob).digest() == digest

        # Content of the same job that only another host's part names: refused.
        path = os.path.join(sandbox.config_dir, "web1", "files", "etc", "app", "feature-flags.conf")
        with open(path, "rb") as f:
            stranger = hashlib.sha256(f.read()).digest()
        assert stranger not in mine
        web3.send_raw(
            web3.seal(MsgType.CONTENT_REQUEST, {"jid": job.jid, "digests": [stranger]}, jid=job.jid)
        )
        assert web3.silent()
        logged(sandbox.master, f"job {job.jid}: web3 asked for 1 contents its job does not name")
        # A job that never went to it: refused before anything is read.
        web3.send_raw(
            web3.seal(
                MsgType.CONTENT_REQUEST,
                {"jid": "20260101T000000.000001Z", "digests": [digest]},
                jid="20260101T000000.000001Z",
            )
        )
        assert web3.silent()
        logged(sandbox.master, "content request from web3 for job 20260101T000000.000001Z")
    finally:
        run.kill()
        run.communicate()
    assert sandbox.master.running
