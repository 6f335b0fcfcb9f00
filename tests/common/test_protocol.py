"""The wire protocol: round trips, schema refusals, fuzzing, dispatch, replay, enrolment."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safcm.common import codec, crypto
from safcm.common import schema as S
from safcm.common.crypto import KeyPair, PublicKeys, peek_header
from safcm.common.errors import EnvelopeError, ProtocolError, ReplayError
from safcm.common.model import (
    ApplyFailure,
    ApplyResult,
    FileChange,
    FileSpec,
    FileState,
    FileType,
    TriggerRun,
    TriggerStatus,
)
from safcm.common.protocol import (
    ENROL_NONCE_LENGTH,
    MASTER_ID,
    MAX_BODY_DEPTH,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_JOB_BYTES,
    MAX_PLAIN_NETWORK_BYTES,
    MAX_SMALL_BYTES,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    SPECS,
    Channel,
    Dispatcher,
    FrameReader,
    KeyState,
    Message,
    MsgType,
    SeenJids,
    decode_plain,
    encode_frame,
    encode_host_result,
    encode_plain,
    encode_stored_host_result,
    heartbeat_body,
    is_sealed,
    make_enrol_reply,
    make_enrol_request,
    make_key_reply,
    new_jid,
    open_message_at,
    pack_body,
    seal_message_at,
    seal_packed_at,
    verify_enrol_reply,
    verify_enrol_request,
)
from tests.common.strategies import apply_results, bodies, file_specs, fuzz, strategy_for

NOW = 1_800_000_000.0
JID = new_jid(NOW)
MASTER = KeyPair.generate()
WEB1 = KeyPair.generate()
WEB2 = KeyPair.generate()
MASTER_LOOKUP = {MASTER_ID: MASTER.public}.get
MINION_LOOKUP = {"web1": WEB1.public, "web2": WEB2.public}.get

PLAIN = [t for t in MsgType if not SPECS[t].sealed]
SEALED = [t for t in MsgType if SPECS[t].sealed]
CURVE = [t for t in MsgType if SPECS[t].curve]
TO_MINION = {MsgType.HEARTBEAT_REPLY, MsgType.JOB, MsgType.RESULT_RECEIPT, MsgType.CONTENT}


def _spec(**kw: Any) -> dict[str, Any]:
    base = dict(path="/etc/motd", type=FileType.FILE, mode=0o644, user="root", group="root")
    base.update(kw)
    return FileSpec(**base).to_wire()


def _apply_result() -> ApplyResult:
    old = FileState(FileType.FILE, 0o600, 0, 0, "root", "root")
    new = FileState(FileType.FILE, 0o644, 0, 0, "root", "root")
    return ApplyResult(
        dry_run=False,
        changes=[
            FileChange("/etc/motd", False, new, old, "--- a\n+++ b\n@@ -1 +1 @@\n-x\n+y\n"),
            FileChange("/etc/new", True, new),
        ],
        triggers=[TriggerRun("systemctl reload app", TriggerStatus.OK, 0, "", 0.25)],
        duration=1.5,
    )


_RESULT = {
    "module": "files",
    "status": "ok",
    "started": NOW,
    "finished": NOW + 2,
    "apply": _apply_result().to_wire(),
    "ping": None,
    "error": None,
}

# One hand-written body per type; the hypothesis tests below cover the rest.
SAMPLES: dict[MsgType, dict[str, Any]] = {
    MsgType.ENROL_REQUEST: make_enrol_request("web1", WEB1, nonce=b"n" * 16, now=NOW),
    MsgType.ENROL_REPLY: make_enrol_reply(
        "web1", KeyState.PENDING, MASTER, nonce=b"n" * 16, now=NOW
    ),
    MsgType.HEARTBEAT: {
        "version": "0.1.0",
        "uptime": 12.5,
        "busy": JID,
        "interval": 5.0,
        "seq": 7,
    },
    MsgType.KEY_REQUEST: {"nonce": b"n" * 16},
    MsgType.KEY_REPLY: make_key_reply(MASTER, nonce=b"n" * 16, now=NOW),
    MsgType.HEARTBEAT_REPLY: {"time": NOW, "seq": 7},
    MsgType.JOB: {
        "module": "files",
        "dry_run": False,
        "files": [
            _spec(),
            _spec(
                path="/etc/app", type=FileType.DIR, mode=0o2750, user=None, uid=0, triggers=("a",)
            ),
            _spec(path="/etc/l", type=FileType.SYMLINK, mode=0o777, data=b"/etc/motd"),
        ],
        "absent": [{"path": "/etc/old", "recursive": True}],
        "purge": ["/etc/app"],
        "secrets": ["/etc/app/key"],
        "deadline": NOW + 60,
    },
    MsgType.JOB_RECEIPT: {"jid": JID},
    MsgType.RESULT: _RESULT,
    MsgType.RESULT_RECEIPT: {"jid": JID},
    MsgType.JOB_PROGRESS: {"jid": JID, "elapsed": 12.5},
    MsgType.CONTENT_REQUEST: {"jid": JID, "digests": [hashlib.sha256(b"x").digest()]},
    MsgType.CONTENT: {"jid": JID, "blobs": [b"x"]},
    MsgType.FACTS: {
        "os_id": "debian",
        "os_version_id": "12",
        "os_codename": "bookworm",
        "os_name": "Debian GNU/Linux 12 (bookworm)",
        "architecture": "x86_64",
        "kernel": "6.1.0-18-amd64",
        "hostname": "web1",
        "cpu_count": 4,
        "memory_bytes": 16 * 2**30,
    },
    MsgType.RUN: {
        "target": "web*",
        "group": False,
        "module": "files",
        "dry_run": True,
        "timeout": None,
    },
    MsgType.KEYS: {"action": "accept", "ids": ["web1", "web2"]},
    MsgType.RUN_STARTED: {
        "jid": JID,
        "hosts": ["web1", "web2"],
        "skipped": [{"host": "web3", "reason": "its key is pending"}],
    },
    MsgType.RUN_HOST_RESULT: {"jid": JID, "host": "web1", "status": "ok", "result": _RESULT},
    MsgType.RUN_PROGRESS: {"jid": JID, "host": "web1", "until": NOW + 15},
    MsgType.RUN_DONE: {
        "jid": JID,
        "summary": {"targeted": 3, "changed": 1, "unchanged": 1, "failed": 0, "no_response": 1},
    },
    MsgType.KEYS_REPLY: {
        "master": MASTER.fingerprint(),
        "publish_port": 4506,
        "left": [{"id": "web3", "state": "rejected"}],
        "refused": [
            {"id": "web1", "fingerprint": WEB2.fingerprint(), "attempts": 3, "last_seen": NOW}
        ],
        "keys": [
            {
                "id": "web1",
                "state": "accepted",
                "fingerprint": WEB1.fingerprint(),
                "connected": True,
                "not_subscribed": False,
                "last_seen": NOW,
            }
        ],
    },
    MsgType.JOBS: {"action": "list", "host": "web1", "target": None, "limit": 20, "jid": None},
    MsgType.JOBS_REPLY: {
        "jobs": [
            {
                "jid": JID,
                "submitted": NOW,
                "deadline": NOW + 60,
                "user": "root",
                "target": "web*",
                "module": "files",
                "dry_run": False,
                "git_commit": "0" * 40,
                "hosts": 3,
                "changed": 1,
                "ok": 1,
                "failed": 0,
                "no_response": 1,
                "pending": 0,
            }
        ]
    },
    MsgType.JOB_REPLY: {
        "job": {
            "jid": JID,
            "submitted": NOW,
            "deadline": NOW + 60,
            "user": "root",
            "target": "@web",
            "module": "files",
            "dry_run": True,
            "git_commit": None,
        },
        "hosts": [
            {
                "host": "web1",
                "state": "done",
                "status": "ok",
                "received": NOW + 1,
                "returned": NOW + 2,
                "late": False,
                "result": _RESULT,
            },
            {
                "host": "web2",
                "state": "no_response",
                "status": "no response",
                "received": None,
                "returned": None,
                "late": False,
                "result": None,
            },
        ],
    },
    MsgType.ERROR: {
        "code": "config",
        "message": "the configuration has 1 problem",
        "problems": [{"file": "web/permissions.yaml", "line": 3, "message": "bad mode"}],
    },
}


def _ends(msg_type: MsgType) -> dict[str, Any]:
    """Sender and recipient, with their keys, for a sealed type's direction."""
    if msg_type in TO_MINION:
        return dict(
            sender=MASTER_ID, sender_keys=MASTER, recipient="web1", recipient_keys=WEB1.public
        )
    return dict(sender="web1", sender_keys=WEB1, recipient=MASTER_ID, recipient_keys=MASTER.public)


