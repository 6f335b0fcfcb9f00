"""Attacks by a user who can write inside the root: nothing may happen outside it.

The directory "outside" mirrors the structure below each planted symlink, so
an engine that followed the symlink would succeed in writing there; these
tests check that it never does.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
import time

import pytest

from safcm.common.model import FileType

from .conftest import Host
from .test_fileops import changed, temp_names
from .tree import CHR, FIFO, D, F, make, read_tree, snapshot, spec, state

PARENTS = ["/a", "/a/b", "/a/b/c"]
TARGET = "/a/b/c/file"


def plant(host: Host, component: str, inside: bool = False) -> str:
    """Make /a/b/c beneath the root with `component` a symlink; return where it points.

    The symlink points to "outside" (by absolute path), or with `inside` to
    the directory "/elsewhere" in the root (by a relative path, which
    RESOLVE_BENEATH alone would follow). The directories below the component
    are made there too, so following the symlink would reach them.
    """
    make(host.root, [D(p) for p in PARENTS])
    target = host.root + "/elsewhere" if inside else host.outside
    os.makedirs(target, exist_ok=True)
    below = TARGET[len(component) : TARGET.rfind("/")]  # e.g. "/c" for "/a/b"
    if below:
        os.makedirs(target + below)
    os.rename(host.root + component, host.root + component + ".moved")
    link = os.path.relpath(target, os.path.dirname(host.root + component)) if inside else target
    os.symlink(link, host.root + component)
    return target


@pytest.mark.parametrize("component", PARENTS)
@pytest.mark.parametrize("inside", [False, True], ids=["to-outside", "to-inside"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry-run"])
def test_symlink_at_any_component_is_refused(host: Host, resolve_mode, component, inside, dry_run):
    target = plant(host, component, inside)
    before = snapshot(target)

    result = host.apply([spec(TARGET, data=b"payload")], dry_run=dry_run)

    assert result.changes == []
    assert result.failures[0].path == TARGET
    assert result.failures[0].reason == f"symlink not permitted in path: {component}"
    assert snapshot(target) == before


@pytest.mark.parametrize("component", PARENTS)
def test_declared_directories_replace_a_planted_symlink(host: Host, engine_mode, component):
    plant(host, component)
    outside = snapshot(host.outside)
    files = [spec(p, "dir") for p in PARENTS] + [spec(TARGET, data=b"payload")]

    result = host.apply(files)

    assert result.failures == []
    assert result.changes[0] == changed(
        component,
        state("symlink", 0o777),
        state("dir", 0o755),
        f"--- a{component}\n+++ /dev/null\n@@ -1 +0,0 @@\n-{host.outside}\n",
    )
    assert read_tree(host.root)[TARGET].data == b"payload"
    assert snapshot(host.outside) == outside


def test_symlink_at_the_target_is_replaced_not_followed(host: Host, engine_mode):
    make(host.root, [D("/etc")])
    with open(host.outside + "/secret", "wb") as f:
        f.write(b"outside\n")
    os.symlink(host.outside + "/secret", host.root + "/etc/motd")
    os.symlink(host.outside, host.root + "/etc/d")
    outside = snapshot(host.outside)

    result = host.apply(
        [spec("/etc/motd", mode=0o600, data=b"inside\n"), spec("/etc/d", "dir", 0o700)]
    )

    assert result.failures == []
    assert [(c.path, c.old.type, c.new.type) for c in result.changes] == [
        ("/etc/d", FileType.SYMLINK, FileType.DIR),
        ("/etc/motd", FileType.SYMLINK, FileType.FILE),
    ]
    assert snapshot(host.outside) == outside
    assert read_tree(host.root)["/etc/motd"] == F("/etc/motd", b"inside\n", 0o600)


@pytest.mark.parametrize(
    ("data", "mode"), [(b"new content\n", 0o600), (b"secret\n", 0o644)], ids=["content", "mode"]
)
def test_hard_link_to_a_file_outside_keeps_its_content_and_mode(
    host: Host, engine_mode, data, mode
):
    secret = host.outside + "/shadow"
    with open(secret, "wb") as f:
        f.write(b"secret\n")
    os.chmod(secret, 0o600)
    make(host.root, [D("/home")])
    os.link(secret, host.root + "/home/file")
    outside = snapshot(host.outside, ctime=False)  # our rename drops a link: ctime moves

    result = host.apply([spec("/home/file", mode=mode, data=data, user="nobody")])

    assert result.failures == []
    assert snapshot(host.outside, ctime=False) == outside  # content, mode, owner unchanged
    assert os.stat(secret).st_nlink == 1
    assert read_tree(host.root)["/home/file"] == F("/home/file", data, mode, 65534, 0)
    assert os.stat(host.root + "/home/file").st_ino != os.stat(secret).st_ino


# -- FIFOs and devices are looked at, never opened ------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
IN_ACCESS, IN_OPEN = 0x1, 0x20
IN_NONBLOCK = os.O_NONBLOCK


class OpenWatch:
    """Reports every open() of one inode, through inotify."""

    def __init__(self, path: str) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        assert _libc.inotify_add_watch(self.fd, os.fsencode(path), IN_OPEN | IN_ACCESS) >= 0

    def events(self) -> list[int]:
        masks = []
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return masks
        while buf:
            _wd, mask, _cookie, size = struct.unpack_from("iIII", buf)
            masks.append(mask)
            buf = buf[16 + size :]
        return masks

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("entry", [FIFO("/x"), CHR("/x")], ids=["fifo", "device"])
@pytest.mark.parametrize("declared", ["file", "dir", "symlink"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry-run"])
def test_fifo_or_device_at_the_target_is_never_opened(
    host: Host, engine_mode, entry, declared, dry_run
):
    make(host.root, [entry])
    # Watch the inode through a second name outside the root: the engine
    # replaces /x, but the watch stays on the old node.
    os.link(host.root + "/x", host.outside + "/x")
    watch = OpenWatch(host.outside + "/x")
    try:
        data = b"t" if declared == "symlink" else b""
        result = host.apply([spec("/x", declared, data=data)], dry_run=dry_run)
        assert result.failures == []
        assert [(c.old.type, c.new.type) for c in result.changes] == [
            (entry.type, FileType(declared))
        ]
        assert watch.events() == []
        # The watch works: an open of the node is seen.
        os.close(os.open(host.outside + "/x", os.O_RDONLY | os.O_NONBLOCK))
        assert watch.events() != []
    finally:
        watch.close()


# -- the race harness -------------------------------------------------------------

RACE_SECONDS = 2.0  # wall time per resolution mode; bounded also by RACE_APPLIES
RACE_APPLIES = 20000
ALLOWED_REASONS = (
    "symlink not permitted in path: /a",
    "directory /a does not exist",
    "directory /a/b kept changing while safcm resolved it",
)


@pytest.mark.timeout(120)
def test_race_swapping_a_directory_for_a_symlink(host: Host, resolve_mode):
    """A thread keeps swapping /a for a symlink to outside while applies run."""
    make(host.root, [D("/a"), D("/a/b")])
    os.makedirs(host.outside + "/b")
    outside = snapshot(host.outside)
    stop = threading.Event()
    swaps = 0

    def swapper():
        nonlocal swaps
        a, aside = host.root + "/a", host.root + "/a.aside"
        while not stop.is_set():
            # sleep(0) hands the GIL over, so applies also run inside each state.
            os.rename(a, aside)
            os.symlink(host.outside, a)
            time.sleep(0)
            os.unlink(a)
            os.rename(aside, a)
            time.sleep(0)
            swaps += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    outcomes: dict[str, int] = {}
    try:
        deadline = time.monotonic() + RACE_SECONDS
        for i in range(RACE_APPLIES):
            if time.monotonic() > deadline:
                break
            result = host.apply([spec("/a/b/f", data=b"round %d\n" % i)])
            if result.failures == []:
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            else:
                reason = result.failures[0].reason
                assert reason.startswith(ALLOWED_REASONS), reason
                key = reason.split(":")[0]
                outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        stop.set()
        thread.join()

    print(f"race: {swaps} swaps, outcomes {outcomes}")
    assert swaps > 0 and sum(outcomes.values()) > 0
    assert snapshot(host.outside) == outside  # never a write outside the root
    assert temp_names(host.root) == []
