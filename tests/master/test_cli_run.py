"""`safcm-master run` against a fake daemon that goes away in every way it can:
exit 2 only when nothing was done, exit 1 once the job may have started."""

from __future__ import annotations

import socket
import threading

import pytest

from safcm.common.protocol import FrameReader, MsgType, encode_frame, encode_plain
from safcm.master import cli

JID = "20260101T000000.000001Z"
STARTED = (MsgType.RUN_STARTED, {"jid": JID, "hosts": ["web1"], "skipped": []})
ERROR = (MsgType.ERROR, {"code": "internal", "message": "boom", "problems": []})


class FakeDaemon:
    """Listens on a control socket, reads one request, sends `replies`, then
    closes, sends half a frame, or stays silent, as `then` says."""

    def __init__(self, path: str, replies: list, then: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.replies, self.then = replies, then
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            reader = FrameReader()
            while not reader.feed(conn.recv(65536)):
                pass
            for msg_type, body in self.replies:
                conn.sendall(encode_frame(encode_plain(msg_type, body)))
            if self.then == "half a frame":
                conn.sendall(encode_frame(encode_plain(*STARTED))[:10])
            elif self.then == "silent":
                self.release.wait()

    def close(self) -> None:
        self.release.set()
        self.thread.join()
        self.listener.close()


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "RUN_GRACE", 0.5)  # how long the CLI waits past the timeout
    settings = tmp_path / "master.yaml"
    path = str(tmp_path / "control.sock")
    settings.write_text(f"state_dir: {tmp_path}\ncontrol_socket: {path}\n")
    fakes = []

    def start(replies: list, then: str) -> list[str]:
        fakes.append(FakeDaemon(path, replies, then))
        return ["-c", str(settings), "run", "web1", "ping", "--timeout", "1"]

    yield start
    for fake in fakes:
        fake.close()


@pytest.mark.parametrize(
    ("replies", "then", "lost"),
    [
        ([STARTED], "close", "closed the connection before the job finished"),
        ([STARTED], "silent", "lost the master daemon during the run"),
        ([STARTED], "half a frame", "lost the master daemon during the run"),
        ([STARTED, ERROR], "close", "failed during the run (boom)"),
    ],
)
def test_a_daemon_lost_after_the_job_started_is_exit_1(daemon, capsys, replies, then, lost):
    assert cli.main(daemon(replies, then)) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert lost in err
    assert f"the job goes on: see safcm-master jobs show {JID}" in err


@pytest.mark.parametrize("then", ["close", "silent"])
def test_a_daemon_lost_before_it_confirmed_may_still_have_started_it(daemon, capsys, then):
    assert cli.main(daemon([], then)) == cli.EXIT_FAILED
    assert "it may have started: see safcm-master jobs list" in capsys.readouterr().err


def test_nothing_was_done_is_exit_2(daemon, capsys, tmp_path):
    assert cli.main(daemon([ERROR], "close")) == cli.EXIT_USAGE  # refused: nothing started
    assert "boom" in capsys.readouterr().err
    missing = tmp_path / "other.yaml"
    missing.write_text(f"state_dir: {tmp_path}\ncontrol_socket: {tmp_path}/none.sock\n")
    assert cli.main(["-c", str(missing), "run", "web1", "ping"]) == cli.EXIT_USAGE
    assert "the master daemon is not running" in capsys.readouterr().err
