"""The shipped safcm-master.service under a real systemd: with its sandbox
(ProtectSystem=strict) the master writes its state directory and a control
socket in /run/safcm-master, as master.yaml's example puts it, and warns
at start that config_dir is missing."""

from __future__ import annotations

import os
import stat

import yaml

from safcm.master.sandbox import free_ports
from tests.hosts.machine import wait_until

MASTER_UNIT = "safcm-master.service"
SHIPPED_UNIT = "/opt/safcm/src/safcm/configs/systemd/safcm-master.service"
MASTER_CONFIG = "/etc/safcm/master.yaml"
CONTROL_SOCKET = "/run/safcm-master/control.sock"
# The tree installs only safcm-minion's launcher; this is bin/safcm-master's.
LAUNCHER = (
    "#!/opt/safcm/bin/python3\nimport sys\n\n"
    "from safcm.master.lightcli import main\n\nsys.exit(main())\n"
)
# Seconds for the master to start (keys made, database created).
START_WAIT = 60.0


def test_the_master_unit_serves_its_control_socket_in_run(booted):
    publish, returns, key = free_ports(3)  # the machine shares our network
    settings = {
        "interface": "127.0.0.1",
        "publish_port": publish,
        "return_port": returns,
        "key_port": key,
        "control_socket": CONTROL_SOCKET,
    }
    booted.write(MASTER_CONFIG, yaml.safe_dump(settings), 0o600)
    booted.write("/opt/safcm/bin/safcm-master", LAUNCHER, 0o755)
    booted.run("cp", SHIPPED_UNIT, f"/etc/systemd/system/{MASTER_UNIT}")
    booted.run("systemctl", "daemon-reload")
    try:
        booted.run("systemctl", "start", MASTER_UNIT)

        def journal() -> str:
            return booted.run("journalctl", "--no-pager", "-o", "cat", "-u", MASTER_UNIT).stdout

        def up() -> bool:
            state = booted.show(MASTER_UNIT, "ActiveState", "NRestarts")
            assert state == {"ActiveState": "active", "NRestarts": "0"}, journal()
            return "listening on 127.0.0.1" in journal()

        wait_until(up, START_WAIT, "the master to listen")
        socket_path = booted.path(CONTROL_SOCKET)
        assert stat.S_ISSOCK(os.lstat(socket_path).st_mode)
        # The state directory is writable beneath ProtectSystem=strict.
        assert os.path.exists(booted.path("/var/lib/safcm-master/master.db"))
        keys = booted.run("/opt/safcm/bin/safcm-master", "-c", MASTER_CONFIG, "keys", "list")
        assert keys.returncode == 0
        assert (
            "config_dir /etc/safcm/config is not a directory: every run fails until the "
            "configuration repository is there"
        ) in journal()
    finally:
        booted.run("systemctl", "stop", MASTER_UNIT, check=False)
