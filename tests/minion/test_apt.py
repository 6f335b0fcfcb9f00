"""minion/apt.py against real apt and dpkg, with a local repository (tests/aptrepo.py).

These install and remove real packages on this machine (all named
safcm-test-*), and purge them all again after each test, also on failure.
"""

from __future__ import annotations

import fcntl

import pytest

from safcm.common.packages import PackageSpec, Want
from safcm.master.sandbox import wait_for
from safcm.minion import apt
from safcm.minion.apt import _run, _RunError, apply_packages
from tests.aptrepo import PREFIX, AptRepo, installed_test_packages, purge_test_packages
from tests.procs import alive

TIMEOUT = 300.0


@pytest.fixture
def repo(tmp_path):
    purge_test_packages()
    r = AptRepo(str(tmp_path))
    try:
        yield r
    finally:
        purge_test_packages()


def install(name: str, version: str | None = None) -> PackageSpec:
    return PackageSpec(PREFIX + name, Want.INSTALL, version)


def remove(name: str) -> PackageSpec:
    return PackageSpec(PREFIX + name, Want.REMOVE)


def run(repo: AptRepo, specs, *, dry_run: bool = False):
    return apply_packages(specs, dry_run=dry_run, apt_config=repo.apt_config, timeout=TIMEOUT)


def changes(outcome) -> list[tuple]:
    return [(c.name.removeprefix(PREFIX), str(c.action), c.old, c.new) for c in outcome.changes]


def test_install_with_dependency_dry_run_matches_real_run(repo):
    repo.add("lib", "1.0")
    repo.add("app", "1.0", depends=f"{PREFIX}lib (>= 1.0)")
    repo.publish()
    specs = [install("app")]
    dry = run(repo, specs, dry_run=True)
    assert dry.ok, (dry.error, dry.output)
    assert installed_test_packages() == {}  # a dry run installs nothing
    real = run(repo, specs)
    assert real.ok, (real.error, real.output)
    expected = [("app", "installed", None, "1.0"), ("lib", "installed", None, "1.0")]
    assert changes(dry) == expected
    assert changes(real) == expected
    assert installed_test_packages() == {
        PREFIX + "app": "installed 1.0",
        PREFIX + "lib": "installed 1.0",
    }
    again = run(repo, specs)
    assert again.ok and again.changes == []


def test_upgrade_to_a_pinned_version_and_down_again(repo):
    repo.add("app", "1.0")
    repo.publish()
    assert run(repo, [install("app")]).ok
    repo.add("app", "2.0")
    repo.publish()
    # Unpinned, an installed package is left alone even with 2.0 available.
    assert run(repo, [install("app")]).changes == []
    dry = run(repo, [install("app", "2.0")], dry_run=True)
    real = run(repo, [install("app", "2.0")])
    assert real.ok, (real.error, real.output)
    assert changes(dry) == changes(real) == [("app", "upgraded", "1.0", "2.0")]
    assert installed_test_packages() == {PREFIX + "app": "installed 2.0"}
    down = run(repo, [install("app", "1.0")])
    assert changes(down) == [("app", "downgraded", "2.0", "1.0")]


def test_remove(repo):
    repo.add("app", "1.0")
    repo.add("other", "1.0")
    repo.publish()
    assert run(repo, [install("app"), install("other")]).ok
    specs = [remove("app"), install("other")]
    dry = run(repo, specs, dry_run=True)
    real = run(repo, specs)
    assert real.ok, (real.error, real.output)
    assert changes(dry) == changes(real) == [("app", "removed", "1.0", None)]
    assert installed_test_packages() == {PREFIX + "other": "installed 1.0"}
    assert run(repo, specs).changes == []  # removed stays removed


