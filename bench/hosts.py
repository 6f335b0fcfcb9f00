#!/usr/bin/env python3
"""Booted Debian hosts for the tests: what a fleet of N costs.

    python bench/hosts.py [--hosts N] [--rounds R]

Boots N machines at once (tests/hosts/machine.py: systemd-nspawn, Debian 12,
systemd as PID 1), starts a master, installs and starts each machine's
minion with its systemd, accepts them, runs a ping and a files job, and
shuts everything down; R rounds. Prints the time of each phase (median and
worst over the rounds). Needs root and the tree (scripts/build-test-host.sh).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.hosts.fleet import Fleet  # noqa: E402
from tests.system.conftest import run_json  # noqa: E402


def one_round(hosts: int) -> dict[str, float]:
    ids = [f"host{i + 1}" for i in range(hosts)]
    fleet = Fleet(ids)
    times: dict[str, float] = {}
    t = time.monotonic()
    try:
        for host in fleet.hosts.values():
            host.machine.start()
        for host in fleet.hosts.values():
            host.machine.wait_booted()
        times["boot (is-system-running)"] = time.monotonic() - t
        t = time.monotonic()
        fleet.start_minions()
        times["master + minions enrolled"] = time.monotonic() - t
        t = time.monotonic()
        code, _ = run_json(fleet.sandbox, "host*", "ping")
        assert code == 0
        times["ping"] = time.monotonic() - t
        fleet.repo({"all": {"files/etc/motd": "bench\n"}})
        t = time.monotonic()
        code, _ = run_json(fleet.sandbox, "host*", "files")
        assert code == 0
        times["files (/etc/motd)"] = time.monotonic() - t
    finally:
        t = time.monotonic()
        fleet.close()
        times["shutdown + cleanup"] = time.monotonic() - t
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = [one_round(args.hosts) for _ in range(args.rounds)]
    print(f"{args.hosts} hosts, {args.rounds} rounds (seconds: median, worst)")
    for phase in rounds[0]:
        values = [r[phase] for r in rounds]
        print(f"  {phase:28} {statistics.median(values):6.2f} {max(values):6.2f}")


if __name__ == "__main__":
    main()
