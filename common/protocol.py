"""The wire protocol: every message between master, minions and the CLI.

This module is the one place that defines the wire. It is pure: encode and
decode turn values into bytes and back, and never touch a socket.

Frames
------
Network (ZeroMQ; PUB adds a topic the master gives the minion as a first frame):

    sealed message   one envelope (common/crypto.py), whose plaintext is the
                     msgpack body; type, jid, sender, recipient and times are
                     in the envelope's signed header
    plain message    msgpack array [version, type, body]: enrolment, the one
                     thing a peer without an accepted key may send, and the
                     small messages that rely on the CURVE connection they
                     travel on (form "curve" below)

Control (the CLI and the master over a local AF_UNIX stream socket): plain
messages, each framed as a 4-byte big-endian length and the message
(encode_frame, FrameReader). The version, the message types, plain packing
and this framing live in common/wire.py, which the CLI imports alone (it
needs neither the schemas nor the crypto); everything is re-exported here.

Messages
--------
MsgType names every message; SPECS gives each one its channel (network or
control), its form, its body schema, its size limit and any cross-field
check. Adding a message type is a member of MsgType (in common/wire.py; a
reply to the CLI also goes into CONTROL_REPLIES there) and its MessageSpec
in _SPEC_LIST here (an import-time check refuses a type without a spec).

The form says what proves who sent a message:

    sealed   its envelope: signed by the sender, encrypted to the one
             recipient, verifiable on its own (a stored result, a job)
    curve    the connection: plain, and accepted only from a CurveZMQ
             connection whose key the receiver authenticated (on the master,
             an accepted minion's key, checked on every message; on a minion,
             the pinned master's key). The sender is that key's owner, never
             a name in the body (Message.peer). CURVE encrypts, authenticates
             and orders every message of a connection, so no one else can
             read, forge or replay one; heartbeats still carry a sequence
             number, kept across connections and restarts
    plain    nothing: anyone may send it (enrolment proves its key by a
             signature in its body; the control socket is the local admin's)

    type               channel  form    direction
    KEY_REQUEST        key      plain   minion -> master (before CURVE: which keys?)
    KEY_REPLY          key      plain   master -> minion (signed public keys)
    ENROL_REQUEST      network  plain   minion -> master
    ENROL_REPLY        network  plain   master -> minion
    HEARTBEAT          network  curve   minion -> master
    HEARTBEAT_REPLY    network  curve   master -> minion (the master's time)
    JOB                network  sealed  master -> minion (published)
    JOB_RECEIPT        network  curve   minion -> master
    RESULT             network  sealed  minion -> master
    RESULT_RECEIPT     network  curve   master -> minion
    JOB_PROGRESS       network  curve   minion -> master (still working on a job)
    CONTENT_REQUEST    network  sealed  minion -> master (content a job left out)
    CONTENT            network  sealed  master -> minion (that content, as a reply)
    FACTS              network  sealed  minion -> master (what the host says it is)
    RUN, KEYS, JOBS    control  plain   CLI -> master
    RUN_STARTED, RUN_HOST_RESULT, RUN_PROGRESS, RUN_DONE, KEYS_REPLY, JOBS_REPLY,
    JOB_REPLY, ERROR   control  plain   master -> CLI

Decoding any bytes raises ProtocolError (or, for a sealed message,
EnvelopeError) and nothing else. The Dispatcher routes a decoded message to
its handler by an explicit table: a peer that has not proven its key reaches
ENROL_REQUEST and nothing else; a curve message reaches its handler only
with the peer its connection proved.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from safcm.common import codec, lightwire, modules
from safcm.common.crypto import (
    DEFAULT_CLOCK_SKEW,
    MAX_ENVELOPE_BYTES,
    MAX_ENVELOPE_OVERHEAD,
    SIGNATURE_LENGTH,
    Claimed,
    Header,
    KeyPair,
    PublicKeys,
    Verified,
    claim,
    fingerprint_problem,
    is_envelope,
    seal_at,
    sign_plain,
    verify_at,
    verify_plain,
)
from safcm.common.errors import EnvelopeError, ProtocolError
from safcm.common.ids import (
    JID_LENGTH,
    MASTER_ID,
    MINION_ID_MAX,
    SUBSCRIPTION,
    check_jid,
    check_minion_id,
    jid_problem,
    jid_time,
    minion_id_problem,
    minion_pattern_problem,
    new_jid,
)
from safcm.common.lightwire import (
    ENVELOPE_SLACK,
    MAX_JOBS_LISTED,
    MAX_NAME_CHARS,
    MAX_TARGET_CHARS,
    MAX_TIME,
)
from safcm.common.model import MODE_MASK, PATH_MAX, FileType, Outcome, TriggerStatus
from safcm.common.modules import MODULE_NAME, ModuleBody, ModuleOptions
from safcm.common.schema import (
    Bool,
    Bytes,
    Float,
    Int,
    List,
    Map,
    OneOf,
    Optional,
    Str,
    validate,
)
from safcm.common.seen import SeenJids
from safcm.common.wire import (
    FRAME_HEADER_BYTES,
    JOB_OUTCOMES,
    MAX_BATCH_NUMBER,
    MAX_BODY_DEPTH,
    MAX_CONTROL_FRAME_BYTES,
    MAX_CONTROL_REQUEST_BYTES,
    MIN_PROTOCOL_VERSION,
    NO_RESPONSE,
    PROTOCOL_VERSION,
    FrameReader,
    MsgType,
    check_version,
    encode_frame,
    known_type,
    pack_plain,
    pack_plain_with,
    unpack_plain,
)

# The daemons import the wire from this module only; names from common.ids,
# common.seen and common.wire (the light base the CLI uses alone) are
# re-exported here.
__all__ = [
    "ENROL_NONCE_LENGTH",
    "ENVELOPE_SLACK",
    "FACTS",
    "FACT_NAMES",
    "FRAME_HEADER_BYTES",
    "JOB_OUTCOMES",
    "MASTER_ID",
    "MAX_BATCH_NUMBER",
    "MAX_BODY_DEPTH",
    "MAX_CONTROL_FRAME_BYTES",
    "MAX_CONTROL_REQUEST_BYTES",
    "MAX_CPU_COUNT",
    "MAX_FACT_TEXT_CHARS",
    "MAX_FACT_TOKEN_CHARS",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_JOBS_LISTED",
    "MAX_JOB_BYTES",
    "MAX_KEY_PORT_BYTES",
    "MAX_NAME_CHARS",
    "MAX_PLAIN_NETWORK_BYTES",
    "MAX_RESULT_BYTES",
    "MAX_TARGET_CHARS",
    "MIN_PROTOCOL_VERSION",
    "NO_RESPONSE",
    "PROTOCOL_VERSION",
    "SPECS",
    "SUBSCRIPTION",
    "Channel",
    "Dispatcher",
    "FrameReader",
    "KeyState",
    "Message",
    "MessageSpec",
    "MsgType",
    "ResultStatus",
    "SeenJids",
    "VerifiedMessage",
    "check_body",
    "check_jid",
    "check_minion_id",
    "claimed_spec",
    "decode_plain",
    "encode_frame",
    "encode_host_result",
    "encode_plain",
    "is_sealed",
    "jid_problem",
    "jid_time",
    "make_enrol_reply",
    "make_enrol_request",
    "make_key_reply",
    "minion_id_problem",
    "new_jid",
    "open_message_at",
    "pack_body",
    "seal_message_at",
    "seal_packed_at",
    "verify_enrol_reply",
    "verify_enrol_request",
    "verify_key_reply",
    "verify_message_at",
]

# ---- size limits (bytes unless said otherwise) ----

# The largest job body: a whole host's files. The compiler refuses a host
# whose configuration would not fit, before anything is sent.
MAX_JOB_BYTES = 64 * 1024 * 1024
# The largest result body: every change with its diff, and trigger output.
# The minion must cap diffs and output so that a result fits (minion/results.py
# fit()). It bounds what one minion can make the master hold: a result is in
# memory several times over while it is received, checked, opened and stored,
# and bench/attacks.py late-results peaked at 300 MiB with 16 MiB results and
# at 140-210 MiB with 8 MiB ones. 4 MiB still holds some 20,000 change records;
# a result that would be larger loses its diffs first, never its outcome.
MAX_RESULT_BYTES = 4 * 1024 * 1024
# Every ZeroMQ socket's maximum message size (ZMQ_MAXMSGSIZE): a sealed job.
MAX_FRAME_BYTES = MAX_ENVELOPE_BYTES
# A plain message from the network comes from a peer we know nothing about:
# enrolment is a few hundred bytes, so this bounds all work done for a stranger.
MAX_PLAIN_NETWORK_BYTES = 4096
# Heartbeats and receipts are a few dozen bytes.
MAX_SMALL_BYTES = 4096
# MAX_CONTROL_FRAME_BYTES, MAX_CONTROL_REQUEST_BYTES and MAX_BODY_DEPTH: common/wire.py.

# Most files in one job, and most changes in one result.
MAX_FILES = codec.MAX_LIST_ITEMS
# A SHA-256 digest names a regular file's content, in bytes.
DIGEST_BYTES = 32
# A CONTENT_REQUEST names at most every file of a job: a digest and its
# msgpack header per file, and room for the rest of the body.
MAX_CONTENT_REQUEST_BYTES = MAX_FILES * (DIGEST_BYTES + 2) + 1024
# Largest content of one file. Larger files belong in a package, not here.
MAX_FILE_BYTES = 16 * 1024 * 1024
# Longest diff in a change, in characters: both sides of the largest file.
MAX_DIFF_CHARS = 2 * MAX_FILE_BYTES + 64 * 1024
# Most trigger commands on one path, and longest command, in characters.
MAX_TRIGGERS_PER_FILE = 64
MAX_COMMAND_CHARS = 4096
# Most trigger runs in one result (each distinct command runs once).
MAX_TRIGGER_RUNS = 4096
# Longest captured trigger output in a result, in characters.
MAX_TRIGGER_OUTPUT_CHARS = 4 * 1024 * 1024
# Longest error message or failure reason, in characters.
MAX_REASON_CHARS = 64 * 1024
# Most hosts in one run, one key listing or one request.
MAX_HOSTS = 65536
# Longest version string a daemon reports, in characters.
MAX_VERSION_CHARS = 64
# A minion's heartbeat interval, in seconds (minion.yaml heartbeat_interval).
# The master counts a minion as present for a few intervals after its last
# heartbeat, so the upper bound is also how long a dead minion can look alive.
MIN_HEARTBEAT_INTERVAL = 0.05
MAX_HEARTBEAT_INTERVAL = 60.0
# A heartbeat's sequence number: each is larger than the one before, across
# restarts of the minion (it keeps a counter on disk) and of the master.
MAX_SEQUENCE = 2**63 - 1
# A plain message on the master's key port: a request is a nonce, a reply
# three public keys and a signature.
MAX_KEY_PORT_BYTES = 512
# Most problems in one ERROR reply (the rest are summarised in its message).
MAX_PROBLEMS = 1000
# A job's timeout, in seconds: at least a second, and short enough that its
# envelope lives until the deadline plus ENVELOPE_SLACK (common/lightwire.py).
MIN_JOB_TIMEOUT = float(lightwire.MIN_JOB_TIMEOUT)
MAX_JOB_TIMEOUT = float(lightwire.MAX_JOB_TIMEOUT)
# Random bytes an enrolment request carries and its reply echoes.
ENROL_NONCE_LENGTH = 16

# Seconds since the epoch, up to MAX_TIME (the year 36812): any sane clock fits.
_TIME = Float(0, MAX_TIME)
# A duration in seconds: up to about 31 years.
_DURATION = Float(0, 1e9)
_UID = Int(0, 2**32 - 1)


class Channel(enum.Enum):
    NETWORK = "network"  # ZeroMQ between master and minions
    KEY = "key"  # the master's key port: public keys, before CURVE can be used
    CONTROL = "control"  # the master's local control socket, for the CLI


class KeyState(enum.StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    # Enrol reply only: the id is bound to another key, so this key can never
    # be accepted under it until an administrator deletes the other.
    CLAIMED = "claimed"


class ResultStatus(enum.StrEnum):
    OK = "ok"  # the job ran and everything in it succeeded
    FAILED = "failed"  # the job ran, and a file or a trigger failed
    ERROR = "error"  # the minion could not run the job at all (see `error`)


# ---- schemas of the shared pieces ----

_MINION_ID = Str(MINION_ID_MAX, min_len=1, problem=minion_id_problem)
_JID = Str(JID_LENGTH, min_len=JID_LENGTH, problem=jid_problem)
_PUBLIC_KEYS = Map(
    {"sign": Bytes(32, min_len=32), "kx": Bytes(32, min_len=32), "curve": Bytes(32, min_len=32)}
)
_NONCE = Bytes(ENROL_NONCE_LENGTH, min_len=ENROL_NONCE_LENGTH)
_SIGNATURE = Bytes(SIGNATURE_LENGTH, min_len=SIGNATURE_LENGTH)
_PATH = PATH_SCHEMA = Str(PATH_MAX - 1, min_len=1)
_NAME = Str(MAX_NAME_CHARS, min_len=1)
_COMMAND = Str(MAX_COMMAND_CHARS, min_len=1)
_REASON = Str(MAX_REASON_CHARS)
_VERSION = Str(MAX_VERSION_CHARS)
# A module's name (common/modules/: which names exist is checked with the
# body a name comes in, ModuleBody).
_MODULE = MODULE_NAME
_FINGERPRINT = Str(128, problem=fingerprint_problem)
# A minion id, or a glob over minion ids: the id grammar plus *, ?, [, ] and !.
_MINION_PATTERN = Str(MINION_ID_MAX, min_len=1, problem=minion_pattern_problem)

# common/model.py wire forms, field for field.
FILE_SPEC = Map(
    {
        "path": _PATH,
        "type": OneOf([FileType.FILE, FileType.DIR, FileType.SYMLINK]),
        "mode": Int(0, MODE_MASK),
        "user": Optional(_NAME),
        "uid": Optional(Int(0, 2**32 - 2)),
        "group": Optional(_NAME),
        "gid": Optional(Int(0, 2**32 - 2)),
        # A regular file's content is named by its digest; the content itself
        # may be left out when the host has it (minion/content.py). A
        # directory has none (b""), a symlink's is its target.
        "digest": Optional(Bytes(DIGEST_BYTES, min_len=DIGEST_BYTES)),
        "data": Optional(Bytes(MAX_FILE_BYTES)),
        "triggers": List(_COMMAND, MAX_TRIGGERS_PER_FILE),
        "passthrough": Bool(),
    }
)
ABSENT_SPEC = Map({"path": _PATH, "recursive": Bool()})
FILE_STATE = Map(
    {
        "type": OneOf(FileType),
        "mode": Int(0, MODE_MASK),
        "uid": _UID,
        "gid": _UID,
        "user": Optional(_NAME),
        "group": Optional(_NAME),
    }
)
FILE_CHANGE = Map(
    {
        "path": _PATH,
        "created": Bool(),
        "new": Optional(FILE_STATE),  # null: the path is removed
        "old": Optional(FILE_STATE),
        "diff": Optional(Str(MAX_DIFF_CHARS)),
        "outcome": OneOf(Outcome),
        "reason": _REASON,  # why it failed or was skipped
    }
)
TRIGGER_RUN = Map(
    {
        "command": _COMMAND,
        "status": OneOf(TriggerStatus),
        "exit_code": Optional(Int(-(2**31), 2**31 - 1)),
        "output": Str(MAX_TRIGGER_OUTPUT_CHARS),
        "duration": _DURATION,
    }
)
APPLY_RESULT = Map(
    {
        "dry_run": Bool(),
        "changes": List(FILE_CHANGE, MAX_FILES),
        "triggers": List(TRIGGER_RUN, MAX_TRIGGER_RUNS),
        # every failure; a path is "" when the apply failed before any file
        "failures": List(Map({"path": Str(PATH_MAX - 1), "reason": _REASON}), MAX_FILES),
        # triggers kept on the minion after an apply with a failure, not run yet
        "owed": List(Map({"command": _COMMAND, "path": _PATH, "jid": _JID}), MAX_TRIGGER_RUNS),
        "duration": _DURATION,
    }
)
PING_RESULT = Map({"version": _VERSION, "time": _TIME})
# What a minion left out of a result that was too large for the wire
# (minion/results.py fit()): counts of what was dropped, and why.
REDUCED = Map(
    {
        "diffs_omitted": Int(0, MAX_FILES),  # replaced by a one-line note
        "outputs_omitted": Int(0, MAX_TRIGGER_RUNS),  # trigger output replaced by a note
        "changes_omitted": Int(0, 2**32),  # change records dropped (a purge adds to the files)
        "triggers_omitted": Int(0, MAX_TRIGGER_RUNS),  # trigger runs dropped
        "reason": _REASON,
    }
)

# ---- facts: what a minion says about its host (FACTS) ----
# Claims of an untrusted host: the master stores and shows them, templates
# read them, and detected groups (master/repository.py) match them, but a
# fact never selects which host's configuration is compiled.
#
# os-release values (freedesktop's os-release(5)): ID, VERSION_ID and
# VERSION_CODENAME are "lower-case ... 0-9, a-z, '.', '_' and '-'"; the
# minion drops a value that is not (minion/facts.py).
MAX_FACT_TOKEN_CHARS = 64
_OS_TOKEN = Str(MAX_FACT_TOKEN_CHARS, min_len=1, pattern=r"[a-z0-9._-]+")
# PRETTY_NAME, for people: the minion cuts it to this many characters.
MAX_FACT_TEXT_CHARS = 256
# uname(2) fields hold at most 64 characters (__NEW_UTS_LEN); printable
# ASCII without spaces is all a kernel release or a node name uses.
_UNAME_FIELD = Str(64, min_len=1, pattern=r"[!-~]+")
# More CPUs than any machine Linux runs on (its NR_CPUS is at most 8192).
MAX_CPU_COUNT = 1 << 16
FACTS = Map(
    {
        "os_id": Optional(_OS_TOKEN),  # ID: debian, ubuntu; null without os-release
        "os_version_id": Optional(_OS_TOKEN),  # VERSION_ID: "12", "24.04"
        "os_codename": Optional(_OS_TOKEN),  # VERSION_CODENAME: bookworm
        "os_name": Optional(Str(MAX_FACT_TEXT_CHARS, pattern=r"[^\x00-\x1f\x7f]*")),
        "architecture": _UNAME_FIELD,  # uname -m: x86_64, aarch64
        "kernel": _UNAME_FIELD,  # uname -r: the running kernel's release
        "hostname": _UNAME_FIELD,  # uname -n: what the host calls itself
        "cpu_count": Optional(Int(1, MAX_CPU_COUNT)),  # CPUs the minion may use
        "memory_bytes": Optional(Int(0, 2**62)),  # MemTotal of /proc/meminfo
    }
)
FACT_NAMES = tuple(FACTS.fields)

# A result: these fields, and the section of its module (each module's
# result_key, common/modules/), or for sync, the steps and the section of
# each step that ran. Results stored before the registry carry "apply" and
# "ping" both, null for the module that did not run: still valid.
RESULT = ModuleBody(
    {
        "module": _MODULE,
        "status": OneOf(ResultStatus),
        "started": _TIME,
        "finished": _TIME,
        "error": Optional(_REASON),  # exactly when status is error
        "reduced": REDUCED,  # only when the minion had to leave details out
        # only when a restart of the minion interrupted the job while it
        # changed the host, and it was finished after: the changes listed
        # are those made after the restart
        "resumed": Bool(),
    },
    "result",
    # JOB_REPLY holds a result three levels down (hosts, a host, its result).
    depth=MAX_BODY_DEPTH - 3,
)

# A job as the history keeps it (JOBS_REPLY, JOB_REPLY).
_JOB_FIELDS = {
    "jid": _JID,
    "submitted": _TIME,
    "deadline": _TIME,
    "user": Str(MAX_NAME_CHARS, min_len=1),
    "target": Str(MAX_TARGET_CHARS, min_len=1),
    "module": _MODULE,
    "dry_run": Bool(),
    "git_commit": Optional(Str(128)),
}
# How its hosts fared, counted (JOBS_REPLY).
_JOB_COUNTS = {
    name: Int(0, MAX_HOSTS)
    for name in ("hosts", "changed", "ok", "failed", "no_response", "pending")
}

# ---- cross-field checks: what one field's schema cannot say alone ----


def _check_job(body: dict[str, Any], jid: str | None) -> None:
    problem = modules.job_problem(body)
    if problem is not None:
        raise ProtocolError(f"JOB body: {problem}")


def _check_receipt(body: dict[str, Any], jid: str | None) -> None:
    if jid is not None and body["jid"] != jid:
        raise ProtocolError("body.jid differs from the envelope's jid")


def _result_problem(body: dict[str, Any]) -> str | None:
    status = body["status"]
    if (status == ResultStatus.ERROR) != (body["error"] is not None):
        return "error is set exactly when status is error"
    if body["finished"] < body["started"]:
        return "finished is before started"
    if body.get("reduced") is not None and body.get("apply") is None:
        return "reduced is set only for a files job or step that ran"
    return modules.result_problem(body)


def _check_result(body: dict[str, Any], jid: str | None) -> None:
    problem = _result_problem(body)
    if problem is not None:
        raise ProtocolError(f"RESULT body: {problem}")


def _check_keys(body: dict[str, Any], jid: str | None) -> None:
    if body["action"] != "list" and not body["ids"]:
        raise ProtocolError(f"KEYS body.ids: {body['action']} needs at least one minion id")


# The filters only `jobs list` takes, beyond host and target.
_JOBS_LIST_FILTERS = ("since", "until", "module", "user", "status")


def _check_jobs(body: dict[str, Any], jid: str | None) -> None:
    if (body["action"] == "show") != (body["jid"] is not None):
        raise ProtocolError("JOBS body.jid: set exactly for show")
    if body["action"] == "show":
        for name in ("target", *_JOBS_LIST_FILTERS):
            if body.get(name) is not None:
                raise ProtocolError(f"JOBS body.{name}: only list filters by {name}")
    elif "stream" in body:
        raise ProtocolError("JOBS body.stream: only show is streamed")
    module = body.get("module")
    if module is not None and not modules.is_module(module):
        raise ProtocolError(f"JOBS body.module: no module {module!r}")
    since, until = body.get("since"), body.get("until")
    if since is not None and until is not None and since > until:
        raise ProtocolError("JOBS body.until: before since")


def _check_job_reply(body: dict[str, Any], jid: str | None) -> None:
    for host in body["hosts"]:
        if host["result"] is not None:
            problem = _result_problem(host["result"])
            if problem is not None:
                raise ProtocolError(f"JOB_REPLY result of {host['host']}: {problem}")


def _check_run(body: dict[str, Any], jid: str | None) -> None:
    batch = body.get("batch")
    if batch is None and body.get("batch_fail") is not None:
        raise ProtocolError("RUN body.batch_fail: only with batch")
    if batch is not None and batch["percent"] and batch["size"] > 100:
        raise ProtocolError("RUN body.batch.size: a percentage is at most 100")
    if not modules.is_module(body["module"]):
        raise ProtocolError(f"RUN body.module: no module {body['module']!r}")
    modules.check_options(body["module"], body.get("options"))


def _check_run_host_result(body: dict[str, Any], jid: str | None) -> None:
    result = body["result"]
    if (body["status"] == NO_RESPONSE) != (result is None):
        raise ProtocolError("RUN_HOST_RESULT body: result is missing exactly for no response")
    if result is not None:
        problem = _result_problem(result)
        if problem is not None:
            raise ProtocolError(f"RUN_HOST_RESULT body.result: {problem}")
        if result["status"] != body["status"]:
            raise ProtocolError("RUN_HOST_RESULT body: status differs from result.status")


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """Everything the wire needs to know about one message type."""

    type: MsgType
    channel: Channel
    sealed: bool  # must travel in an envelope; never accepted plain
    schema: Map | ModuleBody  # ModuleBody: a body composed from the modules' wire
    max_bytes: int  # largest encoded body (sealed) or frame (plain)
    # Cross-field checks, run after the schema: (body, the envelope's jid or
    # None for a plain message) -> None, or raise ProtocolError.
    check: Callable[[dict[str, Any], str | None], None] | None = None
    # Plain, but accepted only with the peer an authenticated CURVE
    # connection proved (form "curve" in the module docstring).
    curve: bool = False


# The master reads a heartbeat with heartbeat_body() first, which relies on
# its body being flat (no list or map inside).
_HEARTBEAT_BODY = Map(
    {
        "version": _VERSION,
        "uptime": _DURATION,
        "busy": Optional(_JID),  # the job being applied
        "seq": Int(1, MAX_SEQUENCE),  # larger than the last: a replay is refused
        # the minion's heartbeat interval: the master's liveness check
        # (three missed heartbeats) follows each minion's own setting
        "interval": Float(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL),
    }
)

_SPEC_LIST = [
    MessageSpec(
        MsgType.KEY_REQUEST,
        Channel.KEY,
        sealed=False,
        schema=Map({"nonce": _NONCE}),
        max_bytes=MAX_KEY_PORT_BYTES,
    ),
    MessageSpec(
        MsgType.KEY_REPLY,
        Channel.KEY,
        sealed=False,
        schema=Map({"keys": _PUBLIC_KEYS, "nonce": _NONCE, "issued_at": _TIME, "sig": _SIGNATURE}),
        max_bytes=MAX_KEY_PORT_BYTES,
    ),
    MessageSpec(
        MsgType.ENROL_REQUEST,
        Channel.NETWORK,
        sealed=False,
        schema=Map(
            {
                "id": _MINION_ID,
                "keys": _PUBLIC_KEYS,
                "nonce": _NONCE,
                "issued_at": _TIME,
                "sig": _SIGNATURE,
            }
        ),
        max_bytes=MAX_PLAIN_NETWORK_BYTES,
    ),
    MessageSpec(
        MsgType.ENROL_REPLY,
        Channel.NETWORK,
        sealed=False,
        schema=Map(
            {
                "id": _MINION_ID,
                "state": OneOf(KeyState),
                "keys": _PUBLIC_KEYS,
                "nonce": _NONCE,
                "issued_at": _TIME,
                "sig": _SIGNATURE,
            }
        ),
        max_bytes=MAX_PLAIN_NETWORK_BYTES,
    ),
    MessageSpec(
        MsgType.HEARTBEAT,
        Channel.NETWORK,
        sealed=False,
        curve=True,
        schema=_HEARTBEAT_BODY,
        max_bytes=MAX_SMALL_BYTES,
    ),
    MessageSpec(
        MsgType.HEARTBEAT_REPLY,
        Channel.NETWORK,
        sealed=False,
        curve=True,
        # the master's time, and the seq of the heartbeat it answers
        schema=Map({"time": _TIME, "seq": Int(1, MAX_SEQUENCE)}),
        max_bytes=MAX_SMALL_BYTES,
    ),
    MessageSpec(
        MsgType.JOB,
        Channel.NETWORK,
        sealed=True,
        # module, dry_run and deadline, and the fields of its module
        # (common/modules/); a sync job names its steps and carries theirs
        schema=ModuleBody(
            {"module": _MODULE, "dry_run": Bool(), "deadline": _TIME}, "job", depth=MAX_BODY_DEPTH
        ),
        max_bytes=MAX_JOB_BYTES,
        check=_check_job,
    ),
    MessageSpec(
        MsgType.JOB_RECEIPT,
        Channel.NETWORK,
        sealed=False,
        curve=True,
        schema=Map({"jid": _JID}),
        max_bytes=MAX_SMALL_BYTES,
        check=_check_receipt,
    ),
    MessageSpec(
        MsgType.RESULT,
        Channel.NETWORK,
        sealed=True,
        schema=RESULT,
        max_bytes=MAX_RESULT_BYTES,
        check=_check_result,
    ),
    MessageSpec(
        MsgType.RESULT_RECEIPT,
        Channel.NETWORK,
        sealed=False,
        curve=True,
        schema=Map({"jid": _JID}),
        max_bytes=MAX_SMALL_BYTES,
        check=_check_receipt,
    ),
    MessageSpec(
        MsgType.JOB_PROGRESS,
        Channel.NETWORK,
        sealed=False,
        curve=True,
        schema=Map({"jid": _JID, "elapsed": _DURATION}),  # seconds the job has run
        max_bytes=MAX_SMALL_BYTES,
        check=_check_receipt,
    ),
    MessageSpec(
        MsgType.CONTENT_REQUEST,
        Channel.NETWORK,
        sealed=True,
        # sealed under the job's jid: the content of that job's files it lacks
        schema=Map(
            {
                "jid": _JID,
                "digests": List(Bytes(DIGEST_BYTES, min_len=DIGEST_BYTES), MAX_FILES, min_items=1),
            }
        ),
        max_bytes=MAX_CONTENT_REQUEST_BYTES,
        check=_check_receipt,
    ),
    MessageSpec(
        MsgType.CONTENT,
        Channel.NETWORK,
        sealed=True,
        # The content asked for, each named by its hash (the minion hashes it
        # again); a large request is answered in several messages.
        schema=Map({"jid": _JID, "blobs": List(Bytes(MAX_FILE_BYTES), MAX_FILES)}),
        max_bytes=MAX_JOB_BYTES,
        check=_check_receipt,
    ),
    MessageSpec(
        MsgType.FACTS,
        Channel.NETWORK,
        sealed=True,
        # Sealed like a result: the facts are the host's signed claim, and
        # stored as coming from the envelope's sender, never from a name in
        # the body. Sent when the minion is accepted and when they change.
        schema=FACTS,
        max_bytes=MAX_SMALL_BYTES,
    ),
    MessageSpec(
        MsgType.RUN,
        Channel.CONTROL,
        sealed=False,
        schema=Map(
            {
                "target": Str(MAX_TARGET_CHARS, min_len=1),
                "group": Bool(),  # target names a group (-G/@group), not a glob or list
                "module": _MODULE,
                "dry_run": Bool(),
                "timeout": Optional(Float(MIN_JOB_TIMEOUT, MAX_JOB_TIMEOUT)),  # null: default
                # run --batch: the hosts in rolling batches of `size` hosts, or
                # of `size` percent of them (rounded up); one job per batch
                "batch": Optional(
                    Map({"size": Int(1, MAX_BATCH_NUMBER), "percent": Bool()}),
                ),
                # run --batch-fail: start no further batch once this many
                # hosts failed or did not respond
                "batch_fail": Optional(Int(1, MAX_BATCH_NUMBER)),
                # what the module takes beyond target and dry run (cmd: its
                # argv), checked against the module's options schema
                "options": Optional(ModuleOptions()),
            },
            optional={"batch", "batch_fail", "options"},
        ),
        max_bytes=MAX_CONTROL_REQUEST_BYTES,
        check=_check_run,
    ),
    MessageSpec(
        MsgType.KEYS,
        Channel.CONTROL,
        sealed=False,
        schema=Map(
            {
                "action": OneOf(["list", "accept", "reject", "delete"]),
                # minion ids or globs over them ("web*"); for list: a filter, empty for all
                "ids": List(_MINION_PATTERN, MAX_HOSTS),
                # accept only: the key to accept, when several claimed the id
                "fingerprint": Optional(_FINGERPRINT),
            },
            optional={"fingerprint"},
        ),
        max_bytes=MAX_CONTROL_REQUEST_BYTES,
        check=_check_keys,
    ),
    MessageSpec(
        MsgType.RUN_STARTED,
        Channel.CONTROL,
        sealed=False,
        schema=Map(
            {
                "jid": _JID,
                "hosts": List(_MINION_ID, MAX_HOSTS),
                # hosts the target matched that the job does not go to, and why
                "skipped": List(Map({"host": _MINION_ID, "reason": _REASON}), MAX_HOSTS),
                # hosts the job goes to whose state the master already knows
                # will delay or stop it (not connected, a new key, busy)
                "notes": List(Map({"host": _MINION_ID, "note": _REASON}), MAX_HOSTS),
                # run --batch: this job is batch `number` of `of`; each batch
                # has its own RUN_STARTED (skipped: with the first only)
                "batch": Map({"number": Int(1, MAX_HOSTS), "of": Int(1, MAX_HOSTS)}),
            },
            optional={"notes", "batch"},
        ),
        max_bytes=MAX_CONTROL_FRAME_BYTES,
    ),
    MessageSpec(
        MsgType.RUN_HOST_RESULT,
        Channel.CONTROL,
        sealed=False,
        schema=Map(
            {
                "jid": _JID,
                "host": _MINION_ID,
                "status": OneOf([*ResultStatus, NO_RESPONSE]),
                "result": Optional(RESULT),
            }
        ),
        max_bytes=MAX_CONTROL_FRAME_BYTES,
        check=_check_run_host_result,
    ),
    MessageSpec(
        MsgType.RUN_PROGRESS,
        Channel.CONTROL,
        sealed=False,
        # a host is still working: its deadline is now `until` (unix time)
        schema=Map({"jid": _JID, "host": _MINION_ID, "until": _TIME}),
        max_bytes=MAX_CONTROL_FRAME_BYTES,
    ),
    MessageSpec(
        MsgType.RUN_DONE,
        Channel.CONTROL,
        sealed=False,
        schema=Map(
            {
                "jid": _JID,  # with --batch: the last batch's; the summary covers all
                "summary": Map(
                    {
                        "targeted": Int(0, MAX_HOSTS),
                        "changed": Int(0, MAX_HOSTS),
                        "unchanged": Int(0, MAX_HOSTS),
                        "failed": Int(0, MAX_HOSTS),
                        "no_response": Int(0, MAX_HOSTS),
                        # run --batch: hosts of batches that never started
                        "not_run": Int(0, MAX_HOSTS),
                    },
                    optional={"not_run"},
                ),
                # run --batch: the hosts not run, and why (the failure limit)
                "not_run": List(Map({"host": _MINION_ID, "reason": _REASON}), MAX_HOSTS),
            },
            optional={"not_run"},
        ),
        max_bytes=MAX_CONTROL_FRAME_BYTES,
    ),
    MessageSpec(
        MsgType.KEYS_REPLY,
        Channel.CONTROL,
        sealed=False,
        schema=Map(
            {
                "master": _FINGERPRINT,  # the master's own key, to compare with minions
                # where minions subscribe, named for those that do not
                "publish_port": Int(1, 65535),
                "keys": List(
                    Map(
                        {
                            "id": _MINION_ID,
                            "state": OneOf(KeyState),
                            "fingerprint": _FINGERPRINT,
                            "connected": Bool(),
                            # connected, and no job reaches it (master/peers.py deaf())
                            "not_subscribed": Bool(),
                            "last_seen": Optional(_TIME),
                        }
                    ),
                    MAX_HOSTS,
                ),
                # keys a pattern of accept or reject matched and left as they
                # were: decided the other way (master/keystore.py left_by_patterns)
                "left": List(Map({"id": _MINION_ID, "state": OneOf(KeyState)}), MAX_HOSTS),
                # keys presented under the id of a known minion, and refused
                "refused": List(
                    Map(
                        {
                            "id": _MINION_ID,
                            "fingerprint": _FINGERPRINT,
                            "attempts": Int(1, 2**62),
                            "last_seen": _TIME,
                        }
                    ),
                    MAX_HOSTS,
                ),
            }
        ),
        max_bytes=MAX_CONTROL_FRAME_BYTES,
    ),
    MessageSpec(
        MsgType.JOBS,
        Channel.CONTROL,
        sealed=False,
        schema=Map(
            {
                "action": OneOf(["list", "show"]),
                "host": Optional(_MINION_ID),  # list: jobs that went there; show: its result
                "target": Optional(Str(MAX_TARGET_CHARS, min_len=1)),  # list only
                "limit": Int(1, MAX_JOBS_LISTED),  # list only
                "jid": Optional(_JID),  # show only
                # list only, each optional (absent or null: no filter): jobs
                # submitted in [since, until] (unix times), of this module, by
                # this user, with at least one host of this outcome
                "since": Optional(_TIME),
                "until": Optional(_TIME),
                "module": Optional(_MODULE),
                "user": Optional(Str(MAX_NAME_CHARS, min_len=1)),
                "status": Optional(OneOf(JOB_OUTCOMES)),
                # show only: the hosts in several JOB_REPLYs, each with a part
                # of them, "more" set on all but the last. Absent (a CLI from
                # before): one JOB_REPLY with every host, for a job whose
                # results are small enough (master/history.py).
                "stream": Bool(),
            },
            optional={"since", "until", "module", "user", "status", "stream"},
        ),
        max_bytes=MAX_CONTROL_REQUEST_BYTES,
        check=_check_jobs,
    ),
    MessageSpec(
        MsgType.JOBS_REPLY,
        Channel.CONTROL,
        sealed=False,
        schema=Map({"jobs": List(Map({**_JOB_FIELDS, **_JOB_COUNTS}), MAX_JOBS_LISTED)}),
        max_bytes=MAX_CONTROL_FRAME_BYTES,
    ),
    MessageSpec(
        MsgType.JOB_REPLY,
        Channel.CONTROL,
        sealed=False,
        schema=Map(
            {
                "job": Map(_JOB_FIELDS),
                "hosts": List(
                    Map(
                        {
                            "host": _MINION_ID,
                            "state": OneOf(["sent", "received", "done", "no_response"]),
                            "status": OneOf([*ResultStatus, NO_RESPONSE, "pending"]),
                            "received": Optional(_TIME),
                            "returned": Optional(_TIME),
                            "late": Bool(),
                            "result": Optional(RESULT),
                        }
                    ),
                    MAX_HOSTS,
                ),
                "more": Bool(),  # a streamed show: more hosts follow
            },
            optional={"more"},
        ),
        max_bytes=MAX_CONTROL_FRAME_BYTES,
        check=_check_job_reply,
    ),
    MessageSpec(
        MsgType.ERROR,
        Channel.CONTROL,
        sealed=False,
        schema=Map(
            {
                "code": Str(32, min_len=1, pattern=r"[a-z][a-z_]*"),
                "message": _REASON,
                "problems": List(
                    Map(
                        {
                            "file": Str(PATH_MAX - 1),
                            "line": Optional(Int(1, 2**31 - 1)),
                            "message": _REASON,
                        }
                    ),
                    MAX_PROBLEMS,
                ),
            }
        ),
        max_bytes=MAX_CONTROL_FRAME_BYTES,
    ),
]


def _build_specs(specs: list[MessageSpec]) -> dict[MsgType, MessageSpec]:
    """Index the specs by type, refusing a table that contradicts the rules above."""
    table: dict[MsgType, MessageSpec] = {}
    for spec in specs:
        if spec.type in table:
            raise RuntimeError(f"{spec.type.name} has two specs")
        if spec.sealed and spec.channel is not Channel.NETWORK:
            raise RuntimeError(f"{spec.type.name}: only network messages are sealed")
        if spec.curve and (spec.sealed or spec.channel is not Channel.NETWORK):
            raise RuntimeError(f"{spec.type.name}: only plain network messages rely on CURVE")
        if spec.schema.depth > MAX_BODY_DEPTH:
            raise RuntimeError(f"{spec.type.name}: schema nests deeper than {MAX_BODY_DEPTH}")
        table[spec.type] = spec
    missing = [t.name for t in MsgType if t not in table]
    if missing:
        raise RuntimeError(f"message types without a spec: {', '.join(missing)}")
    return table


SPECS: Mapping[MsgType, MessageSpec] = _build_specs(_SPEC_LIST)


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded, schema-checked message.

    `header` is set exactly when the message came in a sealed envelope that
    passed every check; `peer` exactly when it came plain on a CURVE
    connection whose key the receiver authenticated, and then it names that
    key's owner (set by the receiver, never read from the message). Only
    with one of the two is the message authenticated and its sender known.
    """

    type: MsgType
    body: dict[str, Any]
    version: int = PROTOCOL_VERSION
    header: Header | None = None
    peer: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.header is not None

    @property
    def sender(self) -> str | None:
        return self.peer if self.header is None else self.header.sender

    @property
    def jid(self) -> str | None:
        return None if self.header is None else self.header.jid

    def require_header(self) -> Header:
        """The envelope's header, for a handler of sealed messages; ProtocolError
        if the message came plain (it is not authenticated)."""
        if self.header is None:
            raise ProtocolError(f"{self.type.name} came without an envelope")
        return self.header

    def require_peer(self) -> str:
        """Who sent a curve message, as its connection proved; ProtocolError
        if no connection proved anyone."""
        if self.peer is None:
            raise ProtocolError(f"{self.type.name} came on a connection that proved no key")
        return self.peer


