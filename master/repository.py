"""Load and check the configuration repository: everything that does not depend on one host.

The repository (DESIGN.md section 6):

    config.yaml                group_order, default_user, default_group
    hosts.yaml                 - name: web1          (only these can be targeted)
    groups.yaml                web: ["web*"]  /  web_remove: [web3]
                               debian12: {detect: {os_id: debian, os_version_id: "12"}}
    <name>/files/              the tree a member host gets, "/" mirrored
    <name>/permissions.yaml    /path: "MODE [USER [GROUP]]"
    <name>/templates.yaml      - /path               (Jinja2, rendered per host)
    <name>/triggers.yaml       /path: [command, ...]
    <name>/absent.yaml         - /path  or  - {path: /path, recursive: true}
    <name>/purge.yaml          - /directory          (undeclared entries are removed)
    <name>/secrets.yaml        - /path               (content never shown or stored)
    <name>/services.yaml       enable: [unit, ...]   (master/services.py reads it)
    <name>/packages.yaml       install: [name, name=version]  remove: [name]
                               (master/packages.py)

<name> is a group from groups.yaml, the implicit group "all", or a host id
(a host is a group of its own). load_repository() reads all of it once,
checks everything that can be checked without choosing a host, and raises
one ConfigError that carries every problem found (file and line), so the
administrator fixes a broken repository in one round. What it returns is
immutable in use: the compiler (master/compiler.py) only reads it, and file
content is read here exactly once and shared by every host's result.

Groups:
- Members are host ids, other groups ("all" included) or fnmatch globs, which
  match host ids from hosts.yaml only. `X_remove` lists members taken out of X
  again (hosts, groups or globs), after X's own members are collected.
- Nesting is allowed; a cycle is a problem that shows it ("a -> b -> a").
- A host id is a group name too, so it may not also be defined in groups.yaml.
- A detected group (`NAME: {detect: {FACT: VALUE or [VALUES], ...}}`) holds
  the hosts whose own reported facts (master/facts.py) have each named fact
  equal to its value, or to one of its values; a fact a host did not report
  means "not a member". `NAME_remove` takes hosts out of it again. Facts
  are the host's claim, so a detected group must never let a host claim its
  way into a configuration meant for others: it is never a member of another
  group nor removed from one (that group's files would follow the claim),
  it has no members of its own, a host's own group is never detected (its
  name is a host id), and it cannot match on `hostname`, a name the host
  chooses (hosts are named by their authenticated minion id: use members).
  What a detected group provides goes only to the hosts that claim its facts,
  each compiled from its own facts alone.

Group directories:
- files/ itself is "/" and is managed like every directory in the tree (as
  safcm does): 0755 and the default owner unless permissions.yaml names "/",
  and a trigger on "/" runs after any change. A directory in files/ always
  gets 0755 by default, whatever its mode in the repository; a regular file
  0755 if any x bit is set in the repository, else 0644; a symlink 0777.
- Everything in files/ is managed, dotfiles included (/root/.profile). Next
  to files/ only the YAML files above may appear (names starting with "." are
  ignored there), so that a misspelt "permission.yaml" is an error, not a
  silently ignored file. A top-level directory that looks like a group's but
  names no group or host is an error too; other top-level entries (README,
  .git) are ignored.
- A directory or YAML file of the repository that is a symlink is an error:
  the repository's own symlinks are never followed. A symlink inside files/
  is data: it is managed as a symlink with its target.

Priority (used by the compiler to settle a path that several groups provide):
"all" ranks below every group, a host's own group above every group, and the
groups listed in config.yaml's group_order rank among themselves in list
order, lowest first. A group not in group_order is ranked only against "all"
and the host's own group.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar

import jinja2
import jinja2.sandbox

from safcm.common.errors import (
    ConfigError,
    ConfigProblem,
    FileOpError,
    InvalidPathError,
    UnknownGroupError,
    UnknownHostError,
)
from safcm.common.ids import minion_id_problem
from safcm.common.model import SYMLINK_MODE, FileSpec, FileType, check_path, is_below
from safcm.common.protocol import FACT_NAMES
from safcm.common.yamlfile import (
    KIND_NAMES,
    Problems,
    YMap,
    YNode,
    YScalar,
    YSeq,
    describe_mode,
    kind_of,
    load_yaml_file,
    read_regular_file,
)
from safcm.master.facts import HostFacts
from safcm.master.packages import PACKAGES_FILE, PackageEntry, read_packages
from safcm.master.services import ServicesRead, read_all_services

# The node kinds _Loader._expect() checks for; a match narrows the node's type.
_Kind = TypeVar("_Kind", YScalar, YSeq, YMap)

CONFIG_FILE = "config.yaml"
HOSTS_FILE = "hosts.yaml"
GROUPS_FILE = "groups.yaml"
FILES_DIR = "files"
PERMISSIONS_FILE = "permissions.yaml"
TEMPLATES_FILE = "templates.yaml"
TRIGGERS_FILE = "triggers.yaml"
ABSENT_FILE = "absent.yaml"
PURGE_FILE = "purge.yaml"
SECRETS_FILE = "secrets.yaml"
GROUP_DIR_ENTRIES = (
    FILES_DIR,
    PERMISSIONS_FILE,
    TEMPLATES_FILE,
    TRIGGERS_FILE,
    ABSENT_FILE,
    PURGE_FILE,
    SECRETS_FILE,
    PACKAGES_FILE,
    "services.yaml",  # read by master/services.py
)
ABSENT_KEYS = ("path", "recursive")

ALL = "all"  # the implicit group that holds every host
REMOVE_SUFFIX = "_remove"  # groups.yaml: "web_remove" takes members out of "web"
GLOB_CHARS = frozenset("*?[")  # a member with one of these is an fnmatch glob over host ids

# groups.yaml: NAME: {detect: {FACT: VALUE or [VALUE, ...]}} is a detected group.
DETECT_KEY = "detect"
# The facts a detected group may match. Not "hostname": the host chooses it,
# so matching it would hand a configuration meant for one host to any host
# that names itself so; hosts are named by their minion id (members).
UNDETECTABLE_FACTS = frozenset({"hostname"})
DETECTABLE_FACTS = tuple(n for n in FACT_NAMES if n not in UNDETECTABLE_FACTS)

CONFIG_KEYS = ("default_group", "default_user", "group_order")
HOST_KEYS = ("name",)
DEFAULT_USER = "root"  # owner of files that name none, if config.yaml names none either
DEFAULT_GROUP = "root"

DEFAULT_DIR_MODE = 0o755
DEFAULT_FILE_MODE = 0o644
DEFAULT_EXEC_MODE = 0o755  # a repository file with any x bit set
EXEC_BITS = 0o111
SETUID, SETGID, STICKY = 0o4000, 0o2000, 0o1000

# Minion ids default to the host's fqdn, so they follow DNS: lowercase, at most
# 253 bytes. Group names are also directory names in the repository.
GROUP_NAME_RE = re.compile(r"[a-z0-9_-]+")
GROUP_NAME_MAX = 255  # NAME_MAX: a group's directory must be creatable
# User and group names as shadow-utils accepts them (also with --badname's
# upper case); 32 bytes is the limit of useradd and of utmp. The host resolves
# the name; the master only checks the grammar.
OWNER_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")
OWNER_NAME_MAX = 32
OWNER_ID_RE = re.compile(r"[0-9]+")
# (uid_t)-1 means "leave unchanged" to chown(2), so the largest real id is 2**32 - 2.
OWNER_ID_MAX = 2**32 - 2
# Octal, 3 or 4 digits: "644", "0644", "2750", "4755", "1777".
MODE_RE = re.compile(r"[0-7]{3,4}")


@dataclass(frozen=True, slots=True)
class Owner:
    """A file's user and group, each by name or by number (never both)."""

    user: str | None = None
    uid: int | None = None
    group: str | None = None
    gid: int | None = None

    def describe(self) -> str:
        user = self.user if self.user is not None else str(self.uid)
        group = self.group if self.group is not None else str(self.gid)
        return f"{user} {group}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One path that one group's files/ tree provides, with its final attributes.

    `spec` is what every host gets from this entry, already checked with
    FileSpec.check() at load: the compiler hands out this very object when
    the host adds nothing to it, and replaces only the rendered content of a
    template or the triggers (and checks the result again).
    """

    spec: FileSpec  # data: file content (a template's source), link target, b"" for a dir
    owner: Owner
    source: str  # repo-relative, e.g. "web/files/etc/motd"; "web/files" for "/"
    explicit: bool  # permissions.yaml names this path
    template: jinja2.Template | None = None


@dataclass(frozen=True, slots=True)
class TriggerEntry:
    """The commands one group's triggers.yaml runs after `path` (or anything below) changed."""

    path: str
    commands: tuple[str, ...]
    file: str  # repo-relative triggers.yaml
    line: int


