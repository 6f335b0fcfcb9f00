"""Compile a loaded repository into each host's exact file list. Pure: no network, no writes.

    repo = load_repository("/etc/safcm/config")         # ConfigError: every problem
    configs = compile_hosts(repo, ["web1", "db1"], facts)  # ConfigError: every problem, all hosts
    configs["web1"].specs()                              # list[FileSpec] for the engine

`facts` maps each host to what it reported about itself (master/facts.py);
a host is compiled from its own facts alone: they choose its detected
groups (master/repository.py) and are its templates' `facts`. A host with
none is in no detected group, and its templates see empty `facts`.

A host gets the files of every group it is in ("all", its groups, its own
directory). When several of those groups provide the same path, one wins:

1. Regular files and symlinks: the provider that outranks every other one
   (repository.Repository.outranks: the host's own group beats everything,
   "all" loses to everything, group_order ranks the groups it lists). If no
   provider outranks all others, that is a conflict: an error naming the
   path and the groups that group_order does not rank.
2. Directories: shipping files under /etc from two groups is normal, and an
   administrator should not have to rank groups for it. A directory takes
   its attributes from permissions.yaml where a group names it ("explicit");
   a group that merely has the directory in its tree (default 0755 and the
   default owner) does not override an explicit one, whatever its rank.
   Providers that agree (same mode and owner) never conflict. Providers that
   disagree are settled by rank as in 1.
   safcm itself accepts the same directory from several groups only when the
   attributes are equal; the "explicit beats default" rule is ours, so that a
   high-priority group that only needs /etc/app to exist does not reset a
   lower group's "/etc/app: 0750 root adm" to 0755 root root.
3. The winning entry must not sit below a path whose winner is not a
   directory (a file from one group over a directory of another).

The group reported as the provider ("group") is the winner; among providers
that agree it is the one latest in Repository.groups_of() order.

4. absent.yaml takes part in the contest as a provider of "nothing": an
   absent entry wins over the providers of its path if its group outranks
   each of theirs, and loses if one of them outranks it; otherwise it is a
   conflict, as between two providers. Absent entries that agree (same
   `recursive`) never conflict. A winning absent path may have nothing
   provided below it.
5. purge.yaml and secrets.yaml add up over the host's groups. A purged
   directory must not be provided as a file or symlink, nor be absent.

6. packages.yaml: a package named by several groups is settled as a file
   is (rule 1), whatever each group says of it (master/packages.py).

Triggers are not part of the contest: every group of the host that names a
path in its triggers.yaml adds its commands to that path (in groups_of()
order, duplicates dropped), so a base group's "reload" still runs when a
higher group overrides the file. A trigger path must be provided for every
host of the group that names it.

Templates are rendered per host; content that is not a template is the very
bytes object read at load, shared by every host's result. So is the (frozen)
FileSpec of a path that a host adds nothing to: it was checked once at load.
A spec with rendered content or triggers is a new one, checked again.

The contest (rules 1-6 and the triggers) is run once per distinct key
(_contest_key): the host's groups that have a directory, in groups_of()
order, its own group among them only if it has one. Its outcome depends on
nothing else, so compile_hosts() settles 10,000 hosts in ten distinct group
lists ten times, and each host gets the contest's very CompiledFile objects. What
is a host's own is done per host: its templates (its name, groups and
facts), and the one message that names it (a trigger path it gets no file
at). Each host's problems are the ones, in the order, that compiling it
alone finds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypedDict

import jinja2

from safcm.common.errors import (
    ConfigError,
    ConfigProblem,
    FileOpError,
    UnknownHostError,
)
from safcm.common.model import AbsentSpec, FileSpec, FileType, is_below
from safcm.common.yamlfile import Problems
from safcm.master.facts import HostFacts
from safcm.master.packages import CompiledPackage, compile_packages
from safcm.master.repository import (
    CONFIG_FILE,
    Entry,
    PathEntry,
    Repository,
    TriggerEntry,
    load_repository,
)

__all__ = [
    "CompiledFile",
    "HostConfig",
    "Repository",
    "compile_host",
    "compile_hosts",
    "load_repository",
]


@dataclass(frozen=True, slots=True)
class CompiledFile:
    """One file of a host's result, with where it came from (for show and diagnostics)."""

    spec: FileSpec
    group: str  # the group (or host) whose entry won
    template: bool  # spec.data is the rendered template
    # Repo-relative source, e.g. "web/files/etc/motd" ("web/files" for "/"). Always
    # set: every directory a host gets is a real directory in some group's files/.
    source: str


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Everything one host gets: its groups, its files sorted by path, and what
    must not exist, what is purged and what is secret."""

    host: str
    groups: list[str]  # Repository.groups_of(host): lowest priority first
    files: list[CompiledFile]
    # Those of `groups` detected from the host's own facts (show and check mark them).
    detected: list[str] = dataclasses.field(default_factory=list)
    # The facts it was compiled with; None if the host reported none.
    facts: HostFacts | None = None
    absent: list[AbsentSpec] = dataclasses.field(default_factory=list)  # by path
    purge: list[str] = dataclasses.field(default_factory=list)  # sorted
    secrets: list[str] = dataclasses.field(default_factory=list)  # sorted
    # <group>/packages.yaml, settled between groups (master/packages.py), by name
    packages: list[CompiledPackage] = dataclasses.field(default_factory=list)

    def specs(self) -> list[FileSpec]:
        """The list the engine receives, in path order."""
        return [f.spec for f in self.files]


def compile_host(repo: Repository, host: str, facts: HostFacts | None = None) -> HostConfig:
    """Compile one host with the facts it reported (None: none yet). Raises
    UnknownHostError, or ConfigError with every problem."""
    if not repo.has_host(host):
        raise UnknownHostError(host)
    problems = Problems()
    config = _compile(repo, host, facts, problems, {})
    if problems:
        raise ConfigError(problems)
    return config


def compile_hosts(
    repo: Repository, hosts: Iterable[str], facts: Mapping[str, HostFacts] | None = None
) -> dict[str, HostConfig]:
    """Compile several hosts, each with its own entry of `facts` (host -> what
    it reported; a host without one has reported nothing); a ConfigError
    carries every problem of every host.

    Call it before any job exists: either every host compiles or nothing is
    sent. A problem that several hosts share (a conflict between two groups)
    is reported once.
    """
    results: dict[str, HostConfig] = {}
    problems: list[ConfigProblem] = []
    seen: set[ConfigProblem] = set()
    contests: dict[_Key, _Contest] = {}  # one per distinct key: see _contest_key()
    for host in hosts:
        if host in results:
            continue
        found = Problems()
        if not repo.has_host(host):
            found.extend(UnknownHostError(host).problems)
            config = None
        else:
            config = _compile(repo, host, (facts or {}).get(host), found, contests)
        for problem in found:
            if problem not in seen:
                seen.add(problem)
                problems.append(problem)
        if not found and config is not None:
            results[host] = config
    if problems:
        raise ConfigError(problems)
    return results


# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Candidate:
    group: str
    entry: Entry


class _SpecChanges(TypedDict, total=False):
    """What compiling changes in a file's spec (dataclasses.replace() arguments)."""

    data: bytes
    triggers: tuple[str, ...]


