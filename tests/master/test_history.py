"""`jobs show` on a real control socket and a real job store: a large job is
sent a part at a time, each part once the one before has been written."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from safcm.common import codec
from safcm.common.errors import StoreError
from safcm.common.loop import Loop
from safcm.common.protocol import MsgType, encode_frame, encode_plain
from safcm.common.wire import FrameReader, decode_reply
from safcm.master import history
from safcm.master.control import ControlServer
from safcm.master.history import History
from safcm.master.jobstore import HostStatus, JobRecord, JobStore, StoredResult
from tests.master.test_stores import parts

JID = "20261202T000000.000000Z"
# Enough hosts that their replies, one per part, overfill the socket's buffer.
MANY = 4000


def ping(host: str) -> dict:
    return {
        "module": "ping",
        "status": "ok",
        "started": 10.0,
        "finished": 11.0,
        "apply": None,
        "ping": {"version": host, "time": 11.0},
        "error": None,
    }


def stored_job(conn, count: int, answered: int) -> JobStore:
    """A ping job to `count` hosts, the first `answered` of which have a result."""
    store = JobStore(conn)
    hosts = [f"web{i:05d}" for i in range(count)]
    store.create(JobRecord(JID, 10.0, 100.0, "root", "web*", "ping", False, None), parts(*hosts))
    store.record(
        [],
        [
            StoredResult(JID, h, HostStatus.OK, 0, ping(h), 11.0, codec.pack(ping(h)))
            for h in hosts[:answered]
        ],
        now=11.0,
    )
    return store


def fail(conn, request, e):
    conn.error("failed", str(e))


class Server:
    """The History of `store` on a control socket, its loop run by the test."""

    def __init__(self, tmp_path, store: JobStore) -> None:
        self.path = str(tmp_path / "c.sock")
        self.loop = Loop()
        self.history = History(store, fail)
        self.connections = []

        def handle(conn, msg):  # as MasterDaemon.on_control
            self.connections.append(conn)
            try:
                self.history.on_jobs(conn, msg)
            except Exception as e:
                fail(conn, "JOBS", e)

        self.server = ControlServer(self.path, loop=self.loop, admin_group=None, handle=handle)

    def until(self, condition, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.loop.run_once(0.01)

    def cli(self, handler, run) -> None:
        """Answer requests with `handler` while `run()`, a CLI, runs in a thread."""
        self.server.handle = handler
        thread = threading.Thread(target=run)
        thread.start()
        self.until(lambda: not thread.is_alive(), "the CLI to finish")

    def close(self) -> None:
        self.server.close()


class Client:
    """A CLI that sends one JOBS request and reads its replies when told to."""

    def __init__(self, path: str, **request) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        body = {"action": "show", "host": None, "target": None, "limit": 1, "jid": JID}
        self.sock.sendall(encode_frame(encode_plain(MsgType.JOBS, {**body, **request})))
        self.sock.setblocking(False)
        self.reader = FrameReader()
        self.replies = []
        self.closed = False

    def read(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.closed = True
            return
        self.replies.extend(decode_reply(f) for f in self.reader.feed(data))


def counting(store: JobStore) -> list[int]:
    """Count the parts `store` is asked for."""
    calls = []
    read = store.hosts_after

    def hosts_after(*args, **kwargs):
        calls.append(1)
        return read(*args, **kwargs)

    store.hosts_after = hosts_after
    return calls


def test_a_job_comes_in_parts_with_every_host_once_in_order(tmp_path, conn, monkeypatch):
    store = stored_job(conn, 50, answered=40)
    one = len(codec.pack(ping("web00000")))
    monkeypatch.setattr(history, "SHOW_PART_BYTES", 3 * one)  # three answered hosts a part
    monkeypatch.setattr("safcm.master.jobstore.HOSTS_CHUNK", 4)  # four unanswered ones
    server = Server(tmp_path, store)
    client = Client(server.path, stream=True)
    server.until(lambda: client.read() or client.closed, "the whole job")
    server.close()
    bodies = [r.body for r in client.replies]
    assert {r.type for r in client.replies} == {MsgType.JOB_REPLY}
    assert [b["more"] for b in bodies] == [True] * (len(bodies) - 1) + [False]
    sizes = [len(b["hosts"]) for b in bodies]
    assert sizes == [3] * 13 + [4, 4, 3]  # 40 answered hosts by bytes, then 10 by count
    hosts = [h for b in bodies for h in b["hosts"]]
    assert [h["host"] for h in hosts] == [f"web{i:05d}" for i in range(50)]
    assert [h["status"] for h in hosts] == ["ok"] * 40 + ["pending"] * 10
    assert hosts[7]["result"] == ping("web00007")
    assert all(b["job"]["jid"] == JID for b in bodies)


def test_a_client_that_does_not_read_holds_one_part_in_the_master(tmp_path, conn, monkeypatch):
    store = stored_job(conn, MANY, answered=MANY)
    monkeypatch.setattr(history, "SHOW_PART_BYTES", 1)  # a host a part
    calls = counting(store)
    server = Server(tmp_path, store)
    client = Client(server.path, stream=True)  # and reads nothing, yet
    # The master writes parts until the socket's buffer is full, then waits.
    server.until(lambda: server.connections and server.connections[0].out, "a full socket")
    for _ in range(20):  # loop turns in which the master could go on, but must not
        server.loop.run_once(0.01)
    waiting = server.connections[0]
    assert len(calls) < MANY / 2  # most of the job is not read from the store yet
    assert len(waiting.out) < 1000  # one part of about 250 bytes, at most
    # Once the client reads, the rest follows.
    server.until(lambda: client.read() or client.closed, "the rest of the job")
    server.close()
    assert sum(len(r.body["hosts"]) for r in client.replies) == MANY
    assert len(calls) == MANY


def test_a_client_that_leaves_stops_the_parts(tmp_path, conn, monkeypatch):
    store = stored_job(conn, MANY, answered=MANY)
    monkeypatch.setattr(history, "SHOW_PART_BYTES", 1)
    calls = counting(store)
    server = Server(tmp_path, store)
    client = Client(server.path, stream=True)
    server.until(lambda: server.connections and server.connections[0].out, "a full socket")
    client.sock.close()
    server.until(lambda: server.connections[0].closed, "the master to see the client leave")
    read = len(calls)
    for _ in range(20):
        server.loop.run_once(0.01)
    server.close()
    assert len(calls) == read < MANY


def test_a_store_error_after_the_first_part_is_answered(tmp_path, conn, monkeypatch):
    store = stored_job(conn, 10, answered=10)
    monkeypatch.setattr(history, "SHOW_PART_BYTES", 1)
    read = store.hosts_after

    def failing(jid, after, **kwargs):
        if after >= "web00001":
            raise StoreError("database /x: database is locked")
        return read(jid, after, **kwargs)

    store.hosts_after = failing
    server = Server(tmp_path, store)
    client = Client(server.path, stream=True)
    server.until(lambda: client.read() or client.closed, "the answer")
    server.close()
    types = [r.type for r in client.replies]
    assert types == [MsgType.JOB_REPLY, MsgType.JOB_REPLY, MsgType.ERROR]
    assert client.replies[1].body["more"] is True
    assert "database is locked" in client.replies[2].body["message"]


def test_a_cli_from_before_gets_one_reply_if_the_job_is_small(tmp_path, conn, monkeypatch):
    store = stored_job(conn, 30, answered=20)
    server = Server(tmp_path, store)
    client = Client(server.path)  # no "stream"
    server.until(lambda: client.read() or client.closed, "the answer")
    [reply] = client.replies
    assert reply.type is MsgType.JOB_REPLY and "more" not in reply.body
    assert len(reply.body["hosts"]) == 30
    # A larger one would be built whole in the master's memory: refused.
    one = len(codec.pack(ping("web00000")))
    monkeypatch.setattr(history, "MAX_UNSTREAMED_BYTES", 19 * one)
    client = Client(server.path)
    server.until(lambda: client.read() or client.closed, "the answer")
    server.close()
    [error] = client.replies
    assert error.type is MsgType.ERROR
    assert error.body["message"] == (
        f"job {JID}'s results take {20 * one} bytes, too many for one reply; "
        "this safcm-master command is older than the daemon: use the installed one"
    )


@pytest.mark.parametrize("stream", [True, None])
def test_one_host_of_a_job(tmp_path, conn, stream):
    store = stored_job(conn, 30, answered=20)
    server = Server(tmp_path, store)
    client = Client(server.path, host="web00003", **({} if stream is None else {"stream": True}))
    server.until(lambda: client.read() or client.closed, "the answer")
    server.close()
    [reply] = client.replies
    assert [h["host"] for h in reply.body["hosts"]] == ["web00003"]
    assert reply.body.get("more") is (False if stream else None)


def test_a_connection_closed_before_its_turn_sends_no_more(tmp_path, sqlite_conn):
    from safcm.master.control import ControlConnection

    server = Server(tmp_path, JobStore(sqlite_conn))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    connection = ControlConnection(server.server, ours, 0, "root")
    called = []
    connection.when_drained(lambda: called.append(1))  # due at the next loop turn
    connection.close()
    server.loop.run_once(0.01)
    connection.when_drained(lambda: called.append(2))  # closed: never
    server.loop.run_once(0.01)
    server.close()
    theirs.close()
    assert called == []


def test_the_cli_tells_a_job_cut_short_from_a_whole_one(tmp_path, sqlite_conn):
    """The CLI reads parts up to the one without "more"; a daemon that stops
    before it (killed, or a bug) is an error, not a shorter job."""
    from safcm.common.errors import DaemonError
    from safcm.master import cli
    from safcm.master.client import ControlClient

    store = stored_job(sqlite_conn, 3, answered=3)
    server = Server(tmp_path, store)
    whole = History(store, fail)

    def cut_short(conn, msg):
        job = store.get_job(JID)
        hosts, _ = store.hosts_after(JID, "", max_bytes=1)
        conn.send(MsgType.JOB_REPLY, history._job_reply(job, hosts, more=True))
        conn.finish()

    outcomes = []

    def read():
        with ControlClient(server.path) as client:
            client.send(
                MsgType.JOBS,
                {
                    "action": "show",
                    "host": None,
                    "target": None,
                    "limit": 1,
                    "jid": JID,
                    "stream": True,
                },
            )
            try:
                outcomes.append([h["host"] for p in cli._job_parts(client) for h in p["hosts"]])
            except DaemonError as e:
                outcomes.append(str(e))

    for handler in (whole.on_jobs, cut_short):
        server.cli(handler, read)
    server.close()
    assert outcomes == [
        ["web00000", "web00001", "web00002"],
        "the master daemon closed the connection before it had sent every host of the job",
    ]


def test_jobs_show_json_cut_short_ends_its_line_and_fails(tmp_path, sqlite_conn):
    """`jobs show --json` writes hosts as they come: if the daemon stops
    midway, what was written is left on its line, the error follows on a
    line of its own, and the command fails."""
    import argparse
    import io
    import json

    from safcm.common.errors import DaemonError
    from safcm.master import cli
    from safcm.master.settings import MasterSettings

    store = stored_job(sqlite_conn, 3, answered=3)
    server = Server(tmp_path, store)
    whole = History(store, fail)

    def cut_short(conn, msg):
        hosts, _ = store.hosts_after(JID, "", max_bytes=1)
        conn.send(MsgType.JOB_REPLY, history._job_reply(store.get_job(JID), hosts, more=True))
        conn.finish()

    settings = MasterSettings(state_dir=str(tmp_path), control_socket=server.path)
    args = argparse.Namespace(action="show", jid=JID, host=None, json=True)
    outputs, errors = [], []

    def show():
        out = io.StringIO()
        try:
            cli.jobs_command(settings, args, out)
        except DaemonError as e:
            errors.append(str(e))
        outputs.append(out.getvalue())

    for handler in (whole.on_jobs, cut_short):
        server.cli(handler, show)
    server.close()
    document = json.loads(outputs[0])
    assert [h["host"] for h in document["hosts"]] == ["web00000", "web00001", "web00002"]
    assert document["summary"]["hosts"] == 3
    # One host, then the line ends (the error document, under --json, is
    # written by cli.main() after it).
    assert outputs[1].startswith('{"deadline":') and outputs[1].endswith('"ok"}\n')
    assert outputs[1].count("\n") == 1 and outputs[1].count('"host":') == 1
    assert errors == [
        "the master daemon closed the connection before it had sent every host of the job"
    ]
