"""Crash safety: an apply killed with SIGKILL at random points leaves every file
wholly old or wholly new, and the next apply leaves no temporary file behind.

(SIGKILL keeps the page cache, so this tests atomicity and clean-up, not
durability across a power cut; fsync ordering is reviewed in the code.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from safcm.minion.fileops import Temp

from .conftest import Host
from .crash_child import DIRS, FILES, LINKS, content, owner
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

        # The next apply completes the version and removes every leftover.
        done = start_child(host, version, temp)
        assert done.stdout.readline() == "done\n"
        done.wait()
        done.stdout.close()
        assert versions_on_disk(host, version - 1, version)[version] == DIRS * (FILES + LINKS)
        assert temp_names(host.root) == []

    print(
        f"crash ({temp.value}, seed {seed}): {mixed} of {ROUNDS} kills mid-apply, "
        f"{leftovers} temporaries left by kills, all removed"
    )
    assert mixed > 0, f"no kill landed inside an apply (seed {seed})"
