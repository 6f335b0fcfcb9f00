"""Child process for the directory crash test: kills itself while it makes
a new directory, at a chosen point.

    python -m tests.minion.dir_crash_child ROOT STATE POINT N

POINT is where the N-th new directory's making is cut short by SIGKILL:
"before-chown" and "before-chmod" (before that call on the directory),
"after-chmod" (after it: the directory is whole, not yet in place). N is
0 for no kill: the apply runs to its end and prints "done".
"""

from __future__ import annotations

import os
import signal
import stat
import sys

from safcm.common.model import FileSpec, FileType
from safcm.minion import fileops

JID = "20260101T000000.000000Z"
POINTS = ("before-chown", "before-chmod", "after-chmod")


def passed(path: str) -> FileSpec:
    return FileSpec(path, FileType.DIR, 0o755, user="root", group="root", passthrough=True)


# Five new directories, in apply order: /srv, /srv/app (managed: 0750,
# nobody), /usr, /usr/local, /usr/local/bin; the others only passed through.
FILES = [
    passed("/srv"),
    FileSpec("/srv/app", FileType.DIR, 0o750, user="nobody", group="root"),
    FileSpec("/srv/app/app.conf", FileType.FILE, 0o640, user="root", group="root", data=b"x\n"),
    passed("/usr"),
    passed("/usr/local"),
    passed("/usr/local/bin"),
    FileSpec("/usr/local/bin/tool", FileType.FILE, 0o755, user="root", group="root", data=b"#\n"),
]
NEW_DIRS = 5


def kill_at(point: str, nth: int) -> None:
    """Patch fchown and fchmod (the engine's os module is this one) to
    SIGKILL this process at `point` of the `nth` new directory."""
    real_chown, real_chmod = os.fchown, os.fchmod
    seen = {"chown": 0, "chmod": 0}

    def counted(call: str, fd: int) -> int:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            return 0
        seen[call] += 1
        return seen[call]

    def fchown(fd: int, uid: int, gid: int) -> None:
        if counted("chown", fd) == nth and point == "before-chown":
            os.kill(os.getpid(), signal.SIGKILL)
        real_chown(fd, uid, gid)

    def fchmod(fd: int, mode: int) -> None:
        n = counted("chmod", fd)
        if n == nth and point == "before-chmod":
            os.kill(os.getpid(), signal.SIGKILL)
        real_chmod(fd, mode)
        if n == nth and point == "after-chmod":
            os.kill(os.getpid(), signal.SIGKILL)

    os.fchown, os.fchmod = fchown, fchmod  # type: ignore[assignment]


def main() -> None:
    root, state, point, nth = sys.argv[1:]
    if int(nth):
        kill_at(point, int(nth))
    result = fileops.apply_files(root, FILES, dry_run=False, state_dir=state, jid=JID)
    print("done" if not result.failures else f"failed: {result.failures}", flush=True)


if __name__ == "__main__":
    main()
