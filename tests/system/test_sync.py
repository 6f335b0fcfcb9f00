"""`run TARGET sync` against real minions: the modules that take part in
sync, in one job, step by step (today: files, services, then files' triggers), and a
minion whose `modules:` leaves out a step refuses the sync whole."""

from __future__ import annotations

import os

from tests.system.conftest import by_host, changed_paths, enrol, jobs_show, run_json


def test_sync_makes_the_files_and_runs_their_triggers_as_files_does(sandbox):
    enrol(sandbox, "web1")
    code, dry_files = run_json(sandbox, "web1", "files", "--dry-run")
    assert code == 0
    code, dry = run_json(sandbox, "web1", "sync", "--dry-run")
    assert code == 0
    result = by_host(dry)["web1"]["result"]
    assert result["module"] == "sync"
    # services has no unit to manage here (the example declares none): ok.
    assert result["steps"] == [
        {"module": "files", "status": "ok", "error": None},
        {"module": "services", "status": "ok", "error": None},
    ]
    assert os.listdir(sandbox.root("web1")) == []  # a dry run writes nothing
    # The dry run of sync reports what files' does.
    assert changed_paths(dry, "web1") == changed_paths(dry_files, "web1")
    would_run = [t["command"] for t in result["apply"]["triggers"]]
    files_would_run = by_host(dry_files)["web1"]["result"]["apply"]["triggers"]
    assert would_run and would_run == [t["command"] for t in files_would_run]

    code, synced = run_json(sandbox, "web1", "sync")
    assert code == 0 and synced["summary"]["changed"] == 1
    assert changed_paths(synced, "web1") == changed_paths(dry, "web1")
    apply = by_host(synced)["web1"]["result"]["apply"]
    assert [(t["command"], t["status"]) for t in apply["triggers"]] == [
        (command, "ok") for command in would_run
    ]
    assert apply["owed"] == []
    for path in ("etc/motd", "etc/app/logging.conf", "etc/app/.restart-requested"):
        assert os.path.exists(os.path.join(sandbox.root("web1"), path))

    # Stored as every job, and shown back.
    shown = by_host(jobs_show(sandbox, synced["jid"]))["web1"]["result"]
    assert [s["module"] for s in shown["steps"]] == ["files", "services"]
    human = sandbox.cli("jobs", "show", synced["jid"])
    assert human.returncode == 0
    assert "files: ok" in human.stdout and "created /etc/motd" in human.stdout

    code, again = run_json(sandbox, "web1", "sync")
    assert code == 0 and again["summary"]["ok"] == 1


def test_a_minion_that_does_not_accept_a_step_refuses_the_sync_whole(sandbox):
    enrol(sandbox, "web1", modules="ping")
    code, doc = run_json(sandbox, "web1", "sync")
    assert code == 1
    result = by_host(doc)["web1"]["result"]
    assert result["status"] == "error"
    assert result["error"].startswith(
        "this minion does not accept module files (minion.yaml modules:)"
    )
    assert result["apply"] is None
    assert os.listdir(sandbox.root("web1")) == []
    code, doc = run_json(sandbox, "web1", "files")
    assert code == 1
    assert by_host(doc)["web1"]["result"]["error"] == (
        "this minion does not accept module files (minion.yaml modules:)"
    )
    human = sandbox.cli("run", "web1", "files")
    assert human.returncode == 1
    assert "this minion does not accept module files (minion.yaml modules:)" in human.stdout
    assert run_json(sandbox, "web1", "ping")[0] == 0
