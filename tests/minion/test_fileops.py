"""The file engine against real files beneath a temporary root, as root.

The case table covers every branch of the engine: create, update and no-op
for each type, modes with special bits, owners by name and by id, every type
change, the non-empty directory refusal, diffs, failures and invalid input.
Each case runs in every engine mode (openat2 or the component walk; O_TMPFILE
linked by AT_EMPTY_PATH or /proc, or named temporaries), and its dry run must
give the real run's report while writing nothing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import pwd
import stat
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest

from safcm.common import codec
from safcm.common.errors import FileOpError, LockError, StoreError
from safcm.common.model import (
    AbsentSpec,
    FileChange,
    FileSpec,
    FileType,
    Outcome,
    OwedTrigger,
    TriggerStatus,
)
from safcm.common.protocol import SPECS, MsgType
from safcm.common.schema import validate
from safcm.master.jobstore import Plan
from safcm.minion import fileops, owed, results
from safcm.minion.fileops import Resolve, Temp
from safcm.minion.plan import is_temp_name

from .conftest import JID, Host, new_host, open_fds
from .tree import (
    CHR,
    FIFO,
    NAMELESS_ID,
    SOCK,
    D,
    Entry,
    F,
    L,
    entries_of,
    make,
    read_tree,
    snapshot,
    spec,
    state,
)


def created(
    path: str, type: str, mode: int, uid: int = 0, gid: int = 0, diff: str | None = None
) -> FileChange:
    return FileChange(path, created=True, new=state(type, mode, uid, gid), diff=diff)


def changed(path, old, new, diff=None, outcome=Outcome.APPLIED) -> FileChange:
    return FileChange(path, created=False, new=new, old=old, diff=diff, outcome=outcome)


def removed(path, old, diff=None, outcome=Outcome.APPLIED) -> FileChange:
    return FileChange(path, created=False, new=None, old=old, diff=diff, outcome=outcome)


def as_(outcome: Outcome, change: FileChange) -> FileChange:
    """`change` expected with `outcome` (its reason is checked apart: see shape())."""
    return dataclasses.replace(change, outcome=outcome)


def shape(changes: list[FileChange]) -> list[FileChange]:
    """The changes with their reasons blanked, after checking that every failed
    or skipped change has a reason and no other has one."""
    for c in changes:
        assert bool(c.reason) == (c.outcome in (Outcome.FAILED, Outcome.SKIPPED)), c
    return [dataclasses.replace(c, reason="") for c in changes]


def as_real(changes: list[FileChange]) -> list[FileChange]:
    """A dry run's changes as the real run reports them: "would apply" is "applied"."""
    return [as_(Outcome.APPLIED, c) if c.outcome is Outcome.WOULD_APPLY else c for c in changes]


@dataclass
class Case:
    id: str
    before: list[Entry]
    files: list[FileSpec]
    changes: list[FileChange]
    # (path, a part of the reason) of each failure, in order
    failures: list[tuple[str, str]] = field(default_factory=list)
    after: list[Entry] | None = None  # default: as declared (or as before, on failure)
    absent: list[AbsentSpec] = field(default_factory=list)
    purge: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    marks: list = field(default_factory=list)


def PT(path: str) -> FileSpec:
    """A directory the repository only passes through."""
    return dataclasses.replace(spec(path, "dir"), passthrough=True)


def SECRET(old: bytes | None, new: bytes | None) -> str:
    """The one line that stands for a secret's diff (None: no such side)."""

    def side(data):
        if data is None:
            return "nothing"
        return f"sha256:{hashlib.sha256(data).hexdigest()[:12]} ({len(data)} bytes)"

    return f"secret content not shown: {side(old)} -> {side(new)}\n"


def H(path: str, *lines: str) -> str:
    """A diff of `path`: the usual headers, then `lines`."""
    return f"--- a{path}\n+++ b{path}\n" + "".join(line + "\n" for line in lines)


def NEW(path: str, *lines: str) -> str:
    """The diff of content that appears at `path` (a creation)."""
    return f"--- /dev/null\n+++ b{path}\n" + "".join(line + "\n" for line in lines)


def GONE(path: str, *lines: str) -> str:
    """The diff of content that is lost at `path` (a removal, or a directory in its place)."""
    return f"--- a{path}\n+++ /dev/null\n" + "".join(line + "\n" for line in lines)


NO_NL = "\\ No newline at end of file"