def _spec_for(raw_type: object) -> MessageSpec:
    return SPECS[known_type(raw_type)]


def check_body(msg_type: MsgType, body: Any) -> None:
    """Check a body against its type's schema and rules, as sealing would;
    ProtocolError if it does not fit (its size is not checked here)."""
    _check_body(SPECS[msg_type], body, None)


def _check_body(spec: MessageSpec, body: Any, jid: str | None) -> None:
    validate(spec.schema, body, f"{spec.type.name} body")
    if spec.check is not None:
        spec.check(body, jid)


def _pack_body(spec: MessageSpec, body: dict[str, Any], jid: str | None) -> bytes:
    _check_body(spec, body, jid)
    data = codec.pack(body)
    if len(data) > spec.max_bytes:
        raise ProtocolError(
            f"{spec.type.name} body of {len(data)} bytes is larger than {spec.max_bytes}"
        )
    return data


# ---- plain messages ----


def encode_host_result(jid: str, host: str, result: dict[str, Any] | None) -> bytes:
    """A RUN_HOST_RESULT for `result` as the master stored it (None: no
    response), with the result not checked again: it was checked as a
    RESULT when it came, or the master made it (an over-quota error). A
    files job's result costs more to walk than to pack (a T100 create:
    220 of 290 us), once per host; the CLI checks the whole as it decodes it.
    The fields around it are checked as encode_plain() would."""
    spec = SPECS[MsgType.RUN_HOST_RESULT]
    status = NO_RESPONSE if result is None else result["status"]
    body = {"jid": jid, "host": host, "status": status, "result": None}
    validate(spec.schema, body, "RUN_HOST_RESULT body")
    body["result"] = result
    data = pack_plain(MsgType.RUN_HOST_RESULT, body)
    if len(data) > spec.max_bytes:
        raise ProtocolError(f"RUN_HOST_RESULT of {len(data)} bytes is larger than {spec.max_bytes}")
    return data


