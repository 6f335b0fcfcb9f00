"""The light commands' shortcut (master/lightcli.py) takes only what it is sure
of: a command line it accepts is read by argparse the same way, and a
settings file it reads gives the full reader's control socket. Everything
else it leaves to the full command line."""

from __future__ import annotations

import argparse
import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from safcm.common.errors import ConfigError
from safcm.common.lightwire import DEFAULT_LIST_LIMIT, JOB_OUTCOMES
from safcm.master import cli, lightcli, settings
from safcm.master.settings import MasterSettings

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def test_the_restated_defaults_are_the_settings_defaults():
    defaults = MasterSettings()
    assert lightcli.DEFAULT_CONFIG_PATH == settings.DEFAULT_CONFIG_PATH
    assert defaults.state_dir == lightcli._DEFAULT_STATE_DIR
    assert {k: getattr(defaults, k) for k in lightcli._DEFAULT_PORTS} == lightcli._DEFAULT_PORTS
    assert lightcli.plain_control_path("") == defaults.control_path
    # A key the light reader does not know sends the file the full way: slower, never wrong.
    assert set(lightcli._SURE) <= set(settings._FIELDS)


def test_the_example_settings_take_the_light_way():
    with open(os.path.join(CONFIGS, "master.yaml")) as f:
        text = f.read()
    assert lightcli.plain_control_path(text) == settings.parse(text).control_path


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def test_the_light_options_are_the_full_parsers():
    for (command, action), options in lightcli._COMMANDS.items():
        parser = subparser(subparser(cli.build_parser(), command), action)
        by_name = {o: a for a in parser._actions for o in a.option_strings}
        for name, takes_value in options.items():
            assert (by_name[name].nargs != 0) == takes_value, name
    jobs = subparser(subparser(cli.build_parser(), "jobs"), "list")
    choices = {a.dest: a.choices for a in jobs._actions}
    assert set(lightcli._MODULES) <= set(choices["module"])
    assert tuple(choices["status"]) == JOB_OUTCOMES


# ---- the command line: what the shortcut accepts, argparse reads alike ----

WORDS = [
    "keys",
    "jobs",
    "list",
    "show",
    "run",
    "last",
    "web1",
    "-c",
    "--config",
    "--config=/etc/x.yaml",
    "--conf",
    "-c/x.yaml",
    "/x.yaml",
    "--json",
    "--js",
    "--json=1",
    "--host",
    "--host=web2",
    "--target",
    "--target=*",
    "--limit",
    "--limit=3",
    "5",
    "0",
    "-1",
    "+2",
    "--since",
    "--since=1h",
    "1h",
    "--until",
    "--module",
    "files",
    "nope",
    "--status",
    "ok",
    "no response",
    "--user",
    "root",
    "-h",
    "--help",
    "--version",
    "--",
    "-",
    "",
]


def full_parse(argv: list[str]) -> argparse.Namespace | None:
    """What master/cli.py's parser makes of argv; None if it refuses or exits."""
    try:
        return cli.build_parser().parse_args(argv)
    except cli._ArgumentError:
        return None
    except SystemExit:  # --help, --version
        return None


words = st.lists(st.sampled_from(WORDS), max_size=4)
# Most lines around a light command, where the mistakes would be.
around_a_command = st.builds(
    lambda before, command, middle, after: [*before, command[0], *middle, command[1], *after],
    words,
    st.sampled_from([("keys", "list"), ("jobs", "list"), ("jobs", "show")]),
    st.lists(st.sampled_from(WORDS), max_size=2),
    words,
)


@given(words | around_a_command)
@example(["-c", "/x.yaml", "keys", "list"])
@example(["keys", "-c", "/x.yaml", "list", "--json"])
@example(["jobs", "list", "--limit", "5", "--since", "1h", "--status", "no response"])
@example(["jobs", "list", "--host", "web1", "--config=/x.yaml", "--module", "files"])
@example(["keys", "list", "--json=1"])
@example(["jobs", "list", "--limit", "-1"])
@example(["jobs", "list", "--user", "--json"])
@example(["-c", "--json", "keys", "list"])
@example(["keys", "list", "-c", "/x.yaml", "--config", "/y.yaml"])
def test_a_command_line_taken_is_read_as_argparse_reads_it(argv):
    line = lightcli.read_command_line(argv)
    if line is None:
        return
    args = full_parse(argv)
    assert args is not None, argv
    config, (command, action), options = line
    assert (args.command, args.action, args.config) == (command, action, config)
    for name, takes_value in lightcli._COMMANDS[(command, action)].items():
        value = getattr(args, name[2:])
        if not takes_value:
            assert value == (name in options), name
        elif name == "--limit":
            assert value == int(options.get(name, DEFAULT_LIST_LIMIT)), name
        else:
            assert value == options.get(name), name


