"""Data-driven compiler tests: one small repository per case under tests/master/repos/.

A case is a directory holding `repo/`, optionally `facts.yaml` (host -> the
facts it reported, as a FACTS body; a host not in it reported none), and either
- `expected.yaml`: for every host of the repository, its groups (and those
  detected from its facts) and its compiled files (see describe()); the
  whole result is compared, so a file that leaks in or goes missing fails
  the case; or
- `errors.txt` (cases named invalid_*): every problem that loading and
  compiling all hosts must report, one per line as "file:line: message", in
  the order reported.
"""

from __future__ import annotations

import hashlib
import pathlib

import pytest
import yaml

from safcm.common.errors import ConfigError
from safcm.common.model import FileType
from safcm.common.protocol import MsgType, check_body
from safcm.master.compiler import HostConfig, compile_hosts, load_repository
from safcm.master.facts import HostFacts

CASES_DIR = pathlib.Path(__file__).parent / "repos"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "repo").is_dir())
VALID = [c for c in CASES if not c.startswith("invalid_")]
INVALID = [c for c in CASES if c.startswith("invalid_")]


def describe(config: HostConfig) -> dict:
    """A host's result in the form of expected.yaml."""
    files = []
    for f in config.files:
        s = f.spec
        d = {"path": s.path, "type": str(s.type), "mode": f"{s.mode:04o}"}
        d.update({"user": s.user} if s.uid is None else {"uid": s.uid})
        d.update({"group": s.group} if s.gid is None else {"gid": s.gid})
        if s.passthrough:
            d["passthrough"] = True
        d["from"] = f.group
        if s.type is FileType.FILE:
            try:
                d["content"] = s.data.decode("utf-8")
            except UnicodeDecodeError:
                d["sha256"] = hashlib.sha256(s.data).hexdigest()
        elif s.type is FileType.SYMLINK:
            d["target"] = s.data.decode("utf-8")
        if f.template:
            d["template"] = True
        if s.triggers:
            d["triggers"] = list(s.triggers)
        files.append(d)
    described = {"groups": config.groups, "files": files}
    if config.detected:
        described["detected"] = config.detected
    if config.absent:
        described["absent"] = [
            {"path": a.path, "recursive": True} if a.recursive else a.path for a in config.absent
        ]
    if config.purge:
        described["purge"] = config.purge
    if config.secrets:
        described["secrets"] = config.secrets
    return described


def facts_of(case: str) -> dict[str, HostFacts]:
    path = CASES_DIR / case / "facts.yaml"
    if not path.exists():
        return {}
    reported = yaml.safe_load(path.read_text())
    for body in reported.values():
        check_body(MsgType.FACTS, body)  # what a minion can send, no more
    return {host: HostFacts(body) for host, body in reported.items()}


def problems_of(case: str) -> list[str]:
    try:
        repo = load_repository(str(CASES_DIR / case / "repo"))
        compile_hosts(repo, repo.hosts, facts_of(case))
    except ConfigError as e:
        return [str(p) for p in e.problems]
    return []


def test_there_are_cases():
    assert len(VALID) >= 8
    assert len(INVALID) >= 15


@pytest.mark.parametrize("case", VALID)
def test_valid_case(case):
    expected = yaml.safe_load((CASES_DIR / case / "expected.yaml").read_text())
    repo = load_repository(str(CASES_DIR / case / "repo"))
    assert repo.hosts == list(expected), "expected.yaml must list every host, in order"
    configs = compile_hosts(repo, repo.hosts, facts_of(case))
    for host, want in expected.items():
        got = describe(configs[host])
        assert got == want, host


@pytest.mark.parametrize("case", INVALID)
def test_invalid_case(case):
    expected = (CASES_DIR / case / "errors.txt").read_text().splitlines()
    assert expected, "an invalid case must expect at least one problem"
    assert problems_of(case) == expected
