"""Keys, fingerprints, plain signatures and sealed envelopes.

Pure: no file or socket I/O here (key files are common/keyfile.py), and time
and randomness come in as arguments to the `*_at` cores. Only primitives of
the `cryptography` package are used, composed the usual way (ECIES-style:
ephemeral X25519, HKDF-SHA256, an AEAD), plus an Ed25519 signature by the
sender; there is no home-made primitive.

Envelope, frame by frame (one ZeroMQ frame; all integers big-endian):

    offset  size  field
    0       4     ENVELOPE_MAGIC b"SFE1" (format 1 of this layout)
    4       2     protocol version
    6       2     message type
    8       1+n   jid, one length byte then ASCII
    .       1+n   sender id
    .       1+n   recipient id
    .       8     issued-at, whole seconds since the epoch
    .       8     expires-at, whole seconds since the epoch
    ---- the bytes above are the header: the AEAD's associated data ----
    .       32    ephemeral X25519 public key, fresh for every envelope
    .       12    random nonce
    .       n+16  ChaCha20-Poly1305 ciphertext and tag
    end-64  64    Ed25519 signature by the sender over everything before it

The AEAD key is HKDF-SHA256(X25519(ephemeral, recipient), salt = ephemeral
public || recipient public, info = purpose label || header). Opening checks,
in this order, and stops at the first failure: size and layout of the outer
frame, the sender's signature (with the key the caller looks up by the
still unverified sender id), the recipient, the time window, and only then
the AEAD. Every failure raises EnvelopeError, whose str() says nothing; its
`.reason` is for the local log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from safcm.common.errors import ConfigError, EnvelopeError, ProtocolError
from safcm.common.ids import jid_problem, peer_id_problem

# Longest an envelope may live, in seconds: defined with the job timeout it
# bounds, in the light base of the wire that the CLI checks timeouts with.
from safcm.common.lightwire import MAX_ENVELOPE_TTL as MAX_ENVELOPE_TTL

# Raw sizes, in bytes, of Ed25519 and X25519 keys and of an Ed25519 signature.
KEY_LENGTH = 32
SIGNATURE_LENGTH = 64

# Labels separate the purposes of one key: a signature or derived key made
# for one purpose can never be taken for another.
_FINGERPRINT_LABEL = b"safcm public keys v1\0"
_ENVELOPE_SIG_LABEL = b"safcm envelope signature v1\0"
_ENVELOPE_KDF_LABEL = b"safcm envelope key v1\0"
_PLAIN_SIG_LABEL = b"safcm plain signature v1\0"

ENVELOPE_MAGIC = b"SFE1"
_EPHEMERAL_LENGTH = 32
_NONCE_LENGTH = 12  # ChaCha20-Poly1305's nonce
_TAG_LENGTH = 16  # Poly1305's tag
_U16_MAX = 0xFFFF
_U64_MAX = 2**64 - 1

# Largest envelope open_at() looks at, in bytes: the largest job
# (common/protocol.py MAX_JOB_BYTES, 64 MiB) plus room for the header, key,
# nonce, tag and signature. The sockets use the same limit.
MAX_ENVELOPE_BYTES = 64 * 1024 * 1024 + 64 * 1024
# How far, in seconds, the clocks of master and minion may disagree: an
# envelope issued up to this far in the future, or expired up to this long
# ago, is still accepted. NTP keeps hosts within milliseconds; a minute
# tolerates a host whose NTP has not converged yet after boot.
DEFAULT_CLOCK_SKEW = 60.0

# Fingerprints: "SHA256:" and the digest in lowercase base32 (RFC 4648, no
# padding), in groups of four so that two can be compared by eye.
FINGERPRINT_PREFIX = "SHA256:"
_FINGERPRINT_CHARS = 52  # ceil(256 bits / 5 bits per base32 character)
_FINGERPRINT_GROUP = 4
_FINGERPRINT_SEPARATORS = re.compile(r"[\s:-]+")
_BASE32_RE = re.compile(f"[a-z2-7]{{{_FINGERPRINT_CHARS}}}")
_CONTEXT_RE = re.compile(r"[a-z0-9][a-z0-9 ._-]{0,63}")


class Secret:
    """Private bytes that stay out of repr(), str(), logs and pickles.

    The bytes are reachable only through reveal(), so that every place that
    handles them is visible in the code.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("a Secret holds bytes")
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    __hash__ = None  # type: ignore[assignment]  # equal by content, but not a dict key

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")


