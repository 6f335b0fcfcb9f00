"""What a minion reports about its host (FACTS): OS, architecture, kernel,
host name, CPUs and memory.

    facts = gather(settings.root)      # a dict of the FACTS schema (common/protocol.py)
    digest(facts)                      # changes exactly when a fact changes

The OS comes from os-release(5) of the managed system, so it is read beneath
the minion's `root:` (tests and the demo give each minion a directory of its
own); everything else describes the machine the minion runs on: uname(2),
the CPUs it may use, /proc/meminfo. Parsing is pure (parse_os_release,
facts_from); gather() only reads.

NOTE: os-release is read like every path beneath the root: one component at
a time with O_NOFOLLOW, never through a symlink, since a root that is a
directory may hold links that point out of it. os-release(5) asks for
/etc/os-release first and /usr/lib/os-release after; where /etc/os-release is
the symlink the specification recommends (to ../usr/lib/os-release), the
second read finds the file it points to.

Everything here is the host's own claim: the master validates it against
the FACTS schema and never lets it decide which host's configuration is
compiled (master/repository.py, detected groups).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

from safcm.common import codec
from safcm.common.protocol import MAX_CPU_COUNT, MAX_FACT_TEXT_CHARS, MAX_FACT_TOKEN_CHARS

# Where os-release(5) lives, beneath the root, in the order it says to look.
OS_RELEASE_PATHS = ("etc/os-release", "usr/lib/os-release")
# A real os-release is a few hundred bytes; more is read no further.
MAX_OS_RELEASE_BYTES = 64 * 1024
# /proc/meminfo is about 1.5 KiB; MemTotal is its first line.
MEMINFO_PATH = "/proc/meminfo"
MAX_MEMINFO_BYTES = 16 * 1024

# os-release(5): ID, VERSION_ID and VERSION_CODENAME are lower-case 0-9, a-z,
# ".", "_" and "-"; a value that is not is dropped, not repaired.
_OS_TOKEN_RE = re.compile(r"[a-z0-9._-]+")
# The characters the FACTS schema allows in a uname field.
_UNAME_RE = re.compile(r"[!-~]+")
_UNAME_MAX = 64
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# A variable assignment: a shell-compatible name, "=", a value.
_ASSIGNMENT_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")
# Inside double quotes, these are written with a backslash before them.
_DOUBLE_QUOTED_ESCAPE_RE = re.compile(r"\\([$\"'`\\])")
_MEMTOTAL_RE = re.compile(rb"^MemTotal:\s+([0-9]{1,20})\s+kB\s*$", re.MULTILINE)
# What uname gives when a field does not fit the schema (it never should).
UNKNOWN = "unknown"


def parse_os_release(text: str) -> dict[str, str]:
    """The variables of an os-release file, as os-release(5) writes them:
    KEY=value lines, the value bare, in double quotes (with \\$ \\" \\' \\`
    and \\\\ escapes) or in single quotes; "#" starts a comment line. A line
    that is none of these is skipped, as the specification asks."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ASSIGNMENT_RE.fullmatch(line)
        if match is None:
            continue
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = _DOUBLE_QUOTED_ESCAPE_RE.sub(r"\1", value[1:-1])
        elif len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif value[:1] in ('"', "'"):
            continue  # an unterminated quote
        values[key] = value
    return values


def facts_from(
    os_release: Mapping[str, str],
    *,
    machine: str,
    release: str,
    nodename: str,
    cpu_count: int | None,
    memory_bytes: int | None,
) -> dict[str, Any]:
    """The FACTS body from what was read; every value fits the schema."""
    return {
        "os_id": _token(os_release.get("ID")),
        "os_version_id": _token(os_release.get("VERSION_ID")),
        "os_codename": _token(os_release.get("VERSION_CODENAME")),
        "os_name": _text(os_release.get("PRETTY_NAME") or os_release.get("NAME")),
        "architecture": _uname(machine),
        "kernel": _uname(release),
        "hostname": _uname(nodename),
        "cpu_count": cpu_count
        if cpu_count is not None and 1 <= cpu_count <= MAX_CPU_COUNT
        else None,
        "memory_bytes": memory_bytes,
    }


def parse_memtotal(meminfo: bytes) -> int | None:
    """MemTotal of /proc/meminfo, in bytes (the kernel writes kB, meaning KiB)."""
    match = _MEMTOTAL_RE.search(meminfo)
    if match is None:
        return None
    value = int(match.group(1)) * 1024
    return value if value < 2**62 else None


def gather(root: str) -> dict[str, Any]:
    """This host's facts now: os-release beneath `root`, the rest from the running kernel."""
    text = read_os_release(root)
    uname = os.uname()
    try:
        meminfo = _read_bounded(MEMINFO_PATH, MAX_MEMINFO_BYTES)
    except OSError:
        meminfo = b""
    return facts_from(
        parse_os_release(text or ""),
        machine=uname.machine,
        release=uname.release,
        nodename=uname.nodename,
        cpu_count=_cpu_count(),
        memory_bytes=parse_memtotal(meminfo),
    )


def digest(facts: Mapping[str, Any]) -> bytes:
    """A digest of `facts` that changes exactly when one of them does."""
    return hashlib.sha256(codec.canonical_pack(dict(facts))).digest()


def read_os_release(root: str) -> str | None:
    """The text of the first os-release beneath `root` that is a regular file
    reached without a symlink (module docstring); None if there is none."""
    for path in OS_RELEASE_PATHS:
        try:
            data = _read_beneath(root, path, MAX_OS_RELEASE_BYTES)
        except OSError:
            continue  # missing, a symlink (ELOOP), not a regular file
        return data.decode("utf-8", "replace")
    return None


def _read_beneath(root: str, path: str, limit: int) -> bytes:
    """At most `limit` bytes of the regular file at `path` beneath `root`,
    resolved without following a symlink in any component. OSError otherwise."""
    *parents, name = path.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parents:
            next_fd = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = next_fd
        # O_NONBLOCK: a FIFO planted there must not hang the minion.
        file_fd = os.open(
            name,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
            dir_fd=fd,
        )
    finally:
        os.close(fd)
    try:
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return _read_fd(file_fd, limit)
    finally:
        os.close(file_fd)


def _read_bounded(path: str, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_fd(fd, limit)
    finally:
        os.close(fd)


def _read_fd(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _cpu_count() -> int | None:
    """The CPUs this process may run on (what a job on the host can use),
    or all of them where the affinity cannot be read."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _token(value: str | None) -> str | None:
    if value is None or len(value) > MAX_FACT_TOKEN_CHARS or not _OS_TOKEN_RE.fullmatch(value):
        return None
    return value


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    return _CONTROL_RE.sub("", value)[:MAX_FACT_TEXT_CHARS]


def _uname(value: str) -> str:
    if len(value) > _UNAME_MAX or not _UNAME_RE.fullmatch(value):
        return UNKNOWN
    return value