def _peer(msg_type: MsgType) -> str | None:
    """Who the connection proves the sender of a curve message to be, as its
    receiver decodes it (None for other plain messages)."""
    if not SPECS[msg_type].curve:
        return None
    return MASTER_ID if msg_type in TO_MINION else "web1"


def _receiver(msg_type: MsgType) -> dict[str, Any]:
    if msg_type in TO_MINION:
        return dict(me="web1", my_keys=WEB1, sender_keys=MASTER_LOOKUP)
    return dict(me=MASTER_ID, my_keys=MASTER, sender_keys=MINION_LOOKUP)


def seal(
    msg_type: MsgType, body: dict[str, Any], *, jid: str = JID, now: float = NOW, ttl: int = 60
) -> bytes:
    return seal_message_at(msg_type, body, jid=jid, now=now, ttl=ttl, **_ends(msg_type))


def seal_raw(
    msg_type: int, plaintext: bytes, *, version: int = PROTOCOL_VERSION, jid: str = JID
) -> bytes:
    """Seal bytes without any schema check: what a buggy or hostile peer could send."""
    ends = (
        _ends(MsgType(msg_type))
        if msg_type in MsgType._value2member_map_
        else _ends(MsgType.RESULT)
    )
    return crypto.seal_at(
        plaintext, version=version, msg_type=msg_type, jid=jid, now=NOW, ttl=60, **ends
    )


def open_(frame: bytes, msg_type: MsgType, **kw: Any) -> Message:
    args = dict(now=NOW, **_receiver(msg_type))
    args.update(kw)
    return open_message_at(frame, **args)


def send(msg_type: MsgType, body: dict[str, Any]) -> Message:
    """Encode and decode one message the way its spec says it travels."""
    spec = SPECS[msg_type]
    if spec.sealed:
        by_jid = (MsgType.CONTENT_REQUEST, MsgType.CONTENT)
        jid = body["jid"] if msg_type in by_jid else JID
        return open_(seal(msg_type, body, jid=jid), msg_type)
    return decode_plain(encode_plain(msg_type, body), spec.channel, peer=_peer(msg_type))


def send_unchecked(msg_type: MsgType, body: Any) -> Message:
    """Like send(), but the sender skips every check (a hostile or buggy peer)."""
    spec = SPECS[msg_type]
    if spec.sealed:
        return open_(seal_raw(msg_type, codec.pack(body)), msg_type)
    frame = codec.pack([PROTOCOL_VERSION, int(msg_type), body])
    return decode_plain(frame, spec.channel, peer=_peer(msg_type))


# ---- the table of message types ----


def test_every_type_has_a_spec_and_sealed_types_are_network_only():
    assert set(SPECS) == set(MsgType)
    for t, spec in SPECS.items():
        assert spec.type is t
        assert spec.schema.depth <= MAX_BODY_DEPTH
        if spec.sealed or spec.curve:
            assert spec.channel is Channel.NETWORK
        assert not (spec.sealed and spec.curve)
    network_plain = {t for t in PLAIN if SPECS[t].channel is Channel.NETWORK and t not in CURVE}
    assert network_plain == {MsgType.ENROL_REQUEST, MsgType.ENROL_REPLY}
    # What relies on the CURVE connection: small messages, none stored.
    assert set(CURVE) == {
        MsgType.HEARTBEAT,
        MsgType.HEARTBEAT_REPLY,
        MsgType.JOB_RECEIPT,
        MsgType.RESULT_RECEIPT,
        MsgType.JOB_PROGRESS,
    }


def test_a_table_missing_a_type_or_breaking_a_rule_is_refused_at_import():
    from safcm.common import protocol

    with pytest.raises(RuntimeError, match="without a spec: JOB"):
        protocol._build_specs([s for s in SPECS.values() if s.type is not MsgType.JOB])
    run = SPECS[MsgType.RUN]
    bad = protocol.MessageSpec(run.type, run.channel, True, run.schema, run.max_bytes)
    with pytest.raises(RuntimeError, match="only network messages are sealed"):
        protocol._build_specs([bad])
    with pytest.raises(RuntimeError, match="two specs"):
        protocol._build_specs([run, run])
    heartbeat = SPECS[MsgType.HEARTBEAT]
    for bad in (replace(run, curve=True), replace(heartbeat, sealed=True)):
        with pytest.raises(RuntimeError, match="only plain network messages rely on CURVE"):
            protocol._build_specs([bad])


def test_samples_cover_every_type():
    assert set(SAMPLES) == set(MsgType)


# ---- round trips ----


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_round_trip_of_every_type(msg_type):
    body = SAMPLES[msg_type]
    msg = send(msg_type, body)
    assert msg.type is msg_type
    assert msg.body == body
    assert msg.version == PROTOCOL_VERSION
    assert msg.authenticated is SPECS[msg_type].sealed
    if msg.authenticated:
        assert msg.header.msg_type == msg_type
        assert msg.sender == _ends(msg_type)["sender"]
        assert msg.jid == (body.get("jid") or JID)
        assert msg.require_header() is msg.header
    else:
        assert msg.sender == _peer(msg_type) and msg.jid is None
        with pytest.raises(ProtocolError, match="came without an envelope"):
            msg.require_header()


@pytest.mark.parametrize(
    ("msg_type", "extra"),
    [
        (MsgType.RUN, {"batch": {"size": 25, "percent": True}, "batch_fail": 2}),
        (MsgType.RUN, {"batch": {"size": 100, "percent": False}}),
        (MsgType.RUN_STARTED, {"batch": {"number": 2, "of": 3}}),
        (
            MsgType.RUN_DONE,
            {
                "summary": {**SAMPLES[MsgType.RUN_DONE]["summary"], "not_run": 1},
                "not_run": [{"host": "web4", "reason": "not run: the failure limit"}],
            },
        ),
    ],
    ids=lambda v: v.name if isinstance(v, MsgType) else "",
)
def test_the_batch_fields_of_run_messages(msg_type, extra):
    body = {**SAMPLES[msg_type], **extra}
    assert send(msg_type, body).body == body


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
@given(data=st.data())
@fuzz(0.25)
def test_round_trip_of_generated_bodies(msg_type, data):
    body = data.draw(bodies(msg_type))
    assert send(msg_type, body).body == body