class _UnknownGroupInTemplate(Exception):
    """in_group() was asked about a name the repository does not know."""


# What a contest depends on: the host's groups that have a directory (_contest_key).
_Key = tuple[str, ...]


def _contest_key(repo: Repository, groups: list[str]) -> _Key:
    """The key of the contest of a host whose groups_of() is `groups`: those
    of them that have a directory, in that order.

    The contest (_run_contest) reads the repository and the groups, nothing
    else of the host: its facts only through the detected groups they put
    in `groups`, its name only to rank its own group (Repository.outranks)
    against the others that provide the same path, and a group without a
    directory provides nothing. So the key holds the host's own group only
    if it has a directory, and hosts with the same key, whatever their
    names, get the very same contest. No group is named as a host, so no
    other host's name can be in a key.
    """
    return tuple(g for g in groups if repo.has_directory(g))


def _compile(
    repo: Repository,
    host: str,
    facts: HostFacts | None,
    problems: Problems,
    contests: dict[_Key, _Contest],
) -> HostConfig:
    """`host`'s result, from the contest of its key (run now if `contests`
    has none yet) and what is its own: its templates and the messages that
    name it. Its problems are added, in the order a contest of its own would
    find them."""
    groups = repo.groups_of(host, facts)
    key = _contest_key(repo, groups)
    contest = contests.get(key)
    if contest is None:
        contest = contests[key] = _run_contest(repo, host, groups)
    for problem in contest.problems:
        problems.append(problem.for_host(host) if isinstance(problem, _Unserved) else problem)
    if contest.files is not None:
        files = list(contest.files)
    else:
        context = _TemplateContext(
            repo, host, groups, facts if facts is not None else HostFacts(None)
        )
        files = []
        for step in contest.steps:
            if isinstance(step, _Render):
                rendered = step.compile(context, problems)
                if rendered is not None:
                    files.append(rendered)
            elif isinstance(step, ConfigProblem):
                problems.append(step)
            else:
                files.append(step)
    return HostConfig(
        host=host,
        groups=groups,
        files=files,
        detected=[g for g in groups if g in repo.detected],
        facts=facts,
        absent=list(contest.absent),
        purge=list(contest.purge),
        secrets=list(contest.secrets),
        packages=list(contest.packages),
    )


