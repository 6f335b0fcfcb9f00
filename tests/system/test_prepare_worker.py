"""The master's prepare worker (master/prepworker.py), with real daemons: a
worker killed under a run fails that run with an error that names it and
why, the next run starts a new worker, and the daemon's stop ends a worker
even in the middle of a compile that would never end."""

from __future__ import annotations

import json
import os
import re
import signal

from safcm.master.sandbox import wait_for
from tests.procs import alive
from tests.system.conftest import SETTLE, enrol, logged, run_json

# A template of web1 whose rendering does not end (each range is the
# sandbox's largest: 10^10 turns of the inner loop).
ENDLESS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n"


def endless_template(sb) -> list[str]:
    """Give web1 a file rendered from ENDLESS; returns what to remove again."""
    group = os.path.join(sb.config_dir, "web1")
    source = os.path.join(group, "files", "etc", "endless")
    with open(source, "w") as f:
        f.write(ENDLESS)
    templates = os.path.join(group, "templates.yaml")
    with open(templates, "w") as f:
        f.write("- /etc/endless\n")
    return [source, templates]


def worker_pid(sb, generation: int) -> int:
    pattern = rf"prepare worker {generation} started \(pid (\d+)\)"
    found = wait_for(
        lambda: re.search(pattern, sb.master.log_text()), SETTLE, f"prepare worker {generation}"
    )
    return int(found.group(1))  # type: ignore[union-attr]


def compiling(sb) -> None:
    """The worker has the run: it loaded the repository, and renders now."""
    logged(sb.master, f"repository {sb.config_dir} loaded")


def test_a_killed_worker_fails_its_run_and_the_next_run_starts_a_new_one(sandbox):
    enrol(sandbox, "web1")
    pid = worker_pid(sandbox, 1)
    added = endless_template(sandbox)
    run = sandbox.spawn_cli("run", "web1", "files", "--json")
    compiling(sandbox)
    os.kill(pid, signal.SIGKILL)
    out, _ = run.communicate(timeout=SETTLE)
    assert run.returncode != 0, out
    error = json.loads(out)["error"]
    assert error["kind"] == "failed"
    assert f"the prepare worker (pid {pid}) died: killed by SIGKILL" in error["message"]
    assert "the job was not started" in error["message"]

    for path in added:
        os.remove(path)
    code, doc = run_json(sandbox, "web1", "files")
    assert code == 0, doc
    assert worker_pid(sandbox, 2) != pid
    assert not alive(pid)


def test_the_daemon_stop_ends_a_busy_worker(sandbox):
    enrol(sandbox, "web1")
    pid = worker_pid(sandbox, 1)
    endless_template(sandbox)
    run = sandbox.spawn_cli("run", "web1", "files", "--json")
    compiling(sandbox)
    assert sandbox.stop(sandbox.master) == 0  # in time, not killed
    assert not alive(pid)
    out, _ = run.communicate(timeout=SETTLE)
    assert run.returncode != 0, out


def test_a_worker_ends_with_a_daemon_that_was_killed(sandbox):
    sandbox.start_master()
    pid = worker_pid(sandbox, 1)
    sandbox.kill(sandbox.master)  # SIGKILL: no stop, nothing ends the worker but its socket
    wait_for(lambda: not alive(pid), SETTLE, "the worker to end with its daemon")
