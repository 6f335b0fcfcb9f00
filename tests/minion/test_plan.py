"""The pure planner: decisions, input checks, trigger order and temporary names."""

from __future__ import annotations

import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safcm.common.errors import FileOpError, InvalidPathError, NonEmptyDirectoryError
from safcm.common.model import NAME_MAX, AbsentSpec, FileType, OwedTrigger
from safcm.minion.plan import (
    NO_CHANGE,
    Found,
    Owner,
    Remove,
    Step,
    ancestors,
    check_removals,
    check_specs,
    decide,
    due_commands,
    is_temp_name,
    owe,
    owe_first,
    temp_name,
    trigger_commands,
)

from .tree import spec

ROOT = Owner(0, 0, "root", "root")
NOBODY = Owner(65534, 65534, "nobody", "nogroup")


def found(type="file", mode=0o644, owner=ROOT, data=b"", **kw) -> Found:
    type = FileType(type)
    return Found(type, mode, owner.uid, owner.gid, owner.user, owner.group, len(data), data, **kw)


# What decide() must do, case by case: (spec, owner, found) -> step, remove,
# chown, chmod, interim mode, refusal type.
DECISIONS = [
    ("absent file", spec("/f", data=b"x"), ROOT, None, Step.WRITE, Remove.NOTHING),
    ("absent dir", spec("/d", "dir"), ROOT, None, Step.MKDIR, Remove.NOTHING),
    ("absent link", spec("/l", "symlink", data=b"t"), ROOT, None, Step.WRITE, Remove.NOTHING),
    ("file content", spec("/f", data=b"new"), ROOT, found(data=b"old"), Step.WRITE, Remove.NOTHING),
    ("file mode", spec("/f", mode=0o600), ROOT, found(), Step.WRITE, Remove.NOTHING),
    ("file owner", spec("/f"), NOBODY, found(), Step.WRITE, Remove.NOTHING),
    ("fifo to file", spec("/f"), ROOT, found("fifo"), Step.WRITE, Remove.NOTHING),
    (
        "dir to file",
        spec("/f"),
        ROOT,
        found("dir", 0o755, dir_empty=True),
        Step.WRITE,
        Remove.EMPTY_DIR,
    ),
    ("file to dir", spec("/d", "dir"), ROOT, found(), Step.MKDIR, Remove.NON_DIR),
    (
        "link to dir",
        spec("/d", "dir"),
        ROOT,
        found("symlink", 0o777, data=b"t"),
        Step.MKDIR,
        Remove.NON_DIR,
    ),
    ("dir mode", spec("/d", "dir", 0o750), ROOT, found("dir", 0o755), Step.FIX_DIR, Remove.NOTHING),
]


@pytest.mark.parametrize(
    ("spec_", "owner", "found_", "step", "remove"),
    [d[1:] for d in DECISIONS],
    ids=[d[0] for d in DECISIONS],
)
def test_decide_steps(spec_, owner, found_, step, remove):
    d = decide(spec_, owner, found_)
    assert (d.step, d.remove, d.refusal) == (step, remove, None)
    assert d.change is not None
    assert d.change.created is (found_ is None)


def test_fix_dir_closes_group_and_other_first_when_mode_and_owner_change():
    d = decide(spec("/d", "dir", 0o2775, user="nobody"), NOBODY, found("dir", 0o3757))
    assert (d.step, d.chown, d.chmod) == (Step.FIX_DIR, True, True)
    # owner bits kept, group and other closed, setgid and sticky kept, setuid dropped
    assert d.interim_mode == 0o3700


@pytest.mark.parametrize(
    ("mode", "owner", "chown", "chmod"),
    [(0o750, ROOT, False, True), (0o755, NOBODY, True, False)],
    ids=["mode only", "owner only"],
)
def test_fix_dir_changes_one_thing_without_interim(mode, owner, chown, chmod):
    d = decide(spec("/d", "dir", mode), owner, found("dir", 0o755))
    assert (d.chown, d.chmod, d.interim_mode) == (chown, chmod, None)


def test_non_empty_dir_is_refused_but_recorded():
    d = decide(spec("/x", data=b"new"), ROOT, found("dir", 0o755, dir_empty=False))
    assert isinstance(d.refusal, NonEmptyDirectoryError)
    assert d.refusal.path == "/x"
    assert "remove it by hand" in d.refusal.reason
    assert d.change is not None and d.change.old.type is FileType.DIR


def test_unreadable_large_old_file_is_different():
    too_big = Found(FileType.FILE, 0o644, 0, 0, "root", "root", size=10**9, data=None)
    d = decide(spec("/f", data=b"x"), ROOT, too_big)
    assert d.step is Step.WRITE
    assert "<content not diffed, 1000000000 bytes" in d.change.diff