def encode_stored_host_result(jid: str, host: str, packed: bytes) -> bytes:
    """encode_host_result() of a result as the master stored it, packed
    (master/jobstore.py): its bytes go into the message as they are, not
    unpacked and packed again, which costs the loop about 10 ms per MiB.
    Only for the master's own store: the bytes are not checked."""
    spec = SPECS[MsgType.RUN_HOST_RESULT]
    body = {"jid": jid, "host": host, "status": _packed_status(packed), "result": None}
    validate(spec.schema, body, "RUN_HOST_RESULT body")
    data = pack_plain_with(MsgType.RUN_HOST_RESULT, body, "result", packed)
    if len(data) > spec.max_bytes:
        raise ProtocolError(f"RUN_HOST_RESULT of {len(data)} bytes is larger than {spec.max_bytes}")
    return data


def _packed_status(packed: bytes) -> Any:
    """The "status" of a packed result, read without unpacking the rest: the
    last one, as unpacking takes the last of a key a map holds twice."""
    reader = msgpack.Unpacker(raw=False)
    reader.feed(packed)
    status = missing = object()
    try:
        for _ in range(reader.read_map_header()):
            if reader.unpack() == "status":
                status = reader.unpack()
            else:
                reader.skip()
    except (ValueError, msgpack.OutOfData, msgpack.UnpackException) as e:
        raise ProtocolError(f"a stored result is not a msgpack map: {e!r}") from None
    if status is missing:
        raise ProtocolError("a stored result has no status")
    return status


