"""The services module on booted Debian systems, with their real systemd:
`run TARGET services` and `sync` (files, then services), dry runs that say
exactly what the real runs then do, a unit that fails to start, a unit
delivered by files and started in the same sync, and a trigger that
restarts a service (its main PID changes)."""

from __future__ import annotations

import json

from tests.hosts.units import BROKEN, FAILING, SLEEPER, unit_text
from tests.system.conftest import by_host, run_json

HOSTS = ["host1"]
UNIT_DIR = "/etc/systemd/system"
# Where a package's units are: a unit there can be masked (a mask is a link
# in UNIT_DIR, which a unit file of the same name there would stand in for).
PACKAGE_UNIT_DIR = "/usr/lib/systemd/system"


def services(doc: dict, host: str = "host1") -> dict:
    return by_host(doc)[host]["result"]["services"]


def planned(doc: dict) -> list[tuple[str, list[str]]]:
    """(unit, actions) of every change, as a run reports them."""
    return [(c["unit"], c["actions"]) for c in services(doc)["changes"]]


def state(host, unit: str) -> dict[str, str]:
    return host.machine.show(unit, "ActiveState", "SubState", "UnitFileState", "MainPID", "Result")


def is_enabled(host, unit: str) -> bool:
    """`systemctl is-enabled`'s exit status: 0 for enabled (and static and the like)."""
    return host.run("systemctl", "is-enabled", "--quiet", unit, check=False).returncode == 0


def install_units(host, directory: str = UNIT_DIR, **units: str) -> None:
    """Unit files put in place by hand (not by safcm), loaded by systemd."""
    for name, text in units.items():
        host.machine.write(f"{directory}/{name}.service", text)
    host.run("systemctl", "daemon-reload")


def dry_then_real(fleet, target: str, module: str) -> tuple[int, dict, dict]:
    """The dry run, then the real run: the dry run plans exactly what the
    real run does, from the same states (but for units a sync delivers:
    the dry run sees them missing, the real run after its reload)."""
    code, dry = run_json(fleet.sandbox, target, module, "--dry-run")
    assert code == 0, json.dumps(dry, indent=1)
    assert all(c["outcome"] == "would apply" for c in services(dry)["changes"])
    assert all(c["after"] is None for c in services(dry)["changes"])
    code, real = run_json(fleet.sandbox, target, module)
    assert planned(dry) == planned(real)
    if module == "services":
        assert [c["before"] for c in services(dry)["changes"]] == [
            c["before"] for c in services(real)["changes"]
        ]
    return code, dry, real