@given(st.lists(file_specs(), max_size=8), st.booleans())
@fuzz(0.5)
def test_file_specs_survive_the_wire(specs, dry_run):
    body = {
        "module": "files",
        "dry_run": dry_run,
        "files": [s.to_wire() for s in specs],
        "absent": [],
        "purge": [],
        "secrets": [],
        "deadline": NOW,
    }
    msg = send(MsgType.JOB, body)
    assert [FileSpec.from_wire(d) for d in msg.body["files"]] == specs


@given(apply_results)
@fuzz(0.5)
def test_apply_results_survive_the_wire(result):
    body = {
        "module": "files",
        "status": "ok" if result.ok else "failed",
        "started": NOW,
        "finished": NOW + result.duration,
        "apply": result.to_wire(),
        "ping": None,
        "error": None,
    }
    msg = send(MsgType.RESULT, body)
    again = ApplyResult.from_wire(msg.body["apply"])
    assert again == result
    assert again.ok == result.ok


def test_a_realistic_large_job_passes():
    files = [_spec(path=f"/srv/site/{i:05d}.html", data=os.urandom(4096)) for i in range(5000)]
    files += [_spec(path=f"/srv/blob{i}", data=b"\0" * (4 * 1024 * 1024)) for i in range(3)]
    body = {**SAMPLES[MsgType.JOB], "files": files, "deadline": NOW + 600}
    msg = send(MsgType.JOB, body)
    assert len(msg.body["files"]) == 5003
    assert msg.body["files"][4999]["data"] == files[4999]["data"]


def test_a_file_over_the_limit_is_refused_by_both_ends():
    body = {**SAMPLES[MsgType.JOB], "files": [_spec(data=b"x" * (MAX_FILE_BYTES + 1))]}
    with pytest.raises(
        ProtocolError, match=r"JOB body\.files\[0\]\.data: expected 0\.\.16777216 bytes"
    ):
        seal(MsgType.JOB, body)
    with pytest.raises(ProtocolError, match=r"files\[0\]\.data"):
        send_unchecked(MsgType.JOB, body)


def test_too_many_files_are_refused():
    body = {**SAMPLES[MsgType.JOB], "files": [_spec()] * (MAX_FILES + 1)}
    with pytest.raises(
        ProtocolError, match=r"JOB body\.files: expected a list of 0\.\.65536 items"
    ):
        seal(MsgType.JOB, body)