def encode_plain(msg_type: MsgType, body: dict[str, Any]) -> bytes:
    """Encode a plain (unsealed) message; ProtocolError if the body does not fit its schema."""
    spec = SPECS[msg_type]
    if spec.sealed:
        raise ProtocolError(f"{msg_type.name} must be sealed, not sent plain")
    _check_body(spec, body, None)
    data = pack_plain(msg_type, body)
    if len(data) > spec.max_bytes:
        raise ProtocolError(f"{msg_type.name} of {len(data)} bytes is larger than {spec.max_bytes}")
    return data


# Largest plain frame per channel, checked before anything is unpacked.
_PLAIN_LIMITS = {
    Channel.NETWORK: MAX_PLAIN_NETWORK_BYTES,
    Channel.KEY: MAX_KEY_PORT_BYTES,
    Channel.CONTROL: MAX_CONTROL_FRAME_BYTES,
}


def decode_plain(frame: bytes, channel: Channel, *, peer: str | None = None) -> Message:
    """Decode a plain message that arrived on `channel`; ProtocolError for anything invalid.

    Sealed types and the other channel's types are refused here: a plain
    JOB or a RUN from the network never becomes a Message. `peer` is who
    the connection it came on proved its sender to be (Message.peer): the
    accepted minion whose CURVE key the master's ZAP handler checked, or
    MASTER_ID on a minion's connection to its pinned master; None if nothing
    was proved.
    """
    version, raw_type, body = unpack_plain(frame, _PLAIN_LIMITS[channel], channel.value)
    spec = SPECS[raw_type]
    if spec.sealed:
        raise ProtocolError(f"{spec.type.name} arrived unsealed; it must be sealed")
    if spec.channel is not channel:
        raise ProtocolError(f"{spec.type.name} is not a {channel.value} message")
    if len(frame) > spec.max_bytes:
        raise ProtocolError(f"{spec.type.name} of {len(frame)} bytes exceeds {spec.max_bytes}")
    _check_body(spec, body, None)
    return Message(spec.type, body, version=version, peer=peer)


