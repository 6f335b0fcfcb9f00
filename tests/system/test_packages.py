"""`run HOST packages` and `run HOST sync` against real minions and real apt,
with a local apt repository (tests/aptrepo.py) that only the minion's
`apt_config` points at. Every safcm-test-* package is purged after each
test, also on failure."""

from __future__ import annotations

import os

import pytest

from tests.aptrepo import PREFIX, AptRepo, installed_test_packages, purge_test_packages
from tests.system.conftest import by_host, enrol, jobs_list, jobs_show, run_json

APP, LIB, BROKEN = PREFIX + "app", PREFIX + "lib", PREFIX + "broken"


@pytest.fixture
def apt_repo(tmp_path):
    purge_test_packages()
    repo = AptRepo(str(tmp_path))
    try:
        yield repo
    finally:
        purge_test_packages()


def write_packages(sb, group: str, text: str) -> None:
    """Replace `group`'s packages.yaml in the master's repository."""
    directory = os.path.join(sb.config_dir, group)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "packages.yaml"), "w") as f:
        f.write(text)


def section(doc: dict, host: str) -> dict:
    return by_host(doc)[host]["result"]["packages"]


def changes(doc: dict, host: str) -> list[tuple]:
    return [(c["action"], c["name"], c["old"], c["new"]) for c in section(doc, host)["changes"]]


def test_run_packages_install_upgrade_remove_with_dry_runs(sandbox, apt_repo):
    apt_repo.add("lib", "1.0")
    apt_repo.add("app", "1.0", depends=LIB)
    apt_repo.publish()
    write_packages(sandbox, "web1", f"install: [{APP}]\n")
    enrol(sandbox, "web1", "web2", apt_config=apt_repo.apt_config)

    code, dry = run_json(sandbox, "web1", "packages", "--dry-run")
    assert code == 0, dry
    assert installed_test_packages() == {}
    code, real = run_json(sandbox, "web1", "packages")
    assert code == 0, real
    assert by_host(real)["web1"]["status"] == "changed", str(by_host(real)["web1"]["result"])
    assert (
        changes(dry, "web1")
        == changes(real, "web1")
        == [
            ("installed", APP, None, "1.0"),
            ("installed", LIB, None, "1.0"),  # the dependency apt pulled in
        ]
    )
    assert installed_test_packages() == {APP: "installed 1.0", LIB: "installed 1.0"}
    # The job history keeps the result as it was shown.
    stored = by_host(jobs_show(sandbox, real["jid"]))["web1"]["result"]["packages"]
    assert stored["changes"] == section(real, "web1")["changes"]

    listed = jobs_list(sandbox, "--module", "packages")
    assert [j["jid"] for j in listed] == [real["jid"], dry["jid"]]

    code, again = run_json(sandbox, "web1", "packages")
    assert code == 0 and by_host(again)["web1"]["status"] == "ok"
    assert changes(again, "web1") == []
    # The host's line words it as the summary counts it.
    human = sandbox.cli("run", "web1", "packages", env={"NO_COLOR": "1"})
    assert human.returncode == 0, human.stderr
    # A line may come before it: the minion may still be settling the last
    # job ("busy with job ...; this job is queued behind it").
    assert any(line.startswith("web1: unchanged (") for line in human.stdout.splitlines()), (
        human.stdout
    )
    assert "1 host targeted: 0 changed, 1 unchanged," in human.stdout

    apt_repo.add("app", "2.0", depends=LIB)
    apt_repo.publish()
    write_packages(sandbox, "web1", f"install: [{APP}=2.0]\n")
    human = sandbox.cli("run", "web1", "packages", "--dry-run")
    assert human.returncode == 0, human.stderr
    assert f"would upgrade package {APP} 1.0 -> 2.0" in human.stdout
    assert "web1: would change (" in human.stdout and "1 would change," in human.stdout
    human = sandbox.cli("run", "web1", "packages")
    assert human.returncode == 0, human.stderr
    assert f"upgraded package {APP} 1.0 -> 2.0" in human.stdout
    assert installed_test_packages() == {APP: "installed 2.0", LIB: "installed 1.0"}

    write_packages(sandbox, "web1", f"remove: [{APP}]\n")
    code, dry = run_json(sandbox, "web1", "packages", "--dry-run")
    code, real = run_json(sandbox, "web1", "packages")
    assert code == 0
    assert changes(dry, "web1") == changes(real, "web1") == [("removed", APP, "2.0", None)]
    assert installed_test_packages() == {LIB: "installed 1.0"}


def test_apts_errors_and_a_half_configured_package_are_reported_per_host(sandbox, apt_repo):
    apt_repo.add("broken", "1.0", postinst_exit=3)
    apt_repo.publish()
    write_packages(sandbox, "web1", f"install: [{PREFIX}nonexistent]\n")
    write_packages(sandbox, "web2", f"install: [{BROKEN}]\n")
    enrol(sandbox, "web1", "web2", apt_config=apt_repo.apt_config)

    code, doc = run_json(sandbox, "web1,web2", "packages")
    assert code == 1
    assert by_host(doc)["web1"]["status"] == by_host(doc)["web2"]["status"] == "failed"
    assert section(doc, "web1")["error"] == (
        f"apt-get exited with status 100: E: Unable to locate package {PREFIX}nonexistent"
    )
    broken = section(doc, "web2")
    assert broken["error"] == (
        "apt-get exited with status 100: E: Sub-process /usr/bin/dpkg returned an error code (1)"
    )
    assert f"postinst of {BROKEN} fails" in broken["output"]
    assert broken["unsettled"] == [
        {"name": BROKEN, "status": "install ok half-configured", "version": "1.0"}
    ]
    # The next run of a host that no longer names it still reports it.
    write_packages(sandbox, "web2", "")
    human = sandbox.cli("run", "web2", "packages")
    assert human.returncode == 1
    assert f"unsettled: package {BROKEN} 1.0 is install ok half-configured in dpkg" in human.stdout
    assert "Traceback" not in human.stdout + human.stderr


def test_sync_applies_packages_before_files(sandbox, apt_repo):
    apt_repo.add("app", "1.0")
    apt_repo.publish()
    write_packages(sandbox, "web1", f"install: [{APP}]\n")
    enrol(sandbox, "web1", apt_config=apt_repo.apt_config)
    code, doc = run_json(sandbox, "web1", "sync")
    assert code == 0, doc
    result = by_host(doc)["web1"]["result"]
    assert [s["module"] for s in result["steps"]] == ["packages", "files", "services"]
    assert changes(doc, "web1") == [("installed", APP, None, "1.0")]
    assert result["apply"]["changes"]  # the example repository's files
    assert installed_test_packages() == {APP: "installed 1.0"}
