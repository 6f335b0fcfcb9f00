"""minion.yaml: the minion daemon's settings."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from safcm.common import ids
from safcm.common import settings as s
from safcm.common.crypto import fingerprint_problem, parse_fingerprint
from safcm.common.errors import ConfigError, ConfigProblem
from safcm.common.protocol import MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL
from safcm.minion import fileops, modules

DEFAULT_CONFIG_PATH = "/etc/safcm/minion.yaml"
# Default seconds between heartbeats; the master counts three missed ones as
# disconnected, so this is also how fast presence notices a lost minion.
HEARTBEAT_INTERVAL = 5.0
# Default longest run of one trigger command, in seconds: the engine's, which
# stays below the master's default job_timeout so a hung trigger is reported.
TRIGGER_TIMEOUT = fileops.TRIGGER_TIMEOUT
# Default seconds between two looks at the host's facts (minion/facts.py): a
# look costs two small reads and uname(2), and a change (an upgrade to the
# next OS release, memory added) reaches the master within this time. The
# bounds keep the look from running in a busy loop, and from never coming.
FACTS_INTERVAL = 60.0
MIN_FACTS_INTERVAL = 0.5
MAX_FACTS_INTERVAL = 86400.0
# Default longest run of apt-get in a packages job, in seconds: downloads and
# maintainer scripts of a large install take minutes; a hung postinst must
# still end in a result. The master waits for it (JOB_PROGRESS), up to an hour.
APT_TIMEOUT = 900.0


@dataclass(frozen=True)
class MinionSettings:
    id: str
    # The masters of a cluster, in the order tried (master/cluster.py): the
    # minion is connected to one at a time and moves to the next when it
    # stops answering. One name for a lone master.
    master: tuple[str, ...]
    publish_port: int = 4505
    return_port: int = 4506
    key_port: int = 4507
    state_dir: str = "/var/lib/safcm-minion"
    root: str = "/"
    master_fingerprint: str | None = None
    trust_first_master: bool = False
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    trigger_timeout: float = TRIGGER_TIMEOUT
    facts_interval: float = FACTS_INTERVAL
    log_level: str = "info"
    apt_config: str | None = None  # APT_CONFIG for the packages module's apt runs
    apt_timeout: float = APT_TIMEOUT
    # The modules this minion runs (minion/modules/); a job of another is
    # answered with an error result that says so. Default: every one.
    modules: frozenset[str] = frozenset(modules.MODULES)

    def __post_init__(self) -> None:
        if isinstance(self.master, str):  # one master, as code and tests give it
            object.__setattr__(self, "master", (self.master,))


def _minion_id(value: Any) -> str:
    problem = ids.minion_id_problem(value)
    if problem is not None:
        raise s.BadValue(problem)
    return value


def _fingerprint(value: str) -> str:
    problem = fingerprint_problem(value)
    if problem is not None:
        raise s.BadValue(problem)
    return parse_fingerprint(value)


def _heartbeat_interval(text: str) -> float:
    seconds = s.duration(text)
    if not MIN_HEARTBEAT_INTERVAL <= seconds <= MAX_HEARTBEAT_INTERVAL:
        raise s.BadValue(
            f"must be between {MIN_HEARTBEAT_INTERVAL} and {MAX_HEARTBEAT_INTERVAL:.0f} seconds "
            f"(the master counts a minion gone after three missed ones), got {text!r}"
        )
    return seconds


def _facts_interval(text: str) -> float:
    seconds = s.duration(text)
    if not MIN_FACTS_INTERVAL <= seconds <= MAX_FACTS_INTERVAL:
        raise s.BadValue(
            f"must be between {MIN_FACTS_INTERVAL} seconds and {MAX_FACTS_INTERVAL / 3600:.0f}"
            f" hours, got {text!r}"
        )
    return seconds


def _modules(text: str) -> frozenset[str]:
    """`modules: [files, ping]` or `modules: files, ping`: names, separated by
    commas or spaces; "" (`modules: []`) accepts none."""
    names = [n for n in text.replace(",", " ").split() if n]
    unknown = [n for n in names if n not in modules.MODULES]
    if unknown:
        raise s.BadValue(
            f"expected module names separated by commas, each one of "
            f"{', '.join(modules.MODULES)}; got {text!r}"
        )
    return frozenset(names)


# Why `modules:` may not be empty: an empty value would leave the default,
# every module, cmd included; a minion's administrator who wrote the key
# meant to restrict it.
_EMPTY_MODULES = (
    "empty; list the modules this minion accepts (modules: [files, packages, services]), "
    "write modules: [] to accept none, or leave the key out to accept every one"
)


def _masters(text: str) -> tuple[str, ...]:
    """`master: cfg1.example.org` or a list (YAML, or separated by commas)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise s.BadValue("must name a master (a host name or IP address)")
    hosts = tuple(s.host(n) for n in names)
    if len(set(hosts)) != len(hosts):
        raise s.BadValue(f"names a master twice: {text!r}")
    return hosts


