"""A host's private keys on disk: one file, 0600, in a 0700 directory.

NOTE: every access goes through a descriptor of the key directory opened with
O_NOFOLLOW, and the file is opened relative to it with O_NOFOLLOW too, so a
symlink planted at either place is refused rather than followed.

The file (KEY_FILE_NAME) is text, so an administrator can see what it is:

    safcm private keys 2
    ed25519 <base64 of the 32-byte Ed25519 seed>
    x25519 <base64 of the 32-byte X25519 private key for sealed envelopes>
    curve <base64 of the 32-byte X25519 private key for the CurveZMQ transport>

Format 1 (without the curve line, from safcm 0.1) is refused with a message
that says how to start over: its owner has no transport key, and a new one
changes the fingerprint every peer pinned.

Writing goes through common/atomicfile.py's create_file(), so it is atomic
and durable and never replaces an existing key (the link to the final name
fails if the name exists). A crash leaves either no key file or a complete
one; a temporary it may leave is removed by the next save.

Loading refuses, with a KeyFileError that says the command to run:
- a key file that group or other can read or write, or that is not a regular file;
- a key directory that group or other can write (they could swap the file);
- either one owned by a user other than root or the current user.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import os
import stat

from safcm.common import atomicfile
from safcm.common.crypto import KeyPair, Secret
from safcm.common.errors import KeyFileError, StateFileError

KEY_FILE_NAME = "private.key"
_HEADER_LINE = "safcm private keys 2"
_OLD_HEADER_LINE = "safcm private keys 1"
# Modes of what save_keys() creates: only the owner may read or enter.
DIR_MODE = 0o700
FILE_MODE = 0o600
# A key file is about 120 bytes; anything much larger is not one of ours.
_MAX_KEY_FILE_BYTES = 4096

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted at the key file's name must not hang the daemon.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def encode_key_file(keys: KeyPair) -> bytes:
    """The content of a key file for `keys`."""
    sign, kx, curve = keys.private_secrets()
    lines = [
        _HEADER_LINE,
        "ed25519 " + base64.b64encode(sign.reveal()).decode("ascii"),
        "x25519 " + base64.b64encode(kx.reveal()).decode("ascii"),
        "curve " + base64.b64encode(curve.reveal()).decode("ascii"),
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


def decode_key_file(path: str, data: bytes) -> KeyPair:
    """Parse the content of a key file; KeyFileError (never quoting it) if malformed."""
    try:
        lines = data.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise KeyFileError(path, "not a safcm key file (not ASCII text)") from None
    if lines[0] == _OLD_HEADER_LINE:
        raise KeyFileError(
            path,
            "a key file of safcm 0.1, without a CurveZMQ transport key; move its "
            "directory away to make new keys, then accept the new fingerprint",
        )
    if len(lines) != 5 or lines[0] != _HEADER_LINE or lines[4] != "":
        raise KeyFileError(path, f"not a safcm key file (expected the line {_HEADER_LINE!r})")
    raw = []
    for line, label in zip(lines[1:4], ("ed25519", "x25519", "curve"), strict=True):
        name, _, value = line.partition(" ")
        if name != label:
            raise KeyFileError(path, f"malformed key file: expected a line starting {label!r}")
        try:
            key = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise KeyFileError(path, f"malformed key file: the {label} key is not base64") from None
        if len(key) != 32:
            raise KeyFileError(path, f"malformed key file: the {label} key is not 32 bytes")
        raw.append(Secret(key))
    return KeyPair.from_secrets(raw[0], raw[1], raw[2])


def _owner_problem(st: os.stat_result) -> str | None:
    if st.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {st.st_uid}, not by root or uid {os.geteuid()}"
    return None


def _open_dir(directory: str) -> int:
    try:
        return os.open(directory, _DIR_FLAGS)
    except FileNotFoundError:
        raise KeyFileError(directory, "key directory does not exist") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise KeyFileError(
                directory, "key directory is a symlink or not a directory; use a real directory"
            ) from None
        raise KeyFileError(directory, f"cannot open key directory: {e.strerror}") from None


def _check_dir(directory: str, dir_fd: int) -> None:
    st = os.fstat(dir_fd)
    owner = _owner_problem(st)
    if owner is not None:
        raise KeyFileError(
            directory, f"key directory {owner}; run: chown root: {directory} (or remove it)"
        )
    if st.st_mode & 0o022:
        raise KeyFileError(
            directory,
            f"key directory is writable by group or other (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 700 {directory}",
        )


def load_keys(directory: str) -> KeyPair:
    """Load the key pair from `directory`; KeyFileError if missing, unsafe or malformed."""
    keys = _load(directory)
    if keys is None:
        raise KeyFileError(os.path.join(directory, KEY_FILE_NAME), "key file does not exist")
    return keys


def _exists(directory: str) -> bool:
    """Whether anything is at `directory`. Not os.path.lexists(), which says
    False for any error: a key directory that cannot be looked at (EACCES for
    a user who is not root) is an error that says so, not a missing key."""
    try:
        os.lstat(directory)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise KeyFileError(directory, f"cannot look at key directory: {e.strerror}") from None
    return True


def _load(directory: str) -> KeyPair | None:
    """load_keys(), but None if the directory or the key file does not exist."""
    path = os.path.join(directory, KEY_FILE_NAME)
    if not _exists(directory):
        return None
    dir_fd = _open_dir(directory)
    try:
        _check_dir(directory, dir_fd)
        try:
            fd = os.open(KEY_FILE_NAME, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise KeyFileError(path, "key file is a symlink; refusing to follow it") from None
            raise KeyFileError(path, f"cannot open key file: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(path, "key file is not a regular file")
            owner = _owner_problem(st)
            if owner is not None:
                raise KeyFileError(path, f"key file {owner}; run: chown root: {path}")
            if st.st_mode & 0o077:
                raise KeyFileError(
                    path,
                    "key file is readable or writable by group or other "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}",
                )
            data = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(path, f"not a safcm key file (larger than {_MAX_KEY_FILE_BYTES} bytes)")
    return decode_key_file(path, data)


def _make_dir(directory: str) -> None:
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, DIR_MODE)


def save_keys(directory: str, keys: KeyPair) -> None:
    """Write `keys` to a new key file in `directory`, creating the directory 0700.

    Never replaces an existing key file (KeyFileError): losing a key means
    every peer must trust a new one, so that is left to a person.
    """
    if not _save(directory, keys):
        raise KeyFileError(
            os.path.join(directory, KEY_FILE_NAME),
            "a key file already exists; refusing to replace it (move it away first)",
        )


def _save(directory: str, keys: KeyPair) -> bool:
    """save_keys(), but False instead of an error if a key file already exists."""
    path = os.path.join(directory, KEY_FILE_NAME)
    try:
        _make_dir(directory)
    except OSError as e:
        raise KeyFileError(directory, f"cannot create key directory: {e.strerror}") from None
    dir_fd = _open_dir(directory)
    try:
        _check_dir(directory, dir_fd)
        atomicfile.remove_temporaries(dir_fd)  # they hold private keys
        return atomicfile.create_file(dir_fd, KEY_FILE_NAME, encode_key_file(keys), mode=FILE_MODE)
    except StateFileError as e:
        raise KeyFileError(path, e.reason) from None
    finally:
        os.close(dir_fd)


def _remove_temporaries(directory: str) -> None:
    """Remove what a save interrupted by a crash left; temporaries hold private keys."""
    if not _exists(directory):
        return
    dir_fd = _open_dir(directory)
    try:
        _check_dir(directory, dir_fd)
        atomicfile.remove_temporaries(dir_fd)
    except StateFileError as e:
        raise KeyFileError(directory, e.reason) from None
    finally:
        os.close(dir_fd)


def load_or_create(directory: str) -> tuple[KeyPair, bool]:
    """Load the key pair in `directory`, or make and save one if there is no key file.

    Returns the pair and whether it was just created (for a log line with
    its fingerprint). A key file that exists but cannot be used is an error,
    never a reason to make a new key.
    """
    _remove_temporaries(directory)
    keys = _load(directory)
    if keys is not None:
        return keys, False
    keys = KeyPair.generate()
    if _save(directory, keys):
        return keys, True
    # Another process saved a key between our load and our save: use that one.
    return load_keys(directory), False