def test_unknown_package_is_a_failed_outcome_with_apts_error(repo):
    repo.add("app", "1.0")
    repo.publish()
    for dry_run in (True, False):
        outcome = run(repo, [install("app"), install("nonexistent")], dry_run=dry_run)
        assert not outcome.ok
        assert outcome.error is not None
        assert "Unable to locate package safcm-test-nonexistent" in outcome.error
        assert outcome.changes == []
    assert installed_test_packages() == {}  # apt installs nothing when one is unknown


def test_failing_postinst_leaves_a_half_configured_package_reported_on_every_run(repo):
    repo.add("broken", "1.0", postinst_exit=1)
    repo.add("fine", "1.0")
    repo.publish()
    dry = run(repo, [install("broken")], dry_run=True)
    assert dry.ok  # the simulation cannot know that the postinst fails
    first = run(repo, [install("broken")])
    assert not first.ok
    assert first.error is not None and first.error.startswith("apt-get exited with status 100")
    assert "postinst of safcm-test-broken fails" in first.output
    assert changes(first) == changes(dry) == [("broken", "installed", None, "1.0")]
    assert [(s.name, s.status_text()) for s in first.unsettled] == [
        (PREFIX + "broken", "install ok half-configured")
    ]
    # A later run that does not even name it still reports it, and fails.
    later = run(repo, [install("fine")], dry_run=True)
    assert not later.ok
    assert [s.name for s in later.unsettled] == [PREFIX + "broken"]
    assert installed_test_packages()[PREFIX + "broken"] == "half-configured 1.0"


def test_a_command_past_its_time_is_killed_with_its_children(tmp_path):
    # The shell and its child both go, as dpkg's maintainer scripts under
    # apt-get must.
    pidfile = tmp_path / "child"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    with pytest.raises(_RunError, match="did not finish within 1 s and was killed"):
        _run(["sh", "-c", script], {}, 1.0, keep=100)
    child = int(pidfile.read_text())
    wait_for(lambda: not alive(child), 30.0, "the child to be killed")


def test_output_is_kept_within_its_bound():
    head = _run(["head", "-c", "3000000", "/dev/zero"], {}, TIMEOUT, keep=1000)
    assert head.code == 0 and head.truncated and len(head.output) == 1000
    tail = _run(
        ["sh", "-c", "head -c 3000000 /dev/zero; echo END"], {}, TIMEOUT, keep=10, tail=True
    )
    assert tail.truncated and tail.output == b"\0" * 6 + b"END\n"


def test_a_missing_dpkg_query_is_one_line_not_a_traceback(monkeypatch):
    monkeypatch.setattr(apt, "DPKG_QUERY", "/nonexistent/dpkg-query")
    outcome = apt.apply_packages([install("app")], dry_run=True, timeout=TIMEOUT)
    assert outcome.error == "cannot run /nonexistent/dpkg-query: No such file or directory"
    assert not outcome.ok


def test_the_dpkg_lock_held_elsewhere_is_waited_for_then_reported(repo):
    repo.add("app", "1.0")
    repo.publish()
    with open("/var/lib/dpkg/lock-frontend", "ab") as lock:
        # apt and dpkg lock with fcntl record locks; one held here is another
        # process's to the apt-get this starts.
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            dry = apply_packages(
                [install("app")], dry_run=True, apt_config=repo.apt_config, timeout=TIMEOUT
            )
            real = apply_packages(
                [install("app")],
                dry_run=False,
                apt_config=repo.apt_config,
                timeout=TIMEOUT,
                lock_timeout=1,
            )
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)
    assert dry.ok  # a simulation takes no lock
    assert not real.ok and real.changes == []
    assert real.error == (
        "apt-get exited with status 100: E: Unable to acquire the dpkg frontend lock"
        " (/var/lib/dpkg/lock-frontend), is another process using it?"
    )


def test_a_host_without_dpkg_asked_for_no_package_is_fine(monkeypatch):
    monkeypatch.setattr(apt, "DPKG_QUERY", "/nonexistent/dpkg-query")
    outcome = apt.apply_packages([], dry_run=False, timeout=TIMEOUT)
    assert outcome.ok and outcome.changes == []
