"""The control socket on a real AF_UNIX socket: framing, slow readers, stale sockets."""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safcm.common.errors import DaemonError, RemoteError
from safcm.common.loop import Loop
from safcm.common.protocol import MsgType, new_jid
from safcm.master import control
from safcm.master.control import ControlClient, ControlServer
from tests.procs import no_descriptor_free

LIST = {"action": "list", "ids": []}
JID = new_jid(1.0)
SUMMARY = {"targeted": 0, "changed": 0, "unchanged": 0, "failed": 0, "no_response": 0}
# A KEYS_REPLY of a master with no minion keys.
NO_KEYS = {
    "master": "SHA256:" + "a" * 52,
    "publish_port": 4506,
    "keys": [],
    "left": [],
    "refused": [],
}


def reply_for(conn, msg, size: int = 0):
    fingerprint = "SHA256:" + "a" * 52
    keys = [
        {
            "id": f"m{i:06d}",
            "state": "pending",
            "fingerprint": fingerprint,
            "connected": False,
            "not_subscribed": False,
            "last_seen": None,
        }
        for i in range(size)
    ]
    conn.send(
        MsgType.KEYS_REPLY,
        {"master": fingerprint, "publish_port": 4506, "keys": keys, "left": [], "refused": []},
    )
    conn.finish()


def serve(path, handler, until):
    """Run a server in this thread until `until()` (called from the loop) says stop."""
    loop = Loop()
    server = ControlServer(path, loop=loop, admin_group=None, handle=handler)
    loop.call_every(0.01, lambda: until() and loop.stop())
    return loop, server


def test_request_and_reply(tmp_path):
    path = str(tmp_path / "c.sock")
    done = threading.Event()
    got = []

    def client():
        with ControlClient(path) as c:
            got.append(c.request(MsgType.KEYS, LIST, 5))
        done.set()

    loop, server = serve(path, reply_for, done.is_set)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # root only without admin_group
    threading.Thread(target=client).start()
    loop.run()
    server.close()
    assert got[0].type is MsgType.KEYS_REPLY
    assert not os.path.exists(path)


@pytest.mark.timeout(30)  # a blocking send would hang here
def test_a_client_that_does_not_read_does_not_stall_the_daemon(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "MAX_BACKLOG_BYTES", 4 * 1024 * 1024)
    path = str(tmp_path / "c.sock")
    # A client that asks for a huge answer and never reads it (suspended with ^Z).
    stuck = socket.socket(socket.AF_UNIX)
    done = threading.Event()
    got = []

    requests = []

    def handler(conn, msg):
        requests.append(conn)
        reply_for(conn, msg, size=20_000 if len(requests) == 1 else 0)

    def second():
        with ControlClient(path) as c:
            got.append(c.request(MsgType.KEYS, LIST, 10))
        done.set()

    loop, server = serve(path, handler, done.is_set)
    from safcm.common.protocol import encode_frame, encode_plain

    stuck.connect(path)
    stuck.sendall(encode_frame(encode_plain(MsgType.KEYS, LIST)))
    for _ in range(5):  # accept, read, and queue megabytes the client will not take
        loop.run_once(0.05)
    assert len(requests) == 1 and requests[0].out  # stuck in the server's queue
    threading.Thread(target=second).start()
    loop.run()
    assert got and got[0].type is MsgType.KEYS_REPLY and got[0].body["keys"] == []
    server.close()
    stuck.close()


def test_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not(tmp_path):
    path = str(tmp_path / "c.sock")
    old = socket.socket(socket.AF_UNIX)
    old.bind(path)  # a socket file nobody listens on: a master that died
    old.close()
    loop = Loop()
    server = ControlServer(path, loop=loop, admin_group=None, handle=reply_for)
    with pytest.raises(DaemonError, match="another master daemon is listening"):
        ControlServer(path, loop=Loop(), admin_group=None, handle=reply_for)
    server.close()
    plain = tmp_path / "not-a-socket"
    plain.write_text("precious")
    with pytest.raises(DaemonError, match="is not a socket"):
        ControlServer(str(plain), loop=Loop(), admin_group=None, handle=reply_for)
    assert plain.read_text() == "precious"
    with pytest.raises(DaemonError, match="admin_group 'no-such-group' does not exist"):
        ControlServer(
            str(tmp_path / "x.sock"), loop=Loop(), admin_group="no-such-group", handle=reply_for
        )
    with pytest.raises(DaemonError, match="longer than 107 bytes"):
        ControlServer(str(tmp_path / ("x" * 120)), loop=Loop(), admin_group=None, handle=reply_for)


def test_client_errors_name_the_cause(tmp_path):
    with pytest.raises(DaemonError, match="the master daemon is not running"):
        ControlClient(str(tmp_path / "nothing.sock"))