def test_a_body_over_its_size_limit_is_refused():
    # A content request is far smaller than a result; a peer that pads one is
    # refused before msgpack sees it.
    limit = SPECS[MsgType.CONTENT_REQUEST].max_bytes + crypto.MAX_ENVELOPE_OVERHEAD
    padded = codec.pack({"jid": JID, "pad": b"\0" * limit})
    with pytest.raises(ProtocolError, match="larger than that type allows"):
        open_(seal_raw(MsgType.CONTENT_REQUEST, padded), MsgType.CONTENT_REQUEST)
    # A heartbeat travels plain: one sealed is refused before its signature.
    heartbeat = seal_raw(MsgType.HEARTBEAT, codec.pack(SAMPLES[MsgType.HEARTBEAT]))
    with pytest.raises(ProtocolError, match="HEARTBEAT is a plain message; it arrived sealed"):
        open_(heartbeat, MsgType.HEARTBEAT, sender_keys=lambda _: pytest.fail("verified"))
    with pytest.raises(ProtocolError, match="HEARTBEAT is a plain message; it cannot be sealed"):
        seal(MsgType.HEARTBEAT, SAMPLES[MsgType.HEARTBEAT])
    # A job whose every file is within limits can still be too large as a whole.
    chunk = b"\0" * (MAX_FILE_BYTES - 1024)
    files = [_spec(path=f"/srv/f{i}", data=chunk) for i in range(MAX_JOB_BYTES // len(chunk) + 1)]
    with pytest.raises(
        ProtocolError, match=f"JOB body of [0-9]+ bytes is larger than {MAX_JOB_BYTES}"
    ):
        seal(MsgType.JOB, {**SAMPLES[MsgType.JOB], "files": files})
    big = encode_plain(MsgType.RUN, {**SAMPLES[MsgType.RUN], "target": "w" * 4096})
    with pytest.raises(ProtocolError, match="exceeds 4096"):
        decode_plain(big[:3] + b"\x01" + big[4:], Channel.NETWORK)  # same bytes, claimed ENROL


# ---- what each side refuses ----


def test_a_sealed_type_sent_plain_is_refused():
    # CVE-2020-11651: nothing but enrolment may arrive without a verified key.
    for t in SEALED:
        frame = codec.pack([PROTOCOL_VERSION, int(t), SAMPLES[t]])
        if len(frame) > MAX_PLAIN_NETWORK_BYTES:
            frame = codec.pack([PROTOCOL_VERSION, int(t), {}])
        with pytest.raises(ProtocolError, match=r"must be sealed|exceeds"):
            decode_plain(frame, Channel.NETWORK)
        with pytest.raises(ProtocolError):
            decode_plain(frame, Channel.CONTROL)


def test_control_messages_are_refused_from_the_network_and_vice_versa():
    run = encode_plain(MsgType.RUN, SAMPLES[MsgType.RUN])
    with pytest.raises(ProtocolError, match="RUN is not a network message"):
        decode_plain(run, Channel.NETWORK)
    enrol = encode_plain(MsgType.ENROL_REQUEST, SAMPLES[MsgType.ENROL_REQUEST])
    with pytest.raises(ProtocolError, match="ENROL_REQUEST is not a control message"):
        decode_plain(enrol, Channel.CONTROL)


def test_a_plain_type_inside_an_envelope_is_refused():
    frame = seal_raw(MsgType.ENROL_REQUEST, codec.pack(SAMPLES[MsgType.ENROL_REQUEST]))
    with pytest.raises(ProtocolError, match="arrived sealed"):
        open_(frame, MsgType.RESULT)


def test_plain_and_sealed_cannot_be_encoded_the_wrong_way():
    with pytest.raises(ProtocolError, match="must be sealed"):
        encode_plain(MsgType.JOB, SAMPLES[MsgType.JOB])
    with pytest.raises(ProtocolError, match="cannot be sealed"):
        seal(MsgType.ENROL_REQUEST, SAMPLES[MsgType.ENROL_REQUEST])


@pytest.mark.parametrize(
    "version", [MIN_PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, "1", None, True]
)
def test_unsupported_versions_are_refused(version):
    frame = codec.pack([version, int(MsgType.RUN), SAMPLES[MsgType.RUN]])
    with pytest.raises(ProtocolError, match="not supported"):
        decode_plain(frame, Channel.CONTROL)
    if isinstance(version, int) and not isinstance(version, bool):
        sealed = seal_raw(MsgType.RESULT, codec.pack(_RESULT), version=version)
        with pytest.raises(ProtocolError, match="not supported"):
            open_(sealed, MsgType.RESULT)


@pytest.mark.parametrize("raw_type", [0, 99, 100, 999, -1, "RUN", 1.0, 101.0, True, None])
def test_unknown_types_are_refused(raw_type):
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode_plain(codec.pack([PROTOCOL_VERSION, raw_type, {}]), Channel.CONTROL)


def test_unknown_sealed_type_is_refused():
    with pytest.raises(ProtocolError, match="unknown message type 999"):
        open_(seal_raw(999, codec.pack({})), MsgType.RESULT)


@pytest.mark.parametrize(
    "frame",
    [codec.pack([1, 101]), codec.pack({"v": 1}), codec.pack([1, 101, {}, 4]), codec.pack(None)],
)
def test_frames_that_are_not_the_triple_are_refused(frame):
    with pytest.raises(ProtocolError, match=r"\[version, type, body\]"):
        decode_plain(frame, Channel.CONTROL)


def _result(**kw: Any) -> dict[str, Any]:
    return {**_RESULT, **kw}


_FAILED_APPLY = {
    **_apply_result().to_wire(),
    "failures": [ApplyFailure("/etc/x", "no").to_wire()],
}
_PING = {"version": "0.1.0", "time": NOW}


def _job_with(**file: Any) -> dict[str, Any]:
    """The sample job with its first file changed."""
    job = SAMPLES[MsgType.JOB]
    return {**job, "files": [{**job["files"][0], **file}, *job["files"][1:]]}


CROSS_FIELD = [
    (MsgType.JOB, _job_with(digest=None), "a digest is set exactly for a file"),
    (MsgType.JOB, _job_with(type="dir", data=b""), "a digest is set exactly for a file"),
    (MsgType.JOB, _job_with(data=b"other"), "does not match its digest"),
    (MsgType.JOB, _job_with(type="symlink", digest=None, data=None), "needs its data"),
    # a ping job carries no files, not even an empty list of them
    (MsgType.JOB, {**SAMPLES[MsgType.JOB], "module": "ping"}, "unexpected key 'files'"),
    (
        MsgType.JOB,
        {**SAMPLES[MsgType.JOB], "module": "ping", "files": [], "absent": [], "purge": []},
        "unexpected key 'files'",
    ),
    (MsgType.JOB, {**SAMPLES[MsgType.JOB], "module": "nosuch"}, r"module: expected one of"),
    (MsgType.KEYS, {"action": "delete", "ids": []}, "needs at least one minion id"),
    (MsgType.RESULT, _result(status="error"), "error is set exactly"),
    (MsgType.RESULT, _result(error="boom"), "error is set exactly"),
    (MsgType.RESULT, _result(finished=NOW - 1), "finished is before started"),
    (MsgType.RESULT, _result(apply=None), "apply is set exactly"),
    (MsgType.RESULT, _result(ping=_PING), "ping is set exactly"),
    (MsgType.RESULT, _result(module="ping", apply=None), "ping is set exactly"),
    (MsgType.RESULT, _result(status="error", error="x"), "apply is set exactly"),
    (MsgType.RESULT, _result(apply=_FAILED_APPLY), "status ok contradicts"),
    (MsgType.RESULT, _result(status="failed"), "status failed contradicts"),
    (
        MsgType.RUN_HOST_RESULT,
        {"jid": JID, "host": "web1", "status": "no response", "result": _RESULT},
        "missing exactly for no response",
    ),
    (
        MsgType.RUN_HOST_RESULT,
        {"jid": JID, "host": "web1", "status": "failed", "result": _RESULT},
        "status differs",
    ),
    (
        MsgType.RUN_HOST_RESULT,
        {"jid": JID, "host": "web1", "status": "ok", "result": _result(apply=None)},
        "apply is set exactly",
    ),
    (
        MsgType.JOBS,
        {"action": "show", "host": None, "target": None, "limit": 1, "jid": None},
        "set exactly for show",
    ),
    (
        MsgType.JOBS,
        {"action": "list", "host": None, "target": None, "limit": 1, "jid": JID},
        "set exactly for show",
    ),
    (
        MsgType.JOBS,
        {"action": "show", "host": None, "target": "web*", "limit": 1, "jid": JID},
        "only list filters by target",
    ),
    (
        MsgType.JOBS,
        {"action": "show", "host": None, "target": None, "limit": 1, "jid": JID, "user": "root"},
        "only list filters by user",
    ),
    (
        MsgType.JOBS,
        {**SAMPLES[MsgType.JOBS], "since": 20.0, "until": 10.0},
        "until: before since",
    ),
    (
        MsgType.JOBS,
        {"action": "list", "host": None, "target": None, "limit": 1, "jid": None, "stream": True},
        "only show is streamed",
    ),
    (MsgType.RUN, {**SAMPLES[MsgType.RUN], "batch_fail": 2}, "batch_fail: only with batch"),
    (
        MsgType.RUN,
        {**SAMPLES[MsgType.RUN], "batch": {"size": 101, "percent": True}},
        "a percentage is at most 100",
    ),
    (
        MsgType.JOB_REPLY,
        {
            **SAMPLES[MsgType.JOB_REPLY],
            "hosts": [{**SAMPLES[MsgType.JOB_REPLY]["hosts"][0], "result": _result(apply=None)}],
        },
        "apply is set exactly",
    ),
]


@pytest.mark.parametrize(("msg_type", "body", "reason"), CROSS_FIELD)
def test_cross_field_checks(msg_type, body, reason):
    with pytest.raises(ProtocolError, match=reason):
        send(msg_type, body)
    with pytest.raises(ProtocolError, match=reason):
        send_unchecked(msg_type, body)


def test_jobs_filters_are_optional_and_checked():
    full = {"since": 10.0, "until": 10.0, "module": "ping", "user": "root", "status": "no response"}
    send(MsgType.JOBS, {**SAMPLES[MsgType.JOBS], **full})
    for bad in ({"status": "unchanged"}, {"module": "shell"}, {"user": ""}, {"since": -1.0}):
        with pytest.raises(ProtocolError):
            send(MsgType.JOBS, {**SAMPLES[MsgType.JOBS], **bad})


def test_cross_field_checks_accept_the_consistent_forms():
    send(MsgType.RESULT, _result(status="failed", apply=_FAILED_APPLY))
    send(MsgType.RESULT, _result(module="ping", apply=None, ping=_PING))
    send(MsgType.RESULT, _result(status="error", apply=None, error="no space left"))
    send(MsgType.KEYS, {"action": "list", "ids": []})
    send(MsgType.JOB, {"module": "ping", "dry_run": False, "deadline": NOW + 60})


@pytest.mark.parametrize(
    "msg_type",
    [MsgType.CONTENT_REQUEST, MsgType.CONTENT],
    ids=lambda t: t.name,
)
def test_a_receipt_must_name_its_envelopes_jid(msg_type):
    other = new_jid(NOW + 1)
    body = {**SAMPLES[msg_type], "jid": other}
    frame = seal_raw(msg_type, codec.pack(body))
    with pytest.raises(ProtocolError, match="differs from the envelope's jid"):
        open_(frame, msg_type)
    with pytest.raises(ProtocolError, match="differs from the envelope's jid"):
        seal(msg_type, body, jid=JID)


# ---- fuzzing: structured mutations of valid messages ----

_WRONG_TYPES = [42, -1, 1.5, "text", b"bytes", [], {}, True]
# Strings that break a string field's grammar: the first its pattern refuses
# is used (a free-text field, such as FACTS os_name, takes the first and
# refuses only control characters).
_BAD_GRAMMARS = ("Not Valid!", "\x00")


def _bad_grammar(schema: S.Str) -> str:
    for value in _BAD_GRAMMARS:
        try:
            S.validate(schema, value, "probe")
        except ProtocolError:
            return value
    raise AssertionError(f"{schema!r} takes every string this test knows to be malformed")


def _too_long(n: int) -> bool:
    # Oversize values above this are tested explicitly, not generated per example.
    return n > 70000


def _invalid_values(schema: S.Schema, value: Any, optional: bool) -> list[tuple[str, Any]]:
    """(kind, value) pairs that `schema` must refuse, for a node holding `value`."""
    out: list[tuple[str, Any]] = []
    if not optional:
        out.append(("type", None))
    deep: Any = 1
    for _ in range(MAX_BODY_DEPTH + 3):
        deep = [deep]
    out.append(("deep", deep))
    if isinstance(schema, S.Str):
        out += [("type", v) for v in _WRONG_TYPES if type(v) is not str]
        if not _too_long(schema.max_len):
            out.append(("size", "x" * (schema.max_len + 1)))
        if schema.min_len:
            out.append(("size", "x" * (schema.min_len - 1)))
        if schema.pattern is not None or schema.problem is not None:
            out.append(("type", _bad_grammar(schema)))
    elif isinstance(schema, S.Bytes):
        out += [("type", v) for v in _WRONG_TYPES if type(v) is not bytes]
        if not _too_long(schema.max_len):
            out.append(("size", b"x" * (schema.max_len + 1)))
        if schema.min_len:
            out.append(("size", b"x" * (schema.min_len - 1)))
    elif isinstance(schema, S.Int):
        out += [("type", v) for v in _WRONG_TYPES if type(v) is not int]
        out += [("type", schema.lo - 1), ("type", schema.hi + 1)]
    elif isinstance(schema, S.Float):
        out += [("type", v) for v in _WRONG_TYPES if type(v) not in (int, float)]
        out += [
            ("type", math.nan),
            ("type", -math.inf),
            ("type", schema.lo - 1),
            ("type", schema.hi * 2 + 1),
        ]
    elif isinstance(schema, S.Bool):
        out += [("type", v) for v in [0, 1, "true", b"", []]]
    elif isinstance(schema, S.OneOf):
        out += [("type", "not-one-of-them"), ("type", 1), ("type", b"files")]
    elif isinstance(schema, S.List):
        out += [("type", v) for v in _WRONG_TYPES if type(v) is not list]
        if value and schema.max_items <= 5000:
            out.append(("size", [value[0]] * (schema.max_items + 1)))
    elif isinstance(schema, S.Map):
        out += [("type", v) for v in _WRONG_TYPES if type(v) is not dict]
        if value is None:
            return out
        for key in sorted(schema.required & value.keys()):
            out.append(("missing", {k: v for k, v in value.items() if k != key}))
        out.append(("extra", {**value, "zz_extra": 1}))
        if value:
            first = sorted(value)[0]
            out.append(
                (
                    "key",
                    {
                        **{k: v for k, v in value.items() if k != first},
                        first.encode(): value[first],
                    },
                )
            )
            out.append(("key", {**{k: v for k, v in value.items() if k != first}, 7: value[first]}))
    return out


def _mutate(data: st.DataObject, schema: S.Schema, value: Any, path: str) -> tuple[str, str, Any]:
    """Replace one node of `value` (chosen by hypothesis) with an invalid one."""
    optional = isinstance(schema, S.Optional)
    if optional:
        schema = schema.inner
        if value is None:
            kind, bad = data.draw(st.sampled_from(_invalid_values(schema, None, True)))
            return kind, path, bad
    children: list[tuple[Any, S.Schema]] = []
    if isinstance(schema, S.Map):
        children = [(k, schema.fields[k]) for k in sorted(value)]
    elif isinstance(schema, S.List):
        children = [(i, schema.item) for i in range(len(value))]
    if children and data.draw(st.booleans(), label="descend"):
        key, sub = data.draw(st.sampled_from(children), label="child")
        kind, where, bad_child = _mutate(
            data, sub, value[key], path + (f"[{key}]" if isinstance(key, int) else f".{key}")
        )
        copy = list(value) if isinstance(value, list) else dict(value)
        copy[key] = bad_child
        return kind, where, copy
    kind, bad = data.draw(
        st.sampled_from(_invalid_values(schema, value, optional)), label="mutation"
    )
    return kind, path, bad


@given(st.sampled_from(list(MsgType)), st.data())
@fuzz(3)
def test_structured_mutations_raise_only_protocol_error_naming_the_field(msg_type, data):
    body = data.draw(bodies(msg_type), label="body")
    kind, path, bad = _mutate(data, SPECS[msg_type].schema, body, "")
    with pytest.raises(ProtocolError) as info:
        send_unchecked(msg_type, bad)
    message = str(info.value)
    if kind in ("type", "missing", "extra"):
        assert (
            message.startswith(f"{msg_type.name} body{path}: ")
            or message.startswith(f"{msg_type.name} body{path}.")
            or message.startswith(f"{msg_type.name} body{path}[")
        ), message


@given(st.sampled_from(list(MsgType)), st.data())
@fuzz(2)
def test_byte_mutations_of_valid_messages_raise_only_protocol_or_envelope_errors(msg_type, data):
    body = data.draw(bodies(msg_type), label="body")
    spec = SPECS[msg_type]
    frame = bytearray(codec.pack(body) if spec.sealed else encode_plain(msg_type, body))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, max(0, len(frame) - 1)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip" and frame:
            frame[pos] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=3))
        elif frame:
            del frame[pos]
    try:
        if spec.sealed:
            msg = open_(seal_raw(msg_type, bytes(frame)), msg_type)
        else:
            msg = decode_plain(bytes(frame), spec.channel)
    except ProtocolError:
        return
    # A mutation that still decodes must still be a valid message of its type.
    S.validate(SPECS[msg.type].schema, msg.body, "again")