def _format_fingerprint(digest: bytes) -> str:
    return _grouped(base64.b32encode(digest).decode("ascii").rstrip("=").lower())


def _fingerprint_body(text: str) -> str:
    """The base32 part of a pasted fingerprint: prefix, spacing and case removed."""
    body = text.strip()
    if body[: len(FINGERPRINT_PREFIX)].upper() == FINGERPRINT_PREFIX.upper():
        body = body[len(FINGERPRINT_PREFIX) :]
    return _FINGERPRINT_SEPARATORS.sub("", body).lower()


def fingerprint_problem(text: object) -> str | None:
    """Why `text` is not a fingerprint, or None. Spacing, '-', ':' and case do not matter."""
    if not isinstance(text, str):
        return f"a fingerprint must be a string, not {type(text).__name__}"
    body = _fingerprint_body(text)
    if _BASE32_RE.fullmatch(body) is None or (
        # 52 characters carry 260 bits; the last 4 must be zero in a SHA-256 digest.
        _format_fingerprint(base64.b32decode(body.upper() + "====")) != _grouped(body)
    ):
        return (
            f"fingerprint {text[:80]!r} is not valid: expected {FINGERPRINT_PREFIX} and "
            f"{_FINGERPRINT_CHARS} base32 characters (a-z, 2-7), as printed by "
            "'safcm-master keys fingerprint' or 'safcm-minion fingerprint'"
        )
    return None


def _grouped(body: str) -> str:
    groups = [body[i : i + _FINGERPRINT_GROUP] for i in range(0, len(body), _FINGERPRINT_GROUP)]
    return FINGERPRINT_PREFIX + " ".join(groups)


def parse_fingerprint(text: str) -> str:
    """The canonical form of a fingerprint an administrator pasted.

    Raises ConfigError naming the value if it is not a fingerprint.
    """
    problem = fingerprint_problem(text)
    if problem is not None:
        raise ConfigError(problem)
    return _grouped(_fingerprint_body(text))


def fingerprints_match(a: str, b: str) -> bool:
    """True if two fingerprints name the same keys, however each was spaced or cased.

    Raises ConfigError if either is not a fingerprint at all.
    """
    return hmac.compare_digest(parse_fingerprint(a).encode(), parse_fingerprint(b).encode())


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """The public half of a KeyPair: what a peer needs to verify us and seal to us."""

    sign: bytes  # Ed25519 public key, raw
    kx: bytes  # X25519 public key, raw: sealed envelopes
    curve: bytes  # X25519 public key, raw: the CurveZMQ transport (one purpose each)

    def __post_init__(self) -> None:
        for name in ("sign", "kx", "curve"):
            value = getattr(self, name)
            if type(value) is not bytes or len(value) != KEY_LENGTH:
                raise ProtocolError(f"public key {name!r} must be {KEY_LENGTH} bytes")

    def fingerprint(self) -> str:
        """SHA-256 over the three keys, as "SHA256:abcd efgh ..." (13 groups of four).

        Pinning the fingerprint pins the transport key too: a master that
        swapped only its CURVE key would no longer match.
        """
        digest = hashlib.sha256(_FINGERPRINT_LABEL + self.sign + self.kx + self.curve).digest()
        return _format_fingerprint(digest)

    def matches(self, fingerprint: str) -> bool:
        """True if `fingerprint` (in any spacing or case) is this pair's fingerprint.

        Raises ConfigError if `fingerprint` is not a fingerprint at all.
        """
        return fingerprints_match(self.fingerprint(), fingerprint)

    def check_usable(self) -> None:
        """Raise ProtocolError if nothing could ever be sealed to these keys.

        A low-order X25519 point gives an all-zero shared secret, which the
        library refuses; such a key is refused at enrolment rather than at
        the first job.
        """
        for name in ("kx", "curve"):
            try:
                X25519PrivateKey.generate().exchange(
                    X25519PublicKey.from_public_bytes(getattr(self, name))
                )
            except ValueError:
                raise ProtocolError(f"the {name} public key is a low-order point") from None

    def to_wire(self) -> dict[str, bytes]:
        return {"sign": self.sign, "kx": self.kx, "curve": self.curve}

    @classmethod
    def from_wire(cls, d: dict[str, bytes]) -> PublicKeys:
        return cls(sign=d["sign"], kx=d["kx"], curve=d["curve"])

    def __repr__(self) -> str:
        return f"PublicKeys({self.fingerprint()})"


