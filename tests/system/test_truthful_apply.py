"""A run that meets an obstacle, end to end with real daemons (issue 9).

A non-empty directory where /etc/motd belongs, and hand edits to files the
repository manages: the run applies every other file, reports the one
failure and owes the /etc/app trigger (in the CLI, --json and the history);
a restarted minion still owes it; once the obstacle is gone, the next run
runs it exactly once and owes nothing.
"""

from __future__ import annotations

import os
import shutil

from safcm.master.sandbox import wait_for
from tests.system.conftest import SETTLE, by_host, enrol, jobs_show, keys, run_json

RESTART_FLAG = "etc/app/.restart-requested"  # what the /etc/app trigger touches
TRIGGER = 'touch "$SAFCM_ROOT/etc/app/.restart-requested"'  # on /etc/app
RELOAD = 'echo "reload web server"'  # on /srv/www


def changes_by_path(doc: dict, host: str) -> dict[str, dict]:
    return {c["path"]: c for c in by_host(doc)[host]["result"]["apply"]["changes"]}


def restart_minion(sb, minion: str) -> None:
    sb.stop(sb.minions[minion])
    wait_for(lambda: not keys(sb)[minion]["connected"], SETTLE, f"{minion} to be gone")
    sb.start_minion(minion)
    wait_for(lambda: keys(sb)[minion]["connected"], SETTLE, f"{minion} to be back")


def test_obstacle_stale_files_owed_trigger_restart_and_single_run(sandbox):
    enrol(sandbox, "web1")
    root = sandbox.root("web1")
    assert run_json(sandbox, "web1", "files")[0] == 0
    os.unlink(os.path.join(root, RESTART_FLAG))

    # The obstacle, and two files edited by hand: one before it in path
    # order (below /etc/app, whose trigger it owes), one after it.
    motd = os.path.join(root, "etc/motd")
    os.unlink(motd)
    os.makedirs(os.path.join(motd, "kept"))
    logging_conf = os.path.join(root, "etc/app/logging.conf")
    index = os.path.join(root, "srv/www/releases/1/index.html")
    for path in (logging_conf, index):
        with open(path, "a") as f:
            f.write("edited by hand\n")

    code, doc = run_json(sandbox, "web1", "files")
    assert code == 1
    assert by_host(doc)["web1"]["status"] == "failed"
    first_jid = doc["jid"]
    apply = by_host(doc)["web1"]["result"]["apply"]
    changes = changes_by_path(doc, "web1")
    # Stale files applied anyway, before and after the obstacle.
    assert changes["/etc/app/logging.conf"]["outcome"] == "applied"
    assert changes["/srv/www/releases/1/index.html"]["outcome"] == "applied"
    for path in (logging_conf, index):
        with open(path) as f:
            assert "edited by hand" not in f.read()
    # The failure is reported, with path and reason, and nothing claims otherwise.
    assert changes["/etc/motd"]["outcome"] == "failed"
    assert "non-empty directory" in changes["/etc/motd"]["reason"]
    assert [f["path"] for f in apply["failures"]] == ["/etc/motd"]
    assert os.path.isdir(os.path.join(motd, "kept"))
    # No trigger ran against the half-applied host; those of the applied
    # changes are owed, with the path and job that caused them.
    assert apply["triggers"] == []
    assert apply["owed"] == [
        {"command": TRIGGER, "path": "/etc/app/logging.conf", "jid": first_jid},
        {"command": RELOAD, "path": "/srv/www/releases/1/index.html", "jid": first_jid},
    ]
    assert not os.path.exists(os.path.join(root, RESTART_FLAG))
    # The history keeps the same report, and the human form says the same.
    [host] = jobs_show(sandbox, first_jid)["hosts"]
    stored = host["result"]["apply"]
    assert stored["owed"] == apply["owed"] and stored["failures"] == apply["failures"]
    human = sandbox.cli("jobs", "show", first_jid, env={"NO_COLOR": "1"}).stdout
    assert "FAILED to replace /etc/motd" in human
    assert "old directory removed" not in human
    assert (
        f"trigger {TRIGGER}: owed (since /etc/app/logging.conf changed in job {first_jid}" in human
    )

    # A restarted minion still owes it, and the report still says so.
    restart_minion(sandbox, "web1")
    code, doc = run_json(sandbox, "web1", "files")
    assert code == 1
    apply = by_host(doc)["web1"]["result"]["apply"]
    assert apply["triggers"] == []
    assert [(o["command"], o["jid"]) for o in apply["owed"]] == [
        (TRIGGER, first_jid),
        (RELOAD, first_jid),
    ]
    human = sandbox.cli("run", "web1", "files", env={"NO_COLOR": "1"}).stdout
    assert f"trigger {TRIGGER}: owed" in human
    assert not os.path.exists(os.path.join(root, RESTART_FLAG))

    # The obstacle removed: the next run runs the owed triggers, each once.
    shutil.rmtree(motd)
    code, doc = run_json(sandbox, "web1", "files")
    assert code == 0, doc
    apply = by_host(doc)["web1"]["result"]["apply"]
    assert changes_by_path(doc, "web1")["/etc/motd"]["outcome"] == "applied"
    assert [(t["command"], t["status"]) for t in apply["triggers"]] == [
        (TRIGGER, "ok"),
        (RELOAD, "ok"),
    ]
    assert apply["owed"] == [] and apply["failures"] == []
    assert os.path.exists(os.path.join(root, RESTART_FLAG))

    # Paid: nothing is owed or run any more.
    code, doc = run_json(sandbox, "web1", "files")
    assert code == 0
    apply = by_host(doc)["web1"]["result"]["apply"]
    assert apply["triggers"] == [] and apply["owed"] == [] and apply["changes"] == []