@dataclass(frozen=True, slots=True)
class _Unserved:
    """A trigger path that a group of the host names and the host gets no file
    at: a problem whose message names the host."""

    trigger: TriggerEntry
    group: str

    def for_host(self, host: str) -> ConfigProblem:
        return ConfigProblem(
            self.trigger.file,
            self.trigger.line,
            f"{self.trigger.path} has triggers, but host {host} (in group {self.group!r})"
            " gets no file at that path",
        )


@dataclass(frozen=True, slots=True)
class _Render:
    """A template that won its path: rendered for each host of the contest."""

    group: str
    entry: Entry
    triggers: tuple[str, ...] | None  # those of its path, if any

    def compile(self, context: _TemplateContext, problems: Problems) -> CompiledFile | None:
        rendered = context.render(self.entry, problems)
        if rendered is None:
            return None
        changes: _SpecChanges = {"data": rendered}
        if self.triggers is not None:
            changes["triggers"] = self.triggers
        spec = dataclasses.replace(self.entry.spec, **changes)
        try:
            spec.check()
        except FileOpError as e:
            problems.add(self.entry.source, None, e.reason)
            return None
        return CompiledFile(spec, self.group, True, self.entry.source)


@dataclass(frozen=True, slots=True)
class _Contest:
    """What the contest settled for one key: the same for every host that has it."""

    # In the order a host finds them, before those of `steps`.
    problems: list[ConfigProblem | _Unserved]
    # Each winning path, in path order: its file, what renders it per host,
    # or the problem that drops it.
    steps: list[CompiledFile | _Render | ConfigProblem]
    # `steps` when it holds files only: every host gets these very objects.
    files: list[CompiledFile] | None
    absent: list[AbsentSpec]
    purge: list[str]
    secrets: list[str]
    packages: list[CompiledPackage]


def _run_contest(repo: Repository, host: str, groups: list[str]) -> _Contest:
    """Settle every path and package of `groups`, the groups of `host`
    (rules 1-6 and the triggers). What it finds holds for every host with
    the same key (_contest_key), so it reads nothing else of `host`."""
    candidates: dict[str, list[_Candidate]] = {}
    for group in groups:
        for path, entry in repo.entries.get(group, {}).items():
            candidates.setdefault(path, []).append(_Candidate(group, entry))

    absent_cands: dict[str, list[tuple[str, PathEntry]]] = {}
    for group in groups:
        lists = repo.lists.get(group)
        if lists is not None:
            for path, absent_entry in lists.absent.items():
                absent_cands.setdefault(path, []).append((group, absent_entry))

    found = Problems()
    chosen: dict[str, _Candidate] = {}
    for path in sorted(candidates):
        winner = _pick(repo, host, path, candidates[path], found)
        if winner is not None:
            chosen[path] = winner
    absent = _settle_absent(repo, host, absent_cands, candidates, chosen, found)
    _check_parents(chosen, found)
    purge, secrets = _collect_lists(repo, groups, chosen, absent, found)
    triggers, unserved = _collect_triggers(repo, groups, chosen)
    problems: list[ConfigProblem | _Unserved] = [*found, *unserved]
    found = Problems()
    packages = compile_packages(repo, host, groups, found)
    problems.extend(found)

    steps: list[CompiledFile | _Render | ConfigProblem] = []
    for path, cand in chosen.items():
        entry = cand.entry
        if entry.template is not None:
            steps.append(_Render(cand.group, entry, triggers.get(path)))
            continue
        spec = entry.spec
        if path in triggers:
            spec = dataclasses.replace(spec, triggers=triggers[path])
            try:
                spec.check()
            except FileOpError as e:
                steps.append(ConfigProblem(entry.source, None, e.reason))
                continue
        steps.append(CompiledFile(spec, cand.group, False, entry.source))
    plain = [step for step in steps if isinstance(step, CompiledFile)]
    return _Contest(
        problems=problems,
        steps=steps,
        files=plain if len(plain) == len(steps) else None,
        absent=[AbsentSpec(e.path, e.recursive) for e in absent.values()],
        purge=purge,
        secrets=secrets,
        packages=packages,
    )


