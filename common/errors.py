"""The one exception tree of safcm.

Library code raises these; only the command-line front ends map them to exit
codes and messages. Every error says what happened and, where it can, what to
do next.

    SafcmError
    ├── UsageError              bad command-line use (exit code 2)
    ├── ConfigError             a bad master/minion setting or repository (exit code 2)
    │   ├── UnknownHostError        a host id that hosts.yaml does not list (.name)
    │   └── UnknownGroupError       a group that neither groups.yaml nor hosts.yaml defines (.name)
    ├── FileOpError             the file engine refused or failed one file (.path, .reason)
    │   ├── InvalidPathError        a declared path is not absolute and normalised
    │   ├── SymlinkInPathError      a component of the path is a symlink
    │   ├── MissingDirectoryError   a directory on the way is missing or not a directory
    │   ├── NonEmptyDirectoryError  a type change or removal would remove a non-empty directory
    │   ├── MountPointError         a removal would cross into another mounted filesystem
    │   └── OwnerLookupError        a user or group name is unknown on the host
    ├── LockError               another apply holds the host's engine lock
    ├── KeyFileError            a key file is missing, malformed or unsafe (.path, .reason)
    ├── StateFileError          a daemon's own state file cannot be written or read (.path, .reason)
    ├── ScratchFileError        the CLI's temporary file cannot be made, written or read
    ├── ProtocolError           bytes that are not a valid message of the wire protocol
    ├── EnvelopeError           a sealed envelope failed to open (opaque on purpose; .reason)
    │   └── ReplayError             an authentic envelope whose jid was already seen
    ├── StoreError              a daemon's state database cannot be opened or written
    ├── WorkerError             the master's prepare worker process died or lost a run
    └── DaemonError             the CLI cannot reach, or was refused by, a daemon
        └── RemoteError             the daemon answered a request with an ERROR (.code, .problems)
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing: every command imports this
# module, and typing costs the light ones (master/lightcli.py) 4 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from safcm.common.crypto import Header


class SafcmError(Exception):
    """Base of every error safcm raises on purpose."""


class UsageError(SafcmError):
    """The command line asks for something that cannot be done as written."""


class ConfigProblem:
    """One problem found in a configuration file, with where it is."""

    __slots__ = ("file", "line", "message")

    def __init__(self, file: str, line: int | None, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"ConfigProblem({self.file!r}, {self.line!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigProblem):
            return NotImplemented
        return (self.file, self.line, self.message) == (other.file, other.line, other.message)

    def __hash__(self) -> int:
        return hash((self.file, self.line, self.message))


class ConfigError(SafcmError):
    """A configuration cannot be used. Carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem] | ConfigProblem | str) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem("<config>", None, problems)]
        elif isinstance(problems, ConfigProblem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class UnknownHostError(ConfigError):
    """A host id that the repository's hosts.yaml does not list."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(ConfigProblem("hosts.yaml", None, f"unknown host {name!r}"))


class UnknownGroupError(ConfigError):
    """A group name that is not "all", a group in groups.yaml, or a host id."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(ConfigProblem("groups.yaml", None, f"unknown group {name!r}"))


class FileOpError(SafcmError):
    """The file engine could not make one path as declared."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class InvalidPathError(FileOpError):
    """A declared path is not absolute, not normalised, or contains NUL or '..'."""


class SymlinkInPathError(FileOpError):
    """A directory component of a path is a symlink; nothing is written through it."""


class MissingDirectoryError(FileOpError):
    """A directory on the way to a path does not exist, or is something else.

    For a path to remove that is good news: nothing can be there.
    """


class NonEmptyDirectoryError(FileOpError):
    """A type change, or a removal not asked to be recursive, meets a non-empty directory."""


class MountPointError(FileOpError):
    """Another filesystem is mounted at a path to remove; removal never crosses a mount."""


class OwnerLookupError(FileOpError):
    """A user or group name does not exist on the host."""


class LockError(SafcmError):
    """The host's engine lock is held by another apply."""


class KeyFileError(SafcmError):
    """A key file cannot be used: missing, malformed, or readable by group or other.

    The message names the file and says what to do, e.g. the chmod to run.
    It never quotes the file's content.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class StateFileError(SafcmError):
    """A daemon's own state file (common/atomicfile.py) cannot be written, read or removed.

    `.path` is the file's name (or its directory's path), `.reason` what failed.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ScratchFileError(SafcmError):
    """A temporary file the CLI keeps data in (run --json's results,
    master/resultspool.py) cannot be made, written or read."""


class ProtocolError(SafcmError):
    """Bytes that are not a valid message: bad msgpack, wrong schema, too large."""


class EnvelopeError(SafcmError):
    """A sealed envelope could not be opened.

    Deliberately opaque: the message never says whether the signature, the
    recipient, the time window, a replay or the AEAD failed, so a peer cannot
    probe which check it passed. `.reason` is for the local log only; str()
    of the error, which is what could ever reach a peer, stays opaque.
    """

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        super().__init__("envelope rejected")


class ReplayError(EnvelopeError):
    """An envelope that opened correctly, but whose (type, jid) was already seen.

    Raised only after every check passed, so the envelope is authentic: the
    daemon may answer it again (e.g. resend a receipt whose first copy was
    lost) but must not act on it again. `.header` is the verified header.
    str() stays as opaque as any EnvelopeError.
    """

    def __init__(self, reason: str, header: Header) -> None:
        super().__init__(reason)
        self.header = header


class StoreError(SafcmError):
    """A daemon's state database (seen jids, keys, jobs) cannot be opened or written."""


class WorkerError(SafcmError):
    """The master's prepare worker (master/prepworker.py) ended under a run,
    or no longer holds what it compiled for it; the next run starts a new one."""


class DaemonError(SafcmError):
    """The CLI could not reach a daemon, or the daemon refused the request."""


class RemoteError(DaemonError):
    """The daemon refused a request: its ERROR reply's code, message and problems."""

    def __init__(self, code: str, message: str, problems: list[dict[str, Any]]) -> None:
        self.code = code
        self.problems = problems
        super().__init__(message)
