"""minion.yaml: the id a minion takes without one, `modules:` (a list, never
empty by accident), the root checked at start-up, and the shipped example."""

from __future__ import annotations

import os
import re

import pytest

from safcm.common import modules as wire
from safcm.common.errors import ConfigError, FileOpError
from safcm.common.settings import BadValue
from safcm.minion import cli, daemon, fileops, modules, settings

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
REQUIRED = "master: 127.0.0.1\ntrust_first_master: true\n"


def parse(extra: str) -> settings.MinionSettings:
    return settings.parse(f"id: web1\n{REQUIRED}{extra}")


def write_settings(tmp_path, extra: str) -> str:
    path = tmp_path / "minion.yaml"
    path.write_text(f"id: web1\n{REQUIRED}state_dir: {tmp_path / 'state'}\n{extra}")
    return str(path)


# ---- id: the host's names, never one that every host has ----


@pytest.mark.parametrize(
    ("fqdn", "hostname", "expected"),
    [
        ("web1.example.org", "web1", "web1.example.org"),
        ("Web1.Example.ORG.", "web1", "web1.example.org"),
        # /etc/hosts: "127.0.0.1 localhost web1" makes getfqdn() say localhost.
        ("localhost", "web1", "web1"),
        ("localhost.localdomain", "Web1", "web1"),
        ("ip6-localhost", "web1", "web1"),
        ("", "web1", "web1"),
        ("web_1 bad", "web1", "web1"),
    ],
)
def test_the_default_id_is_the_fqdn_else_the_host_name(fqdn, hostname, expected):
    assert settings.default_id(lambda: fqdn, lambda: hostname) == expected


@pytest.mark.parametrize(("fqdn", "hostname"), [("localhost", "localhost"), ("localhost", "")])
def test_a_host_known_only_as_localhost_must_set_its_id(fqdn, hostname):
    with pytest.raises(BadValue, match=r"; set id: in minion\.yaml"):
        settings.default_id(lambda: fqdn, lambda: hostname)


def test_without_a_usable_name_the_settings_are_refused(monkeypatch):
    monkeypatch.setattr(settings.socket, "getfqdn", lambda: "localhost")
    monkeypatch.setattr(settings.socket, "gethostname", lambda: "localhost")
    with pytest.raises(ConfigError) as info:
        settings.parse(REQUIRED)
    message = str(info.value)
    assert "minion.yaml: id: not set, and this host's names cannot be used" in message
    assert "'localhost' (a name of the loopback address" in message
    monkeypatch.setattr(settings.socket, "gethostname", lambda: "db2")
    assert settings.parse(REQUIRED).id == "db2"


# ---- modules: ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", set(modules.MODULES)),  # the key left out: every module
        ("modules: [files, ping]\n", {"files", "ping"}),
        ("modules:\n  - files\n  - services\n", {"files", "services"}),
        ("modules: files, ping\n", {"files", "ping"}),
        ("modules: ping\n", {"ping"}),
        ("modules: []\n", set()),  # none, said so
    ],
)
def test_modules_as_a_list_or_on_one_line(text, expected):
    assert parse(text).modules == expected


@pytest.mark.parametrize("value", ['""', "", "null", "~", "''"])
def test_an_empty_modules_value_is_an_error_not_every_module(value):
    with pytest.raises(ConfigError) as info:
        parse(f"log_level: info\nmodules: {value}\n")
    (problem,) = info.value.problems
    assert (problem.file, problem.line) == ("minion.yaml", 5)
    assert problem.message.startswith("modules: empty; list the modules this minion accepts")
    assert "modules: [] to accept none" in problem.message
    assert "leave the key out to accept every one" in problem.message


def test_an_unknown_module_in_a_list_is_named():
    with pytest.raises(ConfigError, match="modules: expected module names"):
        parse("modules: [files, shell]\n")


def test_check_prints_the_modules_it_accepts_and_whether_sync_runs(tmp_path, capsys):
    path = write_settings(tmp_path, f"root: {tmp_path}\nmodules: [ping, files]\n")
    assert cli.main(["-c", path, "check"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "accepts modules: files, ping; sync is refused here: it needs packages, services" in out
    path = write_settings(tmp_path, f"root: {tmp_path}\n")
    assert cli.main(["-c", path, "check"]) == cli.EXIT_OK
    every = ", ".join(modules.MODULES)
    assert f"accepts modules: {every}; sync runs here" in capsys.readouterr().out


def test_the_shipped_example_of_modules_runs_sync_and_not_cmd():
    with open(os.path.join(CONFIGS, "minion.yaml"), encoding="utf-8") as f:
        (example,) = re.findall(r"^# (modules: .*)$", f.read(), re.MULTILINE)
    accepted = parse(example + "\n").modules
    assert modules.refusal(wire.SYNC, wire.sync_steps(), accepted) is None
    assert "cmd" not in accepted  # what the example is for


# ---- root: checked at start-up, as the engine opens it ----


def roots(tmp_path) -> dict[str, str]:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    names = ("dir", "file", "link", "dangling", "missing")
    return {name: str(tmp_path / name) for name in names}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("dir", None),
        # The root is the administrator's setting: a link to a directory is
        # followed, by the engine too (minion/fileops.py _open_root).
        ("link", None),
        ("file", "cannot open the root directory: Not a directory"),
        ("dangling", "cannot open the root directory: No such file or directory"),
        ("missing", "cannot open the root directory: No such file or directory"),
    ],
)
def test_the_root_check_agrees_with_the_engine(tmp_path, name, problem):
    root = roots(tmp_path)[name]
    assert settings.root_problem(root) == problem
    try:
        os.close(fileops._open_root(root))
    except FileOpError as e:
        assert problem == e.reason
    else:
        assert problem is None


@pytest.mark.parametrize("command", ["check", "daemon"])
def test_an_unusable_root_stops_check_and_the_daemon_with_exit_2(
    tmp_path, capsys, monkeypatch, command
):
    started = []
    monkeypatch.setattr(daemon, "main", started.append)  # a daemon that would run on
    path = write_settings(tmp_path, "root: /nonexistent/safcm-root\n")
    assert cli.main(["-c", path, command]) == cli.EXIT_USAGE
    assert started == []
    err = capsys.readouterr().err
    assert "safcm-minion: configuration error:" in err
    assert (
        f"{path}: root: /nonexistent/safcm-root: cannot open the root directory: "
        "No such file or directory"
    ) in err