# The first bytes of a heartbeat as every minion packs it: a msgpack fixarray
# of 3, then this protocol's version and the HEARTBEAT type, each a positive
# fixint (msgpack's shortest form, which its packer always uses).
_HEARTBEAT_HEAD = bytes([0x93, PROTOCOL_VERSION, MsgType.HEARTBEAT])
_HEARTBEAT = SPECS[MsgType.HEARTBEAT]
# Items in the largest list or map of a heartbeat: its body's fields.
_HEARTBEAT_ITEMS = len(_HEARTBEAT_BODY.fields)


def heartbeat_body(frame: bytes) -> dict[str, Any] | None:
    """The body of a heartbeat that decode_plain() would accept, or None for
    any other frame, valid or not: decode that one with decode_plain(), which
    also says what is wrong with it.

    The master reads a heartbeat from every minion every few seconds, so this
    does for less what decode_plain() does: a heartbeat is recognised by its
    first bytes, has a flat body (no structural scan, codec.unpack_flat) and
    becomes no Message; its body gets the same checks (_check_body)."""
    if frame[:3] != _HEARTBEAT_HEAD or len(frame) > min(
        _HEARTBEAT.max_bytes, _PLAIN_LIMITS[Channel.NETWORK]
    ):
        return None
    try:
        # A list of 3: its head says so, and unpacking refuses trailing bytes.
        body = codec.unpack_flat(frame, max_items=_HEARTBEAT_ITEMS)[2]
        _check_body(_HEARTBEAT, body, None)
    except ProtocolError:
        return None
    checked: dict[str, Any] = body
    return checked


