"""The minion's module registry (minion/modules/): a job goes to its module,
sync runs its steps in order and stops at the first that fails, work a
step defers runs last, and a module the minion does not accept is refused."""

from __future__ import annotations

import os

import pytest

from safcm.common.errors import ConfigError
from safcm.common.model import FileSpec, FileType
from safcm.common.modules import ModuleWire
from safcm.common.modules import files as files_wire
from safcm.minion import modules, settings
from safcm.minion.modules import Context, Done, MinionModule

JID = "20260101T000000.000001Z"


def minion_settings(tmp_path, extra: str = "") -> settings.MinionSettings:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return settings.parse(
        f"id: web1\nmaster: 127.0.0.1\nstate_dir: {tmp_path / 'state'}\nroot: {root}\n"
        f"trust_first_master: true\n{extra}"
    )


def context(tmp_path, dry_run: bool = False) -> Context:
    return Context(
        minion_settings(tmp_path),
        JID,
        dry_run,
        4e9,
        "0.0",
        now=lambda: 1.0,
        resolve_files=lambda files: [FileSpec.from_wire(f) for f in files],
    )


class Recorder:
    """Fake modules that note each call: `ok` says how each one ends."""

    def __init__(self, ok: dict[str, bool], defer: tuple[str, ...] = ()) -> None:
        self.ok = ok
        self.defer = defer
        self.events: list[str] = []

    def module(self, name: str) -> MinionModule:
        def execute(fields, ctx, hold) -> Done:
            self.events.append(f"{name}{' (hold)' if hold else ''}")
            if self.ok[name] is None:
                return Done(None, False, f"{name} cannot run")
            after = None
            if name in self.defer:

                def after(all_ok: bool) -> bool:
                    self.events.append(f"{name} after, all ok: {all_ok}")
                    return True

            return Done({"n": fields[f"{name}_n"]}, self.ok[name], after=after)

        return MinionModule(name, execute)


def fakes(recorder: Recorder, names: list[str]):
    wires = {
        n: ModuleWire(n, {f"{n}_n": None}, n, sync_order=10 * i) for i, n in enumerate(names, 1)
    }
    table = {n: recorder.module(n) for n in names}
    return table, wires


def sync_job(names: list[str]) -> dict:
    return {"module": "sync", "dry_run": False, "deadline": 4e9, "steps": names} | {
        f"{n}_n": i for i, n in enumerate(names)
    }


def test_a_job_goes_to_its_module(tmp_path):
    rec = Recorder({"a": True, "b": False, "c": None})
    table, wires = fakes(rec, ["a", "b", "c"])
    ctx = context(tmp_path)
    job = {"module": "a", "dry_run": False, "deadline": 4e9, "a_n": 7}
    assert modules.run(job, ctx, table, wires) == {
        "module": "a",
        "status": "ok",
        "error": None,
        "a": {"n": 7},
    }
    job = {"module": "b", "dry_run": False, "deadline": 4e9, "b_n": 1}
    assert modules.run(job, ctx, table, wires)["status"] == "failed"
    job = {"module": "c", "dry_run": False, "deadline": 4e9, "c_n": 1}
    assert modules.run(job, ctx, table, wires) == {
        "module": "c",
        "status": "error",
        "error": "c cannot run",
    }
    assert rec.events == ["a", "b", "c"]


def test_sync_runs_every_step_in_order_then_what_they_deferred(tmp_path):
    rec = Recorder({"a": True, "b": True, "c": True}, defer=("a",))
    table, wires = fakes(rec, ["a", "b", "c"])
    result = modules.run(sync_job(["a", "b", "c"]), context(tmp_path), table, wires)
    # Each step but the last holds what must come last; that runs after all.
    assert rec.events == ["a (hold)", "b (hold)", "c", "a after, all ok: True"]
    assert result["status"] == "ok"
    assert [s["status"] for s in result["steps"]] == ["ok", "ok", "ok"]
    assert (result["a"], result["b"], result["c"]) == ({"n": 0}, {"n": 1}, {"n": 2})


