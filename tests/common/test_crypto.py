"""Keys, fingerprints, plain signatures and sealed envelopes."""

import copy
import math
import pickle
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from safcm.common import crypto
from safcm.common.crypto import (
    DEFAULT_CLOCK_SKEW,
    ENVELOPE_MAGIC,
    MAX_ENVELOPE_TTL,
    SIGNATURE_LENGTH,
    Header,
    KeyPair,
    PublicKeys,
    Secret,
    fingerprint_problem,
    fingerprints_match,
    open_at,
    parse_fingerprint,
    seal_at,
    sign_plain,
    verify_plain,
)
from safcm.common.errors import ConfigError, EnvelopeError, ProtocolError
from safcm.common.ids import MASTER_ID
from tests.common.strategies import fuzz

NOW = 1_800_000_000.25
JID = "20270115T080000.000000Z"
MASTER = KeyPair.generate()
MINION = KeyPair.generate()
OTHER = KeyPair.generate()


def seal(plaintext=b"job body", **kw):
    args = dict(
        version=1,
        msg_type=5,
        jid=JID,
        sender=MASTER_ID,
        recipient="web1",
        sender_keys=MASTER,
        recipient_keys=MINION.public,
        now=NOW,
        ttl=60,
    )
    args.update(kw)
    return seal_at(plaintext, **args)


def open_(frame, **kw):
    args = dict(me="web1", my_keys=MINION, sender_keys={MASTER_ID: MASTER.public}.get, now=NOW)
    args.update(kw)
    return open_at(frame, **args)


ENVELOPE = seal()


# ---- keys and secrets ----


def test_secret_hides_its_bytes():
    raw = bytes(range(32))
    s = Secret(raw)
    for shown in (repr(s), str(s), f"{s}", f"{s!r}", repr([s]), repr({"k": s})):
        assert raw.hex() not in shown
        assert str(raw) not in shown
        assert "hidden" in shown
    assert s.reveal() == raw
    assert s == Secret(raw)
    assert s != Secret(bytes(32))
    with pytest.raises(TypeError):
        hash(s)
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        Secret("not bytes")  # type: ignore[arg-type]


def test_key_pair_repr_shows_only_the_public_fingerprint():
    secrets = MASTER.private_secrets()
    for shown in (repr(MASTER), str(MASTER), repr([MASTER]), repr(MASTER.public)):
        for secret in (*(s.reveal() for s in secrets), MASTER.curve_secret().reveal()):
            assert secret.hex() not in shown
            assert secret.hex()[:16] not in shown
        assert MASTER.fingerprint() in shown
    with pytest.raises(TypeError):
        pickle.dumps(MASTER)
    with pytest.raises(TypeError):
        copy.copy(MASTER)
    assert not hasattr(MASTER, "__dict__")


def test_key_pair_rebuilds_from_its_secrets():
    again = KeyPair.from_secrets(*MINION.private_secrets())
    assert again.public == MINION.public
    assert again.fingerprint() == MINION.fingerprint()


def test_generated_pairs_differ():
    assert KeyPair.generate().public != KeyPair.generate().public
    assert crypto.generate().public != MASTER.public


def test_public_keys_check_their_length():
    with pytest.raises(ProtocolError, match="32 bytes"):
        PublicKeys(b"x" * 31, b"y" * 32, b"z" * 32)
    with pytest.raises(ProtocolError, match="32 bytes"):
        PublicKeys(b"x" * 32, "y" * 32, b"z" * 32)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="32 bytes"):
        PublicKeys(b"x" * 32, b"y" * 32, b"z" * 33)
    assert PublicKeys.from_wire(MASTER.public.to_wire()) == MASTER.public


def test_low_order_x25519_key_is_unusable():
    with pytest.raises(ProtocolError, match="low-order"):
        PublicKeys(MASTER.public.sign, bytes(32), MASTER.public.curve).check_usable()
    with pytest.raises(ProtocolError, match="low-order"):
        PublicKeys(MASTER.public.sign, MASTER.public.kx, bytes(32)).check_usable()
    MASTER.public.check_usable()
    with pytest.raises(ProtocolError, match="low-order"):
        seal(recipient_keys=PublicKeys(MINION.public.sign, bytes(32), MINION.public.curve))


# ---- fingerprints ----


def test_fingerprint_form():
    fp = MASTER.fingerprint()
    assert fp.startswith("SHA256:")
    groups = fp.removeprefix("SHA256:").split(" ")
    assert len(groups) == 13
    assert all(len(g) == 4 for g in groups)
    assert set("".join(groups)) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert len(fp) <= 72  # fits an 80-column terminal with a label in front