# ---- sealed messages ----


def is_sealed(frame: bytes) -> bool:
    """True if a network frame claims to be an envelope (open it), else decode it plain."""
    return is_envelope(frame)


def seal_message_at(
    msg_type: MsgType,
    body: dict[str, Any],
    *,
    jid: str,
    sender: str,
    sender_keys: KeyPair,
    recipient: str,
    recipient_keys: PublicKeys,
    now: float,
    ttl: int,
) -> bytes:
    """Check `body` against its schema, pack it and seal it to one recipient.

    `jid` is the job's id for job traffic, a fresh new_jid() otherwise. The
    envelope expires `ttl` seconds after `now`. Raises ProtocolError if the
    body or a header field is invalid.
    """
    spec = SPECS[msg_type]
    if not spec.sealed:
        raise ProtocolError(f"{msg_type.name} is a plain message; it cannot be sealed")
    packed = _pack_body(spec, body, jid)
    return _seal(msg_type, packed, jid, sender, sender_keys, recipient, recipient_keys, now, ttl)


def pack_body(msg_type: MsgType, body: dict[str, Any]) -> bytes:
    """Check `body` against its schema and pack it, for seal_packed_at(): one
    body sealed to many recipients is checked and packed once."""
    return _pack_body(SPECS[msg_type], body, None)


