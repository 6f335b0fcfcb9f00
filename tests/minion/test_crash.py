"""Crash safety: an apply killed with SIGKILL at random points leaves every file
wholly old or wholly new, and every new directory whole or not there; the next
apply leaves no temporary behind. A kill at each point of making a directory
(dir_crash_child.py) never leaves one half-made at its path.

(SIGKILL keeps the page cache, so this tests atomicity and clean-up, not
durability across a power cut; fsync ordering is reviewed in the code.)
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time

import pytest

from safcm.common.model import FileType
from safcm.minion.fileops import Temp
from safcm.minion.plan import is_temp_name

from .conftest import Host, new_host
from .crash_child import DIRS, FILES, LINKS, content, owner
from .dir_crash_child import FILES as DIR_FILES
from .dir_crash_child import NEW_DIRS
from .dir_crash_child import POINTS as DIR_POINTS
from .test_fileops import temp_names

ROUNDS = 6  # killed applies per temporary-file method
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_child(host: Host, version: int, temp: Temp) -> subprocess.Popen:
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.minion.crash_child",
            host.root,
            host.state,
            str(version),
            temp.value,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline() == "go\n"
    return child


def versions_on_disk(host: Host, old: int, new: int) -> dict[int, int]:
    """Check every file and symlink is wholly version `old` or `new`; count each."""
    counts = {old: 0, new: 0}
    uids = {"root": 0, "nobody": 65534}
    for s in range(DIRS):
        for i in range(FILES):
            p = f"{host.root}/d/s{s}/f{i:02d}"
            with open(p, "rb") as f:
                data = f.read()
            st = os.lstat(p)
            matches = [v for v in (old, new) if data == content(v, s * FILES + i)]
            assert len(matches) == 1, f"{p} holds neither version {old} nor {new} wholly"
            user, mode = owner(matches[0])
            assert (st.st_mode & 0o7777, st.st_uid) == (mode, uids[user]), p
            counts[matches[0]] += 1
        for i in range(LINKS):
            p = f"{host.root}/d/s{s}/l{i}"
            target = os.readlink(p)
            matches = [v for v in (old, new) if target == f"target-v{v}-{i}"]
            assert len(matches) == 1, f"{p} points to {target}"
            assert os.lstat(p).st_uid == uids[owner(matches[0])[0]], p
            counts[matches[0]] += 1
    return counts


def odd_dirs(host: Host) -> list[tuple[str, str]]:
    """Directories of the crash tree, temporaries aside, whose mode is not its 0755."""
    return [
        (d, oct(os.lstat(d).st_mode & 0o7777))
        for d, _, _ in os.walk(host.root + "/d")
        if not is_temp_name(os.path.basename(d)) and os.lstat(d).st_mode & 0o7777 != 0o755
    ]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("temp", [Temp.TMPFILE, Temp.NAMED], ids=["tmpfile", "named"])
def test_sigkill_at_random_points(host: Host, temp):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    child = start_child(host, 0, temp)  # version 0, complete: the starting point
    started = time.monotonic()  # "go": the apply itself begins
    assert child.stdout.readline() == "done\n"
    apply_time = time.monotonic() - started
    child.wait()

    mixed = leftovers = 0
    for version in range(1, ROUNDS + 1):
        child = start_child(host, version, temp)
        # One kill in each of ROUNDS equal stretches of the apply, at a random
        # point of it: the middle stretches land among the renames whatever
        # the machine's speed (a kill anywhere in the whole time often fell
        # after a fast apply had ended).
        time.sleep(apply_time * (version - 1 + rng.random()) / ROUNDS)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()

        counts = versions_on_disk(host, version - 1, version)
        mixed += all(counts.values())
        leftovers += len(temp_names(host.root))
        assert odd_dirs(host) == []  # every directory (0755 all) is whole or not there

        # The next apply completes the version and removes every leftover.
        done = start_child(host, version, temp)
        assert done.stdout.readline() == "done\n"
        done.wait()
        done.stdout.close()
        assert versions_on_disk(host, version - 1, version)[version] == DIRS * (FILES + LINKS)
        assert temp_names(host.root) == []
        assert odd_dirs(host) == []
        assert all(os.path.isdir(f"{host.root}/d/s{s}/p{version}") for s in range(DIRS))

    print(
        f"crash ({temp.value}, seed {seed}): {mixed} of {ROUNDS} kills mid-apply, "
        f"{leftovers} temporaries left by kills, all removed"
    )
    assert mixed > 0, f"no kill landed inside an apply (seed {seed})"


# ---------------------------------------------------------------------------
# A new directory killed half-made: at each point of making it, for each of
# the tree's new directories (dir_crash_child.py).


def run_dir_child(host: Host, point: str, nth: int) -> subprocess.CompletedProcess:
    child = "tests.minion.dir_crash_child"
    return subprocess.run(
        [sys.executable, "-m", child, host.root, host.state, point, str(nth)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def dir_modes(host: Host) -> dict[str, int]:
    """The mode of every declared directory that is on the host."""
    modes = {}
    for spec in DIR_FILES:
        p = host.root + spec.path
        if spec.type is FileType.DIR and os.path.lexists(p):
            st = os.lstat(p)
            assert stat.S_ISDIR(st.st_mode), p
            modes[spec.path] = st.st_mode & 0o7777
    return modes


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", DIR_POINTS)
def test_a_directory_is_never_left_half_made_by_a_kill(tmp_path, point):
    declared = {s.path: s.mode for s in DIR_FILES if s.type is FileType.DIR}
    for nth in range(1, NEW_DIRS + 1):
        host = new_host(str(tmp_path / f"{nth}"))
        killed = run_dir_child(host, point, nth)
        assert killed.returncode == -signal.SIGKILL, (nth, killed.stdout, killed.stderr)
        # Each directory is not there, or whole: never at its path with the
        # private mode it is made with.
        after_kill = dir_modes(host)
        assert after_kill == {p: declared[p] for p in after_kill}, (point, nth)

        # The next apply completes the tree; a directory passed through is
        # never changed once it exists, so a half-made one would stay so.
        done = run_dir_child(host, point, 0)
        assert done.stdout == "done\n", done.stderr
        assert dir_modes(host) == declared, (point, nth)
        assert os.stat(host.root + "/srv/app").st_uid == 65534
        assert temp_names(host.root) == []
