"""The master's local control socket: how the CLI reaches the daemon.

An AF_UNIX stream socket carrying the protocol's plain control messages, each
framed with a 4-byte length (protocol.encode_frame/FrameReader). Two locks on
the door, both checked: the socket file is 0600 root (0660 root:admin_group
with an admin group), and every connection's peer credentials (SO_PEERCRED,
given by the kernel, not by the client) must be root or a member of the
admin group. The user name recorded for a job comes from those credentials.

The CLI's side, ControlClient, is master/client.py (re-exported here).
The daemon side never blocks: reads are buffered until a frame is whole, and
writes are queued and flushed when the socket is writable, so a CLI that is
suspended (Ctrl-Z) or slow cannot stall the master.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from safcm.common.errors import DaemonError, ProtocolError
from safcm.common.loop import Loop, Timer
from safcm.common.protocol import (
    MAX_CONTROL_REQUEST_BYTES,
    Channel,
    FrameReader,
    Message,
    MsgType,
    decode_plain,
    encode_frame,
    encode_plain,
)
from safcm.common.ratelimit import PeerLog

# The CLI's side lives apart, light enough for every command to import; it is
# re-exported here, where the daemon's side of the same socket is.
from safcm.master.client import CONNECT_TIMEOUT, ControlClient, raise_for_error
from safcm.master.settings import MAX_SOCKET_PATH

__all__ = [
    "CONNECT_TIMEOUT",
    "ControlClient",
    "ControlConnection",
    "ControlServer",
    "raise_for_error",
]

log = logging.getLogger("safcm-master")

# Pending connections the kernel queues for accept().
LISTEN_BACKLOG = 64
# Bytes read from a client per readable event.
READ_CHUNK = 256 * 1024
# Most bytes queued for a client that does not read; beyond, it is dropped
# (a job it started goes on; `jobs show` finds its results later). A run's
# results queue at most DEFER_BYTES + MAKE_BYTES and one result, far below.
MAX_BACKLOG_BYTES = 256 * 1024 * 1024
# Bytes queued for a client beyond which the replies that can be made again
# later (a run's results: the job store holds them) wait as the means to
# make them, not as bytes (send_later()): a CLI that reads slower than a
# large run's results come (piped into a pager, a terminal stopped with
# ^S, a slow ssh) holds about this much of the master's memory, and a
# small record per host, instead of every result until it is dropped at
# MAX_BACKLOG_BYTES (a files create of 10,000 hosts sends about 1.2 GB).
DEFER_BYTES = 16 * 1024 * 1024
# Bytes of replies made again in one loop turn at most, once the client has
# read what was queued down to half of DEFER_BYTES: reading a result back and
# packing it takes the loop about 10 ms per MiB.
MAKE_BYTES = 1024 * 1024
# Queued messages handed to the kernel in one sendmsg() at most: more than a
# socket buffer's worth (a files create's result is about 120 KB), and far
# below the kernel's IOV_MAX (1,024).
SEND_CHUNKS = 64
# Seconds the control socket is not watched after an accept failed (at the
# descriptor limit, most likely): poll reports a client waiting in the
# backlog again at once, so retrying at once spins the loop (an audit saw
# 638,182 failures logged in 10 s). Short: a CLI waits this long at most.
ACCEPT_BACKOFF = 0.2
# What a client accepted on the spare descriptor is told before it is closed.
OUT_OF_DESCRIPTORS = (
    "the master has no file descriptor free; it is at its limit (ulimit -n, "
    "LimitNOFILE in its unit); try again, and see its log"
)
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class SendQueue:
    """Bytes queued for a stream socket, kept as the pieces they were queued
    in: sending takes bytes from the front, queuing adds a piece at the back,
    and neither copies what waits. A bytearray consumed at the front and
    appended at the back (as this was) copies all it holds whenever it
    grows, in one C call that holds the GIL: for a CLI that reads slower
    than results come (a files create of 4,000 hosts sends 122 KB per host),
    up to 374 ms of the master's loop at a time, and seconds of its CPU
    (bench/sendqueue.py)."""

    def __init__(self) -> None:
        self.pieces: deque[bytes] = deque()
        self.size = 0  # bytes queued and not sent
        self.offset = 0  # bytes of the first piece already sent

    def __len__(self) -> int:
        return self.size

    def put(self, data: bytes) -> None:
        if data:
            self.pieces.append(data)
            self.size += len(data)

    def front(self, most: int) -> list[memoryview]:
        """The first `most` pieces, the first one without what was sent of it."""
        first = memoryview(self.pieces[0])[self.offset :]
        return [first, *(memoryview(self.pieces[i]) for i in range(1, min(most, len(self.pieces))))]

    def sent(self, count: int) -> None:
        """`count` bytes from the front went."""
        self.size -= count
        count += self.offset
        while self.pieces and count >= len(self.pieces[0]):
            count -= len(self.pieces.popleft())
        self.offset = count


class ControlConnection:
    """One CLI connected to the daemon."""

    def __init__(self, server: ControlServer, sock: socket.socket, uid: int, user: str) -> None:
        self.server = server
        self.sock = sock
        self.uid = uid
        self.user = user
        self.reader = FrameReader(MAX_CONTROL_REQUEST_BYTES)
        self.out = SendQueue()
        self.closed = False
        self.close_when_flushed = False
        self.on_close: list[Callable[[ControlConnection], Any]] = []
        self._on_drained: Callable[[], Any] | None = None
        self._flush_due: Timer | None = None
        # Replies held back while the client is behind (send_later()), in
        # order: messages, and the means to make one.
        self.later: deque[bytes | Callable[[], bytes]] = deque()
        self.cut = False  # one of them could not be made: its ERROR is the last reply

    def send(self, msg_type: MsgType, body: dict[str, Any]) -> None:
        self.send_encoded(encode_plain(msg_type, body))

    def send_encoded(self, message: bytes) -> None:
        """Send a message encode_plain() made (a large one is encoded off the loop)."""
        if self.closed or self.cut:
            return
        if self.later:  # after what is held back: the client reads replies in order
            self.later.append(message)
            return
        self._queue(message)

    def behind(self) -> bool:
        """Whether the client is DEFER_BYTES behind, so that what send_later()
        is given waits, and so does everything sent after it."""
        return bool(self.later) or len(self.out) >= DEFER_BYTES

    def send_later(self, make: Callable[[], bytes]) -> None:
        """Send the message make() returns, made once the client is no longer
        behind() (at the end of this loop turn if it is not). make() may read
        the store: an exception it raises ends the request with an ERROR
        that says it, and nothing is sent after that."""
        if self.closed or self.cut:
            return
        self.later.append(make)
        if self._flush_due is None:
            self._flush_due = self.server.loop.call_later(0.0, self._flush)

    def _queue(self, message: bytes) -> None:
        self.out.put(encode_frame(message))
        if len(self.out) > MAX_BACKLOG_BYTES:
            log.warning("control: %s does not read its replies; dropping the connection", self.user)
            self.close()
            return
        # Written at the end of this loop turn, with whatever else the turn
        # sends: a job's results are confirmed a slice at a time, and one
        # write for a slice costs the master (and wakes the CLI) once, not
        # once per host.
        if self._flush_due is None:
            self._flush_due = self.server.loop.call_later(0.0, self._flush)

    def error(self, code: str, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        """Send an ERROR and close once it is written."""
        self.send(MsgType.ERROR, {"code": code, "message": message, "problems": problems or []})
        self.finish()

    def finish(self) -> None:
        """Close after everything queued has been written."""
        self.close_when_flushed = True
        self._flush()

    def when_drained(self, callback: Callable[[], Any]) -> None:
        """Call `callback` once everything queued has been written, on a later
        loop turn: a long reply made a part at a time (`jobs show`) holds one
        part in memory, and leaves the loop to others between two parts.
        Never called if the connection closes first."""
        if self.closed:
            return
        self._on_drained = callback
        if not self.out and not self.later:
            self.server.loop.call_later(0.0, self._drained)

    def _drained(self) -> None:
        callback, self._on_drained = self._on_drained, None
        if callback is not None and not self.closed:
            callback()

    def _flush(self) -> None:
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush_due = None
        made = False
        while not self.closed:
            if self.later and not made and len(self.out) <= DEFER_BYTES // 2:
                self._make_held_back()
                made = True
                continue
            if not self.out:
                break
            try:
                n = self.sock.sendmsg(self.out.front(SEND_CHUNKS))
            except BlockingIOError:
                self.server.loop.add_writer(self.sock, self._flush)
                return
            except OSError:
                self.close()
                return
            self.out.sent(n)
        if self.closed:
            return
        self.server.loop.remove_writer(self.sock)
        if self.later:  # more to make, on a later loop turn
            if self._flush_due is None:
                self._flush_due = self.server.loop.call_later(0.0, self._flush)
        elif self.close_when_flushed:
            self.close()
        elif self._on_drained is not None:
            self.server.loop.call_later(0.0, self._drained)

    def _make_held_back(self) -> None:
        """Queue what was held back, making MAKE_BYTES of replies at most."""
        size = 0
        while self.later and size < MAKE_BYTES:
            item = self.later.popleft()
            if not isinstance(item, bytes):
                try:
                    item = item()
                except Exception as e:
                    log.error("control: a reply to %s cannot be made: %s", self.user, e)
                    # In this order: with nothing held back, send() queues the
                    # ERROR at once; cut after it, it is the last reply.
                    self.later.clear()
                    self.send(MsgType.ERROR, {"code": "failed", "message": str(e), "problems": []})
                    self.cut = self.close_when_flushed = True
                    return
                size += len(item)
            self._queue(item)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._on_drained = None
        self.later.clear()
        if self._flush_due is not None:
            self._flush_due.cancel()
        self.server.loop.remove_reader(self.sock)
        self.server.loop.remove_writer(self.sock)
        self.sock.close()
        self.server.connections.discard(self)
        for callback in self.on_close:
            callback(self)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        try:
            frames = self.reader.feed(data)
            for frame in frames:
                self.server.handle(self, decode_plain(frame, Channel.CONTROL))
        except ProtocolError as e:
            log.warning("control: invalid request from %s: %s", self.user, e)
            self.error("protocol", f"invalid request: {e}")


class ControlServer:
    def __init__(
        self,
        path: str,
        *,
        loop: Loop,
        admin_group: str | None,
        handle: Callable[[ControlConnection, Message], Any],
        peer_log: PeerLog | None = None,
    ) -> None:
        self.path = path
        self.loop = loop
        self.handle = handle
        # Accept failures are logged through the daemon's limiter, if given.
        self.peer_log = peer_log or PeerLog(log, loop.clock)
        self.admin_gid = None if admin_group is None else _group_id(admin_group)
        self.connections: set[ControlConnection] = set()
        self.sock = _listen(path, self.admin_gid)
        # A descriptor held in reserve: at the descriptor limit it is given
        # up to accept the waiting client, which is told why and closed, so
        # the backlog drains instead of waiting for a free descriptor.
        self._spare = _spare()
        self._resume: Timer | None = None  # re-watches the socket after a failed accept
        loop.add_reader(self.sock, self._accept)

    def close(self) -> None:
        for conn in list(self.connections):
            # What the last loop turn queued (the daemon's stop confirms the
            # results it still held), as far as the socket takes it now.
            conn._flush()
            conn.close()
        if self._resume is not None:
            self._resume.cancel()
        self.loop.remove_reader(self.sock)
        self.sock.close()
        if self._spare is not None:
            os.close(self._spare)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                self._accept_failed(e)
                return
            sock.setblocking(False)
            _pid, uid, gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            user = _user_name(uid)
            conn = ControlConnection(self, sock, uid, user)
            self.connections.add(conn)
            self.loop.add_reader(sock, conn.on_readable)
            if not self._allowed(uid, gid):
                log.warning(
                    "control: refused %s (uid %d): not root and not in the admin group", user, uid
                )
                conn.error(
                    "permission",
                    f"permission denied by the master daemon to {user}: only root"
                    + ("" if self.admin_gid is None else " and the admin group")
                    + " may use the master",
                )

    def _accept_failed(self, error: OSError) -> None:
        """Stop watching the socket for ACCEPT_BACKOFF; at the descriptor
        limit, first turn the waiting client away on the spare descriptor."""
        if error.errno in (errno.EMFILE, errno.ENFILE):
            self._turn_away()
        self.peer_log.warning(
            "control: accept failed: %s; accepting again in %.1f s", error, ACCEPT_BACKOFF
        )
        self.loop.remove_reader(self.sock)
        self._resume = self.loop.call_later(ACCEPT_BACKOFF, self._accept_again)

    def _turn_away(self) -> None:
        """Accept one client on the spare descriptor, tell it why, close it."""
        if self._spare is not None:
            os.close(self._spare)
        with contextlib.suppress(OSError):  # libzmq may have taken the spare's number
            sock, _ = self.sock.accept()
            with sock:
                sock.setblocking(False)
                error = {"code": "failed", "message": OUT_OF_DESCRIPTORS, "problems": []}
                with contextlib.suppress(OSError):
                    sock.send(encode_frame(encode_plain(MsgType.ERROR, error)))
        self._spare = _spare()

    def _accept_again(self) -> None:
        self._resume = None
        if self._spare is None:
            self._spare = _spare()
        self.loop.add_reader(self.sock, self._accept)

    def _allowed(self, uid: int, gid: int) -> bool:
        if uid == 0:
            return True
        if self.admin_gid is None:
            return False
        if gid == self.admin_gid:
            return True
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return False
        return self.admin_gid in os.getgrouplist(entry.pw_name, entry.pw_gid)


def _spare() -> int | None:
    """A descriptor to keep in reserve (ControlServer._turn_away); None if
    none is free now."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise DaemonError(f"admin_group {name!r} does not exist on this host") from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _listen(path: str, admin_gid: int | None) -> socket.socket:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise DaemonError(
            f"control socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
            "set control_socket to a shorter path"
        )
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # The socket file must never exist with looser permissions, not even
    # between bind() and chmod(): bind under a umask that leaves only the owner.
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise DaemonError(f"cannot create the control socket {path}: {e.strerror}") from e
    finally:
        os.umask(old)
    if admin_gid is not None:
        os.chown(path, 0, admin_gid)
        os.chmod(path, 0o660)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def _remove_stale(path: str) -> None:
    """Remove a control socket left by a master that died; refuse if one still
    listens, and never remove anything that is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise DaemonError(f"{path} exists and is not a socket; remove it or set control_socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise DaemonError(f"cannot check the old control socket {path}: {e.strerror}") from e
    else:
        raise DaemonError(f"another master daemon is listening on {path}")
    finally:
        probe.close()
    os.unlink(path)
