"""The services module with sandboxed minions (a root directory, not /):
it refuses to touch the test machine's units, and a host without units
declared is not asked about systemd at all."""

from __future__ import annotations

import os

from tests.system.conftest import by_host, enrol, run_json


def test_services_refused_by_a_minion_whose_root_is_not_slash(sandbox):
    enrol(sandbox, "web1")
    path = os.path.join(sandbox.config_dir, "web1", "services.yaml")
    with open(path, "w") as f:
        f.write("enable: [cron]\n")
    code, doc = run_json(sandbox, "web1", "services")
    assert code == 1
    host = by_host(doc)["web1"]
    assert host["status"] == "failed" and host["result"]["status"] == "error"
    assert "services need root: /" in host["result"]["error"]

    os.unlink(path)
    code, doc = run_json(sandbox, "web1", "services")
    assert code == 0
    assert by_host(doc)["web1"]["result"]["services"] == {
        "dry_run": False,
        "reloaded": False,
        "changes": [],
    }


def test_check_and_run_stop_at_a_services_conflict(sandbox):
    for group, wish in (("web", "enable"), ("monitored", "mask")):
        with open(os.path.join(sandbox.config_dir, group, "services.yaml"), "w") as f:
            f.write(f"{wish}: [ntp]\n")
    result = sandbox.cli("check", "web1")
    assert result.returncode == 0  # group_order ranks web above monitored
    with open(os.path.join(sandbox.config_dir, "web", "services.yaml"), "w") as f:
        f.write("enable: [ntp]\nstop: [ntp.service]\n")
    result = sandbox.cli("check", "web1")
    assert result.returncode == 2
    assert "web/services.yaml:2: ntp.service is listed twice" in result.stderr