# -- properties -------------------------------------------------------------

modes = st.integers(0, 0o7777)
owners = st.sampled_from([ROOT, NOBODY, Owner(1, 4, "daemon", "adm"), Owner(4242, 7, None, None)])
contents = st.binary(max_size=64)


@st.composite
def specs_and_owners(draw):
    kind = draw(st.sampled_from([FileType.FILE, FileType.DIR, FileType.SYMLINK]))
    owner = draw(owners)
    if kind is FileType.SYMLINK:
        mode, data = (
            0o777,
            draw(st.binary(min_size=1, max_size=32).filter(lambda b: b"\0" not in b)),
        )
    else:
        mode, data = draw(modes), b"" if kind is FileType.DIR else draw(contents)
    s = spec("/p", kind, mode, data, uid=owner.uid, gid=owner.gid)
    return s, owner


def as_found(s, owner) -> Found:
    return Found(s.type, s.mode, owner.uid, owner.gid, owner.user, owner.group, len(s.data), s.data)


@given(specs_and_owners())
@settings(max_examples=300)
def test_property_what_is_declared_needs_no_change(pair):
    s, owner = pair
    assert decide(s, owner, as_found(s, owner)) is NO_CHANGE


@given(specs_and_owners(), specs_and_owners())
@settings(max_examples=500)
def test_property_any_difference_is_a_recorded_change(wanted, there):
    s, owner = wanted
    old_spec, old_owner = there
    f = as_found(old_spec, old_owner)
    if f.type is FileType.DIR:
        f = Found(f.type, f.mode, f.uid, f.gid, f.user, f.group, 0, b"", dir_empty=True)
    d = decide(s, owner, f)
    same = (
        f.type is s.type
        and f.mode == s.mode
        and (f.uid, f.gid) == (owner.uid, owner.gid)
        and (s.type is FileType.DIR or f.data == s.data)
    )
    assert (d.change is None) == same
    if d.change is not None:
        assert (d.change.old.type, d.change.old.mode, d.change.old.uid) == (f.type, f.mode, f.uid)
        assert (d.change.new.type, d.change.new.mode, d.change.new.uid) == (
            s.type,
            s.mode,
            owner.uid,
        )
        assert (d.change.new.user, d.change.new.group) == (owner.user, owner.group)
        # A diff exactly when content or a link target appears, is replaced
        # or is lost, and there is a line to show.
        old_has = f.type in (FileType.FILE, FileType.SYMLINK)
        new_has = s.type in (FileType.FILE, FileType.SYMLINK)
        replaced = (old_has or new_has) and (f.type is not s.type or f.data != s.data)
        shown = (old_has and f.data != b"") or (new_has and s.data != b"")
        assert (d.change.diff is not None) == (replaced and shown)
    if d.interim_mode is not None:
        assert d.interim_mode & 0o077 == 0  # group and other closed
        assert d.interim_mode & ~f.mode == 0  # never more than the old mode allowed
        assert d.interim_mode & (stat.S_ISGID | stat.S_ISVTX) == f.mode & (
            stat.S_ISGID | stat.S_ISVTX
        )


# -- check_specs --------------------------------------------------------------


def test_check_specs_orders_by_path():
    files = [spec("/b"), spec("/a/x"), spec("/a", "dir"), spec("/", "dir")]
    assert [f.path for f in check_specs(files)] == ["/", "/a", "/a/x", "/b"]


@pytest.mark.parametrize(
    ("files", "path", "reason", "error"),
    [
        ([spec("/a"), spec("/a")], "/a", "declared more than once", FileOpError),
        ([spec("/a//b")], "/a//b", "empty component", InvalidPathError),
        ([spec("/a\0")], "'/a\\x00'", "NUL", InvalidPathError),
        (
            [spec("/a", "symlink", data=b"t"), spec("/a/b/c")],
            "/a/b/c",
            "declared as a symlink",
            FileOpError,
        ),
        ([spec("/", "symlink", data=b"t")], "/", "only be declared as a directory", FileOpError),
        (
            [spec("/d/.f.safcm-tmp-aaaaaaaaaaaaaaaa")],
            "/d/.f.safcm-tmp-aaaaaaaaaaaaaaaa",
            "reserved",
            FileOpError,
        ),
    ],
    ids=["duplicate", "empty component", "NUL", "below a symlink", "root symlink", "temp name"],
)
def test_check_specs_refuses(files, path, reason, error):
    with pytest.raises(error) as info:
        check_specs(files)
    assert info.value.path == path
    assert reason in info.value.reason


