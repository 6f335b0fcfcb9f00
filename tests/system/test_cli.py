"""The CLI against a real master: the light commands load no heavy module, and
the bash completion completes real command lines, with ids from the daemon."""

from __future__ import annotations

import json
import stat
import sys

import pytest

from safcm.master import modules
from safcm.master.sandbox import Sandbox, wait_for
from tests.system.conftest import SETTLE, enrol, jobs_show, run_json

# Runs safcm-master as its console script does, and writes the names of the
# modules loaded by the end (one a line) to the file named by its first argument.
WRAPPER = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def dump():
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
atexit.register(dump)
sys.argv[0] = "safcm-master"
runpy.run_module("safcm.master.cli", run_name="__main__", alter_sys=True)
"""

# What the light commands must not load, and why: the crypto, the templates,
# YAML, ZeroMQ, the job store's database and the wire's full schema are
# the daemon's and the compiler's business, and cost the CLI about 100 ms
# (bench/cli.py); dataclasses alone costs 7 ms. jsonschema and nacl are not
# used by safcm at all: a stray import of them would show here first.
HEAVY = (
    "cryptography",
    "nacl",
    "jinja2",
    "jsonschema",
    "yaml",
    "zmq",
    "sqlite3",
    "dataclasses",
    "safcm.common.protocol",
    "safcm.common.crypto",
    "safcm.common.model",
    "safcm.common.schema",
    "safcm.master.jobstore",
)

LIGHT = [
    ["--version"],
    ["--help"],
    ["keys", "list"],
    ["keys", "list", "--json"],
    ["jobs", "list"],
    ["jobs", "list", "--json", "--since", "1h", "--status", "ok"],
    ["completion", "hosts"],
    ["completion", "jids"],
]


def loaded(sb: Sandbox, tmp_path, *args: str) -> tuple[list[str], str]:
    out = tmp_path / "modules"
    result = sb.run([sys.executable, "-c", WRAPPER, str(out), "-c", sb.master.config, *args])
    assert result.returncode == 0, result.stderr
    return out.read_text().splitlines(), result.stdout


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY]


@pytest.fixture
def enrolled(sandbox):
    enrol(sandbox, "web1")
    code, doc = run_json(sandbox, "web1", "ping")
    assert code == 0
    return sandbox, doc["jid"]


def test_light_commands_load_no_heavy_module(enrolled, tmp_path):
    sb, jid = enrolled
    for args in LIGHT:
        modules, stdout = loaded(sb, tmp_path, *args)
        assert stdout, args
        assert heavy(modules) == [], args
    # The commands really asked the daemon.
    assert "web1" in loaded(sb, tmp_path, "keys", "list")[1]
    assert jid in loaded(sb, tmp_path, "jobs", "list")[1]


def test_a_ping_run_loads_no_heavy_module(enrolled, tmp_path):
    """`run` needs the modules' registry at its first result, not their
    wires: before, that loaded the protocol and the crypto behind it, about
    40 ms of a ping's CLI (common/modules' files import common/protocol)."""
    sb, _ = enrolled
    for args in (["run", "web1", "ping"], ["run", "web1", "ping", "--json"]):
        modules, stdout = loaded(sb, tmp_path, *args)
        assert "web1" in stdout, args
        assert heavy(modules) == [], args


def test_the_check_sees_a_heavy_command(enrolled, tmp_path):
    """The same check on `show`, which compiles the repository, finds YAML,
    Jinja2 and the model: the wrapper reports what a command loads."""
    modules, _ = loaded(enrolled[0], tmp_path, "show", "web1")
    assert {"yaml", "jinja2", "safcm.common.model"} <= set(heavy(modules))


# ---- bash completion ----

COMPLETE = """
source "$1"
shift
complete_line() {
    COMP_WORDS=("$@")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMPREPLY=()
    "$FUNCTION"
    ((${#COMPREPLY[@]})) && printf '%s\\n' "${COMPREPLY[@]}"
    echo "--"
}
while IFS= read -r line; do
    eval "complete_line $line"
done
"""


def complete(sb: Sandbox, tmp_path, command: str, lines: list[list[str]]) -> list[list[str]]:
    """COMPREPLY for each command line (its last word is the one completed), from
    the script `command completion bash` prints, sourced in bash."""
    module = {"safcm-master": "safcm.master.cli", "safcm-minion": "safcm.minion.cli"}[command]
    script = sb.run([sys.executable, "-m", module, "completion", "bash"])
    assert script.returncode == 0, script.stderr
    (tmp_path / "completion.bash").write_text(script.stdout)
    # COMP_WORDS[0] is the command as typed: the script asks it for ids.
    program = tmp_path / command
    program.write_text(f'#!/bin/sh\nexec {sys.executable} -m {module} "$@"\n')
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    quoted = "\n".join(
        " ".join("'" + w.replace("'", "'\\''") + "'" for w in [str(program), *line])
        for line in lines
    )
    function = "_" + command.replace("-", "_")
    result = _bash(sb, tmp_path, function, quoted)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    replies = result.stdout.split("--\n")[:-1]
    return [r.splitlines() for r in replies]


def _bash(sb: Sandbox, tmp_path, function: str, lines: str):
    (tmp_path / "lines").write_text(lines + "\n")
    (tmp_path / "complete.bash").write_text(f"FUNCTION={function}\n{COMPLETE}")
    return sb.run(
        [
            "bash",
            "-c",
            'exec bash "$0" "$1" < "$2"',
            str(tmp_path / "complete.bash"),
            str(tmp_path / "completion.bash"),
            str(tmp_path / "lines"),
        ]
    )


def test_bash_completion_of_safcm_master(enrolled, tmp_path):
    sb, jid = enrolled
    config = sb.master.config
    dead = tmp_path / "dead.yaml"
    dead.write_text(f"control_socket: {tmp_path}/nothing.sock\n")
    lines = [
        [""],
        ["k"],
        ["keys", ""],
        ["-c", config, "keys", "accept", ""],
        ["keys", "delete", "-c", config, "w"],
        ["-c", config, "run", "w"],
        ["-c", config, "run", "web1", ""],
        ["-c", config, "jobs", "show", ""],
        ["-c", config, "jobs", "list", "--host", ""],
        ["jobs", "list", "--status", "n"],
        ["jobs", "list", "--ho"],
        ["-c", str(dead), "run", ""],
        ["-c", str(dead), "jobs", "show", ""],
    ]
    assert complete(sb, tmp_path, "safcm-master", lines) == [
        ["daemon", "keys", "run", "jobs", "show", "check", "facts", "demo", "completion"],
        ["keys"],
        ["list", "accept", "reject", "delete", "fingerprint"],
        ["web1"],
        ["web1"],
        ["web1"],
        modules.names(),  # every registered module, and sync
        ["last", jid],
        ["web1"],
        ["no\\ response"],
        ["--host"],
        [],  # the daemon cannot be reached: nothing, and quietly
        [],
    ]


def test_bash_completion_of_safcm_minion(sandbox, tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "minion.yaml").write_text("")
    (etc / "master.yaml").write_text("")
    lines = [[""], ["daemon", "-"], ["check", "--c"], ["-c", str(etc / "mi")]]
    assert complete(sandbox, tmp_path, "safcm-minion", lines) == [
        ["daemon", "check", "fingerprint", "completion"],
        ["-h", "--help", "-c", "--config", "-v", "--verbose", "-q", "--quiet"],
        ["--config"],
        [str(etc / "minion.yaml")],
    ]


def test_the_script_is_what_the_readme_sources(sandbox):
    """`source <(safcm-master completion bash)` registers the function."""
    result = sandbox.run(
        [
            "bash",
            "-c",
            f"source <({sys.executable} -m safcm.master.cli completion bash) && complete -p"
            " safcm-master",
        ]
    )
    assert result.stdout.strip() == "complete -F _safcm_master safcm-master", result.stderr


@pytest.mark.parametrize("what", ["hosts", "jids"])
def test_completion_queries_are_quiet_without_a_daemon(sandbox, tmp_path, what):
    dead = tmp_path / "dead.yaml"
    dead.write_text(f"control_socket: {tmp_path}/nothing.sock\n")
    for config in (str(dead), str(tmp_path / "missing.yaml")):
        result = sandbox.run(
            [sys.executable, "-m", "safcm.master.cli", "-c", config, "completion", what]
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# ---- a closed output, arguments checked before sending, help examples ----

# Runs the command in argv[2:] with its stdout a pipe whose reader is gone
# already (as `| head -1` once it has its line), and exits with its code;
# argv[1] "buffered": as Python writes to a pipe unless PYTHONUNBUFFERED
# (set for the tests) says otherwise.
CLOSED_PIPE = """
import os, subprocess, sys
read_end, write_end = os.pipe()
os.close(read_end)
env = dict(os.environ)
if sys.argv[1] == "buffered":
    env.pop("PYTHONUNBUFFERED", None)
sys.exit(subprocess.run(sys.argv[2:], stdout=write_end, env=env).returncode)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["safcm.master.cli", "run", "web1", "ping"],
        ["safcm.master.cli", "run", "web1", "ping", "--json"],
        ["safcm.master.cli", "jobs", "show", "last"],
        ["safcm.master.cli", "jobs", "list"],
        ["safcm.master.cli", "keys", "list", "--json"],
        ["safcm.master.cli", "facts"],
        ["safcm.master.cli", "show", "web1"],
        ["safcm.master.cli", "check"],
        ["safcm.master.cli", "--help"],
        ["safcm.master.cli", "run", "--help"],
        # The console script's entry, which answers these itself.
        ["safcm.master.lightcli", "keys", "list"],
        ["safcm.master.lightcli", "jobs", "list", "--json"],
        ["safcm.master.lightcli", "--version"],
    ],
)
def test_a_closed_output_ends_the_command_quietly(enrolled, args):
    sb, _ = enrolled
    module, *words = args
    command = [sys.executable, "-m", module, "-c", sb.master.config, *words]
    if words == ["--version"]:
        command = [sys.executable, "-m", module, *words]
    for buffering in ("buffered", "unbuffered"):
        result = sb.run([sys.executable, "-c", CLOSED_PIPE, buffering, *command])
        assert (result.returncode, result.stderr) == (141, ""), (args, buffering)


def test_a_run_whose_output_closed_goes_on(enrolled):
    sb, first = enrolled
    command = [sys.executable, "-m", "safcm.master.cli", "-c", sb.master.config]
    result = sb.run(
        [sys.executable, "-c", CLOSED_PIPE, "buffered", *command, "run", "web1", "ping"]
    )
    assert result.returncode == 141
    jobs = sb.cli("jobs", "list", "--json")
    [job, _] = json.loads(jobs.stdout)["jobs"]
    assert job["jid"] > first
    wait_for(lambda: jobs_show(sb, job["jid"])["hosts"][0]["status"] == "ok", SETTLE, "the job")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "accept", "Web1"], "minion ids are lower case: did you mean 'web1'?"),
        (["keys", "delete", "web 1"], "'web 1' is not a minion id or pattern"),
        (["facts", "Web*"], "minion ids are lower case: did you mean 'web*'?"),
        (["run", "x" * 5000, "ping"], "TARGET is at most 4096 characters, this one has 5000"),
        (["run", "web1", "ping", "--timeout", "90d"], "argument --timeout: must be from 1 s"),
        (["jobs", "list", "--limit", "9" * 20], "--limit must be from 1 to 10000, got 9999"),
        (["jobs", "list", "--limit", "0"], "--limit must be from 1 to 10000, got 0"),
        (["jobs", "list", "--user", "u" * 300], "--user must be 1 to 256 characters"),
        (["jobs", "list", "--target", "t" * 5000], "--target must be 1 to 4096 characters"),
        (["jobs", "list", "--since", "100000w"], "--since: '100000w' is before 1970"),
    ],
)
def test_bad_arguments_are_named_before_anything_is_sent(sandbox, args, message):
    # No daemon runs: each is refused by the CLI itself, in words, whichever
    # way the command line is read (the console script answers jobs list).
    for module in ("safcm.master.cli", "safcm.master.lightcli"):
        result = sandbox.run([sys.executable, "-m", module, "-c", sandbox.master.config, *args])
        assert result.returncode == 2, (module, result)
        assert message in result.stderr, (module, result.stderr)
        assert "invalid request" not in result.stderr and "not running" not in result.stderr


# The commands whose `--json | jq` examples run against the enrolled sandbox,
# with what each prints there (None: anything but null).
JQ_EXAMPLES = {
    ("keys", "list"): "web1\n",
    ("jobs", "show"): '"ok"\n',
    ("show",): None,
    ("check",): None,
    ("facts",): None,
}


def test_the_json_examples_of_the_help_work(enrolled):
    sb, _ = enrolled
    examples = []
    for words in JQ_EXAMPLES:
        result = sb.run([sys.executable, "-m", "safcm.master.cli", *words, "--help"])
        lines = [line.strip() for line in result.stdout.splitlines()]
        examples += [(words, line) for line in lines if "--json | jq" in line]
    assert {words for words, _ in examples} == set(JQ_EXAMPLES)
    safcm_master = f"{sys.executable} -m safcm.master.cli -c {sb.master.config}"
    for words, example in examples:
        command = example.replace("safcm-master", safcm_master, 1)
        result = sb.run(["bash", "-o", "pipefail", "-c", command])
        assert result.returncode == 0, (example, result.stderr)
        assert "null" not in result.stdout.splitlines(), example
        if JQ_EXAMPLES[words] is not None:
            assert result.stdout == JQ_EXAMPLES[words], example