def test_a_failed_step_stops_the_steps_after_it(tmp_path):
    rec = Recorder({"a": True, "b": False, "c": True}, defer=("a",))
    table, wires = fakes(rec, ["a", "b", "c"])
    result = modules.run(sync_job(["a", "b", "c"]), context(tmp_path), table, wires)
    assert rec.events == ["a (hold)", "b (hold)", "a after, all ok: False"]
    assert result["status"] == "failed"
    assert result["steps"] == [
        {"module": "a", "status": "ok", "error": None},
        {"module": "b", "status": "failed", "error": None},
        {"module": "c", "status": "not run", "error": None},
    ]
    assert "c" not in result


def test_a_step_that_cannot_run_says_why_and_stops_the_rest(tmp_path):
    rec = Recorder({"a": None, "b": True})
    table, wires = fakes(rec, ["a", "b"])
    result = modules.run(sync_job(["a", "b"]), context(tmp_path), table, wires)
    assert rec.events == ["a (hold)"]
    assert result["steps"] == [
        {"module": "a", "status": "error", "error": "a cannot run"},
        {"module": "b", "status": "not run", "error": None},
    ]
    assert result["status"] == "failed"


def test_a_module_the_minion_does_not_accept_is_refused():
    only_files = frozenset({"files"})
    assert modules.refusal("files", [], only_files) is None
    assert modules.refusal("ping", [], only_files) == (
        "this minion does not accept module ping (minion.yaml modules:)"
    )
    assert modules.refusal("sync", ["files"], only_files) is None
    refused = modules.refusal("sync", ["files"], frozenset({"ping"}))
    assert refused is not None
    assert refused.startswith("this minion does not accept module files (minion.yaml modules:)")
    assert "no step was run" in refused


def test_the_modules_setting(tmp_path):
    assert minion_settings(tmp_path).modules == frozenset(modules.MODULES)
    assert minion_settings(tmp_path, "modules: files, ping\n").modules == {"files", "ping"}
    assert minion_settings(tmp_path, "modules: ping\n").modules == {"ping"}
    with pytest.raises(ConfigError, match="modules: expected module names"):
        minion_settings(tmp_path, "modules: files, shell\n")


def _file_with_trigger(root, log) -> dict:
    command = f"echo ran >> {log}"
    spec = FileSpec("/f", FileType.FILE, 0o644, user="root", group="root", data=b"x\n")
    return {**spec.to_wire(), "triggers": [command]}


@pytest.mark.parametrize("later_ok", [True, False])
def test_files_in_sync_runs_its_triggers_after_the_later_steps(tmp_path, later_ok):
    """files holds its triggers (owed, on disk) while later steps run; they
    run once every step succeeded, and stay owed when one failed."""
    ctx = context(tmp_path)
    log = tmp_path / "trigger.log"
    seen: list[str] = []

    def later(fields, c, hold) -> Done:
        seen.append("ran" if log.exists() else "not yet")
        return Done({"n": 0}, later_ok)

    wires = {
        "files": files_wire.WIRE,
        "z": ModuleWire("z", {"z_n": None}, "z", sync_order=99),
    }
    table = {"files": modules.MODULES["files"], "z": MinionModule("z", later)}
    body = {
        "module": "sync",
        "dry_run": False,
        "deadline": 4e9,
        "steps": ["files", "z"],
        "files": [_file_with_trigger(ctx.settings.root, log)],
        "absent": [],
        "purge": [],
        "secrets": [],
        "z_n": 0,
    }
    result = modules.run(body, ctx, table, wires)
    assert seen == ["not yet"]  # the trigger had not run when z ran
    assert os.path.exists(os.path.join(ctx.settings.root, "f"))
    apply = result["apply"]
    if later_ok:
        assert log.read_text() == "ran\n"
        assert [t["status"] for t in apply["triggers"]] == ["ok"]
        assert apply["owed"] == []
        assert result["status"] == "ok"
    else:
        assert not log.exists()
        assert apply["triggers"] == []
        assert [o["command"] for o in apply["owed"]] == [f"echo ran >> {log}"]
        assert result["status"] == "failed"
