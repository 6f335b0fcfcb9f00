"""The machines themselves (tests/hosts/machine.py): systemd is PID 1 in
its own namespaces, the root is a throwaway overlay, and nothing is left
behind, neither by shutdown() nor by a test process that died without it."""

from __future__ import annotations

import os
import subprocess

from tests.hosts.machine import NAME_PREFIX, Machine, machine_name, reap_stale, wait_until


def leftovers(m: Machine, nspawn_pid: int) -> list[str]:
    found = [c for c in m.cgroups if os.path.exists(c)]
    if os.path.exists(f"/proc/{nspawn_pid}"):
        with open(f"/proc/{nspawn_pid}/stat") as f:
            if f.read().split()[2] != "Z":
                found.append(f"systemd-nspawn {nspawn_pid}")
    if os.path.exists(f"/run/systemd/nspawn/propagate/{m.name}"):
        found.append("propagate directory")
    return found


def test_a_machine_boots_systemd_on_a_throwaway_root_and_leaves_nothing(host_tree, tmp_path):
    m = Machine(machine_name(), str(tmp_path), hostname="probe")
    try:
        m.boot()
        assert m.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
        assert m.run("hostname").stdout.strip() == "probe"
        assert m.run("systemctl", "is-system-running").stdout.strip() == "running"
        m.write("/etc/written-by-a-test", "x\n")
        pid = m.proc.pid
    finally:
        m.shutdown()
    assert leftovers(m, pid) == []
    assert not os.path.exists(os.path.join(host_tree, "etc/written-by-a-test"))
    # The next boot starts from the tree again.
    again = Machine(machine_name(), str(tmp_path))
    try:
        again.boot()
        assert again.run("test", "-e", "/etc/written-by-a-test", check=False).returncode == 1
    finally:
        again.shutdown()


def test_the_machine_of_a_dead_test_process_is_reaped(host_tree, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid no process has now: the "test process" that died
    m = Machine(f"{NAME_PREFIX}{dead.pid}-0", str(tmp_path))
    try:
        m.boot()
        pid = m.proc.pid
        reap_stale()
        wait_until(lambda: not leftovers(m, pid), 60, "the stale machine to be gone")
    finally:
        m.shutdown()