CASES = [
    # --- create, each type --------------------------------------------------
    Case(
        "create file",
        [D("/etc")],
        [spec("/etc/motd", data=b"hello\n")],
        [created("/etc/motd", "file", 0o644, diff=NEW("/etc/motd", "@@ -0,0 +1 @@", "+hello"))],
    ),
    Case(
        "create file in root",
        [],
        [spec("/motd", data=b"x")],
        [created("/motd", "file", 0o644, diff=NEW("/motd", "@@ -0,0 +1 @@", "+x", NO_NL))],
    ),
    Case("create empty file", [], [spec("/empty")], [created("/empty", "file", 0o644)]),
    Case(
        "create binary file",
        [],
        [spec("/bin.dat", data=b"\x00\xff\x01" * 100)],
        [
            created(
                "/bin.dat",
                "file",
                0o644,
                diff=NEW("/bin.dat", "@@ -0,0 +1 @@", "+<binary content, 300 bytes>"),
            )
        ],
    ),
    Case(
        "create setuid file owned by name",
        [D("/opt")],
        [spec("/opt/tool", mode=0o4755, data=b"#!/bin/sh\n", user="daemon", group="staff")],
        [
            created(
                "/opt/tool", "file", 0o4755, 1, 50, NEW("/opt/tool", "@@ -0,0 +1 @@", "+#!/bin/sh")
            )
        ],
    ),
    Case(
        "create setgid file",
        [],
        [spec("/sg", mode=0o2711, data=b"x", group="adm")],
        [created("/sg", "file", 0o2711, 0, 4, NEW("/sg", "@@ -0,0 +1 @@", "+x", NO_NL))],
    ),
    Case(
        "create all special bits",
        [],
        [spec("/all", mode=0o7777, data=b"x", user="bin", group="adm")],
        [created("/all", "file", 0o7777, 2, 4, NEW("/all", "@@ -0,0 +1 @@", "+x", NO_NL))],
    ),
    Case(
        "create dir with setgid and sticky",
        [],
        [spec("/srv", "dir", 0o3775, user="nobody", group="nogroup")],
        [created("/srv", "dir", 0o3775, 65534, 65534)],
    ),
    Case(
        "create symlink",
        [D("/etc")],
        [spec("/etc/link", "symlink", data=b"../target")],
        [
            created(
                "/etc/link", "symlink", 0o777, diff=NEW("/etc/link", "@@ -0,0 +1 @@", "+../target")
            )
        ],
    ),
    Case(
        "create symlink with owner",
        [],
        [spec("/link", "symlink", data=b"/abs/target", user="bin", group="adm")],
        [created("/link", "symlink", 0o777, 2, 4, NEW("/link", "@@ -0,0 +1 @@", "+/abs/target"))],
    ),
    Case(
        "create nested tree",
        [],
        [
            spec("/a", "dir"),
            spec("/a/b", "dir", 0o700),
            spec("/a/b/c", data=b"c\n"),
            spec("/a/l", "symlink", data=b"b/c"),
            spec("/a-sibling", data=b"sorts between /a and /a/b"),
        ],
        [
            created("/a", "dir", 0o755),
            created(
                "/a-sibling",
                "file",
                0o644,
                diff=NEW("/a-sibling", "@@ -0,0 +1 @@", "+sorts between /a and /a/b", NO_NL),
            ),
            created("/a/b", "dir", 0o700),
            created("/a/b/c", "file", 0o644, diff=NEW("/a/b/c", "@@ -0,0 +1 @@", "+c")),
            created("/a/l", "symlink", 0o777, diff=NEW("/a/l", "@@ -0,0 +1 @@", "+b/c")),
        ],
    ),
    Case(
        "create by ids",
        [],
        [spec("/ids", data=b"x", uid=1, gid=4)],
        [created("/ids", "file", 0o644, 1, 4, NEW("/ids", "@@ -0,0 +1 @@", "+x", NO_NL))],
    ),
    Case(
        "create with ids the host has no name for",
        [],
        [spec("/anon", data=b"x", uid=NAMELESS_ID, gid=NAMELESS_ID)],
        [
            created(
                "/anon",
                "file",
                0o644,
                NAMELESS_ID,
                NAMELESS_ID,
                NEW("/anon", "@@ -0,0 +1 @@", "+x", NO_NL),
            )
        ],
    ),
    Case(
        "create file with the longest name",
        [],
        [spec("/" + "n" * 255, data=b"x")],
        [
            created(
                "/" + "n" * 255,
                "file",
                0o644,
                diff=NEW("/" + "n" * 255, "@@ -0,0 +1 @@", "+x", NO_NL),
            )
        ],
    ),
    Case(
        "create file with a non-ASCII name",
        [D("/d")],
        [spec("/d/résumé ☃", data=b"x"), spec("/d/\u00e9\u00e9" + "é" * 125, data=b"y")],
        [
            created(
                "/d/résumé ☃", "file", 0o644, diff=NEW("/d/résumé ☃", "@@ -0,0 +1 @@", "+x", NO_NL)
            ),
            created(
                "/d/\u00e9\u00e9" + "é" * 125,
                "file",
                0o644,
                diff=NEW("/d/\u00e9\u00e9" + "é" * 125, "@@ -0,0 +1 @@", "+y", NO_NL),
            ),
        ],
    ),
    # --- update a file ---------------------------------------------------------
    Case(
        "update content",
        [F("/f", b"a\nb\nc\n")],
        [spec("/f", data=b"a\nB\nc\n")],
        [
            changed(
                "/f",
                state("file", 0o644),
                state("file", 0o644),
                H("/f", "@@ -1,3 +1,3 @@", " a", "-b", "+B", " c"),
            )
        ],
    ),
    Case(
        "update content, context of three lines",
        [F("/f", b"".join(b"%d\n" % i for i in range(20)))],
        [spec("/f", data=b"".join(b"%d\n" % i for i in range(20)).replace(b"10\n", b"ten\n"))],
        [
            changed(
                "/f",
                state("file", 0o644),
                state("file", 0o644),
                H("/f", "@@ -8,7 +8,7 @@", " 7", " 8", " 9", "-10", "+ten", " 11", " 12", " 13"),
            )
        ],
    ),
    Case(
        "update content of the same size",
        [F("/f", b"abc\n")],
        [spec("/f", data=b"abd\n")],
        [
            changed(
                "/f",
                state("file", 0o644),
                state("file", 0o644),
                H("/f", "@@ -1 +1 @@", "-abc", "+abd"),
            )
        ],
    ),
    Case(
        "update content without trailing newlines",
        [F("/f", b"abc")],
        [spec("/f", data=b"abcd")],
        [
            changed(
                "/f",
                state("file", 0o644),
                state("file", 0o644),
                H("/f", "@@ -1 +1 @@", "-abc", NO_NL, "+abcd", NO_NL),
            )
        ],
    ),
    Case(
        "update adds the trailing newline",
        [F("/f", b"a\nx")],
        [spec("/f", data=b"a\nx\n")],
        [
            changed(
                "/f",
                state("file", 0o644),
                state("file", 0o644),
                H("/f", "@@ -1,2 +1,2 @@", " a", "-x", NO_NL, "+x"),
            )
        ],
    ),
    Case(
        "update removes the trailing newline",
        [F("/f", b"x\n")],
        [spec("/f", data=b"x")],
        [
            changed(
                "/f",
                state("file", 0o644),
                state("file", 0o644),
                H("/f", "@@ -1 +1 @@", "-x", "+x", NO_NL),
            )
        ],
    ),
    Case(
        "update unchanged last line without newline is context",
        [F("/f", b"a\nz")],
        [spec("/f", data=b"b\nz")],
        [
            changed(
                "/f",
                state("file", 0o644),
                state("file", 0o644),
                H("/f", "@@ -1,2 +1,2 @@", "-a", "+b", " z", NO_NL),
            )
        ],
    ),
    Case(
        "update binary content",
        [F("/f", b"\x00\x01\x02")],
        [spec("/f", data=b"\x00\x01\x03")],
        [
            changed(
                "/f",
                state("file", 0o644),
                state("file", 0o644),
                H("/f", "@@ -1 +1 @@", "-<binary content, 3 bytes>", "+<binary content, 3 bytes>"),
            )
        ],
    ),
    Case(
        "update text to invalid UTF-8",
        [F("/f", b"text\n")],
        [spec("/f", data=b"\xff\xfe")],
        [
            changed(
                "/f",
                state("file", 0o644),
                state("file", 0o644),
                H("/f", "@@ -1 +1 @@", "-text", "+<binary content, 2 bytes>"),
            )
        ],
    ),
    Case(
        "update empty file to text",
        [F("/f", b"")],
        [spec("/f", data=b"new\n")],
        [
            changed(
                "/f", state("file", 0o644), state("file", 0o644), H("/f", "@@ -0,0 +1 @@", "+new")
            )
        ],
    ),
    Case(
        "update mode only",
        [F("/f", b"same\n", 0o644)],
        [spec("/f", mode=0o600, data=b"same\n")],
        [changed("/f", state("file", 0o644), state("file", 0o600))],
    ),
    Case(
        "update adds setuid",
        [F("/f", b"x", 0o755)],
        [spec("/f", mode=0o4755, data=b"x")],
        [changed("/f", state("file", 0o755), state("file", 0o4755))],
    ),
    Case(
        "update owner and group by name",
        [F("/f", b"x")],
        [spec("/f", data=b"x", user="nobody", group="nogroup")],
        [changed("/f", state("file", 0o644), state("file", 0o644, 65534, 65534))],
    ),
    Case(
        "update group by id",
        [F("/f", b"x")],
        [spec("/f", data=b"x", gid=50)],
        [changed("/f", state("file", 0o644), state("file", 0o644, 0, 50))],
    ),
    Case(
        "update setgid file's group keeps the bit",
        [F("/f", b"x", 0o2755, 0, 0)],
        [spec("/f", mode=0o2755, data=b"x", group="staff")],
        [changed("/f", state("file", 0o2755), state("file", 0o2755, 0, 50))],
    ),
    Case(
        "update from an owner the host has no name for",
        [F("/f", b"x", uid=NAMELESS_ID, gid=NAMELESS_ID)],
        [spec("/f", data=b"x")],
        [changed("/f", state("file", 0o644, NAMELESS_ID, NAMELESS_ID), state("file", 0o644))],
    ),
    # --- update a symlink -----------------------------------------------------
    Case(
        "update symlink target",
        [L("/l", b"old")],
        [spec("/l", "symlink", data=b"new")],
        [
            changed(
                "/l",
                state("symlink", 0o777),
                state("symlink", 0o777),
                H("/l", "@@ -1 +1 @@", "-old", "+new"),
            )
        ],
    ),
    Case(
        "update symlink owner",
        [L("/l", b"t")],
        [spec("/l", "symlink", data=b"t", user="bin", group="adm")],
        [changed("/l", state("symlink", 0o777), state("symlink", 0o777, 2, 4))],
    ),
    # --- update a directory ---------------------------------------------------
    Case(
        "update dir mode",
        [D("/d", 0o755)],
        [spec("/d", "dir", 0o750)],
        [changed("/d", state("dir", 0o755), state("dir", 0o750))],
    ),
    Case(
        "update dir owner",
        [D("/d", 0o755)],
        [spec("/d", "dir", user="nobody", group="nogroup")],
        [changed("/d", state("dir", 0o755), state("dir", 0o755, 65534, 65534))],
    ),
    Case(
        "update dir mode and owner",
        [D("/d", 0o3755), F("/d/inside", b"kept")],
        [spec("/d", "dir", 0o2770, user="daemon", group="adm")],
        [changed("/d", state("dir", 0o3755), state("dir", 0o2770, 1, 4))],
        after=[D("/d", 0o2770, 1, 4), F("/d/inside", b"kept")],
    ),
    Case(
        "update dir to sticky",
        [D("/tmp", 0o777)],
        [spec("/tmp", "dir", 0o1777)],
        [changed("/tmp", state("dir", 0o777), state("dir", 0o1777))],
    ),
    Case(
        "update the root directory",
        [],
        [spec("/", "dir", 0o750, group="adm")],
        [changed("/", state("dir", 0o755), state("dir", 0o750, 0, 4))],
    ),
    # --- no-op --------------------------------------------------------------
    Case("no-op file", [F("/f", b"hello\n")], [spec("/f", data=b"hello\n")], []),
    Case(
        "no-op file with special bits and owner",
        [F("/f", b"x", 0o6755, 1, 50)],
        [spec("/f", mode=0o6755, data=b"x", user="daemon", group="staff")],
        [],
    ),
    Case("no-op empty file", [F("/f")], [spec("/f")], []),
    Case(
        "no-op dir",
        [D("/d", 0o2750, 65534, 4)],
        [spec("/d", "dir", 0o2750, uid=65534, group="adm")],
        [],
    ),
    Case("no-op symlink", [L("/l", b"target")], [spec("/l", "symlink", data=b"target")], []),
    Case("no-op root directory", [], [spec("/", "dir", 0o755)], []),
    # --- type changes ---------------------------------------------------------
    Case(
        "file to dir",
        [F("/x")],
        [spec("/x", "dir", 0o700)],
        [changed("/x", state("file", 0o644), state("dir", 0o700))],
    ),
    Case(
        "file with content to dir shows the lost content",
        [F("/x", b"gone\n")],
        [spec("/x", "dir")],
        [
            changed(
                "/x",
                state("file", 0o644),
                state("dir", 0o755),
                GONE("/x", "@@ -1 +0,0 @@", "-gone"),
            )
        ],
    ),
    Case(
        "file to symlink",
        [F("/x", b"data\n")],
        [spec("/x", "symlink", data=b"t")],
        [
            changed(
                "/x",
                state("file", 0o644),
                state("symlink", 0o777),
                H("/x", "@@ -1 +1 @@", "-data", "+t"),
            )
        ],
    ),
    Case(
        "symlink to file",
        [L("/x", b"t")],
        [spec("/x", data=b"data\n")],
        [
            changed(
                "/x",
                state("symlink", 0o777),
                state("file", 0o644),
                H("/x", "@@ -1 +1 @@", "-t", "+data"),
            )
        ],
    ),
    Case(
        "symlink to dir",
        [L("/x", b"t")],
        [spec("/x", "dir")],
        [
            changed(
                "/x",
                state("symlink", 0o777),
                state("dir", 0o755),
                GONE("/x", "@@ -1 +0,0 @@", "-t"),
            )
        ],
    ),
    Case(
        "empty dir to file",
        [D("/x")],
        [spec("/x", data=b"new\n")],
        [
            changed(
                "/x", state("dir", 0o755), state("file", 0o644), NEW("/x", "@@ -0,0 +1 @@", "+new")
            )
        ],
    ),
    Case(
        "empty dir to symlink",
        [D("/x", 0o700)],
        [spec("/x", "symlink", data=b"/somewhere")],
        [
            changed(
                "/x",
                state("dir", 0o700),
                state("symlink", 0o777),
                NEW("/x", "@@ -0,0 +1 @@", "+/somewhere"),
            )
        ],
    ),
    Case(
        "non-empty dir is never removed",
        [D("/x"), F("/x/keep", b"precious")],
        [spec("/x", data=b"new")],
        [
            changed(
                "/x",
                state("dir", 0o755),
                state("file", 0o644),
                NEW("/x", "@@ -0,0 +1 @@", "+new", NO_NL),
                Outcome.FAILED,
            )
        ],
        failures=[("/x", "non-empty directory")],
    ),
    Case(
        "fifo to file",
        [FIFO("/x")],
        [spec("/x", data=b"x")],
        [
            changed(
                "/x",
                state("fifo", 0o644),
                state("file", 0o644),
                NEW("/x", "@@ -0,0 +1 @@", "+x", NO_NL),
            )
        ],
    ),
    Case(
        "socket to file",
        [SOCK("/x")],
        [spec("/x", data=b"x")],
        [
            changed(
                "/x",
                state("socket", 0o755),
                state("file", 0o644),
                NEW("/x", "@@ -0,0 +1 @@", "+x", NO_NL),
            )
        ],
    ),
    Case(
        "device to file",
        [CHR("/x")],
        [spec("/x", data=b"x")],
        [
            changed(
                "/x",
                state("chardev", 0o666),
                state("file", 0o644),
                NEW("/x", "@@ -0,0 +1 @@", "+x", NO_NL),
            )
        ],
    ),
    Case(
        "fifo to dir",
        [FIFO("/x")],
        [spec("/x", "dir")],
        [changed("/x", state("fifo", 0o644), state("dir", 0o755))],
    ),
    Case(
        "fifo to symlink",
        [FIFO("/x")],
        [spec("/x", "symlink", data=b"t")],
        [
            changed(
                "/x",
                state("fifo", 0o644),
                state("symlink", 0o777),
                NEW("/x", "@@ -0,0 +1 @@", "+t"),
            )
        ],
    ),
    Case(
        "declared dir replaces a symlink, and files go below it",
        [D("/real"), L("/a", b"real")],
        [spec("/a", "dir"), spec("/a/x", data=b"x")],
        [
            changed(
                "/a",
                state("symlink", 0o777),
                state("dir", 0o755),
                GONE("/a", "@@ -1 +0,0 @@", "-real"),
            ),
            created("/a/x", "file", 0o644, diff=NEW("/a/x", "@@ -0,0 +1 @@", "+x", NO_NL)),
        ],
        after=[D("/real"), D("/a"), F("/a/x", b"x")],
    ),
    # --- failures -------------------------------------------------------------
    Case(
        "unknown user",
        [],
        [spec("/a", data=b"a", user="no-such-user"), spec("/b", data=b"b")],
        [created("/b", "file", 0o644, diff=NEW("/b", "@@ -0,0 +1 @@", "+b", NO_NL))],
        failures=[("/a", "unknown user 'no-such-user'")],
        after=[F("/b", b"b")],
    ),
    Case(
        "unknown group",
        [],
        [spec("/a", data=b"a", group="no-such-group")],
        [],
        failures=[("/a", "unknown group 'no-such-group'")],
    ),
    Case(
        "a failing file stops nothing else",
        [D("/b"), F("/b/keep")],
        [spec("/a", data=b"a"), spec("/b", data=b"b"), spec("/c", data=b"c")],
        [
            created("/a", "file", 0o644, diff=NEW("/a", "@@ -0,0 +1 @@", "+a", NO_NL)),
            changed(
                "/b",
                state("dir", 0o755),
                state("file", 0o644),
                NEW("/b", "@@ -0,0 +1 @@", "+b", NO_NL),
                Outcome.FAILED,
            ),
            created("/c", "file", 0o644, diff=NEW("/c", "@@ -0,0 +1 @@", "+c", NO_NL)),
        ],
        failures=[("/b", "non-empty directory")],
        after=[D("/b"), F("/b/keep"), F("/a", b"a"), F("/c", b"c")],
    ),
    Case(
        "missing parent that is not declared",
        [],
        [spec("/x/y", data=b"")],
        [],
        failures=[("/x/y", "directory /x does not exist")],
    ),
    Case(
        "missing grandparent that is not declared",
        [D("/a")],
        [spec("/a/x/y/z", data=b"")],
        [],
        failures=[("/a/x/y/z", "directory /a/x does not exist")],
    ),
    Case(
        "parent is a file",
        [F("/x")],
        [spec("/x/y")],
        [],
        failures=[("/x/y", "not a directory in path: /x is a file")],
    ),
    Case(
        "parent is a symlink",
        [D("/real"), L("/etc", b"real")],
        [spec("/etc/app")],
        [],
        failures=[("/etc/app", "symlink not permitted in path: /etc")],
    ),
    # --- one failure stops only what depends on it --------------------------------
    Case(
        "a failed new directory: what is below it is skipped, the rest applied",
        [],
        [
            spec("/d", "dir", user="no-such-user"),
            spec("/d/f", data=b"f"),
            spec("/d/sub", "dir"),
            spec("/d/sub/l", "symlink", data=b"t"),
            spec("/e", data=b"e"),
        ],
        [
            as_(
                Outcome.SKIPPED,
                created("/d/f", "file", 0o644, diff=NEW("/d/f", "@@ -0,0 +1 @@", "+f", NO_NL)),
            ),
            as_(Outcome.SKIPPED, created("/d/sub", "dir", 0o755)),
            as_(
                Outcome.SKIPPED,
                created("/d/sub/l", "symlink", 0o777, diff=NEW("/d/sub/l", "@@ -0,0 +1 @@", "+t")),
            ),
            created("/e", "file", 0o644, diff=NEW("/e", "@@ -0,0 +1 @@", "+e", NO_NL)),
        ],
        failures=[("/d", "unknown user 'no-such-user'")],
        after=[F("/e", b"e")],
    ),
    Case(
        "a failure in the middle of a tree over existing directories",
        [D("/a"), D("/a/b", 0o700), F("/a/b/f", b"old\n"), F("/a/b/same", b"s"), D("/a/c")],
        [
            spec("/a", "dir"),
            spec("/a/b", "dir", group="no-such-group"),
            spec("/a/b/f", data=b"new\n"),
            spec("/a/b/same", data=b"s"),
            spec("/a/c", "dir", 0o750),
            spec("/a/c/x", data=b"x"),
        ],
        [
            as_(
                Outcome.SKIPPED,
                changed(
                    "/a/b/f",
                    state("file", 0o644),
                    state("file", 0o644),
                    H("/a/b/f", "@@ -1 +1 @@", "-old", "+new"),
                ),
            ),
            changed("/a/c", state("dir", 0o755), state("dir", 0o750)),
            created("/a/c/x", "file", 0o644, diff=NEW("/a/c/x", "@@ -0,0 +1 @@", "+x", NO_NL)),
        ],
        failures=[("/a/b", "unknown group 'no-such-group'")],
        after=[
            D("/a"),
            D("/a/b", 0o700),
            F("/a/b/f", b"old\n"),
            F("/a/b/same", b"s"),
            D("/a/c", 0o750),
            F("/a/c/x", b"x"),
        ],
    ),
    Case(
        "removals below a failed directory are skipped",
        [D("/d"), F("/d/old", b"o\n"), F("/d/stray", b"s\n")],
        [spec("/d", "dir", user="no-such-user")],
        [
            as_(
                Outcome.SKIPPED,
                removed("/d/old", state("file", 0o644), GONE("/d/old", "@@ -1 +0,0 @@", "-o")),
            ),
            as_(
                Outcome.SKIPPED,
                removed("/d/stray", state("file", 0o644), GONE("/d/stray", "@@ -1 +0,0 @@", "-s")),
            ),
        ],
        failures=[("/d", "unknown user 'no-such-user'")],
        absent=[AbsentSpec("/d/old")],
        purge=["/d"],
    ),
    # --- absent.yaml: every type --------------------------------------------------
    Case(
        "absent file, symlink, fifo and empty directory; missing ones are fine",
        [
            D("/etc"),
            F("/etc/old", b"gone\n"),
            L("/etc/link", b"/target"),
            FIFO("/etc/fifo"),
            D("/etc/empty"),
        ],
        [],
        [
            removed("/etc/old", state("file", 0o644), GONE("/etc/old", "@@ -1 +0,0 @@", "-gone")),
            removed(
                "/etc/link", state("symlink", 0o777), GONE("/etc/link", "@@ -1 +0,0 @@", "-/target")
            ),
            removed("/etc/fifo", state("fifo", 0o644)),
            removed("/etc/empty", state("dir", 0o755)),
        ],
        after=[D("/etc")],
        absent=[
            AbsentSpec("/etc/empty"),
            AbsentSpec("/etc/fifo"),
            AbsentSpec("/etc/link"),
            AbsentSpec("/etc/missing"),
            AbsentSpec("/etc/old"),
            AbsentSpec("/no-such-dir/x"),
        ],
    ),
    Case(
        "absent non-empty directory without recursive is refused",
        [D("/d"), F("/d/f", b"x")],
        [spec("/other", data=b"o")],
        [
            created("/other", "file", 0o644, diff=NEW("/other", "@@ -0,0 +1 @@", "+o", NO_NL)),
            as_(Outcome.FAILED, removed("/d", state("dir", 0o755))),
        ],
        failures=[("/d", "recursive: true")],
        after=[D("/d"), F("/d/f", b"x"), F("/other", b"o")],
        absent=[AbsentSpec("/d")],
    ),
    Case(
        "absent tree removed recursively, every type below it",
        [
            D("/t", 0o700),
            F("/t/a", b"a\n"),
            D("/t/sub"),
            D("/t/sub/empty"),
            L("/t/sub/l", b"x"),
            FIFO("/t/sub/p"),
            SOCK("/t/sub/s"),
        ],
        [],
        [
            removed("/t", state("dir", 0o700)),
            removed("/t/a", state("file", 0o644), GONE("/t/a", "@@ -1 +0,0 @@", "-a")),
            removed("/t/sub", state("dir", 0o755)),
            removed("/t/sub/empty", state("dir", 0o755)),
            removed("/t/sub/l", state("symlink", 0o777), GONE("/t/sub/l", "@@ -1 +0,0 @@", "-x")),
            removed("/t/sub/p", state("fifo", 0o644)),
            removed("/t/sub/s", state("socket", 0o755)),
        ],
        after=[],
        absent=[AbsentSpec("/t", recursive=True)],
    ),
    # --- purge.yaml ---------------------------------------------------------------
    Case(
        "purge removes every undeclared entry, below declared directories too",
        [
            D("/p"),
            F("/p/keep", b"k"),
            F("/p/stray", b"s\n"),
            L("/p/link", b"/etc/passwd"),
            D("/p/tree"),
            F("/p/tree/x", b"x\n"),
            D("/p/kept-dir"),
            F("/p/kept-dir/declared", b"d"),
            F("/p/kept-dir/undeclared", b"u\n"),
            FIFO("/p/fifo"),
        ],
        [
            spec("/p", "dir"),
            spec("/p/keep", data=b"k"),
            spec("/p/kept-dir", "dir"),
            spec("/p/kept-dir/declared", data=b"d"),
        ],
        [
            removed("/p/fifo", state("fifo", 0o644)),
            removed(
                "/p/kept-dir/undeclared",
                state("file", 0o644),
                GONE("/p/kept-dir/undeclared", "@@ -1 +0,0 @@", "-u"),
            ),
            removed(
                "/p/link", state("symlink", 0o777), GONE("/p/link", "@@ -1 +0,0 @@", "-/etc/passwd")
            ),
            removed("/p/stray", state("file", 0o644), GONE("/p/stray", "@@ -1 +0,0 @@", "-s")),
            removed("/p/tree", state("dir", 0o755)),
            removed("/p/tree/x", state("file", 0o644), GONE("/p/tree/x", "@@ -1 +0,0 @@", "-x")),
        ],
        after=[D("/p"), F("/p/keep", b"k"), D("/p/kept-dir"), F("/p/kept-dir/declared", b"d")],
        purge=["/p"],
    ),
    Case("purge of a missing directory does nothing", [], [], [], purge=["/none"]),
    # Names that are not UTF-8 (surrogateescape keeps their bytes): removed as
    # any other, reported with each such byte as \xNN and a backslash doubled,
    # so the real name "caf\xe9.conf" (with a backslash) stays apart.
    Case(
        "purge removes names that are not UTF-8 and reports them escaped",
        [
            D("/p"),
            F("/p/caf\udce9.conf", b"latin-1\n"),
            F("/p/caf\\xe9.conf", b"backslash\n"),
            D("/p/d\udcff"),
            L("/p/d\udcff/l", b"\xfe\xff-target"),
            F("/p/old.conf", b"old\n"),
        ],
        [spec("/p", "dir")],
        [
            removed("/p/caf\\\\xe9.conf", state("file", 0o644), SECRET(b"backslash\n", None)),
            removed(
                "/p/caf\\xe9.conf",
                state("file", 0o644),
                GONE("/p/caf\\xe9.conf", "@@ -1 +0,0 @@", "-latin-1"),
            ),
            removed("/p/d\\xff", state("dir", 0o755)),
            removed(
                "/p/d\\xff/l",
                state("symlink", 0o777),
                GONE("/p/d\\xff/l", "@@ -1 +0,0 @@", "-<binary content, 9 bytes>"),
            ),
            removed(
                "/p/old.conf", state("file", 0o644), GONE("/p/old.conf", "@@ -1 +0,0 @@", "-old")
            ),
        ],
        after=[D("/p")],
        purge=["/p"],
        # The real name is secret: its escaped report path is not what counts.
        secrets=["/p/caf\\xe9.conf"],
    ),
    Case(
        "absent tree with names that are not UTF-8 is removed and reported escaped",
        [D("/t"), D("/t/\udce9t\udce9"), F("/t/\udce9t\udce9/f\\", b"f\n")],
        [],
        [
            removed("/t", state("dir", 0o755)),
            removed("/t/\\xe9t\\xe9", state("dir", 0o755)),
            removed(
                "/t/\\xe9t\\xe9/f\\\\",
                state("file", 0o644),
                GONE("/t/\\xe9t\\xe9/f\\\\", "@@ -1 +0,0 @@", "-f"),
            ),
        ],
        after=[],
        absent=[AbsentSpec("/t", recursive=True)],
    ),
    # --- pass-through directories -------------------------------------------------
    Case(
        "pass-through directories are created when missing and never changed",
        [D("/usr", 0o750), D("/usr/local", 0o711, 1, 1), F("/opt")],
        [
            PT("/"),
            PT("/opt"),
            spec("/opt/x", data=b"x"),
            PT("/usr"),
            PT("/usr/local"),
            PT("/usr/local/bin"),
            spec("/usr/local/bin/tool", mode=0o755, data=b"#!/bin/sh\n"),
        ],
        [
            changed("/opt", state("file", 0o644), state("dir", 0o755)),
            created("/opt/x", "file", 0o644, diff=NEW("/opt/x", "@@ -0,0 +1 @@", "+x", NO_NL)),
            created("/usr/local/bin", "dir", 0o755),
            created(
                "/usr/local/bin/tool",
                "file",
                0o755,
                diff=NEW("/usr/local/bin/tool", "@@ -0,0 +1 @@", "+#!/bin/sh"),
            ),
        ],
        after=[
            D("/opt"),
            F("/opt/x", b"x"),
            D("/usr", 0o750),
            D("/usr/local", 0o711, 1, 1),
            D("/usr/local/bin"),
            F("/usr/local/bin/tool", b"#!/bin/sh\n", 0o755),
        ],
    ),
    Case(
        "a pass-through directory that is a symlink is kept, and nothing below it is tried",
        [D("/usr"), D("/usr/lib"), L("/lib", b"usr/lib"), D("/srv")],
        [
            PT("/lib"),
            PT("/lib/systemd"),
            spec("/lib/systemd/app.service", data=b"[Unit]\n"),
            PT("/srv"),
            spec("/srv/x", data=b"x"),
        ],
        [
            as_(Outcome.SKIPPED, created("/lib/systemd", "dir", 0o755)),
            as_(
                Outcome.SKIPPED,
                created(
                    "/lib/systemd/app.service",
                    "file",
                    0o644,
                    diff=NEW("/lib/systemd/app.service", "@@ -0,0 +1 @@", "+[Unit]"),
                ),
            ),
            created("/srv/x", "file", 0o644, diff=NEW("/srv/x", "@@ -0,0 +1 @@", "+x", NO_NL)),
        ],
        failures=[("/lib", "is a symlink on this host (to 'usr/lib')")],
        after=[D("/usr"), D("/usr/lib"), L("/lib", b"usr/lib"), D("/srv"), F("/srv/x", b"x")],
    ),
    # --- secrets.yaml: never a byte of content ------------------------------------
    Case(
        "secret content is one line of short hashes, when created, changed or removed",
        [D("/s"), F("/s/key", b"old-key\n"), F("/s/gone", b"pw\n"), F("/plain", b"a\n")],
        [
            spec("/s", "dir"),
            spec("/s/key", mode=0o600, data=b"new-key\n"),
            spec("/s/new", data=b"token"),
            spec("/plain", data=b"b\n"),
        ],
        [
            changed(
                "/plain",
                state("file", 0o644),
                state("file", 0o644),
                H("/plain", "@@ -1 +1 @@", "-a", "+b"),
            ),
            changed(
                "/s/key",
                state("file", 0o644),
                state("file", 0o600),
                SECRET(b"old-key\n", b"new-key\n"),
            ),
            created("/s/new", "file", 0o644, diff=SECRET(None, b"token")),
            removed("/s/gone", state("file", 0o644), SECRET(b"pw\n", None)),
        ],
        after=[
            D("/s"),
            F("/s/key", b"new-key\n", 0o600),
            F("/s/new", b"token"),
            F("/plain", b"b\n"),
        ],
        absent=[AbsentSpec("/s/gone")],
        secrets=["/s"],
    ),
    # --- invalid input: refused before any syscall ------------------------------
    Case(
        "invalid: a path declared twice",
        [],
        [spec("/a"), spec("/b"), spec("/a", data=b"again")],
        [],
        failures=[("/a", "declared more than once")],
    ),
    Case(
        "invalid: relative path",
        [],
        [spec("/ok"), spec("etc/x")],
        [],
        failures=[("etc/x", "not absolute")],
    ),
    Case("invalid: dot-dot", [], [spec("/a/../b")], [], failures=[("/a/../b", "'..' component")]),
    Case(
        "invalid: a file with something below it",
        [],
        [spec("/a"), spec("/a/b")],
        [],
        failures=[("/a/b", "its parent /a is declared as a file")],
    ),
    Case(
        "invalid: the root as a file",
        [],
        [spec("/", "file")],
        [],
        failures=[("/", "can only be declared as a directory")],
    ),
    Case(
        "invalid: a name reserved for temporary files",
        [],
        [spec("/.x.safcm-tmp-0123456789abcdef")],
        [],
        failures=[("/.x.safcm-tmp-0123456789abcdef", "reserved")],
    ),
    Case(
        "invalid: a path that is not a string",
        [],
        [spec("/a"), FileSpec(None, FileType.FILE, 0o644, user="root", group="root")],
        [],
        failures=[("None", "path is empty")],
    ),
    Case(
        "invalid: both user and uid",
        [],
        [FileSpec("/a", FileType.FILE, 0o644, user="root", uid=0, group="root")],
        [],
        failures=[("/a", "exactly one of user and uid")],
    ),
]


