"""compile_hosts() runs one contest per distinct key and shares it between
hosts (master/compiler.py): each host must still get exactly what compiling
it alone gives, its own templates, and its own problems."""

from __future__ import annotations

import os
import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from safcm.common.errors import ConfigError, ConfigProblem
from safcm.master.compiler import HostConfig, compile_host, compile_hosts, load_repository
from safcm.master.facts import HostFacts
from safcm.master.repository import Repository


def write(root: pathlib.Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def compile_problems(repo: Repository, hosts: list[str], facts=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        compile_hosts(repo, hosts, facts)
    return [str(p) for p in info.value.problems]


def by_path(config: HostConfig) -> dict:
    return {f.spec.path: f for f in config.files}


def test_hosts_of_one_key_share_its_files_but_not_their_templates(tmp_path):
    write(
        tmp_path,
        {
            "hosts.yaml": "- name: h1\n- name: h2\n- name: h3\n",
            # "db" has no directory: h3 gets what h1 and h2 get
            "groups.yaml": "web: [h1, h2, h3]\ndb: [h3]\n",
            "web/files/etc/motd": "Host {{ host }}\n",
            "web/files/etc/plain": "plain\n",
            "web/templates.yaml": "- /etc/motd\n",
            "web/triggers.yaml": "/etc/plain: [reload]\n",
        },
    )
    repo = load_repository(str(tmp_path))
    configs = compile_hosts(repo, ["h1", "h2", "h3"])
    h1, h2, h3 = (by_path(configs[h]) for h in ("h1", "h2", "h3"))
    assert h1["/etc/motd"].spec.data == b"Host h1\n"
    assert h2["/etc/motd"].spec.data == b"Host h2\n"
    assert h3["/etc/motd"].spec.data == b"Host h3\n"
    # Settled once: the other hosts get the first one's objects, a spec
    # with triggers included (compiling each alone makes one per host).
    assert h1["/etc/plain"] is h2["/etc/plain"] is h3["/etc/plain"]
    assert h1["/etc/plain"].spec.triggers == ("reload",)
    assert h1["/etc"] is h2["/etc"] is h3["/etc"]
    # Yet each result is a list of its own.
    assert configs["h1"].files is not configs["h2"].files
    assert configs["h1"].groups == ["all", "web", "h1"]
    assert configs["h3"].groups == ["all", "db", "web", "h3"]


def test_hosts_of_one_key_get_lists_of_their_own(tmp_path):
    write(
        tmp_path,
        {
            "hosts.yaml": "- name: h1\n- name: h2\n",
            "groups.yaml": "web: [h1, h2]\n",
            "web/files/etc/app/conf": "plain\n",
            "web/absent.yaml": "- /etc/old\n",
            "web/purge.yaml": "- /etc/app\n",
            "web/secrets.yaml": "- /etc/app/conf\n",
            "web/packages.yaml": "install: [curl]\n",
        },
    )
    repo = load_repository(str(tmp_path))
    configs = compile_hosts(repo, ["h1", "h2"])
    h1, h2 = configs["h1"], configs["h2"]

    def lists(config: HostConfig) -> list[list]:
        return [config.files, config.absent, config.purge, config.secrets, config.packages]

    before = [list(found) for found in lists(h2)]
    assert all(before)
    # What a caller does to one host's result leaves the other's alone.
    for found in lists(h1):
        found.clear()
    assert lists(h2) == before


def test_a_host_with_a_directory_of_its_own_has_a_contest_of_its_own(tmp_path):
    write(
        tmp_path,
        {
            "hosts.yaml": "- name: h1\n- name: h2\n- name: h3\n",
            "groups.yaml": "web: [h1, h2, h3]\n",
            "web/files/etc/app": "web\n",
            "h2/files/etc/app": "h2\n",  # the host's own group beats web
            "h3/packages.yaml": "install: [curl]\n",  # no files, a directory still
        },
    )
    repo = load_repository(str(tmp_path))
    for order in (["h1", "h2", "h3"], ["h2", "h1", "h3"], ["h3", "h2", "h1"]):
        configs = compile_hosts(repo, order)
        assert by_path(configs["h1"])["/etc/app"].spec.data == b"web\n"
        assert by_path(configs["h2"])["/etc/app"].spec.data == b"h2\n"
        assert by_path(configs["h3"])["/etc/app"].spec.data == b"web\n"
        assert [p.spec.name for p in configs["h3"].packages] == ["curl"]
        assert configs["h1"].packages == configs["h2"].packages == []


def test_hosts_in_the_same_groups_but_detected_apart_do_not_share(tmp_path):
    write(
        tmp_path,
        {
            "hosts.yaml": "- name: h1\n- name: h2\n",
            "groups.yaml": "web: [h1, h2]\ndeb: {detect: {os_id: debian}}\n",
            "config.yaml": "group_order: [web, deb]\n",
            "web/files/etc/app": "web\n",
            "deb/files/etc/app": "deb\n",
        },
    )
    repo = load_repository(str(tmp_path))
    facts = {"h1": HostFacts({"os_id": "debian"}), "h2": HostFacts({"os_id": "arch"})}
    configs = compile_hosts(repo, ["h1", "h2"], facts)
    assert by_path(configs["h1"])["/etc/app"].spec.data == b"deb\n"
    assert by_path(configs["h2"])["/etc/app"].spec.data == b"web\n"


def test_each_host_of_a_key_gets_the_problems_that_name_it(tmp_path):
    write(
        tmp_path,
        {
            "hosts.yaml": "- name: h1\n- name: h2\n- name: h3\n",
            "groups.yaml": "a: [h1, h2, h3]\nb: [h3]\n",
            "a/files/x": "x\n",
            "a/files/t": "{{ facts.os_id }}\n",
            "a/templates.yaml": "- /t\n",
            "a/triggers.yaml": "/y: [echo y]\n",
            "b/files/y": "y\n",
            "b/files/x": "b\n",
        },
    )
    repo = load_repository(str(tmp_path))
    facts = {"h2": HostFacts({"os_id": "debian"})}
    unreported = "no fact 'os_id': this host has not reported its facts yet"
    assert compile_problems(repo, ["h1", "h2", "h3"], facts) == [
        "a/triggers.yaml:1: /y has triggers, but host h1 (in group 'a') gets no file at that path",
        f"a/files/t:1: template error for host h1: {unreported}",
        "a/triggers.yaml:1: /y has triggers, but host h2 (in group 'a') gets no file at that path",
        "a/files/x: /x is provided by groups 'a' and 'b', and no group_order in config.yaml"
        " ranks them; list them in group_order or provide the path from one group only",
        f"a/files/t:1: template error for host h3: {unreported}",
    ]
    # The problems of a host do not depend on the hosts compiled before it.
    assert compile_problems(repo, ["h2"], facts) == [
        "a/triggers.yaml:1: /y has triggers, but host h2 (in group 'a') gets no file at that path",
    ]


# --- shared against alone, over generated repositories -------------------------

HOSTS = ["h1", "h2", "h3", "h4", "h5"]
GROUPS = ["a", "b", "c"]
DETECTED = "deb"  # detected from os_id: debian
# A group's tree under files/, parents before children ("etc" is implicit).
TREE = ["etc/x", "etc/y", "etc/d", "etc/d/z", "srv"]
DIRS = ["etc/d", "srv"]
TEMPLATES = [
    "{{ host }}\n",
    "{{ groups | join(' ') }}\n",
    "{% if in_group('a') %}in a{% endif %}\n",
    "{{ facts.os_id }}\n",  # a problem for a host that reported no os_id
]
PLAIN = ["one\n", "two\n"]


@st.composite
def group_dirs(draw, group: str) -> dict[str, str] | None:
    """One group's directory, as rel path -> content ("" for an empty
    directory, "->target" for a symlink); None: the group has none."""
    if not draw(st.booleans()):
        return None
    out: dict[str, str] = {}
    kinds: dict[str, str] = {}
    templates, permissions, triggers = [], [], []
    for path in TREE:
        parent = path.rpartition("/")[0]
        if kinds.get(parent, "dir") != "dir":
            continue
        kind = draw(st.sampled_from(["none", "none", "file", "template", "dir", "link"]))
        kinds[path] = kind
        rel = f"{group}/files/{path}"
        if kind == "file":
            out[rel] = draw(st.sampled_from(PLAIN + TEMPLATES))
        elif kind == "template":
            out[rel] = draw(st.sampled_from(TEMPLATES))
            templates.append(f"- /{path}\n")
        elif kind == "dir":
            out[rel + "/"] = ""
        elif kind == "link":
            out[rel] = "->" + draw(st.sampled_from(["t1", "t2"]))
        if kind in ("file", "template", "dir") and draw(st.booleans()):
            mode = draw(st.sampled_from(["0600", "0644"] if kind != "dir" else ["0750", "0755"]))
            permissions.append(f'/{path}: "{mode}"\n')
        if kind != "none" and draw(st.integers(0, 3)) == 0:
            triggers.append(f"/{path}: [echo {group}]\n")
    provided = {p for p, k in kinds.items() if k != "none"}
    unprovided = sorted(set(TREE) - provided)
    absent = draw(st.lists(st.sampled_from(unprovided), unique=True)) if unprovided else []
    out[f"{group}/absent.yaml"] = "".join(
        f"- {{path: /{p}, recursive: true}}\n" if draw(st.booleans()) else f"- /{p}\n"
        for p in absent
    )
    purgeable = [p for p in DIRS if kinds.get(p, "none") in ("none", "dir")]
    purge = draw(st.lists(st.sampled_from(purgeable), unique=True)) if purgeable else []
    out[f"{group}/purge.yaml"] = "".join(f"- /{p}\n" for p in purge)
    secrets = draw(st.lists(st.sampled_from(["etc/x", "etc/y"]), unique=True))
    out[f"{group}/secrets.yaml"] = "".join(f"- /{p}\n" for p in secrets)
    packages: dict[str, list[str]] = {"install": [], "remove": []}
    for name in ("p1", "p2"):
        want = draw(st.sampled_from([None, "install", "remove"]))
        if want is not None:
            packages[want].append(name)
    out[f"{group}/packages.yaml"] = "".join(
        f"{want}: [{', '.join(names)}]\n" for want, names in packages.items() if names
    )
    out[f"{group}/templates.yaml"] = "".join(templates)
    out[f"{group}/permissions.yaml"] = "".join(permissions)
    out[f"{group}/triggers.yaml"] = "".join(triggers)
    return out


@st.composite
def repositories(draw) -> tuple[dict[str, str], dict[str, HostFacts | None], list[str]]:
    """A small repository in which hosts often share their groups (each
    takes one of a few memberships), the hosts' facts, and an order to
    compile them in."""
    memberships = [("a",), ("a",), ("a", "b"), ("a", "b"), (), ("b", "c")]
    member_of = {h: draw(st.sampled_from(memberships)) for h in HOSTS}
    files = {
        "hosts.yaml": "".join(f"- name: {h}\n" for h in HOSTS),
        "groups.yaml": "".join(
            f"{g}: [{', '.join(h for h in HOSTS if g in member_of[h])}]\n" for g in GROUPS
        )
        + f"{DETECTED}: {{detect: {{os_id: debian}}}}\n",
    }
    order = draw(st.permutations([*GROUPS, DETECTED]))
    ranked = order[: draw(st.integers(0, len(order)))]
    if ranked:
        files["config.yaml"] = f"group_order: [{', '.join(ranked)}]\n"
    for group in ["all", *GROUPS, DETECTED, *HOSTS]:
        # A host's own directory less often: most hosts share their contest.
        if group in HOSTS and draw(st.integers(0, 3)) != 0:
            continue
        files.update(draw(group_dirs(group)) or {})
    os_ids = st.sampled_from([None, "debian", "debian", "arch"])
    facts = {h: None if (i := draw(os_ids)) is None else HostFacts({"os_id": i}) for h in HOSTS}
    return files, facts, draw(st.permutations(HOSTS))


def materialize(root: pathlib.Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            path.mkdir(exist_ok=True)
        elif content.startswith("->"):
            os.symlink(content[2:], path)
        else:
            path.write_text(content)


def each_alone(
    repo: Repository, hosts: list[str], facts: dict[str, HostFacts | None]
) -> dict[str, HostConfig] | list[ConfigProblem]:
    """What compile_hosts() must give: each host compiled alone (a contest
    of its own), every problem once, in the order the hosts find them."""
    configs: dict[str, HostConfig] = {}
    problems: list[ConfigProblem] = []
    for host in hosts:
        try:
            configs[host] = compile_host(repo, host, facts[host])
        except ConfigError as e:
            problems.extend(p for p in e.problems if p not in problems)
    return problems or configs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repositories())
def test_sharing_contests_gives_what_compiling_each_host_alone_gives(case):
    files, facts, hosts = case
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        materialize(root, files)
        try:
            repo = load_repository(str(root))
        except ConfigError:
            event("the repository does not load")
            return
    keys = {tuple(g for g in repo.groups_of(h, facts[h]) if repo.has_directory(g)) for h in HOSTS}
    event(f"{len(keys)} distinct keys for {len(HOSTS)} hosts")
    expected = each_alone(repo, hosts, facts)
    try:
        got: dict[str, HostConfig] | list[ConfigProblem] = compile_hosts(repo, hosts, facts)
    except ConfigError as e:
        got = e.problems
    event("problems" if isinstance(expected, list) else "compiles")
    assert got == expected