@given(st.binary(max_size=300))
@fuzz(4)
def test_random_bytes_raise_only_protocol_error(data):
    for channel in Channel:
        with contextlib.suppress(ProtocolError):
            decode_plain(data, channel)
        with contextlib.suppress(ProtocolError):
            decode_plain(b"\x93\x01" + data, channel)


@given(st.binary(max_size=300))
@fuzz(2)
def test_random_envelopes_raise_only_envelope_error(data):
    for frame in (data, crypto.ENVELOPE_MAGIC + data):
        with pytest.raises(EnvelopeError):
            open_(frame, MsgType.JOB)


def _deeply_nested(levels: int) -> bytes:
    return b"\x91" * levels + b"\xc0"  # [[[...[None]...]]]


@pytest.mark.parametrize("levels", [MAX_BODY_DEPTH, 1000, 1_000_000])
@pytest.mark.parametrize("msg_type", [MsgType.RUN, MsgType.RESULT], ids=lambda t: t.name)
def test_deep_nesting_is_refused_before_it_is_built(msg_type, levels):
    # A body whose first field is nested `levels` deep: built as bytes, since
    # msgpack itself cannot even pack such a value.
    body = {"a": None}
    packed_body = codec.pack(body)[:-1] + _deeply_nested(levels)
    plain = codec.pack([PROTOCOL_VERSION, int(msg_type)])
    plain = bytes([plain[0] + 1]) + plain[1:] + packed_body  # a third element: the body
    with pytest.raises(ProtocolError, match=r"deeper|must be sealed|exceeds"):
        decode_plain(plain, SPECS[msg_type].channel)
    if SPECS[msg_type].sealed:
        with pytest.raises(ProtocolError, match=r"deeper|exceeds"):
            open_(seal_raw(msg_type, packed_body), msg_type)


# ---- replay protection ----


def _job_frame(jid: str = JID, now: float = NOW, ttl: int = 60) -> bytes:
    return seal(MsgType.JOB, SAMPLES[MsgType.JOB], jid=jid, now=now, ttl=ttl)


def test_a_replayed_job_is_refused_also_after_a_restart(tmp_path):
    path = str(tmp_path / "seen.db")
    frame = _job_frame()
    with SeenJids(path) as seen:
        msg = open_(frame, MsgType.JOB, seen=seen)
        assert msg.jid == JID
        with pytest.raises(ReplayError) as info:
            open_(frame, MsgType.JOB, seen=seen, now=NOW + 1)
        assert str(info.value) == "envelope rejected"
        assert info.value.header.jid == JID  # the daemon may resend its receipt
    with SeenJids(path) as seen, pytest.raises(ReplayError):
        open_(frame, MsgType.JOB, seen=seen, now=NOW + 2)


