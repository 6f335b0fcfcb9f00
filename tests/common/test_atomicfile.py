"""The state-file primitive: whole files with exact modes, durable in the right
order, never through a symlink, and no temporaries left behind."""

from __future__ import annotations

import os
import stat

import pytest

from safcm.common import atomicfile
from safcm.common.errors import StateFileError


@pytest.fixture(params=[False, True], ids=["tmpfile", "named"])
def temp_method(request, monkeypatch):
    """Run a test with O_TMPFILE (where the filesystem has it) and with a named temporary."""
    monkeypatch.setattr(atomicfile, "FORCE_NAMED_TEMP", request.param)
    return request.param


def names(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_replace_writes_then_replaces_whole_files(tmp_path, temp_method):
    atomicfile.replace_file(str(tmp_path), "state", b"one")
    assert atomicfile.read_file(str(tmp_path), "state") == b"one"
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        atomicfile.replace_file(fd, "state", b"two" * 100_000)
        assert atomicfile.read_file(fd, "state") == b"two" * 100_000
    finally:
        os.close(fd)
    assert names(tmp_path) == ["state"]  # no temporary left


def test_mode_is_exact_whatever_the_umask(tmp_path, temp_method):
    old = os.umask(0o077)
    try:
        atomicfile.replace_file(str(tmp_path), "shared", b"x", mode=0o644)
    finally:
        os.umask(old)
    atomicfile.replace_file(str(tmp_path), "private", b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "shared").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "private").st_mode) == 0o600


def test_create_never_replaces(tmp_path, temp_method):
    assert atomicfile.create_file(str(tmp_path), "key", b"first")
    assert not atomicfile.create_file(str(tmp_path), "key", b"second")
    assert atomicfile.read_file(str(tmp_path), "key") == b"first"
    assert names(tmp_path) == ["key"]


def test_a_symlink_at_the_name_is_replaced_not_followed(tmp_path, temp_method):
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    os.symlink(victim, tmp_path / "state")
    with pytest.raises(StateFileError, match="symlink"):
        atomicfile.read_file(str(tmp_path), "state")
    assert not atomicfile.create_file(str(tmp_path), "state", b"new")
    atomicfile.replace_file(str(tmp_path), "state", b"new")
    assert victim.read_bytes() == b"untouched"
    assert not os.path.islink(tmp_path / "state")
    assert atomicfile.read_file(str(tmp_path), "state") == b"new"


def test_read_refuses_what_is_not_a_small_regular_file(tmp_path):
    assert atomicfile.read_file(str(tmp_path), "missing") is None
    os.mkfifo(tmp_path / "fifo")  # O_NONBLOCK: refused, not waited on
    with pytest.raises(StateFileError, match="not a regular file"):
        atomicfile.read_file(str(tmp_path), "fifo")
    atomicfile.replace_file(str(tmp_path), "big", b"x" * 101)
    with pytest.raises(StateFileError, match="larger than 100 bytes"):
        atomicfile.read_file(str(tmp_path), "big", max_bytes=100)
    assert atomicfile.read_file(str(tmp_path), "big", max_bytes=101) == b"x" * 101


def test_remove_and_clean_up(tmp_path):
    atomicfile.replace_file(str(tmp_path), "state", b"x")
    assert atomicfile.remove_file(str(tmp_path), "state")
    assert not atomicfile.remove_file(str(tmp_path), "state")
    leftover = atomicfile.TEMP_PREFIX + "0123456789abcdef-state"
    (tmp_path / leftover).write_bytes(b"half")
    (tmp_path / ".other").write_bytes(b"not ours")
    assert atomicfile.remove_temporaries(str(tmp_path)) == 1
    assert names(tmp_path) == [".other"]


def test_a_removal_syncs_the_directory_unless_told_it_need_not(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(atomicfile.os, "fsync", fsync)
    atomicfile.replace_file(str(tmp_path), "kept", b"x")
    atomicfile.replace_file(str(tmp_path), "dropped", b"x")
    synced.clear()
    assert atomicfile.remove_file(str(tmp_path), "kept")
    assert len(synced) == 1  # the directory, so the unlink is on disk
    assert atomicfile.remove_file(str(tmp_path), "dropped", durable=False)
    assert len(synced) == 1
    assert names(tmp_path) == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x\0y", atomicfile.TEMP_PREFIX + "x"])
def test_only_plain_names(tmp_path, name):
    with pytest.raises(ValueError, match="not a plain state file name"):
        atomicfile.replace_file(str(tmp_path), name, b"x")


def test_errors_are_typed_and_name_the_file(tmp_path):
    with pytest.raises(StateFileError, match="cannot open the directory"):
        atomicfile.replace_file(str(tmp_path / "missing"), "state", b"x")
    (tmp_path / "state").mkdir()
    with pytest.raises(StateFileError) as info:
        atomicfile.replace_file(str(tmp_path), "state", b"x")
    assert info.value.path == "state" and "cannot write" in info.value.reason
    assert names(tmp_path) == ["state"]  # the temporary is gone again