class KeyPair:
    """A host's private keys, one per purpose: Ed25519 to sign, X25519 to
    receive sealed envelopes, and X25519 for the CurveZMQ transport.

    repr() shows the public fingerprint only. The private bytes leave this
    object only through private_secrets(), for the key file, and
    curve_secret(), for the ZeroMQ socket options.
    """

    __slots__ = ("_curve", "_kx", "_sign", "public")

    def __init__(
        self, sign: Ed25519PrivateKey, kx: X25519PrivateKey, curve: X25519PrivateKey
    ) -> None:
        self._sign = sign
        self._kx = kx
        self._curve = curve
        self.public = PublicKeys(
            sign=sign.public_key().public_bytes_raw(),
            kx=kx.public_key().public_bytes_raw(),
            curve=curve.public_key().public_bytes_raw(),
        )

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(
            Ed25519PrivateKey.generate(), X25519PrivateKey.generate(), X25519PrivateKey.generate()
        )

    @classmethod
    def from_secrets(cls, sign: Secret, kx: Secret, curve: Secret) -> KeyPair:
        """Rebuild a pair from its raw private keys; ValueError if one is not 32 bytes."""
        return cls(
            Ed25519PrivateKey.from_private_bytes(sign.reveal()),
            X25519PrivateKey.from_private_bytes(kx.reveal()),
            X25519PrivateKey.from_private_bytes(curve.reveal()),
        )

    def private_secrets(self) -> tuple[Secret, Secret, Secret]:
        """The raw private keys (Ed25519 seed, X25519 scalars), for the key file only."""
        return (
            Secret(self._sign.private_bytes_raw()),
            Secret(self._kx.private_bytes_raw()),
            Secret(self._curve.private_bytes_raw()),
        )

    def curve_secret(self) -> Secret:
        """The raw CurveZMQ secret key, for ZMQ_CURVE_SECRETKEY only."""
        return Secret(self._curve.private_bytes_raw())

    def fingerprint(self) -> str:
        return self.public.fingerprint()

    def __repr__(self) -> str:
        return f"KeyPair({self.fingerprint()})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a KeyPair cannot be pickled")


def generate() -> KeyPair:
    """A fresh key pair from the operating system's random source."""
    return KeyPair.generate()


# ---- plain signatures (enrolment, which cannot be sealed yet) ----


def _plain_message(context: str, data: bytes) -> bytes:
    if _CONTEXT_RE.fullmatch(context) is None:
        raise ValueError(f"signature context {context!r} is not a short lowercase label")
    return _PLAIN_SIG_LABEL + context.encode("ascii") + b"\0" + data


def sign_plain(keys: KeyPair, context: str, data: bytes) -> bytes:
    """Sign `data` for one purpose, named by `context` (e.g. "enrol request")."""
    return keys._sign.sign(_plain_message(context, data))


def verify_plain(public: PublicKeys, context: str, data: bytes, signature: bytes) -> None:
    """Raise EnvelopeError unless `signature` is `public`'s signature of `data` for `context`."""
    message = _plain_message(context, data)
    try:
        Ed25519PublicKey.from_public_bytes(public.sign).verify(signature, message)
    except (InvalidSignature, ValueError, TypeError):
        raise EnvelopeError(f"bad {context} signature") from None


# ---- sealed envelopes ----


