"""Repository cases that git cannot hold (FIFOs, sockets, devices, empty or
non-UTF-8 names, symlinked group files), made at run time, and the
Repository API the daemon builds on."""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import pathlib
import shutil
import socket
import stat
import tempfile

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from safcm.common.errors import ConfigError, UnknownGroupError, UnknownHostError
from safcm.common.model import FileType
from safcm.master.compiler import compile_host, compile_hosts, load_repository


def write(root, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


@pytest.fixture
def repo(tmp_path):
    """A minimal valid repository: hosts h1 and h2, group web holds h1."""
    root = tmp_path / "repo"
    write(
        root,
        {
            "hosts.yaml": "- name: h1\n- name: h2\n",
            "groups.yaml": "web: [h1]\n",
            "all/files/etc/motd": "hello\n",
        },
    )
    return root


def problems(root) -> list[str]:
    with pytest.raises(ConfigError) as info:
        r = load_repository(str(root))
        compile_hosts(r, r.hosts)
    return [str(p) for p in info.value.problems]


def test_special_files_in_files_are_errors_and_never_block(repo):
    files = repo / "all/files/etc"
    os.mkfifo(files / "fifo")
    os.mknod(files / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(files / "sock"))
    try:
        assert problems(repo) == [
            "all/files/etc/fifo: is a FIFO; only regular files, directories and symlinks"
            " can be managed",
            "all/files/etc/null: is a character device; only regular files, directories and"
            " symlinks can be managed",
            "all/files/etc/sock: is a socket; only regular files, directories and symlinks"
            " can be managed",
        ]
    finally:
        sock.close()


def test_a_fifo_instead_of_a_yaml_file_does_not_block(repo):
    (repo / "groups.yaml").unlink()
    os.mkfifo(repo / "groups.yaml")
    assert problems(repo) == ["groups.yaml: must be a regular file, not a FIFO"]


def test_symlinked_repository_files_are_not_followed(repo, tmp_path):
    outside = tmp_path / "outside"
    write(outside, {"permissions.yaml": '/etc/motd: "0600"\n', "files/x": "x\n"})
    (repo / "web").mkdir()
    (repo / "web/permissions.yaml").symlink_to(outside / "permissions.yaml")
    (repo / "web/files").symlink_to(outside / "files")
    (repo / "h1").symlink_to(outside)
    assert problems(repo) == [
        "h1: the directory of group or host 'h1' must be a directory, not a symlink",
        "web/files: must be a directory, not a symlink",
        "web/permissions.yaml: must be a regular file, not a symlink",
    ]


def test_symlinks_in_files_are_kept_with_their_target(repo):
    # A symlink to a directory is a symlink: nothing below it is read.
    (repo / "all/files/etc/real").symlink_to("/etc")
    (repo / "all/files/etc/rel").symlink_to("../motd")
    config = compile_host(load_repository(str(repo)), "h2")
    by_path = {f.spec.path: f.spec for f in config.files}
    assert by_path["/etc/real"].type is FileType.SYMLINK
    assert by_path["/etc/real"].data == b"/etc"
    assert by_path["/etc/rel"].data == b"../motd"
    assert by_path["/etc/rel"].mode == 0o777
    assert not any(p.startswith("/etc/real/") for p in by_path)


def test_non_utf8_file_names_and_targets_are_errors(repo):
    files = os.fsencode(repo / "all/files/etc")
    with open(os.path.join(files, b"caf\xe9"), "wb") as f:
        f.write(b"x")
    os.symlink(b"targ\xffet", os.path.join(files, b"link"))
    assert problems(repo) == [
        "all/files/etc/caf\\xe9: file name is not valid UTF-8; rename it",
        "all/files/etc/link: symlink target is not valid UTF-8",
    ]


def test_control_characters_in_names_are_kept(repo):
    # Legal on Linux; escaped when shown (tests/master/test_show.py).
    write(repo, {"all/files/etc/new\nline": "x\n"})
    config = compile_host(load_repository(str(repo)), "h1")
    assert "/etc/new\nline" in [f.spec.path for f in config.files]


def test_an_empty_directory_is_managed(repo):
    (repo / "all/files/var/empty").mkdir(parents=True)
    config = compile_host(load_repository(str(repo)), "h1")
    spec = {f.spec.path: f.spec for f in config.files}["/var/empty"]
    assert (spec.type, spec.mode, spec.user, spec.group) == (FileType.DIR, 0o755, "root", "root")


def test_content_is_read_once_and_shared_between_hosts(repo):
    r = load_repository(str(repo))
    # The repository may change or vanish after loading: compiling reads nothing.
    shutil.rmtree(repo)
    configs = compile_hosts(r, r.hosts)
    a = {f.spec.path: f.spec for f in configs["h1"].files}
    b = {f.spec.path: f.spec for f in configs["h2"].files}
    assert a["/etc/motd"].data == b"hello\n"
    assert a["/etc/motd"].data is b["/etc/motd"].data


def test_a_conflict_that_several_hosts_share_is_reported_once(tmp_path):
    root = tmp_path / "repo"
    write(
        root,
        {
            "hosts.yaml": "- name: h1\n- name: h2\n- name: h3\n",
            "groups.yaml": "a: [h1, h2, h3]\nb: [h1, h2, h3]\n",
            "a/files/f": "a\n",
            "b/files/f": "b\n",
        },
    )
    assert len(problems(root)) == 1


def test_compiling_an_unknown_host(repo):
    r = load_repository(str(repo))
    with pytest.raises(UnknownHostError) as info:
        compile_host(r, "nope")
    assert info.value.name == "nope"
    assert str(info.value) == "hosts.yaml: unknown host 'nope'"
    with pytest.raises(ConfigError) as info:
        compile_hosts(r, ["h1", "nope", "h2", "nope2"])
    assert [str(p) for p in info.value.problems] == [
        "hosts.yaml: unknown host 'nope'",
        "hosts.yaml: unknown host 'nope2'",
    ]


def test_compile_hosts_returns_the_hosts_asked_for_in_order(repo):
    r = load_repository(str(repo))
    assert list(compile_hosts(r, ["h2", "h1", "h2"])) == ["h2", "h1"]


def test_repository_api(tmp_path):
    root = tmp_path / "repo"
    write(
        root,
        {
            "hosts.yaml": "- name: web2\n- name: web1\n- name: db1\n",
            "groups.yaml": "web: ['web*']\nweb_remove: [web2]\nback: [web, db1]\nnone: []\n",
            "config.yaml": "group_order: [web, back]\n",
        },
    )
    r = load_repository(str(root))
    assert r.hosts == ["web2", "web1", "db1"]
    assert r.members("web") == ["web1"]
    assert r.members("back") == ["web1", "db1"]  # hosts.yaml order
    assert r.members("all") == ["web2", "web1", "db1"]
    assert r.members("none") == []
    assert r.members("db1") == ["db1"]  # a host is a group of its own
    assert r.groups_of("web1") == ["all", "web", "back", "web1"]
    assert r.groups_of("web2") == ["all", "web2"]
    assert r.has_group("all") and r.has_group("back") and r.has_group("db1")
    assert not r.has_group("web_remove")
    assert not r.has_group("nope")
    assert r.group_names() == ["all", "back", "none", "web"]
    with pytest.raises(UnknownGroupError) as info:
        r.members("nope")
    assert info.value.name == "nope"
    assert "unknown group 'nope'" in str(info.value)
    with pytest.raises(UnknownHostError):
        r.groups_of("nope")


def test_repository_is_not_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="cannot open repository"):
        load_repository(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="repository is not a directory"):
        load_repository(str(tmp_path / "file"))


