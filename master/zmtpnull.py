"""The key port's wire, read here and not by libzmq: ZMTP 3 with the NULL
mechanism (RFC 23 and 37), over a ZMQ_STREAM socket.

Why: libzmq keeps every frame of a multipart message until the last one has
come, with no bound on their count. ZMQ_MAXMSGSIZE limits one frame, and the
queue limits (HWM) count whole messages. A stranger with no key streamed
3 GiB of 200-byte frames, each marked "more", into one unfinished message
on the plain key port, and the master grew to 6.3 GiB in 8 s. On a
ZMQ_STREAM socket libzmq hands over the bytes as they come, each read a
message of its own, so the HWM bounds what waits for us (at most KEY_RCVHWM
reads of about 8 KiB per connection). Past the greeting this parser keeps
at most one frame of a connection.

A minion's DEALER talks to it as to a ROUTER, unchanged: a greeting, a READY
command each way, then one-frame requests and replies. A multipart message,
an oversized frame, another mechanism or protocol version ends the
connection (ZmtpError says why).

Pure: bytes in, messages out; master/keys.py does the I/O.
"""

from __future__ import annotations

import struct

from safcm.common.errors import ProtocolError

# The greeting, 64 bytes: signature, version 3.0, mechanism, as-server, filler.
GREETING_BYTES = 64
_SIGNATURE_START, _SIGNATURE_END = 0xFF, 0x7F
_VERSION_AT = 10
_MECHANISM = slice(12, 32)
NULL_MECHANISM = b"NULL".ljust(20, b"\0")
GREETING = (
    bytes([_SIGNATURE_START])
    + bytes(8)
    + bytes([_SIGNATURE_END, 3, 0])
    + NULL_MECHANISM
    + bytes(32)
)

# Frame flags (RFC 23).
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
# The largest a short frame's size byte says.
_SHORT_MAX = 255
# A READY command carries a few properties (Socket-Type, Identity): this is
# far above what libzmq sends, and bounds what one connection makes us keep.
MAX_COMMAND_BYTES = 1024


def _command(name: bytes, data: bytes) -> bytes:
    return bytes([len(name)]) + name + data


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def frame(body: bytes, *, command: bool = False) -> bytes:
    """One frame (RFC 23): flags, size, body."""
    flags = _COMMAND if command else 0
    if len(body) <= _SHORT_MAX:
        return bytes([flags, len(body)]) + body
    return bytes([flags | _LONG]) + struct.pack(">Q", len(body)) + body


# What the master sends when a connection opens: its greeting and READY.
HELLO = GREETING + frame(_command(b"READY", _property(b"Socket-Type", b"ROUTER")), command=True)


class ZmtpError(ProtocolError):
    """The peer broke the key port's wire: the connection is ended."""


class NullConnection:
    """What one connection sent so far: feed() the bytes as they come, get
    back each complete one-frame message."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame  # bytes of one message's body
        self._buf = b""
        self._greeted = False
        self._ready = False

    def feed(self, data: bytes) -> list[bytes]:
        """The messages `data` completes, in order; ZmtpError if the peer
        broke the wire (nothing it sent after is read)."""
        self._buf += data
        messages: list[bytes] = []
        if not self._greeted:
            if len(self._buf) < GREETING_BYTES:
                self._check_greeting(self._buf)
                return messages
            self._check_greeting(self._buf[:GREETING_BYTES])
            self._buf = self._buf[GREETING_BYTES:]
            self._greeted = True
        while True:
            taken = self._frame()
            if taken is None:
                return messages
            flags, body = taken
            if flags & _COMMAND:
                self._on_command(body)
            elif not self._ready:
                raise ZmtpError("a message before the READY command")
            else:
                messages.append(body)

    def _check_greeting(self, part: bytes) -> None:
        """Refuse a greeting as soon as what came of it is wrong."""
        if part[:1] and part[0] != _SIGNATURE_START:
            raise ZmtpError("not a ZMTP greeting")
        if len(part) > 9 and part[9] != _SIGNATURE_END:
            raise ZmtpError("not a ZMTP greeting")
        if len(part) > _VERSION_AT and part[_VERSION_AT] < 3:
            raise ZmtpError(f"ZMTP version {part[_VERSION_AT]}, not 3")
        if len(part) >= _MECHANISM.stop and part[_MECHANISM] != NULL_MECHANISM:
            mechanism = part[_MECHANISM].rstrip(b"\0").decode("ascii", "replace")
            raise ZmtpError(f"mechanism {mechanism!r}; the key port takes NULL only")

    def _frame(self) -> tuple[int, bytes] | None:
        """The next whole frame, taken from the buffer; None if it has not
        all come. Its size is checked as soon as its header is here."""
        buf = self._buf
        if len(buf) < 2:
            return None
        flags = buf[0]
        if flags & ~(_MORE | _LONG | _COMMAND):
            raise ZmtpError(f"frame flags {flags:#04x}")
        if flags & _MORE:
            raise ZmtpError("a multipart message; the key port takes one frame")
        header = 9 if flags & _LONG else 2
        if len(buf) < header:
            return None
        size = struct.unpack(">Q", buf[1:9])[0] if flags & _LONG else buf[1]
        limit = MAX_COMMAND_BYTES if flags & _COMMAND else self.max_frame
        if size > limit:
            raise ZmtpError(f"a frame of {size} bytes, more than {limit}")
        if len(buf) < header + size:
            return None
        self._buf = buf[header + size :]
        return flags, buf[header : header + size]

    def _on_command(self, body: bytes) -> None:
        name = body[1 : 1 + body[0]] if body else b""
        if name == b"READY" and not self._ready:
            self._ready = True
            return
        # A second READY, or PING, ERROR or another command a NULL peer has
        # no use for here: a minion's DEALER sends none of them.
        raise ZmtpError(f"command {name.decode('ascii', 'replace')!r}")
