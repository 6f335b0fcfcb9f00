"""Benchmark the packages module's minion side on this machine.

    .venv/bin/python bench/packages.py [--repeat 5] [--synthetic 20000]

Prints, median of --repeat runs:
- the planner alone (minion/packages.py): parsing a dpkg-query listing of
  --synthetic packages and planning all of them (pure Python, no process);
- what a packages job with nothing to do costs on this host: one
  dpkg-query over the real dpkg database, parse and plan (no apt-get runs);
- a dry run that calls apt: `apt-get -s install bash=0` (a version that does
  not exist, so it fails the same way on every host) against this machine's
  own package lists: what apt takes to load its cache and resolve, the
  floor of any packages run that has something to do.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from safcm.common.packages import PackageSpec, Want
from safcm.minion import packages as planner
from safcm.minion.apt import DPKG_FORMAT, DPKG_QUERY, apply_packages


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        begun = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begun)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--synthetic", type=int, default=20000)
    args = parser.parse_args()

    n = args.synthetic
    listing = "".join(f"pkg{i}\tinstall ok installed\t1.{i}-1\n" for i in range(n))
    specs = [PackageSpec(f"pkg{i}", Want.INSTALL, f"1.{i}-1" if i % 2 else None) for i in range(n)]

    def pure() -> None:
        state = planner.parse_dpkg_status(listing)
        todo = planner.plan(specs, state)
        assert todo.args == []

    t = median_time(pure, args.repeat)
    print(f"planner, {n} packages: parse and plan {t * 1000:.1f} ms ({t / n * 1e6:.2f} us each)")

    real = subprocess.run(
        [DPKG_QUERY, "-W", "-f", DPKG_FORMAT], capture_output=True, text=True, check=True
    ).stdout
    installed = [
        name for name, s in planner.parse_dpkg_status(real).items() if s.status == "installed"
    ]
    host_specs = [PackageSpec(name, Want.INSTALL) for name in installed]

    def noop() -> None:
        outcome = apply_packages(host_specs, dry_run=False, timeout=600)
        assert outcome.error is None and not outcome.changes, outcome.error

    t = median_time(noop, args.repeat)
    print(
        f"no-op job, all {len(installed)} installed packages of this host named: {t * 1000:.1f} ms"
    )

    def simulate() -> None:
        outcome = apply_packages(
            [PackageSpec("bash", Want.INSTALL, "0")], dry_run=True, timeout=600
        )
        assert outcome.error is not None  # version 0 does not exist: apt says so

    t = median_time(simulate, args.repeat)
    print(f"apt-get -s of one package against this machine's lists: {t * 1000:.0f} ms")


if __name__ == "__main__":
    main()