@dataclass(frozen=True, slots=True)
class Header:
    """The clear, signed and authenticated part of an envelope.

    `jid` is the job id for job traffic, and a fresh id of the same grammar
    for other messages (heartbeats), so that every envelope has one.
    """

    version: int
    msg_type: int
    jid: str
    sender: str
    recipient: str
    issued_at: int  # seconds since the epoch
    expires_at: int  # seconds since the epoch

    def problem(self) -> str | None:
        """Why this header cannot be on the wire, or None."""
        for name, top in (
            ("version", _U16_MAX),
            ("msg_type", _U16_MAX),
            ("issued_at", _U64_MAX),
            ("expires_at", _U64_MAX),
        ):
            value = getattr(self, name)
            # An IntEnum is an int here; a bool is not.
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                return f"{name} must be an int in 0..{top}"
        return (
            jid_problem(self.jid)
            or _named("sender", peer_id_problem(self.sender))
            or _named("recipient", peer_id_problem(self.recipient))
        )

    def encode(self) -> bytes:
        """The canonical bytes of the header (call problem() first)."""
        parts = [ENVELOPE_MAGIC, struct.pack(">HH", self.version, self.msg_type)]
        for text in (self.jid, self.sender, self.recipient):
            raw = text.encode("ascii")
            parts.append(bytes([len(raw)]))
            parts.append(raw)
        parts.append(struct.pack(">QQ", self.issued_at, self.expires_at))
        return b"".join(parts)


def _named(name: str, problem: str | None) -> str | None:
    return None if problem is None else f"{name}: {problem}"


@dataclass(frozen=True, slots=True)
class Opened:
    """An envelope that passed every check: its verified header and its plaintext."""

    header: Header
    plaintext: bytes


_MIN_ENVELOPE = (
    len(ENVELOPE_MAGIC) + 4 + 3 + 16 + _EPHEMERAL_LENGTH + _NONCE_LENGTH + _TAG_LENGTH
) + SIGNATURE_LENGTH


# The most an envelope adds to its plaintext, in bytes: the largest header
# (three ids of up to 255 bytes), the ephemeral key, nonce, tag and signature.
# A receiver bounds a frame by its claimed type's body limit plus this.
MAX_ENVELOPE_OVERHEAD = (
    len(ENVELOPE_MAGIC) + 4 + 3 * (1 + 255) + 16 + _EPHEMERAL_LENGTH + _NONCE_LENGTH + _TAG_LENGTH
) + SIGNATURE_LENGTH


def is_envelope(frame: bytes) -> bool:
    """True if `frame` claims to be a sealed envelope (it may still fail to open)."""
    return frame[: len(ENVELOPE_MAGIC)] == ENVELOPE_MAGIC


def _parse_unverified_header(frame: bytes, max_bytes: int) -> tuple[Header, int]:
    """The header of an envelope, and where it ends, before anything is verified.

    Nothing in the result may be trusted until the signature is checked.
    """
    if not isinstance(frame, bytes):
        raise EnvelopeError(f"expected bytes, got {type(frame).__name__}")
    if len(frame) > max_bytes:
        raise EnvelopeError(f"envelope of {len(frame)} bytes is larger than {max_bytes}")
    if len(frame) < _MIN_ENVELOPE:
        raise EnvelopeError(f"envelope of {len(frame)} bytes is too short")
    if not is_envelope(frame):
        raise EnvelopeError("not an envelope (bad magic)")
    pos = len(ENVELOPE_MAGIC)
    version, msg_type = struct.unpack_from(">HH", frame, pos)
    pos += 4
    texts = []
    for _ in range(3):
        if pos >= len(frame):
            raise EnvelopeError("malformed header")
        n = frame[pos]
        raw = frame[pos + 1 : pos + 1 + n]
        pos += 1 + n
        if len(raw) != n or not raw.isascii():
            raise EnvelopeError("malformed header")
        texts.append(raw.decode("ascii"))
    if pos + 16 > len(frame) - SIGNATURE_LENGTH:
        raise EnvelopeError("malformed header")
    issued_at, expires_at = struct.unpack_from(">QQ", frame, pos)
    pos += 16
    header = Header(version, msg_type, texts[0], texts[1], texts[2], issued_at, expires_at)
    problem = header.problem()
    if problem is not None:
        raise EnvelopeError(f"malformed header: {problem}")
    if len(frame) - pos < _EPHEMERAL_LENGTH + _NONCE_LENGTH + _TAG_LENGTH + SIGNATURE_LENGTH:
        raise EnvelopeError("envelope is truncated")
    return header, pos


