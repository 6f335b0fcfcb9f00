"""configs/repo, the example repository the demo and the docs use."""

from __future__ import annotations

import fnmatch
import pathlib

import pytest
import yaml

from safcm.common.model import FileType
from safcm.master.compiler import compile_hosts, load_repository
from tests.master.test_compiler import describe

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "repo"
EXPECTED = pathlib.Path(__file__).parent / "example_repo_expected.yaml"


@pytest.fixture(scope="module")
def repo():
    return load_repository(str(EXAMPLE))


@pytest.fixture(scope="module")
def configs(repo):
    return compile_hosts(repo, repo.hosts)


def test_every_host_compiles_to_the_reviewed_result(repo, configs):
    expected = yaml.safe_load(EXPECTED.read_text())
    assert repo.hosts == list(expected)
    for host, want in expected.items():
        got = describe(configs[host])
        for f in got["files"]:
            if "template" not in f:
                f.pop("content", None)
        assert got == want, host


def test_static_content_is_the_repository_files_bytes(configs):
    for config in configs.values():
        for f in config.files:
            if f.spec.type is FileType.FILE and not f.template:
                assert f.spec.data == (EXAMPLE / f.source).read_bytes(), f.source


def test_specs_are_valid_and_sorted(configs):
    for config in configs.values():
        specs = config.specs()
        for spec in specs:
            spec.check()
        assert [s.path for s in specs] == sorted(s.path for s in specs)


def test_the_demo_targets_exist(repo):
    # The demo runs minions web1, web2 and db1 and targets 'web*'.
    assert {"web1", "web2", "db1"} <= set(repo.hosts)
    assert fnmatch.filter(repo.hosts, "web*") == ["web1", "web2", "web3"]
    assert repo.members("web") == ["web1", "web2"]  # glob minus web_remove
    assert repo.members("monitored") == ["web1", "web2", "db1"]  # nested


def test_every_feature_is_used(repo, configs):
    files = [f for c in configs.values() for f in c.files]
    specs = [f.spec for f in files]
    assert repo.group_order  # group_order
    assert any(s.mode & 0o2000 and s.type is FileType.DIR for s in specs)  # setgid dir
    assert any(s.mode & 0o1000 and s.type is FileType.DIR for s in specs)  # sticky dir
    assert any(s.type is FileType.SYMLINK for s in specs)
    assert any(s.type is FileType.FILE and s.mode & 0o111 for s in specs)  # executable
    assert any(s.uid is not None for s in specs)  # numeric owner
    assert any(s.user not in (None, "root") for s in specs)  # named non-root owner
    assert any(f.template for f in files)
    assert any(s.triggers for s in specs)
    assert any(f.group in repo.hosts for f in files if f.spec.type is FileType.FILE)
    overridden = {f.spec.path: f.group for f in configs["web1"].files}
    assert overridden["/etc/app/logging.conf"] == "web"  # ranked above monitored


def test_triggers_are_harmless_on_the_demo_machine(configs):
    # The demo's minions run as root on the real machine, beneath sandbox
    # roots: a trigger may print, or touch files under $SAFCM_ROOT, only.
    for config in configs.values():
        for spec in config.specs():
            for command in spec.triggers:
                assert command.startswith(("echo ", 'touch "$SAFCM_ROOT/')), command


def test_nothing_of_another_host_leaks(repo, configs):
    for host, config in configs.items():
        others = [h for h in repo.hosts if h != host]
        for f in config.files:
            assert f.source.split("/")[0] not in others, (host, f.source)
            if f.template:
                for other in others:
                    assert other.encode() not in f.spec.data, (host, f.spec.path)


def test_debian12_is_detected_from_each_hosts_own_facts(repo):
    from safcm.master.facts import HostFacts

    facts = {"web1": HostFacts({"os_id": "debian", "os_version_id": "12"})}
    facts["web2"] = HostFacts({"os_id": "debian", "os_version_id": "11"})
    configs = compile_hosts(repo, repo.hosts, facts)
    path = "/etc/apt/apt.conf.d/50safcm"
    assert [h for h, c in configs.items() if path in {f.spec.path for f in c.files}] == ["web1"]
    assert configs["web1"].detected == ["debian12"] and configs["web2"].detected == []
