"""Heartbeats, receipts and progress reports rely on the CURVE connection
(form "curve" in common/protocol.py): plain messages, taken as the accepted
minion's whose transport key sends them, and from no one else. Each test
names the protection it checks; each fails when that protection is taken out."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sqlite3
import time

import zmq

from safcm.common import codec
from safcm.common.loop import Loop
from safcm.common.protocol import MAX_PLAIN_NETWORK_BYTES, PROTOCOL_VERSION, MsgType, pack_plain
from safcm.master.db import DB_NAME
from safcm.master.sandbox import Sandbox, wait_for
from safcm.minion.daemon import Minion
from safcm.minion.settings import MinionSettings
from tests.system.conftest import (
    HEARTBEAT,
    SETTLE,
    accepted_fake,
    enrol,
    jobs_show,
    keys,
    logged,
    run_json,
    wait_state,
)

# Heartbeats one flood sends from an accepted key: well beyond the burst the
# master allows a key (master/intake.py CURVE_BURST).
FLOOD = 3000
# An hour: the step of a host's clock.
HOUR = 3600.0
# A heartbeat interval, in seconds, at which the master answers every second
# heartbeat (master/intake.py HEARTBEAT_REPLY_SLACK), and heartbeats a minion
# sends at it in a test: several of its liveness windows.
SPACED_INTERVAL = 1.0
LONG_RUN = 8


def test_an_accepted_keys_heartbeat_is_answered_and_makes_it_present(sandbox, fake):
    enrol(sandbox, "web1")
    web3 = accepted_fake(sandbox, fake, "web3")
    assert not keys(sandbox)["web3"]["connected"]  # enrolled, but no heartbeat yet
    web3.heartbeat(busy=None, interval=30.0)
    reply = web3.recv()
    assert reply.type is MsgType.HEARTBEAT_REPLY
    assert abs(reply.body["time"] - time.time()) < SETTLE  # the master's time
    assert keys(sandbox)["web3"]["connected"]


def test_a_heartbeat_counts_for_the_key_that_sent_it_whatever_its_body_says(sandbox, fake):
    enrol(sandbox, "web1")
    web3 = accepted_fake(sandbox, fake, "web3")
    sandbox.stop(sandbox.minions["web1"])
    wait_for(lambda: not keys(sandbox)["web1"]["connected"], SETTLE, "web1 to be gone")
    # A body cannot name a sender: one that tries is not a heartbeat.
    web3.heartbeat(id="web1", interval=30.0)
    assert web3.silent()
    logged(sandbox.master, "dropped a message from web3: HEARTBEAT body")
    web3.heartbeat(interval=30.0)
    assert web3.recv().type is MsgType.HEARTBEAT_REPLY
    listed = keys(sandbox)
    assert listed["web3"]["connected"] and not listed["web1"]["connected"]


def test_an_oversized_or_malformed_heartbeat_is_dropped_before_it_is_decoded(sandbox, fake):
    enrol(sandbox, "web1")
    web3 = accepted_fake(sandbox, fake, "web3")
    body = {"version": "x" * MAX_PLAIN_NETWORK_BYTES, "uptime": 1.0, "busy": None, "seq": 1}
    oversized = codec.pack([PROTOCOL_VERSION, int(MsgType.HEARTBEAT), {**body, "interval": 5.0}])
    web3.send_raw(oversized)
    logged(sandbox.master, f"from web3: a plain message of {len(oversized)} bytes")
    web3.send_raw(b"\x93\x01\x03\xc1")  # msgpack: 0xc1 is never used
    web3.heartbeat(seq="1")  # a body against its schema
    logged(sandbox.master, "dropped a message from web3: HEARTBEAT body.seq")
    assert web3.silent()
    assert not keys(sandbox)["web3"]["connected"]
    web3.heartbeat()  # the connection still serves
    assert web3.recv().type is MsgType.HEARTBEAT_REPLY


def test_a_minion_with_a_long_interval_has_every_second_heartbeat_answered(sandbox, fake):
    """A reply costs the master about what the heartbeat does, and a minion
    needs one within three intervals (minion/daemon.py LIVENESS): one is
    sent when the last is 1.5 intervals old (HEARTBEAT_REPLY_SPACING), where
    that leaves a second of slack (HEARTBEAT_REPLY_SLACK)."""
    enrol(sandbox, "web1")
    web3 = accepted_fake(sandbox, fake, "web3")
    web3.heartbeat(interval=30.0)
    first = web3.recv()
    assert first.type is MsgType.HEARTBEAT_REPLY
    skipped = web3.heartbeat(interval=30.0)
    assert web3.silent()
    # Unanswered, but taken: its sequence number counts, and web3 is seen.
    web3.send_raw(skipped)
    logged(sandbox.master, f"heartbeat {web3.seq} of web3 is not newer than its last")
    assert keys(sandbox)["web3"]["connected"]
    # An interval with less slack than that: every heartbeat is answered.
    for _ in range(3):
        web3.heartbeat(interval=HEARTBEAT)
        assert web3.recv().type is MsgType.HEARTBEAT_REPLY


def test_a_message_of_several_frames_is_dropped_whole(sandbox, fake):
    enrol(sandbox, "web1")
    web3 = accepted_fake(sandbox, fake, "web3")
    web3.heartbeat()
    assert web3.recv().type is MsgType.HEARTBEAT_REPLY
    # Valid heartbeats, each newer than the last, but as frames of one message:
    # none of them is taken, and the next message is read from its start.
    body = {"version": "fake", "uptime": 1.0, "busy": None, "interval": 5.0}
    web3.send_raw(
        *(pack_plain(MsgType.HEARTBEAT, {**body, "seq": web3.seq + i}) for i in (1, 2, 3))
    )
    logged(sandbox.master, "dropped a message of 3 frames instead of one")
    assert web3.silent()
    web3.seq += 3
    web3.heartbeat()
    assert web3.recv().type is MsgType.HEARTBEAT_REPLY


def _stored(sb: Sandbox, minion_id: str) -> tuple[float | None, int] | None:
    """A minion's last-seen time and heartbeat sequence number as the master's
    database holds them (read beside the running master, as WAL allows)."""
    path = os.path.join(sb.master.settings["state_dir"], DB_NAME)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT last_seen, seq FROM minions WHERE id = ?", (minion_id,))
        found = row.fetchone()
    return None if found is None else (found[0], found[1])


def test_last_seen_is_listed_at_once_and_stored_in_batches_that_survive_a_kill(sandbox, fake):
    """A heartbeat's last-seen time and sequence number are kept in memory
    (`keys list` shows them at once) and written back in one batch every
    SEQ_FLUSH seconds (master/daemon.py), not once per heartbeat; with no
    other write to carry them, the batch reaches the database on its own, so
    a master killed with SIGKILL loses at most that last stretch."""
    sandbox.start_master()
    web3 = accepted_fake(sandbox, fake, "web3")
    frame = web3.heartbeat(interval=30.0)
    answered = web3.recv().body["time"]  # the time the master took it at
    assert keys(sandbox)["web3"]["last_seen"] == answered
    wait_for(
        lambda: _stored(sandbox, "web3") == (answered, web3.seq), SETTLE, "the batch to be written"
    )
    sandbox.kill(sandbox.master)
    sandbox.start_master()
    listed = keys(sandbox)["web3"]
    assert listed["last_seen"] == answered and not listed["connected"]
    # The sequence number survived too: the same heartbeat again is a replay.
    web3.send_raw(frame)
    logged(sandbox.master, f"heartbeat {web3.seq} of web3 is not newer than its last")
    assert web3.silent()


def test_a_flood_of_heartbeats_from_an_accepted_key_is_rate_limited(sandbox, fake):
    enrol(sandbox, "web1")
    web3 = accepted_fake(sandbox, fake, "web3")
    for _ in range(FLOOD):
        web3.heartbeat()
    answered = 0
    while not web3.silent(2000):
        assert web3.recv().type is MsgType.HEARTBEAT_REPLY
        answered += 1
    assert 0 < answered < FLOOD
    logged(sandbox.master, "plain messages come faster than allowed for this key")
    # Each dropped heartbeat may cost a log line only within the log's own rate.
    lines = sandbox.master.log_text().count("faster than allowed for this key")
    assert lines < (FLOOD - answered) // 2
    code, _ = run_json(sandbox, "web1", "ping")
    assert code == 0


def test_a_receipt_counts_only_for_a_job_sent_to_its_sender(sandbox, fake):
    enrol(sandbox, "web1")
    web3 = accepted_fake(sandbox, fake, "web3")
    _, doc = run_json(sandbox, "web1", "ping")
    stored = jobs_show(sandbox, doc["jid"])
    web3.send_plain(MsgType.JOB_RECEIPT, {"jid": doc["jid"]})
    logged(sandbox.master, f"receipt for job {doc['jid']}, never sent to it")
    web3.send_plain(MsgType.JOB_PROGRESS, {"jid": doc["jid"], "elapsed": 3.0})
    logged(sandbox.master, f"progress from web3 on job {doc['jid']}, which was never sent to it")
    assert jobs_show(sandbox, doc["jid"]) == stored


def _in_process_minion(
    sb: Sandbox, minion_id: str, loop: Loop, ctx, worker, clock, interval: float = HEARTBEAT
) -> Minion:
    """A real Minion in this process, on `loop`, whose wall clock is `clock`."""
    settings = sb.master.settings
    root = os.path.join(sb.base, "roots", minion_id)
    os.makedirs(root)
    ms = MinionSettings(
        id=minion_id,
        master="127.0.0.1",
        publish_port=settings["publish_port"],
        return_port=settings["return_port"],
        key_port=settings["key_port"],
        master_fingerprint=sb.master_fingerprint(),
        state_dir=os.path.join(sb.base, "minions", minion_id),
        root=root,
        heartbeat_interval=interval,
    )
    return Minion(ms, loop=loop, ctx=ctx, worker=worker, clock=clock)


def test_a_minion_learns_the_masters_time_from_heartbeat_replies(sandbox):
    sandbox.configure_master(auto_accept=True)
    sandbox.start_master()
    step = [0.0]  # what this host's wall clock is off by, in seconds
    loop, ctx = Loop(), zmq.Context()
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    minion = _in_process_minion(
        sandbox, "web7", loop, ctx, worker, clock=lambda: time.time() + step[0]
    )

    def run_until(done, what: str) -> None:
        deadline = time.monotonic() + SETTLE
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            loop.run_once(0.05)

    try:
        minion.start()
        run_until(lambda: minion.accepted and minion.seq >= 2, "heartbeats to be answered")
        assert abs(minion.offset) < 1.0
        # The host's clock steps back an hour while connected: there is no new
        # key reply, so only the heartbeat replies can tell the minion.
        step[0] = -HOUR
        run_until(lambda: abs(minion.offset - HOUR) < SETTLE, "the master's time to be learnt")
        assert abs(minion.clock() - time.time()) < SETTLE
    finally:
        worker.shutdown(wait=True)
        minion.close()
        loop.close()
        ctx.term()
    assert keys(sandbox)["web7"]["state"] == "accepted"


def test_a_minion_answered_every_second_heartbeat_stays_connected(sandbox, caplog):
    """With a long enough interval the master answers every second heartbeat
    (HEARTBEAT_REPLY_SPACING); the minion's liveness check (three intervals
    without a reply) must never take that for a master that went away."""
    sandbox.configure_master(auto_accept=True)
    sandbox.start_master()
    loop, ctx = Loop(), zmq.Context()
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    minion = _in_process_minion(
        sandbox, "web7", loop, ctx, worker, clock=time.time, interval=SPACED_INTERVAL
    )
    try:
        minion.start()
        deadline = time.monotonic() + SETTLE + LONG_RUN * SPACED_INTERVAL
        while not (minion.accepted and minion.seq >= LONG_RUN):
            assert time.monotonic() < deadline, "timed out waiting for the heartbeats"
            loop.run_once(0.05)
    finally:
        worker.shutdown(wait=True)
        minion.close()
        loop.close()
        ctx.term()
    assert "no reply from the master" not in caplog.text
    assert keys(sandbox)["web7"]["connected"]


def test_a_minion_that_stood_still_keeps_its_connection(sandbox):
    """A minion frozen for longer than LIVENESS heartbeat intervals (as a
    loop waiting seconds on a slow disk is) sent no heartbeat meanwhile: it
    does not blame the master for the silence, and keeps its connection."""
    enrol(sandbox, "web1")
    minion = sandbox.minions["web1"]
    assert minion.proc is not None
    os.kill(minion.proc.pid, signal.SIGSTOP)
    try:
        wait_state(sandbox, "web1", "accepted", connected=False)  # silent long enough
    finally:
        os.kill(minion.proc.pid, signal.SIGCONT)
    wait_state(sandbox, "web1", "accepted", connected=True)
    code, _ = run_json(sandbox, "web1", "ping")
    assert code == 0
    assert "no reply from the master" not in minion.log_text()
