"""Fixtures for the engine tests: a host (root, state dir, outside dir) and engine modes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from safcm.common.model import ApplyResult, FileSpec
from safcm.minion import fileops
from safcm.minion.fileops import Resolve, Temp

# The job id of applies in tests (the grammar of common/ids.py).
JID = "20260101T000000.000000Z"

# Both ways to resolve a path and all three ways to make a temporary file,
# in four combinations, so every code path runs under the whole case table.
MODES = [
    pytest.param((Resolve.OPENAT2, Temp.TMPFILE), id="openat2-tmpfile"),
    pytest.param((Resolve.WALK, Temp.NAMED), id="walk-named"),
    pytest.param((Resolve.OPENAT2, Temp.NAMED), id="openat2-named"),
    pytest.param((Resolve.WALK, Temp.TMPFILE_PROC), id="walk-tmpfile-proc"),
]
RESOLVE_MODES = [
    pytest.param(Resolve.OPENAT2, id="openat2"),
    pytest.param(Resolve.WALK, id="walk"),
]


def force(monkeypatch: pytest.MonkeyPatch, resolve: Resolve, temp: Temp | None = None) -> None:
    if resolve is Resolve.OPENAT2 and not fileops.openat2_available():
        pytest.skip("this kernel has no openat2 (Linux < 5.6 or refused by seccomp)")
    monkeypatch.setattr(fileops, "FORCE_RESOLVE", resolve)
    monkeypatch.setattr(fileops, "FORCE_TEMP", temp)


@pytest.fixture(params=MODES)
def engine_mode(request, monkeypatch):
    """Run the test once per engine mode (resolution x temporary files)."""
    resolve, temp = request.param
    force(monkeypatch, resolve, temp)
    return request.param


@pytest.fixture(params=RESOLVE_MODES)
def resolve_mode(request, monkeypatch):
    """Run the test once per way of resolving paths."""
    force(monkeypatch, request.param)
    return request.param


@dataclass
class Host:
    """A sandboxed host: the engine's root, its state dir, and a directory outside the root."""

    root: str
    state: str
    outside: str

    def apply(
        self, files: list[FileSpec], *, dry_run: bool = False, jid: str = JID, **kw
    ) -> ApplyResult:
        return fileops.apply_files(
            self.root, files, dry_run=dry_run, state_dir=self.state, jid=jid, **kw
        )


def new_host(base: str) -> Host:
    host = Host(os.path.join(base, "root"), os.path.join(base, "state"), os.path.join(base, "out"))
    for d in (host.root, host.state, host.outside):
        os.makedirs(d)
    # A fixed mode and owner for the root, so reports on "/" are predictable.
    os.chmod(host.root, 0o755)
    os.chown(host.root, 0, 0)
    return host


@pytest.fixture
def host(tmp_path) -> Host:
    return new_host(str(tmp_path))


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))