def _derive_key(shared: bytes, ephemeral: bytes, recipient_kx: bytes, header: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral + recipient_kx,
        info=_ENVELOPE_KDF_LABEL + header,
    ).derive(shared)


def _seal(
    header: Header,
    plaintext: bytes,
    sender_keys: KeyPair,
    recipient_keys: PublicKeys,
    ephemeral: X25519PrivateKey,
    nonce: bytes,
) -> bytes:
    """The deterministic core of seal_at(): the randomness comes in as arguments."""
    head = header.encode()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_keys.kx))
    except ValueError:
        raise ProtocolError(
            f"cannot seal to {header.recipient!r}: its X25519 key is a low-order point"
        ) from None
    key = _derive_key(shared, ephemeral_public, recipient_keys.kx, head)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, plaintext, head)
    signed = b"".join((head, ephemeral_public, nonce, ciphertext))
    return signed + sender_keys._sign.sign(_ENVELOPE_SIG_LABEL + signed)


def seal_at(
    plaintext: bytes,
    *,
    version: int,
    msg_type: int,
    jid: str,
    sender: str,
    recipient: str,
    sender_keys: KeyPair,
    recipient_keys: PublicKeys,
    now: float,
    ttl: int,
) -> bytes:
    """Encrypt `plaintext` to one recipient and sign it, as issued at `now`.

    Issued-at is `now` rounded down to the second; the envelope expires `ttl`
    seconds after that (1..MAX_ENVELOPE_TTL). Raises
    ProtocolError if a header field does not fit its grammar or range.
    """
    if type(ttl) is not int or not 1 <= ttl <= MAX_ENVELOPE_TTL:
        raise ProtocolError(f"ttl must be an int in 1..{MAX_ENVELOPE_TTL} seconds, got {ttl!r}")
    if not math.isfinite(now) or now < 0:
        raise ProtocolError(f"time {now!r} cannot be an issue time")
    issued_at = math.floor(now)
    header = Header(version, msg_type, jid, sender, recipient, issued_at, issued_at + ttl)
    problem = header.problem()
    if problem is not None:
        raise ProtocolError(f"cannot seal: {problem}")
    if len(plaintext) > MAX_ENVELOPE_BYTES - len(header.encode()) - _MIN_ENVELOPE:
        raise ProtocolError(f"cannot seal {len(plaintext)} bytes: larger than an envelope holds")
    return _seal(
        header,
        plaintext,
        sender_keys,
        recipient_keys,
        X25519PrivateKey.generate(),
        os.urandom(_NONCE_LENGTH),
    )


@dataclass(frozen=True, slots=True)
class Verified:
    """An envelope whose signature, recipient and time window have been checked,
    still encrypted: decrypt() is the next, costlier step, which the caller
    may skip after looking at the authenticated header."""

    header: Header
    frame: bytes
    header_end: int

    def decrypt(self, my_keys: KeyPair) -> Opened:
        """Decrypt with our X25519 key; EnvelopeError if the AEAD refuses."""
        frame, pos = self.frame, self.header_end
        head = frame[:pos]
        ephemeral_public = frame[pos : pos + _EPHEMERAL_LENGTH]
        nonce = frame[pos + _EPHEMERAL_LENGTH : pos + _EPHEMERAL_LENGTH + _NONCE_LENGTH]
        # A view, not a copy: a result may be megabytes.
        ciphertext = memoryview(frame)[pos + _EPHEMERAL_LENGTH + _NONCE_LENGTH : -SIGNATURE_LENGTH]
        try:
            shared = my_keys._kx.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        except ValueError:
            raise EnvelopeError("ephemeral key is a low-order point") from None
        key = _derive_key(shared, ephemeral_public, my_keys.public.kx, head)
        try:
            plaintext = ChaCha20Poly1305(key).decrypt(nonce, ciphertext, head)
        except InvalidTag:
            raise EnvelopeError("AEAD tag does not match") from None
        return Opened(self.header, plaintext)


