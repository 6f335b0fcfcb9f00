"""The master's module registry (master/modules/): results of every module,
of sync, and of jobs stored before the registry, shown by human output and
--json (validated against docs/schema)."""

from __future__ import annotations

import pytest

from safcm.common import modules as wire
from safcm.common.model import ApplyResult, FileChange, FileState, FileType, Outcome
from safcm.common.protocol import MsgType, check_body
from safcm.master import jsonout, modules, render
from safcm.master.outcomes import HostStatus, host_status
from tests import schemas

PLAIN = render.Style(colour=False)
T0 = 1_800_000_000.0
ROOT_FILE = FileState(FileType.FILE, 0o644, 0, 0, "root", "root")
APPLY = ApplyResult(
    dry_run=False,
    changes=[FileChange("/etc/motd", True, ROOT_FILE, None, "+hi\n", Outcome.APPLIED)],
).to_wire()


def result(module: str, status: str = "ok", **fields) -> dict:
    body = {"module": module, "status": status, "started": T0, "finished": T0 + 1, "error": None}
    body.update(fields)
    check_body(MsgType.RESULT, body)
    return body


def validated(body: dict) -> dict:
    """body's --json form, checked against docs/schema/common.json#/$defs/result."""
    doc = jsonout.result_document(body)
    result_schema = {"$ref": schemas.BASE + "common.json#/$defs/result"}
    schemas.validator("common").evolve(schema=result_schema).validate(doc)
    return doc


def test_the_cli_knows_every_module_and_sync_without_loading_them():
    assert modules.names() == [*modules.REGISTERED, "sync"]
    assert set(modules.modules()) == set(modules.REGISTERED)


def test_every_module_has_a_wire_and_the_same_result_key():
    # The registry says each module's result key again, so that the CLI
    # reads results without loading the wires (and the protocol behind them).
    wires = wire.wires()
    assert set(wires) == set(modules.REGISTERED)
    for name, module in modules.modules().items():
        assert module.result_key == wires[name].result_key, name


@pytest.mark.parametrize("stored_before_the_registry", [False, True])
def test_files_and_ping_results_render_new_and_stored(stored_before_the_registry):
    # Results stored before the registry carry both "apply" and "ping".
    old = {"apply": None, "ping": None} if stored_before_the_registry else {}
    files = result("files", **{**old, "apply": APPLY})
    ping = result("ping", **{**old, "ping": {"version": "0.9", "time": T0}})
    text = render.render_host("web1", HostStatus.CHANGED, files, PLAIN)
    assert "created /etc/motd" in text
    assert host_status(files) is HostStatus.CHANGED
    text = render.render_host("web1", HostStatus.OK, ping, PLAIN)
    assert "pong from safcm-minion 0.9" in text
    assert host_status(ping) is HostStatus.OK
    doc = validated(files)
    assert doc["apply"]["changes"][0]["new"]["mode"] == "0644"
    assert doc["ping"] is None  # every module's key, null unless it ran
    doc = validated(ping)
    assert doc["ping"]["time"].endswith("Z") and doc["apply"] is None


def test_a_sync_result_shows_each_step():
    failed_apply = {**APPLY, "failures": [{"path": "/etc/x", "reason": "no \x1b[31mspace"}]}
    body = result(
        "sync",
        "failed",
        steps=[{"module": "files", "status": "failed", "error": None}],
        apply=failed_apply,
    )
    text = render.render_host("web1", HostStatus.FAILED, body, PLAIN)
    lines = text.splitlines()
    assert "    files: FAILED" in lines
    assert "created /etc/motd" in text
    assert "\x1b" not in text  # a host's strings are escaped
    assert host_status(body) is HostStatus.FAILED
    doc = validated(body)
    assert doc["steps"] == [{"module": "files", "status": "failed", "error": None}]
    error = result(
        "sync",
        "failed",
        steps=[{"module": "files", "status": "error", "error": "lock held"}],
    )
    text = render.render_host("web1", HostStatus.FAILED, error, PLAIN)
    assert "files: could not run" in text and "error: lock held" in text
    validated(error)
