"""The daemons' own state survives a crash at any point: key files, the pinned
master key, spool entries, owed triggers and the heartbeat counter are each
written in a loop by a child that is killed with SIGKILL at a random moment;
every file is then wholly the old or the new version, never missing, empty
or partial, and the next start leaves no temporary behind. A second test
checks the durability order of each writer (file fsynced before it gets its
name, directory fsynced after), which SIGKILL cannot show: it keeps the page
cache.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import stat
import subprocess
import sys
import time

import pytest
import zmq

from safcm.common import atomicfile, codec, keyfile
from safcm.common.crypto import KeyPair, PublicKeys
from safcm.common.loop import Loop
from safcm.minion import daemon, owed
from safcm.minion.spool import Kind, Spool

from .state_crash_child import JID, key_dirs, owed_list, pin_keys, spool_content, spool_version
from .test_daemon import minion_settings

ROUNDS = 5  # kills per kind of state and temporary-file method
# Seconds after the child's first complete write within which it is killed:
# several writes' worth, so the kill lands at any point of one.
KILL_WITHIN = 0.3
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_child(kind: str, directory: str, named: bool) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.minion.state_crash_child", kind, directory, str(int(named))],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline() == "go\n"
    return child


def check_keys(directory: str) -> None:
    """Every key directory holds a whole key file, except that the newest may
    hold none yet (the old state of a directory being created)."""
    dirs = key_dirs(directory)
    for i, name in enumerate(dirs):
        path = os.path.join(directory, name)
        if not os.path.exists(os.path.join(path, keyfile.KEY_FILE_NAME)):
            assert i == len(dirs) - 1, f"{path} lost its key file"
            continue
        keyfile.load_keys(path)  # KeyFileError if empty or partial
    # A start-up in the newest directory loads or creates the key, and leaves
    # no temporary (which would hold a private key) behind.
    newest = os.path.join(directory, dirs[-1])
    keyfile.load_or_create(newest)
    assert os.listdir(newest) == [keyfile.KEY_FILE_NAME]


def check_pin(directory: str) -> None:
    data = atomicfile.read_file(directory, daemon.MASTER_KEY_FILE)
    assert data, "the pinned master key is missing or empty"
    keys = PublicKeys.from_wire(codec.unpack(data, max_depth=2))
    assert keys in (pin_keys(0), pin_keys(1))
    atomicfile.remove_temporaries(directory)  # what Minion() does at start-up
    assert os.listdir(directory) == [daemon.MASTER_KEY_FILE]


def check_spool(directory: str) -> None:
    spool = Spool(directory)  # removes temporaries, as at start-up
    try:
        data = spool.get(Kind.RESULT, JID)
        assert data, "the spooled result is missing or empty"
        assert data == spool_content(spool_version(data)), "the spooled result is partial"
        assert os.listdir(directory) == [JID + Kind.RESULT]
    finally:
        spool.close()


def check_owed(directory: str) -> None:
    triggers = owed.load(directory)
    assert triggers, "the owed triggers are missing or empty"
    assert triggers == owed_list(len(triggers) - 1), "the owed triggers are partial"
    atomicfile.remove_temporaries(directory)
    assert os.listdir(directory) == [owed.OWED_NAME]


def check_seq(directory: str) -> None:
    data = atomicfile.read_file(directory, daemon.SEQ_FILE)
    assert data, "the heartbeat counter is missing or empty"
    assert int(data) % daemon.SEQ_BLOCK == 0, "the heartbeat counter is partial"
    atomicfile.remove_temporaries(directory)
    assert os.listdir(directory) == [daemon.SEQ_FILE]


CHECKS = {
    "key": check_keys,
    "pin": check_pin,
    "spool": check_spool,
    "owed": check_owed,
    "seq": check_seq,
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("named", [False, True], ids=["tmpfile", "named"])
@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_sigkill_while_writing_state(tmp_path, kind, named):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    directory = str(tmp_path)
    for _ in range(ROUNDS):
        child = start_child(kind, directory, named)
        time.sleep(rng.uniform(0, KILL_WITHIN))
        child.kill()
        child.wait()
        child.stdout.close()
        CHECKS[kind](directory)


class Trace:
    """Records fsyncs (of a file or a directory) and the calls that give a file
    its final name, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        fsync, rename, replace, link = os.fsync, os.rename, os.replace, os.link

        def traced_fsync(fd):
            kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
            self.events.append(("fsync", kind))
            return fsync(fd)

        def naming(call):
            def traced(src, dst, *args, **kwargs):
                result = call(src, dst, *args, **kwargs)
                self.events.append(("name", os.path.basename(dst)))
                return result

            return traced

        monkeypatch.setattr(os, "fsync", traced_fsync)
        monkeypatch.setattr(os, "rename", naming(rename))
        monkeypatch.setattr(os, "replace", naming(replace))
        monkeypatch.setattr(os, "link", naming(link))

    def assert_durable(self, name: str) -> None:
        """The file was fsynced before it got `name`, and the directory after."""
        named = max(i for i, e in enumerate(self.events) if e == ("name", name))
        assert ("fsync", "file") in self.events[:named], self.events
        assert ("fsync", "dir") in self.events[named + 1 :], self.events


@pytest.mark.parametrize("named", [False, True], ids=["tmpfile", "named"])
def test_every_state_writer_is_durable_in_order(tmp_path, monkeypatch, named):
    monkeypatch.setattr(atomicfile, "FORCE_NAMED_TEMP", named)
    settings = minion_settings(tmp_path)
    ctx, loop = zmq.Context(), Loop()
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    minion = daemon.Minion(settings, loop=loop, ctx=ctx, worker=worker)
    try:
        trace = Trace(monkeypatch)
        minion._pin_master_keys(KeyPair.generate().public, first_use=True)
        trace.assert_durable(daemon.MASTER_KEY_FILE)

        trace = Trace(monkeypatch)
        minion.spool.put(Kind.RESULT, JID, b"result")
        trace.assert_durable(JID + Kind.RESULT)
    finally:
        minion.close()
        worker.shutdown()
        loop.close()
        ctx.term()

    trace = Trace(monkeypatch)
    keyfile.save_keys(str(tmp_path / "keys"), KeyPair.generate())
    trace.assert_durable(keyfile.KEY_FILE_NAME)
