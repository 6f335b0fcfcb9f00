"""The master's repository cache (master/repocache.py): an unchanged tree is
not read again, and every kind of change is. Real files in temporary
directories; the loader is the real one, counted through the cache's seam,
and the clock is injected so that a tree can count as settled without
waiting for it."""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
from collections.abc import Callable

import pytest

from safcm.common.errors import ConfigError
from safcm.master.repocache import (
    RACY_WINDOW_NS,
    RepositoryCache,
    Walk,
    keepable,
    make_walk,
    serving,
    unchanged,
    walk_tree,
)
from safcm.master.repository import Repository, load_repository

# Descriptors a walk may open beyond those in use: the depth of the test
# trees plus scandir's duplicate, with room to spare, far below their width.
WALK_FD_ROOM = 32
# Added to the clock for a tree that has settled: well past the racy window.
SETTLED_NS = 3600 * 10**9


def write(root, files: dict[str, str]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


@pytest.fixture
def repo(tmp_path):
    """Hosts h1 and h2, group web holds h1; a file, a symlink and a directory."""
    root = tmp_path / "repo"
    write(
        root,
        {
            "hosts.yaml": "- name: h1\n- name: h2\n",
            "groups.yaml": "web: [h1]\n",
            "all/files/etc/motd": "hello\n",
            "all/files/etc/app/app.conf": "a = 1\n",
            "web/files/etc/web.conf": "web\n",
        },
    )
    os.symlink("aaa", root / "all/files/etc/link")
    (root / ".git").mkdir()
    (root / ".git/HEAD").write_text("ref: refs/heads/main\n")
    return root


class Counting:
    """load_repository, counting its calls: each one reads and parses the tree."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, path: str, *, targets_only: bool = False) -> Repository:
        self.calls.append(targets_only)
        return load_repository(path, targets_only=targets_only)


def settled_cache() -> tuple[RepositoryCache, Counting]:
    loads = Counting()
    return RepositoryCache(loads, clock=lambda: time.time_ns() + SETTLED_NS), loads


# ---------------------------------------------------------------------------
# The decisions, on data


def walk(*entries: tuple[str, int], newest: int = 0) -> Walk:
    """A walk of (path, ctime) entries, the other fields fixed."""
    return make_walk([(p, 1, 2, 0o100644, 0, 0, 5, newest, ctime, None) for p, ctime in entries])


W1 = walk(("", 10), ("a", 10))
W2 = walk(("", 10), ("a", 11))


@pytest.mark.parametrize(
    ("kept", "current", "expected"),
    [
        (None, W1, False),  # nothing kept
        (W1, None, False),  # the tree could not be walked
        (W1, W1, True),
        (W1, walk(("", 10), ("a", 10)), True),  # equal, not the same object
        (W1, W2, False),  # one ctime
        (W1, walk(("", 10)), False),  # an entry gone
        (W1, walk(("", 10), ("a", 10), ("b", 10)), False),  # an entry added
        (W1, walk(("", 10), ("b", 10)), False),  # renamed
    ],
)
def test_unchanged(kept, current, expected):
    assert unchanged(kept, current) is expected


@pytest.mark.parametrize(
    ("newest", "started", "expected"),
    [
        (0, RACY_WINDOW_NS + 1, True),
        (1, RACY_WINDOW_NS + 1, False),  # exactly at the window's edge
        (10**18, 10**18 + RACY_WINDOW_NS - 1, False),  # changed just before the walk
        (10**18, 10**18, False),  # in the same tick as the walk
        (10**18 + 5, 10**18, False),  # timestamps in the future
    ],
)
def test_keepable_only_outside_the_racy_window(newest, started, expected):
    assert keepable(make_walk([("", 1, 2, 0o40755, 0, 0, 0, 0, newest, None)]), started) is expected


def test_newest_is_the_larger_of_mtime_and_ctime():
    assert make_walk([("", 1, 2, 0o40755, 0, 0, 0, 7, 3, None)]).newest_ns == 7
    assert make_walk([("", 1, 2, 0o40755, 0, 0, 0, 3, 7, None)]).newest_ns == 7


@pytest.mark.parametrize(
    ("kept", "current", "targets_only", "expected"),
    [
        ({}, W1, False, None),
        ({False: W1}, W1, False, False),
        ({False: W1}, W1, True, False),  # a full load serves ping
        ({True: W1}, W1, True, True),
        ({True: W1}, W1, False, None),  # a ping load never serves files
        ({False: W1}, W2, False, None),
        ({True: W2, False: W1}, W2, False, None),
        ({True: W2, False: W1}, W2, True, True),
        ({False: W1}, None, False, None),
    ],
)
def test_serving(kept, current, targets_only, expected):
    assert serving(kept, current, targets_only) == expected


# ---------------------------------------------------------------------------
# Walking real trees


def test_walk_lists_everything_but_top_level_dot_names(repo):
    walked = walk_tree(str(repo))
    assert walked is not None
    paths = [e[0] for e in walked.entries]
    assert sorted(paths) == [
        "",
        "all",
        "all/files",
        "all/files/etc",
        "all/files/etc/app",
        "all/files/etc/app/app.conf",
        "all/files/etc/link",
        "all/files/etc/motd",
        "groups.yaml",
        "hosts.yaml",
        "web",
        "web/files",
        "web/files/etc",
        "web/files/etc/web.conf",
    ]
    targets = {e[0]: e[9] for e in walked.entries}
    assert targets["all/files/etc/link"] == "aaa"
    assert targets["hosts.yaml"] is None


def test_a_wide_tree_is_walked_with_one_descriptor_per_level(repo):
    """The master has sockets to keep: 200 sibling directories must not take
    200 descriptors at once, and none is left open."""
    for i in range(200):
        (repo / f"all/files/wide/d{i:03d}/sub").mkdir(parents=True)
    in_use = len(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + WALK_FD_ROOM, hard))
    try:
        walked = walk_tree(str(repo))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert walked is not None
    assert sum(e[0].startswith("all/files/wide/") for e in walked.entries) == 400
    assert len(os.listdir("/proc/self/fd")) == in_use


def test_walk_of_a_missing_root_is_none(tmp_path):
    assert walk_tree(str(tmp_path / "nosuch")) is None


def test_walk_never_follows_a_symlinked_directory(repo, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x\n")
    os.symlink(outside, repo / "all/files/etc/out")
    walked = walk_tree(str(repo))
    assert walked is not None
    paths = [e[0] for e in walked.entries]
    assert "all/files/etc/out" in paths
    assert not any(p.startswith("all/files/etc/out/") for p in paths)


# ---------------------------------------------------------------------------
# The cache, on real trees


def test_an_unchanged_repository_is_not_read_again(repo):
    cache, loads = settled_cache()
    first = cache.load(str(repo))
    assert cache.load(str(repo)) is first
    assert cache.load(str(repo)) is first
    assert loads.calls == [False]


_opened: list[tuple[object, ...]] | None = None
_hooked = False


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _opened is not None:
        _opened.append(args)


def test_a_cached_load_opens_no_file_of_the_repository(repo):
    """Through Python's audit hooks ("open" is raised by open() and os.open()):
    what the cache opens to check the tree is directories, never a file."""
    global _opened, _hooked
    if not _hooked:
        sys.addaudithook(_audit)  # cannot be removed; inert while _opened is None
        _hooked = True
    cache, _ = settled_cache()
    cache.load(str(repo))
    _opened = []
    try:
        cache.load(str(repo))
        opened = _opened
    finally:
        _opened = None
    assert opened, "the audit hook saw nothing: the check is not observed"
    # ("open", (path, mode, flags)); flags is an int for os.open(), as the walk uses.
    files = [a for a in opened if not (isinstance(a[2], int) and a[2] & os.O_DIRECTORY)]
    assert files == []


def _same_size_rewrite_keeping_mtime(root):
    path = root / "all/files/etc/motd"
    before = os.stat(path)
    path.write_text("HELLO\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )


def _rewrite_through_a_hard_link(root):
    """The same inode written through a name outside the repository."""
    path = root / "all/files/etc/motd"
    outside = root.parent / "motd-link"
    os.link(path, outside)
    before = os.stat(path)
    outside.write_text("HELLO\n")
    os.utime(outside, ns=(before.st_atime_ns, before.st_mtime_ns))


def _replace_by_rename(root):
    """An editor's save: a new file renamed over the old one."""
    new = root / "all/files/etc/.motd.new"
    new.write_text("hello, again\n")
    os.rename(new, root / "all/files/etc/motd")


def _retarget_symlink_keeping_times(root):
    path = root / "all/files/etc/link"
    before = os.lstat(path)
    os.unlink(path)
    os.symlink("bbb", path)  # same length
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def _chown(root):
    os.chown(root / "all/files/etc/motd", 1234, 1234)


def _add_group_yaml(root):
    (root / "web/permissions.yaml").write_text('/etc/web.conf: "0600"\n')


CHANGES: dict[str, tuple[Callable[..., None], Callable[[Repository], object]]] = {
    # name: (the change, what the reloaded repository shows of it)
    "content, new size": (
        lambda r: (r / "all/files/etc/motd").write_text("hello, world\n"),
        lambda repo: repo.entries["all"]["/etc/motd"].spec.data,
    ),
    "content, same size, mtime put back": (
        _same_size_rewrite_keeping_mtime,
        lambda repo: repo.entries["all"]["/etc/motd"].spec.data,
    ),
    "content, through a hard link outside": (
        _rewrite_through_a_hard_link,
        lambda repo: repo.entries["all"]["/etc/motd"].spec.data,
    ),
    "file replaced by a rename over it": (
        _replace_by_rename,
        lambda repo: repo.entries["all"]["/etc/motd"].spec.data,
    ),
    "file added": (
        lambda r: (r / "all/files/etc/new").write_text("new\n"),
        lambda repo: sorted(repo.entries["all"]),
    ),
    "file removed": (
        lambda r: (r / "all/files/etc/app/app.conf").unlink(),
        lambda repo: sorted(repo.entries["all"]),
    ),
    "file renamed": (
        lambda r: os.rename(r / "all/files/etc/motd", r / "all/files/etc/motd2"),
        lambda repo: sorted(repo.entries["all"]),
    ),
    "directory renamed": (
        lambda r: os.rename(r / "all/files/etc/app", r / "all/files/etc/app2"),
        lambda repo: sorted(repo.entries["all"]),
    ),
    "empty directory added": (
        lambda r: (r / "all/files/etc/empty").mkdir(),
        lambda repo: sorted(repo.entries["all"]),
    ),
    "mode changed": (
        lambda r: os.chmod(r / "all/files/etc/motd", 0o755),
        lambda repo: repo.entries["all"]["/etc/motd"].spec.mode,
    ),
    "owner changed": (_chown, lambda repo: None),
    "symlink retargeted, same length and times": (
        _retarget_symlink_keeping_times,
        lambda repo: repo.entries["all"]["/etc/link"].spec.data,
    ),
    "hosts.yaml edited": (
        lambda r: (r / "hosts.yaml").write_text("- name: h1\n- name: h2\n- name: h3\n"),
        lambda repo: repo.hosts,
    ),
    "group YAML file added": (
        _add_group_yaml,
        lambda repo: repo.entries["web"]["/etc/web.conf"].spec.mode,
    ),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_every_change_is_read_again(repo, change):
    if change == "owner changed" and os.geteuid() != 0:
        pytest.skip("chown needs root")
    mutate, shown = CHANGES[change]
    cache, loads = settled_cache()
    first = cache.load(str(repo))
    mutate(repo)
    second = cache.load(str(repo))
    assert loads.calls == [False, False]
    assert second is not first
    assert shown(second) == shown(load_repository(str(repo)))  # what the tree holds now
    assert cache.load(str(repo)) is second  # and kept again


def test_a_change_at_the_top_of_git_or_dotfiles_is_not_a_change(repo):
    cache, loads = settled_cache()
    first = cache.load(str(repo))
    (repo / ".git/HEAD").write_text("ref: refs/heads/other\n")
    (repo / ".git/objects").mkdir()
    assert cache.load(str(repo)) is first
    assert loads.calls == [False]


def test_the_root_moved_to_another_directory(repo, tmp_path):
    """config_dir is a symlink that is repointed to a copy: a different tree."""
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, symlinks=True)
    link = tmp_path / "config"
    os.symlink(repo, link)
    cache, loads = settled_cache()
    cache.load(str(link))
    os.unlink(link)
    os.symlink(copy, link)
    (copy / "all/files/etc/motd").write_text("the copy\n")
    assert cache.load(str(link)).entries["all"]["/etc/motd"].spec.data == b"the copy\n"
    assert loads.calls == [False, False]


def test_a_tree_changed_within_the_racy_window_is_read_every_time(repo):
    """A file written in the same timestamp tick as the walk, after it, would
    leave an equal walk on a filesystem with coarse timestamps: a tree that
    changed within RACY_WINDOW_NS of the walk is not kept until it settles."""
    now = [time.time_ns()]  # the tree was written just now
    loads = Counting()
    cache = RepositoryCache(loads, clock=lambda: now[0])
    cache.load(str(repo))
    cache.load(str(repo))
    assert loads.calls == [False, False]
    now[0] = time.time_ns() + RACY_WINDOW_NS + 10**9  # later: the tree has settled
    kept = cache.load(str(repo))
    assert cache.load(str(repo)) is kept
    assert loads.calls == [False, False, False]


def test_a_failed_load_is_not_kept(repo):
    cache, loads = settled_cache()
    (repo / "web/permissions.yaml").write_text('/etc/web.conf: "9999"\n')
    for _ in range(2):
        with pytest.raises(ConfigError):
            cache.load(str(repo))
    assert loads.calls == [False, False]


def test_ping_loads_never_serve_files_runs(repo):
    cache, loads = settled_cache()
    ping = cache.load(str(repo), targets_only=True)
    assert ping.entries == {}
    assert cache.load(str(repo), targets_only=True) is ping
    full = cache.load(str(repo))
    assert "/etc/motd" in full.entries["all"]
    assert cache.load(str(repo), targets_only=True) is full  # a full load serves ping
    assert cache.load(str(repo)) is full
    assert loads.calls == [True, False]


def test_a_broken_group_file_does_not_cost_ping_its_cached_load(repo):
    cache, loads = settled_cache()
    (repo / "web/permissions.yaml").write_text('/etc/web.conf: "9999"\n')
    ping = cache.load(str(repo), targets_only=True)
    with pytest.raises(ConfigError):
        cache.load(str(repo))
    assert cache.load(str(repo), targets_only=True) is ping
    assert loads.calls == [True, False]


def test_another_path_is_another_repository(repo, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(repo, other, symlinks=True)
    (other / "hosts.yaml").write_text("- name: h1\n- name: h9\n")
    cache, loads = settled_cache()
    assert cache.load(str(repo)).hosts == ["h1", "h2"]
    assert cache.load(str(other)).hosts == ["h1", "h9"]
    assert cache.load(str(repo)).hosts == ["h1", "h2"]
    assert len(loads.calls) == 3


def test_a_change_during_a_load_is_read_by_the_next_one(repo):
    """The walk is taken before the load: a file changed after the loader
    read it makes the next walk differ. (A walk after the load would record
    the new tree beside the old content, and keep serving the old content.)"""
    motd = repo / "all/files/etc/motd"

    class ChangingAfterReading(Counting):
        def __call__(self, path: str, *, targets_only: bool = False) -> Repository:
            loaded = super().__call__(path, targets_only=targets_only)
            if len(self.calls) == 1:
                motd.write_text("changed while loading\n")
            return loaded

    loads = ChangingAfterReading()
    cache = RepositoryCache(loads, clock=lambda: time.time_ns() + SETTLED_NS)
    assert cache.load(str(repo)).entries["all"]["/etc/motd"].spec.data == b"hello\n"
    assert cache.load(str(repo)).entries["all"]["/etc/motd"].spec.data == (
        b"changed while loading\n"
    )
    assert len(loads.calls) == 2
