"""admin_group with the shipped defaults: a member of the group uses the CLI
through the control socket in state_dir, and passing through state_dir reads
nothing of what is in it."""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

import pytest

from safcm.master import lightcli
from tests.system.conftest import enrol


@pytest.fixture
def admin() -> Iterator[tuple[str, str]]:
    """A user that is a member of a new group (not its primary one), both
    removed at the end: an administrator and the admin group."""
    name = f"safcm-t{os.getpid()}"
    subprocess.run(["groupadd", name], check=True)
    try:
        subprocess.run(
            ["useradd", "-M", "-N", "-g", "nogroup", "-G", name, "-s", "/usr/sbin/nologin", name],
            check=True,
        )
        try:
            yield name, name
        finally:
            subprocess.run(["userdel", name], check=True, capture_output=True)
    finally:
        subprocess.run(["groupdel", name], check=True)


@pytest.fixture
def var_lib() -> Iterator[str]:
    """A directory anyone may pass through, as /var/lib, for the state_dir."""
    path = tempfile.mkdtemp(prefix="safcm-lib-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_user(user: str, work: Callable[[], int]) -> tuple[int, str, str]:
    """Run `work` in a forked child as `user`, with its groups: its exit
    code, stdout and stderr. Forked, because the interpreter and the
    standard library are under /root, which only root may pass through: the
    child uses what the parent has loaded."""
    entry = pwd.getpwnam(user)
    groups = os.getgrouplist(user, entry.pw_gid)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False))
                sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False))
                os.setgroups(groups)
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
                code = work()
            except BaseException as e:
                print(f"child as {user}: {e!r}", file=sys.stderr)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(child, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()


def test_a_member_of_admin_group_uses_the_cli_with_the_default_socket(sandbox, admin, var_lib):
    user, group = admin
    state_dir = os.path.join(var_lib, "safcm-master")
    sandbox.configure_master(state_dir=state_dir, admin_group=group)
    enrol(sandbox, "web1")
    # The settings readable by all, as /etc/safcm/master.yaml is.
    config = os.path.join(var_lib, "master.yaml")
    shutil.copy(sandbox.master.config, config)
    os.chmod(config, 0o644)
    argv = ["-c", config, "keys", "list", "--json"]
    with contextlib.redirect_stdout(io.StringIO()):  # loads what the child will use
        assert lightcli.main(argv) == 0

    code, out, err = as_user(user, lambda: lightcli.main(argv))
    assert code == 0, err
    assert [k["host"] for k in json.loads(out)["keys"]] == ["web1"]

    # It passes through state_dir, and reads nothing in it.
    st = os.stat(state_dir)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o710, grp.getgrnam(group).gr_gid)

    def reads() -> int:
        for path in ("master.db", "keys/private.key", "daemon.lock", "."):
            with contextlib.suppress(PermissionError):
                if path == ".":
                    os.listdir(state_dir)
                else:
                    open(os.path.join(state_dir, path), "rb").close()
                print(f"read {path}")
        return 0

    assert as_user(user, reads) == (0, "", "")

    # Anyone else is told which directory stops them: not the daemon's refusal.
    code, out, err = as_user("nobody", lambda: lightcli.main(argv[:-1]))
    assert code == 2 and out == ""
    assert f"permission denied on {state_dir}, a directory on the way to the control socket" in err
