"""The shared file model: path checks, spec checks and wire round trips."""

import pytest

from safcm.common.errors import FileOpError, InvalidPathError
from safcm.common.model import (
    ApplyFailure,
    ApplyResult,
    FileChange,
    FileSpec,
    FileState,
    FileType,
    TriggerRun,
    TriggerStatus,
    check_path,
)

GOOD_PATHS = ["/", "/etc", "/etc/motd", "/a/b/c.d", "/.hidden", "/x..y"]
BAD_PATHS = [
    ("", "empty"),
    ("etc/motd", "not absolute"),
    ("/etc/", "empty component"),
    ("//etc", "empty component"),
    ("/etc//motd", "empty component"),
    ("/etc/./motd", "'.' component"),
    ("/etc/../root", "'..' component"),
    ("/..", "'..' component"),
    ("/etc/mo\0td", "NUL"),
    ("/" + "a" * 256, "longer than 255"),
    ("/a" * 2100, "longer than 4095"),
]


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_good_paths(path):
    check_path(path)


@pytest.mark.parametrize(("path", "reason"), BAD_PATHS)
def test_bad_paths_name_the_reason(path, reason):
    with pytest.raises(InvalidPathError, match=reason):
        check_path(path)


def spec(**kw):
    base = dict(path="/etc/motd", type=FileType.FILE, mode=0o644, user="root", group="root")
    base.update(kw)
    return FileSpec(**base)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        (dict(user=None), "exactly one of user and uid"),
        (dict(uid=0), "exactly one of user and uid"),
        (dict(group=None, gid=None), "exactly one of group and gid"),
        (dict(mode=0o10644), "bits outside"),
        (dict(type=FileType.FIFO), "cannot be declared"),
        (dict(type=FileType.SYMLINK, mode=0o644, data=b"x"), "symlink's mode"),
        (dict(type=FileType.SYMLINK, mode=0o777, data=b""), "non-empty target"),
        (dict(type=FileType.DIR, mode=0o755, data=b"x"), "cannot have content"),
        (dict(user=None, uid=-1), "out of range"),
    ],
)
def test_spec_check_refuses(kw, reason):
    with pytest.raises(FileOpError, match=reason) as info:
        spec(**kw).check()
    assert info.value.path == "/etc/motd"


def test_spec_round_trip():
    s = spec(mode=0o4755, user=None, uid=1000, data=b"\x00\xff", triggers=("a", "b"))
    s.check()
    assert FileSpec.from_wire(s.to_wire()) == s


def test_result_round_trip():
    old = FileState(FileType.DIR, 0o755, 0, 0, "root", "root")
    new = FileState(FileType.FILE, 0o2644, 65534, 65534, None, None)
    result = ApplyResult(
        dry_run=True,
        changes=[
            FileChange("/a", created=False, new=new, old=old, diff="-x\n+y\n"),
            FileChange("/b", created=True, new=new),
        ],
        triggers=[TriggerRun("echo hi", TriggerStatus.OK, 0, "hi\n", 0.01)],
        failures=[ApplyFailure("/c", "permission denied")],
        duration=1.5,
    )
    again = ApplyResult.from_wire(result.to_wire())
    assert again == result
    assert not again.ok


def test_result_ok_depends_on_triggers():
    r = ApplyResult(dry_run=False, triggers=[TriggerRun("false", TriggerStatus.FAILED, 1)])
    assert not r.ok
    r.triggers = [TriggerRun("true", TriggerStatus.OK, 0)]
    assert r.ok
