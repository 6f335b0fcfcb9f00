"""`safcm-master run TARGET cmd -- COMMAND` against real minions: exit status,
output, timeouts, caps, escaping, --shell, refusal by `modules:`, history."""

from __future__ import annotations

import json
import os

from safcm.common.modules.cmd import OUTPUT_MAX
from safcm.master.sandbox import wait_for
from tests import schemas
from tests.procs import alive
from tests.system.conftest import by_host, enrol, jobs_show, run_json


def cmd_json(sb, target: str, *args: str) -> tuple[int, dict]:
    """`run TARGET cmd ARGS` with --json before the "--" of ARGS, so that
    it is not taken for an argument of the command."""
    cut = args.index("--")
    result = sb.cli("run", target, "cmd", *args[:cut], "--json", *args[cut:])
    assert result.stdout, f"no output (exit {result.returncode}): {result.stderr}"
    return result.returncode, schemas.loads(result.stdout, "run")


def cmd_result(doc: dict, host: str) -> dict:
    return by_host(doc)[host]["result"]["cmd"]


def test_a_command_runs_on_every_host_and_is_kept_in_the_history(sandbox):
    enrol(sandbox, "web1", "web2")
    code, doc = cmd_json(sandbox, "web*", "--", "sh", "-c", 'echo "out $0"; echo err >&2')
    assert code == 0
    assert doc["module"] == "cmd" and doc["summary"]["ok"] == 2
    for host in ("web1", "web2"):
        result = cmd_result(doc, host)
        assert result["status"] == "ok" and result["exit_code"] == 0
        assert (result["stdout"], result["stderr"]) == ("out sh\n", "err\n")
        assert result["duration"] >= 0 and result["argv"][0] == "sh"
    # cmd reads the repository for its targets only: no file is made.
    assert os.listdir(sandbox.root("web1")) == []

    human = sandbox.cli("run", "web1", "cmd", "--", "id", "-u")
    assert human.returncode == 0, human.stderr
    assert "$ id -u" in human.stdout and "exit 0" in human.stdout
    assert f"        {os.getuid()}\n" in human.stdout
    assert "1 ok" in human.stdout

    shown = jobs_show(sandbox, doc["jid"])
    assert shown["module"] == "cmd"
    assert cmd_result(shown, "web2")["stdout"] == "out sh\n"
    human = sandbox.cli("jobs", "show", doc["jid"])
    assert human.returncode == 0 and "stdout:" in human.stdout and "out sh" in human.stdout
    listed = sandbox.cli("jobs", "list", "--module", "cmd", "--json")
    assert [j["jid"] for j in json.loads(listed.stdout)["jobs"]] == [
        json.loads(sandbox.cli("jobs", "show", "last", "--json").stdout)["jid"],
        doc["jid"],
    ]


def test_a_failing_command_fails_the_run(sandbox):
    enrol(sandbox, "web1")
    code, doc = cmd_json(sandbox, "web1", "--", "sh", "-c", "echo no >&2; exit 3")
    assert code == 1
    assert by_host(doc)["web1"]["status"] == "failed"
    result = cmd_result(doc, "web1")
    assert (result["status"], result["exit_code"], result["stderr"]) == ("failed", 3, "no\n")
    human = sandbox.cli("run", "web1", "cmd", "--", "/nonexistent/tool")
    assert human.returncode == 1
    assert "not started: cannot run /nonexistent/tool: No such file or directory" in human.stdout


def test_a_timeout_kills_the_command_and_is_reported(sandbox, tmp_path):
    enrol(sandbox, "web1")
    pidfile = tmp_path / "child.pid"
    # The child ignores SIGTERM; the whole process group is killed all the same.
    script = f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; exec sleep 600' & wait"
    code, doc = cmd_json(sandbox, "web1", "--timeout", "2", "--shell", "--", script)
    assert code == 1
    result = cmd_result(doc, "web1")
    assert result["status"] == "timed out" and result["signal"] == "SIGKILL"
    assert result["timeout"] == 2.0
    child = int(pidfile.read_text())
    wait_for(lambda: not alive(child), 10.0, f"process {child} to die")  # SIGKILL lands
    human = sandbox.cli("jobs", "show", doc["jid"])
    assert "timed out after 2 s: killed with its process group" in human.stdout