def test_fingerprint_covers_all_three_keys():
    m, n = MASTER.public, MINION.public
    assert PublicKeys(m.sign, n.kx, m.curve).fingerprint() != MASTER.fingerprint()
    assert PublicKeys(n.sign, m.kx, m.curve).fingerprint() != MASTER.fingerprint()
    # Pinning the fingerprint pins the CURVE transport key too.
    assert PublicKeys(m.sign, m.kx, n.curve).fingerprint() != MASTER.fingerprint()


def _pasted_forms(fp):
    body = fp.removeprefix("SHA256:")
    return [
        fp,
        fp.upper(),
        "  " + fp + "\n",
        body,
        body.replace(" ", ""),
        body.replace(" ", "-"),
        "sha256:" + body.replace(" ", "").upper(),
        "SHA256: " + body.replace(" ", "  "),
        ":".join(body.split(" ")),
    ]


@pytest.mark.parametrize("form", range(9))
def test_fingerprint_parses_however_it_was_pasted(form):
    fp = MASTER.fingerprint()
    pasted = _pasted_forms(fp)[form]
    assert fingerprint_problem(pasted) is None
    assert parse_fingerprint(pasted) == fp
    assert fingerprints_match(pasted, fp)
    assert MASTER.public.matches(pasted)
    assert not MINION.public.matches(pasted)


BAD_FINGERPRINTS = [
    "",
    "SHA256:",
    "MD5:abcd",
    "SHA256:" + "a" * 51,
    "SHA256:" + "a" * 53,
    "SHA256:" + "a" * 51 + "1",  # 1 is not base32
    "SHA256:" + "a" * 51 + "b",  # the last 4 bits of 260 must be zero
    "sha256:" + "0" * 52,
]


@pytest.mark.parametrize("text", BAD_FINGERPRINTS)
def test_bad_fingerprints_are_refused_with_the_value_named(text):
    assert fingerprint_problem(text) is not None
    with pytest.raises(ConfigError, match="is not valid") as info:
        parse_fingerprint(text)
    assert repr(text[:80]) in str(info.value)


def test_fingerprint_must_be_a_string():
    assert "must be a string" in fingerprint_problem(None)


# ---- plain signatures ----


def test_plain_signature_round_trip_and_refusals():
    sig = sign_plain(MINION, "enrol request", b"data")
    verify_plain(MINION.public, "enrol request", b"data", sig)
    with pytest.raises(EnvelopeError):
        verify_plain(MINION.public, "enrol request", b"datA", sig)
    with pytest.raises(EnvelopeError):
        verify_plain(MINION.public, "enrol reply", b"data", sig)  # another purpose
    with pytest.raises(EnvelopeError):
        verify_plain(OTHER.public, "enrol request", b"data", sig)
    with pytest.raises(EnvelopeError):
        verify_plain(MINION.public, "enrol request", b"data", sig[:-1])
    with pytest.raises(ValueError, match="short lowercase label"):
        sign_plain(MINION, "Enrol\0", b"data")


def test_an_envelope_signature_is_not_a_plain_signature():
    # The envelope's signature covers everything before it, under another label.
    signed, sig = ENVELOPE[:-SIGNATURE_LENGTH], ENVELOPE[-SIGNATURE_LENGTH:]
    with pytest.raises(EnvelopeError):
        verify_plain(MASTER.public, "enrol reply", signed, sig)


# ---- envelopes ----


def test_round_trip():
    opened = open_(ENVELOPE)
    assert opened.plaintext == b"job body"
    assert opened.header == Header(1, 5, JID, MASTER_ID, "web1", 1_800_000_000, 1_800_000_060)


def test_large_and_empty_plaintexts_round_trip():
    big = bytes(range(256)) * 4096
    assert open_(seal(big)).plaintext == big
    assert open_(seal(b"")).plaintext == b""


def test_the_plaintext_is_not_in_the_envelope():
    secret = b"root password hunter2"
    assert secret not in seal(secret)


def test_every_envelope_has_a_fresh_ephemeral_key_and_nonce():
    a, b = seal(), seal()
    head = len(Header(1, 5, JID, MASTER_ID, "web1", 0, 0).encode())
    assert a[:head] == b[:head]  # the same header
    assert a[head : head + 32] != b[head : head + 32]  # ephemeral public key
    assert a[head + 32 : head + 44] != b[head + 32 : head + 44]  # nonce
    assert a != b


