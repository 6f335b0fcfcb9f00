"""A master on the host and minions on booted Debian systems (tests/hosts/machine.py).

The master is the sandbox's (master/sandbox.py): a real daemon on 127.0.0.1
with free ports. Each host is a Machine whose minion is the shipped
configs/systemd/safcm-minion.service, installed in /etc/systemd/system and
started by the machine's own systemd, with `root: /` and
/etc/safcm/minion.yaml pointing at the master on 127.0.0.1 (the machines
share the host's network namespace). So the engine works on a real root
file system and the minion is supervised as it is in production.

The configuration repository is written by the tests (write_repo), a whole
tree at a time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import yaml

from safcm.master.sandbox import Sandbox
from tests.hosts.machine import (
    COMMAND_TIMEOUT,
    Machine,
    MachineError,
    machine_name,
    wait_until,
)
from tests.system.conftest import wait_state

# Seconds between a minion's heartbeats: short, so enrolment and
# reconnection settle quickly.
HEARTBEAT = 0.2
# Seconds the master gives a job (a unit's start included).
JOB_TIMEOUT = 60
MINION_UNIT = "safcm-minion.service"
MINION_CONFIG = "/etc/safcm/minion.yaml"
SHIPPED_UNIT = "/opt/safcm/src/safcm/configs/systemd/safcm-minion.service"


class Host:
    """A machine and its minion's id (also its host name)."""

    def __init__(self, minion_id: str, machine: Machine) -> None:
        self.id = minion_id
        self.machine = machine

    def run(self, *argv: str, **kwargs) -> object:
        return self.machine.run(*argv, **kwargs)

    def journal(self, unit: str, lines: int = 200) -> str:
        result = self.machine.run(
            "journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", unit, check=False
        )
        return result.stdout

    def minion_pid(self) -> int:
        return int(self.machine.show(MINION_UNIT, "MainPID")["MainPID"])


class Fleet:
    def __init__(self, ids: list[str]) -> None:
        self.base = tempfile.mkdtemp(prefix="safcm-h-", dir="/tmp")
        repo = os.path.join(self.base, "repo-seed")
        write_repo(repo, ids, {})
        self.sandbox = Sandbox(
            self.base, repo, heartbeat_interval=HEARTBEAT, job_timeout=JOB_TIMEOUT
        )
        self.ids = ids
        self.hosts: dict[str, Host] = {}
        for minion_id in ids:
            machine = Machine(machine_name(), self.base, hostname=minion_id)
            self.hosts[minion_id] = Host(minion_id, machine)

    def start(self) -> None:
        """Boot every machine (all at once), start the master, start and accept
        every minion, and wait until each is connected."""
        for host in self.hosts.values():
            host.machine.start()
        for host in self.hosts.values():
            host.machine.wait_booted()
        self.start_minions()

    def start_minions(self) -> None:
        """Start the master, start and accept every minion, wait until connected."""
        self.sandbox.start_master()
        # All machines at once: each install waits for its systemd to start the unit.
        installs = [(host, self.install_minion(host)) for host in self.hosts.values()]
        for host, proc in installs:
            out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
            if proc.returncode != 0:
                raise MachineError(f"{host.id}: installing the minion failed: {out}")
        for minion_id in self.ids:
            wait_state(self.sandbox, minion_id, "pending")
        result = self.sandbox.cli("keys", "accept", *self.ids)
        if result.returncode != 0:
            raise MachineError(f"keys accept: {result.stderr}")
        for minion_id in self.ids:
            wait_state(self.sandbox, minion_id, "accepted", connected=True)

    def install_minion(self, host: Host) -> subprocess.Popen:
        """Install minion.yaml and the shipped unit, and have systemd start
        it; the install runs on when this returns (wait for the process)."""
        master = self.sandbox.master.settings
        settings = {
            "id": host.id,
            "master": "127.0.0.1",
            "publish_port": master["publish_port"],
            "return_port": master["return_port"],
            "key_port": master["key_port"],
            "state_dir": "/var/lib/safcm-minion",
            "root": "/",
            "master_fingerprint": self.sandbox.master_fingerprint(),
            "heartbeat_interval": HEARTBEAT,
            "log_level": "debug",
        }
        host.machine.write(MINION_CONFIG, yaml.safe_dump(settings, sort_keys=False), 0o600)
        script = (
            f"cp {SHIPPED_UNIT} /etc/systemd/system/{MINION_UNIT}"
            f" && systemctl daemon-reload && systemctl enable --now {MINION_UNIT}"
        )
        return subprocess.Popen(
            host.machine.command("sh", "-c", script),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def repo(self, groups: dict[str, dict[str, object]], **config: object) -> None:
        """Make the master's repository exactly this (see write_repo)."""
        write_repo(self.sandbox.config_dir, self.ids, groups, **config)

    def logs(self) -> str:
        parts = [f"----- master\n{self.sandbox.master.log_text()[-6000:]}"]
        for host in self.hosts.values():
            if host.machine.leader is not None:
                parts.append(f"----- {host.id} minion\n{host.journal(MINION_UNIT)[-6000:]}")
            else:
                parts.append(f"----- {host.id} console\n{host.machine.console_text()[-3000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        try:
            self.sandbox.close()
        finally:
            for host in self.hosts.values():
                host.machine.shutdown()
            shutil.rmtree(self.base, ignore_errors=True)


def write_repo(
    root: str, hosts: list[str], groups: dict[str, dict[str, object]], **config: object
) -> None:
    """Replace the repository at root: hosts.yaml lists `hosts`; groups.yaml
    puts every host in each group named in `groups` that is not a host;
    `groups` maps a group (or host) to its files, relative to its directory:
    a str or bytes is a file's content, anything else is dumped as YAML
    (permissions.yaml, triggers.yaml, services.yaml, ...)."""
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root)
    members = {g: list(hosts) for g in groups if g not in hosts and g != "all"}
    documents = {
        "hosts.yaml": [{"name": h} for h in hosts],
        "groups.yaml": members,
        "config.yaml": {"default_user": "root", "default_group": "root", **config},
    }
    for name, data in documents.items():
        with open(os.path.join(root, name), "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
    for group, files in groups.items():
        for relative, data in files.items():
            path = os.path.join(root, group, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if isinstance(data, bytes):
                with open(path, "wb") as f:
                    f.write(data)
            elif isinstance(data, str):
                with open(path, "w") as f:
                    f.write(data)
            else:
                with open(path, "w") as f:
                    yaml.safe_dump(data, f, sort_keys=False)


__all__ = ["Fleet", "Host", "wait_until", "write_repo"]