def test_huge_output_is_capped_and_says_so(sandbox):
    enrol(sandbox, "web1")
    size = 5 * OUTPUT_MAX
    code, doc = cmd_json(sandbox, "web1", "--", "head", "-c", str(size), "/dev/zero")
    assert code == 0
    result = cmd_result(doc, "web1")
    assert len(result["stdout"]) == OUTPUT_MAX
    assert result["stdout_omitted"] == size - OUTPUT_MAX
    human = sandbox.cli("run", "web1", "cmd", "--", "seq", "1", "200000")
    assert human.returncode == 0
    printed = sum(len(str(i)) + 1 for i in range(1, 200001))
    assert f"(truncated, {printed - OUTPUT_MAX} bytes more)" in human.stdout


def test_escape_sequences_are_escaped_when_shown_and_intact_in_json(sandbox):
    enrol(sandbox, "web1")
    evil = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\r\n"
    argv = ["printf", evil.replace("\x1b", "\\033").replace("\x07", "\\007").replace("\r", "\\r")]
    code, doc = cmd_json(sandbox, "web1", "--", *argv)
    assert code == 0
    assert cmd_result(doc, "web1")["stdout"] == evil
    human = sandbox.cli("run", "web1", "cmd", "--", *argv)
    assert human.returncode == 0
    assert "\x1b" not in human.stdout and "\x07" not in human.stdout and "\r" not in human.stdout
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mred\n" in human.stdout


def test_shell_runs_the_command_with_sh_c(sandbox):
    enrol(sandbox, "web1")
    code, doc = cmd_json(sandbox, "web1", "--shell", "--", "echo $HOME $LANG", "|", "wc -w")
    assert code == 0
    result = cmd_result(doc, "web1")
    assert result["argv"] == ["/bin/sh", "-c", "echo $HOME $LANG | wc -w"]
    assert result["stdout"] == "2\n"
    # Without --shell, nothing is expanded.
    code, doc = cmd_json(sandbox, "web1", "--", "echo", "$HOME", "|")
    assert code == 0 and cmd_result(doc, "web1")["stdout"] == "$HOME |\n"


def test_dry_run_runs_nothing(sandbox, tmp_path):
    enrol(sandbox, "web1")
    made = tmp_path / "made"
    code, doc = cmd_json(sandbox, "web1", "--dry-run", "--", "touch", str(made))
    assert code == 0
    result = cmd_result(doc, "web1")
    assert result["status"] == "would run" and result["argv"] == ["touch", str(made)]
    assert not made.exists()
    human = sandbox.cli("run", "web1", "cmd", "--dry-run", "--", "touch", str(made))
    assert f"$ touch {made}" in human.stdout and "would run" in human.stdout
    assert not made.exists()


def test_a_minion_without_cmd_in_its_modules_refuses_it(sandbox, tmp_path):
    enrol(sandbox, "web1", modules="files, ping")
    made = tmp_path / "made"
    code, doc = cmd_json(sandbox, "web1", "--", "touch", str(made))
    assert code == 1
    result = by_host(doc)["web1"]["result"]
    assert result["status"] == "error" and result["cmd"] is None
    assert result["error"] == "this minion does not accept module cmd (minion.yaml modules:)"
    assert not made.exists()
    human = sandbox.cli("run", "web1", "cmd", "--", "touch", str(made))
    assert "this minion does not accept module cmd (minion.yaml modules:)" in human.stdout
    assert run_json(sandbox, "web1", "ping")[0] == 0


def test_usage_errors(sandbox):
    enrol(sandbox, "web1")
    for args, message in [
        (["cmd"], "cmd needs a command"),
        (["files", "--", "ls"], "a command is for cmd only, not for files"),
        (["ping", "--shell"], "--shell is for cmd only, not for ping"),
    ]:
        result = sandbox.cli("run", "web1", *args)
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)
