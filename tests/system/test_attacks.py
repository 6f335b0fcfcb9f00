"""Hostile peers at the socket level. Each attack is refused and logged, and the
daemons go on serving everyone else (checked by a real run afterwards)."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import stat
import subprocess
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from safcm.common import keyfile
from safcm.common.protocol import (
    MAX_RESULT_BYTES,
    SUBSCRIPTION,
    Channel,
    FrameReader,
    KeyState,
    Message,
    MsgType,
    decode_plain,
    encode_frame,
    encode_plain,
    make_enrol_reply,
    make_key_reply,
)
from safcm.master.sandbox import wait_for
from tests import schemas
from tests.system.conftest import (
    SETTLE,
    accepted_fake,
    by_host,
    enrol,
    jobs_show,
    keys,
    logged,
    run_json,
    wait_state,
)
from tests.system.fake import curve_socket, master_keys, ping_result


def still_serving(sb, target: str = "web1") -> None:
    code, doc = run_json(sb, target, "ping")
    assert code == 0, doc


def test_forged_result_is_refused(sandbox, fake):
    enrol(sandbox, "web1")
    _, doc = run_json(sandbox, "web1", "ping")
    stored = jobs_show(sandbox, doc["jid"])
    # An attacker claims to be web1 but holds other keys.
    forger = fake("web1")
    assert forger.enrol() == "claimed"  # a known id with another key
    now = time.time()
    forger.send_raw(forger.seal(MsgType.RESULT, ping_result(now), jid=doc["jid"]))
    # Its transport key is not web1's: dropped before the envelope is even verified.
    logged(sandbox.master, "a sealed message from a key that is not accepted")
    assert forger.silent()
    assert jobs_show(sandbox, doc["jid"]) == stored
    still_serving(sandbox)


def test_result_for_a_job_never_sent_to_that_minion(sandbox, fake):
    enrol(sandbox, "web1")
    intruder = fake("web3")  # a real, accepted minion of the fleet
    assert intruder.enrol() == "pending"
    assert sandbox.cli("keys", "accept", "web3").returncode == 0
    assert intruder.enrol() == "accepted"
    _, doc = run_json(sandbox, "web1", "ping")
    intruder.send_raw(intruder.seal(MsgType.RESULT, ping_result(time.time()), jid=doc["jid"]))
    logged(sandbox.master, f"result for job {doc['jid']}, which was never sent to it")
    assert intruder.silent()  # no receipt for it
    assert [h["host"] for h in jobs_show(sandbox, doc["jid"])["hosts"]] == ["web1"]
    still_serving(sandbox)


def test_duplicate_result_is_stored_once(sandbox, fake):
    enrol(sandbox, "web1")
    web3 = fake("web3")
    web3.enrol()
    sandbox.cli("keys", "accept", "web3")
    assert web3.enrol() == "accepted"
    web3.heartbeat()
    assert web3.recv().type is MsgType.HEARTBEAT_REPLY
    run = sandbox.spawn_cli("run", "web3", "ping", "--json", "--timeout", "20")
    _frame, job = web3.recv_job(10_000)
    first = ping_result(time.time())
    web3.send_raw(web3.seal(MsgType.RESULT, first, jid=job.jid))
    receipt = web3.recv()
    assert receipt.type is MsgType.RESULT_RECEIPT and receipt.body["jid"] == job.jid
    out, _ = run.communicate(timeout=30)
    assert by_host(schemas.loads(out, "run"))["web3"]["status"] == "ok"
    # The same result again, and one that says something else: neither is stored.
    web3.send_raw(web3.seal(MsgType.RESULT, first, jid=job.jid))
    assert web3.recv().type is MsgType.RESULT_RECEIPT  # confirmed, so it stops resending
    other = {**first, "ping": {"version": "changed", "time": time.time()}}
    web3.send_raw(web3.seal(MsgType.RESULT, other, jid=job.jid))
    assert web3.recv().type is MsgType.RESULT_RECEIPT
    logged(sandbox.master, f"job {job.jid}: duplicate result from web3")
    [host] = jobs_show(sandbox, job.jid)["hosts"]
    assert host["result"]["ping"]["version"] == "fake"
    still_serving(sandbox)


def test_a_heartbeat_from_a_key_that_is_not_accepted_is_dropped(sandbox, fake):
    enrol(sandbox, "web1")
    ghost = fake("ghost")
    assert ghost.enrol() == "pending"  # it may ask, but it is not accepted
    ghost.heartbeat()
    assert ghost.silent()
    # Dropped on the transport key: from it, a plain message may only enrol.
    logged(sandbox.master, "HEARTBEAT from a key that is not accepted")
    stranger = fake("stranger")  # never enrolled
    stranger.heartbeat()
    assert stranger.silent()
    # Claiming an accepted minion's id does not help: the transport key decides.
    impostor = fake("web1")
    assert impostor.enrol() == "claimed"
    impostor.heartbeat()
    assert impostor.silent()
    listed = keys(sandbox)
    assert not listed["ghost"]["connected"]
    assert "stranger" not in listed
    still_serving(sandbox)


def test_replayed_heartbeat_is_refused_also_after_a_master_restart(sandbox, fake):
    enrol(sandbox, "web1")
    web3 = accepted_fake(sandbox, fake, "web3")
    frame = web3.heartbeat()
    assert web3.recv().type is MsgType.HEARTBEAT_REPLY
    web3.send_raw(frame)
    assert web3.silent()
    logged(sandbox.master, "heartbeat 1 of web3 is not newer than its last, 1 (a replay)")
    newer = web3.heartbeat()
    assert web3.recv().type is MsgType.HEARTBEAT_REPLY
    # The master restarts (it keeps the last sequence number in its database);
    # a replay of the last heartbeat must not make web3 look connected.
    sandbox.stop(sandbox.master)
    sandbox.start_master()
    web3.close()
    again = fake("web3", web3.keys)
    again.send_raw(newer)
    assert again.silent()
    logged(sandbox.master, "heartbeat 2 of web3 is not newer than its last, 2 (a replay)")
    assert not keys(sandbox)["web3"]["connected"]


def test_garbage_frames_do_not_stop_the_master(sandbox, fake):
    enrol(sandbox, "web1")
    junk = fake("junk")
    junk.send_raw(b"")
    junk.send_raw(os.urandom(100))
    junk.send_raw(b"SFE1" + os.urandom(300))  # looks like an envelope
    junk.send_raw(b"\x93\x01\x01\xde\xff\xff")  # msgpack: a huge map header, nothing behind
    junk.send_raw(b"\x91" * 5000)  # deep nesting, and too big for a plain message
    junk.send_raw(b"a", b"b", b"c")  # three frames
    junk.send_raw(b"\xdd\xff\xff\xff\xff")  # an array of four billion items
    logged(sandbox.master, "dropped a message from")
    # A message over the socket's maximum size: ZeroMQ drops the peer.
    address = f"tcp://127.0.0.1:{sandbox.master.settings['return_port']}"
    big = curve_socket(zmq.DEALER, master_keys(sandbox), None, address)
    events = big.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    try:
        assert events.poll(SETTLE * 1000)
        assert recv_monitor_message(events)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
        big.send(b"x" * (MAX_RESULT_BYTES + 1024 * 1024))
        assert events.poll(SETTLE * 1000)
        assert recv_monitor_message(events)["event"] == zmq.EVENT_DISCONNECTED
    finally:
        big.disable_monitor()
        events.close(0)
        big.close(0)
    # Plain bytes on the control socket are refused too.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sandbox.control_path)
        s.sendall(b"\x00\x00\x00\x05hello")
        s.settimeout(5)
        assert b"invalid request" in s.recv(4096)
    assert sandbox.master.running
    still_serving(sandbox)


def capture_jobs(sb, minion: str) -> zmq.Socket:
    """Subscribe as a minion with that minion's own keys (stolen from its state
    directory: only an accepted key may subscribe, and it gets its own topic)."""
    stolen = keyfile.load_keys(os.path.join(sb.minions[minion].settings["state_dir"], "keys"))
    sub = curve_socket(
        zmq.SUB, master_keys(sb), stolen, f"tcp://127.0.0.1:{sb.master.settings['publish_port']}"
    )
    sub.setsockopt(zmq.SUBSCRIBE, SUBSCRIPTION)
    return sub


def test_replayed_and_misaddressed_envelopes_are_refused_by_the_minion(sandbox):
    enrol(sandbox, "web1", "web2")
    spy1, spy2 = capture_jobs(sandbox, "web1"), capture_jobs(sandbox, "web2")
    # The spies subscribe like the minions; a new job reaches every subscriber.
    for minion in ("web1", "web2"):  # the minion's own subscription, and the spy's
        wait_for(
            lambda m=minion: sandbox.master.log_text().count(f"subscription of {m} applied") >= 2,
            SETTLE,
            f"the spy on {minion} to subscribe",
        )
    _, doc = run_json(sandbox, "web*", "files")
    assert doc["summary"]["changed"] == 2
    assert spy1.poll(5000) and spy2.poll(5000)
    _, envelope1 = spy1.recv_multipart()
    _, envelope2 = spy2.recv_multipart()
    spy1.close(0)
    spy2.close(0)

    # web1 restarts; meanwhile someone who stole the master's keys takes over
    # its ports (so the CURVE handshake and enrolment succeed), replays web1's
    # job, and publishes web2's envelope under web1's topic: the envelope
    # checks alone must refuse both.
    motd = os.path.join(sandbox.root("web1"), "etc", "motd")
    os.unlink(motd)
    sandbox.stop(sandbox.minions["web1"])
    sandbox.stop(sandbox.master)
    stolen = keyfile.load_keys(os.path.join(sandbox.master.settings["state_dir"], "keys"))
    ctx = zmq.Context.instance()
    rogue, door, keyport = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    for sock, port in ((rogue, "publish_port"), (door, "return_port")):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, stolen.curve_secret().reveal())
        sock.bind(f"tcp://127.0.0.1:{sandbox.master.settings[port]}")
    keyport.setsockopt(zmq.LINGER, 0)
    keyport.bind(f"tcp://127.0.0.1:{sandbox.master.settings['key_port']}")
    sandbox.start_minion("web1")
    log = sandbox.minions["web1"]
    try:

        def replay() -> bool:
            while keyport.poll(0):
                peer, frame = keyport.recv_multipart()
                request = decode_plain(frame, Channel.KEY)
                reply = make_key_reply(stolen, nonce=request.body["nonce"], now=time.time())
                keyport.send_multipart([peer, encode_plain(MsgType.KEY_REPLY, reply)])
            while door.poll(0):
                peer, frame = door.recv_multipart()
                with contextlib.suppress(Exception):
                    request = decode_plain(frame, Channel.NETWORK)
                    reply = make_enrol_reply(
                        "web1",
                        KeyState.ACCEPTED,
                        stolen,
                        nonce=request.body["nonce"],
                        now=time.time(),
                    )
                    door.send_multipart([peer, encode_plain(MsgType.ENROL_REPLY, reply)])
            rogue.send_multipart([b"any topic", envelope1])
            rogue.send_multipart([b"any topic", envelope2])
            text = log.log_text()
            return "seen before; not applied again" in text and "not from our master" in text

        wait_for(replay, SETTLE, "web1 to refuse both envelopes")
    finally:
        rogue.close(0)
        door.close(0)
        keyport.close(0)
    assert not os.path.exists(motd)  # the job was not applied a second time
    assert "received (files" not in log.log_text().split("starting;")[-1]

    sandbox.start_master()
    wait_state(sandbox, "web1", "accepted", connected=True)
    still_serving(sandbox, "web*")


def test_control_socket_checks_peer_credentials(sandbox):
    # Even if the socket file is opened up by mistake, the daemon itself checks
    # who connects (SO_PEERCRED) and refuses anyone but root and the admin group.
    short = f"/tmp/safcm-ctl-{os.getpid()}"
    os.makedirs(short, exist_ok=True)
    os.chmod(short, 0o755)
    path = os.path.join(short, "control.sock")
    sandbox.configure_master(control_socket=path, admin_group="nogroup")
    try:
        sandbox.start_master()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660  # root:nogroup, as configured
        os.chmod(path, 0o666)

        def as_user(user: str, group: str) -> Message:
            """A KEYS list request from a process running as `user`:`group`. A
            forked child, so that it needs no access to this checkout (whose
            parent directory may be root's alone) to import anything."""
            uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
            read_end, write_end = os.pipe()
            child = os.fork()
            if child == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    os.close(read_end)
                    os.setgroups([])
                    os.setgid(gid)
                    os.setuid(uid)
                    request = encode_plain(MsgType.KEYS, {"action": "list", "ids": []})
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(SETTLE)
                        s.connect(path)
                        # The daemon refuses a stranger at once and may close
                        # before the request is sent; its answer is still there.
                        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                            s.sendall(encode_frame(request))
                        reader, frames = FrameReader(), []
                        while not frames and (data := s.recv(65536)):
                            frames = reader.feed(data)
                    os.write(write_end, frames[0] if frames else b"")
                    code = 0
                except BaseException as e:
                    os.write(2, f"child as {user}: {e!r}\n".encode())
                finally:
                    os._exit(code)
            os.close(write_end)
            with os.fdopen(read_end, "rb") as f:
                reply = f.read()
            _, status = os.waitpid(child, 0)
            assert os.waitstatus_to_exitcode(status) == 0 and reply
            return decode_plain(reply, Channel.CONTROL)

        refused = as_user("daemon", "daemon")
        assert refused.type is MsgType.ERROR
        assert "permission denied" in refused.body["message"]
        logged(sandbox.master, "control: refused daemon")
        allowed = as_user("nobody", "nogroup")  # a member of the admin group
        assert allowed.type is MsgType.KEYS_REPLY, allowed.body
        assert allowed.body["master"] == sandbox.master_fingerprint()
    finally:
        sandbox.close()
        subprocess.run(["rm", "-rf", short], check=False)
