"""Child process for the state-file crash test: writes one kind of state in a loop.

    python -m tests.minion.state_crash_child KIND DIRECTORY NAMED

KIND is "key" (a new key file in a new directory per round, as a fresh
daemon does), "pin" (the pinned master key, alternating between two keys),
"spool" (one spooled result, a new version each round), "owed" (the owed
triggers, a list growing by one each round) or "seq" (the heartbeat
counter's reservation, as Minion._next_seq writes it). NAMED=1 forces
named temporaries instead of O_TMPFILE. Prints "go" once the first write of
this run is complete, then writes until it is killed.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys

from safcm.common import atomicfile, keyfile
from safcm.common.crypto import KeyPair, PublicKeys, Secret
from safcm.common.model import OwedTrigger
from safcm.minion import daemon, owed
from safcm.minion.spool import Kind, Spool

JID = "20260101T000000.000001Z"


def pin_keys(version: int) -> PublicKeys:
    """One of two fixed master keys: the pin alternates between them."""
    seed = b"master key %d" % (version % 2)
    sign = Secret(hashlib.sha256(b"sign " + seed).digest())
    kx = Secret(hashlib.sha256(b"kx " + seed).digest())
    curve = Secret(hashlib.sha256(b"curve " + seed).digest())
    return KeyPair.from_secrets(sign, kx, curve).public


def spool_content(version: int) -> bytes:
    """Tens of kilobytes, whose first line names the version and whose length varies with it."""
    line = b"version %d\n" % version
    return line * (4000 + version % 1000)


def spool_version(data: bytes) -> int:
    return int(data.split(b"\n", 1)[0].split()[1])


def owed_list(version: int) -> list[OwedTrigger]:
    """Version N of the owed triggers: N+1 commands."""
    return [OwedTrigger(f"reload {i}", "/etc/app", JID) for i in range(version + 1)]


def key_dirs(directory: str) -> list[str]:
    """The key directories written so far, in the order they were written."""
    return sorted((d for d in os.listdir(directory) if d.startswith("k")), key=lambda d: int(d[1:]))


def main() -> None:
    kind, directory, named = sys.argv[1:]
    atomicfile.FORCE_NAMED_TEMP = named == "1"
    if kind == "key":
        first = len(key_dirs(directory))
        for version in itertools.count(first):
            keyfile.save_keys(os.path.join(directory, f"k{version}"), KeyPair.generate())
            if version == first:
                print("go", flush=True)
    elif kind == "pin":
        for version in itertools.count():
            daemon.save_master_keys(directory, pin_keys(version))
            if version == 0:
                print("go", flush=True)
    elif kind == "owed":
        first = len(owed.load(directory))
        for version in itertools.count(first):
            owed.save(directory, owed_list(version))
            if version == first:
                print("go", flush=True)
    elif kind == "seq":
        data = atomicfile.read_file(directory, daemon.SEQ_FILE)
        first = 0 if data is None else int(data) + daemon.SEQ_BLOCK
        for reserved in itertools.count(first, daemon.SEQ_BLOCK):
            atomicfile.replace_file(directory, daemon.SEQ_FILE, f"{reserved}\n".encode("ascii"))
            if reserved == first:
                print("go", flush=True)
    else:
        spool = Spool(directory)
        data = spool.get(Kind.RESULT, JID)
        first = 0 if data is None else spool_version(data) + 1
        for version in itertools.count(first):
            spool.put(Kind.RESULT, JID, spool_content(version))
            if version == first:
                print("go", flush=True)


if __name__ == "__main__":
    main()
