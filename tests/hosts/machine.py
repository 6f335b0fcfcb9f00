"""Booted Debian 12 systems for the tests: systemd as PID 1 in systemd-nspawn.

A Machine boots the tree that scripts/build-test-host.sh builds, with a
volatile overlay (a tmpfs over the read-only tree, thrown away at shutdown,
so every boot starts from the same clean system) and the checkout under test
bind-mounted read-only at /opt/safcm/src, where the tree's virtualenv finds it.

The container shares the host's network namespace (no --private-network): a
minion in it reaches a master on the host's 127.0.0.1, and nothing needs
veth, bridges or addresses. Its PID, mount, UTS and IPC namespaces are its own.

This works on a host without systemd as init (the test machines and CI run
in containers): --register=no because there is no host machined to register
with, --keep-unit because there is no host systemd to ask for a scope, and so
each machine gets a cgroup of its own, made here, which nspawn then uses
(it puts the container's payload and its own supervisor below it). machinectl
and `systemd-run -M` need machined, so commands enter with nsenter.

Shutdown is SIGTERM to nspawn (it asks the container's systemd to power
off), SIGKILL to whatever is left in the machine's cgroups after a deadline,
then the cgroups are removed. reap_stale() removes what an earlier test
process left when it was killed before its own teardown.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable

# The tree the machines boot; SAFCM_TEST_TREE moves it (a CI cache directory).
TREE = os.environ.get("SAFCM_TEST_TREE", "/var/cache/safcm-test/bookworm")
# Machine names start with this, then the pid of the test process: reap_stale()
# knows a machine whose process is gone by it.
NAME_PREFIX = "safcm-h"
CGROUP_ROOT = "/sys/fs/cgroup"
# Where the checkout's packages appear in the machine (see the tree's .pth).
SOURCE_MOUNT = "/opt/safcm/src/safcm"
PACKAGES = ("common", "master", "minion", "configs", "docs")
SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Commands in a machine get this environment, not the test process's (whose
# PYTHONPATH and virtualenv point at host paths).
MACHINE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]

# Seconds for a boot to reach `is-system-running` (0.3-0.5 s on an idle
# machine; generous for a machine whose two cores are busy).
BOOT_TIMEOUT = 120.0
# Seconds the container's systemd gets to power off after SIGTERM before
# everything in its cgroups is killed.
SHUTDOWN_TIMEOUT = 30.0
# Seconds any one command in a machine may take (a unit's start included).
COMMAND_TIMEOUT = 120.0
# Seconds between two looks at a condition.
POLL_INTERVAL = 0.02


class MachineError(Exception):
    """A machine did not boot, or a command in it failed; the message says which."""


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise MachineError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def cgroup_hierarchies() -> list[str]:
    """The cgroup hierarchies a machine needs a directory in: the one unified
    hierarchy on a cgroup v2 host; systemd's named v1 hierarchy and the v2 one
    beside it on a hybrid (or v1) host."""
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        return [CGROUP_ROOT]
    return [
        os.path.join(CGROUP_ROOT, h)
        for h in ("systemd", "unified")
        if os.path.exists(os.path.join(CGROUP_ROOT, h, "cgroup.procs"))
    ]


def unavailable() -> str | None:
    """Why this machine cannot boot test machines, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, cgroups, nsenter)"
    for tool in ("systemd-nspawn", "nsenter"):
        if not installed(tool):
            return f"{tool} is not installed (scripts/test.sh installs it)"
    if not cgroup_hierarchies():
        return f"no systemd or unified cgroup hierarchy under {CGROUP_ROOT}"
    return None


def installed(tool: str) -> bool:
    return any(os.access(os.path.join(d, tool), os.X_OK) for d in _path())


def _path() -> list[str]:
    return [*os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep), "/usr/sbin", "/sbin"]


