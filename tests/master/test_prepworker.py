"""The prepare worker (master/prepworker.py): a real spawned process, a real
repository and database. Facts reach it as changes, its errors reach the
daemon as they would have been raised in it, and a worker that ended is
replaced by the next request."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from safcm.common.errors import ConfigError, SafcmError, UsageError, WorkerError
from safcm.master.db import open_db
from safcm.master.facts import HostFacts
from safcm.master.jobstore import JobRecord, JobStore
from safcm.master.keystore import KeyState
from safcm.master.prepworker import (
    COLLECT_AFTER_OBJECTS,
    PREPARE,
    STORE,
    Collections,
    PrepareWorker,
    _Worker,
)
from safcm.master.sandbox import wait_for
from safcm.master.settings import MasterSettings
from tests.procs import alive

REPOS = os.path.join(os.path.dirname(__file__), "repos")
HOSTS = ["web1", "web2", "db1", "new1"]  # the detected repository's
ACCEPTED = dict.fromkeys(HOSTS, KeyState.ACCEPTED)
WAIT = 30.0  # seconds for a killed process to be gone
ARM = {"os_id": "debian", "architecture": "aarch64"}
X86 = {"os_id": "debian", "architecture": "x86_64"}
# A run large enough to be collected after (prepworker.COLLECT_AFTER_OBJECTS).
LARGE_HOSTS, LARGE_FILES = 2000, 20
# What the worker may keep of what such a run grew it by (51 MiB), at most.
# Measured: 4 %; 159 % with the stored parts kept alive through the
# collection, 70 % without giving the C heap's free memory back.
KEPT_AT_MOST = 0.25


def body(target: str, module: str = "files", group: bool = False) -> dict:
    return {"target": target, "group": group, "module": module, "dry_run": False, "timeout": 30}


@pytest.fixture
def settings(tmp_path):
    def of(repo: str) -> MasterSettings:
        config_dir = tmp_path / "repo"
        shutil.copytree(os.path.join(REPOS, repo, "repo"), config_dir)
        open_db(str(tmp_path)).close()  # created and migrated, as the daemon does
        return MasterSettings(state_dir=str(tmp_path), config_dir=str(config_dir))

    return of


@pytest.fixture
def worker(request):
    made: list[PrepareWorker] = []

    def start(settings: MasterSettings) -> PrepareWorker:
        w = PrepareWorker(settings, None)
        made.append(w)
        return w

    yield start
    for w in made:
        w.stop()
        w.close()


def test_facts_reach_the_worker_as_they_change(settings, worker):
    w = worker(settings("detected"))
    ping = body("@arm", "ping")  # targets only: no template sees the facts
    resolved, _ = w.prepare(ping, "@arm", ACCEPTED, {"web2": HostFacts(ARM)})
    assert resolved.hosts == ["web2"]
    # web2's facts changed (a new object), web1 reported: both are sent.
    facts = {"web1": HostFacts(ARM), "web2": HostFacts(X86)}
    resolved, _ = w.prepare(ping, "@arm", ACCEPTED, facts)
    assert resolved.hosts == ["web1"]
    # web1's facts are gone (its key was deleted): the worker forgets them.
    with pytest.raises(UsageError, match="no host's reported facts match it"):
        w.prepare(ping, "@arm", ACCEPTED, {"web2": facts["web2"]})


@pytest.mark.parametrize(
    ("repo", "target"),
    [
        ("invalid_template_render", "*"),  # a ConfigError with file and line
        ("invalid_many", "*"),  # several problems
        ("detected", "@nosuchgroup"),  # a UsageError
        ("detected", "nosuchhost*"),
    ],
)
def test_errors_cross_the_pipe_as_they_were_raised(settings, worker, repo, target):
    s = settings(repo)
    with pytest.raises(SafcmError) as in_process:
        _Worker(None, s, None, 1).prepare(body(target), target, ACCEPTED, {}, [])  # type: ignore[arg-type]
    with pytest.raises(SafcmError) as crossed:
        worker(s).prepare(body(target), target, ACCEPTED, {})
    assert str(crossed.value) == str(in_process.value)
    if isinstance(in_process.value, ConfigError):
        assert isinstance(crossed.value, ConfigError)
        assert crossed.value.problems == in_process.value.problems
    else:
        assert isinstance(crossed.value, UsageError)


def test_a_job_is_stored_by_the_worker_unstarted(settings, worker, tmp_path):
    s = settings("detected")
    w = worker(s)
    resolved, order = w.prepare(body("*"), "*", ACCEPTED, {})
    assert resolved.hosts == sorted(HOSTS)
    record = JobRecord("20261202T120000.000001Z", 1.0, 61.0, "root", "*", "files", False, None)
    parts, _, _ = w.store(order, record, resolved.hosts, set(), lambda: True)
    assert sorted(parts.hosts) == sorted(HOSTS)
    db = open_db(str(tmp_path))
    try:
        jobs = JobStore(db, None)
        assert jobs.get_job(record.jid) is None  # stored, not started: there for no one
        jobs.start(record.jid)
        stored = jobs.parts(record.jid)
    finally:
        db.close()  # not left to the collector: other tests count descriptors
    assert stored is not None
    assert {h: p.manifest for h, p in stored.hosts.items()} == {
        h: p.manifest for h, p in parts.hosts.items()
    }
    # Every host is stored: the worker keeps nothing of the run.
    with pytest.raises(WorkerError, match="gone from the prepare worker"):
        w.store(order, record, resolved.hosts, set(), lambda: True)


def test_a_worker_that_ended_is_replaced_by_the_next_request(settings, worker):
    w = worker(settings("detected"))
    _, old_order = w.prepare(body("*"), "*", ACCEPTED, {})
    first = w.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not alive(first), WAIT, "the worker to die")
    # Killed while idle: the next request starts a new worker, and is answered.
    resolved, order = w.prepare(body("web1"), "web1", ACCEPTED, {})
    assert w.pid not in (None, first) and order.worker == w.generation == 2
    assert resolved.hosts == ["web1"]
    # What the dead one compiled went with it: said, not guessed at.
    record = JobRecord("20261202T120000.000002Z", 1.0, 61.0, "root", "*", "files", False, None)
    with pytest.raises(WorkerError, match="has ended since"):
        w.store(old_order, record, ["web1"], set(), lambda: True)


def test_a_failure_between_two_transactions_costs_that_worker_not_the_next_run(settings, worker):
    w = worker(settings("detected"))
    resolved, order = w.prepare(body("*"), "*", ACCEPTED, {})
    record = JobRecord("20261202T120000.000003Z", 1.0, 61.0, "root", "*", "files", False, None)

    def broken_turn() -> bool:
        raise RuntimeError("a bug in the loop's turn")

    with pytest.raises(RuntimeError):
        w.store(order, record, resolved.hosts, set(), broken_turn)
    # The worker waited for its turn: the next request goes to a new one,
    # and is answered by it, not with the broken conversation's leftovers.
    resolved, _ = w.prepare(body("web1"), "web1", ACCEPTED, {})
    assert resolved.hosts == ["web1"] and w.generation == 2


def test_no_worker_is_started_once_the_master_stops(settings, worker):
    w = worker(settings("detected"))
    w.start()
    first = w.pid
    assert first is not None
    w.stop()
    wait_for(lambda: not alive(first), WAIT, "the worker to end")
    with pytest.raises(SafcmError, match="the master is stopping"):
        w.prepare(body("web1"), "web1", ACCEPTED, {})
    assert w.generation == 1


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def test_a_large_run_leaves_the_worker_its_memory_back(tmp_path, worker):
    """What a large run made is freed once its job is stored, cycles
    included, and not held by the stored job's parts: a worker that kept it
    held most of a 10,000-host run's 875 MiB (bench/submit.py, before file
    maps were shared between hosts)."""
    hosts = [f"m{i:05d}" for i in range(LARGE_HOSTS)]
    repo = tmp_path / "repo"
    (repo / "all" / "files" / "etc").mkdir(parents=True)
    (repo / "config.yaml").write_text("default_user: root\ndefault_group: root\n")
    (repo / "hosts.yaml").write_text("".join(f"- name: {h}\n" for h in hosts))
    # Templates: each host's files are its own (files that hosts share are
    # shared in the worker too, and cost a run little).
    names = [f"/etc/f{n:03d}.conf" for n in range(LARGE_FILES)]
    for name in names:
        (repo / "all" / "files" / name.lstrip("/")).write_text(f"{name} of {{{{ host }}}}\n" * 20)
    (repo / "all" / "templates.yaml").write_text("".join(f"- {name}\n" for name in names))
    open_db(str(tmp_path)).close()
    w = worker(MasterSettings(state_dir=str(tmp_path), config_dir=str(repo)))
    # A first run of one host: the repository cached, as it stays.
    resolved, order = w.prepare(body("m00000"), "m00000", {"m00000": KeyState.ACCEPTED}, {})
    record = JobRecord("20261202T120000.000001Z", 1.0, 61.0, "root", "*", "files", False, None)
    w.store(order, record, resolved.hosts, set(), lambda: True)
    before = rss_kib(w.pid)
    resolved, order = w.prepare(body("*"), "*", dict.fromkeys(hosts, KeyState.ACCEPTED), {})
    grown = rss_kib(w.pid) - before
    record = JobRecord("20261202T120000.000002Z", 1.0, 61.0, "root", "*", "files", False, None)
    w.store(order, record, resolved.hosts, set(), lambda: True)
    # Collected after the reply: waited for.
    wait_for(
        lambda: rss_kib(w.pid) - before < grown * KEPT_AT_MOST,
        WAIT,
        f"the worker to free the run's {grown} KiB",
    )


def test_the_worker_collects_once_a_large_run_is_done_with():
    """The collector's count is made less freed: a large run's PREPARE leaves
    it high, its STORE low again; the highest since the last collection
    decides, once the run is done with."""
    large, small = COLLECT_AFTER_OBJECTS * 20, COLLECT_AFTER_OBJECTS // 10
    c = Collections()
    assert not c.after(PREPARE, True, large)  # its job is stored next
    assert c.after(STORE, True, small)  # most freed by now; its cycles are not
    assert not c.after(PREPARE, True, small)
    assert not c.after(STORE, True, small)  # a small run: no collection
    assert c.after(PREPARE, False, large)  # a failed run is done with
    assert not c.after(STORE, True, small)  # collected just before