def test_the_core_is_deterministic_given_its_randomness():
    header = Header(1, 5, JID, MASTER_ID, "web1", 10, 70)
    eph = X25519PrivateKey.generate()
    one = crypto._seal(header, b"x", MASTER, MINION.public, eph, b"\x01" * 12)
    two = crypto._seal(header, b"x", MASTER, MINION.public, eph, b"\x01" * 12)
    three = crypto._seal(header, b"x", MASTER, MINION.public, eph, b"\x02" * 12)
    assert one == two
    assert one != three


def test_layout_matches_the_documented_frame():
    h = ENVELOPE
    assert h[:4] == ENVELOPE_MAGIC
    assert struct.unpack(">HH", h[4:8]) == (1, 5)
    assert h[8] == len(JID) and h[9 : 9 + len(JID)] == JID.encode()
    pos = 9 + len(JID)
    assert h[pos] == len(MASTER_ID) and h[pos + 1 : pos + 1 + len(MASTER_ID)] == b"@master"
    pos += 1 + len(MASTER_ID)
    assert h[pos] == 4 and h[pos + 1 : pos + 5] == b"web1"
    pos += 5
    assert struct.unpack(">QQ", h[pos : pos + 16]) == (1_800_000_000, 1_800_000_060)
    pos += 16
    # ephemeral key, nonce, ciphertext with tag, signature
    assert len(h) == pos + 32 + 12 + len(b"job body") + 16 + 64


def _refused(frame, **kw):
    with pytest.raises(EnvelopeError) as info:
        open_(frame, **kw)
    assert str(info.value) == "envelope rejected"  # opaque, whatever the reason
    return info.value.reason


def test_every_single_byte_flip_is_refused():
    # Exhaustive over every position: header, ephemeral key, nonce, ciphertext, signature.
    for pos in range(len(ENVELOPE)):
        for mask in (0x01, 0x80, 0xFF):
            mutated = bytearray(ENVELOPE)
            mutated[pos] ^= mask
            _refused(bytes(mutated))


@given(st.data())
@fuzz(3)
def test_any_byte_change_is_refused(data):
    frame = bytearray(ENVELOPE)
    pos = data.draw(st.integers(0, len(frame) - 1), label="position")
    frame[pos] ^= data.draw(st.integers(1, 255), label="xor")
    _refused(bytes(frame))


@given(st.data())
@fuzz()
def test_truncated_extended_or_spliced_envelopes_are_refused(data):
    frame = ENVELOPE
    action = data.draw(st.sampled_from(["truncate", "extend", "splice"]))
    if action == "truncate":
        frame = frame[: data.draw(st.integers(0, len(frame) - 1))]
    elif action == "extend":
        frame = frame + data.draw(st.binary(min_size=1, max_size=16))
    else:
        pos = data.draw(st.integers(0, len(frame)))
        frame = frame[:pos] + data.draw(st.binary(min_size=1, max_size=8)) + frame[pos:]
    _refused(frame)


@given(st.binary(max_size=400))
@fuzz(2)
def test_random_bytes_are_refused(data):
    _refused(data)
    _refused(ENVELOPE_MAGIC + data)


def test_signature_is_checked_before_anything_else():
    # An envelope for someone else, long expired, with a broken ciphertext, and
    # a bad signature: the reason is the signature.
    frame = bytearray(seal(recipient="db1", now=NOW - 10 * MAX_ENVELOPE_TTL))
    frame[-SIGNATURE_LENGTH - 1] ^= 1
    frame[-1] ^= 1
    assert "signature" in _refused(bytes(frame))


def test_unknown_sender_is_refused():
    assert "unknown sender" in _refused(ENVELOPE, sender_keys={}.get)


def test_wrong_sender_key_is_refused():
    # The id is the master's, but the signature is another key's (impersonation).
    forged = seal(sender_keys=OTHER)
    assert "signature" in _refused(forged)


def test_a_minion_cannot_pose_as_another_minion():
    keys = {"web1": MINION.public, "web2": OTHER.public}.get
    forged = seal(
        sender="web2", sender_keys=MINION, recipient=MASTER_ID, recipient_keys=MASTER.public
    )
    with pytest.raises(EnvelopeError, match="rejected") as info:
        open_(forged, me=MASTER_ID, my_keys=MASTER, sender_keys=keys)
    assert "signature" in info.value.reason


def test_wrong_recipient_is_refused():
    to_db1 = seal(recipient="db1")
    assert "addressed to 'db1'" in _refused(to_db1)


