"""Benchmark of sealing and opening envelopes, and of encoding and decoding jobs.

Run from the repository root:

    python bench/crypto.py

Prints, for 1 KiB and 1 MiB payloads, envelopes sealed and opened per second
(one core); the time to seal one job for 1000 recipients with distinct keys;
and the cost of checking, packing and decoding large jobs, whose structural
scan and schema check run in Python.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from safcm.common import codec, crypto
from safcm.common.crypto import KeyPair
from safcm.common.model import FileSpec, FileType
from safcm.common.protocol import (
    MASTER_ID,
    MAX_BODY_DEPTH,
    SPECS,
    MsgType,
    new_jid,
    open_message_at,
    seal_message_at,
)
from safcm.common.schema import validate

# Each rate is measured for at least this long, in seconds, to smooth out noise.
MIN_SECONDS = 1.0
RECIPIENTS = 1000


def rate(fn: Callable[[], object]) -> float:
    """Calls of `fn` per second, over at least MIN_SECONDS."""
    fn()  # warm up
    n = 0
    start = time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_SECONDS:
            return n / elapsed


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def job_body(files: int, size: int) -> dict:
    specs = [
        FileSpec(
            path=f"/etc/app/conf.d/{i:05d}.conf",
            type=FileType.FILE,
            mode=0o644,
            user="root",
            group="root",
            data=os.urandom(size),
            triggers=("systemctl reload app",),
        ).to_wire()
        for i in range(files)
    ]
    return {
        "module": "files",
        "dry_run": False,
        "files": specs,
        "absent": [],
        "purge": [],
        "secrets": [],
        "deadline": time.time() + 600,
    }


def main() -> None:
    master, minion = KeyPair.generate(), KeyPair.generate()
    now = time.time()
    jid = new_jid(now)
    lookup = {MASTER_ID: master.public}.get
    print(f"python {sys.version.split()[0]}, one core, each rate over >= {MIN_SECONDS:.0f} s")
    print()
    print("envelopes (common.crypto.seal_at / open_at)")
    for label, size in (("1 KiB", 1024), ("1 MiB", 1024 * 1024)):
        payload = os.urandom(size)

        def seal(payload: bytes = payload) -> bytes:
            return crypto.seal_at(
                payload,
                version=1,
                msg_type=5,
                jid=jid,
                sender=MASTER_ID,
                recipient="web1",
                sender_keys=master,
                recipient_keys=minion.public,
                now=now,
                ttl=600,
            )

        frame = seal()

        def open_(frame: bytes = frame) -> crypto.Opened:
            return crypto.open_at(frame, me="web1", my_keys=minion, sender_keys=lookup, now=now)

        s, o = rate(seal), rate(open_)
        print(
            f"  {label:>6}: seal {s:9.0f}/s ({s * size / 2**20:7.1f} MiB/s)   "
            f"open {o:9.0f}/s ({o * size / 2**20:7.1f} MiB/s)"
        )

    print()
    body = job_body(files=20, size=2048)
    size = len(codec.pack(body))
    keys = [KeyPair.generate().public for _ in range(RECIPIENTS)]

    def seal_all() -> None:
        for i, recipient_keys in enumerate(keys):
            seal_message_at(
                MsgType.JOB,
                body,
                jid=jid,
                sender=MASTER_ID,
                sender_keys=master,
                recipient=f"web{i}",
                recipient_keys=recipient_keys,
                now=now,
                ttl=600,
            )

    total = timed(seal_all)
    print(
        f"one job ({size / 1024:.0f} KiB body: 20 files of 2 KiB) sealed for {RECIPIENTS} "
        f"recipients with distinct keys (schema check + pack + seal, per host):"
    )
    print(f"  {total:.2f} s total, {total / RECIPIENTS * 1000:.2f} ms per recipient")

    print()
    print("large jobs, protocol level (check + pack + seal; open + scan + unpack + check)")
    spec = SPECS[MsgType.JOB]
    for files, fsize in ((1000, 1024), (10000, 256), (5, 4 * 1024 * 1024)):
        body = job_body(files=files, size=fsize)
        packed = codec.pack(body)
        t_validate = timed(lambda body=body: validate(spec.schema, body, "JOB body"))
        t_unpack = timed(lambda packed=packed: codec.unpack(packed, max_depth=MAX_BODY_DEPTH))

        def seal_one(body: dict = body) -> bytes:
            return seal_message_at(
                MsgType.JOB,
                body,
                jid=jid,
                sender=MASTER_ID,
                sender_keys=master,
                recipient="web1",
                recipient_keys=minion.public,
                now=now,
                ttl=600,
            )

        t_seal = timed(seal_one)
        frame = seal_one()
        t_open = timed(
            lambda frame=frame: open_message_at(
                frame, me="web1", my_keys=minion, sender_keys=lookup, now=now
            )
        )
        print(
            f"  {files:>5} files of {fsize:>7} B ({len(packed) / 2**20:6.1f} MiB): "
            f"seal {t_seal * 1000:7.1f} ms  open {t_open * 1000:7.1f} ms   "
            f"(schema check {t_validate * 1000:6.1f} ms, scan+unpack {t_unpack * 1000:6.1f} ms)"
        )


if __name__ == "__main__":
    main()