# -- triggers -------------------------------------------------------------------


def test_ancestors():
    assert ancestors("/") == ["/"]
    assert ancestors("/a/b") == ["/", "/a", "/a/b"]


def test_trigger_commands_order_and_dedup():
    specs = {
        "/": spec("/", "dir", triggers=("root",)),
        "/etc": spec("/etc", "dir", triggers=("etc", "shared")),
        "/etc/a": spec("/etc/a", triggers=("a", "shared")),
        "/etc/b": spec("/etc/b", triggers=("b",)),
        "/var/x": spec("/var/x", triggers=("x",)),
    }
    assert trigger_commands(["/etc/b", "/etc/a"], specs) == ["root", "etc", "shared", "b", "a"]
    # an undeclared directory between contributes nothing; "/var" is not declared
    assert trigger_commands(["/var/x"], specs) == ["root", "x"]
    assert trigger_commands([], specs) == []
    # a sibling whose name has the changed path as a prefix is not "above" it
    assert trigger_commands(["/etc-other"], {"/etc": specs["/etc"]}) == []


# -- temporary names ------------------------------------------------------------


def test_temp_name_shape():
    assert temp_name("motd", "0123456789abcdef") == ".motd.safcm-tmp-0123456789abcdef"
    assert is_temp_name(".motd.safcm-tmp-0123456789abcdef")
    assert not is_temp_name("motd")
    assert not is_temp_name(".motd.safcm-tmp-0123456789abcdeg")


@given(
    st.text(
        alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
        min_size=1,
    ).filter(lambda n: len(n.encode()) <= NAME_MAX),
    st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
)
@settings(max_examples=300)
def test_property_temp_names_fit_and_are_recognised(name, token):
    t = temp_name(name, token)
    assert len(t.encode("utf-8", "surrogateescape")) <= NAME_MAX
    assert "/" not in t and "\0" not in t
    assert is_temp_name(t)


# -- check_removals -------------------------------------------------------------


@pytest.mark.parametrize(
    ("absent", "path", "reason"),
    [
        ([AbsentSpec("/etc/x")], "/etc/x", "declared and absent at once"),
        ([AbsentSpec("/etc")], "/etc", "absent, but /etc/x is declared below it"),
        ([AbsentSpec("/")], "/", "the root directory cannot be absent"),
        ([AbsentSpec("etc")], "etc", "not absolute"),
    ],
)
def test_check_removals_refuses_contradictions(absent, path, reason):
    with pytest.raises(FileOpError) as info:
        check_removals([spec("/etc/x")], absent, [])
    assert info.value.path == path and reason in info.value.reason


def test_check_removals_orders_absent_deepest_first_and_purge_by_path():
    absent, purge = check_removals(
        [], [AbsentSpec("/a"), AbsentSpec("/a/b/c"), AbsentSpec("/a/b")], ["/z", "/b", "/z"]
    )
    assert [a.path for a in absent] == ["/a/b/c", "/a/b", "/a"]
    assert purge == ["/b", "/z"]


def test_owe_first_adds_only_what_is_not_owed_yet_in_the_order_it_fires():
    specs = {
        "/etc/app": spec("/etc/app", "dir", triggers=("reload",)),
        "/etc/app/a": spec("/etc/app/a", triggers=("check", "reload")),
        "/etc/other": spec("/etc/other"),
    }
    earlier = [OwedTrigger("check", "/x", "J0")]
    assert owe_first(earlier, "/etc/app/a", specs, "J1") == [
        *earlier,
        OwedTrigger("reload", "/etc/app/a", "J1"),
    ]
    assert owe_first(earlier, "/etc/app/gone", specs, "J1") == [
        *earlier,
        OwedTrigger("reload", "/etc/app/gone", "J1"),  # a removal below it
    ]
    assert owe_first(earlier, "/etc/other", specs, "J1") is None  # fires nothing
    assert (
        owe_first([*earlier, OwedTrigger("reload", "/etc/app", "J0")], "/etc/app/a", specs, "J1")
        is None
    )


def test_owe_keeps_each_command_once_with_its_first_cause():
    specs = {
        "/etc/app": spec("/etc/app", "dir", triggers=("reload",)),
        "/etc/app/a": spec("/etc/app/a", triggers=("reload", "check")),
    }
    first = owe([], ["/etc/app/a"], specs, "J1")
    assert first == [
        OwedTrigger("reload", "/etc/app/a", "J1"),
        OwedTrigger("check", "/etc/app/a", "J1"),
    ]
    assert owe(first, ["/etc/app/a"], specs, "J2") == first
    assert due_commands(first, ["check", "new"]) == ["reload", "check", "new"]
