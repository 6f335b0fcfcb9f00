"""Run apt and dpkg for the packages module: the thin executor of minion/packages.py.

NOTE: this is the only code that runs apt-get or dpkg-query. It never uses
a shell: the arguments are a list, and every package argument passed the
Debian name and version grammar (common/packages.py), so none can be read
as an option.

One run: read dpkg's state, plan, then either simulate the plan
(`apt-get -s`, the dry run: nothing is locked or written) or run it, and
read dpkg's state again. The changes reported are those dpkg's state shows
(a real run) or those apt's simulation lists (a dry run), dependencies
included; both are named and versioned the same way, so a dry run reports
what the real run then does. apt's failures (an unknown package, the dpkg
lock held past its timeout, a postinst that fails) become a failed result
with apt's last lines; packages dpkg left unsettled are always listed. A
host without dpkg (not Debian) is fine as long as it is asked for no
package, so that `sync` works there too.

How apt is run, and why:
- DEBIAN_FRONTEND=noninteractive, stdin /dev/null, `-y`: nobody is there to
  answer; debconf takes the defaults.
- `--force-confdef --force-confold` (dpkg): a configuration file the
  administrator changed is kept, never replaced by the package's (safcm's
  files module is the place to manage it).
- `--no-install-recommends`: only what is listed and what it depends on,
  so what a host gets follows from packages.yaml alone; list a recommended
  package to get it.
- No `--allow-remove-essential`, no `--allow-change-held-packages`: apt
  refuses those, and the result says so. `--allow-downgrades` is given,
  because a pinned version is asked for explicitly.
- `APT::Get::AutomaticRemove=false`: nothing is removed that was not asked for
  (apt's own autoremove rules stay the administrator's business).
- `DPkg::Lock::Timeout`: wait a bounded time for another apt or dpkg (a
  daily upgrade) instead of failing at once.
- No `apt-get update`: the package lists are refreshed by apt's daily timer
  (Debian's default) or by the administrator; updating here would make a
  dry run write, and could make it differ from the real run.
- LC_ALL=C.UTF-8: apt's lines are parsed and shown untranslated.
- The minion setting `apt_config` names an apt configuration file read by
  every apt run of safcm (APT_CONFIG); without it apt reads only its own.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

from safcm.common.packages import PackageSpec
from safcm.minion import packages as plan_mod
from safcm.minion.children import CHILD_UMASK
from safcm.minion.packages import Change, DpkgParseError, PkgState

APT_GET = "apt-get"
DPKG_QUERY = "dpkg-query"
DPKG_FORMAT = "${Package}\t${Status}\t${Version}\n"

# Seconds apt waits for the dpkg lock held by another apt or dpkg (a daily
# upgrade, an administrator) before it fails: long enough for a short run
# to end, short against a job's deadline.
LOCK_TIMEOUT = 60
# Seconds dpkg-query may take: it only reads dpkg's status file.
QUERY_TIMEOUT = 60.0
# Seconds a killed apt-get gets to end after SIGTERM before SIGKILL.
KILL_GRACE = 10.0
# What is kept of apt's output: a simulation is read whole up to this
# (about 40 000 "Inst" lines), a real run's output only as its tail.
MAX_SIMULATION_BYTES = 4 * 1024 * 1024
MAX_QUERY_BYTES = 16 * 1024 * 1024  # dpkg-query: about 100 000 packages
OUTPUT_TAIL_BYTES = 64 * 1024
# What a failed result shows of apt's output: its last lines, each cut to a
# length, and its last error line as the reason.
ERROR_LINES = 20
MAX_LINE_CHARS = 500
READ_CHUNK = 65536

APT_OPTIONS = (
    "-y",
    "-q",
    "--no-install-recommends",
    "--allow-downgrades",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
    "-o",
    "Dpkg::Use-Pty=0",  # no progress bar in the output
    "-o",
    "APT::Get::AutomaticRemove=false",
    "-o",
    "APT::Color=0",
)
ENVIRONMENT = {
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "APT_LISTCHANGES_FRONTEND": "none",  # apt-listchanges would page the changelog
    "APT_LISTBUGS_FRONTEND": "none",  # apt-listbugs would ask
    "NEEDRESTART_MODE": "l",  # needrestart lists services instead of asking
}


@dataclass(slots=True)
class PackagesOutcome:
    """One packages run on this host, as its result reports it."""

    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    unsettled: list[PkgState] = field(default_factory=list)
    error: str | None = None  # one line: why apt (or dpkg-query) failed
    output: str = ""  # apt's last lines when it failed
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.unsettled

    def to_wire(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "changes": [c.to_wire() for c in self.changes],
            "unsettled": [
                {"name": s.name, "status": s.status_text(), "version": s.version}
                for s in self.unsettled
            ],
            "error": self.error,
            "output": self.output,
            "duration": self.duration,
        }


class _RunError(Exception):
    """A command could not be run, or did not end in time (one line)."""


@dataclass(frozen=True, slots=True)
class _Ran:
    code: int
    output: bytes
    truncated: bool


def apply_packages(
    specs: Sequence[PackageSpec],
    *,
    dry_run: bool,
    apt_config: str | None = None,
    timeout: float,
    lock_timeout: int = LOCK_TIMEOUT,
) -> PackagesOutcome:
    """Make this host's packages what `specs` ask for (or, dry, say what that would do)."""
    begun = time.monotonic()
    outcome = PackagesOutcome(dry_run)
    if not specs and shutil.which(DPKG_QUERY) is None:
        return outcome  # a host without dpkg that is asked for no package: nothing to say
    env = _environment(apt_config)
    try:
        before = _query(env)
    except _RunError as e:
        outcome.error = str(e)
        outcome.duration = time.monotonic() - begun
        return outcome
    todo = plan_mod.plan(specs, before)
    after = before
    if todo.args:
        argv = [APT_GET, *APT_OPTIONS, "-o", f"DPkg::Lock::Timeout={lock_timeout}"]
        if dry_run:
            argv.append("-s")
        argv += ["install", *todo.args]
        try:
            ran = _run(
                argv,
                env,
                timeout,
                keep=MAX_SIMULATION_BYTES if dry_run else OUTPUT_TAIL_BYTES,
                tail=not dry_run,
            )
        except _RunError as e:
            outcome.error = str(e)
            ran = None
        if ran is not None and ran.code != 0:
            outcome.error, outcome.output = _failure(ran)
        elif ran is not None and dry_run and ran.truncated:
            outcome.error = (
                f"apt-get -s printed more than {MAX_SIMULATION_BYTES} bytes; not read to the end"
            )
        elif ran is not None and dry_run:
            outcome.changes = plan_mod.parse_simulation(_text(ran.output), before)
        if not dry_run:
            try:
                after = _query(env)
            except _RunError as e:
                outcome.error = outcome.error or str(e)
            else:
                outcome.changes = plan_mod.diff_states(before, after)
    outcome.unsettled = plan_mod.unsettled(after)
    outcome.duration = time.monotonic() - begun
    return outcome