@dataclass(frozen=True, slots=True)
class PathEntry:
    """One path listed in a group's absent.yaml, purge.yaml or secrets.yaml."""

    path: str
    file: str  # repo-relative YAML file
    line: int
    recursive: bool = False  # absent.yaml: remove a non-empty directory with its content


@dataclass(frozen=True, slots=True)
class PathLists:
    """What one group's absent.yaml, purge.yaml and secrets.yaml list, by path."""

    absent: dict[str, PathEntry]
    purge: dict[str, PathEntry]
    secrets: dict[str, PathEntry]


@dataclass(frozen=True, slots=True)
class _GroupDef:
    name: str
    line: int
    members: list[YScalar]


@dataclass(frozen=True, slots=True)
class DetectedGroup:
    """A group of groups.yaml whose hosts are those whose own facts match.

    `conditions`: each named fact and the values it may have (as text, as
    the YAML was written); `removed`: the hosts NAME_remove takes out.
    """

    name: str
    line: int
    conditions: tuple[tuple[str, frozenset[str]], ...]
    removed: frozenset[str] = frozenset()

    def takes(self, host: str, facts: Mapping[str, Any] | None) -> bool:
        """Whether `host`, with the facts it reported (None: none yet), is in this group."""
        if facts is None or host in self.removed:
            return False
        for name, values in self.conditions:
            value = facts.get(name)
            # bool before int: True is an int to Python, never a fact value.
            if value is None or isinstance(value, bool) or str(value) not in values:
                return False
        return True


class Repository:
    """A loaded, checked configuration repository. Build it with load_repository().

    The master keeps one (master/repocache.py) and hands it to every run
    while the tree is unchanged: nothing may modify it once it is built.
    """

    def __init__(
        self,
        path: str,
        hosts: list[str],
        members: dict[str, frozenset[str]],
        group_order: list[str],
        group_order_line: int | None,
        entries: dict[str, dict[str, Entry]],
        triggers: dict[str, dict[str, TriggerEntry]],
        lists: dict[str, PathLists],
        detected: dict[str, DetectedGroup] | None = None,
        packages: dict[str, dict[str, PackageEntry]] | None = None,
        services: ServicesRead | None = None,
    ) -> None:
        self.path = path
        self.hosts = hosts  # ids in hosts.yaml order
        self.group_order = group_order  # as in config.yaml, lowest priority first
        self.group_order_line = group_order_line  # its line in config.yaml, None if absent
        # group (or host) -> path -> what that group provides; read by the compiler
        self.entries = entries
        # group (or host) -> path -> commands from that group's triggers.yaml
        self.triggers = triggers
        # group (or host) -> its absent.yaml, purge.yaml and secrets.yaml
        self.lists = lists
        # group (or host) -> package name -> what its packages.yaml says
        self.packages = packages if packages is not None else {}
        # Every group's and host's services.yaml, read with the rest so that
        # the cache covers them.
        self.services = services if services is not None else ServicesRead({}, [])
        self._host_set = frozenset(hosts)
        self._members = members  # groups.yaml groups and "all"; hosts are implicit
        # groups.yaml groups detected from each host's own facts, by name
        self.detected = detected or {}
        self._rank = {g: i for i, g in enumerate(group_order)}
        self._directories = frozenset([*entries, *triggers, *lists, *self.packages])
        self._groups_of = {h: self._compute_groups_of(h) for h in hosts}

    def has_host(self, host: str) -> bool:
        return host in self._host_set

    def has_group(self, name: str) -> bool:
        """True for "all", a group from groups.yaml, or a host id (a group of its own)."""
        return name in self._members or name in self._host_set or name in self.detected

    def has_directory(self, name: str) -> bool:
        """Whether group (or host) `name` has a directory: only then does it
        provide anything (files, lists, triggers, packages)."""
        return name in self._directories

    def group_names(self) -> list[str]:
        """Every group of groups.yaml (detected ones too) and "all", sorted; no hosts."""
        return sorted([*self._members, *self.detected])

    def members(
        self, group: str, facts: Mapping[str, Mapping[str, Any]] | None = None
    ) -> list[str]:
        """The hosts in `group`, in hosts.yaml order; for a detected group, those
        whose own entry in `facts` (host -> facts) matches. Raises UnknownGroupError."""
        if group in self._host_set:
            return [group]
        detected = self.detected.get(group)
        if detected is not None:
            facts = facts or {}
            return [h for h in self.hosts if detected.takes(h, facts.get(h))]
        hosts = self._members.get(group)
        if hosts is None:
            raise UnknownGroupError(group)
        return [h for h in self.hosts if h in hosts]

    def groups_of(self, host: str, facts: Mapping[str, Any] | None = None) -> list[str]:
        """The groups `host` belongs to, lowest priority first: "all" first, the host last.

        Between them: the groups not in group_order, by name (they are not
        ranked against each other; the order is only for a stable display),
        then the group_order groups in their order. The detected groups are
        those that `facts`, this host's own (None: it reported none), match.
        Raises UnknownHostError.
        """
        groups = self._groups_of.get(host)
        if groups is None:
            raise UnknownHostError(host)
        detected = [d.name for d in self.detected.values() if d.takes(host, facts)]
        if not detected:
            return list(groups)
        return self._ordered(host, [*groups[1:-1], *detected])

    def _compute_groups_of(self, host: str) -> list[str]:
        inside = [g for g, hosts in self._members.items() if g != ALL and host in hosts]
        return self._ordered(host, inside)

    def _ordered(self, host: str, inside: list[str]) -> list[str]:
        inside.sort(key=lambda g: (1, self._rank[g], "") if g in self._rank else (0, 0, g))
        return [ALL, *inside, host]

    def outranks(self, a: str, b: str, host: str) -> bool:
        """Does group `a` take priority over group `b` for `host`'s files?"""
        if a == b:
            return False
        if a == host:
            return True
        if b == host:
            return False
        if b == ALL:
            return True
        if a == ALL:
            return False
        if a in self._rank and b in self._rank:
            return self._rank[a] > self._rank[b]
        return False


