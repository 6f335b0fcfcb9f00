"""master.yaml: the master daemon's settings."""

from __future__ import annotations

from typing import NamedTuple

from safcm.common import settings as s
from safcm.common.errors import ConfigError, ConfigProblem

DEFAULT_CONFIG_PATH = "/etc/safcm/master.yaml"


class MasterSettings(NamedTuple):
    """The settings, immutable; settings._replace(log_level="debug") makes a
    changed copy. (A NamedTuple, not a dataclass: every CLI command reads
    the settings, and the dataclasses module alone would cost it 7 ms.)"""

    interface: str = "0.0.0.0"  # noqa: S104 - a master serves remote minions; address the PUB and ROUTER sockets bind to
    publish_port: int = 4505  # jobs, master -> minions
    return_port: int = 4506  # enrolment, heartbeats, receipts, results
    key_port: int = 4507  # the master's public keys, for a minion's first contact
    state_dir: str = "/var/lib/safcm-master"  # keys, job history, control socket
    # Keys and job history: "sqlite" (a file in state_dir), or a PostgreSQL
    # URI or libpq connection string (masters sharing one form a cluster).
    store: str = "sqlite"
    config_dir: str = "/etc/safcm/config"  # the configuration repository
    auto_accept: bool = False  # accept every new minion key unseen; only for labs
    job_timeout: float = 60.0  # seconds a job waits for results before "no response"
    keep_jobs: float = 90 * 86400.0  # seconds of job history kept
    max_connections: int = 10_000  # per network socket; the rest are cut at once
    result_quota: int = 256 * 1024**2  # bytes of stored results per minion
    admin_group: str | None = None  # besides root, members may use the control socket
    control_socket: str | None = None  # default: <state_dir>/control.sock
    log_level: str = "info"

    @property
    def control_path(self) -> str:
        return self.control_socket or f"{self.state_dir}/control.sock"


_DEFAULTS = MasterSettings()
_FIELDS = {
    "interface": s.Field(s.interface, _DEFAULTS.interface),
    "publish_port": s.Field(s.port, _DEFAULTS.publish_port),
    "return_port": s.Field(s.port, _DEFAULTS.return_port),
    "key_port": s.Field(s.port, _DEFAULTS.key_port),
    "max_connections": s.Field(s.positive_int, _DEFAULTS.max_connections),
    "result_quota": s.Field(s.size, _DEFAULTS.result_quota),
    "state_dir": s.Field(s.absolute_path, _DEFAULTS.state_dir),
    "store": s.Field(s.store, _DEFAULTS.store),
    "config_dir": s.Field(s.absolute_path, _DEFAULTS.config_dir),
    "auto_accept": s.Field(s.boolean, _DEFAULTS.auto_accept),
    "job_timeout": s.Field(s.duration, _DEFAULTS.job_timeout),
    "keep_jobs": s.Field(s.duration, _DEFAULTS.keep_jobs),
    "admin_group": s.Field(s.group_name, _DEFAULTS.admin_group),
    "control_socket": s.Field(s.absolute_path, _DEFAULTS.control_socket),
    "log_level": s.Field(s.log_level, _DEFAULTS.log_level),
}


def load(path: str) -> MasterSettings:
    """Read master.yaml; raises ConfigError naming every bad or unknown key."""
    values = s.load_settings(path, _FIELDS)
    return _build(values, path)


def parse(text: str, name: str = "master.yaml") -> MasterSettings:
    return _build(s.parse_settings(text, _FIELDS, name), name)


def _build(values: dict, name: str) -> MasterSettings:
    settings = MasterSettings(**values)
    ports = (settings.publish_port, settings.return_port, settings.key_port)
    if len(set(ports)) != len(ports):
        raise ConfigError(
            ConfigProblem(name, None, "publish_port, return_port and key_port must differ")
        )
    return settings
