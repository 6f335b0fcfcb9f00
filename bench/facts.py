"""Benchmark facts: what a minion pays to look at its host, and what groups
detected from facts cost the compiler.

    .venv/bin/python bench/facts.py [--hosts 1000] [--detected 10] [--repeat 5]

1. minion/facts.py gather() on this machine (os-release, uname, CPUs,
   /proc/meminfo), per call: what a minion spends every facts_interval.
2. A repository of --hosts hosts, each with one file from "all" and one
   from its own directory, compiled for every host three ways: without
   detected groups; with --detected detected groups of one small file each
   and no facts (every host in none); and with facts that put every host in
   one of them. Prints the time per host and the overhead.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safcm.master.compiler import compile_hosts, load_repository
from safcm.master.facts import HostFacts
from safcm.minion import facts as minion_facts


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def generate(root: pathlib.Path, hosts: int, detected: int) -> None:
    root.mkdir()
    (root / "hosts.yaml").write_text("".join(f"- name: h{i:04d}\n" for i in range(hosts)))
    groups = [
        f"d{k:02d}:\n  detect: {{os_id: debian, os_version_id: ['{k}', '{k + 100}']}}\n"
        for k in range(detected)
    ]
    (root / "groups.yaml").write_text("".join(groups) or "{}\n")
    (root / "all" / "files" / "etc").mkdir(parents=True)
    (root / "all" / "files" / "etc" / "motd").write_text("hello\n")
    for k in range(detected):
        (root / f"d{k:02d}" / "files" / "etc").mkdir(parents=True)
        (root / f"d{k:02d}" / "files" / "etc" / f"d{k:02d}.conf").write_text("x\n")
    for i in range(hosts):
        (root / f"h{i:04d}" / "files" / "etc").mkdir(parents=True)
        (root / f"h{i:04d}" / "files" / "etc" / "own").write_text(f"h{i}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--detected", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    calls = 1000
    per = best(lambda: [minion_facts.gather("/") for _ in range(calls)], args.repeat) / calls
    print(f"gather(): {per * 1e6:.0f} us per call")

    with tempfile.TemporaryDirectory() as tmp:
        plain, detecting = pathlib.Path(tmp, "plain"), pathlib.Path(tmp, "detecting")
        generate(plain, args.hosts, 0)
        generate(detecting, args.hosts, args.detected)
        repo0, repo1 = load_repository(str(plain)), load_repository(str(detecting))
        # One version per host: each host is in one detected group (d00, d02, ... d08).
        facts = {
            h: HostFacts({"os_id": "debian", "os_version_id": str(2 * (i % 5))})
            for i, h in enumerate(repo1.hosts)
        }
        base = best(lambda: compile_hosts(repo0, repo0.hosts), args.repeat)
        none = best(lambda: compile_hosts(repo1, repo1.hosts), args.repeat)
        some = best(lambda: compile_hosts(repo1, repo1.hosts, facts), args.repeat)
        configs = compile_hosts(repo1, repo1.hosts, facts)
        inside = statistics.mean(len(c.detected) for c in configs.values())
        n = args.hosts
        print(f"compile, {n} hosts, no detected group:        {base * 1e6 / n:7.1f} us per host")
        print(
            f"compile, {args.detected} detected groups, no facts:     "
            f"{none * 1e6 / n:7.1f} us per host ({(none / base - 1) * 100:+.0f}%)"
        )
        print(
            f"compile, {args.detected} detected groups, with facts:   "
            f"{some * 1e6 / n:7.1f} us per host ({(some / base - 1) * 100:+.0f}%),"
            f" {inside:.1f} detected groups per host"
        )


if __name__ == "__main__":
    main()
