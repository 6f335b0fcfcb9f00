"""The modules' wire (common/modules/): what it is composed of, the order of
sync, and the cross-field checks of job and result bodies, sync's included."""

from __future__ import annotations

import hashlib

import pytest

from safcm.common import modules
from safcm.common.errors import ProtocolError
from safcm.common.modules import ModuleWire
from safcm.common.protocol import MsgType, check_body
from safcm.common.schema import Map, Str
from safcm.master import modules as master_modules
from safcm.minion import modules as minion_modules

NOW = 1_800_000_000.0
DATA = b"hello\n"
FILE = {
    "path": "/etc/motd",
    "type": "file",
    "mode": 0o644,
    "user": "root",
    "uid": None,
    "group": "root",
    "gid": None,
    "digest": hashlib.sha256(DATA).digest(),
    "data": DATA,
    "triggers": ["true"],
    "passthrough": False,
}
FILES = {"files": [FILE], "absent": [], "purge": [], "secrets": []}
APPLY = {
    "dry_run": False,
    "changes": [],
    "triggers": [],
    "failures": [],
    "owed": [],
    "duration": 0.1,
}


def job(module: str, **fields) -> dict:
    return {"module": module, "dry_run": False, "deadline": NOW, **fields}


def result(module: str, status: str = "ok", **fields) -> dict:
    return {
        "module": module,
        "status": status,
        "started": NOW,
        "finished": NOW + 1,
        "error": None,
        **fields,
    }


def test_every_module_has_its_three_parts():
    # A wire file without its master or minion part (or the other way round)
    # would be a module one side cannot run.
    assert set(modules.names()) == set(master_modules.REGISTERED)
    assert set(modules.names()) == set(minion_modules.REGISTERED)
    assert set(master_modules.modules()) == set(minion_modules.MODULES)


def test_sync_runs_the_modules_that_take_part_in_their_declared_order():
    def wire(name, order):
        return ModuleWire(name, {}, None, sync_order=order)

    table = {
        "services": wire("services", 30),
        "cmd": wire("cmd", None),
        "files": wire("files", 20),
        "packages": wire("packages", 10),
    }
    assert modules.sync_steps(table) == ["packages", "files", "services"]
    assert "files" in modules.sync_steps()
    assert "ping" not in modules.sync_steps()


def test_a_job_carries_exactly_its_modules_fields():
    check_body(MsgType.JOB, job("files", **FILES))
    check_body(MsgType.JOB, job("ping"))
    check_body(MsgType.JOB, job("sync", steps=["files"], **FILES))
    bad = [
        (job("ping", **FILES), "unexpected key 'files'"),
        (job("files"), "missing key '(files|absent|purge|secrets)'"),
        (job("sync", **FILES), "missing key 'steps'"),
        (job("sync", steps=[], **FILES), "expected a list of 1"),
        (job("sync", steps=["ping"]), r"steps\[0\]: expected one of"),
        (job("sync", steps=["files"]), "its step files lacks some of its fields"),
        (job("sync", steps=["files", "files"], **FILES), "not each once in sync order"),
        (job("nosuch"), "module: expected one of cmd, files, ping, services, sync"),
        (
            job("sync", steps=["files"], **{**FILES, "files": [{**FILE, "data": b"x"}]}),
            "does not match its digest",
        ),
    ]
    for body, reason in bad:
        with pytest.raises(ProtocolError, match=reason):
            check_body(MsgType.JOB, body)


def test_a_result_carries_the_section_of_each_module_that_ran():
    check_body(MsgType.RESULT, result("files", apply=APPLY))
    check_body(MsgType.RESULT, result("ping", ping={"version": "1", "time": NOW}))
    check_body(MsgType.RESULT, result("files", "error", error="lock held"))
    # stored before the registry: both keys, null for the module that did not run
    check_body(MsgType.RESULT, result("files", apply=APPLY, ping=None))
    check_body(MsgType.RESULT, result("ping", "error", apply=None, ping=None, error="x"))
    step = {"module": "files", "status": "ok", "error": None}
    check_body(MsgType.RESULT, result("sync", steps=[step], apply=APPLY))
    failed_apply = {**APPLY, "failures": [{"path": "/etc/x", "reason": "no"}]}
    failed = {**step, "status": "failed"}
    check_body(MsgType.RESULT, result("sync", "failed", steps=[failed], apply=failed_apply))
    error = {**step, "status": "error", "error": "lock held"}
    check_body(MsgType.RESULT, result("sync", "failed", steps=[error]))
    bad = [
        (result("files"), "apply is set exactly for a files job or step that ran"),
        (result("ping", apply=APPLY), "apply is set exactly"),
        (result("files", apply=APPLY, steps=[]), "steps is set only for a sync job"),
        (result("sync", apply=APPLY), "steps is set exactly for a sync job that ran"),
        (result("sync", steps=[step]), "apply is set exactly"),
        (result("sync", steps=[error], apply=APPLY), "apply is set exactly"),
        (result("sync", steps=[error]), "status ok contradicts the sync result"),
        (result("sync", "failed", steps=[step], apply=APPLY), "status failed contradicts"),
        (result("sync", steps=[step], apply=failed_apply), "its status ok contradicts"),
        (result("sync", "failed", steps=[{**step, "error": "x"}], apply=APPLY), "error is set"),
        (result("files", apply=failed_apply), "status ok contradicts the files result"),
    ]
    for body, reason in bad:
        with pytest.raises(ProtocolError, match=reason):
            check_body(MsgType.RESULT, body)


def test_run_options_are_checked_against_the_modules_schema():
    with pytest.raises(ProtocolError, match="files takes no options"):
        modules.check_options("files", {"argv": ["true"]})
    modules.check_options("files", None)
    schema = Map({"argv": Str(10)})
    wire = ModuleWire("x", {}, None, options=schema)
    assert wire.options is schema


def test_two_modules_cannot_claim_one_key():
    table = {
        "a": ModuleWire("a", {"files": Str(1)}, None),
        "b": ModuleWire("b", {"files": Str(1)}, None),
    }
    with pytest.raises(RuntimeError, match="key 'files' is taken"):
        modules._check_table(table)
    with pytest.raises(RuntimeError, match="key 'deadline' is taken"):
        modules._check_table({"a": ModuleWire("a", {"deadline": Str(1)}, None)})