def test_enable_start_then_disable_stop_mask(fleet):
    host = fleet.hosts["host1"]
    install_units(host, **{n: unit_text(SLEEPER) for n in ("svc-a", "svc-c")})
    install_units(host, PACKAGE_UNIT_DIR, **{n: unit_text(SLEEPER) for n in ("svc-b", "svc-d")})
    host.run("systemctl", "enable", "--now", "svc-c.service", "svc-d.service")
    fleet.repo(
        {"all": {"services.yaml": {"enable": ["svc-a"], "start": ["svc-b"], "stop": ["svc-c"]}}}
    )
    code, _dry, real = dry_then_real(fleet, "host1", "services")
    assert code == 0, json.dumps(real, indent=1)
    assert by_host(real)["host1"]["status"] == "changed"
    assert planned(real) == [
        ("svc-a.service", ["enable", "start"]),
        ("svc-b.service", ["start"]),
        ("svc-c.service", ["stop"]),
    ]
    changes = {c["unit"]: c for c in services(real)["changes"]}
    a = changes["svc-a.service"]
    assert (a["before"]["enablement"], a["before"]["active"]) == ("disabled", "inactive")
    assert (a["after"]["enablement"], a["after"]["active"]) == ("enabled", "active")
    assert all(c["outcome"] == "applied" for c in changes.values())
    # What systemd itself says now.
    assert (
        is_enabled(host, "svc-a.service") and state(host, "svc-a.service")["SubState"] == "running"
    )
    assert not is_enabled(host, "svc-b.service")  # start leaves the boot alone
    assert state(host, "svc-b.service")["ActiveState"] == "active"
    assert is_enabled(host, "svc-c.service")  # stop leaves the boot alone
    assert state(host, "svc-c.service")["ActiveState"] == "inactive"

    # Nothing left to do: no change, status ok.
    code, again = run_json(fleet.sandbox, "host1", "services")
    assert code == 0 and services(again)["changes"] == []
    assert by_host(again)["host1"]["status"] == "ok"

    # The other way round, and a mask.
    fleet.repo({"all": {"services.yaml": {"disable": ["svc-a"], "mask": ["svc-b", "svc-d"]}}})
    code, _dry, real = dry_then_real(fleet, "host1", "services")
    assert code == 0, json.dumps(real, indent=1)
    assert planned(real) == [
        ("svc-a.service", ["stop", "disable"]),
        ("svc-b.service", ["stop", "mask"]),
        ("svc-d.service", ["stop", "mask"]),
    ]
    assert not is_enabled(host, "svc-a.service")
    assert state(host, "svc-a.service")["ActiveState"] == "inactive"
    for unit in ("svc-b.service", "svc-d.service"):
        assert state(host, unit)["UnitFileState"] == "masked"
        assert state(host, unit)["ActiveState"] == "inactive"
    # A masked unit cannot be started by hand any more.
    assert host.run("systemctl", "start", "svc-b.service", check=False).returncode != 0

    # Enabling a masked unit unmasks it first.
    fleet.repo({"all": {"services.yaml": {"enable": ["svc-b"]}}})
    code, _dry, real = dry_then_real(fleet, "host1", "services")
    assert code == 0 and planned(real) == [("svc-b.service", ["unmask", "enable", "start"])]
    assert is_enabled(host, "svc-b.service") and state(host, "svc-b.service")["ActiveState"] == (
        "active"
    )

    # A unit whose file is in /etc/systemd/system cannot be masked: systemd says why.
    fleet.repo({"all": {"services.yaml": {"mask": ["svc-a"]}}})
    code, doc = run_json(fleet.sandbox, "host1", "services")
    assert code == 1
    (change,) = services(doc)["changes"]
    assert change["outcome"] == "failed" and change["actions"] == ["mask"]
    assert "already exists" in change["reason"]
    assert state(host, "svc-a.service")["UnitFileState"] == "disabled"


def test_a_unit_that_fails_to_start_fails_the_host_with_systemds_reason(fleet):
    host = fleet.hosts["host1"]
    install_units(host, broken=unit_text(BROKEN), failing=unit_text(FAILING))
    install_units(host, fine=unit_text(SLEEPER))
    fleet.repo({"all": {"services.yaml": {"enable": ["broken", "failing", "fine"]}}})
    code, _dry, real = dry_then_real(fleet, "host1", "services")
    assert code == 1
    assert by_host(real)["host1"]["status"] == "failed"
    changes = {c["unit"]: c for c in services(real)["changes"]}
    for unit, said in (
        ("broken.service", "/nonexistent"),
        ("failing.service", "config file missing"),
    ):
        change = changes[unit]
        assert change["outcome"] == "failed"
        assert "ActiveState=failed" in change["reason"] and "Result=exit-code" in change["reason"]
        assert said in change["reason"]  # the unit's own journal
        assert change["after"]["enablement"] == "enabled"  # enabled before the start failed
    # One unit's failure is not the others'.
    assert changes["fine.service"]["outcome"] == "applied"
    assert state(host, "fine.service")["ActiveState"] == "active"
    # The human output says it in one line per unit, and never a traceback.
    human = fleet.sandbox.cli("run", "host1", "services")
    assert human.returncode == 1
    assert "broken.service" in human.stdout and "Result=exit-code" in human.stdout
    assert "Traceback" not in human.stdout + human.stderr


