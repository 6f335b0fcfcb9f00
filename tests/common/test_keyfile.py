"""Key files on disk: modes, atomic no-clobber writes, refusal of unsafe files."""

import os
import shutil
import stat
import tempfile

import pytest

from safcm.common import atomicfile
from safcm.common.crypto import KeyPair
from safcm.common.errors import KeyFileError
from safcm.common.keyfile import (
    KEY_FILE_NAME,
    decode_key_file,
    encode_key_file,
    load_keys,
    load_or_create,
    save_keys,
)

KEYS = KeyPair.generate()


@pytest.fixture
def keydir(tmp_path):
    return str(tmp_path / "keys")


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_save_creates_0700_dir_and_0600_file_and_loads_back(keydir):
    save_keys(keydir, KEYS)
    assert mode(keydir) == 0o700
    assert mode(os.path.join(keydir, KEY_FILE_NAME)) == 0o600
    assert os.listdir(keydir) == [KEY_FILE_NAME]  # no temporary left behind
    assert load_keys(keydir).public == KEYS.public


def test_save_ignores_a_permissive_umask(keydir):
    old = os.umask(0)
    try:
        save_keys(keydir, KEYS)
    finally:
        os.umask(old)
    assert mode(keydir) == 0o700
    assert mode(os.path.join(keydir, KEY_FILE_NAME)) == 0o600


def test_save_never_replaces_a_key(keydir):
    save_keys(keydir, KEYS)
    with pytest.raises(KeyFileError, match="already exists") as info:
        save_keys(keydir, KeyPair.generate())
    assert info.value.path == os.path.join(keydir, KEY_FILE_NAME)
    assert load_keys(keydir).public == KEYS.public
    assert os.listdir(keydir) == [KEY_FILE_NAME]


def test_save_removes_stale_temporaries(keydir):
    os.makedirs(keydir, mode=0o700)
    stale = os.path.join(keydir, atomicfile.TEMP_PREFIX + "0123456789abcdef-" + KEY_FILE_NAME)
    with open(stale, "wb") as f:
        f.write(b"half a key")
    save_keys(keydir, KEYS)
    assert os.listdir(keydir) == [KEY_FILE_NAME]


def test_load_or_create_creates_once_then_loads(keydir):
    first, created = load_or_create(keydir)
    assert created
    again, created_again = load_or_create(keydir)
    assert not created_again
    assert again.public == first.public


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660, 0o700, 0o400 | 0o004])
def test_a_key_file_others_can_read_or_write_is_refused_with_the_fix(keydir, loose):
    save_keys(keydir, KEYS)
    path = os.path.join(keydir, KEY_FILE_NAME)
    os.chmod(path, loose)
    if not loose & 0o077:
        load_keys(keydir)  # 0700 is only odd, not unsafe
        return
    with pytest.raises(KeyFileError) as info:
        load_keys(keydir)
    assert info.value.path == path
    assert f"run: chmod 600 {path}" in str(info.value)
    assert f"{loose:04o}" in str(info.value)
    # load_or_create must not paper over it with a new key
    with pytest.raises(KeyFileError):
        load_or_create(keydir)
    assert os.listdir(keydir) == [KEY_FILE_NAME]


@pytest.mark.parametrize("loose", [0o720, 0o702, 0o777, 0o1777])
def test_a_key_directory_others_can_write_is_refused_with_the_fix(keydir, loose):
    save_keys(keydir, KEYS)
    os.chmod(keydir, loose)
    with pytest.raises(KeyFileError) as info:
        load_keys(keydir)
    assert info.value.path == keydir
    assert f"run: chmod 700 {keydir}" in str(info.value)
    with pytest.raises(KeyFileError):
        load_or_create(keydir)
    with pytest.raises(KeyFileError, match="chmod 700"):
        save_keys(keydir, KEYS)


def test_a_readable_but_not_writable_directory_is_accepted(keydir):
    save_keys(keydir, KEYS)
    os.chmod(keydir, 0o755)
    assert load_keys(keydir).public == KEYS.public