def test_right_name_wrong_key_fails_the_aead():
    # Addressed to web1, but sealed to another key: only web1's key may open it.
    frame = seal(recipient_keys=OTHER.public)
    assert "AEAD" in _refused(frame)


@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        (-DEFAULT_CLOCK_SKEW - 1, False),  # issued beyond the skew in the future
        (-DEFAULT_CLOCK_SKEW, True),
        (0, True),
        (60 + DEFAULT_CLOCK_SKEW, True),  # expired, but within the skew
        (60 + DEFAULT_CLOCK_SKEW + 0.001, False),  # expired beyond the skew
    ],
)
def test_time_window(offset, ok):
    # issued-at is the sealing time rounded down to the second; ttl counts from there.
    frame = seal(now=NOW)
    issued = open_(frame).header.issued_at
    assert issued == int(NOW)
    if ok:
        open_(frame, now=issued + offset)
    else:
        reason = _refused(frame, now=issued + offset)
        assert ("future" in reason) if offset < 0 else ("expired" in reason)


def test_skew_is_configurable():
    frame = seal(now=NOW)
    _refused(frame, now=NOW + 70, skew=5)
    open_(frame, now=NOW + 70, skew=15)
    _refused(frame, now=NOW - 10, skew=5)
    open_(frame, now=NOW - 10, skew=15)


@pytest.mark.parametrize(
    ("now", "skew"),
    [(math.nan, 60.0), (math.inf, 60.0), (NOW, math.nan), (NOW, math.inf), (NOW, -1.0)],
)
def test_a_clock_that_is_not_a_number_fails_closed(now, skew):
    assert "time window" in _refused(ENVELOPE, now=now, skew=skew)


def test_lifetime_beyond_the_maximum_is_refused_even_if_signed():
    header = Header(1, 5, JID, MASTER_ID, "web1", int(NOW), int(NOW) + MAX_ENVELOPE_TTL + 1)
    frame = crypto._seal(
        header, b"x", MASTER, MINION.public, X25519PrivateKey.generate(), b"\0" * 12
    )
    assert "lifetime" in _refused(frame)
    backwards = Header(1, 5, JID, MASTER_ID, "web1", int(NOW), int(NOW) - 1)
    frame = crypto._seal(
        backwards, b"x", MASTER, MINION.public, X25519PrivateKey.generate(), b"\0" * 12
    )
    assert "lifetime" in _refused(frame)


def test_a_low_order_ephemeral_key_is_refused():
    # A signed envelope whose ephemeral key is the all-zero point.
    frame = bytearray(ENVELOPE)
    head = len(Header(1, 5, JID, MASTER_ID, "web1", 0, 0).encode())
    frame[head : head + 32] = bytes(32)
    body = bytes(frame[:-SIGNATURE_LENGTH])
    frame = body + MASTER._sign.sign(crypto._ENVELOPE_SIG_LABEL + body)
    assert "low-order" in _refused(frame)


def test_oversized_envelope_is_refused_before_parsing():
    assert "larger than" in _refused(ENVELOPE, max_bytes=len(ENVELOPE) - 1)


def test_a_claimed_envelope_is_verified_as_its_frame_is():
    # A receiver that looked at the claimed header first hands verify_at()
    # the claim, not the frame: parsed once, checked the same.
    claimed = crypto.claim(ENVELOPE)
    assert claimed.header == crypto.peek_header(ENVELOPE)
    assert open_(claimed).plaintext == b"job body"
    # The size limit still holds for a claim made with a larger one.
    assert "larger than" in _refused(claimed, max_bytes=len(ENVELOPE) - 1)
    # A claim of a changed frame is refused as that frame is.
    mutated = bytearray(ENVELOPE)
    mutated[-1] ^= 0x01
    assert "bad signature" in _refused(crypto.claim(bytes(mutated)))
    with pytest.raises(EnvelopeError):
        crypto.claim(ENVELOPE[:20])


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        (dict(ttl=0), "ttl"),
        (dict(ttl=MAX_ENVELOPE_TTL + 1), "ttl"),
        (dict(ttl=1.5), "ttl"),
        (dict(now=float("nan")), "issue time"),
        (dict(now=-1.0), "issue time"),
        (dict(jid="../../x"), "jid"),
        (dict(sender="Web1"), "sender"),
        (dict(recipient="web1/.."), "recipient"),
        (dict(version=70000), "version"),
        (dict(msg_type=-1), "msg_type"),
    ],
)
def test_seal_refuses_a_bad_header(kw, reason):
    with pytest.raises(ProtocolError, match=reason):
        seal(**kw)
