"""Helpers for the engine tests: build a host tree, read it back, name owners.

Test set-up and inspection may use path-based calls: they run on a private
temporary directory that nobody else can write to.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass

from safcm.common.model import FileSpec, FileState, FileType

# Users and groups that exist on every Debian system; the tests really chown to them.
USERS = {0: "root", 1: "daemon", 2: "bin", 65534: "nobody"}
GROUPS = {0: "root", 4: "adm", 50: "staff", 65534: "nogroup"}
# An id that no Debian system names, to test reports without a name.
NAMELESS_ID = 4242


@dataclass(frozen=True)
class Entry:
    """One thing on the host: what `make` creates and what `read_tree` returns."""

    path: str
    type: FileType
    mode: int
    uid: int = 0
    gid: int = 0
    data: bytes = b""  # content of a file, target of a symlink


def F(path: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, FileType.FILE, mode, uid, gid, data)


def D(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, FileType.DIR, mode, uid, gid)


def L(path: str, target: bytes, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, FileType.SYMLINK, 0o777, uid, gid, target)


def FIFO(path: str) -> Entry:
    return Entry(path, FileType.FIFO, 0o644)


def SOCK(path: str) -> Entry:
    return Entry(path, FileType.SOCKET, 0o755)


def CHR(path: str) -> Entry:
    """A character device node (a copy of /dev/null's numbers)."""
    return Entry(path, FileType.CHAR_DEVICE, 0o666)


def make(root: str, entries: list[Entry]) -> None:
    """Create `entries` beneath `root`, in the order given."""
    for e in entries:
        p = root + e.path
        if e.type is FileType.FILE:
            with open(p, "wb") as f:
                f.write(e.data)
        elif e.type is FileType.DIR:
            os.mkdir(p)
        elif e.type is FileType.SYMLINK:
            os.symlink(e.data, p)
        elif e.type is FileType.FIFO:
            os.mkfifo(p)
        elif e.type is FileType.SOCKET:
            s = socket.socket(socket.AF_UNIX)
            s.bind(p)
            s.close()
        elif e.type is FileType.CHAR_DEVICE:
            os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chown(p, e.uid, e.gid, follow_symlinks=False)
        if e.type is not FileType.SYMLINK:
            os.chmod(p, e.mode)


_KINDS = {
    stat.S_IFREG: FileType.FILE,
    stat.S_IFDIR: FileType.DIR,
    stat.S_IFLNK: FileType.SYMLINK,
    stat.S_IFIFO: FileType.FIFO,
    stat.S_IFSOCK: FileType.SOCKET,
    stat.S_IFCHR: FileType.CHAR_DEVICE,
}


def read_tree(root: str) -> dict[str, Entry]:
    """Everything beneath `root` (not the root itself), by path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            kind = _KINDS[stat.S_IFMT(st.st_mode)]
            data = b""
            if kind is FileType.FILE:
                with open(p, "rb") as f:
                    data = f.read()
            elif kind is FileType.SYMLINK:
                data = os.fsencode(os.readlink(p))
            rel = p[len(root) :]
            out[rel] = Entry(rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, data)
    return out


def snapshot(root: str, *, ctime: bool = True) -> dict[str, tuple]:
    """Every entry beneath and including `root` with its inode, ctime and content.

    Two equal snapshots mean nothing was written, renamed, chmodded or
    chowned: any of those changes the inode number or the ctime. (So does a
    change in the number of hard links: `ctime=False` leaves it out.)
    """
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            p = os.path.normpath(os.path.join(dirpath, name))
            st = os.lstat(p)
            data = b""
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    data = f.read()
            elif stat.S_ISLNK(st.st_mode):
                data = os.fsencode(os.readlink(p))
            times = st.st_ctime_ns if ctime else None
            out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_ino, times, data)
    return out


def spec(
    path: str,
    type: FileType | str = FileType.FILE,
    mode: int | None = None,
    data: bytes = b"",
    *,
    user: str | None = "root",
    group: str | None = "root",
    uid: int | None = None,
    gid: int | None = None,
    triggers: tuple[str, ...] = (),
) -> FileSpec:
    """A FileSpec with the usual defaults: root:root, 0644/0755/0777 by type."""
    type = FileType(type)
    if mode is None:
        mode = {FileType.FILE: 0o644, FileType.DIR: 0o755, FileType.SYMLINK: 0o777}[type]
    if uid is not None:
        user = None
    if gid is not None:
        group = None
    return FileSpec(path, type, mode, user, uid, group, gid, data, triggers)


def state(type: FileType | str, mode: int, uid: int = 0, gid: int = 0) -> FileState:
    """A FileState with the names this host gives the ids."""
    return FileState(FileType(type), mode, uid, gid, USERS.get(uid), GROUPS.get(gid))


def entries_of(specs: list[FileSpec]) -> list[Entry]:
    """The entries a successful apply of `specs` leaves behind."""
    ids = {v: k for k, v in USERS.items()}
    gids = {v: k for k, v in GROUPS.items()}
    out = []
    for s in specs:
        uid = s.uid if s.uid is not None else ids[s.user]
        gid = s.gid if s.gid is not None else gids[s.group]
        data = b"" if s.type is FileType.DIR else s.data
        out.append(Entry(s.path, s.type, s.mode, uid, gid, data))
    return out
