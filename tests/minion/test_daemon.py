"""The minion daemon's own state, without a master: jobs acknowledged before a
restart are applied after it, exactly once, and their results are spooled."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import logging
import os
import time
from collections.abc import Callable

import pytest
import zmq

from safcm.common import codec
from safcm.common.crypto import Header, KeyPair
from safcm.common.errors import StoreError
from safcm.common.loop import Loop
from safcm.common.model import FileSpec, FileType
from safcm.common.protocol import (
    MASTER_ID,
    PROTOCOL_VERSION,
    RESULT,
    Channel,
    KeyState,
    MsgType,
    SeenJids,
    decode_plain,
    encode_plain,
    make_enrol_reply,
    make_key_reply,
)
from safcm.common.schema import validate
from safcm.master.sandbox import free_ports
from safcm.minion import daemon, results, settings
from safcm.minion.spool import Kind, Spool
from tests.garbage import garbage_kept

JID = "20260101T000000.000001Z"
JID2 = "20260101T000000.000002Z"
JID3 = "20260101T000000.000003Z"
HOUR = 3600.0
# Seconds until a job's first progress report: its timer, cancelled when the
# job is done, is dropped by the loop once due.
CANCELLED_TIMER_DUE = 0.2
# Seconds a test waits for the minion's sockets to connect or disconnect.
SETTLE_S = 20.0
# Descriptor numbers above the highest open one whose pyzmq monitor
# endpoint names a test takes too: the sockets it makes get numbers below.
FDS_BEYOND = 64


def minion_settings(tmp_path) -> settings.MinionSettings:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    publish_port, return_port, key_port = free_ports(3)
    return settings.parse(
        f"id: web1\nmaster: 127.0.0.1\npublish_port: {publish_port}\n"
        f"return_port: {return_port}\nkey_port: {key_port}\n"
        f"state_dir: {tmp_path / 'state'}\nroot: {root}\n"
        "trust_first_master: true\n"
    )


def job_body(path: str, deadline: float = 4e9) -> dict:
    spec = FileSpec(path, FileType.FILE, 0o644, user="root", group="root", data=b"hello\n")
    return {
        "module": "files",
        "dry_run": False,
        "files": [spec.to_wire()],
        "absent": [],
        "purge": [],
        "secrets": [],
        "deadline": deadline,
    }


def run_minion(s: settings.MinionSettings, until) -> None:
    ctx = zmq.Context()
    loop = Loop()
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    minion = daemon.Minion(s, loop=loop, ctx=ctx, worker=worker)
    minion.start()
    loop.call_every(0.02, lambda: until(minion) and loop.stop())
    loop.call_later(20, loop.stop)
    loop.run()
    worker.shutdown(wait=True)
    minion.close()
    loop.close()
    ctx.term()


def keep_job(s: settings.MinionSettings, jid: str, body: dict) -> None:
    """A job accepted before a restart: its jid seen and the job kept, as
    Minion.on_job() records them."""
    header = Header(PROTOCOL_VERSION, int(MsgType.JOB), jid, MASTER_ID, "web1", 1, 2)
    os.makedirs(s.state_dir, mode=0o700, exist_ok=True)
    with SeenJids(os.path.join(s.state_dir, daemon.SEEN_DB)) as seen:
        seen.check_and_add(header, keep_until=4e9, now=0.0, keep=codec.pack(body))


def test_kept_jobs_resume_after_a_restart_and_run_once(tmp_path):
    s = minion_settings(tmp_path)
    spool = Spool(os.path.join(s.state_dir, daemon.SPOOL_DIR))
    # Acknowledged before a restart: a job not yet applied; one whose result
    # was written just before the crash (the job not yet dropped); and one an
    # earlier minion spooled as a file.
    keep_job(s, JID, job_body("/resumed"))
    keep_job(s, JID2, job_body("/already-done"))
    earlier = codec.pack(results.ping_result("earlier", started=1.0, finished=1.0))
    spool.put(Kind.RESULT, JID2, earlier)
    spool.put(Kind.JOB, JID3, codec.pack(job_body("/spooled")))
    spool.close()

    run_minion(
        s, lambda m: not m.queue and m.busy is None and JID in m.outgoing and JID3 in m.outgoing
    )

    for name in ("resumed", "spooled"):
        with open(os.path.join(s.root, name)) as f:
            assert f.read() == "hello\n"
    assert not os.path.exists(os.path.join(s.root, "already-done"))  # not applied twice
    with SeenJids(os.path.join(s.state_dir, daemon.SEEN_DB)) as seen:
        assert seen.kept() == []  # each dropped once its result was spooled
    spool = Spool(os.path.join(s.state_dir, daemon.SPOOL_DIR))
    assert spool.jids(Kind.JOB) == []
    assert spool.jids(Kind.RESULT) == [JID, JID2, JID3]
    result = codec.unpack(spool.get(Kind.RESULT, JID), max_depth=16)
    assert result["status"] == "ok"
    assert [c["path"] for c in result["apply"]["changes"]] == ["/resumed"]
    assert spool.get(Kind.RESULT, JID2) == earlier
    spool.close()


def test_a_result_is_not_sent_while_its_job_cannot_be_dropped(tmp_path, monkeypatch):
    """Once the master had the result, the minion would delete it: a job
    still kept then would be applied again by the next start."""
    s = minion_settings(tmp_path)
    keep_job(s, JID, job_body("/once"))
    result_file = os.path.join(s.state_dir, daemon.SPOOL_DIR, JID + Kind.RESULT)

    def cannot(self, jid):
        raise StoreError(f"{self.path}: cannot drop kept job {jid}: disk I/O error")

    sending = []

    def done(minion) -> bool:
        sending.append(JID in minion.outgoing)
        return os.path.exists(result_file) and minion.busy is None

    with monkeypatch.context() as m:
        m.setattr(SeenJids, "drop", cannot)
        run_minion(s, done)
    assert not any(sending)  # its result was never to be sent
    os.unlink(os.path.join(s.root, "once"))  # to see whether it is applied again
    with SeenJids(os.path.join(s.state_dir, daemon.SEEN_DB)) as seen:
        assert seen.kept() == [JID]

    # A start that can drop it: the job is found beside its result, dropped, and
    # the result sent; the job is not applied again.
    run_minion(s, lambda minion: JID in minion.outgoing and minion.busy is None)
    assert not os.path.exists(os.path.join(s.root, "once"))
    with SeenJids(os.path.join(s.state_dir, daemon.SEEN_DB)) as seen:
        assert seen.kept() == []


def test_a_job_past_its_deadline_is_not_applied(tmp_path):
    s = minion_settings(tmp_path)
    keep_job(s, JID, job_body("/late", deadline=1.0))
    run_minion(s, lambda m: JID in m.outgoing)
    assert not os.path.exists(os.path.join(s.root, "late"))
    spool = Spool(os.path.join(s.state_dir, daemon.SPOOL_DIR))
    result = codec.unpack(spool.get(Kind.RESULT, JID), max_depth=16)
    assert result["status"] == "error" and "deadline passed" in result["error"]
    spool.close()


def test_settings(tmp_path):
    s = minion_settings(tmp_path)
    assert (s.id, s.heartbeat_interval, s.master_fingerprint) == ("web1", 5.0, None)
    assert s.trust_first_master
    fingerprint = KeyPair.generate().fingerprint()
    pasted = fingerprint.upper().replace(" ", "-")  # as an administrator might paste it
    pinned = settings.parse(f"master: cfg.example.org\nid: db1\nmaster_fingerprint: {pasted}\n")
    assert pinned.master_fingerprint == fingerprint
    assert pinned.master == ("cfg.example.org",)
    # The masters of a cluster, as a YAML list or separated by commas, in order.
    trusting = "id: a\ntrust_first_master: true\n"
    listed = settings.parse(f"{trusting}master:\n  - cfg2.example.org\n  - 192.0.2.7\n")
    assert listed.master == ("cfg2.example.org", "192.0.2.7")
    assert settings.parse(f"{trusting}master: cfg1, cfg2\n").master == ("cfg1", "cfg2")
    for text, message in [
        (f"{trusting}master: [cfg1, cfg1]\n", "master: names a master twice"),
        (f"{trusting}master: cfg1\nroot: [/a, /b]\n", "root: must be a single value, not a list"),
        ("id: web1\n", "master: required key is missing"),
        ("master: x\nid: a\n", "master_fingerprint: required"),
        (
            "master: x\nid: a\ntrust_first_master: true\nheartbeat_interval: 1h\n",
            "heartbeat_interval: must be between",
        ),
        ("master: x\nid: Web1\n", "id: minion id 'Web1' is not valid"),
        ("master: 'bad host!'\nid: a\n", "master: must be a host name or IP address"),
        (
            "master: x\nid: a\nmaster_fingerprint: nope\n",
            "minion.yaml:3: master_fingerprint: fingerprint 'nope' is not valid",
        ),
        ("master: x\nid: a\nroot: relative\n", "root: must be an absolute path"),
    ]:
        try:
            settings.parse(text)
        except Exception as e:
            assert message in str(e), (text, str(e))
        else:
            raise AssertionError(f"{text!r} was accepted")


def test_a_spooled_result_the_wire_refuses_goes_as_an_error_result(tmp_path):
    from safcm.minion.daemon import _unsendable

    now = 1_800_000_000.0
    broken = {"module": "files", "status": "ok", "started": now, "finished": now - 1}
    replacement = _unsendable(broken, "RESULT body: finished is before started")
    validate(RESULT, replacement, "replacement")
    assert replacement["status"] == "error" and "finished is before started" in replacement["error"]
    assert _unsendable({"module": "nonsense"}, "bad") is None


@contextlib.contextmanager
def idle_minion(tmp_path, clock=time.monotonic, local_clock=time.time):
    """A minion that is not started: its handlers are called by the test."""
    ctx = zmq.Context()
    loop = Loop(clock)
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    minion = daemon.Minion(
        minion_settings(tmp_path), loop=loop, ctx=ctx, worker=worker, clock=local_clock
    )
    try:
        yield minion
    finally:
        worker.shutdown(wait=True)
        minion.close()
        loop.close()
        ctx.term()


def test_a_minion_whose_own_loop_stood_still_does_not_blame_the_master(tmp_path):
    now = [1000.0]
    with idle_minion(tmp_path, lambda: now[0]) as minion:
        minion.dealer = minion.ctx.socket(zmq.DEALER)  # connected nowhere: sends are dropped
        minion.dealer.setsockopt(zmq.LINGER, 0)
        minion.accepted = True
        minion.last_reply = now[0]
        # The loop stood still far longer than LIVENESS intervals (a disk
        # taking its time): one tick, one heartbeat, no verdict yet.
        now[0] += 100 * minion.interval
        minion.tick()
        assert minion.dealer is not None
        # Then the master stays silent for LIVENESS heartbeats of ours.
        for _ in range(daemon.LIVENESS - 1):
            now[0] += minion.interval
            minion.tick()
            assert minion.dealer is not None
        now[0] += minion.interval
        minion.tick()
        assert minion.dealer is None and not minion.accepted  # reconnecting


def test_an_enrolment_sent_again_keeps_its_nonce_and_any_copy_is_answered(tmp_path, caplog):
    with idle_minion(tmp_path) as minion:
        sent: list[bytes] = []
        minion._send = sent.append  # type: ignore[method-assign]
        minion._send_enrol_request()
        minion._send_enrol_request()  # unanswered within a tick: sent again
        first, again = (decode_plain(f, Channel.NETWORK) for f in sent)
        assert first.body["nonce"] == again.body["nonce"]
        master = KeyPair.generate()

        def reply(nonce: bytes, state: KeyState = KeyState.PENDING) -> bytes:
            body = make_enrol_reply("web1", state, master, nonce=nonce, now=time.time())
            return encode_plain(MsgType.ENROL_REPLY, body)

        with caplog.at_level(logging.INFO, logger="safcm-minion"):
            minion._receive(reply(first.body["nonce"]), minion.network, peer=MASTER_ID)
            assert minion.key_state == KeyState.PENDING
            # The answer to the other copy, after the administrator accepted us: taken.
            minion._receive(
                reply(first.body["nonce"], KeyState.ACCEPTED), minion.network, peer=MASTER_ID
            )
            assert minion.key_state == KeyState.ACCEPTED
            assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
            # The next request is a new one; an answer to no request of ours is refused.
            minion._send_enrol_request()
            assert decode_plain(sent[-1], Channel.NETWORK).body["nonce"] != first.body["nonce"]
            minion._receive(reply(os.urandom(16)), minion.network, peer=MASTER_ID)
        assert "does not answer our request (nonce differs)" in caplog.text


def test_the_offset_to_the_masters_clock_moves_only_on_what_an_answer_can_tell(tmp_path):
    with idle_minion(tmp_path) as minion:
        assert minion.offset == 0.0
        # A prompt answer from a master an hour ahead: the offset is that hour.
        minion._learn_offset(5000.0 + HOUR, 5000.0 - 0.01, 5000.0 + 0.01)
        assert minion.offset == pytest.approx(HOUR)
        # An answer read 8 s after we asked: the offset is somewhere in the
        # 8 s before the hour, and the hour is in there.
        minion._learn_offset(6000.0 + HOUR, 6000.0, 6008.0)
        assert minion.offset == pytest.approx(HOUR)
        # A prompt answer once the host's clock stepped back 2 s: followed.
        minion._learn_offset(7000.0 + HOUR + 2, 7000.0, 7000.02)
        assert minion.offset == pytest.approx(HOUR + 2, abs=0.02)
        # A difference within CLOCK_OFFSET_TOLERANCE: kept steady.
        minion._learn_offset(8000.0 + HOUR + 2.3, 8000.0, 8000.01)
        assert minion.offset == pytest.approx(HOUR + 2, abs=0.02)


def test_a_heartbeat_reply_read_late_does_not_look_like_a_clock_off(tmp_path, caplog):
    """The master and the minion share a clock here. The minion's loop stands
    still for 8 s between sending a heartbeat and reading its answer."""
    now = [1_800_000_000.0]
    with idle_minion(tmp_path, lambda: now[0], lambda: now[0]) as minion:
        sent: list[bytes] = []
        minion._send = sent.append  # type: ignore[method-assign]
        minion.dealer = minion.ctx.socket(zmq.DEALER)  # connected: tick() sends
        minion.dealer.setsockopt(zmq.LINGER, 0)
        minion.accepted = True
        minion.tick()
        seq = decode_plain(sent[-1], Channel.NETWORK).body["seq"]
        master_time = now[0] + 0.001
        now[0] += 8.0
        reply = encode_plain(MsgType.HEARTBEAT_REPLY, {"time": master_time, "seq": seq})
        with caplog.at_level(logging.INFO, logger="safcm-minion"):
            minion._receive(reply, minion.network, peer=MASTER_ID)
        assert minion.offset == 0.0
        assert "clock is" not in caplog.text
        assert minion.heartbeats_sent == {}


def mark_started(s: settings.MinionSettings, jid: str) -> None:
    """What Minion._next_job() records before a job changes the host."""
    with SeenJids(os.path.join(s.state_dir, daemon.SEEN_DB)) as seen:
        seen.mark_started(jid)


def spooled_result(s: settings.MinionSettings, jid: str) -> dict:
    spool = Spool(os.path.join(s.state_dir, daemon.SPOOL_DIR))
    try:
        result = codec.unpack(spool.get(Kind.RESULT, jid), max_depth=16)
    finally:
        spool.close()
    validate(RESULT, result, "result")
    return result


def test_a_job_a_restart_interrupted_is_finished_past_its_deadline_and_says_so(tmp_path):
    # Both jobs' deadlines passed while the minion was down. One had begun
    # to change the host (half of a tree may be there): it is finished. The
    # other never began: it is not applied late.
    s = minion_settings(tmp_path)
    keep_job(s, JID, job_body("/interrupted", deadline=1.0))
    mark_started(s, JID)
    keep_job(s, JID2, job_body("/never-begun", deadline=1.0))

    run_minion(s, lambda m: JID in m.outgoing and JID2 in m.outgoing and m.busy is None)

    finished = spooled_result(s, JID)
    assert finished["status"] == "ok" and finished["resumed"] is True
    with open(os.path.join(s.root, "interrupted")) as f:
        assert f.read() == "hello\n"
    late = spooled_result(s, JID2)
    assert late["status"] == "error" and "resumed" not in late
    assert "deadline passed before it could start" in late["error"]
    assert not os.path.exists(os.path.join(s.root, "never-begun"))


def test_a_command_a_restart_interrupted_is_not_run_again(tmp_path):
    s = minion_settings(tmp_path)
    marker = tmp_path / "ran"
    body = {
        "module": "cmd",
        "dry_run": False,
        "deadline": 4e9,
        "cmd": {"argv": ["/usr/bin/touch", str(marker)], "shell": False, "timeout": 10.0},
    }
    keep_job(s, JID, body)
    mark_started(s, JID)

    run_minion(s, lambda m: JID in m.outgoing and m.busy is None)

    result = spooled_result(s, JID)
    assert result["status"] == "error"
    assert "whether it finished is not known, and it is not run again" in result["error"]
    assert not marker.exists()


def test_a_job_is_marked_started_before_it_changes_the_host(tmp_path, monkeypatch):
    s = minion_settings(tmp_path)
    keep_job(s, JID, job_body("/marked"))
    keep_job(s, JID2, {**job_body("/dry"), "dry_run": True})
    seen_path = os.path.join(s.state_dir, daemon.SEEN_DB)
    marked_when_run = {}
    run = daemon.modules.run

    def run_and_look(body, ctx):
        with SeenJids(seen_path) as seen:  # its own connection, as after a crash
            marked_when_run[ctx.jid] = ctx.jid in seen.started()
        return run(body, ctx)

    monkeypatch.setattr(daemon.modules, "run", run_and_look)
    run_minion(s, lambda m: JID in m.outgoing and JID2 in m.outgoing and m.busy is None)
    # A dry run changes nothing: never marked, so never finished late.
    assert marked_when_run == {JID: True, JID2: False}


def test_jobs_leave_no_garbage_cycles(tmp_path, monkeypatch):
    # The progress report was a closure that scheduled itself, made for
    # every job (a ping too): a reference cycle that kept the job, its
    # content with it, until a full collection. 170-260 of them in a swarm
    # of 100 identities in one run of bench/fanout.py --sizes 200.
    monkeypatch.setattr(daemon, "PROGRESS_FIRST", CANCELLED_TIMER_DUE)
    s = minion_settings(tmp_path)
    keep_job(s, JID, job_body("/a"))
    keep_job(s, JID2, job_body("/b"))
    garbage: list = []
    finished: list[float] = []

    def done(m: daemon.Minion) -> bool:
        if m.queue or m.busy is not None or JID2 not in m.outgoing:
            return False
        finished.append(time.monotonic())
        # The loop drops a cancelled timer (and what it holds) once it is due.
        if finished[-1] - finished[0] < 2 * CANCELLED_TIMER_DUE:
            return False
        garbage.extend(found())  # while the minion lives: it is a cycle of its own
        return True

    with garbage_kept() as found:
        run_minion(s, done)
    assert finished and finished[-1] - finished[0] >= 2 * CANCELLED_TIMER_DUE  # looked
    assert not [o for o in garbage if isinstance(o, daemon.Job)]
    assert not [o for o in garbage if getattr(o, "__qualname__", "").startswith("Minion._next_job")]


def test_a_monitor_endpoint_a_closed_socket_left_does_not_stop_the_next(tmp_path):
    # pyzmq names a monitor's endpoint after its socket's descriptor, which
    # the next socket gets again at once, while libzmq may still hold the
    # closed socket's endpoint: 4 of 4,000 minions in bench/fanout.py could
    # not watch their publish socket (EADDRINUSE) and never received a job.
    # Here every such name is taken.
    with idle_minion(tmp_path) as minion:
        minion.master_keys = KeyPair.generate().public
        # One socket (one descriptor of its own) takes every such name.
        squatter = minion.ctx.socket(zmq.PAIR)
        squatter.setsockopt(zmq.LINGER, 0)
        try:
            highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
            for fd in range(highest + FDS_BEYOND):
                squatter.bind(f"inproc://monitor.s-{fd}")
            minion._connect()
            assert minion._subscribe()
            assert minion.sub is not None and minion.dealer is not None
            assert set(minion.monitors) == {"return", "publish"}
        finally:
            squatter.close(0)


def test_a_publish_socket_that_cannot_be_made_is_a_reconnect_not_a_deaf_minion(
    tmp_path, monkeypatch, caplog
):
    # Before, the error left the minion accepted, with a socket half made
    # that _subscribe() never made again: heartbeats answered, no job ever.
    with idle_minion(tmp_path) as minion:
        minion.master_keys = KeyPair.generate().public
        minion._connect()
        made = minion._curve_socket

        def no_sub(kind: int, max_in: int) -> zmq.Socket:
            if kind == zmq.SUB:
                raise zmq.ZMQError(errno.EMFILE)
            return made(kind, max_in)

        monkeypatch.setattr(minion, "_curve_socket", no_sub)
        assert not minion._subscribe()
        assert minion.sub is None and minion.dealer is None and not minion.monitors
        assert minion.reconnect is not None  # asks for the master's keys again after the backoff
        assert "cannot open the publish socket: Too many open files" in caplog.text


def test_a_key_socket_that_cannot_be_made_waits_for_the_backoff(tmp_path, monkeypatch, caplog):
    # Before, the error escaped _ask_keys() and the heartbeat's tick tried
    # again at every heartbeat, each failure logged with its traceback.
    with idle_minion(tmp_path) as minion:

        def no_socket(kind: int) -> zmq.Socket:
            raise zmq.ZMQError(errno.EMFILE)

        monkeypatch.setattr(minion.ctx, "socket", no_socket)
        minion._ask_keys()
        assert minion.key_sock is None and minion.reconnect is not None
        assert "cannot open a socket to the key port: Too many open files" in caplog.text
        minion.tick()  # waits for the backoff: no second try, no second line
        assert caplog.text.count("Too many open files") == 1


def test_a_publish_connection_that_ends_counts_as_unreached_until_it_is_back(tmp_path, caplog):
    # libzmq connects the publish socket again by itself, so a minion whose
    # master lost that port (a firewall rule, another process on it) kept
    # counting it as reached, and never said why no job came.
    now = [1000.0]
    master = KeyPair.generate()
    with idle_minion(tmp_path, lambda: now[0]) as minion:
        minion.master_keys = master.public
        server = minion.ctx.socket(zmq.XPUB)
        server.setsockopt(zmq.LINGER, 0)
        server.curve_server = True
        server.curve_secretkey = master.curve_secret().reveal()
        server.bind(f"tcp://127.0.0.1:{minion.settings.publish_port}")
        try:
            assert minion._subscribe()
            pump(minion, lambda: minion.sub_up, "the publish handshake")
        finally:
            server.close(0)
        pump(minion, lambda: not minion.sub_up, "the publish connection's end")
        minion.accepted = True
        now[0] += daemon.PUBLISH_UNREACHED_INTERVALS * minion.interval
        minion._check_publish_reached()
        assert "cannot reach the publish socket at tcp://127.0.0.1:" in caplog.text


@pytest.mark.parametrize("refusal", ["pinned elsewhere", "not the fingerprint"])
def test_a_key_port_that_answers_with_other_keys_is_asked_again_after_the_backoff(
    tmp_path, caplog, refusal
):
    # Before, a refused key reply left the key socket open: each LIVENESS
    # heartbeats the minion logged "no answer from the key port" (it had
    # one) and asked again at once, forever, with no backoff.
    now = [1000.0]
    stranger = KeyPair.generate()
    with idle_minion(tmp_path, lambda: now[0]) as minion:
        if refusal == "pinned elsewhere":
            minion.master_keys = KeyPair.generate().public
            said = f"now presents key {stranger.fingerprint()}"
        else:
            minion.settings = dataclasses.replace(
                minion.settings, master_fingerprint=KeyPair.generate().fingerprint()
            )
            said = f"master key {stranger.fingerprint()} does not match master_fingerprint"
        keyport = minion.ctx.socket(zmq.ROUTER)
        keyport.setsockopt(zmq.LINGER, 0)
        keyport.bind(f"tcp://127.0.0.1:{minion.settings.key_port}")
        asked = []

        def answer() -> bool:
            while keyport.poll(0):
                peer, frame = keyport.recv_multipart()
                nonce = decode_plain(frame, Channel.KEY).body["nonce"]
                asked.append(nonce)
                reply = make_key_reply(stranger, nonce=nonce, now=time.time())
                keyport.send_multipart([peer, encode_plain(MsgType.KEY_REPLY, reply)])
            return minion.key_sock is None

        try:
            with caplog.at_level(logging.INFO, logger="safcm-minion"):
                minion._ask_keys()
                pump(minion, answer, "the minion to refuse the key reply")
                assert said in caplog.text and "reconnecting in" in caplog.text
                assert minion.reconnect is not None and minion.dealer is None
                assert minion.backoff == 2 * minion.interval  # grows with each refusal
                # Heartbeats until then neither ask nor blame a silence.
                for _ in range(daemon.LIVENESS + 1):
                    now[0] += minion.interval / 2
                    minion.tick()
                assert minion.key_sock is None and len(asked) == 1
                assert "no answer from the key port" not in caplog.text
                # After the backoff it asks again, and is refused again.
                now[0] += daemon.BACKOFF_MAX
                minion.loop.run_once(max_wait=0)
                assert minion.key_sock is not None
                pump(minion, answer, "the second key request's refusal")
                assert len(asked) == 2 and caplog.text.count(said) == 2
                assert minion.master_keys is None or minion.master_keys.fingerprint() != (
                    stranger.fingerprint()
                )
        finally:
            keyport.close(0)


def pump(minion: daemon.Minion, until: Callable[[], bool], what: str) -> None:
    """Run the minion's loop (its monitors) until `until()`, for SETTLE_S at most."""
    deadline = time.monotonic() + SETTLE_S
    while not until():
        assert time.monotonic() < deadline, f"waited {SETTLE_S} s for {what}"
        minion.loop.run_once(max_wait=0.05)