def test_an_oversized_request_is_refused_before_it_is_read(tmp_path):
    from safcm.common.protocol import MAX_CONTROL_REQUEST_BYTES

    path = str(tmp_path / "c.sock")
    done = threading.Event()
    answer = []

    def client():
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                # A frame header claiming one byte more than a request may have.
                s.sendall((MAX_CONTROL_REQUEST_BYTES + 1).to_bytes(4, "big"))
                s.settimeout(10)
                answer.append(s.recv(65536))
        except OSError as e:  # no answer: the daemon waits for the rest of the frame
            answer.append(repr(e).encode())
        finally:
            done.set()

    handled = []
    loop, server = serve(path, lambda conn, msg: handled.append(msg), done.is_set)
    threading.Thread(target=client).start()
    loop.run()
    server.close()
    assert handled == []
    assert b"exceeds" in answer[0], answer


class CountingSocket:
    """A connection's socket that counts its writes (everything else passes)."""

    def __init__(self, sock):
        self.sock = sock
        self.writes = 0

    def send(self, data):
        self.writes += 1
        return self.sock.send(data)

    def sendmsg(self, buffers):
        self.writes += 1
        return self.sock.sendmsg(buffers)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_what_one_loop_turn_sends_a_client_is_written_at_once(tmp_path):
    """A job's results are confirmed many per loop turn: each written on its
    own would cost the master a system call and wake the CLI, per host."""
    path = str(tmp_path / "c.sock")
    done = threading.Event()
    got = []
    counted = []

    def handler(conn, msg):
        conn.sock = CountingSocket(conn.sock)
        counted.append(conn.sock)
        for _ in range(50):
            conn.send(MsgType.KEYS_REPLY, NO_KEYS)
        # Due after the flush the first send asked for (timers run in order).
        conn.server.loop.call_later(0.0, conn.finish)

    def client():
        with ControlClient(path) as c:
            c.send(MsgType.KEYS, LIST)
            got.extend(r.type for r in c.replies(5))
        done.set()

    loop, server = serve(path, handler, done.is_set)
    threading.Thread(target=client).start()
    loop.run()
    server.close()
    assert got == [MsgType.KEYS_REPLY] * 50
    assert counted[0].writes == 1


def test_what_is_queued_when_the_daemon_stops_is_still_sent(tmp_path):
    """A stopping daemon confirms the results it still holds after its loop
    has ended (Intake.finish_writing()): no loop turn flushes them then."""
    path = str(tmp_path / "c.sock")
    loop = Loop()
    asked = []

    def handler(conn, msg):
        asked.append(conn)
        loop.stop()

    server = ControlServer(path, loop=loop, admin_group=None, handle=handler)
    got = []

    def client():
        with ControlClient(path) as c:
            c.send(MsgType.KEYS, LIST)
            got.extend(r.type for r in c.replies(5))

    thread = threading.Thread(target=client)
    thread.start()
    loop.run()
    asked[0].send(MsgType.KEYS_REPLY, NO_KEYS)  # after the loop's end
    server.close()
    thread.join(10)
    assert got == [MsgType.KEYS_REPLY]


def test_at_the_descriptor_limit_a_client_is_turned_away_and_accepting_pauses(tmp_path, caplog):
    # A listener with a client waiting stays readable while accept() fails:
    # retried at once, the loop would spin and log each failure.
    path = str(tmp_path / "c.sock")
    now = [0.0]
    loop = Loop(clock=lambda: now[0])
    served = []

    def handler(conn, msg):
        served.append(conn)
        reply_for(conn, msg)

    server = ControlServer(path, loop=loop, admin_group=None, handle=handler)
    first, second = ControlClient(path, timeout=5), ControlClient(path, timeout=5)
    for client in (first, second):
        client.send(MsgType.KEYS, LIST)
    with caplog.at_level(logging.WARNING, logger="safcm-master"), no_descriptor_free():
        for _ in range(50):
            loop.run_once(0)
    failures = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert len(failures) == 1, len(failures)
    assert not served
    # The first was accepted on the spare descriptor and told why.
    with pytest.raises(RemoteError, match="LimitNOFILE"):
        first.request(MsgType.KEYS, LIST, 5)
    now[0] += control.ACCEPT_BACKOFF
    while not (served and served[0].closed):  # accepted again, answered
        loop.run_once(0)
    assert [r.type for r in second.replies(5)] == [MsgType.KEYS_REPLY]
    for client in (first, second):
        client.close()
    server.close()


# Steps of the send-queue test: a piece queued, or that many bytes sent.
QUEUE_STEPS = st.lists(
    st.one_of(
        st.binary(max_size=40).map(lambda b: ("put", b)),
        st.integers(0, 100).map(lambda n: ("send", n)),
    ),
    max_size=60,
)


