"""The lightest base of the wire: what the light commands need to speak the control socket.

`safcm-master keys list` and `jobs list` (master/lightcli.py) should cost
little more than the interpreter (issue 10: at most 2x `python -c pass`;
bench/cli.py measures it). The wire's own base, common/wire.py, loads the
enum module and msgpack: about 8 ms of a 20 ms budget. So this module
holds the part of the wire those commands use, and common/wire.py and
common/codec.py build on it and re-export it:

- the protocol version, the control frame's limits and framing
  (encode_frame, FrameReader), the spellings of a host's outcome;
- the type codes of the light requests and their replies (the same numbers
  as wire.MsgType; tests/common/test_lightwire.py checks);
- pack() and unpack(): msgpack in plain Python, for the small control
  messages of the light commands. unpack() makes exactly the checks of
  codec.unpack() (the limits are shared, defined here) and raises only
  ProtocolError; tests/common/test_lightwire.py holds the two to the same
  answer for any bytes. The daemon decodes what pack() makes with codec.

NOTE: import nothing here beyond the modules every interpreter has loaded
at start-up, struct and common/errors.py; tests/master/test_lightcli.py
checks what the light commands load.
"""

from __future__ import annotations

import struct

from safcm.common.errors import ProtocolError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (4 ms)
if TYPE_CHECKING:
    from typing import Any

# The version this code speaks, and the oldest it still accepts. A message
# outside MIN..PROTOCOL_VERSION is refused with a message that says so.
PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1

# A control message, between the daemon and a local administrator's CLI: a
# `jobs show` of a whole job carries every host's result. Not tied to
# MAX_RESULT_BYTES (the bound on what one minion may send): 100 hosts of a
# 1000-file job already make 12 MB. Jobs of thousands of hosts need the reply
# streamed host by host (issue 11), not a larger frame.
MAX_CONTROL_FRAME_BYTES = 256 * 1024 * 1024
# Nesting of a message body: the deepest schema (RUN_HOST_RESULT, down to a
# change's file state) has 6 levels; a little headroom for new fields.
MAX_BODY_DEPTH = 8
# The length prefix of a control frame: 4 bytes, big-endian.
FRAME_HEADER_BYTES = 4

# Largest string or byte string the unpacker builds, in bytes. Fields have
# smaller limits in their schemas; this only bounds what is allocated.
MAX_SCALAR_BYTES = 64 * 1024 * 1024
# Most items in one list: a job of this many files is the largest we expect.
MAX_LIST_ITEMS = 65536
# Most entries in one map: every map on the wire has a fixed, small set of keys.
MAX_MAP_ENTRIES = 64

# In a RUN_HOST_RESULT: a host that never answered has no result.
NO_RESPONSE = "no response"
# How a host of a stored job fared, spelt as everywhere (master/jobstore.py
# outcome(), the JSON format): the JOBS request's status filter.
JOB_OUTCOMES = ("changed", "ok", "failed", NO_RESPONSE, "pending")
# Most jobs `jobs list` prints when no --limit is given.
DEFAULT_LIST_LIMIT = 20

# The type codes of the light commands' requests and replies (wire.MsgType's).
KEYS = 102
JOBS = 103
KEYS_REPLY = 114
ERROR = 115
JOBS_REPLY = 116

# Longest an envelope may live, in seconds, from issued-at to expires-at
# (common/crypto.py enforces it). A job is re-published until its deadline,
# so this also bounds a job's timeout, and it bounds how long the seen-jid
# store keeps an entry. Here, not in common/crypto.py, because the CLI and
# the settings check a timeout against it without loading the crypto.
MAX_ENVELOPE_TTL = 24 * 3600
# Seconds a job's envelope lives beyond the job's deadline, so that one
# received just before the deadline can still be opened (clock skew).
ENVELOPE_SLACK = 5
# A job's timeout, in whole seconds (run --timeout, job_timeout in
# master.yaml): at least a second, and at most what lets its envelope live
# until the deadline plus ENVELOPE_SLACK. One limit, checked by the CLI,
# the RUN request's schema and the master's settings.
MIN_JOB_TIMEOUT = 1
MAX_JOB_TIMEOUT = MAX_ENVELOPE_TTL - ENVELOPE_SLACK