def test_a_unit_delivered_by_files_is_started_in_the_same_sync(fleet):
    host = fleet.hosts["host1"]
    fleet.repo(
        {
            "all": {
                f"files{UNIT_DIR}/shipped.service": unit_text(SLEEPER),
                "services.yaml": {"enable": ["shipped"]},
            }
        }
    )
    code, dry, real = dry_then_real(fleet, "host1", "sync")
    assert code == 0, json.dumps(real, indent=1)
    # The dry run plans the unit as the real run finds it after its reload.
    assert services(dry)["reloaded"] and services(real)["reloaded"]
    assert planned(real) == [("shipped.service", ["enable", "start"])]
    assert services(dry)["changes"][0]["before"]["load"] == "not-found"
    assert f"{UNIT_DIR}/shipped.service" in [
        c["path"] for c in by_host(real)["host1"]["result"]["apply"]["changes"]
    ]
    assert is_enabled(host, "shipped.service")
    assert state(host, "shipped.service")["SubState"] == "running"

    # A changed unit file is reloaded before the services step.
    fleet.repo(
        {
            "all": {
                f"files{UNIT_DIR}/shipped.service": unit_text("ExecStart=/bin/sleep 86400"),
                "services.yaml": {"enable": ["shipped"]},
            }
        }
    )
    code, doc = run_json(fleet.sandbox, "host1", "sync")
    assert code == 0 and services(doc)["reloaded"]
    shown = host.machine.show("shipped.service", "ExecStart", "NeedDaemonReload")
    assert "86400" in shown["ExecStart"] and shown["NeedDaemonReload"] == "no"


def test_a_trigger_restarts_a_service_and_its_main_pid_changes(fleet):
    host = fleet.hosts["host1"]
    files = {
        f"files{UNIT_DIR}/restarted.service": unit_text(SLEEPER),
        "files/etc/restarted.conf": "v1\n",
        "services.yaml": {"enable": ["restarted"]},
        "triggers.yaml": {"/etc/restarted.conf": ["systemctl restart restarted.service"]},
    }
    fleet.repo({"all": files})
    code, doc = run_json(fleet.sandbox, "host1", "sync")
    assert code == 0, json.dumps(doc, indent=1)
    first = state(host, "restarted.service")
    assert first["ActiveState"] == "active" and int(first["MainPID"]) > 0

    fleet.repo({"all": {**files, "files/etc/restarted.conf": "v2\n"}})
    code, doc = run_json(fleet.sandbox, "host1", "sync")
    assert code == 0, json.dumps(doc, indent=1)
    runs = by_host(doc)["host1"]["result"]["apply"]["triggers"]
    assert [(t["command"], t["status"]) for t in runs] == [
        ("systemctl restart restarted.service", "ok")
    ]
    assert services(doc)["changes"] == []  # already enabled and running
    second = state(host, "restarted.service")
    assert second["ActiveState"] == "active"
    assert second["MainPID"] != first["MainPID"] and int(second["MainPID"]) > 0


def test_conflicting_groups_stop_the_run_before_any_host(fleet):
    fleet.repo(
        {
            "base": {"services.yaml": {"enable": ["conflicted"]}},
            "web": {"services.yaml": {"mask": ["conflicted"]}},
        }
    )
    result = fleet.sandbox.cli("run", "host1", "services")
    assert result.returncode == 2
    assert "conflicted.service for host1" in result.stderr
    assert "base/services.yaml" in result.stderr and "web/services.yaml" in result.stderr


def test_a_unit_file_changed_behind_systemds_back_is_reloaded_first(fleet):
    host = fleet.hosts["host1"]
    install_units(host, edited=unit_text(SLEEPER))
    host.run("systemctl", "start", "edited.service")  # loaded: systemd sees its file change
    host.machine.write(f"{UNIT_DIR}/edited.service", unit_text("ExecStart=/bin/sleep 4242"))
    assert host.machine.show("edited.service", "NeedDaemonReload")["NeedDaemonReload"] == "yes"
    fleet.repo({"all": {"services.yaml": {"enable": ["edited"]}}})
    code, doc = run_json(fleet.sandbox, "host1", "services")
    assert code == 0 and services(doc)["reloaded"]
    shown = host.machine.show("edited.service", "ExecStart", "NeedDaemonReload", "ActiveState")
    assert "4242" in shown["ExecStart"] and shown["NeedDaemonReload"] == "no"
    assert shown["ActiveState"] == "active"
