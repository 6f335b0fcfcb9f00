"""The cmd module on the minion: the planner (pure) and the executor, with
real processes."""

from __future__ import annotations

from safcm.common.modules.cmd import OUTPUT_MAX, CmdStatus
from safcm.master.sandbox import wait_for
from safcm.minion.modules import cmd
from tests.procs import alive


def fields(*argv: str, shell: bool = False, timeout: float = 20.0) -> dict:
    return {"cmd": {"argv": list(argv), "shell": shell, "timeout": timeout}}


def test_the_plan_runs_the_argv_without_a_shell_in_a_minimal_environment():
    plan = cmd.invocation(fields("ls", "-l", "$HOME; rm -rf /"), "/root")
    assert plan.argv == ["ls", "-l", "$HOME; rm -rf /"]  # no shell sees it
    assert plan.env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
    }
    assert plan.cwd == "/"
    assert plan.timeout == 20.0


def test_with_shell_the_arguments_are_one_sh_c_command():
    plan = cmd.invocation(fields("echo $HOME", "|", "wc -c", shell=True), "/root")
    assert plan.argv == ["/bin/sh", "-c", "echo $HOME | wc -c"]


def test_exit_status_output_and_environment():
    result = cmd.run_invocation(
        cmd.invocation(fields("/bin/sh", "-c", "pwd; env | sort; echo err >&2; exit 3"), "/h")
    )
    assert result["status"] == CmdStatus.FAILED and result["exit_code"] == 3
    assert result["stdout"] == "/\nHOME=/h\nLANG=C.UTF-8\nPATH=" + cmd.TRIGGER_PATH + "\nPWD=/\n"
    assert result["stderr"] == "err\n"
    assert result["signal"] is None and result["error"] is None


def test_output_is_capped_and_counted():
    size = OUTPUT_MAX + 12345
    result = cmd.run_invocation(cmd.invocation(fields("head", "-c", str(size), "/dev/zero"), "/"))
    assert result["status"] == CmdStatus.OK
    assert len(result["stdout"]) == OUTPUT_MAX
    assert result["stdout_omitted"] == 12345


def test_a_command_that_does_not_exist_is_not_started():
    result = cmd.run_invocation(cmd.invocation(fields("/nonexistent/tool"), "/"))
    assert result["status"] == CmdStatus.NOT_STARTED
    assert "No such file or directory" in result["error"]


def test_a_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    # A child that ignores SIGTERM, in the background, and a parent that waits.
    script = f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; exec sleep 600' & wait"
    result = cmd.run_invocation(cmd.invocation(fields(script, shell=True, timeout=1.0), "/"))
    assert result["status"] == CmdStatus.TIMED_OUT
    assert result["signal"] == "SIGKILL" and result["exit_code"] is None
    child = int(pidfile.read_text())
    # SIGKILL cannot be ignored; it may take a moment to land.
    wait_for(lambda: not alive(child), 10.0, f"process {child} to die")