def _environment(apt_config: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ENVIRONMENT)
    if apt_config is not None:
        env["APT_CONFIG"] = apt_config
    return env


def _query(env: dict[str, str]) -> dict[str, PkgState]:
    ran = _run([DPKG_QUERY, "-W", "-f", DPKG_FORMAT], env, QUERY_TIMEOUT, keep=MAX_QUERY_BYTES)
    if ran.truncated:
        raise _RunError(f"dpkg-query printed more than {MAX_QUERY_BYTES} bytes")
    if ran.code != 0:
        raise _RunError(f"dpkg-query exited with status {ran.code}: {_last_line(ran.output)}")
    try:
        return plan_mod.parse_dpkg_status(_text(ran.output))
    except DpkgParseError as e:
        raise _RunError(str(e)) from None


def _run(
    argv: list[str], env: dict[str, str], timeout: float, *, keep: int, tail: bool = False
) -> _Ran:
    """Run `argv` with stdout and stderr together, for at most `timeout` seconds.

    Keeps the first `keep` bytes of the output, or with `tail` the last
    ones; the rest is read and dropped, so that the command never blocks on a
    full pipe. On the timeout the whole process group is terminated (apt
    starts dpkg, which starts maintainer scripts).
    """
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            umask=CHILD_UMASK,  # dpkg's files and maintainer scripts' (minion/children.py)
        )
    except OSError as e:
        raise _RunError(f"cannot run {argv[0]}: {e.strerror}") from None
    stdout = cast(IO[bytes], proc.stdout)  # set: stdout=PIPE
    fd = stdout.fileno()
    kept = bytearray()
    truncated = False
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill(proc)
                raise _RunError(
                    f"{argv[0]} did not finish within {timeout:.0f} s and was killed;"
                    " dpkg may need `dpkg --configure -a`"
                )
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            kept += chunk
            if len(kept) > keep:
                truncated = True
                if tail:
                    del kept[: len(kept) - keep]
                else:
                    del kept[keep:]
        code = proc.wait(max(0.0, deadline - time.monotonic()) + KILL_GRACE)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise _RunError(f"{argv[0]} closed its output but did not exit; killed") from None
    finally:
        stdout.close()
    return _Ran(code, bytes(kept), truncated)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.killpg(proc.pid, sig)
        try:
            proc.wait(KILL_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _last_line(data: bytes) -> str:
    lines = [line[:MAX_LINE_CHARS] for line in _text(data).splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _failure(ran: _Ran) -> tuple[str, str]:
    """A failed apt-get: one line (its last error, "E: ...") and its last lines."""
    lines = [line[:MAX_LINE_CHARS] for line in _text(ran.output).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E: ")]
    reason = errors[-1] if errors else (lines[-1] if lines else "(no output)")
    return f"apt-get exited with status {ran.code}: {reason}", "\n".join(lines[-ERROR_LINES:])