def test_a_replay_after_the_entry_is_purged_is_refused_as_expired(tmp_path):
    skew = 30.0
    frame = _job_frame(ttl=60)
    with SeenJids(str(tmp_path / "seen.db")) as seen:
        open_(frame, MsgType.JOB, seen=seen, skew=skew)
        last_moment = NOW + 60 + skew
        with pytest.raises(ReplayError):  # still remembered at the last moment it could open
            open_(frame, MsgType.JOB, seen=seen, skew=skew, now=last_moment)
        assert seen.purge(last_moment + 0.001) == 1
        with pytest.raises(EnvelopeError) as info:
            open_(frame, MsgType.JOB, seen=seen, skew=skew, now=last_moment + 0.001)
        assert not isinstance(info.value, ReplayError)
        assert "expired" in info.value.reason


def test_a_future_dated_job_is_refused(tmp_path):
    frame = _job_frame(now=NOW + 3600)
    with SeenJids(str(tmp_path / "seen.db")) as seen:
        with pytest.raises(EnvelopeError) as info:
            open_(frame, MsgType.JOB, seen=seen)
        assert "future" in info.value.reason
        assert len(seen) == 0


def test_a_forged_or_invalid_envelope_does_not_poison_the_store(tmp_path):
    genuine = _job_frame()
    forged = seal_message_at(
        MsgType.JOB,
        SAMPLES[MsgType.JOB],
        jid=JID,
        sender=MASTER_ID,
        sender_keys=WEB2,
        recipient="web1",
        recipient_keys=WEB1.public,
        now=NOW,
        ttl=60,
    )
    invalid = seal_raw(MsgType.JOB, codec.pack({"module": "files"}))
    with SeenJids(str(tmp_path / "seen.db")) as seen:
        with pytest.raises(EnvelopeError):
            open_(forged, MsgType.JOB, seen=seen)
        with pytest.raises(ProtocolError):
            open_(invalid, MsgType.JOB, seen=seen)
        assert len(seen) == 0
        open_(genuine, MsgType.JOB, seen=seen)


def test_a_job_and_its_receipt_share_a_jid_without_clashing(tmp_path):
    with SeenJids(str(tmp_path / "seen.db")) as seen:
        open_(_job_frame(), MsgType.JOB, seen=seen)
        content = seal(MsgType.CONTENT, {"jid": JID, "blobs": []})
        open_(content, MsgType.CONTENT, seen=seen)


def test_an_accepted_job_is_kept_with_its_jid_until_dropped(tmp_path):
    path = str(tmp_path / "seen.db")
    header = peek_header(_job_frame())
    with SeenJids(path) as seen:
        seen.check_and_add(header, keep_until=NOW + 90, now=NOW, keep=b"the job")
        with pytest.raises(ReplayError):  # a replay keeps nothing
            seen.check_and_add(header, keep_until=NOW + 90, now=NOW, keep=b"another")
    with SeenJids(path) as seen:  # a restart finds both, from one commit
        assert seen.contains(int(MsgType.JOB), JID)
        assert seen.kept() == [JID] and seen.kept_body(JID) == b"the job"
        seen.drop(JID)
        assert seen.kept() == [] and seen.kept_body(JID) is None
        assert seen.contains(int(MsgType.JOB), JID)  # still refused as a replay


def test_a_large_kept_job_leaves_no_room_taken_once_dropped(tmp_path):
    path = str(tmp_path / "seen.db")
    with SeenJids(path) as seen:
        seen.check_and_add(
            peek_header(_job_frame()), keep_until=NOW + 90, now=NOW, keep=bytes(8 << 20)
        )
        seen.drop(JID)
    assert os.path.getsize(path) < 1 << 20  # closed: the log is folded in, the pages given back


def test_is_sealed_tells_envelopes_from_plain_messages():
    assert is_sealed(seal(MsgType.RESULT, _RESULT))
    assert not is_sealed(encode_plain(MsgType.HEARTBEAT, SAMPLES[MsgType.HEARTBEAT]))
    assert not is_sealed(encode_plain(MsgType.RUN, SAMPLES[MsgType.RUN]))


# ---- enrolment ----


def _enrol_request(body: dict[str, Any]) -> Message:
    return decode_plain(encode_plain(MsgType.ENROL_REQUEST, body), Channel.NETWORK)


def _enrol_reply(body: dict[str, Any]) -> Message:
    return decode_plain(encode_plain(MsgType.ENROL_REPLY, body), Channel.NETWORK)


def test_enrolment_request_proves_possession():
    msg = _enrol_request(make_enrol_request("web1", WEB1, nonce=os.urandom(16), now=NOW))
    assert verify_enrol_request(msg, now=NOW + 5) == WEB1.public


@pytest.mark.parametrize(
    "change",
    [
        {"id": "web2"},
        {"nonce": b"m" * 16},
        {"issued_at": NOW + 1},
        {"keys": WEB2.public.to_wire()},  # someone else's keys, signed by web1
    ],
    ids=["id", "nonce", "time", "keys"],
)
def test_a_changed_enrolment_request_fails_its_signature(change):
    body = {**make_enrol_request("web1", WEB1, nonce=b"n" * 16, now=NOW), **change}
    with pytest.raises(EnvelopeError):
        verify_enrol_request(_enrol_request(body), now=NOW)


def test_an_enrolment_request_from_a_wrong_clock_is_refused():
    msg = _enrol_request(make_enrol_request("web1", WEB1, nonce=b"n" * 16, now=NOW - 3600))
    with pytest.raises(ProtocolError, match="check the clocks"):
        verify_enrol_request(msg, now=NOW)
    with pytest.raises(ProtocolError, match="check the clocks"):
        verify_enrol_request(msg, now=math.nan)


def test_an_enrolment_with_an_unusable_key_is_refused():
    from safcm.common import protocol

    body = {
        "id": "web1",
        "keys": {"sign": WEB1.public.sign, "kx": bytes(32), "curve": WEB1.public.curve},
        "nonce": b"n" * 16,
        "issued_at": NOW,
    }
    signed = protocol._sign_enrol(MsgType.ENROL_REQUEST, body, WEB1)
    with pytest.raises(ProtocolError, match="low-order"):
        verify_enrol_request(_enrol_request(signed), now=NOW)


def test_enrolment_reply_is_checked_against_request_and_pin():
    nonce = os.urandom(ENROL_NONCE_LENGTH)
    reply = _enrol_reply(make_enrol_reply("web1", KeyState.ACCEPTED, MASTER, nonce=nonce, now=NOW))
    pin = MASTER.fingerprint().replace(" ", "").lower()
    assert verify_enrol_reply(reply, minion_id="web1", nonce=nonce, pinned=pin) == MASTER.public
    assert verify_enrol_reply(reply, minion_id="web1", nonce=nonce, pinned=None) == MASTER.public
    with pytest.raises(EnvelopeError) as info:
        verify_enrol_reply(reply, minion_id="web1", nonce=nonce, pinned=WEB2.fingerprint())
    assert "possible impersonation" in info.value.reason
    with pytest.raises(EnvelopeError, match="rejected"):
        verify_enrol_reply(reply, minion_id="web2", nonce=nonce, pinned=None)
    with pytest.raises(EnvelopeError):
        verify_enrol_reply(reply, minion_id="web1", nonce=b"x" * 16, pinned=None)