@dataclass(frozen=True, slots=True)
class Claimed:
    """An envelope whose header is parsed and NOT verified: the header is
    only for checks that cost less than the signature and make no decision
    in the sender's favour (the size limit of the claimed type, the sender
    the transport named). verify_at() takes it, so the header a receiver
    checked first is parsed once."""

    header: Header
    frame: bytes
    header_end: int


def claim(frame: bytes, max_bytes: int = MAX_ENVELOPE_BYTES) -> Claimed:
    """The header `frame` claims (see Claimed). Raises EnvelopeError if the
    frame is not an envelope or is larger than `max_bytes`."""
    header, pos = _parse_unverified_header(frame, max_bytes)
    return Claimed(header, frame, pos)


def peek_header(frame: bytes, max_bytes: int = MAX_ENVELOPE_BYTES) -> Header:
    """claim(frame).header: the claimed header alone."""
    return _parse_unverified_header(frame, max_bytes)[0]


def verify_at(
    frame: bytes | Claimed,
    *,
    me: str,
    sender_keys: Callable[[str], PublicKeys | None],
    now: float,
    skew: float = DEFAULT_CLOCK_SKEW,
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> Verified:
    """Check an envelope addressed to `me` at time `now`, without decrypting
    it: a frame, or one claim() parsed already.

    `sender_keys(sender_id)` returns the public keys that sender id must have
    signed with (the pinned master's, an accepted minion's), or None if the
    id is unknown; it is called with the id before the signature is checked.
    Raises EnvelopeError for every failure.
    """
    # Fail closed: with a NaN clock every comparison below would be False,
    # and the time window would let everything through.
    if not (math.isfinite(now) and math.isfinite(skew) and skew >= 0):
        raise EnvelopeError(f"cannot judge the time window with now={now!r}, skew={skew!r}")
    if isinstance(frame, Claimed):
        claimed = frame
        if len(claimed.frame) > max_bytes:
            raise EnvelopeError(
                f"envelope of {len(claimed.frame)} bytes is larger than {max_bytes}"
            )
    else:
        claimed = claim(frame, max_bytes)
    header, frame, pos = claimed.header, claimed.frame, claimed.header_end
    keys = sender_keys(header.sender)
    if keys is None:
        raise EnvelopeError(f"unknown sender {header.sender!r}")
    # A view, not a copy: the signed part may be megabytes.
    signed, signature = memoryview(frame)[:-SIGNATURE_LENGTH], frame[-SIGNATURE_LENGTH:]
    try:
        Ed25519PublicKey.from_public_bytes(keys.sign).verify(
            signature, _ENVELOPE_SIG_LABEL + signed
        )
    except InvalidSignature:
        raise EnvelopeError(f"bad signature for sender {header.sender!r}") from None
    if header.recipient != me:
        raise EnvelopeError(f"addressed to {header.recipient!r}, not to {me!r}")
    lifetime = header.expires_at - header.issued_at
    if not 0 < lifetime <= MAX_ENVELOPE_TTL:
        raise EnvelopeError(f"lifetime of {lifetime} s is outside 1..{MAX_ENVELOPE_TTL}")
    if header.issued_at > now + skew:
        raise EnvelopeError(f"issued {header.issued_at - now:.0f} s in the future")
    if now > header.expires_at + skew:
        raise EnvelopeError(f"expired {now - header.expires_at:.0f} s ago")
    return Verified(header, frame, pos)


def open_at(
    frame: bytes,
    *,
    me: str,
    my_keys: KeyPair,
    sender_keys: Callable[[str], PublicKeys | None],
    now: float,
    skew: float = DEFAULT_CLOCK_SKEW,
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> Opened:
    """Verify and decrypt an envelope addressed to `me`, judged at time `now`:
    verify_at(), then Verified.decrypt(). Raises EnvelopeError for every failure."""
    verified = verify_at(
        frame, me=me, sender_keys=sender_keys, now=now, skew=skew, max_bytes=max_bytes
    )
    return verified.decrypt(my_keys)
