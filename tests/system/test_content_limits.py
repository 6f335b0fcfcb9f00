"""What a minion that asks for content can cost the master (issue 11 point 5,
and the bounded-cost rule of DESIGN.md section 4): content is sent at
CONTENT_RATE per minion at most, and replies queued for a minion that stops
reading are capped at RETURN_SNDHWM. Both are checked against a scriptable
minion with a job open, while a real minion is served meanwhile."""

from __future__ import annotations

import hashlib
import os
import time

import zmq

from safcm.common.protocol import MsgType
from safcm.master.intake import CONTENT_BURST, CONTENT_RATE, RETURN_SNDHWM
from safcm.master.sandbox import wait_for
from tests.system.conftest import (
    SETTLE,
    accepted_fake,
    by_host,
    enrol,
    logged,
    run_json,
)
from tests.system.fake import curve_socket

BLOB = os.path.join("all", "files", "srv", "blob")
# Bytes of kernel receive buffer of the connection that stops reading.
SLOW_RCVBUF = 64 * 1024


def _sysctl(name: str) -> int:
    with open("/proc/sys/" + name.replace(".", "/")) as f:
        return int(f.read().split()[-1])


def _open_job_with_blob(sandbox, fake, size: int):
    """web1 (real) and web3 (scriptable) with a `files` job open for web3,
    whose files include one of `size` bytes; returns (web3, jid, digest, the
    running CLI)."""
    os.makedirs(os.path.dirname(os.path.join(sandbox.config_dir, BLOB)), exist_ok=True)
    data = os.urandom(size)
    with open(os.path.join(sandbox.config_dir, BLOB), "wb") as f:
        f.write(data)
    enrol(sandbox, "web1")
    web3 = accepted_fake(sandbox, fake, "web3")
    web3.heartbeat()
    assert web3.recv().type is MsgType.HEARTBEAT_REPLY
    run = sandbox.spawn_cli("run", "web*", "files", "--json", "--timeout", "120")
    _frame, job = web3.recv_job(10_000)
    web3.send_plain(MsgType.JOB_RECEIPT, {"jid": job.jid})
    digest = hashlib.sha256(data).digest()
    assert any(f["digest"] == digest for f in job.body["files"])
    return web3, job.jid, digest, run


def _content_request(web3, jid: str, digest: bytes) -> bytes:
    return web3.seal(MsgType.CONTENT_REQUEST, {"jid": jid, "digests": [digest]}, jid=jid)


def _still_serves_web1(sandbox) -> None:
    code, doc = run_json(sandbox, "web1", "ping")
    assert code == 0 and by_host(doc)["web1"]["status"] == "ok", doc


def test_content_is_sent_to_a_minion_at_its_rate_at_most(sandbox, fake):
    size = 2 * 1024 * 1024
    web3, jid, digest, run = _open_job_with_blob(sandbox, fake, size)
    try:
        # One request at a time, each reply read before the next is sent (so
        # no queue limit drops anything): within the burst each is answered,
        # then the rate stops them. Far more is asked than the burst and the
        # rate could grant in the time it takes.
        asked = 4 * CONTENT_BURST // size
        answered = 0
        began = time.monotonic()
        for _ in range(asked):
            web3.send_raw(_content_request(web3, jid, digest))
            if web3.silent(2000):
                break
            reply = web3.recv()
            assert reply.type is MsgType.CONTENT and reply.body["blobs"] == [reply.body["blobs"][0]]
            assert hashlib.sha256(reply.body["blobs"][0]).digest() == digest
            answered += 1
        elapsed = time.monotonic() - began
        assert answered < asked, "every request was answered: no rate applied"
        assert answered >= CONTENT_BURST // size - 1  # the burst is granted
        assert answered * size <= CONTENT_BURST + CONTENT_RATE * elapsed + size
        logged(sandbox.master, "content requests of web3 come faster than allowed")
        _still_serves_web1(sandbox)
    finally:
        run.kill()
        run.communicate()
    assert sandbox.master.running


def test_replies_for_a_minion_that_stops_reading_are_capped(sandbox, fake):
    size = 512 * 1024
    web3, jid, digest, run = _open_job_with_blob(sandbox, fake, size)
    try:
        # web3 asks on a second connection that stops reading, made to buffer
        # as little as it can on its side (set before connecting: libzmq
        # applies these to new connections only), so what it gets later is
        # what the master kept queued for it, plus what the kernel held.
        slow = curve_socket(zmq.DEALER, web3.master_keys, web3.keys, None)
        slow.setsockopt(zmq.RCVHWM, 1)
        slow.setsockopt(zmq.RCVBUF, SLOW_RCVBUF)
        slow.connect(web3.address("return"))
        asked = CONTENT_BURST // size - 4  # within the burst: the rate refuses none
        for _ in range(asked):
            slow.send(_content_request(web3, jid, digest))
        marker = f"job {jid}: sent web3 1 contents it lacked"
        wait_for(
            lambda: sandbox.master.log_text().count(marker) >= asked,
            SETTLE,
            "the master to handle every request",
        )
        _still_serves_web1(sandbox)  # meanwhile the master serves everyone else
        got = 0
        while slow.poll(2000):
            slow.recv()
            got += 1
        assert got > 0
        # Without the cap every reply would wait in the master for web3:
        # with it, RETURN_SNDHWM of them, what the master's kernel send
        # buffer holds (net.core.wmem_max at most) and web3's small receive
        # buffer, and a few in flight in both libzmqs.
        kernel = (_sysctl("net.core.wmem_max") + SLOW_RCVBUF) // size + 1
        assert got <= RETURN_SNDHWM + kernel + 6 < asked, (got, asked)
    finally:
        slow.close(0)
        run.kill()
        run.communicate()
    assert sandbox.master.running
