"""Child process for the crash test: applies one version of the crash tree.

    python -m tests.minion.crash_child ROOT STATE VERSION TEMP

Prints "go" just before the apply starts, so the parent can time its
SIGKILL to land inside the apply, not in the interpreter's start-up.
"""

from __future__ import annotations

import sys

from safcm.common.model import FileSpec, FileType
from safcm.minion import fileops
from safcm.minion.fileops import Temp

JID = "20260101T000000.000000Z"

DIRS = 5  # subdirectories of /d
FILES = 60  # regular files per subdirectory
LINKS = 4  # symlinks per subdirectory


def content(version: int, i: int) -> bytes:
    """About 4 KiB that differ per version and file, with a size that varies too."""
    unit = f"version {version} file {i}\n".encode()
    return (unit * (4096 // len(unit) + 1))[: 4000 + 37 * version + i % 50]


def owner(version: int) -> tuple[str, int]:
    """User and mode alternate with the version, so metadata changes with the content."""
    return ("nobody", 0o640) if version % 2 else ("root", 0o644)


def tree(version: int) -> list[FileSpec]:
    user, mode = owner(version)
    files = [FileSpec("/d", FileType.DIR, 0o755, user="root", group="root")]
    for s in range(DIRS):
        files.append(FileSpec(f"/d/s{s}", FileType.DIR, 0o755, user="root", group="root"))
        for i in range(FILES):
            files.append(
                FileSpec(
                    f"/d/s{s}/f{i:02d}",
                    FileType.FILE,
                    mode,
                    user=user,
                    group="root",
                    data=content(version, s * FILES + i),
                )
            )
        for i in range(LINKS):
            target = f"target-v{version}-{i}".encode()
            files.append(
                FileSpec(
                    f"/d/s{s}/l{i}", FileType.SYMLINK, 0o777, user=user, group="root", data=target
                )
            )
        # A new directory each version, only passed through: never changed
        # once it exists, so it must never appear half-made (0700).
        files.append(
            FileSpec(
                f"/d/s{s}/p{version}",
                FileType.DIR,
                0o755,
                user="root",
                group="root",
                passthrough=True,
            )
        )
    return files


def main() -> None:
    root, state, version, temp = sys.argv[1:]
    fileops.FORCE_TEMP = Temp(temp)
    files = tree(int(version))
    print("go", flush=True)
    result = fileops.apply_files(root, files, dry_run=False, state_dir=state, jid=JID)
    print("done" if not result.failures else f"failed: {result.failures}", flush=True)


if __name__ == "__main__":
    main()
