"""Benchmark what a master of a cluster reads on its loop at each job start
and each `keys list`: every minion's last-seen time (master/keystore.py
refresh_seen()), from a real PostgreSQL server.

    .venv/bin/python bench/refreshseen.py [--minions 10000] [--reps 20]

Starts a throwaway PostgreSQL server (tests/pgserver.py, Debian's binaries),
enrols --minions keys (auto-accepted), writes a last-seen time for each,
then times --reps calls of refresh_seen() and prints the median and the
longest. Compare with the loop's budget of 50 ms (issue 11, point 2).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safcm.common.crypto import PublicKeys
from safcm.master.keystore import KeyStore
from safcm.master.pgdb import open_pg
from tests.pgserver import PgServer

# Bytes of each made-up public key (sign, kx and curve are 32 bytes each).
KEY_BYTES = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minions", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    with PgServer.start() as server:
        os.environ.update(server.env())
        db = open_pg(server.dsn)
        try:
            keys = KeyStore(db)
            began = time.perf_counter()
            for i in range(args.minions):
                key = i.to_bytes(4, "big") * (KEY_BYTES // 4)
                keys.enrol(
                    f"m{i:06d}", PublicKeys(sign=key, kx=key, curve=key), now=1.0, auto_accept=True
                )
                keys.touch(f"m{i:06d}", 100.0 + i)
            keys.flush()
            print(f"{args.minions} keys enrolled and seen in {time.perf_counter() - began:.1f} s")
            times = []
            for _ in range(args.reps):
                began = time.perf_counter()
                keys.refresh_seen()
                times.append(time.perf_counter() - began)
            print(
                f"refresh_seen() over {args.minions} minions, {args.reps} calls: "
                f"median {statistics.median(times) * 1000:.1f} ms, "
                f"longest {max(times) * 1000:.1f} ms"
            )
        finally:
            db.close()


if __name__ == "__main__":
    main()