def test_files_owned_by_another_user_are_refused(keydir):
    save_keys(keydir, KEYS)
    path = os.path.join(keydir, KEY_FILE_NAME)
    os.chown(path, 1234, 1234)
    with pytest.raises(KeyFileError, match="owned by uid 1234") as info:
        load_keys(keydir)
    assert "chown" in str(info.value)
    os.chown(path, 0, 0)
    os.chown(keydir, 1234, 0)
    with pytest.raises(KeyFileError, match="owned by uid 1234") as info:
        load_keys(keydir)
    assert info.value.path == keydir


def test_a_symlinked_key_file_is_refused(keydir, tmp_path):
    save_keys(str(tmp_path / "real"), KEYS)
    os.makedirs(keydir, mode=0o700)
    os.symlink(tmp_path / "real" / KEY_FILE_NAME, os.path.join(keydir, KEY_FILE_NAME))
    with pytest.raises(KeyFileError, match="symlink"):
        load_keys(keydir)
    with pytest.raises(KeyFileError, match="symlink"):
        load_or_create(keydir)


def test_a_symlinked_key_directory_is_refused(keydir, tmp_path):
    save_keys(str(tmp_path / "real"), KEYS)
    os.symlink(tmp_path / "real", keydir)
    with pytest.raises(KeyFileError, match="symlink"):
        load_keys(keydir)
    with pytest.raises(KeyFileError, match="symlink"):
        save_keys(keydir, KEYS)


def test_a_fifo_at_the_key_file_is_refused_without_blocking(keydir):
    os.makedirs(keydir, mode=0o700)
    os.mkfifo(os.path.join(keydir, KEY_FILE_NAME), 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_keys(keydir)


def test_missing_key_is_reported(keydir):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_keys(keydir)
    os.makedirs(keydir, mode=0o700)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_keys(keydir)


GOOD = encode_key_file(KEYS)
MALFORMED = [
    b"",
    b"\xff\xfe",
    GOOD.replace(b"safcm private keys 2", b"safcm private keys 3"),
    GOOD.replace(b"safcm private keys 2", b"safcm private keys 1"),  # 0.1: no transport key
    GOOD.replace(b"curve ", b"kurve "),
    GOOD.rstrip(b"\n"),
    GOOD + b"extra\n",
    GOOD.replace(b"ed25519 ", b"rsa "),
    GOOD.replace(b"x25519 ", b"x25519 !"),
    GOOD.replace(b"x25519 ", b"x25519 AAAA"),
    b"x" * 5000,
]


# A user who is not root, for a load that the kernel refuses (EACCES).
NOBODY = 65534


def load_as_nobody(directory: str) -> str:
    """What load_keys(directory) raises in a child that runs as NOBODY."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            try:
                load_keys(directory)
                message = "loaded"
            except KeyFileError as e:
                message = str(e)
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    return message


def test_a_key_directory_that_cannot_be_looked_at_says_so():
    """As a user who is not root, the master's 0700 state_dir hides its keys:
    the reason is EACCES, not a missing key file."""
    base = tempfile.mkdtemp(prefix="safcm-keys-", dir="/tmp")  # 0700 pytest dirs above tmp_path
    try:
        os.chmod(base, 0o755)
        state_dir = os.path.join(base, "state")
        keys = os.path.join(state_dir, "keys")
        save_keys(keys, KEYS)
        os.chmod(state_dir, 0o700)
        assert load_as_nobody(keys) == f"{keys}: cannot look at key directory: Permission denied"
        os.chmod(state_dir, 0o755)  # the key directory itself is 0700: it cannot be opened
        assert load_as_nobody(keys) == f"{keys}: cannot open key directory: Permission denied"
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("content", MALFORMED)
def test_malformed_key_files_are_refused_without_quoting_them(keydir, content):
    os.makedirs(keydir, mode=0o700)
    path = os.path.join(keydir, KEY_FILE_NAME)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(KeyFileError) as info:
        load_keys(keydir)
    message = str(info.value)
    assert message.startswith(path + ": ")
    for line in GOOD.split(b"\n")[1:4]:
        secret = line.split(b" ")[1].decode()
        assert secret not in message
        assert secret[:12] not in message


def test_key_file_content_round_trips():
    assert decode_key_file("k", encode_key_file(KEYS)).public == KEYS.public