# Limits of the control requests that the CLI checks before it sends them,
# to say in the user's words what is wrong (common/protocol.py's schemas
# use the same): the longest user name (Linux allows 32; some directories
# more) and target expression, in characters, and the most jobs one
# `jobs list` returns.
MAX_NAME_CHARS = 256
MAX_TARGET_CHARS = 4096
MAX_JOBS_LISTED = 10_000
# The latest time a request can name, in seconds since the epoch (the year
# 36812): any sane clock fits.
MAX_TIME = 2**40

# Seconds the CLI waits for the control socket to accept it.
CONNECT_TIMEOUT = 5.0
# What the CLI says when a reply does not come in time.
NO_ANSWER = "the master daemon did not answer in time"


# ---- control socket framing ----


def encode_frame(payload: bytes, *, max_bytes: int = MAX_CONTROL_FRAME_BYTES) -> bytes:
    """`payload` with its length in front, for the control socket's byte stream."""
    if len(payload) > max_bytes:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds {max_bytes}")
    return len(payload).to_bytes(FRAME_HEADER_BYTES, "big") + payload


class FrameReader:
    """Splits a byte stream into frames; refuses a frame longer than `max_bytes`.

    Feed it whatever recv() returned; it returns the frames completed so far.
    The length is checked as soon as the 4-byte prefix is in, before any of
    the frame is buffered. At the end of the stream, call eof(): a partial
    frame is an error there.
    """

    def __init__(self, max_bytes: int = MAX_CONTROL_FRAME_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._need: int | None = None  # payload length of the frame being read

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames = []
        while True:
            if self._need is None:
                if len(self._buffer) < FRAME_HEADER_BYTES:
                    break
                need = int.from_bytes(self._buffer[:FRAME_HEADER_BYTES], "big")
                if need > self.max_bytes:
                    raise ProtocolError(f"frame of {need} bytes exceeds {self.max_bytes}")
                del self._buffer[:FRAME_HEADER_BYTES]
                self._need = need
            if len(self._buffer) < self._need:
                break
            frames.append(bytes(self._buffer[: self._need]))
            del self._buffer[: self._need]
            self._need = None
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a complete frame."""
        return len(self._buffer) + (0 if self._need is None else FRAME_HEADER_BYTES)

    def eof(self) -> None:
        """Raise ProtocolError if the stream ended inside a frame."""
        if self.pending:
            raise ProtocolError(f"stream ended inside a frame ({self.pending} bytes pending)")


# ---- plain control messages: [version, type, body] ----


def pack_request(code: int, body: dict[str, Any]) -> bytes:
    """A request of the light commands as one control frame, unchecked (the
    daemon checks it against its schema and answers an ERROR)."""
    return encode_frame(pack([PROTOCOL_VERSION, code, body]))


def unpack_reply(frame: bytes) -> tuple[int, dict[str, Any]]:
    """The type code and body of a control reply: a supported version, an int
    type, a map for a body (the fields were checked by the master, which
    encoded them against the type's schema). ProtocolError otherwise."""
    value = unpack(frame, max_depth=MAX_BODY_DEPTH + 1)
    if type(value) is not list or len(value) != 3:
        raise ProtocolError("a plain message is an array of [version, type, body]")
    version, code, body = value
    if type(version) is not int or not MIN_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {repr(version)[:20]} is not supported")
    if type(code) is not int or type(body) is not dict:
        raise ProtocolError("a reply is [version, type code, map]")
    return code, body


# ---- msgpack in plain Python ----

_F32, _F64 = struct.Struct(">f"), struct.Struct(">d")
# Byte widths of the sized headers: uint8..64, int8..64, str8..32, bin8..32,
# array16/32, map16/32 (the msgpack specification's format table).
_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_INT = {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_STR = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_ARRAY = {0xDC: 2, 0xDD: 4}
_MAP = {0xDE: 2, 0xDF: 4}
# ext8/16/32 and fixext1..16 (the timestamp type is one of these).
_EXT = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})


def unpack(data: bytes, *, max_depth: int) -> Any:
    """Decode one msgpack object from `data`, as codec.unpack() does: str is
    UTF-8 text, bin is bytes, map keys are str or bytes; no ext types, no
    nesting deeper than `max_depth`, the size limits above, no trailing
    bytes. ProtocolError for anything else."""
    if not isinstance(data, bytes):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    value, end = _Unpacker(data, max_depth).read(0, 0)
    if end < len(data):
        raise ProtocolError(f"{len(data) - end} unexpected bytes after the message")
    return value


class _Unpacker:
    __slots__ = ("data", "max_depth")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.max_depth = max_depth

    def take(self, i: int, n: int) -> bytes:
        if i + n > len(self.data):
            raise ProtocolError("message is truncated")
        return self.data[i : i + n]

    def length(self, i: int, width: int) -> int:
        return int.from_bytes(self.take(i, width), "big")

    def read(self, i: int, depth: int) -> tuple[Any, int]:
        """The object at offset `i` inside `depth` containers, and where it ends."""
        if i >= len(self.data):
            raise ProtocolError("message is truncated")
        b = self.data[i]
        i += 1
        if b <= 0x7F:
            return b, i
        if b >= 0xE0:
            return b - 0x100, i
        if 0xA0 <= b <= 0xBF:
            return self.text(i, b & 0x1F)
        if b <= 0x8F:
            return self.map(i, b & 0x0F, depth)
        if b <= 0x9F:
            return self.array(i, b & 0x0F, depth)
        if b == 0xC0:
            return None, i
        if b == 0xC2:
            return False, i
        if b == 0xC3:
            return True, i
        if b in _UINT:
            width = _UINT[b]
            return int.from_bytes(self.take(i, width), "big"), i + width
        if b in _INT:
            width = _INT[b]
            return int.from_bytes(self.take(i, width), "big", signed=True), i + width
        if b == 0xCA:
            return _F32.unpack(self.take(i, 4))[0], i + 4
        if b == 0xCB:
            return _F64.unpack(self.take(i, 8))[0], i + 8
        if b in _STR:
            return self.text(i + _STR[b], self.length(i, _STR[b]))
        if b in _BIN:
            n = self.length(i, _BIN[b])
            if n > MAX_SCALAR_BYTES:
                raise ProtocolError(f"a byte string of {n} bytes exceeds {MAX_SCALAR_BYTES}")
            i += _BIN[b]
            return self.take(i, n), i + n
        if b in _ARRAY:
            return self.array(i + _ARRAY[b], self.length(i, _ARRAY[b]), depth)
        if b in _MAP:
            return self.map(i + _MAP[b], self.length(i, _MAP[b]), depth)
        if b in _EXT:
            raise ProtocolError("message contains a msgpack ext type, which is not allowed")
        raise ProtocolError(f"message contains the invalid msgpack byte {b:#04x}")

    def text(self, i: int, n: int) -> tuple[str, int]:
        if n > MAX_SCALAR_BYTES:
            raise ProtocolError(f"a string of {n} bytes exceeds {MAX_SCALAR_BYTES}")
        try:
            return self.take(i, n).decode("utf-8"), i + n
        except UnicodeDecodeError:
            raise ProtocolError("message is not valid msgpack: a string is not UTF-8") from None

    def container(self, i: int, count: int, depth: int) -> None:
        """Refuse a container too deep, or one that claims more items than there are bytes left."""
        if depth + 1 > self.max_depth:
            raise ProtocolError(f"message is nested deeper than {self.max_depth} levels")
        if count > len(self.data) - i:
            raise ProtocolError("a container claims more items than there are bytes left")

    def array(self, i: int, n: int, depth: int) -> tuple[list[Any], int]:
        self.container(i, n, depth)
        if n > MAX_LIST_ITEMS:
            raise ProtocolError(f"a list of {n} items exceeds {MAX_LIST_ITEMS}")
        items = []
        for _ in range(n):
            item, i = self.read(i, depth + 1)
            items.append(item)
        return items, i

    def map(self, i: int, n: int, depth: int) -> tuple[dict[Any, Any], int]:
        self.container(i, 2 * n, depth)
        if n > MAX_MAP_ENTRIES:
            raise ProtocolError(f"a map of {n} entries exceeds {MAX_MAP_ENTRIES}")
        result = {}
        for _ in range(n):
            key, i = self.read(i, depth + 1)
            if type(key) is not str and type(key) is not bytes:
                raise ProtocolError("message is not valid msgpack: a map key is not a string")
            result[key], i = self.read(i, depth + 1)
        return result, i


def pack(value: Any) -> bytes:
    """`value` (None, bool, int, float, str, bytes, and lists, tuples and maps
    of them) in msgpack, byte for byte as msgpack.packb() writes it.
    ProtocolError for anything else (an int beyond 64 bits, a str that is not
    Unicode text, another type)."""
    out = bytearray()
    _pack(value, out)
    return bytes(out)


def _pack(value: Any, out: bytearray) -> None:
    if value is None:
        out.append(0xC0)
    elif value is True or value is False:
        out.append(0xC3 if value else 0xC2)
    elif type(value) is int:
        _pack_int(value, out)
    elif type(value) is float:
        out.append(0xCB)
        out += _F64.pack(value)
    elif type(value) is str:
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError("a string is not Unicode text") from None
        _header(out, len(data), 0xA0, 31, (0xD9, 0xDA, 0xDB))
        out += data
    elif type(value) is bytes:
        _header(out, len(value), None, 0, (0xC4, 0xC5, 0xC6))
        out += value
    elif type(value) is list or type(value) is tuple:
        _header(out, len(value), 0x90, 15, (None, 0xDC, 0xDD))
        for item in value:
            _pack(item, out)
    elif type(value) is dict:
        _header(out, len(value), 0x80, 15, (None, 0xDE, 0xDF))
        for key, item in value.items():
            _pack(key, out)
            _pack(item, out)
    else:
        raise ProtocolError(f"cannot pack a {type(value).__name__}")


def _header(
    out: bytearray, n: int, fix: int | None, fix_max: int, sized: tuple[int | None, int, int]
) -> None:
    """The header of a str, bin, array or map of `n` items: the fix form up to
    `fix_max`, then the 8-, 16- and 32-bit forms (None: the type has none)."""
    if fix is not None and n <= fix_max:
        out.append(fix | n)
    elif sized[0] is not None and n < 1 << 8:
        out.append(sized[0])
        out.append(n)
    elif n < 1 << 16:
        out.append(sized[1])
        out += n.to_bytes(2, "big")
    elif n < 1 << 32:
        out.append(sized[2])
        out += n.to_bytes(4, "big")
    else:
        raise ProtocolError(f"{n} items are too many for msgpack")


def _pack_int(n: int, out: bytearray) -> None:
    if 0 <= n < 0x80 or -32 <= n < 0:
        out.append(n & 0xFF)
    elif n >= 0:
        for code, width in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)):
            if n < 1 << (8 * width):
                out.append(code)
                out += n.to_bytes(width, "big")
                return
        raise ProtocolError(f"{n} is too large for msgpack")
    else:
        for code, width in ((0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
            if n >= -(1 << (8 * width - 1)):
                out.append(code)
                out += n.to_bytes(width, "big", signed=True)
                return
        raise ProtocolError(f"{n} is too small for msgpack")