def test_an_impostor_master_cannot_forge_a_reply():
    nonce = b"n" * 16
    impostor = make_enrol_reply("web1", KeyState.ACCEPTED, WEB2, nonce=nonce, now=NOW)
    with pytest.raises(EnvelopeError):
        verify_enrol_reply(
            _enrol_reply(impostor), minion_id="web1", nonce=nonce, pinned=MASTER.fingerprint()
        )
    # The impostor's keys with the real master's signature: the signature fails.
    stolen = {
        **make_enrol_reply("web1", KeyState.ACCEPTED, MASTER, nonce=nonce, now=NOW),
        "keys": WEB2.public.to_wire(),
    }
    with pytest.raises(EnvelopeError):
        verify_enrol_reply(_enrol_reply(stolen), minion_id="web1", nonce=nonce, pinned=None)


def test_a_request_signature_does_not_make_a_reply():
    request = make_enrol_request("web1", WEB1, nonce=b"n" * 16, now=NOW)
    reply = {**request, "state": "accepted"}
    with pytest.raises(EnvelopeError):
        verify_enrol_reply(_enrol_reply(reply), minion_id="web1", nonce=b"n" * 16, pinned=None)
    with pytest.raises(ProtocolError, match="expected ENROL_REQUEST"):
        verify_enrol_request(_enrol_reply(reply), now=NOW)


# ---- control framing ----


@given(
    st.lists(st.binary(max_size=300), max_size=8),
    st.lists(st.integers(1, 50), min_size=1, max_size=20),
)
@fuzz(0.5)
def test_frames_survive_any_chunking(payloads, cuts):
    stream = b"".join(encode_frame(p) for p in payloads)
    reader = FrameReader()
    got = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += reader.feed(stream[pos : pos + step])
        pos += step
        i += 1
    reader.eof()
    assert got == payloads


def test_an_oversized_frame_is_refused_from_its_length_alone():
    reader = FrameReader(max_bytes=1000)
    assert reader.feed(b"\x00\x00") == []
    with pytest.raises(ProtocolError, match="frame of 1001 bytes exceeds 1000"):
        reader.feed(b"\x03\xe9")
    with pytest.raises(ProtocolError, match="exceeds"):
        encode_frame(b"x" * 1001, max_bytes=1000)


def test_a_stream_ending_inside_a_frame_is_an_error():
    reader = FrameReader()
    assert reader.feed(encode_frame(b"hello")[:-1]) == []
    assert reader.pending == 8
    with pytest.raises(ProtocolError, match="ended inside a frame"):
        reader.eof()
    reader = FrameReader()
    reader.feed(b"\x00")
    with pytest.raises(ProtocolError):
        reader.eof()


def test_a_control_round_trip_over_frames():
    reader = FrameReader()
    frames = reader.feed(encode_frame(encode_plain(MsgType.KEYS, SAMPLES[MsgType.KEYS])))
    assert decode_plain(frames[0], Channel.CONTROL).body == SAMPLES[MsgType.KEYS]


# ---- dispatch ----


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None]] = []

    def handler(self, name: str):
        def handle(msg: Message) -> str:
            self.events.append((name, msg.sender))
            return name

        return handle


def _master_dispatcher(rec: Recorder) -> Dispatcher:
    return Dispatcher(
        Channel.NETWORK,
        {
            MsgType.ENROL_REQUEST: rec.handler("enrol"),
            MsgType.HEARTBEAT: rec.handler("heartbeat"),
            MsgType.JOB_RECEIPT: rec.handler("receipt"),
            MsgType.RESULT: rec.handler("result"),
        },
    )


def test_dispatch_routes_by_the_explicit_table():
    rec = Recorder()
    d = _master_dispatcher(rec)
    assert d.dispatch(send(MsgType.ENROL_REQUEST, SAMPLES[MsgType.ENROL_REQUEST])) == "enrol"
    assert d.dispatch(send(MsgType.RESULT, _RESULT)) == "result"
    assert d.dispatch(send(MsgType.HEARTBEAT, SAMPLES[MsgType.HEARTBEAT])) == "heartbeat"
    assert rec.events == [("enrol", None), ("result", "web1"), ("heartbeat", "web1")]


@pytest.mark.parametrize("msg_type", SEALED, ids=lambda t: t.name)
def test_an_unauthenticated_peer_reaches_no_sealed_type(msg_type):
    rec = Recorder()
    everything = {t: rec.handler(t.name) for t in MsgType if SPECS[t].channel is Channel.NETWORK}
    d = Dispatcher(Channel.NETWORK, everything)
    forged = Message(msg_type, SAMPLES[msg_type])  # no header: not from an opened envelope
    with pytest.raises(ProtocolError, match="unauthenticated peer is refused"):
        d.dispatch(forged)
    assert rec.events == []


@pytest.mark.parametrize("msg_type", CURVE, ids=lambda t: t.name)
def test_a_curve_type_is_reached_only_with_the_peer_its_connection_proved(msg_type):
    rec = Recorder()
    everything = {t: rec.handler(t.name) for t in MsgType if SPECS[t].channel is Channel.NETWORK}
    d = Dispatcher(Channel.NETWORK, everything)
    frame = encode_plain(msg_type, SAMPLES[msg_type])
    with pytest.raises(ProtocolError, match="from a connection that proved no key is refused"):
        d.dispatch(decode_plain(frame, Channel.NETWORK))
    assert rec.events == []
    with pytest.raises(ProtocolError, match="proved no key"):
        Message(msg_type, SAMPLES[msg_type]).require_peer()
    # The sender is the connection's: nothing in the body can name another.
    assert d.dispatch(decode_plain(frame, Channel.NETWORK, peer="web2")) == msg_type.name
    assert rec.events == [(msg_type.name, "web2")]


def test_types_without_a_handler_are_not_reachable():
    rec = Recorder()
    d = _master_dispatcher(rec)
    job = send(MsgType.JOB, SAMPLES[MsgType.JOB])  # authenticated, but masters take no jobs
    with pytest.raises(ProtocolError, match="JOB is not accepted here"):
        d.dispatch(job)
    with pytest.raises(ProtocolError, match="not accepted here"):
        d.dispatch(send(MsgType.RUN, SAMPLES[MsgType.RUN]))
    assert rec.events == []


def test_plain_types_must_not_come_sealed_to_the_dispatcher():
    rec = Recorder()
    d = _master_dispatcher(rec)
    header = crypto.Header(1, int(MsgType.ENROL_REQUEST), JID, "web1", MASTER_ID, 0, 60)
    with pytest.raises(ProtocolError, match="must come plain"):
        d.dispatch(Message(MsgType.ENROL_REQUEST, SAMPLES[MsgType.ENROL_REQUEST], header=header))


def test_a_control_handler_cannot_be_put_on_the_network():
    with pytest.raises(ValueError, match="RUN is not a network message"):
        Dispatcher(Channel.NETWORK, {MsgType.RUN: lambda m: None})
    with pytest.raises(ValueError, match="JOB is not a control message"):
        Dispatcher(Channel.CONTROL, {MsgType.JOB: lambda m: None})


def test_control_dispatch():
    rec = Recorder()
    d = Dispatcher(
        Channel.CONTROL, {MsgType.RUN: rec.handler("run"), MsgType.KEYS: rec.handler("keys")}
    )
    assert d.dispatch(send(MsgType.KEYS, SAMPLES[MsgType.KEYS])) == "keys"
    with pytest.raises(ProtocolError):
        d.dispatch(send(MsgType.ENROL_REQUEST, SAMPLES[MsgType.ENROL_REQUEST]))
    assert rec.events == [("keys", None)]


