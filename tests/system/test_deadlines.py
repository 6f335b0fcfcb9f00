"""A job's deadline covers its triggers: a minion still working reports so, and
the run that started the job waits for its result instead of calling the
host "no response"."""

from __future__ import annotations

import os

import yaml

from tests.system.conftest import by_host, enrol, jobs_show, run_json

# The job's timeout, and a trigger that outlasts it by far, in seconds.
TIMEOUT = 1
TRIGGER_SLEEP = 4


def test_triggers_that_outlast_the_timeout_are_waited_for(sandbox):
    path = os.path.join(sandbox.config_dir, "web1", "triggers.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"/etc/app/feature-flags.conf": [f"sleep {TRIGGER_SLEEP}"]}, f)
    enrol(sandbox, "web1", "web2")

    code, doc = run_json(sandbox, "web*", "files", "--timeout", str(TIMEOUT))
    assert code == 0, doc
    assert doc["summary"]["no response"] == 0
    web1 = by_host(doc)["web1"]
    assert web1["status"] == "changed"
    [trigger] = [t for t in web1["result"]["apply"]["triggers"] if t["command"].startswith("sleep")]
    assert trigger["status"] == "ok" and trigger["duration"] >= TRIGGER_SLEEP
    stored = {h["host"]: h for h in jobs_show(sandbox, doc["jid"])["hosts"]}
    assert stored["web1"]["status"] == "changed" and stored["web2"]["status"] == "changed"
    assert f"job {doc['jid']}: web1 still working" in sandbox.master.log_text()