def test_the_light_command_lines_are_taken():
    for argv in (
        ["keys", "list"],
        ["-c", "/x.yaml", "jobs", "list", "--json", "--since", "2h", "--limit=50"],
        ["jobs", "list", "--host", "web1", "-c", "/x.yaml"],
    ):
        assert lightcli.read_command_line(argv) is not None, argv


# ---- the settings: a file the shortcut reads, the full reader reads alike ----

LINES = [
    "",
    "# a comment",
    "   # indented comment",
    "state_dir: /srv/safcm",
    "state_dir: /srv//safcm/./x/",
    "state_dir: srv",
    "state_dir:",
    "state_dir: null",
    "state_dir: ~",
    "control_socket: /run/safcm/control.sock",
    "control_socket: /run/safcm/../c.sock",
    "control_socket: 'quoted'",
    "control_socket:/run/x",
    "config_dir: /etc/safcm/config # trailing",
    "config_dir: /etc/safcm/config#no",
    "interface: 0.0.0.0",
    "interface: 127.0.0.1",
    "interface: 01.2.3.4",
    "interface: 256.1.1.1",
    "interface: ::1",
    "interface: 10.0.1",
    "interface: 10.0.0.1.5",
    "interface: localhost",
    "publish_port: 4505",
    "publish_port: 4506",
    "return_port: 4505",
    "key_port: 0",
    "key_port: 65536",
    "key_port: 5000",
    "max_connections: 1",
    "max_connections: 0",
    "result_quota: 256M",
    "result_quota: 2GiB",
    "result_quota: 0K",
    "result_quota: 5 MB",
    "result_quota: 1kb",
    "result_quota: 3T",
    "auto_accept: true",
    "auto_accept: False",
    "auto_accept: yes",
    "job_timeout: 60",
    "job_timeout: 2.5m",
    "job_timeout: 0",
    "job_timeout: 5M",
    "job_timeout: .5",
    "job_timeout: 0.5",
    "job_timeout: 86395",
    "job_timeout: 86396",
    "job_timeout: 24h",
    "job_timeout: 2d",
    "keep_jobs: 90d",
    "keep_jobs: 2w",
    "admin_group: safcm-admin",
    "admin_group: Admins",
    "admin_group: " + "a" * 33,
    "log_level: DEBUG",
    "log_level: verbose",
    "unknown_key: 1",
    "Log_level: info",
    "log_level: info:",
    "log_level: [info]",
    "\tlog_level: info",
    "log_level: info\r",
    "state_dir: /caf\u00e9",
]


def check_taken_settings(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    path = lightcli.plain_control_path(text)
    if path is None:
        return
    try:
        full = settings.parse(text)
    except ConfigError as e:
        pytest.fail(f"the light reader took settings the full one refuses: {e}")
    assert path == full.control_path


@pytest.mark.parametrize("line", LINES)
def test_each_setting_taken_is_read_as_the_full_reader_reads_it(line):
    check_taken_settings([line])


@given(st.lists(st.sampled_from(LINES), max_size=8))
@example(["state_dir: /srv/safcm", "control_socket: /run/x.sock"])
@example(["publish_port: 4506"])
@example(["publish_port: 4506", "return_port: 4505"])
def test_settings_taken_are_read_as_the_full_reader_reads_them(lines):
    check_taken_settings(lines)


def test_settings_beyond_the_plain_form_go_the_full_way():
    for text in (
        "state_dir: '/srv/x'\n",  # quoted
        "state_dir: /a\nstate_dir: /b\n",  # twice
        "publish_port: 4506\n",  # the same as return_port's default
        "color: blue\n",
    ):
        assert lightcli.plain_control_path(text) is None, text