# Names a host has for its own loopback address (Debian's and Red Hat's
# /etc/hosts). getfqdn() gives one of them where /etc/hosts maps the host
# name to 127.0.0.1 beside "localhost"; every such host would have the same
# id, and the master would take them for one minion.
LOOPBACK_NAMES = frozenset(
    (
        "localhost",
        "localhost.localdomain",
        "localhost4",
        "localhost4.localdomain4",
        "localhost6",
        "localhost6.localdomain6",
        "ip6-localhost",
        "ip6-loopback",
    )
)


def default_id(
    getfqdn: Callable[[], str] | None = None, gethostname: Callable[[], str] | None = None
) -> str:
    """The id of a minion whose minion.yaml sets none: the host's fully
    qualified name, else its host name, lowercased as minion ids are; never
    a name of the loopback address or an empty one. BadValue if neither can
    be used. The two look-ups are socket's unless a test gives its own."""
    getfqdn = getfqdn or socket.getfqdn
    gethostname = gethostname or socket.gethostname
    tried = []
    for name in (getfqdn(), gethostname()):
        candidate = name.lower().rstrip(".")
        problem = ids.minion_id_problem(candidate)
        if problem is None and candidate in LOOPBACK_NAMES:
            problem = "a name of the loopback address, which every host has"
        if problem is None:
            return candidate
        tried.append(f"{name!r} ({problem})")
    raise s.BadValue(
        "not set, and this host's names cannot be used: fully qualified "
        f"{tried[0]}, host name {tried[1]}; set id: in minion.yaml to this host's "
        "name in the master's hosts.yaml"
    )


_FIELDS = {
    "id": s.Field(_minion_id, None),
    "master": s.Field(_masters, required=True, many=True),
    "publish_port": s.Field(s.port, MinionSettings.publish_port),
    "return_port": s.Field(s.port, MinionSettings.return_port),
    "key_port": s.Field(s.port, MinionSettings.key_port),
    "state_dir": s.Field(s.absolute_path, MinionSettings.state_dir),
    "root": s.Field(s.absolute_path, MinionSettings.root),
    "master_fingerprint": s.Field(_fingerprint, None),
    "trust_first_master": s.Field(s.boolean, MinionSettings.trust_first_master),
    "heartbeat_interval": s.Field(_heartbeat_interval, MinionSettings.heartbeat_interval),
    "trigger_timeout": s.Field(s.duration, MinionSettings.trigger_timeout),
    "facts_interval": s.Field(_facts_interval, MinionSettings.facts_interval),
    "log_level": s.Field(s.log_level, MinionSettings.log_level),
    "apt_config": s.Field(s.absolute_path, None),
    "apt_timeout": s.Field(s.duration, MinionSettings.apt_timeout),
    "modules": s.Field(_modules, MinionSettings.modules, many=True, if_empty=_EMPTY_MODULES),
}


def root_problem(root: str) -> str | None:
    """Why the engine cannot use `root` now, or None. The daemon and `check`
    ask at start-up, so that a root that is missing or not a directory stops
    the daemon (exit 2) instead of failing every job later."""
    # Opened as the engine opens it (minion/fileops.py, _open_root): the root
    # is the administrator's setting, not a managed path, so a symlink to a
    # directory is followed there and here; nothing beneath the root ever is.
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        return f"cannot open the root directory: {e.strerror}"
    os.close(fd)
    return None


def check_root(settings: MinionSettings, name: str) -> None:
    """ConfigError naming `name` (the settings file) if root_problem() has one."""
    problem = root_problem(settings.root)
    if problem is not None:
        raise ConfigError(ConfigProblem(name, None, f"root: {settings.root}: {problem}"))


def load(path: str) -> MinionSettings:
    """Read minion.yaml; raises ConfigError naming every bad or unknown key."""
    return _build(s.load_settings(path, _FIELDS), path)


def parse(text: str, name: str = "minion.yaml") -> MinionSettings:
    return _build(s.parse_settings(text, _FIELDS, name), name)


def _build(values: dict[str, Any], name: str) -> MinionSettings:
    if values["id"] is None:
        try:
            values["id"] = default_id()
        except s.BadValue as e:
            raise ConfigError(ConfigProblem(name, None, f"id: {e}")) from None
    if values["master_fingerprint"] is None and not values["trust_first_master"]:
        message = (
            "master_fingerprint: required (run 'safcm-master keys fingerprint' on the master "
            "and copy it here); or set trust_first_master: true to trust whichever master "
            "answers first, which an attacker on the network can be"
        )
        raise ConfigError(ConfigProblem(name, None, message))
    return MinionSettings(**values)
