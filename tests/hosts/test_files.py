"""Files on booted Debian systems: a real minion (run by the machine's systemd)
with `root: /` changes the machine's own /etc, with owners from the
machine's /etc/passwd, removes what is absent or purged, and its triggers
restart real units."""

from __future__ import annotations

import json
import os
import stat

from tests.hosts.fleet import MINION_CONFIG
from tests.system.conftest import by_host, keys, run_json

HOSTS = ["host1", "host2"]
# A user and group that exist only in the machines, never on the test host.
MACHINE_USER = "safcm-only-here"
MACHINE_UID = 4242


def changes(doc: dict, host: str) -> dict[str, dict]:
    return {c["path"]: c for c in by_host(doc)[host]["result"]["apply"]["changes"]}


def test_minions_enrolled_under_systemd_with_their_own_keys(fleet):
    listed = keys(fleet.sandbox)
    for host in fleet.hosts.values():
        assert listed[host.id]["state"] == "accepted" and listed[host.id]["connected"]
        # The minion is the shipped unit, run by the machine's systemd.
        state = host.machine.show("safcm-minion.service", "ActiveState", "MainPID", "FragmentPath")
        assert state["ActiveState"] == "active" and int(state["MainPID"]) > 0
        assert state["FragmentPath"] == "/etc/systemd/system/safcm-minion.service"
        # The fingerprint the master shows is the one the minion shows for itself.
        mine = host.run("/opt/safcm/bin/safcm-minion", "-c", MINION_CONFIG, "fingerprint")
        assert listed[host.id]["fingerprint"] in mine.stdout
    code, doc = run_json(fleet.sandbox, "host*", "ping")
    assert code == 0 and doc["summary"]["ok"] == 2


def test_system_files_modes_and_owners_from_the_machine(fleet):
    for host in fleet.hosts.values():
        host.run("groupadd", "--gid", str(MACHINE_UID), MACHINE_USER)
        host.run("useradd", "--uid", str(MACHINE_UID), "--gid", MACHINE_USER, MACHINE_USER)
        with open(host.machine.path("/etc/motd")) as f:
            assert "Debian GNU/Linux" in f.read()  # base-files' motd, the system's own
    fleet.repo(
        {
            "all": {
                "files/etc/motd": "Managed by safcm.\n",
                "files/etc/hostname": "{{ host }}\n",
                "templates.yaml": ["/etc/hostname"],
                "files/etc/app/app.conf": "secret=1\n",
                "permissions.yaml": {
                    "/etc/app": f"0750 root {MACHINE_USER}",
                    "/etc/app/app.conf": f"0640 {MACHINE_USER} {MACHINE_USER}",
                },
            }
        }
    )
    code, doc = run_json(fleet.sandbox, "host*", "files")
    assert code == 0, json.dumps(doc, indent=1)
    for host in fleet.hosts.values():
        changed = changes(doc, host.id)
        assert "-Debian GNU/Linux" in "".join(changed["/etc/motd"]["diff"])
        assert changed["/etc/app/app.conf"]["new"]["user"] == MACHINE_USER
        with open(host.machine.path("/etc/motd")) as f:
            assert f.read() == "Managed by safcm.\n"
        with open(host.machine.path("/etc/hostname")) as f:
            assert f.read() == f"{host.id}\n"
        conf = os.lstat(host.machine.path("/etc/app/app.conf"))
        assert stat.S_IMODE(conf.st_mode) == 0o640
        assert (conf.st_uid, conf.st_gid) == (MACHINE_UID, MACHINE_UID)
        app = os.lstat(host.machine.path("/etc/app"))
        assert stat.S_IMODE(app.st_mode) == 0o750 and (app.st_uid, app.st_gid) == (0, MACHINE_UID)
        # The machine itself sees the owner by name.
        assert host.run("stat", "-c", "%U:%G", "/etc/app/app.conf").stdout.strip() == (
            f"{MACHINE_USER}:{MACHINE_USER}"
        )
    code, doc = run_json(fleet.sandbox, "host*", "files")
    assert code == 0 and doc["summary"]["changed"] == 0


def test_absent_and_purge(fleet):
    for host in fleet.hosts.values():
        assert os.path.exists(host.machine.path("/etc/issue.net"))  # base-files' own
        host.run("mkdir", "-p", "/etc/purged/old.d")
        host.run("touch", "/etc/purged/kept.conf", "/etc/purged/stale.conf", "/etc/purged/old.d/x")
    fleet.repo(
        {
            "all": {
                "files/etc/purged/kept.conf": "kept\n",
                "absent.yaml": ["/etc/issue.net"],
                "purge.yaml": ["/etc/purged"],
            }
        }
    )
    code, doc = run_json(fleet.sandbox, "host*", "files")
    assert code == 0, json.dumps(doc, indent=1)
    for host in fleet.hosts.values():
        assert not os.path.lexists(host.machine.path("/etc/issue.net"))
        assert sorted(os.listdir(host.machine.path("/etc/purged"))) == ["kept.conf"]
        assert {"/etc/issue.net", "/etc/purged/stale.conf", "/etc/purged/old.d"} <= set(
            changes(doc, host.id)
        )


def test_trigger_restarts_a_real_unit(fleet):
    unit = "[Service]\nExecStart=/bin/sleep infinity\n"
    pids = {}
    for host in fleet.hosts.values():
        host.machine.write("/etc/systemd/system/trig.service", unit)
        host.run("systemctl", "daemon-reload")
        host.run("systemctl", "start", "trig.service")
        pids[host.id] = host.machine.show("trig.service", "MainPID")["MainPID"]
        assert int(pids[host.id]) > 0
    fleet.repo(
        {
            "all": {
                "files/etc/trig.conf": "v2\n",
                "triggers.yaml": {"/etc/trig.conf": ["systemctl restart trig.service"]},
            }
        }
    )
    code, doc = run_json(fleet.sandbox, "host*", "files")
    assert code == 0, json.dumps(doc, indent=1)
    for host in fleet.hosts.values():
        assert [t["status"] for t in by_host(doc)[host.id]["result"]["apply"]["triggers"]] == ["ok"]
        after = host.machine.show("trig.service", "MainPID", "ActiveState")
        assert after["ActiveState"] == "active"
        assert after["MainPID"] != pids[host.id] and int(after["MainPID"]) > 0