class Machine:
    """One booted container. boot() and shutdown() are the whole life cycle;
    shutdown() is safe to call at any point, also after a failed boot."""

    def __init__(self, name: str, workdir: str, hostname: str | None = None) -> None:
        self.name = name
        self.hostname = hostname or name
        self.console = os.path.join(workdir, f"{name}.console")
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None  # the container's PID 1, as the host numbers it
        self.cgroups = [os.path.join(h, name) for h in cgroup_hierarchies()]

    # life cycle

    def boot(self) -> None:
        self.start()
        self.wait_booted()

    def start(self) -> None:
        """Start the container; wait_booted() waits until its system is up."""
        for cgroup in self.cgroups:
            os.makedirs(cgroup, exist_ok=True)
        binds = [f"--bind-ro={SOURCE}/{p}:{SOURCE_MOUNT}/{p}" for p in PACKAGES]
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            f"--directory={TREE}",
            f"--machine={self.name}",
            f"--hostname={self.hostname}",
            "--volatile=overlay",
            "--register=no",
            "--keep-unit",
            *binds,
        ]
        # nspawn must start inside the machine's cgroups (--keep-unit): a shell
        # moves itself there and execs it, so no Python runs between fork and exec.
        enter = 'while [ "$1" != -- ]; do echo $$ >"$1/cgroup.procs"; shift; done; shift; exec "$@"'
        with open(self.console, "ab") as console:
            self.proc = subprocess.Popen(
                ["sh", "-c", enter, "sh", *self.cgroups, "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_booted(self) -> None:
        """Wait until systemd in the machine reports the system running."""
        self.leader = wait_until(self._find_leader, BOOT_TIMEOUT, f"{self.name}'s PID 1")
        wait_until(
            lambda: os.path.exists(self.path("/run/systemd/private")) or self._exited(),
            BOOT_TIMEOUT,
            f"{self.name}'s systemd manager socket",
        )
        if self._exited():
            raise MachineError(f"{self.name}: systemd-nspawn exited:\n{self.console_text()}")
        state = self.run(
            "systemctl", "is-system-running", "--wait", check=False, timeout=BOOT_TIMEOUT
        ).stdout.strip()
        if state != "running":
            failed = self.run("systemctl", "list-units", "--failed", "--no-legend", check=False)
            raise MachineError(f"{self.name} booted {state!r}; failed units:\n{failed.stdout}")

    def _exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def _find_leader(self) -> int | None:
        """nspawn's child that runs systemd, once it has exec'd it."""
        if self._exited():
            raise MachineError(f"{self.name}: systemd-nspawn exited:\n{self.console_text()}")
        assert self.proc is not None
        for pid in _children(self.proc.pid):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "systemd":
                    return pid
        return None

    def shutdown(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(SHUTDOWN_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        remove_cgroups(self.cgroups)
        with contextlib.suppress(FileNotFoundError):
            _rmtree(f"/run/systemd/nspawn/propagate/{self.name}")
        self.leader = None

    def console_text(self) -> str:
        try:
            with open(self.console, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # inside

    def path(self, path: str) -> str:
        """A path in the machine, as the host reaches it (its root through /proc)."""
        if self.leader is None:
            raise MachineError(f"{self.name} is not running")
        return f"/proc/{self.leader}/root{path}"

    def command(self, *argv: str) -> list[str]:
        """argv run in every namespace of the machine, as root, in a clean environment."""
        if self.leader is None:
            raise MachineError(f"{self.name} is not running")
        namespaces = ["-m", "-u", "-i", "-n", "-p", "-C"]
        enter = ["nsenter", "-t", str(self.leader), *namespaces, "--"]
        return [*enter, "env", "-i", *MACHINE_ENV, *argv]

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.command(*argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise MachineError(
                f"{self.name}: {' '.join(argv)} exited {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file in the machine (its parent directories made as needed)."""
        self.run("install", "-D", "-m", f"{mode:o}", "/dev/stdin", path, input=text)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """`systemctl show` properties of a unit (key=value lines)."""
        out = self.run("systemctl", "show", f"--property={','.join(properties)}", unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _children(pid: int) -> list[int]:
    """Children of pid, from every thread's children list."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(c) for c in f.read().split())
    return found


def _cgroup_pids(cgroup: str) -> list[int]:
    pids: list[int] = []
    for dirpath, _, filenames in os.walk(cgroup):
        if "cgroup.procs" in filenames:
            with contextlib.suppress(OSError), open(os.path.join(dirpath, "cgroup.procs")) as f:
                pids.extend(int(p) for p in f.read().split())
    return pids


def remove_cgroups(cgroups: list[str]) -> None:
    """Kill every process left in the cgroups, then remove them, deepest first."""
    for cgroup in cgroups:
        if not os.path.isdir(cgroup):
            continue

        def empty(cgroup: str = cgroup) -> bool:
            pids = _cgroup_pids(cgroup)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return not pids

        wait_until(empty, SHUTDOWN_TIMEOUT, f"the processes of {cgroup} to die")
        for dirpath, _, _ in sorted(os.walk(cgroup), key=lambda w: -w[0].count("/")):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(dirpath)


def _rmtree(path: str) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(path)


def reap_stale() -> None:
    """Remove the machines of test processes that no longer exist."""
    for hierarchy in cgroup_hierarchies():
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(hierarchy):
                if not name.startswith(NAME_PREFIX):
                    continue
                owner = name[len(NAME_PREFIX) :].split("-", 1)[0]
                if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
                    remove_cgroups([os.path.join(hierarchy, name)])
                    with contextlib.suppress(FileNotFoundError):
                        _rmtree(f"/run/systemd/nspawn/propagate/{name}")


_serial = itertools.count()


def machine_name() -> str:
    """A name no other machine of any test process has."""
    return f"{NAME_PREFIX}{os.getpid()}-{next(_serial)}"