# ---------------------------------------------------------------------------
# Loading


def load_repository(path: str, *, targets_only: bool = False) -> Repository:
    """Read and check the repository at `path`. Raises ConfigError with every problem.

    With `targets_only`, only what resolving a target needs is read (config,
    hosts and groups), not the group directories: a job that sends no files
    (ping) is not stopped by a problem in a file it does not use.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(ConfigProblem(path, None, f"cannot open repository: {e.strerror}")) from e
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(ConfigProblem(path, None, "repository is not a directory"))
    loader = _Loader(path)
    repo = loader.load(targets_only=targets_only)
    if loader.problems:
        raise ConfigError(loader.problems.by_file())
    return repo


class _Loader:
    """One load of one repository; collects problems instead of stopping at the first."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.problems = Problems()
        self.default_owner = Owner(user=DEFAULT_USER, group=DEFAULT_GROUP)
        self.group_order: list[str] = []
        self.group_order_line: int | None = None
        self.group_order_nodes: list[YScalar] = []  # as written; checked once groups are known
        self.hosts: list[str] = []
        self.host_lines: dict[str, int] = {}
        # Host ids and group names already reported as invalid where they are
        # written, so that they are not reported again as an unknown member
        # or as an orphan directory.
        self.reported_names: set[str] = set()
        self.hosts_ok = True  # hosts.yaml parsed; else skip checks that need its ids
        self.groups: dict[str, _GroupDef] = {}
        self.removes: dict[str, _GroupDef] = {}
        self.detected_defs: dict[str, tuple[int, tuple[tuple[str, frozenset[str]], ...]]] = {}
        self.detected: dict[str, DetectedGroup] = {}
        self.groups_ok = True
        self.template_sources: dict[str, str] = {}
        self.packages: dict[str, dict[str, PackageEntry]] = {}
        self.env = _template_environment(self.template_sources)

    def load(self, *, targets_only: bool = False) -> Repository:
        config = load_yaml_file(self.root, CONFIG_FILE, self.problems)
        self._read_config(config)
        self._read_hosts()
        self._read_groups()
        members = self._resolve_groups()
        self._check_group_order()
        entries: dict[str, dict[str, Entry]] = {}
        triggers: dict[str, dict[str, TriggerEntry]] = {}
        lists: dict[str, PathLists] = {}
        if not targets_only:
            entries, triggers, lists = self._read_group_dirs()
            self._check_trigger_paths(entries, triggers)
        # Read by both kinds of load (the services module needs no group's
        # files); its problems stop only the runs that compile units.
        services = read_all_services(self.root, [*sorted([*members, *self.detected]), *self.hosts])
        return Repository(
            path=self.root,
            hosts=self.hosts,
            members=members,
            group_order=self.group_order,
            group_order_line=self.group_order_line,
            entries=entries,
            triggers=triggers,
            lists=lists,
            detected=self.detected,
            packages=self.packages,
            services=services,
        )

    # -- helpers for typed values ------------------------------------------

    def _expect(
        self, node: YNode | None, kind: type[_Kind], file: str, what: str
    ) -> TypeGuard[_Kind]:
        """Whether `node` is a `kind`; if it is another node, a problem says so."""
        if isinstance(node, kind):
            return True
        if node is not None:
            self.problems.add(
                file,
                node.line,
                f"{what} must be {KIND_NAMES[kind]}, not {kind_of(node)}",
            )
        return False

    def _unknown_keys(self, node: YMap, allowed: Iterable[str], file: str, what: str) -> None:
        allowed = tuple(allowed)
        for key, _ in node.items:
            if key.text not in allowed:
                expected = ", ".join(allowed)
                self.problems.add(
                    file, key.line, f"unknown key {key.text!r} in {what} (expected: {expected})"
                )

    # -- config.yaml -------------------------------------------------------

    def _read_config(self, node: YNode | None) -> None:
        if node is None:
            return
        if not self._expect(node, YMap, CONFIG_FILE, "config.yaml"):
            return
        self._unknown_keys(node, CONFIG_KEYS, CONFIG_FILE, "config.yaml")
        values = {key.text: (key, value) for key, value in node.items}
        user: str | None = DEFAULT_USER
        uid: int | None = None
        group: str | None = DEFAULT_GROUP
        gid: int | None = None
        if "default_user" in values:
            _, value = values["default_user"]
            if self._expect(value, YScalar, CONFIG_FILE, "default_user"):
                parsed = self._owner_token(value, "user", CONFIG_FILE)
                if parsed is not None:
                    user, uid = parsed
        if "default_group" in values:
            _, value = values["default_group"]
            if self._expect(value, YScalar, CONFIG_FILE, "default_group"):
                parsed = self._owner_token(value, "group", CONFIG_FILE)
                if parsed is not None:
                    group, gid = parsed
        self.default_owner = Owner(user=user, uid=uid, group=group, gid=gid)
        if "group_order" in values:
            key, value = values["group_order"]
            self.group_order_line = key.line
            if self._expect(value, YSeq, CONFIG_FILE, "group_order"):
                self.group_order_nodes = [
                    item
                    for item in value.items
                    if self._expect(item, YScalar, CONFIG_FILE, "a group_order entry")
                ]

    def _owner_token(
        self, node: YScalar, kind: str, file: str
    ) -> tuple[str | None, int | None] | None:
        """Parse a user or group: a name, or a number. None (and a problem) if invalid."""
        parsed = parse_owner(node.text, kind)
        if isinstance(parsed, str):
            self.problems.add(file, node.line, parsed)
            return None
        return parsed

    # -- hosts.yaml --------------------------------------------------------

    def _read_hosts(self) -> None:
        before = len(self.problems)
        node = load_yaml_file(self.root, HOSTS_FILE, self.problems)
        if node is None:
            if len(self.problems) == before:
                if not os.path.lexists(os.path.join(self.root, HOSTS_FILE)):
                    self.problems.add(
                        HOSTS_FILE, None, "missing; it lists the hosts that can be targeted"
                    )
                    self.hosts_ok = False
            else:
                self.hosts_ok = False
            return
        if not self._expect(node, YSeq, HOSTS_FILE, "hosts.yaml"):
            self.hosts_ok = False
            return
        for item in node.items:
            if not isinstance(item, YMap):
                self.problems.add(
                    HOSTS_FILE,
                    item.line,
                    f"a host must be a mapping like '- name: web1', not {kind_of(item)}",
                )
                continue
            self._unknown_keys(item, HOST_KEYS, HOSTS_FILE, "a host entry")
            name_node = next((v for k, v in item.items if k.text == "name"), None)
            if name_node is None:
                self.problems.add(HOSTS_FILE, item.line, "a host needs a 'name'")
                continue
            if not self._expect(name_node, YScalar, HOSTS_FILE, "a host's name"):
                continue
            name = name_node.text
            reason = check_host_id(name)
            if name == ALL:
                reason = "'all' is the implicit group of every host; it cannot be a host id"
            if reason:
                self.reported_names.add(name)
                self.problems.add(HOSTS_FILE, name_node.line, reason)
                continue
            if name in self.host_lines:
                self.problems.add(
                    HOSTS_FILE,
                    name_node.line,
                    f"host {name!r} is listed twice (first at line {self.host_lines[name]})",
                )
                continue
            self.host_lines[name] = name_node.line
            self.hosts.append(name)

    # -- groups.yaml -------------------------------------------------------

    def _read_groups(self) -> None:
        before = len(self.problems)
        node = load_yaml_file(self.root, GROUPS_FILE, self.problems)
        if node is None:
            self.groups_ok = len(self.problems) == before
            return
        if not self._expect(node, YMap, GROUPS_FILE, "groups.yaml"):
            self.groups_ok = False
            return
        for key, value in node.items:
            name = key.text
            reason = check_group_name(name)
            if reason:
                self.reported_names.add(name)
                self.problems.add(GROUPS_FILE, key.line, reason)
                continue
            if isinstance(value, YMap) and not name.endswith(REMOVE_SUFFIX):
                conditions = self._read_detect(name, value)
                if conditions is not None:
                    self.detected_defs[name] = (key.line, conditions)
                continue
            if not isinstance(value, YSeq):
                self.problems.add(
                    GROUPS_FILE,
                    value.line,
                    f"the members of {name!r} must be a list"
                    f"{'' if name.endswith(REMOVE_SUFFIX) else ' (or a {detect: ...} mapping)'},"
                    f" not {kind_of(value)}",
                )
                members: list[YScalar] = []
            else:
                members = []
                for item in value.items:
                    if self._expect(item, YScalar, GROUPS_FILE, f"a member of {name!r}"):
                        members.append(item)
            definition = _GroupDef(name, key.line, members)
            if name.endswith(REMOVE_SUFFIX):
                self.removes[name.removesuffix(REMOVE_SUFFIX)] = definition
            else:
                self.groups[name] = definition
        lines = [(n, d.line) for n, d in self.groups.items()]
        lines += [(n, line) for n, (line, _) in self.detected_defs.items()]
        for name, line in lines:
            if name == ALL:
                self.problems.add(
                    GROUPS_FILE,
                    line,
                    "'all' is implicit and always holds every host; it cannot be defined",
                )
            elif name in self.host_lines:
                self.problems.add(
                    GROUPS_FILE,
                    line,
                    f"group {name!r} has the name of a host (hosts.yaml:{self.host_lines[name]});"
                    " a host is already a group of its own"
                    + (", and is never detected" if name in self.detected_defs else ""),
                )
        for base, definition in self.removes.items():
            if base == ALL:
                self.problems.add(
                    GROUPS_FILE,
                    definition.line,
                    "'all' always holds every host; nothing can be removed from it",
                )
            elif base not in self.groups and base not in self.detected_defs:
                self.problems.add(
                    GROUPS_FILE,
                    definition.line,
                    f"{definition.name!r} removes members from group {base!r},"
                    " which groups.yaml does not define",
                )
        # Drop what was reported above so that nothing else trips over it.
        for name in [n for n in self.groups if n == ALL or n in self.host_lines]:
            del self.groups[name]
        for name in [n for n in self.detected_defs if n == ALL or n in self.host_lines]:
            del self.detected_defs[name]
        for base in [
            b for b in self.removes if b not in self.groups and b not in self.detected_defs
        ]:
            del self.removes[base]

    def _read_detect(self, name: str, node: YMap) -> tuple[tuple[str, frozenset[str]], ...] | None:
        """A detected group's {detect: {FACT: VALUE or [VALUE, ...]}}; None (and
        problems) if it is not one."""
        self._unknown_keys(node, (DETECT_KEY,), GROUPS_FILE, f"group {name!r}")
        detect = next((v for k, v in node.items if k.text == DETECT_KEY), None)
        if detect is None:
            self.problems.add(
                GROUPS_FILE,
                node.line,
                f"group {name!r} is a mapping, so it needs '{DETECT_KEY}' (the facts its hosts"
                " report, e.g. {detect: {os_id: debian}}); a group of named hosts is a list",
            )
            return None
        if not self._expect(detect, YMap, GROUPS_FILE, f"'{DETECT_KEY}' of {name!r}"):
            return None
        conditions = []
        ok = True
        for fact, value in detect.items:
            if fact.text in UNDETECTABLE_FACTS:
                self.problems.add(
                    GROUPS_FILE,
                    fact.line,
                    f"group {name!r} cannot be detected from {fact.text!r}: a host names itself,"
                    " so any host could claim it; list the hosts (their minion ids) as members"
                    " of a group instead",
                )
                ok = False
                continue
            if fact.text not in DETECTABLE_FACTS:
                self.problems.add(
                    GROUPS_FILE,
                    fact.line,
                    f"unknown fact {fact.text!r} in '{DETECT_KEY}' of {name!r}"
                    f" (facts: {', '.join(DETECTABLE_FACTS)})",
                )
                ok = False
                continue
            items = value.items if isinstance(value, YSeq) else [value]
            values = []
            for item in items:
                if self._expect(item, YScalar, GROUPS_FILE, f"a value of {fact.text!r}"):
                    values.append(item.text)
                else:
                    ok = False
            if not values and ok:
                self.problems.add(
                    GROUPS_FILE, value.line, f"{fact.text!r} of {name!r} lists no value"
                )
                ok = False
            conditions.append((fact.text, frozenset(values)))
        if not detect.items:
            self.problems.add(
                GROUPS_FILE,
                detect.line,
                f"'{DETECT_KEY}' of {name!r} names no fact; it would hold every host that"
                " reported facts",
            )
            ok = False
        return tuple(conditions) if ok else None

    def _member_kind(self, member: YScalar, owner: str) -> str | None:
        """'glob', 'host' or 'group'; None (and a problem) for an unknown member."""
        text = member.text
        if not text:
            self.problems.add(GROUPS_FILE, member.line, f"a member of {owner!r} is empty")
            return None
        if GLOB_CHARS & set(text):
            return "glob"
        if text in self.host_lines:
            return "host"
        if text == ALL or text in self.groups:
            return "group"
        if text in self.detected_defs:
            self.problems.add(
                GROUPS_FILE,
                member.line,
                f"{text!r} is a group detected from facts, which hosts claim about themselves;"
                f" it cannot be named in {owner!r}: a host could then claim its way into (or"
                " out of) another group's configuration. Name hosts, globs or groups of hosts",
            )
            return None
        if text in self.reported_names or not self.hosts_ok or not self.groups_ok:
            return None  # already reported where it was defined
        self.problems.add(
            GROUPS_FILE,
            member.line,
            f"member {text!r} of {owner!r} is not a host in hosts.yaml,"
            " a group in groups.yaml or a glob",
        )
        return None

    def _resolve_groups(self) -> dict[str, frozenset[str]]:
        """Each group's hosts. Reports unknown members and cycles."""
        # Classify each member once; keep only the valid ones.
        classified: dict[str, list[tuple[str, str]]] = {}
        removed: dict[str, list[tuple[str, str]]] = {}
        for name, definition in self.groups.items():
            classified[name] = [
                (kind, m.text)
                for m in definition.members
                if (kind := self._member_kind(m, name)) is not None
            ]
        for base, definition in self.removes.items():
            removed[base] = [
                (kind, m.text)
                for m in definition.members
                if (kind := self._member_kind(m, definition.name)) is not None
            ]
        deps = {
            name: [
                text for kind, text in classified[name] + removed.get(name, []) if kind == "group"
            ]
            for name in self.groups
        }
        # A detected group's removals name groups of hosts only, never one
        # that depends on it: resolved after all of them, they need no order.
        order, cyclic = _topological_order(deps)
        for cycle in _find_cycles(deps, cyclic):
            first = self.groups[cycle[0]]
            self.problems.add(
                GROUPS_FILE, first.line, f"group cycle: {' -> '.join([*cycle, cycle[0]])}"
            )
        all_hosts = frozenset(self.hosts)
        members: dict[str, frozenset[str]] = {ALL: all_hosts}

        def expand(kind: str, text: str) -> frozenset[str]:
            if kind == "host":
                return frozenset((text,))
            if kind == "glob":
                return frozenset(fnmatch.filter(self.hosts, text))
            return members.get(text, frozenset())

        for name in order:
            hosts: set[str] = set()
            for kind, text in classified[name]:
                hosts |= expand(kind, text)
            for kind, text in removed.get(name, []):
                hosts -= expand(kind, text)
            members[name] = frozenset(hosts)
        for name in cyclic:
            members[name] = frozenset()
        for name, (line, conditions) in self.detected_defs.items():
            gone: set[str] = set()
            for kind, text in removed.get(name, []):
                gone |= expand(kind, text)
            self.detected[name] = DetectedGroup(name, line, conditions, frozenset(gone))
        return members

    # -- group_order -------------------------------------------------------

    def _check_group_order(self) -> None:
        seen: dict[str, int] = {}
        for node in self.group_order_nodes:
            name = node.text
            if name == ALL:
                reason = "'all' always has the lowest priority; remove it from group_order"
            elif name in self.host_lines:
                reason = (
                    f"{name!r} is a host; a host's own group always has the highest priority,"
                    " remove it from group_order"
                )
            elif name in seen:
                reason = (
                    f"group {name!r} is listed twice in group_order (first at line {seen[name]})"
                )
            elif name not in self.groups and name not in self.detected_defs:
                if not self.groups_ok:
                    continue
                reason = f"group_order names {name!r}, which groups.yaml does not define"
            else:
                seen[name] = node.line
                self.group_order.append(name)
                continue
            self.problems.add(CONFIG_FILE, node.line, reason)

    # -- group directories -------------------------------------------------

    def _read_group_dirs(
        self,
    ) -> tuple[
        dict[str, dict[str, Entry]], dict[str, dict[str, TriggerEntry]], dict[str, PathLists]
    ]:
        known = {ALL, *self.groups, *self.detected_defs, *self.hosts}
        entries: dict[str, dict[str, Entry]] = {}
        triggers: dict[str, dict[str, TriggerEntry]] = {}
        lists: dict[str, PathLists] = {}
        for name in self._list(self.root, "."):
            if ignored_at_top(name) or name in (CONFIG_FILE, HOSTS_FILE, GROUPS_FILE):
                continue
            full = os.path.join(self.root, name)
            try:
                st = os.lstat(full)
            except OSError as e:
                self.problems.add(_printable(name), None, f"cannot read: {e.strerror}")
                continue
            # With groups.yaml or hosts.yaml broken, the names are not known:
            # still check every directory that looks like a group's, so that
            # one run reports its problems too.
            guessed = not (self.groups_ok and self.hosts_ok) and (
                stat.S_ISDIR(st.st_mode) and self._looks_like_group_dir(full)
            )
            if name in known or guessed:
                if not stat.S_ISDIR(st.st_mode):
                    self.problems.add(
                        _printable(name),
                        None,
                        f"the directory of group or host {name!r} must be a directory,"
                        f" not {describe_mode(st.st_mode)}",
                    )
                    continue
                group_entries, group_triggers, group_lists = self._read_group_dir(name)
                entries[name] = group_entries
                if group_triggers:
                    triggers[name] = group_triggers
                lists[name] = group_lists
                group_packages = read_packages(self.root, name, self.problems)
                if group_packages:
                    self.packages[name] = group_packages
            elif (
                stat.S_ISDIR(st.st_mode)
                and self._looks_like_group_dir(full)
                and self.groups_ok
                and self.hosts_ok
                and name not in self.reported_names
            ):
                self.problems.add(
                    _printable(name),
                    None,
                    f"directory {_printable(name)!r} holds group files, but it is"
                    " neither a group in groups.yaml nor a host in hosts.yaml",
                )
        return entries, triggers, lists

    def _list(self, full: str, rel: str) -> list[str]:
        """The sorted names in a directory of the repository; [] and a problem on error."""
        try:
            with os.scandir(full) as it:
                return sorted(e.name for e in it)
        except OSError as e:
            self.problems.add(rel, None, f"cannot list: {e.strerror}")
            return []

    @staticmethod
    def _looks_like_group_dir(full: str) -> bool:
        return any(os.path.lexists(os.path.join(full, n)) for n in GROUP_DIR_ENTRIES)

    def _read_group_dir(
        self, group: str
    ) -> tuple[dict[str, Entry], dict[str, TriggerEntry], PathLists]:
        for name in self._list(os.path.join(self.root, group), group):
            if name not in GROUP_DIR_ENTRIES and not name.startswith("."):
                self.problems.add(
                    f"{group}/{_printable(name)}",
                    None,
                    "unexpected entry in a group directory (expected: files/, "
                    + ", ".join(GROUP_DIR_ENTRIES[1:])
                    + ")",
                )
        tree = self._scan_files(group)
        permissions = self._read_permissions(group, tree)
        templates = self._read_templates(group, tree)
        triggers = self._read_triggers(group)
        lists = PathLists(
            absent=self._read_absent(group, tree),
            purge=self._read_path_list(group, PURGE_FILE, "a directory to purge"),
            secrets=self._read_path_list(group, SECRETS_FILE, "a secret path"),
        )
        for entry in lists.purge.values():
            raw = tree.get(entry.path)
            if raw is not None and raw.type is not FileType.DIR:
                self.problems.add(
                    entry.file,
                    entry.line,
                    f"{entry.path} is {_TYPE_NAMES.get(raw.type, 'a file')}"
                    f" in {group}/{FILES_DIR}/; only a directory can be purged",
                )
        entries: dict[str, Entry] = {}
        for path, raw in tree.items():
            explicit = permissions.get(path)
            if explicit is not None:
                mode, owner = explicit
            else:
                mode, owner = _default_mode(raw), self.default_owner
            spec = FileSpec(
                path=path,
                type=raw.type,
                mode=mode,
                user=owner.user,
                uid=owner.uid,
                group=owner.group,
                gid=owner.gid,
                data=raw.data,
                passthrough=raw.type is FileType.DIR and explicit is None,
            )
            try:
                spec.check()
            except FileOpError as e:
                self.problems.add(raw.source, None, e.reason)
                continue
            entries[path] = Entry(
                spec=spec,
                owner=owner,
                source=raw.source,
                explicit=explicit is not None,
                template=templates.get(path),
            )
        return entries, triggers, lists

    def _read_absent(self, group: str, tree: dict[str, _RawFile]) -> dict[str, PathEntry]:
        """absent.yaml: paths, or {path, recursive} mappings; none provided by this group."""
        file = f"{group}/{ABSENT_FILE}"
        node = load_yaml_file(self.root, file, self.problems)
        result: dict[str, PathEntry] = {}
        if not self._expect(node, YSeq, file, "absent.yaml"):
            return result
        for item in node.items:
            recursive = False
            if isinstance(item, YMap):
                self._unknown_keys(item, ABSENT_KEYS, file, "an absent entry")
                values = {key.text: value for key, value in item.items}
                path_node = values.get("path")
                if path_node is None:
                    self.problems.add(file, item.line, "an absent entry needs a 'path'")
                    continue
                flag = values.get("recursive")
                if flag is not None:
                    if not isinstance(flag, YScalar) or flag.text not in ("true", "false"):
                        self.problems.add(file, flag.line, "'recursive' must be true or false")
                        continue
                    recursive = flag.text == "true"
            else:
                path_node = item
            if not self._expect(path_node, YScalar, file, "an absent path"):
                continue
            entry = self._list_entry(path_node, file, result, recursive=recursive)
            if entry is None:
                continue
            if entry.path == "/":
                self.problems.add(file, entry.line, "the root directory cannot be absent")
                continue
            provided = [p for p in tree if is_below(p, entry.path)]
            if provided:
                what = (
                    "is provided by"
                    if provided[0] == entry.path
                    else f"has {provided[0]} below it in"
                )
                self.problems.add(
                    file,
                    entry.line,
                    f"{entry.path} is absent, but {what} {group}/{FILES_DIR}/;"
                    " a group cannot both provide a path and declare it absent",
                )
                continue
            result[entry.path] = entry
        return result

    def _read_path_list(self, group: str, name: str, what: str) -> dict[str, PathEntry]:
        """purge.yaml or secrets.yaml: a list of absolute paths."""
        file = f"{group}/{name}"
        node = load_yaml_file(self.root, file, self.problems)
        result: dict[str, PathEntry] = {}
        if not self._expect(node, YSeq, file, name):
            return result
        for item in node.items:
            if self._expect(item, YScalar, file, what):
                entry = self._list_entry(item, file, result)
                if entry is not None:
                    result[entry.path] = entry
        return result

    def _list_entry(
        self, node: YScalar, file: str, seen: dict[str, PathEntry], *, recursive: bool = False
    ) -> PathEntry | None:
        """One path of a list file, checked; None (and a problem) if invalid or listed twice."""
        if not self._check_path_key(node, file):
            return None
        first = seen.get(node.text)
        if first is not None:
            self.problems.add(
                file, node.line, f"{node.text} is listed twice (first at line {first.line})"
            )
            return None
        return PathEntry(node.text, file, node.line, recursive)

    def _scan_files(self, group: str) -> dict[str, _RawFile]:
        """Walk <group>/files/ without following symlinks; path -> what is there.

        The walk goes by directory descriptors (openat, fstatat, readlinkat),
        as os.fwalk does: no full path is ever built, so a deep tree cannot
        hit PATH_MAX on the master before check_path() reports the managed
        path, and nothing is resolved through a symlink. One descriptor is
        open per level of the directory being read.
        """
        base_rel = f"{group}/{FILES_DIR}"
        base_full = os.path.join(self.root, base_rel)
        try:
            st = os.lstat(base_full)
            if not stat.S_ISDIR(st.st_mode):
                self.problems.add(
                    base_rel, None, f"must be a directory, not {describe_mode(st.st_mode)}"
                )
                return {}
            base_fd = os.open(base_full, _DIR_FLAGS)
        except FileNotFoundError:
            return {}
        except OSError as e:
            self.problems.add(base_rel, None, f"cannot read: {e.strerror}")
            return {}
        tree = {"/": _RawFile(FileType.DIR, False, b"", base_rel)}
        # Each level: its descriptor and the subdirectories still to walk.
        stack: list[tuple[int, list[tuple[str, str, str]]]] = []
        try:
            stack.append((base_fd, self._read_dir(base_fd, "/", base_rel, tree)))
            while stack:
                dir_fd, pending = stack[-1]
                if not pending:
                    os.close(stack.pop()[0])
                    continue
                name, path, rel = pending.pop()
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError as e:
                    self.problems.add(rel, None, f"cannot read: {e.strerror}")
                    continue
                stack.append((child, []))  # first, so that `finally` closes it
                stack[-1] = (child, self._read_dir(child, path, rel, tree))
        finally:
            for fd, _ in stack:
                os.close(fd)
        return dict(sorted(tree.items()))

    def _read_dir(
        self, dir_fd: int, dir_path: str, dir_rel: str, tree: dict[str, _RawFile]
    ) -> list[tuple[str, str, str]]:
        """Record one directory's entries in `tree`; its subdirectories, to walk next
        (in reverse order, so that popping them walks the tree in name order)."""
        try:
            with os.scandir(dir_fd) as it:
                found = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
        except OSError as e:
            self.problems.add(dir_rel, None, f"cannot list: {e.strerror}")
            return []
        subdirs = []
        for name, st in found:
            rel = f"{dir_rel}/{_printable(name)}"
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                self.problems.add(rel, None, "file name is not valid UTF-8; rename it")
                continue
            path = f"/{name}" if dir_path == "/" else f"{dir_path}/{name}"
            try:
                check_path(path)
            except InvalidPathError as e:
                self.problems.add(rel, None, e.reason)
                continue
            raw = self._read_tree_entry(dir_fd, name, rel, st)
            if raw is None:
                continue
            tree[path] = raw
            if raw.type is FileType.DIR:
                subdirs.append((name, path, rel))
        subdirs.reverse()
        return subdirs

    def _read_tree_entry(
        self, dir_fd: int, name: str, rel: str, st: os.stat_result
    ) -> _RawFile | None:
        if stat.S_ISDIR(st.st_mode):
            return _RawFile(FileType.DIR, False, b"", rel)
        if stat.S_ISREG(st.st_mode):
            try:
                data = read_regular_file(name, dir_fd=dir_fd)
            except OSError as e:
                self.problems.add(rel, None, f"cannot read: {e.strerror or e}")
                return None
            return _RawFile(FileType.FILE, bool(st.st_mode & EXEC_BITS), data, rel)
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=dir_fd)
                data = target.encode("utf-8")
            except UnicodeEncodeError:
                self.problems.add(rel, None, "symlink target is not valid UTF-8")
                return None
            except OSError as e:
                self.problems.add(rel, None, f"cannot read: {e.strerror}")
                return None
            return _RawFile(FileType.SYMLINK, False, data, rel)
        self.problems.add(
            rel,
            None,
            f"is {describe_mode(st.st_mode)}; only regular files, directories and symlinks"
            " can be managed",
        )
        return None

    def _read_permissions(
        self, group: str, tree: dict[str, _RawFile]
    ) -> dict[str, tuple[int, Owner]]:
        file = f"{group}/{PERMISSIONS_FILE}"
        node = load_yaml_file(self.root, file, self.problems)
        result: dict[str, tuple[int, Owner]] = {}
        if not self._expect(node, YMap, file, "permissions.yaml"):
            return result
        for key, value in node.items:
            raw = self._tree_path(key, tree, file)
            if raw is None:
                continue
            if raw.type is FileType.SYMLINK:
                self.problems.add(
                    file,
                    key.line,
                    f"{key.text} is a symlink; a symlink's mode is always {SYMLINK_MODE:04o}"
                    " and it takes the default owner",
                )
                continue
            if not self._expect(value, YScalar, file, f"the permissions of {key.text}"):
                continue
            parsed = self._parse_permission(value, raw.type, file)
            if parsed is not None:
                result[key.text] = parsed
        return result

    def _parse_permission(
        self, node: YScalar, ftype: FileType, file: str
    ) -> tuple[int, Owner] | None:
        fields = node.text.split()
        if not 1 <= len(fields) <= 3:
            self.problems.add(file, node.line, f'expected "MODE [USER [GROUP]]", got {node.text!r}')
            return None
        reason = None
        mode = parse_mode(fields[0])
        if isinstance(mode, str):
            reason = mode
        elif ftype is FileType.DIR and mode & SETUID:
            reason = f"mode {fields[0]}: the setuid bit has no effect on a directory"
        elif ftype is FileType.FILE and mode & STICKY:
            reason = f"mode {fields[0]}: the sticky bit has no effect on a regular file"
        if reason:
            self.problems.add(file, node.line, reason)
        owner = self.default_owner
        ok = reason is None
        if len(fields) >= 2:
            user = parse_owner(fields[1], "user")
            if isinstance(user, str):
                self.problems.add(file, node.line, user)
                ok = False
            else:
                owner = Owner(user=user[0], uid=user[1], group=owner.group, gid=owner.gid)
        if len(fields) == 3:
            grp = parse_owner(fields[2], "group")
            if isinstance(grp, str):
                self.problems.add(file, node.line, grp)
                ok = False
            else:
                owner = Owner(user=owner.user, uid=owner.uid, group=grp[0], gid=grp[1])
        if not ok or isinstance(mode, str):
            return None
        return mode, owner

    def _read_templates(self, group: str, tree: dict[str, _RawFile]) -> dict[str, jinja2.Template]:
        file = f"{group}/{TEMPLATES_FILE}"
        node = load_yaml_file(self.root, file, self.problems)
        result: dict[str, jinja2.Template] = {}
        if not self._expect(node, YSeq, file, "templates.yaml"):
            return result
        first_line: dict[str, int] = {}
        for item in node.items:
            if not self._expect(item, YScalar, file, "a template path"):
                continue
            raw = self._tree_path(item, tree, file)
            if raw is None:
                continue
            if item.text in first_line:
                self.problems.add(
                    file,
                    item.line,
                    f"{item.text} is listed twice (first at line {first_line[item.text]})",
                )
                continue
            first_line[item.text] = item.line
            if raw.type is not FileType.FILE:
                self.problems.add(
                    file,
                    item.line,
                    f"{item.text} is {_TYPE_NAMES[raw.type]}; only regular files can be templates",
                )
                continue
            template = self._compile_template(raw)
            if template is not None:
                result[item.text] = template
        return result

    def _compile_template(self, raw: _RawFile) -> jinja2.Template | None:
        try:
            source = raw.data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.data.count(b"\n", 0, e.start) + 1
            self.problems.add(
                raw.source, line, f"a template must be UTF-8 (byte {raw.data[e.start]:#04x})"
            )
            return None
        self.template_sources[raw.source] = source
        try:
            return self.env.get_template(raw.source)
        except jinja2.TemplateSyntaxError as e:
            self.problems.add(raw.source, e.lineno, f"template syntax error: {e.message}")
            return None

    def _read_triggers(self, group: str) -> dict[str, TriggerEntry]:
        file = f"{group}/{TRIGGERS_FILE}"
        node = load_yaml_file(self.root, file, self.problems)
        result: dict[str, TriggerEntry] = {}
        if not self._expect(node, YMap, file, "triggers.yaml"):
            return result
        for key, value in node.items:
            if not self._check_path_key(key, file):
                continue
            if not isinstance(value, YSeq):
                self.problems.add(
                    file,
                    value.line,
                    f"the triggers of {key.text} must be a list of commands, not {kind_of(value)}",
                )
                continue
            commands = []
            for item in value.items:
                if not self._expect(item, YScalar, file, "a trigger command"):
                    continue
                if not item.text.strip():
                    self.problems.add(file, item.line, "a trigger command is empty")
                elif "\0" in item.text:
                    self.problems.add(file, item.line, "a trigger command contains a NUL byte")
                else:
                    commands.append(item.text)
            if not value.items:
                self.problems.add(file, value.line, f"{key.text} has an empty list of triggers")
            if commands:
                result[key.text] = TriggerEntry(key.text, tuple(commands), file, key.line)
        return result

    def _check_trigger_paths(
        self, entries: dict[str, dict[str, Entry]], triggers: dict[str, dict[str, TriggerEntry]]
    ) -> None:
        """A trigger path must be a file of some group: a typo fails at load, not per host."""
        provided: set[str] = set()
        for tree in entries.values():
            provided.update(tree)
        for group_triggers in triggers.values():
            for path, trigger in group_triggers.items():
                if path not in provided:
                    self.problems.add(
                        trigger.file,
                        trigger.line,
                        f"{path} is not provided by the files/ of any group or host",
                    )

    def _check_path_key(self, key: YScalar, file: str) -> bool:
        try:
            check_path(key.text)
        except InvalidPathError as e:
            self.problems.add(file, key.line, f"{key.text!r}: {e.reason}")
            return False
        return True

    def _tree_path(self, key: YScalar, tree: dict[str, _RawFile], file: str) -> _RawFile | None:
        """The tree entry `key` names in this group's files/, or None and a problem."""
        if not self._check_path_key(key, file):
            return None
        raw = tree.get(key.text)
        if raw is None:
            group_dir = file.rsplit("/", 1)[0]
            self.problems.add(
                file,
                key.line,
                f"{key.text} does not exist in {group_dir}/{FILES_DIR}/",
            )
        return raw


