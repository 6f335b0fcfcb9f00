"""master.yaml: the master daemon's settings."""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from safcm.common import settings as s
from safcm.common.errors import ConfigError, ConfigProblem

DEFAULT_CONFIG_PATH = "/etc/safcm/master.yaml"
# What a problem of the default settings names as its file, when there is none.
DEFAULT_SETTINGS_NAME = f"the default settings ({DEFAULT_CONFIG_PATH} does not exist)"
# Longest path an AF_UNIX socket can bind to, in bytes (sun_path is 108
# bytes with its NUL).
MAX_SOCKET_PATH = 107


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
    "job_timeout": s.Field(s.job_timeout, _DEFAULTS.job_timeout),
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


def check_startup(settings: MasterSettings, name: str) -> None:
    """Raise ConfigError naming every setting that parses but that the
    daemon cannot start with on this host (startup_problems())."""
    problems = startup_problems(settings, name)
    if problems:
        raise ConfigError(problems)


def startup_problems(settings: MasterSettings, name: str) -> list[ConfigProblem]:
    """What the daemon would refuse at start-up in settings that parse, as
    this host stands: an admin group that does not exist, a control socket
    that cannot be made, a state_dir that is not a directory. The daemon
    checks this before it starts and `safcm-master check` reports it, so
    that what check passes, the daemon runs. `name`: the settings file."""
    import grp  # here: only the daemon and check pay for it

    problems: list[ConfigProblem] = []

    def add(message: str) -> None:
        problems.append(ConfigProblem(name, None, message))

    if settings.admin_group is not None:
        try:
            grp.getgrnam(settings.admin_group)
        except KeyError:
            add(
                f"admin_group: there is no group {settings.admin_group!r} on this host; "
                "create it (groupadd) or remove admin_group"
            )
    # The daemon makes state_dir if it is missing.
    if (problem := _not_a_directory(settings.state_dir, missing_ok=True)) is not None:
        add(f"state_dir: {problem}")
    # The control socket: named by control_socket, or in state_dir.
    path = settings.control_path
    key = "state_dir" if settings.control_socket is None else "control_socket"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        add(
            f"{key}: the control socket {path} is longer than {MAX_SOCKET_PATH} bytes, the "
            "most a Unix socket's path may have; set control_socket to a shorter path"
        )
    if settings.control_socket is not None:
        problem = _not_a_directory(os.path.dirname(path), missing_ok=False)
        if problem is not None:
            add(f"control_socket: {problem}; create it, or choose a path in a directory that does")
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            add(f"{key}: {path} exists and is not a socket; remove it or set control_socket")
    except OSError:
        pass  # absent, or not for us to see (the daemon runs as root)
    return problems


def _not_a_directory(path: str, *, missing_ok: bool) -> str | None:
    """Why `path` is no directory, or None if it is one, if it is missing
    and `missing_ok`, or if it cannot be told (a directory on the way that
    only root may pass through)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None if missing_ok else f"the directory {path} does not exist"
    except NotADirectoryError:
        return f"{path} is not a directory: a component of it is a file"
    except OSError:
        return None
    return None if stat.S_ISDIR(st.st_mode) else f"{path} exists and is not a directory"