def seal_packed_at(
    msg_type: MsgType,
    packed: bytes,
    *,
    jid: str,
    sender: str,
    sender_keys: KeyPair,
    recipient: str,
    recipient_keys: PublicKeys,
    now: float,
    ttl: int,
) -> bytes:
    """seal_message_at() of a body that pack_body() checked and packed."""
    spec = SPECS[msg_type]
    if not spec.sealed or spec.check is _check_receipt:
        # a receipt-like body names its jid, which pack_body() cannot check
        raise ProtocolError(f"{msg_type.name} cannot be sealed from a packed body")
    return _seal(msg_type, packed, jid, sender, sender_keys, recipient, recipient_keys, now, ttl)


def _seal(
    msg_type: MsgType,
    packed: bytes,
    jid: str,
    sender: str,
    sender_keys: KeyPair,
    recipient: str,
    recipient_keys: PublicKeys,
    now: float,
    ttl: int,
) -> bytes:
    return seal_at(
        packed,
        version=PROTOCOL_VERSION,
        msg_type=int(msg_type),
        jid=jid,
        sender=sender,
        recipient=recipient,
        sender_keys=sender_keys,
        recipient_keys=recipient_keys,
        now=now,
        ttl=ttl,
    )


def claimed_spec(claimed: Claimed) -> MessageSpec:
    """The spec of the sealed type an envelope claims, once its size fits that
    type: checked before the signature, so a forged 60 MiB "heartbeat" costs a
    length comparison, not a signature check. The claim is not trusted for
    anything else. Raises ProtocolError."""
    spec = _spec_for(claimed.header.msg_type)
    if not spec.sealed:
        raise ProtocolError(f"{spec.type.name} is a plain message; it arrived sealed")
    if len(claimed.frame) > spec.max_bytes + MAX_ENVELOPE_OVERHEAD:
        raise ProtocolError(
            f"a sealed {spec.type.name} of {len(claimed.frame)} bytes "
            "is larger than that type allows"
        )
    return spec


@dataclass(frozen=True, slots=True)
class VerifiedMessage:
    """A sealed message whose signature, recipient, time window, version and
    type were checked, and whose body is still encrypted. The receiver looks
    at the authenticated header (jid, sender, type) first, and calls open()
    only for a message it still wants."""

    spec: MessageSpec
    verified: Verified

    @property
    def header(self) -> Header:
        return self.verified.header

    def open(self, my_keys: KeyPair) -> Message:
        """Decrypt, unpack and check the body. EnvelopeError if the AEAD refuses,
        ProtocolError if an authentic sender sent an invalid body."""
        return self.open_with_plaintext(my_keys)[0]

    def open_with_plaintext(self, my_keys: KeyPair) -> tuple[Message, bytes]:
        """open(), and the packed body as it came (to store it without packing again)."""
        opened = self.verified.decrypt(my_keys)
        spec, header = self.spec, opened.header
        if len(opened.plaintext) > spec.max_bytes:
            raise ProtocolError(
                f"{spec.type.name} body of {len(opened.plaintext)} bytes exceeds {spec.max_bytes}"
            )
        body = codec.unpack(opened.plaintext, max_depth=MAX_BODY_DEPTH)
        _check_body(spec, body, header.jid)
        return Message(spec.type, body, version=header.version, header=header), opened.plaintext


def verify_message_at(
    frame: bytes | Claimed,
    *,
    me: str,
    sender_keys: Callable[[str], PublicKeys | None],
    now: float,
    skew: float = DEFAULT_CLOCK_SKEW,
) -> VerifiedMessage:
    """Check a sealed message up to, not including, its decryption.

    Order: the claimed type's size limit (claimed_spec), the signature and
    the rest of crypto.verify_at(), then the version and type in the now
    verified header. Raises EnvelopeError or ProtocolError.
    """
    claimed = frame if isinstance(frame, Claimed) else claim(frame)
    claimed_spec(claimed)
    verified = verify_at(claimed, me=me, sender_keys=sender_keys, now=now, skew=skew)
    check_version(verified.header.version)
    spec = _spec_for(verified.header.msg_type)
    return VerifiedMessage(spec, verified)