def _settle_absent(
    repo: Repository,
    host: str,
    absent_cands: dict[str, list[tuple[str, PathEntry]]],
    candidates: dict[str, list[_Candidate]],
    chosen: dict[str, _Candidate],
    problems: Problems,
) -> dict[str, PathEntry]:
    """The absent paths of `host` (rule 4); drops the provided paths they beat from `chosen`."""
    absent: dict[str, PathEntry] = {}
    for path in sorted(absent_cands):
        cands = absent_cands[path]
        winner = _pick_absent(repo, host, path, cands, problems)
        if winner is None:
            continue
        group, entry = winner
        providers = candidates.get(path, [])
        if not providers:
            absent[path] = entry
            continue
        if all(repo.outranks(group, p.group, host) for p in providers):
            chosen.pop(path, None)
            absent[path] = entry
            continue
        if any(repo.outranks(p.group, g, host) for p in providers for g, _ in cands):
            continue  # provided: the absent entries lose
        names = " and ".join(sorted({repr(p.group) for p in providers}))
        problems.add(
            entry.file,
            entry.line,
            f"{path} is absent in group {group!r} but provided by {names},"
            f" and {unranked_where(repo)}; list them in group_order or keep the path"
            " in one group only",
        )
    for path, entry in absent.items():
        below = next((p for p in chosen if p != path and is_below(p, path)), None)
        if below is not None:
            problems.add(
                entry.file,
                entry.line,
                f"{path} is absent, but {below} below it is provided by group"
                f" {chosen[below].group!r} ({chosen[below].entry.source})",
            )
    return absent


def _pick_absent(
    repo: Repository,
    host: str,
    path: str,
    cands: list[tuple[str, PathEntry]],
    problems: Problems,
) -> tuple[str, PathEntry] | None:
    """Among absent entries of one path: agreeing ones never conflict, others by rank."""
    for w_group, w_entry in reversed(cands):
        if all(
            repo.outranks(w_group, g, host)
            for g, e in cands
            if g != w_group and e.recursive != w_entry.recursive
        ):
            return w_group, w_entry
    _, entry = cands[0]
    others = " and ".join(repr(g) for g, _ in cands)
    problems.add(
        entry.file,
        entry.line,
        f"{path} is absent in groups {others} with different 'recursive',"
        f" and {unranked_where(repo)}; list them in group_order or make them agree",
    )
    return None


def _collect_lists(
    repo: Repository,
    groups: list[str],
    chosen: dict[str, _Candidate],
    absent: dict[str, PathEntry],
    problems: Problems,
) -> tuple[list[str], list[str]]:
    """The purged directories and the secret paths of the host's groups (rule 5)."""
    purge: set[str] = set()
    secrets: set[str] = set()
    for group in groups:
        lists = repo.lists.get(group)
        if lists is None:
            continue
        secrets.update(lists.secrets)
        for path, entry in lists.purge.items():
            cand = chosen.get(path)
            if cand is not None and cand.entry.spec.type is not FileType.DIR:
                problems.add(
                    entry.file,
                    entry.line,
                    f"{path} is purged, but group {cand.group!r} provides it as a"
                    f" {cand.entry.spec.type} ({cand.entry.source})",
                )
            elif path in absent:
                problems.add(
                    entry.file,
                    entry.line,
                    f"{path} is purged, but absent ({absent[path].file}:{absent[path].line});"
                    " drop one of them",
                )
            else:
                purge.add(path)
    return sorted(purge), sorted(secrets)


def _same_attributes(a: Entry, b: Entry) -> bool:
    return a.spec.type is b.spec.type and a.spec.mode == b.spec.mode and a.owner == b.owner


def _pick(
    repo: Repository, host: str, path: str, cands: list[_Candidate], problems: Problems
) -> _Candidate | None:
    """The provider of `path` for `host` (see the module docstring), or None and a problem."""
    if len(cands) == 1:
        return cands[0]
    if all(c.entry.spec.type is FileType.DIR for c in cands):
        explicit = [c for c in cands if c.entry.explicit]
        contenders = explicit or cands

        def differ(a: _Candidate, b: _Candidate) -> bool:
            return not _same_attributes(a.entry, b.entry)
    else:
        contenders = cands

        def differ(a: _Candidate, b: _Candidate) -> bool:
            return True

    # Latest in groups_of() order first: that is where a winner usually is,
    # and among equal providers it is the one reported.
    for w in reversed(contenders):
        if all(
            repo.outranks(w.group, c.group, host) for c in contenders if c is not w and differ(w, c)
        ):
            return w
    unranked: list[_Candidate] = []
    for i, a in enumerate(contenders):
        for b in contenders[i + 1 :]:
            ranked = repo.outranks(a.group, b.group, host) or repo.outranks(b.group, a.group, host)
            if differ(a, b) and not ranked:
                unranked.extend(c for c in (a, b) if c not in unranked)
    problems.add(unranked[0].entry.source, None, _conflict_message(repo, path, unranked))
    return None


