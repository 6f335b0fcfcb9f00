"""A master and minions on 127.0.0.1 under one directory, as real daemons.

Used by `safcm-master demo` and by the end-to-end tests: every daemon is its
own subprocess running the real entry points, with real sockets on free ports,
real keys, and a minion root directory per minion standing in for its `/`.
Each daemon's log goes to <base>/logs/<name>.log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from safcm.common import keyfile

# Seconds a daemon gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
# Seconds between two checks in wait_for().
POLL_INTERVAL = 0.05


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    (port,) = free_ports(1)
    return port


def free_ports(count: int) -> list[int]:
    """`count` different TCP ports on 127.0.0.1 that nothing listens on right
    now. Each is held until all are chosen: a port let go at once may be
    the kernel's next pick, and a master given one port twice refuses to
    start (a CI run failed so)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `predicate` until it returns something true; TimeoutError names `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_INTERVAL)


@dataclass
class Daemon:
    name: str
    config: str
    argv: list[str]
    log: str
    proc: subprocess.Popen | None = None
    settings: dict = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


class Sandbox:
    def __init__(
        self,
        base: str,
        repo: str,
        *,
        python: str = sys.executable,
        heartbeat_interval: float = 0.5,
        **master_settings: object,
    ) -> None:
        self.base = base
        self.python = python
        self.heartbeat_interval = heartbeat_interval
        os.makedirs(os.path.join(base, "logs"), exist_ok=True)
        os.chmod(base, 0o700)
        self.config_dir = os.path.join(base, "config")
        if not os.path.exists(self.config_dir):
            shutil.copytree(repo, self.config_dir, symlinks=True)
        publish_port, return_port, key_port = free_ports(3)
        settings = {
            "interface": "127.0.0.1",
            "publish_port": publish_port,
            "return_port": return_port,
            "key_port": key_port,
            "state_dir": os.path.join(base, "master"),
            "config_dir": self.config_dir,
            "log_level": "debug",
        }
        settings.update(master_settings)
        path = os.path.join(base, "master.yaml")
        self._write_yaml(path, settings)
        self.master = Daemon(
            "master",
            path,
            ["-m", "safcm.master.cli", "-c", path, "daemon"],
            os.path.join(base, "logs", "master.log"),
            settings=settings,
        )
        self.minions: dict[str, Daemon] = {}

    @staticmethod
    def _write_yaml(path: str, data: dict) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)

    # master

    def configure_master(self, **settings: object) -> None:
        """Change master.yaml settings; they take effect at the next start."""
        self.master.settings.update(settings)
        self._write_yaml(self.master.config, self.master.settings)

    def master_fingerprint(self) -> str:
        """The master's fingerprint, read from its key file (made now if the
        master never ran): what an administrator copies into minion.yaml."""
        state_dir = self.master.settings["state_dir"]
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        keys, _ = keyfile.load_or_create(os.path.join(state_dir, "keys"))
        return keys.fingerprint()

    @property
    def control_path(self) -> str:
        configured = self.master.settings.get("control_socket")
        return configured or os.path.join(self.master.settings["state_dir"], "control.sock")

    def start_master(self, wrapper: list[str] | None = None) -> None:
        """Start the master; `wrapper` is a command to run it under, as for
        start_minion() (e.g. a shell that lowers `ulimit -n` first)."""
        self._start(self.master, wrapper or [])
        wait_for(
            lambda: self._control_listens() or not self.master.running,
            30,
            "the master's control socket",
        )
        if not self.master.running:
            raise RuntimeError(f"the master exited at start-up:\n{self.master.log_text()}")

    def _control_listens(self) -> bool:
        """True once the master accepts connections (a stale socket file does not count)."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.control_path)
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def cli(
        self, *args: str, env: dict | None = None, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess:
        """Run `safcm-master -c <sandbox master.yaml> ARGS` and capture its output."""
        return self._run(
            [self.python, "-m", "safcm.master.cli", "-c", self.master.config, *args],
            env,
            timeout,
            check,
        )

    # minions

    def add_minion(self, minion_id: str, **settings: object) -> Daemon:
        root = os.path.join(self.base, "roots", minion_id)
        os.makedirs(root, exist_ok=True)
        values = {
            "id": minion_id,
            "master": "127.0.0.1",
            "publish_port": self.master.settings["publish_port"],
            "return_port": self.master.settings["return_port"],
            "key_port": self.master.settings["key_port"],
            "state_dir": os.path.join(self.base, "minions", minion_id),
            "root": root,
            "heartbeat_interval": self.heartbeat_interval,
            "log_level": "debug",
            "master_fingerprint": self.master_fingerprint(),
        }
        values.update(settings)
        # A setting given as None is left out (e.g. no master_fingerprint, to
        # test trust_first_master).
        values = {k: v for k, v in values.items() if v is not None}
        path = os.path.join(self.base, f"minion-{minion_id}.yaml")
        self._write_yaml(path, values)
        daemon = Daemon(
            minion_id,
            path,
            ["-m", "safcm.minion.cli", "-c", path, "daemon"],
            os.path.join(self.base, "logs", f"minion-{minion_id}.log"),
            settings=values,
        )
        self.minions[minion_id] = daemon
        return daemon

    def root(self, minion_id: str) -> str:
        return self.minions[minion_id].settings["root"]

    def start_minion(self, minion_id: str, wrapper: list[str] | None = None) -> None:
        """Start a minion; `wrapper` is a command to run it under, e.g.
        ["faketime", "-f", "-1h"] for a host whose clock is an hour behind."""
        self._start(self.minions[minion_id], wrapper or [])

    def minion_cli(
        self, minion_id: str, *args: str, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess:
        config = self.minions[minion_id].config
        return self._run(
            [self.python, "-m", "safcm.minion.cli", "-c", config, *args], None, timeout, check
        )

    # processes

    def _start(self, daemon: Daemon, wrapper: list[str] | None = None) -> None:
        if daemon.running:
            raise RuntimeError(f"{daemon.name} is already running")
        log = open(daemon.log, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            daemon.proc = subprocess.Popen(
                [*(wrapper or []), self.python, *daemon.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # faketime: only the wall clock steps, as NTP or an administrator would
                env=self._env({"FAKETIME_DONT_FAKE_MONOTONIC": "1"}),
                cwd=self._source_dir(),
            )
        finally:
            log.close()

    def stop(self, daemon: Daemon, sig: int = signal.SIGTERM) -> int | None:
        """Signal a daemon and wait for it; SIGKILL if it does not stop in time."""
        if daemon.proc is None:
            return None
        if daemon.proc.poll() is None:
            daemon.proc.send_signal(sig)
            try:
                daemon.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait()
        code = daemon.proc.returncode
        daemon.proc = None
        return code

    def kill(self, daemon: Daemon) -> None:
        self.stop(daemon, signal.SIGKILL)

    def close(self) -> None:
        for daemon in [*self.minions.values(), self.master]:
            with contextlib.suppress(OSError):
                self.stop(daemon)

    def spawn_cli(self, *args: str) -> subprocess.Popen:
        """Start `safcm-master -c <sandbox master.yaml> ARGS` in the background,
        with stdout and stderr piped."""
        return subprocess.Popen(
            [self.python, "-m", "safcm.master.cli", "-c", self.master.config, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._env(None),
            cwd=self._source_dir(),
        )

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run any command as the daemons run: this source tree importable."""
        return self._run(argv, None, timeout, False)

    def _run(
        self, argv: list[str], env: dict | None, timeout: float, check: bool
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=self._env(env),
            timeout=timeout,
            check=check,
            cwd=self._source_dir(),
        )

    def _env(self, extra: dict | None) -> dict:
        env = dict(os.environ)
        # The daemons import this source tree, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (self._source_dir(), env.get("PYTHONPATH")) if p
        )
        env.pop("JOURNAL_STREAM", None)
        if extra:
            env.update(extra)
        return env

    @staticmethod
    def _source_dir() -> str:
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