# Open a directory of the repository: never through a symlink, never kept past exec.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_TYPE_NAMES = {FileType.DIR: "a directory", FileType.SYMLINK: "a symlink"}


@dataclass(frozen=True, slots=True)
class _RawFile:
    """What a group's files/ tree holds at one path, before permissions.yaml."""

    type: FileType
    executable: bool  # any x bit set in the repository
    data: bytes
    source: str


def _default_mode(raw: _RawFile) -> int:
    if raw.type is FileType.DIR:
        return DEFAULT_DIR_MODE
    if raw.type is FileType.SYMLINK:
        return SYMLINK_MODE
    return DEFAULT_EXEC_MODE if raw.executable else DEFAULT_FILE_MODE


def _topological_order(deps: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """Groups ordered so that each comes after the groups it names; and those left over.

    The left-over groups are on a cycle or depend on one. Kahn's algorithm,
    iterative, so a deep nesting of groups cannot hit Python's recursion limit.
    """
    waiting = {g: {d for d in ds if d in deps} for g, ds in deps.items()}
    users: dict[str, list[str]] = {g: [] for g in deps}
    for g, ds in waiting.items():
        for d in ds:
            users[d].append(g)
    ready = [g for g in deps if not waiting[g]]
    order = []
    while ready:
        g = ready.pop()
        order.append(g)
        for user in users[g]:
            waiting[user].discard(g)
            if not waiting[user]:
                ready.append(user)
    done = set(order)
    return order, [g for g in deps if g not in done]


def _find_cycles(deps: dict[str, list[str]], left: list[str]) -> list[list[str]]:
    """One cycle through each knot of left-over groups, each starting at its smallest name.

    Every left-over group names at least one other left-over group, so
    walking from one along left-over names must come back to a group already
    on the walk: that is a cycle.
    """
    left_set = set(left)
    cycles: list[list[str]] = []
    visited: set[str] = set()
    for start in left:
        if start in visited:
            continue
        walk: list[str] = []
        position: dict[str, int] = {}
        g = start
        while g not in position and g not in visited:
            position[g] = len(walk)
            walk.append(g)
            g = next(d for d in deps[g] if d in left_set)
        visited.update(walk)
        if g in position:
            cycle = walk[position[g] :]
            smallest = cycle.index(min(cycle))
            cycles.append(cycle[smallest:] + cycle[:smallest])
    return cycles


class _Undefined(jinja2.StrictUndefined):
    """StrictUndefined that names a missing fact as such: `facts.os_id` of a
    host that did not report it says which fact, and what the host did report."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        holder = self._undefined_obj
        if isinstance(holder, HostFacts) and self._undefined_hint is None:
            return holder.missing_message(self._undefined_name)
        return super()._undefined_message


def _template_environment(sources: dict[str, str]) -> jinja2.Environment:
    """The Jinja2 environment all templates of one repository compile in.

    A sandbox, although the repository is trusted: it costs little and keeps
    templates declarative (no attribute games, no mutating the context).
    StrictUndefined makes a typo an error instead of an empty string.
    The loader serves only the repository's templates, named by their
    repo-relative path, which is also the file name in tracebacks, so a
    render error can be traced to its line.
    """

    def load(name: str) -> tuple[str, str, Callable[[], bool]] | None:
        source = sources.get(name)
        if source is None:
            return None
        return source, name, lambda: True

    return jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.FunctionLoader(load),
        undefined=_Undefined,
        autoescape=False,
        keep_trailing_newline=True,
        auto_reload=False,
        # Compiled templates are held by the repository; the cache would only duplicate them.
        cache_size=0,
    )


# ---------------------------------------------------------------------------
# Small pure checks, shared with tests


def check_host_id(name: str) -> str | None:
    """None if `name` is a valid host id, else the reason. A host id is a minion
    id, so the grammar is the wire's (common/ids.py), not a copy of it."""
    return minion_id_problem(name)


def ignored_at_top(name: str) -> bool:
    """A top-level entry the loader never reads (.git, editors' files): the
    repository cache (master/repocache.py) does not walk it either."""
    return name.startswith(".")


def check_group_name(name: str) -> str | None:
    """None if `name` is a valid group name (also a directory name), else the reason."""
    if not GROUP_NAME_RE.fullmatch(name):
        return f"group name {name!r} is invalid: use lowercase letters, digits, '_' and '-'"
    if len(name) > GROUP_NAME_MAX:
        return f"group name {name[:20]!r}... is longer than {GROUP_NAME_MAX} characters"
    return None


def parse_mode(text: str) -> int | str:
    """The mode bits of an octal string like "0644" or "2750", or the reason it is invalid."""
    if not MODE_RE.fullmatch(text):
        return f"invalid mode {text!r}: expected 3 or 4 octal digits, e.g. 0644 or 2750"
    return int(text, 8)


def parse_owner(text: str, kind: str) -> tuple[str | None, int | None] | str:
    """(name, None) or (None, number) for a user or group, or the reason it is invalid."""
    if OWNER_ID_RE.fullmatch(text):
        number = int(text)
        if number > OWNER_ID_MAX:
            return f"{kind} id {text} is out of range (0 to {OWNER_ID_MAX})"
        return None, number
    if not OWNER_NAME_RE.fullmatch(text) or len(text) > OWNER_NAME_MAX:
        return f"invalid {kind} name {text!r}"
    return text, None


def _printable(name: str) -> str:
    """A file name for a message: bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
