"""The light base of the wire: version, message types, plain packing, control framing.

common/protocol.py defines the wire and checks every message against its
schema; it builds on this module and re-exports all of it. This part is kept
apart so that the CLI, which only talks to its own master over the control
socket, can speak the wire without loading the schemas and the crypto behind
them (about 100 ms of imports for a command that should take 40 ms; see
bench/cli.py). NOTE: import nothing here beyond the standard library's light
modules, msgpack (common/codec.py) and common/errors.py;
tests/system/test_cli.py checks what the light commands load. The lightest
part, which `keys list` and `jobs list` use alone (master/lightcli.py), is
common/lightwire.py: the version, the frame limits and the framing are
defined there and re-exported here.

The control socket's frames: a 4-byte big-endian length, then a plain
message, the msgpack array [version, type, body] (encode_frame, FrameReader,
pack_plain, unpack_plain).
"""

from __future__ import annotations

import enum
from typing import Any

from safcm.common import codec, lightwire
from safcm.common.errors import ProtocolError

# The part the light commands use alone (common/lightwire.py), re-exported.
PROTOCOL_VERSION = lightwire.PROTOCOL_VERSION
MIN_PROTOCOL_VERSION = lightwire.MIN_PROTOCOL_VERSION
MAX_CONTROL_FRAME_BYTES = lightwire.MAX_CONTROL_FRAME_BYTES
MAX_BODY_DEPTH = lightwire.MAX_BODY_DEPTH
FRAME_HEADER_BYTES = lightwire.FRAME_HEADER_BYTES
NO_RESPONSE = lightwire.NO_RESPONSE
JOB_OUTCOMES = lightwire.JOB_OUTCOMES
FrameReader = lightwire.FrameReader
encode_frame = lightwire.encode_frame

# A request from the CLI (RUN, KEYS, JOBS): its largest is a KEYS list of
# MAX_HOSTS ids. What the daemon buffers for one client is bounded by this.
MAX_CONTROL_REQUEST_BYTES = 32 * 1024 * 1024


class MsgType(enum.IntEnum):
    ENROL_REQUEST = 1
    ENROL_REPLY = 2
    HEARTBEAT = 3
    HEARTBEAT_REPLY = 4
    JOB = 5
    JOB_RECEIPT = 6
    RESULT = 7
    RESULT_RECEIPT = 8
    KEY_REQUEST = 9
    KEY_REPLY = 10
    JOB_PROGRESS = 11
    CONTENT_REQUEST = 12
    CONTENT = 13
    FACTS = 14
    # Control: the CLI's requests and the master's replies.
    RUN = 101
    KEYS = 102
    RUN_STARTED = 111
    RUN_HOST_RESULT = 112
    RUN_DONE = 113
    KEYS_REPLY = 114
    ERROR = 115
    JOBS = 103
    JOBS_REPLY = 116
    JOB_REPLY = 117
    RUN_PROGRESS = 118


# What the master sends the CLI on the control socket (common/protocol.py
# gives each its schema; tests/common/test_wire.py checks the two agree).
CONTROL_REPLIES = frozenset(
    {
        MsgType.RUN_STARTED,
        MsgType.RUN_HOST_RESULT,
        MsgType.RUN_PROGRESS,
        MsgType.RUN_DONE,
        MsgType.KEYS_REPLY,
        MsgType.JOBS_REPLY,
        MsgType.JOB_REPLY,
        MsgType.ERROR,
    }
)

# Largest batch size or failure limit of `run --batch` (master/batch.py, the
# RUN schema): more hosts than any one run can have (MAX_HOSTS is far smaller).
MAX_BATCH_NUMBER = 1_000_000

# The composite module (common/modules/): in one job, the modules that take
# part in sync, in their order. Here, so that the CLI knows it without schemas.
SYNC = "sync"


def check_version(version: object) -> int:
    """`version` if this side speaks it; ProtocolError otherwise."""
    if type(version) is not int or not MIN_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {repr(version)[:20]} is not supported; this side speaks "
            f"{MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION}"
        )
    return version


def known_type(raw_type: object) -> MsgType:
    """The MsgType a raw type code names; ProtocolError for anything else."""
    # type() and not isinstance(): 1.0 and True equal 1, but are not type codes.
    if type(raw_type) is not int or raw_type not in MsgType._value2member_map_:
        raise ProtocolError(f"unknown message type {repr(raw_type)[:20]}")
    return MsgType(raw_type)


# ---- plain messages: [version, type, body] ----


def pack_plain(msg_type: MsgType, body: dict[str, Any]) -> bytes:
    """A plain message, unchecked: protocol.encode_plain() checks the body first;
    the CLI leaves its requests to the daemon's check (which answers an ERROR)."""
    return codec.pack([PROTOCOL_VERSION, int(msg_type), body])


def pack_plain_with(msg_type: MsgType, body: dict[str, Any], key: str, packed: bytes) -> bytes:
    """pack_plain(), with the value of the body's `key` given already packed
    (codec.pack_with())."""
    head = codec.pack([PROTOCOL_VERSION, int(msg_type), None])[:-1]  # without the nil
    return head + codec.pack_with(body, key, packed)


def unpack_plain(
    frame: bytes, limit: int, what: str, *, scanned: bool = True
) -> tuple[int, MsgType, Any]:
    """The version, type and (unchecked) body of a plain message of at most
    `limit` bytes; `what` names the channel in errors. ProtocolError for
    anything that is not [supported version, known type, body]. `scanned`:
    False for the CLI's own master's replies (codec.unpack_unscanned())."""
    if not isinstance(frame, bytes):
        raise ProtocolError(f"expected bytes, got {type(frame).__name__}")
    if len(frame) > limit:
        raise ProtocolError(f"plain {what} message of {len(frame)} bytes exceeds {limit}")
    if scanned:
        value = codec.unpack(frame, max_depth=MAX_BODY_DEPTH + 1)
    else:
        value = codec.unpack_unscanned(frame)
    if type(value) is not list or len(value) != 3:
        raise ProtocolError("a plain message is an array of [version, type, body]")
    version = check_version(value[0])
    return version, known_type(value[1]), value[2]


class Reply:
    """A reply from the master on the control socket, as the CLI reads it."""

    __slots__ = ("body", "type", "version")

    def __init__(self, msg_type: MsgType, body: dict[str, Any], version: int) -> None:
        self.type = msg_type
        self.body = body
        self.version = version

    def __repr__(self) -> str:
        return f"Reply({self.type.name}, {self.body!r})"


def decode_reply(frame: bytes) -> Reply:
    """A control reply, as the CLI checks it: a supported version, a type the
    master sends the CLI, a map for a body. The fields are not checked here:
    the master checked them against the type's schema when it encoded the
    reply (protocol.encode_plain), and the socket reaches only that master
    (it is root's, or the admin group's). ProtocolError otherwise."""
    version, reply_type, body = unpack_plain(
        frame, MAX_CONTROL_FRAME_BYTES, "control", scanned=False
    )
    if reply_type not in CONTROL_REPLIES:
        raise ProtocolError(f"{reply_type.name} is not a reply to the CLI")
    if type(body) is not dict:
        raise ProtocolError(f"{reply_type.name} body: expected a map")
    return Reply(reply_type, body, version)