def expected_after(case: Case) -> dict[str, Entry]:
    if case.after is not None:
        entries = case.after
    elif case.failures:
        entries = case.before
    else:
        entries = {e.path: e for e in case.before} | {e.path: e for e in entries_of(case.files)}
        entries = [e for p, e in entries.items() if p != "/"]
    return {e.path: e for e in entries}


def temp_names(root: str) -> list[str]:
    return [
        os.path.join(d, n)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
        if is_temp_name(n)
    ]


def check_failures(result, case: Case) -> None:
    assert len(result.failures) == len(case.failures), result.failures
    for failure, (path, reason) in zip(result.failures, case.failures, strict=True):
        assert failure.path == path
        assert reason in failure.reason


def apply_case(host: Host, case: Case, *, dry_run: bool = False):
    return host.apply(
        case.files, dry_run=dry_run, absent=case.absent, purge=case.purge, secrets=case.secrets
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_apply(case: Case, host: Host, engine_mode):
    make(host.root, case.before)

    result = apply_case(host, case)

    assert shape(result.changes) == case.changes
    check_failures(result, case)
    assert read_tree(host.root) == expected_after(case)
    assert temp_names(host.root) == []
    assert not result.dry_run
    if not case.failures:
        # A second apply finds nothing to do, and touches nothing at all: no
        # write, rename, chmod or chown (each would change an inode or ctime).
        before = snapshot(host.root)
        again = apply_case(host, case)
        assert again.changes == []
        assert again.failures == []
        assert snapshot(host.root) == before


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_dry_run_reports_what_the_real_run_does(case: Case, tmp_path, engine_mode):
    dry_host, real_host = new_host(str(tmp_path / "dry")), new_host(str(tmp_path / "real"))
    make(dry_host.root, case.before)
    make(real_host.root, case.before)
    before = snapshot(dry_host.root)

    dry = apply_case(dry_host, case, dry_run=True)
    real = apply_case(real_host, case)

    assert snapshot(dry_host.root) == before  # nothing written
    assert dry.dry_run
    assert all(c.outcome is not Outcome.APPLIED for c in dry.changes)
    assert as_real(dry.changes) == real.changes
    assert shape(real.changes) == case.changes
    assert dry.failures == real.failures
    check_failures(dry, case)


# ---------------------------------------------------------------------------
# Resolution, temporary files and descriptors.


def test_openat2_is_used_when_available(host: Host, monkeypatch):
    if not fileops.openat2_available():
        pytest.skip("this kernel has no openat2")
    calls = []
    real = fileops._openat2_dir

    def spy(dirfd, path):
        calls.append(path)
        return real(dirfd, path)

    monkeypatch.setattr(fileops, "_openat2_dir", spy)
    make(host.root, [D("/a"), D("/a/b")])
    result = host.apply([spec("/a/b/c", data=b"x"), spec("/a/b/d", data=b"y")])
    assert result.failures == []
    assert calls == [b"a/b"]  # one call for the whole path, then the cache


def test_forced_walk_never_calls_openat2(host: Host, monkeypatch):
    def refuse(dirfd, path):
        raise AssertionError("openat2 called in walk mode")

    monkeypatch.setattr(fileops, "_openat2_dir", refuse)
    monkeypatch.setattr(fileops, "FORCE_RESOLVE", Resolve.WALK)
    make(host.root, [D("/a"), D("/a/b")])
    result = host.apply([spec("/a/b/c", data=b"x")])
    assert result.failures == []
    assert read_tree(host.root)["/a/b/c"].data == b"x"


@pytest.mark.parametrize(
    ("temp", "links"),
    [(Temp.TMPFILE, 1), (Temp.TMPFILE_PROC, 1), (Temp.NAMED, 0)],
    ids=["tmpfile", "tmpfile-proc", "named"],
)
def test_temp_file_methods(host: Host, monkeypatch, temp, links):
    calls = []
    real = fileops._link_tmpfile

    def spy(fd, dirfd, name, proc):
        calls.append(proc)
        return real(fd, dirfd, name, proc)

    monkeypatch.setattr(fileops, "_link_tmpfile", spy)
    monkeypatch.setattr(fileops, "FORCE_TEMP", temp)
    result = host.apply([spec("/f", mode=0o640, data=b"content", group="adm")])
    assert result.failures == []
    assert read_tree(host.root)["/f"] == F("/f", b"content", 0o640, 0, 4)
    assert calls == [temp is Temp.TMPFILE_PROC] * links


def test_falls_back_to_named_temp_without_o_tmpfile(host: Host, monkeypatch):
    """A filesystem without O_TMPFILE support answers EOPNOTSUPP; simulate that answer."""
    real_open = os.open

    def no_tmpfile(path, flags, *args, **kw):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(fileops.os, "open", no_tmpfile)
    monkeypatch.setattr(fileops, "_link_tmpfile", None)  # must not be reached
    result = host.apply([spec("/f", data=b"via a named temporary")])
    assert result.failures == []
    assert read_tree(host.root) == {"/f": F("/f", b"via a named temporary")}


def test_stale_temporaries_are_removed_and_nothing_else(host: Host, resolve_mode):
    stale = [".f.safcm-tmp-0123456789abcdef", ".other.safcm-tmp-fedcba9876543210"]
    kept = [
        "x.safcm-tmp-0123456789abcdef",  # no leading dot
        ".x.safcm-tmp-0123456789ABCDEF",  # not our (lower-case) hex
        ".x.safcm-tmp-0123456789abcde",  # too short
        ".x.safcm-tmp-0123456789abcdef.bak",  # something after the token
        "unrelated",
    ]
    full = ".full.safcm-tmp-00000000aaaaaaaa"  # a directory with something in it
    make(host.root, [D("/d"), D("/d/" + full), F(f"/d/{full}/x", b"keep")])
    make(host.root, [F("/d/" + n, b"stale") for n in stale[:1]])
    make(host.root, [L("/d/" + stale[1], b"/somewhere")])
    make(host.root, [F("/d/" + n, b"keep") for n in kept])
    files = [spec("/d/f", data=b"new")]

    dry = host.apply(files, dry_run=True)
    assert dry.failures == []
    assert all(os.path.lexists(f"{host.root}/d/{n}") for n in stale)  # a dry run removes nothing

    result = host.apply(files)
    assert result.failures == []
    names = set(os.listdir(host.root + "/d"))
    assert names == {*kept, "f", full}  # never a directory that holds anything
    assert os.listdir(f"{host.root}/d/{full}") == ["x"]


def test_an_empty_temporary_directory_a_crash_left_is_removed(host: Host, resolve_mode):
    # What a kill between mkdir and the rename into place leaves: an empty
    # directory with a temporary name, 0700 (or its final mode already).
    leftover = ".new.safcm-tmp-0123456789abcdef"
    link = ".link.safcm-tmp-fedcba9876543210"  # a symlink to a directory: unlinked
    os.makedirs(host.outside + "/victim")
    make(host.root, [D("/d"), D("/d/" + leftover, 0o700), D("/d/.x.safcm-tmp-00000000000000ff")])
    os.symlink(host.outside + "/victim", f"{host.root}/d/{link}")
    outside = snapshot(host.outside)

    dry = host.apply([spec("/d/f", data=b"x")], dry_run=True)
    assert dry.failures == []
    assert os.path.isdir(f"{host.root}/d/{leftover}")  # a dry run removes nothing

    result = host.apply([spec("/d/f", data=b"x")])
    assert result.failures == []
    assert sorted(os.listdir(host.root + "/d")) == ["f"]
    assert snapshot(host.outside) == outside  # the symlink's target is untouched


def test_small_descriptor_cache_still_applies_everything(host: Host, engine_mode, monkeypatch):
    monkeypatch.setattr(fileops, "DIR_CACHE_MAX", 2)
    files = [spec("/t", "dir")]
    for i in range(6):
        files.append(spec(f"/t/d{i}", "dir"))
        files += [spec(f"/t/d{i}/s{j}", "dir") for j in range(3)]
        files += [spec(f"/t/d{i}/s{j}/f", data=b"%d.%d" % (i, j)) for j in range(3)]
    fds = open_fds()
    result = host.apply(files)
    assert result.failures == []
    assert len(result.changes) == len(files)
    assert read_tree(host.root) == {e.path: e for e in entries_of(files)}
    assert open_fds() == fds
    # Everything is found again through a cache that keeps evicting.
    assert host.apply(files).changes == []


def test_descriptors_are_closed_after_a_failure(host: Host, engine_mode):
    make(host.root, [D("/a"), D("/b"), F("/b/keep")])
    fds = open_fds()
    result = host.apply([spec("/a/x", data=b"x"), spec("/b", data=b"b"), spec("/c")])
    assert result.failures[0].path == "/b"
    assert open_fds() == fds


def test_cache_forgets_a_removed_directory(host: Host, resolve_mode):
    make(host.root, [D("/a"), D("/a/b")])
    rootfd = os.open(host.root, os.O_RDONLY | os.O_DIRECTORY)
    dirs = fileops._Dirs(rootfd, resolve_mode, before_close=lambda: None)
    try:
        old = os.fstat(dirs.get("a/b", "/a/b/x")).st_ino
        os.rename(host.root + "/a", host.root + "/a-old")
        os.makedirs(host.root + "/a/b")
        new = os.stat(host.root + "/a/b").st_ino
        assert os.fstat(dirs.get("a/b", "/a/b/x")).st_ino == old  # still the cached one
        dirs.forget("a")
        assert os.fstat(dirs.get("a/b", "/a/b/x")).st_ino == new
    finally:
        dirs.finish()
        os.close(rootfd)


def test_unreadable_root_is_an_error_naming_it(tmp_path):
    missing = str(tmp_path / "no-such-root")
    with pytest.raises(FileOpError) as info:
        fileops.apply_files(
            missing, [spec("/f")], dry_run=False, state_dir=str(tmp_path / "s"), jid=JID
        )
    assert info.value.path == missing
    assert "cannot open the root directory" in info.value.reason


def test_failure_path_and_error_types(host: Host):
    make(host.root, [D("/real"), L("/etc", b"real")])
    result = host.apply([spec("/etc/app/x")])
    assert result.failures[0].path == "/etc/app/x"
    assert result.failures[0].reason == "symlink not permitted in path: /etc"


# ---------------------------------------------------------------------------
# Large files: read no more than needed, diff within caps.


def test_large_file_is_replaced_and_the_diff_says_it_is_too_large(host: Host):
    from safcm.minion.diff import DIFF_INPUT_MAX, DIFF_TEXT_MAX

    big = b"line\n" * (DIFF_INPUT_MAX // 5 + 10)
    make(host.root, [F("/big", big)])
    result = host.apply([spec("/big", data=b"small\n")])
    (change,) = result.changes
    assert change.diff == H(
        "/big",
        "@@ -1 +1 @@",
        f"-<content not diffed, {len(big)} bytes: too large to diff>",
        "+small",
    )
    assert len(change.diff) < DIFF_TEXT_MAX
    assert read_tree(host.root)["/big"].data == b"small\n"


def test_same_size_file_that_grows_while_read_is_different(host: Host):
    # The engine reads one byte more than declared; a file of the declared
    # size whose content matches a prefix still compares unequal if longer.
    make(host.root, [F("/f", b"abcdef")])
    result = host.apply([spec("/f", data=b"abc")])
    assert [c.path for c in result.changes] == ["/f"]
    assert read_tree(host.root)["/f"].data == b"abc"


# ---------------------------------------------------------------------------
# Triggers, through apply_files.


def test_triggers_of_changed_paths_and_their_parents_run_once_in_order(host: Host):
    log = host.outside + "/log"
    files = [
        spec("/etc", "dir", triggers=(f"echo etc >> {log}", "echo shared")),
        spec("/etc/a", data=b"a", triggers=(f"echo a >> {log}", "echo shared")),
        spec("/etc/b", data=b"b", triggers=(f"echo b >> {log}",)),
        spec("/other", data=b"o", triggers=(f"echo other >> {log}",)),
    ]
    make(host.root, [D("/etc"), F("/other", b"o")])  # /etc and /other are unchanged
    result = host.apply(files)
    assert [t.command for t in result.triggers] == [
        f"echo etc >> {log}",
        "echo shared",
        f"echo a >> {log}",
        f"echo b >> {log}",
    ]
    assert all(t.status is TriggerStatus.OK for t in result.triggers)
    assert result.triggers[1].output == "shared\n"
    with open(log) as f:
        assert f.read() == "etc\na\nb\n"
    assert host.apply(files).triggers == []  # nothing changed, nothing runs


def test_triggers_in_dry_run_are_listed_not_run(host: Host):
    marker = host.outside + "/ran"
    result = host.apply([spec("/f", data=b"x", triggers=(f"touch {marker}",))], dry_run=True)
    assert [(t.command, t.status) for t in result.triggers] == [
        (f"touch {marker}", TriggerStatus.WOULD_RUN)
    ]
    assert not os.path.exists(marker)


def test_no_trigger_runs_after_a_failed_file(host: Host):
    marker = host.outside + "/ran"
    make(host.root, [D("/b"), F("/b/keep")])
    result = host.apply(
        [spec("/a", data=b"a", triggers=(f"touch {marker}",)), spec("/b", data=b"b")]
    )
    assert result.failures[0].path == "/b"
    assert result.triggers == []
    assert not os.path.exists(marker)


# A child that applies one file whose trigger kills the child (SIGKILL) the
# first time it runs: the minion dies after the change and before its trigger
# finished. argv: root, state dir, the trigger command.
_KILLED_APPLY = """
import sys
from safcm.common.model import FileSpec, FileType
from safcm.minion import fileops
root, state, trigger = sys.argv[1:]
f = FileSpec(
    "/app.conf", FileType.FILE, 0o644, user="root", group="root", data=b"new\\n",
    triggers=(trigger,),
)
result = fileops.apply_files(root, [f], dry_run=False, state_dir=state, jid=JID)
sys.exit(f"the trigger did not kill this apply: {result}")
"""


def test_a_trigger_is_owed_before_its_change_so_a_kill_cannot_lose_it(host: Host):
    # The next apply finds the file as declared and changes nothing: only
    # the owed list, written before the change, still knows the trigger.
    first, log = host.outside + "/first", host.outside + "/log"
    trigger = f"if [ -e {first} ]; then echo ran >> {log}; else touch {first}; kill -KILL $PPID; fi"
    script = _KILLED_APPLY.replace("JID", repr(JID))
    child = subprocess.run(
        [sys.executable, "-c", script, host.root, host.state, trigger], timeout=60, check=False
    )
    assert child.returncode == -9  # killed by its trigger
    assert os.path.exists(first)
    with open(host.root + "/app.conf", "rb") as f:
        assert f.read() == b"new\n"

    spec_ = spec("/app.conf", data=b"new\n", triggers=(trigger,))
    again = host.apply([spec_], jid="20260101T000001.000000Z")
    assert again.changes == []
    assert [(t.command, t.status) for t in again.triggers] == [(trigger, TriggerStatus.OK)]
    assert [o.jid for o in again.owed] == []
    assert [o.jid for o in owed.load(host.state)] == []
    with open(log) as f:
        assert f.read() == "ran\n"


def test_a_change_whose_trigger_cannot_be_owed_is_not_made(host: Host, immutable):
    marker = host.outside + "/ran"
    host.apply([])  # makes the lock file, which an immutable directory keeps
    immutable(host.state)
    result = host.apply(
        [spec("/a", data=b"a", triggers=(f"touch {marker}",)), spec("/b", data=b"b")]
    )
    assert [(f.path, "its triggers cannot be owed first" in f.reason) for f in result.failures] == [
        ("/a", True)
    ]
    assert [(c.path, c.outcome) for c in result.changes] == [
        ("/a", Outcome.FAILED),
        ("/b", Outcome.APPLIED),
    ]
    assert not os.path.exists(host.root + "/a")
    assert os.path.exists(host.root + "/b")
    assert result.triggers == []
    assert not os.path.exists(marker)


def test_triggers_that_ran_but_cannot_be_cleared_are_a_failure_not_a_lost_report(host: Host):
    # The trigger makes the state directory refuse writes (as a full disk
    # would) after it was owed: the report keeps the change and the run.
    trigger = f"chattr +i {host.state}"
    try:
        result = host.apply([spec("/a", data=b"a", triggers=(trigger,))])
    finally:
        set_immutable(host.state, False)
    assert [(c.path, c.outcome) for c in result.changes] == [("/a", Outcome.APPLIED)]
    assert [(t.command, t.status) for t in result.triggers] == [(trigger, TriggerStatus.OK)]
    assert [f.path for f in result.failures] == [""]
    assert "ran the triggers, but cannot clear them" in result.failures[0].reason
    assert [o.command for o in result.owed] == [trigger]
    assert [o.command for o in owed.load(host.state)] == [trigger]


def test_triggers_see_the_root_and_run_while_the_lock_is_held(host: Host):
    import sys

    lock = os.path.join(host.state, fileops.LOCK_NAME)
    try_lock = (
        f"{sys.executable} -c 'import fcntl, os, sys; "
        f"fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB)' {lock}"
    )
    result = host.apply([spec("/f", data=b"x", triggers=('cat "$SAFCM_ROOT/f"; pwd', try_lock))])
    show, locked = result.triggers
    assert show.output == "x/\n"
    assert locked.status is TriggerStatus.FAILED
    assert "BlockingIOError" in locked.output


# ---------------------------------------------------------------------------
# The engine lock.


def hold_lock(host: Host) -> int:
    fd = os.open(os.path.join(host.state, fileops.LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_second_apply_gives_up_with_lock_error(host: Host):
    fd = hold_lock(host)
    try:
        with pytest.raises(LockError, match="another apply holds the engine lock"):
            host.apply([spec("/f", data=b"x")], lock_timeout=0.2)
        assert read_tree(host.root) == {}
    finally:
        os.close(fd)
    assert host.apply([spec("/f", data=b"x")]).failures == []


def test_apply_waits_for_the_lock(host: Host):
    fd = hold_lock(host)
    release = threading.Timer(0.3, os.close, args=(fd,))
    release.start()
    try:
        result = host.apply([spec("/f", data=b"x")], lock_timeout=30)
    finally:
        release.join()
    assert result.failures == []
    assert read_tree(host.root) == {"/f": F("/f", b"x")}


def test_lock_error_when_the_state_dir_cannot_be_made(host: Host, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(LockError, match="cannot open the engine lock"):
        fileops.apply_files(host.root, [], dry_run=False, state_dir=str(blocker / "state"), jid=JID)


# ---------------------------------------------------------------------------
# The order of chown and chmod. Linux keeps a directory's setgid bit across
# chown, so the final state cannot show the order; a spy that passes every
# call through records it.


def record_metadata_calls(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    real_fchmod, real_fchown = os.fchmod, os.fchown

    def fchmod(fd, mode):
        calls.append(("chmod", mode))
        return real_fchmod(fd, mode)

    def fchown(fd, uid, gid):
        calls.append(("chown", uid, gid))
        return real_fchown(fd, uid, gid)

    monkeypatch.setattr(fileops.os, "fchmod", fchmod)
    monkeypatch.setattr(fileops.os, "fchown", fchown)
    return calls


def test_existing_dir_is_closed_to_group_and_other_before_chown(host: Host, monkeypatch):
    make(host.root, [D("/d", 0o3775)])
    calls = record_metadata_calls(monkeypatch)
    result = host.apply([spec("/d", "dir", 0o2750, user="nobody", group="adm")])
    assert result.failures == []
    assert calls == [("chmod", 0o3700), ("chown", 65534, 4), ("chmod", 0o2750)]


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_new_files_and_dirs_are_chowned_before_chmod(host: Host, monkeypatch, kind):
    calls = record_metadata_calls(monkeypatch)
    result = host.apply([spec("/x", kind, 0o6750, user="daemon", group="staff")])
    assert result.failures == []
    assert calls == [("chown", 1, 50), ("chmod", 0o6750)]


# A new directory is made whole under a temporary name, then renamed into
# place without replacing anything (renameat2(RENAME_NOREPLACE), or plain
# rename where the kernel or filesystem lacks it).


def test_a_new_directory_is_whole_before_it_appears_at_its_path(host: Host, monkeypatch):
    seen = []
    real = fileops._rename_dir_noreplace

    def rename(dirfd: int, tmp: str, name: str) -> None:
        st = os.stat(tmp, dir_fd=dirfd, follow_symlinks=False)
        seen.append((is_temp_name(tmp), name, st.st_mode & 0o7777, st.st_uid, os.listdir(dirfd)))
        real(dirfd, tmp, name)

    monkeypatch.setattr(fileops, "_rename_dir_noreplace", rename)
    result = host.apply([PT("/usr"), spec("/usr/srv", "dir", 0o2750, user="nobody")])
    assert result.failures == []
    assert [s[:4] for s in seen] == [(True, "usr", 0o755, 0), (True, "srv", 0o2750, 65534)]
    assert "usr" not in seen[0][4]  # nothing at the path until it is whole


@pytest.mark.parametrize("noreplace", [True, False], ids=["renameat2", "rename"])
@pytest.mark.parametrize("kind", ["file", "symlink", "full-dir", "empty-dir"])
def test_a_new_directory_never_replaces_what_appeared_at_its_name(
    tmp_path, monkeypatch, noreplace, kind
):
    if noreplace and not fileops._noreplace_works:
        pytest.skip("no renameat2(RENAME_NOREPLACE) here")
    monkeypatch.setattr(fileops, "_noreplace_works", noreplace)
    os.mkdir(tmp_path / ".x.safcm-tmp-0123456789abcdef")
    target = tmp_path / "x"
    if kind == "file":
        target.write_bytes(b"there first")
    elif kind == "symlink":
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.mkdir()
        if kind == "full-dir":
            (target / "f").write_bytes(b"there first")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if kind == "empty-dir" and not noreplace:
            # Plain rename replaces an empty directory, and only that: the
            # declared one is as good in its place.
            fileops._rename_dir_noreplace(fd, ".x.safcm-tmp-0123456789abcdef", "x")
            assert sorted(os.listdir(tmp_path)) == ["x"]
            return
        with pytest.raises(FileExistsError):
            fileops._rename_dir_noreplace(fd, ".x.safcm-tmp-0123456789abcdef", "x")
    finally:
        os.close(fd)
    assert os.path.isdir(tmp_path / ".x.safcm-tmp-0123456789abcdef")
    if kind == "file":
        assert target.read_bytes() == b"there first"
    elif kind == "full-dir":
        assert (target / "f").read_bytes() == b"there first"


def test_a_name_taken_while_a_directory_is_made_fails_that_path_only(host: Host, monkeypatch):
    real = fileops._rename_dir_noreplace

    def rename(dirfd: int, tmp: str, name: str) -> None:
        if name == "d":  # another program makes a file there first
            fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dirfd)
            os.close(fd)
        real(dirfd, tmp, name)

    monkeypatch.setattr(fileops, "_rename_dir_noreplace", rename)
    result = host.apply([spec("/d", "dir"), spec("/d/f", data=b"f"), spec("/e", "dir")])
    assert [(f.path, f.reason) for f in result.failures] == [
        ("/d", "something appeared at the path while safcm made it; apply again")
    ]
    assert [(c.path, c.outcome) for c in result.changes] == [
        ("/d", Outcome.FAILED),
        ("/d/f", Outcome.SKIPPED),
        ("/e", Outcome.APPLIED),
    ]
    assert read_tree(host.root) == {"/d": F("/d"), "/e": D("/e")}  # no temporary left


# ---------------------------------------------------------------------------
# Real failures while acting: the immutable attribute makes the kernel refuse.

FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602
FS_IMMUTABLE_FL = 0x10


def set_immutable(path: str, on: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8))[0]
        flags = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags))
    finally:
        os.close(fd)


@pytest.fixture
def immutable():
    marked = []

    def mark(path):
        set_immutable(path, True)
        marked.append(path)

    yield mark
    for path in reversed(marked):
        set_immutable(path, False)


@pytest.mark.parametrize(
    ("locked", "reason"),
    [
        ("/d/f", "renaming the new version into place: Operation not permitted"),
        ("/d", "creating a temporary file: Operation not permitted"),
    ],
    ids=["file", "directory"],
)
def test_a_change_that_fails_is_still_recorded(host: Host, engine_mode, immutable, locked, reason):
    make(host.root, [D("/d"), F("/d/f", b"old\n")])
    immutable(host.root + locked)
    result = host.apply([spec("/d/f", data=b"new\n"), spec("/z", data=b"z\n")])
    assert shape(result.changes) == [
        changed(
            "/d/f",
            state("file", 0o644),
            state("file", 0o644),
            H("/d/f", "@@ -1 +1 @@", "-old", "+new"),
            Outcome.FAILED,
        ),
        created("/z", "file", 0o644, diff=NEW("/z", "@@ -0,0 +1 @@", "+z")),
    ]
    assert result.changes[0].reason == reason
    assert [(f.path, f.reason) for f in result.failures] == [("/d/f", reason)]
    assert result.triggers == []
    assert read_tree(host.root) == {
        "/d": D("/d"),
        "/d/f": F("/d/f", b"old\n"),
        "/z": F("/z", b"z\n"),  # a failure stops only what depends on it
    }


# ---------------------------------------------------------------------------
# Writes run on a writer thread while the next files are observed. A write
# that fails there is reported as failed, and stops nothing else.


def test_failed_queued_write_stops_nothing_else(host: Host, engine_mode, immutable):
    make(host.root, [D("/d"), F("/d/f", b"old\n"), D("/e")])
    immutable(host.root + "/d/f")
    files = [
        spec("/d/f", data=b"new\n"),  # queued; its rename fails
        spec("/d/g", data=b"g"),  # queued behind it
        spec("/e", "dir", 0o700),  # done by the main thread, after the queue
        spec("/e/h", data=b"h"),
    ]
    result = host.apply(files)
    assert [(c.path, c.outcome) for c in result.changes] == [
        ("/d/f", Outcome.FAILED),
        ("/d/g", Outcome.APPLIED),
        ("/e", Outcome.APPLIED),
        ("/e/h", Outcome.APPLIED),
    ]
    assert [f.path for f in result.failures] == ["/d/f"]
    assert read_tree(host.root) == {
        "/d": D("/d"),
        "/d/f": F("/d/f", b"old\n"),
        "/d/g": F("/d/g", b"g"),
        "/e": D("/e", 0o700),
        "/e/h": F("/e/h", b"h"),
    }


def test_every_failure_is_reported_in_path_order(host: Host, engine_mode, immutable):
    # /d/f fails late, on the writer thread; /x/y early, on the main thread.
    make(host.root, [D("/d"), F("/d/f", b"old\n"), D("/real"), L("/x", b"real")])
    immutable(host.root + "/d/f")
    result = host.apply([spec("/d/f", data=b"new\n"), spec("/x/y", data=b"y")])
    assert [(c.path, c.outcome) for c in result.changes] == [("/d/f", Outcome.FAILED)]
    assert [f.path for f in result.failures] == ["/d/f", "/x/y"]
    assert "Operation not permitted" in result.failures[0].reason
    assert result.failures[1].reason == "symlink not permitted in path: /x"


def test_unexpected_error_in_the_writer_is_raised_not_swallowed(host: Host, monkeypatch):
    def broken(fd, spec, owner):
        raise RuntimeError("a bug")

    monkeypatch.setattr(fileops, "_fill", broken)
    fds = open_fds()
    with pytest.raises(RuntimeError, match="a bug"):
        host.apply([spec("/a", data=b"a")])
    assert open_fds() == fds
    monkeypatch.undo()
    assert host.apply([spec("/a", data=b"a")], lock_timeout=0).failures == []  # lock released


def test_every_type_fails_and_skips_truthfully(host: Host, engine_mode, immutable):
    """Real refusals by the kernel: a new directory, file and symlink all fail;
    what is below the failed directory is skipped; elsewhere all is applied."""
    make(host.root, [D("/locked"), D("/open")])
    immutable(host.root + "/locked")
    files = [
        spec("/locked/d", "dir"),
        spec("/locked/d/f", data=b"f"),
        spec("/locked/d/l", "symlink", data=b"t"),
        spec("/locked/d/sub", "dir"),
        spec("/locked/f", data=b"f"),
        spec("/locked/l", "symlink", data=b"t"),
        spec("/open/f", data=b"f"),
    ]
    result = host.apply(files)
    assert [(c.path, c.outcome) for c in result.changes] == [
        ("/locked/d", Outcome.FAILED),
        ("/locked/d/f", Outcome.SKIPPED),
        ("/locked/d/l", Outcome.SKIPPED),
        ("/locked/d/sub", Outcome.SKIPPED),
        ("/locked/f", Outcome.FAILED),
        ("/locked/l", Outcome.FAILED),
        ("/open/f", Outcome.APPLIED),
    ]
    skipped = [c for c in result.changes if c.outcome is Outcome.SKIPPED]
    assert {c.reason for c in skipped} == {"not tried: the directory /locked/d above it failed"}
    assert [f.path for f in result.failures] == ["/locked/d", "/locked/f", "/locked/l"]
    for change, failure in zip(
        [c for c in result.changes if c.outcome is Outcome.FAILED], result.failures, strict=True
    ):
        assert change.reason == failure.reason and "Operation not permitted" in change.reason
    assert read_tree(host.root) == {
        "/locked": D("/locked"),
        "/open": D("/open"),
        "/open/f": F("/open/f", b"f"),
    }


# ---------------------------------------------------------------------------
# Removal is as safe as writing.


@pytest.mark.parametrize("how", ["purge", "absent"])
def test_symlink_planted_in_a_purged_or_absent_tree_is_removed_not_followed(
    host: Host, resolve_mode, how
):
    os.makedirs(host.outside + "/victim")
    with open(host.outside + "/victim/data", "wb") as f:
        f.write(b"precious\n")
    make(host.root, [D("/p"), D("/p/tree")])
    os.symlink(host.outside + "/victim", host.root + "/p/tree/escape")
    os.symlink(host.outside + "/victim", host.root + "/p/escape")
    outside = snapshot(host.outside)
    if how == "purge":
        result = host.apply([spec("/p", "dir")], purge=["/p"])
    else:
        result = host.apply([], absent=[AbsentSpec("/p", recursive=True)])
    assert result.failures == []
    removed_links = [c.path for c in result.changes if c.old.type is FileType.SYMLINK]
    assert sorted(removed_links) == ["/p/escape", "/p/tree/escape"]
    assert snapshot(host.outside) == outside  # nothing outside touched
    assert read_tree(host.root) == ({"/p": D("/p")} if how == "purge" else {})


def test_a_purged_directory_reached_through_a_symlink_is_refused(host: Host, resolve_mode):
    os.makedirs(host.outside + "/etc/sudoers.d")
    with open(host.outside + "/etc/sudoers.d/keep", "wb") as f:
        f.write(b"outside\n")
    os.symlink(host.outside + "/etc", host.root + "/etc")
    outside = snapshot(host.outside)
    result = host.apply([], purge=["/etc/sudoers.d"], absent=[AbsentSpec("/etc/x/y")])
    assert [(f.path, f.reason) for f in result.failures] == [
        ("/etc/x/y", "symlink not permitted in path: /etc"),
        ("/etc/sudoers.d", "symlink not permitted in path: /etc"),
    ]
    assert result.changes == []
    assert snapshot(host.outside) == outside


def travels(result, files: list[FileSpec], purge: list[str]) -> dict:
    """Check `result` goes to the master as the minion sends it: it packs and
    fits (results.fit), passes the wire's schema, and every change is one the
    master's plan check accepts (Plan.covers). Return the body as sent."""
    packed = results.fit(results.files_result(result, started=1.0, finished=2.0))
    body = codec.unpack(packed, max_depth=16)
    validate(SPECS[MsgType.RESULT].schema, body, "RESULT")
    plan = Plan.of_job({"files": [f.to_wire() for f in files], "purge": purge, "absent": []})
    assert [c["path"] for c in body["apply"]["changes"] if not plan.covers(c["path"])] == []
    return body


def test_names_that_are_not_utf8_cost_one_escaped_record_never_the_result(host: Host, monkeypatch):
    # A Latin-1 tool made some names, and an owner's name, with bytes that
    # are not UTF-8 (surrogateescape keeps them in a str, which msgpack
    # refuses); one of those files cannot be removed (immutable).
    real_getpwuid = pwd.getpwuid

    def getpwuid(uid: int) -> pwd.struct_passwd:
        if uid == NAMELESS_ID:
            return pwd.struct_passwd(("m\udcfcller", "x", uid, uid, "", "/", "/bin/sh"))
        return real_getpwuid(uid)

    monkeypatch.setattr(fileops.pwd, "getpwuid", getpwuid)
    log = host.outside + "/reloads"
    files = [
        spec("/etc", "dir"),
        spec("/etc/app.d", "dir", triggers=(f"echo reload >> {log}",)),
        spec("/etc/app.d/keep.conf", data=b"keep\n"),
    ]
    purge = ["/etc/app.d"]
    make(
        host.root,
        [
            D("/etc"),
            D("/etc/app.d"),
            F("/etc/app.d/caf\udce9.conf", b"x\n", uid=NAMELESS_ID),
            F("/etc/app.d/keep.conf", b"keep\n"),
            F("/etc/app.d/locked\udcfe", b"l\n"),
            F("/etc/app.d/old.conf", b"old\n"),
            D("/etc/app.d/sub\udcff"),
            F("/etc/app.d/sub\udcff/f", b"f\n"),
        ],
    )
    locked = host.root + "/etc/app.d/locked\udcfe"
    set_immutable(locked, True)
    try:
        result = host.apply(files, purge=purge)
    finally:
        set_immutable(locked, False)

    assert [(f.path, "Operation not permitted" in f.reason) for f in result.failures] == [
        ("/etc/app.d/locked\\xfe", True)
    ]
    assert [(c.path, c.outcome) for c in result.changes] == [
        ("/etc/app.d/caf\\xe9.conf", Outcome.APPLIED),
        ("/etc/app.d/locked\\xfe", Outcome.FAILED),
        ("/etc/app.d/old.conf", Outcome.APPLIED),
        ("/etc/app.d/sub\\xff", Outcome.APPLIED),
        ("/etc/app.d/sub\\xff/f", Outcome.APPLIED),
    ]
    assert result.changes[0].old.user == "m\\xfcller"
    # The trigger is owed (a path failed), on disk and in the report, under
    # the escaped path of the first change that fired it.
    owing = [OwedTrigger(f"echo reload >> {log}", "/etc/app.d/caf\\xe9.conf", JID)]
    assert result.owed == owing
    assert owed.load(host.state) == owing
    body = travels(result, files, purge)
    assert body["apply"]["changes"][0]["path"] == "/etc/app.d/caf\\xe9.conf"
    assert sorted(os.listdir(os.fsencode(host.root + "/etc/app.d"))) == [
        b"keep.conf",
        b"locked\xfe",
    ]

    again = host.apply(files, purge=purge)
    assert again.failures == []
    assert [c.path for c in again.changes] == ["/etc/app.d/locked\\xfe"]
    assert [t.status for t in again.triggers] == [TriggerStatus.OK]
    assert again.owed == []
    travels(again, files, purge)
    assert os.listdir(host.root + "/etc/app.d") == ["keep.conf"]


def test_an_entry_whose_path_is_too_long_for_the_report_is_left_in_place(host: Host):
    # A purged directory deep down (3765 characters), holding a name of 100
    # bytes that are not UTF-8: 400 characters escaped, past the wire's limit
    # of 4095 for a path, although the host's path is within PATH_MAX.
    purged = "/" + "/".join(["a" * 250] * 15)
    long_name = "\udce9" * 100
    os.makedirs(host.root + purged)
    make(host.root, [F(f"{purged}/{long_name}", b"x"), F(f"{purged}/ok", b"ok\n")])
    result = host.apply([], purge=[purged])
    assert [f.path for f in result.failures] == [purged]
    assert "longer than 4095 characters" in result.failures[0].reason
    assert [(c.path, c.outcome) for c in result.changes] == [(f"{purged}/ok", Outcome.APPLIED)]
    travels(result, [], [purged])
    assert os.listdir(host.root + purged) == [long_name]


@pytest.fixture
def mounts():
    """Mount at a path (tests run as root): `mounts(path)` a small tmpfs,
    `mounts(path, bind=source)` a bind mount; all unmounted in teardown."""
    mounted = []

    def mount(path: str, bind: str | None = None) -> None:
        if bind is None:
            command = ["mount", "-t", "tmpfs", "-o", "size=1m", "safcm-test", path]
        else:
            command = ["mount", "--bind", bind, path]
        subprocess.run(command, check=True)
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", path], check=True)


@pytest.mark.parametrize("how", ["purge", "absent"])
@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
def test_a_mount_point_in_a_purged_or_absent_tree_is_not_crossed(
    host: Host, resolve_mode, mounts, how, kind
):
    """Another filesystem, or a bind mount of this same one (whose device
    number is the same), inside a tree that is removed: never entered."""
    make(host.root, [D("/p"), D("/p/mnt"), F("/p/stray", b"s\n")])
    if kind == "tmpfs":
        mounts(host.root + "/p/mnt")
    else:
        mounts(host.root + "/p/mnt", bind=host.outside)
    with open(host.root + "/p/mnt/on-the-mount", "wb") as f:
        f.write(b"another filesystem\n")
    mounted = snapshot(host.root + "/p/mnt")
    if how == "purge":
        result = host.apply([spec("/p", "dir")], purge=["/p"])
    else:
        result = host.apply([], absent=[AbsentSpec("/p", recursive=True)])
    assert [f.path for f in result.failures] == ["/p/mnt"]
    assert "never removes across a mount point" in result.failures[0].reason
    outcomes = {c.path: c.outcome for c in result.changes}
    assert outcomes["/p/mnt"] is Outcome.FAILED
    assert outcomes["/p/stray"] is Outcome.APPLIED
    assert "/p/mnt/on-the-mount" not in outcomes
    if how == "absent":
        assert outcomes["/p"] is Outcome.SKIPPED  # not empty: its mount stays
    assert snapshot(host.root + "/p/mnt") == mounted
    assert not os.path.exists(host.root + "/p/stray")


def test_a_file_bind_mounted_over_a_purged_file_is_not_removed(host: Host, resolve_mode, mounts):
    """A mount point that is a file, with the same device number as its
    directory: the mount id shows it."""
    make(host.root, [D("/p"), F("/p/mounted", b"m\n")])
    with open(host.outside + "/source", "wb") as f:
        f.write(b"bound\n")
    mounts(host.root + "/p/mounted", bind=host.outside + "/source")
    result = host.apply([spec("/p", "dir")], purge=["/p"])
    assert [f.path for f in result.failures] == ["/p/mounted"]
    assert "never removes across a mount point" in result.failures[0].reason
    with open(host.outside + "/source", "rb") as f:
        assert f.read() == b"bound\n"


def test_files_of_an_overlay_lower_layer_are_removed(host: Host, resolve_mode, mounts, tmp_path):
    """overlayfs (a container's root) whose layers are on different
    filesystems reports a file's device number from its layer, not the
    overlay's: such a file is no mount point and absent and purge remove it."""
    lower, layers = tmp_path / "lower", tmp_path / "layers"
    os.makedirs(lower / "p")
    (lower / "p" / "stale").write_bytes(b"lower layer\n")
    (lower / "gone").write_bytes(b"lower layer\n")
    os.makedirs(layers)
    mounts(str(layers))  # upper and work on a tmpfs, the lower layer on /tmp's filesystem
    os.makedirs(layers / "upper")
    os.makedirs(layers / "work")
    options = f"lowerdir={lower},upperdir={layers}/upper,workdir={layers}/work"
    subprocess.run(["mount", "-t", "overlay", "-o", options, "overlay", host.root], check=True)
    try:
        assert os.stat(host.root + "/p/stale").st_dev != os.stat(host.root + "/p").st_dev
        result = host.apply([spec("/p", "dir")], purge=["/p"], absent=[AbsentSpec("/gone")])
        assert result.failures == []
        assert os.listdir(host.root + "/p") == []
        assert not os.path.lexists(host.root + "/gone")
    finally:
        subprocess.run(["umount", host.root], check=True)


RACE_REMOVAL_SECONDS = 2.0  # wall time per resolution mode; bounded also by the count below
RACE_REMOVAL_APPLIES = 20000


@pytest.mark.timeout(120)
def test_race_swapping_a_purged_directory_for_a_symlink(host: Host, resolve_mode):
    """A thread keeps swapping /p/sub (removed by every purge) for a symlink to
    outside, while applies purge /p: nothing outside may ever be removed."""
    os.makedirs(host.outside + "/sub")
    for name in ("a", "b"):
        with open(f"{host.outside}/sub/{name}", "wb") as f:
            f.write(b"outside\n")
    outside = snapshot(host.outside)
    make(host.root, [D("/p")])
    stop = threading.Event()
    swaps = 0
    errors: list[BaseException] = []

    def swapper():
        nonlocal swaps
        # The real directory is prepared outside /p, so the purge leaves it be.
        sub, staging = host.root + "/p/sub", host.root + "/staging"
        while not stop.is_set():
            os.makedirs(staging, exist_ok=True)
            for name in ("a", "b"):
                with open(f"{staging}/{name}", "wb") as f:
                    f.write(b"inside\n")
            # Each step may lose against a purge that just removed /p/sub.
            with contextlib.suppress(OSError):
                os.rename(staging, sub)
            time.sleep(0)  # hands the GIL over, so applies run inside each state
            with contextlib.suppress(OSError):
                os.rename(sub, staging)
            with contextlib.suppress(OSError):
                os.symlink(host.outside + "/sub", sub)
            time.sleep(0)
            with contextlib.suppress(OSError):
                os.unlink(sub)
            swaps += 1

    def swap_until_stopped():
        try:
            swapper()
        except BaseException as e:  # reported by the test, not lost in the thread
            errors.append(e)

    thread = threading.Thread(target=swap_until_stopped)
    thread.start()
    removed = 0
    try:
        deadline = time.monotonic() + RACE_REMOVAL_SECONDS
        for _ in range(RACE_REMOVAL_APPLIES):
            if time.monotonic() > deadline:
                break
            result = host.apply([spec("/p", "dir")], purge=["/p"])
            removed += sum(1 for c in result.changes if c.outcome is Outcome.APPLIED)
    finally:
        stop.set()
        thread.join()

    print(f"removal race: {swaps} swaps, {removed} entries removed")
    assert errors == []
    assert swaps > 0 and removed > 0
    assert snapshot(host.outside) == outside  # never a removal outside the root


# ---------------------------------------------------------------------------
# Owed triggers: never run against a half-applied host, never lost.

JID2 = "20260101T000001.000000Z"
JID3 = "20260101T000002.000000Z"


def test_triggers_of_an_apply_with_a_failure_are_owed_then_run_once(host: Host):
    log = host.outside + "/log"
    reload = f"echo reload >> {log}"
    make(host.root, [D("/etc"), D("/etc/app"), D("/etc/motd"), F("/etc/motd/x")])
    files = [
        spec("/etc/app", "dir", triggers=(reload,)),
        spec("/etc/app/logging.conf", data=b"level = info\n", triggers=(reload,)),
        spec("/etc/motd", data=b"hello\n", triggers=(f"echo motd >> {log}",)),
    ]

    first = host.apply(files, jid=JID)
    assert [f.path for f in first.failures] == ["/etc/motd"]
    assert first.triggers == []
    assert [(o.command, o.path, o.jid) for o in first.owed] == [
        (reload, "/etc/app/logging.conf", JID)
    ]
    assert not os.path.exists(log)

    # Still failing: still owed (once), shown again, nothing run; the dry run too.
    second = host.apply(files, jid=JID2)
    assert second.changes[0].path == "/etc/motd" and second.triggers == []
    assert [(o.command, o.jid) for o in second.owed] == [(reload, JID)]
    dry = host.apply(files, dry_run=True, jid=JID3)
    assert [(o.command, o.jid) for o in dry.owed] == [(reload, JID)]
    assert not os.path.exists(log)

    # The obstacle is gone: this apply has no failure. The owed reload and
    # this apply's own triggers run, each once; nothing is owed any more.
    os.unlink(host.root + "/etc/motd/x")
    dry = host.apply(files, dry_run=True, jid=JID3)
    assert [(t.command, t.status) for t in dry.triggers] == [
        (reload, TriggerStatus.WOULD_RUN),
        (f"echo motd >> {log}", TriggerStatus.WOULD_RUN),
    ]
    assert [o.command for o in dry.owed] == [reload]  # a dry run pays nothing
    third = host.apply(files, jid=JID3)
    assert third.failures == [] and third.owed == []
    assert [(t.command, t.status) for t in third.triggers] == [
        (reload, TriggerStatus.OK),
        (f"echo motd >> {log}", TriggerStatus.OK),
    ]
    with open(log) as f:
        assert f.read() == "reload\nmotd\n"
    fourth = host.apply(files, jid=JID3)
    assert fourth.triggers == [] and fourth.owed == []


def test_an_owed_trigger_that_fails_is_reported_failed_not_owed_again(host: Host):
    make(host.root, [D("/blocked"), F("/blocked/x")])
    files = [spec("/a", data=b"a", triggers=("exit 3",)), spec("/blocked", data=b"b")]
    assert [o.command for o in host.apply(files).owed] == ["exit 3"]
    os.unlink(host.root + "/blocked/x")
    result = host.apply(files, jid=JID2)
    assert [(t.command, t.status, t.exit_code) for t in result.triggers] == [
        ("exit 3", TriggerStatus.FAILED, 3)
    ]
    assert result.owed == [] and not result.ok
    assert host.apply(files, jid=JID3).owed == []


def test_owed_triggers_are_kept_durably_in_the_state_directory(host: Host):
    make(host.root, [D("/blocked"), F("/blocked/x")])
    files = [spec("/a", data=b"a", triggers=("true",)), spec("/blocked", data=b"b")]
    host.apply(files)
    # What a restarted minion reads: the file itself, with no temporary beside it.
    assert owed.load(host.state) == [OwedTrigger("true", "/a", JID)]
    assert sorted(n for n in os.listdir(host.state) if n.startswith(owed.OWED_NAME)) == [
        owed.OWED_NAME
    ]
    with open(os.path.join(host.state, owed.OWED_NAME), "wb") as f:
        f.write(b"\xc1 not msgpack")
    with pytest.raises(StoreError, match="owed triggers are unreadable"):
        host.apply(files)


def test_owed_triggers_are_saved_through_the_durable_primitive(tmp_path, monkeypatch):
    from safcm.common import atomicfile

    saved = []
    real = atomicfile.replace_file

    def replace_file(directory, name, data, **kw):
        saved.append(name)
        real(directory, name, data, **kw)

    monkeypatch.setattr(atomicfile, "replace_file", replace_file)
    owed.save(str(tmp_path), [])
    assert saved == [owed.OWED_NAME]
    assert owed.load(str(tmp_path)) == []


# ---------------------------------------------------------------------------
# Durable before visible, with several fsyncs in flight at once. Recording
# wrappers around the real os.fsync, os.rename and the O_TMPFILE link (the
# calls the engine makes them through) log, by inode, when each new file's
# fsync returned and when it got a name.


# Long enough never to end a wait in a passing run.
WAIT_SECONDS = 30.0


class SyncLog:
    """Records fsyncs, links and renames; holds the first file's fsync until
    another file's fsync has returned, so that fsyncs end out of order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self._first: int | None = None
        self._other_synced = threading.Event()
        # Whether another file's fsync returned while the first one's was
        # held (False: the hold ran out instead).
        self.first_released = False
        self._real_fsync, self._real_rename = os.fsync, os.rename
        self._real_link = fileops._link_tmpfile
        monkeypatch.setattr(fileops.os, "fsync", self.fsync)
        monkeypatch.setattr(fileops.os, "rename", self.rename)
        monkeypatch.setattr(fileops, "_link_tmpfile", self.link)

    def _add(self, *event) -> None:
        with self._lock:
            self.events.append(event)

    def fsync(self, fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            self._real_fsync(fd)
            self._add("dir synced", st.st_ino)
            return
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            first = self._first is None
            if first:
                self._first = st.st_ino
        try:
            # An engine that syncs one file at a time never gets here for a
            # second file while the first waits: the wait then times out,
            # and most_in_flight stays 1.
            if first:
                self.first_released = self._other_synced.wait(WAIT_SECONDS)
            self._real_fsync(fd)
        finally:
            with self._lock:
                self.in_flight -= 1
                self.events.append(("synced", st.st_ino))
        if not first:
            self._other_synced.set()

    def link(self, fd: int, dirfd: int, name: str, proc: bool) -> None:
        self._add("linked", os.fstat(fd).st_ino)
        self._real_link(fd, dirfd, name, proc)

    def rename(self, src, dst, *, src_dir_fd: int, dst_dir_fd: int) -> None:
        ino = os.stat(src, dir_fd=src_dir_fd, follow_symlinks=False).st_ino
        self._add("renamed", ino, dst, os.fstat(dst_dir_fd).st_ino)
        self._real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def position(self, *event) -> int:
        return self.events.index(event)


def test_a_new_file_is_renamed_only_after_its_own_fsync_returned(
    host: Host, engine_mode, monkeypatch
):
    make(host.root, [D("/d1"), F("/d1/f03", b"old\n")])
    files = [spec("/d1", "dir")]
    files += [spec(f"/d1/f{i:02}", data=b"d1 %d\n" % i) for i in range(10)]
    files += [spec("/d2", "dir")]
    files += [spec(f"/d2/f{i:02}", data=b"d2 %d\n" % i) for i in range(10, 20)]
    log = SyncLog(monkeypatch)
    result = host.apply(files)
    assert result.failures == []
    assert read_tree(host.root) == {e.path: e for e in entries_of(files)}
    assert log.most_in_flight >= 2, "the fsyncs of new files never overlapped"
    renames = [e for e in log.events if e[0] == "renamed"]
    # In path order, and each only after its own file's fsync returned (the
    # first file's returned after another's: its rename waited for it).
    assert [name for _, _, name, _ in renames] == [f"f{i:02}" for i in range(20)]
    for event in renames:
        ino = event[1]
        assert log.position("synced", ino) < log.position(*event), event
        if ("linked", ino) in log.events:  # an O_TMPFILE gets a name only once synced
            assert log.position("synced", ino) < log.position("linked", ino)
    # Every directory that got a new name is synced after its last rename.
    for dir_ino in {e[3] for e in renames}:
        last = max(i for i, e in enumerate(log.events) if e[0] == "renamed" and e[3] == dir_ino)
        synced = [i for i, e in enumerate(log.events) if e == ("dir synced", dir_ino)]
        assert synced and max(synced) > last


def test_a_new_directory_does_not_wait_for_the_writes_before_it(
    host: Host, engine_mode, monkeypatch
):
    # The one new file in /d1 holds its fsync until another file's fsync
    # has returned; those are all in /d2, made after it. An engine that
    # waited for /d1's write before making /d2 would wait out the hold.
    make(host.root, [D("/d1")])
    files = [spec("/d1", "dir"), spec("/d1/f", data=b"d1\n"), spec("/d2", "dir")]
    files += [spec(f"/d2/f{i}", data=b"d2 %d\n" % i) for i in range(8)]
    log = SyncLog(monkeypatch)
    result = host.apply(files)
    assert result.failures == []
    assert read_tree(host.root) == {e.path: e for e in entries_of(files)}
    assert log.first_released, "the new directory waited for the write before it"
    renames = [e[2] for e in log.events if e[0] == "renamed"]
    assert renames == ["f", *[f"f{i}" for i in range(8)]]


def test_an_fsync_failure_fails_only_its_own_path(host: Host, engine_mode, monkeypatch):
    make(host.root, [D("/d"), F("/d/old", b"old\n")])
    doomed = 777  # the size of each new version whose fsync fails
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size == doomed:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(fileops.os, "fsync", fsync)
    files = [
        spec("/d", "dir"),
        spec("/d/a", data=b"a\n"),
        spec("/d/b", data=b"b" * doomed),  # new: never appears
        spec("/d/c", data=b"c\n"),
        spec("/d/l", "symlink", data=b"a"),
        spec("/d/old", data=b"o" * doomed),  # replaced: keeps its old version
        spec("/e", "dir"),
        spec("/e/f", data=b"f\n"),
    ]
    result = host.apply(files)
    reason = "syncing the new version to disk: Input/output error"
    assert [(f.path, f.reason) for f in result.failures] == [("/d/b", reason), ("/d/old", reason)]
    assert [(c.path, c.outcome, c.reason) for c in result.changes] == [
        ("/d/a", Outcome.APPLIED, ""),
        ("/d/b", Outcome.FAILED, reason),
        ("/d/c", Outcome.APPLIED, ""),
        ("/d/l", Outcome.APPLIED, ""),
        ("/d/old", Outcome.FAILED, reason),
        ("/e", Outcome.APPLIED, ""),
        ("/e/f", Outcome.APPLIED, ""),
    ]
    assert read_tree(host.root) == {
        "/d": D("/d"),
        "/d/a": F("/d/a", b"a\n"),
        "/d/c": F("/d/c", b"c\n"),
        "/d/l": L("/d/l", b"a"),
        "/d/old": F("/d/old", b"old\n"),
        "/e": D("/e"),
        "/e/f": F("/e/f", b"f\n"),
    }
    assert temp_names(host.root) == []


def main_thread_waits_for_a_future() -> bool:
    """True while the main thread is blocked waiting for a Future's result."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    return (
        frame is not None
        and frame.f_code.co_name == "wait"
        and frame.f_code.co_filename == threading.__file__
        and frame.f_back is not None
        and frame.f_back.f_code.co_filename == concurrent.futures._base.__file__
    )


def test_descriptors_and_temporaries_stay_bounded_during_a_large_create(
    host: Host, engine_mode, monkeypatch
):
    # The directories exist already: a directory to make would wait for the
    # writes before it, and so cut the test short.
    ndirs, per_dir = 3, 200
    make(host.root, [D(f"/d{d}") for d in range(ndirs)])
    files = [
        spec(f"/d{d}/f{i:03}", data=b"%d %d\n" % (d, i))
        for d in range(ndirs)
        for i in range(per_dir)
    ]
    before = open_fds()
    most_fds = most_temps = 0
    lock = threading.Lock()
    first: list[int] = []
    real_fsync, real_rename = os.fsync, os.rename

    def count_fds() -> None:
        nonlocal most_fds
        with lock:  # one count at a time: each opens one descriptor itself
            most_fds = max(most_fds, len(os.listdir("/proc/self/fd")))

    def fsync(fd: int) -> None:
        count_fds()
        with lock:
            held = not first
            first.append(fd)
        if held:
            # Hold the first fsync until the main thread waits for it: an
            # engine that kept taking files meanwhile would pile up a
            # temporary (and maybe a descriptor) for each one written.
            deadline = time.monotonic() + WAIT_SECONDS
            while not main_thread_waits_for_a_future() and time.monotonic() < deadline:
                threading.Event().wait(0.001)
        real_fsync(fd)

    def rename(src, dst, **kw) -> None:
        nonlocal most_temps
        count_fds()
        temps = sum(is_temp_name(n) for d in range(ndirs) for n in os.listdir(f"{host.root}/d{d}"))
        most_temps = max(most_temps, temps)
        real_rename(src, dst, **kw)

    monkeypatch.setattr(fileops.os, "fsync", fsync)
    monkeypatch.setattr(fileops.os, "rename", rename)
    result = host.apply(files)
    assert result.failures == []
    assert read_tree(host.root) == {
        e.path: e for e in [*entries_of(files), *map(D, ["/d0", "/d1", "/d2"])]
    }
    # The root, each directory, the engine lock, a directory being listed
    # (scandir duplicates its descriptor), the count's own descriptor, and
    # a temporary for each file a worker is writing.
    writing = min(fileops.FSYNC_WORKERS, fileops.PENDING_WRITES_MAX)
    bound = len(before) + 1 + ndirs + 1 + 1 + 1 + writing
    assert most_fds <= bound, f"{most_fds} descriptors open at once, bound {bound}"
    assert open_fds() == before
    assert 0 < most_temps <= fileops.PENDING_WRITES_MAX
    assert temp_names(host.root) == []


def test_a_directory_fsync_failure_is_reported_and_the_others_are_synced(host: Host, monkeypatch):
    make(host.root, [D("/d1"), D("/d2")])
    root, d1, d2 = (os.stat(host.root + p).st_ino for p in ("", "/d1", "/d2"))
    synced = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if st.st_ino == d2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append(st.st_ino)

    monkeypatch.setattr(fileops.os, "fsync", fsync)
    result = host.apply([spec("/d1/a", data=b"a"), spec("/d2/b", data=b"b"), spec("/d3", "dir")])
    assert [(f.path, f.reason) for f in result.failures] == [
        ("/d2", "fsync of the directory failed: Input/output error")
    ]
    assert sorted(synced) == sorted([root, d1, os.stat(host.root + "/d3").st_ino])
    assert result.triggers == []


def test_a_deep_entry_that_cannot_go_leaves_every_directory_above_it_skipped(
    host: Host, engine_mode, immutable
):
    # /a/b/c refuses the unlink of its file: c, b and a stay, each "skipped"
    # for what is below it (not "failed: Directory not empty"), and the
    # one failure is the file's. The dry run says the same of the others.
    make(host.root, [D("/a"), D("/a/b"), D("/a/b/c"), F("/a/b/c/f", b"f\n"), F("/a/x", b"x\n")])
    immutable(host.root + "/a/b/c")
    absent = [AbsentSpec("/a", recursive=True)]
    result = host.apply([], absent=absent)
    assert [(c.path, c.outcome) for c in result.changes] == [
        ("/a", Outcome.SKIPPED),
        ("/a/b", Outcome.SKIPPED),
        ("/a/b/c", Outcome.SKIPPED),
        ("/a/b/c/f", Outcome.FAILED),
        ("/a/x", Outcome.APPLIED),
    ]
    assert [f.path for f in result.failures] == ["/a/b/c/f"]
    assert {c.reason for c in result.changes if c.outcome is Outcome.SKIPPED} == {
        "not removed: an entry below it could not be removed"
    }