@given(QUEUE_STEPS)
def test_the_send_queue_sends_what_was_queued_in_order_without_joining_it(steps):
    queue, expected = control.SendQueue(), bytearray()
    for step, value in steps:
        if step == "put":
            queue.put(value)
            expected += value
        else:  # the kernel takes up to `value` bytes of what front() offers
            offered = b"".join(queue.front(3)) if queue else b""
            assert expected.startswith(offered) and (offered or not expected)
            count = min(value, len(offered))
            queue.sent(count)
            del expected[:count]
        assert len(queue) == len(expected)
        rest = b"".join(queue.front(len(steps) + 1)) if queue else b""
        assert rest == bytes(expected)
    # Kept as queued: nothing is copied into one buffer that grows.
    assert all(type(piece) is bytes for piece in queue.pieces)


def _held_back_server(tmp_path, monkeypatch):
    """A server in this thread, its one client connected with nothing read,
    and the server's side of that connection with the smallest send buffer."""
    path = str(tmp_path / "c.sock")
    conns = []
    loop, server = serve(path, lambda conn, msg: conns.append(conn), lambda: False)
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    from safcm.common.protocol import encode_frame, encode_plain

    client.sendall(encode_frame(encode_plain(MsgType.KEYS, LIST)))
    while not conns:
        loop.run_once(0.05)
    conns[0].sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel's least
    return loop, server, client, conns[0]


def _read_all(loop, client) -> list:
    """What the client is sent until the server closes, the server's loop run
    between reads."""
    from safcm.common.wire import FrameReader, decode_reply

    reader = FrameReader()
    client.setblocking(False)
    replies = []
    while True:
        loop.run_once(0.01)
        try:
            data = client.recv(65536)
        except BlockingIOError:
            continue
        if not data:
            return replies
        replies += [decode_reply(f) for f in reader.feed(data)]


@pytest.mark.timeout(60)
def test_replies_made_later_wait_for_a_client_behind_and_keep_their_order(tmp_path, monkeypatch):
    # A run's results for a CLI that reads slowly (a pager, ^S) are read back
    # from the store once it has caught up: the master holds about
    # DEFER_BYTES for it, never drops it. Before, every result was queued
    # as bytes until MAX_BACKLOG_BYTES, and then the connection was dropped.
    from safcm.common.protocol import encode_host_result
    from tests.system.fake import ping_result

    monkeypatch.setattr(control, "DEFER_BYTES", 16 * 1024)
    monkeypatch.setattr(control, "MAKE_BYTES", 4 * 1024)
    monkeypatch.setattr(control, "MAX_BACKLOG_BYTES", 64 * 1024)
    loop, server, client, conn = _held_back_server(tmp_path, monkeypatch)
    made: list[int] = []

    def result(i: int) -> bytes:
        return encode_host_result(JID, f"h{i:05d}", ping_result(1.0))

    def make(i: int):
        def again() -> bytes:
            made.append(i)
            return result(i)

        return again

    count, largest, sent_later = 1000, 0, 0  # about 190 KB: three times the old limit
    for i in range(count):
        if conn.behind():
            conn.send_later(make(i))
            sent_later += 1
        else:
            conn.send_encoded(result(i))
        if i % 50 == 0:
            conn.send(MsgType.RUN_PROGRESS, {"jid": JID, "host": "h", "until": 1.0})
            loop.run_once(0.0)
        largest = max(largest, len(conn.out))
    for _ in range(10):
        loop.run_once(0.01)
        largest = max(largest, len(conn.out))
    assert not conn.closed and sent_later > count // 2
    assert made == []  # nothing read: nothing made again
    assert largest < control.DEFER_BYTES + len(result(0)) + 100
    conn.send(MsgType.RUN_DONE, {"jid": JID, "summary": SUMMARY})
    conn.finish()
    replies = _read_all(loop, client)
    hosts = [r.body["host"] for r in replies if r.type is MsgType.RUN_HOST_RESULT]
    assert hosts == [f"h{i:05d}" for i in range(count)]
    assert replies[-1].type is MsgType.RUN_DONE
    assert len(made) == sent_later and made == sorted(made)
    server.close()
    client.close()


@pytest.mark.timeout(60)
def test_a_reply_that_cannot_be_made_later_ends_the_request_with_an_error(tmp_path, monkeypatch):
    from safcm.common.errors import StoreError

    monkeypatch.setattr(control, "DEFER_BYTES", 1)
    loop, server, client, conn = _held_back_server(tmp_path, monkeypatch)

    def fails() -> bytes:
        raise StoreError("job 1: the result of h1 is no longer in the job history")

    conn.send(MsgType.RUN_PROGRESS, {"jid": JID, "host": "h", "until": 1.0})
    conn.send_later(fails)
    conn.send(MsgType.RUN_DONE, {"jid": JID, "summary": SUMMARY})  # not sent after the error
    conn.send_later(fails)
    replies = _read_all(loop, client)
    assert [r.type for r in replies] == [MsgType.RUN_PROGRESS, MsgType.ERROR]
    assert "the result of h1 is no longer in the job history" in replies[-1].body["message"]
    assert conn.closed
    server.close()
    client.close()
