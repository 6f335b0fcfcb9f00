"""The light commands (master/lightcli.py) against a real master: they print
what the full command line prints, byte for byte, with the same exit code,
and they run on the interpreter's start-up modules and safcm's light ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from safcm.master.sandbox import Sandbox
from tests.system.conftest import enrol, run_json, wait_state

# Runs safcm-master as bin/safcm-master does, and writes the names of the
# modules loaded by the end (one a line) to the file named by its first argument.
LIGHT = """
import sys
out = sys.argv.pop(1)
sys.argv[0] = "safcm-master"
from safcm.master.lightcli import main
try:
    code = main()
finally:
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
sys.exit(code)
"""

# What the light commands must not load: the full command line and what it
# stands on (argparse, re and enum under it, typing, msgpack, the wire's
# enums), and everything the daemon and the compiler use.
HEAVY = (
    "argparse",
    "re",
    "enum",
    "functools",
    "collections",
    "typing",
    "contextlib",
    "dataclasses",
    "datetime",
    "json",
    "msgpack",
    "cryptography",
    "nacl",
    "jinja2",
    "yaml",
    "zmq",
    "sqlite3",
    "hashlib",
    "safcm.common.wire",
    "safcm.common.codec",
    "safcm.common.protocol",
    "safcm.common.settings",
    "safcm.master.cli",
    "safcm.master.client",
    "safcm.master.render",
    "safcm.master.settings",
)


@pytest.fixture
def history(sandbox):
    """A master that knows two minions, both stopped since (so that `keys
    list` says the same twice), and three jobs."""
    enrol(sandbox, "web1", "web2")
    for target in ("*", "web1", "web2"):
        code, _ = run_json(sandbox, target, "ping")
        assert code == 0
    for minion in ("web1", "web2"):
        sandbox.stop(sandbox.minions[minion])
        wait_state(sandbox, minion, "accepted", connected=False)
    return sandbox


def both_ways(sb: Sandbox, tmp_path, argv: list[str]):
    """(exit code, stdout, stderr) of the light way and of the full way, and
    the modules the light way loaded."""
    modules = tmp_path / "modules"
    light = sb.run([sys.executable, "-c", LIGHT, str(modules), *argv])
    full = sb.run([sys.executable, "-m", "safcm.master.cli", *argv])
    ways = [(r.returncode, r.stdout, r.stderr) for r in (light, full)]
    return ways[0], ways[1], modules.read_text().splitlines()


def command_line(case: list[str], config: str) -> list[str]:
    """`case` with the settings file: given as -c before the command unless the case places it."""
    args = [a.format(config=config) for a in case]
    return args if "-c" in args else ["-c", config, *args]


def loaded_heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY]


# Command lines the light way answers itself: the settings are in the middle
# or after the command too, as argparse takes them.
ANSWERED = [
    ["keys", "list"],
    ["keys", "-c", "{config}", "list"],
    ["jobs", "list"],
    ["jobs", "list", "--limit", "2"],
    ["jobs", "list", "--host", "web1", "--module", "ping", "--status", "ok"],
    ["jobs", "list", "--target=web2", "--user", "root"],
    ["jobs", "list", "--user", "nobody"],
    ["jobs", "list", "--since", "2020-01-01", "--until", "2100-01-01T00:00Z"],
    ["jobs", "list", "--since", "1h"],
]
# Answered too, with --json (which loads json and the JSON format).
ANSWERED_JSON = [
    ["keys", "list", "--json"],
    ["jobs", "list", "--json"],
    ["jobs", "list", "--json", "--status", "ok", "--limit", "1"],
]
# Mistakes found by the light way, reported by the full command line's handling.
REPORTED = [
    ["jobs", "list", "--since", "never"],
    ["jobs", "list", "--json", "--since", "never"],
    ["jobs", "list", "--since", "2100-01-01", "--until", "2000-01-01"],
    ["jobs", "list", "--host", "Not An Id"],
    ["jobs", "list", "--target", "x" * 5000],  # the daemon's ERROR: too long
    ["jobs", "list", "--json", "--user", "x" * 5000],
]
# Left to the full command line (the light way decides so before it prints).
LEFT = [
    ["keys"],
    ["keys", "list", "--help"],
    ["keys", "list", "--js"],  # an abbreviation
    ["keys", "list", "extra"],
    ["keys", "--json", "list"],
    ["jobs", "list", "--limit", "0"],
    ["jobs", "list", "--limit", "-1"],
    ["jobs", "list", "--limit", "x"],
    ["jobs", "list", "--module", "nope"],
    ["jobs", "list", "--status", "lost"],
    ["jobs", "list", "--host"],
    ["jobs", "list", "--json=1"],
    ["jobs", "show", "last"],
    ["--help"],
    ["--", "keys", "list"],
]


def test_both_ways_print_the_same(history, tmp_path):
    sb = history
    config = sb.master.config
    for case in ANSWERED + ANSWERED_JSON + REPORTED + LEFT:
        light, full, modules = both_ways(sb, tmp_path, command_line(case, config))
        assert light == full, case
        taken = "safcm.master.cli" not in modules
        assert taken == (case in ANSWERED + ANSWERED_JSON), case
    # Seen from the light way: the jobs and the keys are there.
    (_, keys, _), _, _ = both_ways(sb, tmp_path, ["-c", config, "keys", "list"])
    assert "web1" in keys and "web2" in keys
    (_, jobs, _), _, _ = both_ways(sb, tmp_path, ["-c", config, "jobs", "list", "--host", "web2"])
    assert len(jobs.splitlines()) == 3  # the header, the jobs on '*' and on web2


def test_both_ways_say_the_same_without_a_daemon(history, tmp_path):
    sb = history
    sb.stop(sb.master)
    for case in (["keys", "list"], ["jobs", "list", "--json"], ["--version"]):
        light, full, _ = both_ways(sb, tmp_path, ["-c", sb.master.config, *case])
        assert light == full, case
    assert "not running" in light[2] or case == ["--version"]
    light, _, _ = both_ways(sb, tmp_path, ["-c", sb.master.config, "keys", "list"])
    assert light[0] == 2 and "the master daemon is not running" in light[2]


def test_the_light_commands_load_no_heavy_module(history, tmp_path):
    """Beyond what the interpreter loaded at start-up (in a checkout, the
    editable install's finder loads re and enum: the next test goes without)."""
    sb = history
    bare = set(sb.run([sys.executable, "-c", "import sys; print(*sys.modules)"]).stdout.split())
    # --host and --since check their values with common/ids.py and
    # common/settings.py, which load re, hashlib and datetime.
    plain = [a for a in ANSWERED if "--host" not in a and "--since" not in a]
    for case in [["--version"], *(command_line(a, sb.master.config) for a in plain)]:
        light, _, modules = both_ways(sb, tmp_path, case)
        assert light[0] == 0 and light[1], case
        assert loaded_heavy(sorted(set(modules) - bare)) == [], case
    # --json loads json (and re under it) and the JSON format, and still none
    # of the rest.
    light, _, modules = both_ways(sb, tmp_path, ["-c", sb.master.config, "keys", "list", "--json"])
    assert light[0] == 0
    assert {"json", "safcm.master.jsonout"} <= set(modules)
    assert not {"argparse", "typing", "msgpack", "cryptography", "yaml", "jinja2"} & set(modules)


def test_the_light_commands_run_on_the_start_up_modules_alone(history, tmp_path):
    """Without site-packages (python -S) and without the editable install's
    finder, which loads re and enum at start-up in a checkout: the safcm
    package alone, as a wheel lays it out. Anything more that the light
    commands imported would fail to import, or show in the list."""
    sb = history
    tree = tmp_path / "tree" / "safcm"
    tree.mkdir(parents=True)
    source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for package in ("common", "master"):
        (tree / package).symlink_to(os.path.join(source, package))
    env = {"PYTHONPATH": str(tree.parent), "PATH": os.environ["PATH"]}
    # What every interpreter has loaded once site ran (os, for one), not
    # loaded under -S.
    bare = sb.run([sys.executable, "-S", "-c", "import os, sys; print(*sys.modules)"])
    config = ["-c", sb.master.config]
    for case in (
        ["--version"],
        [*config, "keys", "list"],
        [*config, "jobs", "list", "--limit", "5"],
    ):
        result = subprocess.run(
            [sys.executable, "-S", "-c", LIGHT, str(tmp_path / "modules"), *case],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0 and result.stdout, (case, result.stderr)
        extra = set((tmp_path / "modules").read_text().splitlines()) - set(bare.stdout.split())
        outside = sorted(m for m in extra if not m.startswith("safcm"))
        # _socket and struct: the control socket, msgpack's floats; __future__:
        # the annotations.
        assert set(outside) <= {"_socket", "_struct", "struct", "__future__"}, (case, outside)
        assert not [m for m in extra if m in HEAVY], case