def test_lookup_sees_the_unverified_sender_once_before_anything_is_trusted():
    seen_ids: list[str] = []

    def lookup(sender: str) -> PublicKeys | None:
        seen_ids.append(sender)
        return MINION_LOOKUP(sender)

    frame = seal(MsgType.RESULT, _RESULT)
    msg = open_(frame, MsgType.RESULT, sender_keys=lookup)
    assert seen_ids == ["web1"]
    assert msg.sender == "web1"


def test_a_heartbeat_declaring_a_long_interval_is_refused():
    # A dead minion must not look alive for hours: the master counts three
    # intervals, and the interval a minion declares is capped.
    body = {**SAMPLES[MsgType.HEARTBEAT], "interval": 3600.0}
    with pytest.raises(ProtocolError, match=r"HEARTBEAT body\.interval"):
        send(MsgType.HEARTBEAT, body)


def test_a_body_packed_once_seals_like_the_message():
    job = SAMPLES[MsgType.JOB]
    packed = pack_body(MsgType.JOB, job)
    frame = seal_packed_at(MsgType.JOB, packed, jid=JID, now=NOW, ttl=60, **_ends(MsgType.JOB))
    assert open_(frame, MsgType.JOB).body == job
    with pytest.raises(ProtocolError, match="does not match its digest"):
        pack_body(MsgType.JOB, _job_with(data=b"other"))  # checked as sealing checks
    # A body naming its jid cannot be checked without one: never sealed so.
    receipt = pack_body(MsgType.RESULT_RECEIPT, {"jid": JID})
    with pytest.raises(ProtocolError, match="cannot be sealed from a packed body"):
        seal_packed_at(
            MsgType.RESULT_RECEIPT, receipt, jid=JID, now=NOW, ttl=60, **_ends(MsgType.JOB)
        )


# ---- heartbeat_body(): the master's cheaper read of a heartbeat ----

_HEARTBEAT_SCHEMA = SPECS[MsgType.HEARTBEAT].schema
assert isinstance(_HEARTBEAT_SCHEMA, S.Map)
# How every minion's heartbeat begins: [version, type, ...] as fixints.
_HEARTBEAT_HEAD = bytes([0x93, PROTOCOL_VERSION, MsgType.HEARTBEAT])
# Any value msgpack carries, kept small: what a field of a forged heartbeat holds.
_any_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=12,
)
# Bodies near a heartbeat's: each field valid, forged or missing, and maybe more keys.
_near_heartbeat_bodies = st.builds(
    lambda fields, extra: {**extra, **fields},
    st.fixed_dictionaries(
        {},
        optional={k: strategy_for(v) | _any_value for k, v in _HEARTBEAT_SCHEMA.fields.items()},
    ),
    st.dictionaries(
        st.sampled_from(sorted(_HEARTBEAT_SCHEMA.fields)) | st.text(max_size=8),
        _any_value,
        max_size=2,
    ),
)
_valid_heartbeats = strategy_for(_HEARTBEAT_SCHEMA).map(
    lambda body: encode_plain(MsgType.HEARTBEAT, body)
)


@st.composite
def _edited(draw: st.DrawFn, frames: st.SearchStrategy[bytes]) -> bytes:
    """A frame with one byte changed, cut short or followed by more bytes."""
    frame = draw(frames)
    at = draw(st.integers(0, len(frame) - 1))
    edit = draw(st.sampled_from(["byte", "cut", "more"]))
    if edit == "byte":
        return frame[:at] + bytes([draw(st.integers(0, 255))]) + frame[at + 1 :]
    if edit == "cut":
        return frame[:at]
    return frame + draw(st.binary(min_size=1, max_size=8))


_near_heartbeat_frames = st.one_of(
    _valid_heartbeats,
    st.builds(
        lambda version, msg_type, body: codec.pack([version, msg_type, body]),
        st.just(PROTOCOL_VERSION) | st.integers(-1, 300),
        st.just(int(MsgType.HEARTBEAT)) | st.sampled_from([int(t) for t in MsgType]),
        _near_heartbeat_bodies,
    ),
    _edited(_valid_heartbeats),
    st.binary(max_size=80).map(lambda rest: _HEARTBEAT_HEAD + rest),
)


def _decoded_heartbeat(frame: bytes) -> dict[str, Any] | None:
    """What decode_plain() makes of `frame`: a heartbeat's body, or None."""
    try:
        msg = decode_plain(frame, Channel.NETWORK, peer="web1")
    except ProtocolError:
        return None
    return msg.body if msg.type is MsgType.HEARTBEAT else None


@given(_near_heartbeat_frames)
@fuzz(2)
def test_heartbeat_body_takes_exactly_the_heartbeats_decode_plain_takes(frame):
    fast = heartbeat_body(frame)
    slow = _decoded_heartbeat(frame)
    if fast is not None:
        assert fast == slow  # never a frame decode_plain refuses, never another body
    if frame.startswith(_HEARTBEAT_HEAD):
        assert (fast is None) == (slow is None)  # and every heartbeat a minion packs


def test_every_heartbeat_a_minion_packs_is_taken():
    body = SAMPLES[MsgType.HEARTBEAT]
    assert heartbeat_body(encode_plain(MsgType.HEARTBEAT, body)) == body
    assert heartbeat_body(encode_plain(MsgType.HEARTBEAT, {**body, "busy": None})) is not None


def test_heartbeat_body_refuses_an_oversized_frame_before_unpacking_it(monkeypatch):
    oversized = _HEARTBEAT_HEAD + codec.pack({"version": "x" * MAX_SMALL_BYTES})
    monkeypatch.setattr(codec, "unpack_flat", lambda *a, **k: pytest.fail("unpacked"))
    assert heartbeat_body(oversized) is None


def test_a_stored_result_goes_to_the_cli_as_encode_plain_would_send_it():
    for result in (_RESULT, None):
        status = "no response" if result is None else result["status"]
        body = {"jid": JID, "host": "web1", "status": status, "result": result}
        assert encode_host_result(JID, "web1", result) == encode_plain(
            MsgType.RUN_HOST_RESULT, body
        )
    # What is around the result is still checked; the result was when it came.
    with pytest.raises(ProtocolError, match=r"RUN_HOST_RESULT body\.host"):
        encode_host_result(JID, "Web 1", _RESULT)
    with pytest.raises(ProtocolError, match=r"RUN_HOST_RESULT body\.jid"):
        encode_host_result("yesterday", "web1", _RESULT)


@given(bodies(MsgType.RESULT))
def test_a_result_read_back_packed_goes_to_the_cli_as_the_unpacked_one_would(result):
    # A CLI behind is sent results read back from the store (master/runs.py):
    # the same bytes as encode_host_result(), without unpacking them.
    packed = codec.pack(result)
    assert encode_stored_host_result(JID, "web1", packed) == encode_host_result(JID, "web1", result)


def test_a_packed_result_that_is_not_one_is_refused():
    with pytest.raises(ProtocolError, match="has no status"):
        encode_stored_host_result(JID, "web1", codec.pack({"module": "ping"}))
    for junk in (codec.pack(["status", "ok"]), b"\x81\xa6status", b""):
        with pytest.raises(ProtocolError, match="not a msgpack map"):
            encode_stored_host_result(JID, "web1", junk)
    with pytest.raises(ProtocolError, match=r"RUN_HOST_RESULT body\.status"):
        encode_stored_host_result(JID, "web1", codec.pack({"status": 7}))
    # A map that holds "status" twice unpacks to its last: so does the message's.
    twice = b"\x82" + codec.pack("status") + codec.pack("ok") + codec.pack("status")
    twice += codec.pack("failed")
    message = codec.unpack_unscanned(encode_stored_host_result(JID, "web1", twice))
    assert message[2]["status"] == message[2]["result"]["status"] == "failed"
