"""Benchmark the configuration compiler: load a large repository and compile every host.

    /work/venv/bin/python bench/compile.py [--hosts 1000] [--groups 20] [--files 1000]
                                           [--template-share 0.1] [--repeat 3]

Generates, in a temporary directory, a repository of --hosts hosts in
--groups groups (one group of every host, "*"; ten by glob on a digit of the
id; the rest by explicit lists), with --files files of about 1 KiB spread
evenly over the groups, --template-share of them Jinja2 templates using
host, groups and in_group(). Every host is in three groups plus "all" and
its own. It prints the time to load the repository, to compile every host
(total and per host), how many distinct group lists the hosts have (the
compiler settles each once and renders templates per host), the peak RSS
of the process, and checks that content which is not a template is one
shared bytes object per repository file.

Then the master's repository cache (master/repocache.py): once the tree is
older than its racy window (the benchmark waits for that), the time of a
load through the cache with nothing changed (the stat walk alone, what a
no-op job pays) and with one file changed (walk and full load).
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safcm.common.model import FileType
from safcm.master.compiler import compile_hosts, load_repository
from safcm.master.repocache import RACY_WINDOW_NS, RepositoryCache, walk_tree

FILE_SIZE = 1024  # bytes of each generated file, like the engine's benchmark trees
DIRS_PER_GROUP = 5  # each group spreads its files over this many directories

TEMPLATE = """# {{{{ host }}}} ({group}, file {n})
{{% for g in groups %}}member_of = {{{{ g }}}}
{{% endfor %}}{{% if in_group("{other}") %}}role = {other}
{{% else %}}role = none
{{% endif %}}"""


def host_id(i: int) -> str:
    return f"h{i:04d}"


def group_name(k: int) -> str:
    return f"g{k:02d}"


def generate(root: pathlib.Path, hosts: int, groups: int, files: int, share: float) -> None:
    (root / "hosts.yaml").write_text("".join(f"- name: {host_id(i)}\n" for i in range(hosts)))
    lines = [f'{group_name(0)}: ["*"]\n']
    glob_groups = min(10, groups - 1)
    for k in range(1, 1 + glob_groups):
        # hosts whose hundreds digit is k-1
        lines.append(f'{group_name(k)}: ["h?{k - 1}??"]\n')
    list_groups = groups - 1 - glob_groups
    for k in range(list_groups):
        members = [host_id(i) for i in range(hosts) if i % list_groups == k]
        lines.append(f"{group_name(1 + glob_groups + k)}: [{', '.join(members)}]\n")
    (root / "groups.yaml").write_text("".join(lines))
    order = ", ".join(group_name(k) for k in range(groups))
    (root / "config.yaml").write_text(f"group_order: [{order}]\n")

    per_group = files // groups
    templates_per_group = round(per_group * share)
    filler = ("x" * 63 + "\n") * (FILE_SIZE // 64)
    for k in range(groups):
        g = group_name(k)
        templates, permissions = [], []
        for n in range(per_group):
            rel = f"etc/{g}/d{n % DIRS_PER_GROUP}/f{n:03d}.conf"
            path = root / g / "files" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if n < templates_per_group:
                other = group_name((k + 1) % groups)
                path.write_text(TEMPLATE.format(group=g, n=n, other=other) + filler[:512])
                templates.append(f"- /{rel}\n")
            else:
                path.write_text(f"# {g} file {n}\n" + filler)
            if n % 10 == 0:
                permissions.append(f'/{rel}: "0640 root adm"\n')
        (root / g / "templates.yaml").write_text("".join(templates))
        (root / g / "permissions.yaml").write_text("".join(permissions))
        (root / g / "triggers.yaml").write_text(f'/etc/{g}:\n  - echo "{g} changed"\n')


def bench_cache(root: pathlib.Path, repeat: int) -> tuple[float, float, int]:
    """Median seconds of a cached load with nothing changed, and with one file
    changed; and the number of entries the walk lstats."""
    walk = walk_tree(str(root))
    if walk is None:
        raise SystemExit(f"cannot walk {root}")
    # A tree changed within the racy window is never kept: wait until it has settled.
    time.sleep(max(0.0, (walk.newest_ns + RACY_WINDOW_NS - time.time_ns()) / 1e9 + 0.01))
    cache = RepositoryCache()
    first = cache.load(str(root))
    cached, changed = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        if cache.load(str(root)) is not first:
            raise SystemExit("an unchanged repository was loaded again")
        cached.append(time.perf_counter() - t0)
    edited = root / group_name(0) / "files" / "etc" / "edited.conf"
    for i in range(repeat):
        edited.write_text(f"edit {i}\n")
        t0 = time.perf_counter()
        cache.load(str(root))
        changed.append(time.perf_counter() - t0)
    return statistics.median(cached), statistics.median(changed), len(walk.entries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--template-share", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="safcm-bench-compile-") as tmp:
        root = pathlib.Path(tmp) / "repo"
        root.mkdir()
        generate(root, args.hosts, args.groups, args.files, args.template_share)
        load_times, compile_times = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            repo = load_repository(str(root))
            t1 = time.perf_counter()
            configs = compile_hosts(repo, repo.hosts)
            t2 = time.perf_counter()
            load_times.append(t1 - t0)
            compile_times.append(t2 - t1)
        cached_s, changed_s, walked = bench_cache(root, args.repeat)

    specs = sum(len(c.files) for c in configs.values())
    group_lists = len({tuple(c.groups[:-1]) for c in configs.values()})
    rendered = sum(1 for c in configs.values() for f in c.files if f.template)
    static = [f for c in configs.values() for f in c.files if f.spec.type is FileType.FILE]
    static = [f for f in static if not f.template]
    shared_objects = len({id(f.spec.data) for f in static})
    static_sources = len({f.source for f in static})
    load_s = statistics.median(load_times)
    compile_s = statistics.median(compile_times)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    print(
        f"repository: {args.hosts} hosts, {args.groups} groups, {args.files} files"
        f" ({args.template_share:.0%} templates)"
    )
    python = sys.version.split()[0]
    print(f"compiled: {specs} file specs, {rendered} template renders, python {python}")
    print(f"group lists:     {group_lists} distinct among {args.hosts} hosts")
    print(f"load:            {load_s:.3f} s (median of {args.repeat})")
    print(f"compile all:     {compile_s:.3f} s (median of {args.repeat})")
    print(f"compile / host:  {compile_s / args.hosts * 1000:.2f} ms")
    print(f"load + compile:  {load_s + compile_s:.3f} s")
    print(f"peak RSS:        {peak_rss_mib:.1f} MiB")
    print(f"cached, no-op:   {cached_s * 1000:.1f} ms (stat walk of {walked} entries; median)")
    print(f"cached, 1 edit:  {changed_s * 1000:.1f} ms (walk + load; median)")
    print(
        f"static content:  {len(static)} file specs share {shared_objects} bytes objects"
        f" for {static_sources} repository files"
    )
    if shared_objects != static_sources:
        print("static content is NOT shared: one bytes object per repository file expected")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
