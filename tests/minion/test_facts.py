"""The facts a minion reports: os-release parsed as os-release(5) writes it,
read beneath the root without following a symlink, every value fitting the
FACTS schema."""

from __future__ import annotations

import os

import pytest

from safcm.common.protocol import MsgType, check_body
from safcm.minion import facts

# (os-release text, the variables it holds)
OS_RELEASE_CASES = [
    (
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
        'VERSION_ID="12"\nVERSION_CODENAME=bookworm\nID=debian\n',
        {
            "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
            "NAME": "Debian GNU/Linux",
            "VERSION_ID": "12",
            "VERSION_CODENAME": "bookworm",
            "ID": "debian",
        },
    ),
    # comments, blank lines, single quotes, escapes inside double quotes
    (
        '# a comment\n\nID=\'ubuntu\'\nNAME="say \\"hi\\" \\$HOME \\\\ \\`x\\`"\n',
        {"ID": "ubuntu", "NAME": 'say "hi" $HOME \\ `x`'},
    ),
    # not assignments, or unterminated quotes: skipped, the rest kept
    (
        'export ID=x\nID =debian\n ID=fedora \nVERSION_ID="39\nNAME=\n',
        {"ID": "fedora", "NAME": ""},
    ),
    # the last assignment wins, as in a shell
    ("ID=debian\nID=devuan\n", {"ID": "devuan"}),
    ("", {}),
]


@pytest.mark.parametrize(("text", "expected"), OS_RELEASE_CASES)
def test_parse_os_release(text, expected):
    assert facts.parse_os_release(text) == expected


def _facts(os_release=None, **kw):
    values = {
        "machine": "x86_64",
        "release": "6.1.0-18-amd64",
        "nodename": "web1",
        "cpu_count": 4,
        "memory_bytes": 2**33,
    }
    values.update(kw)
    return facts.facts_from(os_release or {}, **values)


def test_facts_from_fit_the_schema():
    found = _facts(
        {"ID": "debian", "VERSION_ID": "12", "VERSION_CODENAME": "bookworm", "NAME": "Debian"}
    )
    assert found == {
        "os_id": "debian",
        "os_version_id": "12",
        "os_codename": "bookworm",
        "os_name": "Debian",
        "architecture": "x86_64",
        "kernel": "6.1.0-18-amd64",
        "hostname": "web1",
        "cpu_count": 4,
        "memory_bytes": 2**33,
    }
    check_body(MsgType.FACTS, found)


@pytest.mark.parametrize(
    ("os_release", "kw", "field", "value"),
    [
        # os-release(5) tokens are lower-case a-z 0-9 . _ -: others are dropped, not repaired
        ({"ID": "Debian"}, {}, "os_id", None),
        ({"ID": "deb ian"}, {}, "os_id", None),
        ({"VERSION_ID": "1" * 65}, {}, "os_version_id", None),
        ({"ID": ""}, {}, "os_id", None),
        # control characters never reach the master, a long name is cut
        ({"PRETTY_NAME": "evil\x1b[2J\nname"}, {}, "os_name", "evil[2Jname"),
        ({"PRETTY_NAME": "x" * 1000}, {}, "os_name", "x" * 256),
        ({}, {"nodename": "a" * 65}, "hostname", "unknown"),
        ({}, {"release": "has space"}, "kernel", "unknown"),
        ({}, {"machine": ""}, "architecture", "unknown"),
        ({}, {"cpu_count": None}, "cpu_count", None),
        ({}, {"cpu_count": 0}, "cpu_count", None),
    ],
)
def test_facts_from_drops_what_does_not_fit(os_release, kw, field, value):
    found = _facts(os_release, **kw)
    assert found[field] == value
    check_body(MsgType.FACTS, found)


@pytest.mark.parametrize(
    ("meminfo", "expected"),
    [
        (b"MemTotal:       16314560 kB\nMemFree:  1 kB\n", 16314560 * 1024),
        (b"MemFree:  1 kB\nMemTotal: 2 kB\n", 2048),
        (b"MemTotal: lots\n", None),
        (b"", None),
        (b"MemTotal: 99999999999999999999 kB\n", None),
    ],
)
def test_parse_memtotal(meminfo, expected):
    assert facts.parse_memtotal(meminfo) == expected


def _write(root, path, text):
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)


def test_os_release_is_read_beneath_the_root(tmp_path):
    root = str(tmp_path)
    assert facts.read_os_release(root) is None
    _write(root, "usr/lib/os-release", "ID=debian\n")
    assert facts.read_os_release(root) == "ID=debian\n"
    _write(root, "etc/os-release", "ID=devuan\n")
    assert facts.read_os_release(root) == "ID=devuan\n"  # /etc first, as os-release(5) says


def test_a_symlink_is_never_followed(tmp_path):
    # /etc/os-release pointing out of the root is not read; the file that
    # os-release(5) names as the fallback is.
    outside = tmp_path / "outside"
    outside.write_text("ID=outside\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").symlink_to(outside)
    assert facts.read_os_release(str(root)) is None
    _write(str(root), "usr/lib/os-release", "ID=inside\n")
    assert facts.read_os_release(str(root)) == "ID=inside\n"
    # ... nor a symlink in a directory component
    (root / "usr" / "lib" / "os-release").unlink()
    (root / "usr" / "lib").rmdir()
    (root / "usr" / "lib").symlink_to(tmp_path)
    (tmp_path / "os-release").write_text("ID=outside\n")
    assert facts.read_os_release(str(root)) is None


def test_a_fifo_or_a_huge_file_cannot_hold_the_minion(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "etc"))
    os.mkfifo(os.path.join(root, "etc", "os-release"))
    assert facts.read_os_release(root) is None  # not a regular file, and never blocks
    _write(root, "usr/lib/os-release", "ID=debian\n" + "#" * (2 * facts.MAX_OS_RELEASE_BYTES))
    assert len(facts.read_os_release(root)) == facts.MAX_OS_RELEASE_BYTES


def test_gather_reads_the_root_and_the_running_kernel(tmp_path):
    root = str(tmp_path)
    _write(root, "etc/os-release", 'ID=debian\nVERSION_ID="12"\n')
    found = facts.gather(root)
    check_body(MsgType.FACTS, found)
    assert (found["os_id"], found["os_version_id"]) == ("debian", "12")
    assert found["kernel"] == os.uname().release
    assert found["memory_bytes"] > 0 and found["cpu_count"] >= 1


def test_the_digest_changes_exactly_with_the_facts():
    a = _facts({"ID": "debian"})
    assert facts.digest(a) == facts.digest(dict(reversed(list(a.items()))))
    assert facts.digest(a) != facts.digest({**a, "os_id": "devuan"})