def open_message_at(
    frame: bytes,
    *,
    me: str,
    my_keys: KeyPair,
    sender_keys: Callable[[str], PublicKeys | None],
    now: float,
    skew: float = DEFAULT_CLOCK_SKEW,
    seen: SeenJids | None = None,
) -> Message:
    """Open an envelope addressed to `me` and decode its body, judged at `now`.

    verify_message_at(), then, if `seen` is given, the replay check (which
    records the (type, jid) until expires-at + skew), then VerifiedMessage.open().

    Raises EnvelopeError if the envelope does not open (opaque), ReplayError
    (an EnvelopeError) if it was seen before, and ProtocolError if an
    authentic sender sent a body that is not valid.
    """
    verified = verify_message_at(frame, me=me, sender_keys=sender_keys, now=now, skew=skew)
    msg = verified.open(my_keys)
    if seen is not None:
        seen.check_and_add(verified.header, keep_until=verified.header.expires_at + skew, now=now)
    return msg


# ---- enrolment: plain, but signed (proof that the sender holds its key) ----

_ENROL_CONTEXT = {
    MsgType.ENROL_REQUEST: "enrol request",
    MsgType.ENROL_REPLY: "enrol reply",
    MsgType.KEY_REPLY: "key reply",
}


def _enrol_signed_bytes(msg_type: MsgType, version: int, body: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in body.items() if k != "sig"}
    return codec.canonical_pack([version, int(msg_type), unsigned])


def _sign_enrol(msg_type: MsgType, body: dict[str, Any], keys: KeyPair) -> dict[str, Any]:
    data = _enrol_signed_bytes(msg_type, PROTOCOL_VERSION, body)
    return {**body, "sig": sign_plain(keys, _ENROL_CONTEXT[msg_type], data)}


def _verify_enrol(msg: Message, expected: MsgType) -> PublicKeys:
    if msg.type is not expected:
        raise ProtocolError(f"expected {expected.name}, got {msg.type.name}")
    keys = PublicKeys.from_wire(msg.body["keys"])
    data = _enrol_signed_bytes(msg.type, msg.version, msg.body)
    verify_plain(keys, _ENROL_CONTEXT[msg.type], data, msg.body["sig"])
    return keys


def make_enrol_request(
    minion_id: str, keys: KeyPair, *, nonce: bytes, now: float
) -> dict[str, Any]:
    """The body of an ENROL_REQUEST, signed with the minion's own key.

    `nonce` is ENROL_NONCE_LENGTH fresh random bytes (os.urandom); the reply
    must echo it.
    """
    body = {
        "id": minion_id,
        "keys": keys.public.to_wire(),
        "nonce": nonce,
        "issued_at": float(now),
    }
    return _sign_enrol(MsgType.ENROL_REQUEST, body, keys)


def verify_enrol_request(
    msg: Message, *, now: float, skew: float = DEFAULT_CLOCK_SKEW
) -> PublicKeys:
    """The minion's public keys, once its request proves it holds them.

    Checks the signature with the keys in the request (proof of possession;
    whether to trust these keys for this id is the key store's decision),
    that the keys can be sealed to, and that issued_at is within `skew` of
    `now`, which catches a minion with a wrong clock at enrolment. Raises
    EnvelopeError for a bad signature, ProtocolError otherwise.
    """
    keys = _verify_enrol(msg, MsgType.ENROL_REQUEST)
    keys.check_usable()
    offset = msg.body["issued_at"] - now
    if not abs(offset) <= skew:  # written so that a NaN clock fails closed
        raise ProtocolError(
            f"enrolment of {msg.body['id']!r} is dated {offset:+.0f} s from this clock "
            f"(more than {skew:.0f} s): check the clocks of minion and master"
        )
    return keys


def make_enrol_reply(
    minion_id: str, state: KeyState, master_keys: KeyPair, *, nonce: bytes, now: float
) -> dict[str, Any]:
    """The body of an ENROL_REPLY to a request with `nonce`, signed with the master's key."""
    body = {
        "id": minion_id,
        "state": str(state),
        "keys": master_keys.public.to_wire(),
        "nonce": nonce,
        "issued_at": float(now),
    }
    return _sign_enrol(MsgType.ENROL_REPLY, body, master_keys)


def verify_enrol_reply(
    msg: Message, *, minion_id: str, nonce: bytes, pinned: str | None
) -> PublicKeys:
    """The master's public keys, once the reply proves it answers our request.

    Checks that the reply names us and echoes our request's nonce (so an old
    reply cannot be replayed), that it is signed with the keys it carries,
    and that those keys match the `pinned` fingerprint. `pinned=None` means
    trust on first use: the caller must then pin the returned keys' fingerprint
    before it believes anything else. Raises EnvelopeError.
    """
    keys = _verify_enrol(msg, MsgType.ENROL_REPLY)
    if msg.body["id"] != minion_id:
        raise EnvelopeError(f"enrol reply is for {msg.body['id']!r}, not {minion_id!r}")
    if not hmac.compare_digest(msg.body["nonce"], nonce):
        raise EnvelopeError("enrol reply does not answer our request (nonce differs)")
    if pinned is not None and not keys.matches(pinned):
        raise EnvelopeError(
            f"master key {keys.fingerprint()} does not match the pinned {pinned}: "
            "possible impersonation"
        )
    return keys


def make_key_reply(master_keys: KeyPair, *, nonce: bytes, now: float) -> dict[str, Any]:
    """The master's public keys for the key port, signed, answering `nonce`."""
    body = {"keys": master_keys.public.to_wire(), "nonce": nonce, "issued_at": float(now)}
    return _sign_enrol(MsgType.KEY_REPLY, body, master_keys)


def verify_key_reply(msg: Message, *, nonce: bytes, pinned: str | None) -> PublicKeys:
    """The master's public keys from a KEY_REPLY to our request with `nonce`.

    Checks the signature with the keys carried (proof of possession), the
    nonce, and the `pinned` fingerprint; None means trust on first use,
    which the caller allows only when trust_first_master says so. Raises
    EnvelopeError.
    """
    keys = _verify_enrol(msg, MsgType.KEY_REPLY)
    if not hmac.compare_digest(msg.body["nonce"], nonce):
        raise EnvelopeError("key reply does not answer our request (nonce differs)")
    if pinned is not None and not keys.matches(pinned):
        raise EnvelopeError(
            f"master key {keys.fingerprint()} does not match master_fingerprint {pinned}: "
            "possible impersonation"
        )
    return keys


# ---- control socket framing: common/wire.py (encode_frame, FrameReader) ----


# ---- dispatch ----

Handler = Callable[[Message], Any]


class Dispatcher:
    """Routes messages to handlers by an explicit table; nothing is looked up by name.

    Only types in `handlers` are reachable, and each only as its spec allows:
    a sealed type only from an opened envelope (Message.authenticated), a
    curve type only with the peer its connection proved (Message.peer), and
    only messages of this dispatcher's channel. With the network table
    {ENROL_REQUEST: ..., HEARTBEAT: ..., RESULT: ...}, a stranger reaches
    ENROL_REQUEST only.
    """

    def __init__(self, channel: Channel, handlers: Mapping[MsgType, Handler]) -> None:
        for msg_type in handlers:
            if SPECS[msg_type].channel is not channel:
                raise ValueError(f"{msg_type.name} is not a {channel.value} message")
        self.channel = channel
        self._handlers = dict(handlers)

    def dispatch(self, msg: Message) -> Any:
        """Call the handler of `msg`; ProtocolError if this side does not accept it."""
        spec = SPECS[msg.type]
        handler = self._handlers.get(msg.type)
        if handler is None or spec.channel is not self.channel:
            raise ProtocolError(f"{msg.type.name} is not accepted here")
        if spec.sealed and not msg.authenticated:
            raise ProtocolError(f"{msg.type.name} from an unauthenticated peer is refused")
        if spec.curve and msg.peer is None:
            raise ProtocolError(f"{msg.type.name} from a connection that proved no key is refused")
        if not spec.sealed and msg.authenticated:
            raise ProtocolError(f"{msg.type.name} must come plain, not sealed")
        return handler(msg)