def test_a_path_beyond_path_max_is_an_error(repo):
    # 17 levels of 250 bytes: the path is longer than PATH_MAX (4095 bytes)
    # while each directory name stays within NAME_MAX. Created with *at calls
    # relative to an open directory, since the full path is too long for open().
    fd = os.open(repo / "all/files", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(17):
            os.mkdir("d" * 250, dir_fd=fd)
            new = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
    finally:
        os.close(fd)
    found = problems(repo)
    assert len(found) == 1
    assert found[0].endswith(": path is longer than 4095 bytes")


# --- group resolution against a plain recursive reference ---------------------

HOST_POOL = ["web1", "web2", "db1", "db2", "mail"]
GLOB_POOL = ["web*", "db?", "*1", "[dm]*"]


@st.composite
def group_graphs(draw):
    """groups.yaml content: group -> (members, removed), members naming hosts,
    globs and any group (so cycles happen)."""
    names = [f"g{i}" for i in range(draw(st.integers(1, 5)))]
    member = st.sampled_from(HOST_POOL + GLOB_POOL + names + ["all"])
    graph = {}
    for name in names:
        members = draw(st.lists(member, max_size=4, unique=True))
        removed = draw(st.lists(member, max_size=2, unique=True))
        graph[name] = (members, removed)
    return graph


def reference_members(graph, name, stack=()):
    """Hosts of a group, or raise RecursionError on a cycle."""
    if name == "all":
        return set(HOST_POOL)
    if name in stack:
        raise RecursionError(name)

    def expand(m):
        if m in graph or m == "all":
            return reference_members(graph, m, (*stack, name))
        if any(c in m for c in "*?["):
            return set(fnmatch.filter(HOST_POOL, m))
        return {m}

    members, removed = graph[name]
    hosts = set().union(*(expand(m) for m in members)) if members else set()
    for m in removed:
        hosts -= expand(m)
    return hosts


@settings(max_examples=200, deadline=None)
@given(group_graphs())
def test_group_resolution_matches_the_reference(graph):
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "hosts.yaml").write_text("".join(f"- name: {h}\n" for h in HOST_POOL))
        lines = []
        for name, (members, removed) in graph.items():
            lines.append(f"{name}: {json.dumps(members)}\n")
            if removed:
                lines.append(f"{name}_remove: {json.dumps(removed)}\n")
        (root / "groups.yaml").write_text("".join(lines))
        try:
            expected = {g: reference_members(graph, g) for g in graph}
        except RecursionError:
            expected = None
        event("cycle" if expected is None else "no cycle")
        if expected is None:
            with pytest.raises(ConfigError) as info:
                load_repository(str(root))
            assert info.value.problems
            for problem in info.value.problems:
                assert problem.message.startswith("group cycle: ")
                cycle = problem.message.removeprefix("group cycle: ").split(" -> ")
                assert cycle[0] == cycle[-1]
                for a, b in itertools.pairwise(cycle):
                    members, removed = graph[a]
                    assert b in members or b in removed, (a, b)
        else:
            repo = load_repository(str(root))
            for g, hosts in expected.items():
                assert repo.members(g) == [h for h in HOST_POOL if h in hosts], g
            for h in HOST_POOL:
                inside = sorted(g for g in graph if h in expected[g])
                assert repo.groups_of(h) == ["all", *inside, h]


def test_templates_cannot_reach_other_hosts_through_the_context(repo):
    # in_group is a bound method of an object that holds the repository; the
    # sandbox must keep a template from walking from it to other hosts' data.
    write(
        repo,
        {
            "all/files/etc/peek": "{{ in_group.__self__.repo.hosts }}\n",
            "all/templates.yaml": "- /etc/peek\n",
        },
    )
    found = problems(repo)
    assert len(found) == 2  # one per host
    assert found[0].startswith("all/files/etc/peek:1: template error for host h1: ")
    assert "__self__" in found[0]
