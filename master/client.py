"""The CLI's side of the master's control socket (the daemon's side: master/control.py).

A blocking AF_UNIX connection carrying plain control messages, each framed
with a 4-byte length (common/wire.py). NOTE: this module is imported by
every `safcm-master` command that talks to the daemon, so it imports only
common/wire.py and the standard library's light modules: the requests are
checked by the daemon (an invalid one is answered with an ERROR, code
"protocol"), and the replies were checked against their schemas by the
daemon when it encoded them.
"""

from __future__ import annotations

# NOTE: _socket, the C module under `socket`: the CLI needs only a blocking
# AF_UNIX stream, and socket.py's enums cost every command 3 ms (bench/cli.py).
import _socket
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from safcm.common.errors import DaemonError, RemoteError
from safcm.common.lightwire import CONNECT_TIMEOUT, NO_ANSWER
from safcm.common.wire import FrameReader, MsgType, Reply, decode_reply, encode_frame, pack_plain

# Bytes read from the daemon per recv().
READ_CHUNK = 256 * 1024


class ControlClient:
    """A blocking connection from the CLI to the daemon."""

    def __init__(self, path: str, timeout: float = CONNECT_TIMEOUT) -> None:
        self.path = path
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            self.sock.close()
            raise DaemonError(
                f"the master daemon is not running (nothing listens on {path}); start it with "
                "'systemctl start safcm-master' or 'safcm-master daemon'"
            ) from e
        except PermissionError as e:
            self.sock.close()
            raise DaemonError(_denied(path)) from e
        except OSError as e:
            self.sock.close()
            raise DaemonError(f"cannot reach the master daemon at {path}: {e.strerror}") from e
        self.reader = FrameReader()
        self.frames: list[bytes] = []

    def send(self, msg_type: MsgType, body: dict[str, Any]) -> None:
        # The daemon may have closed the connection already (it refuses a user
        # at once); what it said before that is still there for replies().
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(encode_frame(pack_plain(msg_type, body)))

    def replies(self, timeout: float | None) -> Iterator[Reply]:
        """Yield replies until the daemon closes the connection; `timeout` bounds
        the wait for each one (None: wait as long as it takes)."""
        self.sock.settimeout(timeout)
        while True:
            while self.frames:
                yield decode_reply(self.frames.pop(0))
            try:
                data = self.sock.recv(READ_CHUNK)
            except TimeoutError as e:
                raise DaemonError(NO_ANSWER) from e
            except ConnectionResetError:
                data = b""
            if not data:
                self.reader.eof()
                return
            self.frames.extend(self.reader.feed(data))

    def request(self, msg_type: MsgType, body: dict[str, Any], timeout: float = 60) -> Reply:
        """Send one request and return its one reply (an ERROR raises RemoteError)."""
        self.send(msg_type, body)
        for reply in self.replies(timeout):
            raise_for_error(reply)
            return reply
        raise DaemonError("the master daemon closed the connection without an answer")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _denied(path: str) -> str:
    """Why the kernel refused to connect this user to the control socket at
    `path` (EACCES): a directory on the way it may not pass through, or the
    socket's own mode. (A refusal by the daemon itself is an ERROR it sends.)"""
    directories = []
    directory = os.path.dirname(path) or "."
    while directory not in directories:
        directories.append(directory)
        directory = os.path.dirname(directory) or "."
    for directory in reversed(directories):
        if not os.access(directory, os.X_OK):
            return (
                f"permission denied on {directory}, a directory on the way to the control "
                f"socket {path}: you may not pass through it. Root may, and the members of "
                "admin_group (master.yaml) when the socket is in state_dir (log in again "
                "after being added to the group)"
            )
    return (
        f"permission denied on the control socket {path}: only root and the members of "
        "its group may use the master (admin_group in master.yaml; after being added to "
        "the group, log in again)"
    )


def raise_for_error(msg: Reply) -> None:
    if msg.type is MsgType.ERROR:
        raise RemoteError(msg.body["code"], msg.body["message"], msg.body["problems"])