def _conflict_message(repo: Repository, path: str, unranked: list[_Candidate]) -> str:
    names = [f"{c.group!r}" for c in unranked]
    listed = " and ".join(names) if len(names) == 2 else ", ".join(names[:-1]) + " and " + names[-1]
    if all(c.entry.spec.type is FileType.DIR for c in unranked):
        attrs = "; ".join(
            f"{c.group}: {c.entry.spec.mode:04o} {c.entry.owner.describe()}" for c in unranked
        )
        what = f"directory {path} gets different permissions from groups {listed} ({attrs})"
    else:
        what = f"{path} is provided by groups {listed}"
    return (
        f"{what}, and {unranked_where(repo)};"
        " list them in group_order or provide the path from one group only"
    )


def unranked_where(repo: Repository) -> str:
    if repo.group_order_line is None:
        return f"no group_order in {CONFIG_FILE} ranks them"
    return f"group_order ({CONFIG_FILE}:{repo.group_order_line}) does not rank them"


def _check_parents(chosen: dict[str, _Candidate], problems: Problems) -> None:
    """Every chosen path must sit in a chosen directory (rule 3)."""
    for path in list(chosen):
        if path == "/":
            continue
        parent = chosen.get(path.rpartition("/")[0] or "/")
        if parent is None or parent.entry.spec.type is FileType.DIR:
            # No parent only if the parent's own conflict was reported already.
            continue
        cand = chosen.pop(path)
        problems.add(
            cand.entry.source,
            None,
            f"{path} lies below {parent.entry.spec.path}, which group {parent.group!r} provides"
            f" as a {parent.entry.spec.type} ({parent.entry.source});"
            " rank the groups differently or remove one",
        )


def _collect_triggers(
    repo: Repository, groups: list[str], chosen: dict[str, _Candidate]
) -> tuple[dict[str, tuple[str, ...]], list[_Unserved]]:
    """The commands of each chosen path, and the trigger paths that are not chosen."""
    triggers: dict[str, list[str]] = {}
    unserved: list[_Unserved] = []
    for group in groups:
        for path, trigger in repo.triggers.get(group, {}).items():
            if path not in chosen:
                unserved.append(_Unserved(trigger, group))
                continue
            commands = triggers.setdefault(path, [])
            commands.extend(c for c in trigger.commands if c not in commands)
    return {path: tuple(commands) for path, commands in triggers.items()}, unserved


class _TemplateContext:
    """Renders templates for one host: host, groups, in_group() and its own
    facts, nothing else."""

    def __init__(self, repo: Repository, host: str, groups: list[str], facts: HostFacts) -> None:
        self.repo = repo
        self.host = host
        self.groups = groups
        self.group_set = frozenset(groups)
        self.facts = facts

    def in_group(self, name: object) -> bool:
        if not isinstance(name, str) or not self.repo.has_group(name):
            raise _UnknownGroupInTemplate(f"in_group({name!r}): no such group or host")
        return name in self.group_set

    def render(self, entry: Entry, problems: Problems) -> bytes | None:
        template = entry.template
        if template is None:
            return entry.spec.data
        try:
            text = template.render(
                host=self.host, groups=list(self.groups), in_group=self.in_group, facts=self.facts
            )
        # A template is the administrator's code: any exception in it (an
        # undefined name, a sandbox refusal, a TypeError in an expression,
        # an unknown group) is a problem of that template on this host.
        except Exception as e:
            if isinstance(e, jinja2.TemplateError | _UnknownGroupInTemplate):
                reason = str(e)
            else:
                reason = f"{type(e).__name__}: {e}"
            line = _template_line(e, entry.source)
        else:
            return text.encode("utf-8")
        problems.add(entry.source, line, f"template error for host {self.host}: {reason}")
        return None


def _template_line(exc: BaseException, filename: str) -> int | None:
    """The template line an exception came from: Jinja2 rewrites tracebacks so
    that template frames carry the template's name and line."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
