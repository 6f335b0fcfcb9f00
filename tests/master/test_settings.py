"""master.yaml: every key parsed, every bad key or value named with its line."""

import pytest

from safcm.common.errors import ConfigError
from safcm.master import settings


def test_defaults():
    s = settings.parse("")
    assert (s.interface, s.publish_port, s.return_port) == ("0.0.0.0", 4505, 4506)
    assert s.auto_accept is False
    assert s.keep_jobs == 90 * 86400
    assert s.control_path == "/var/lib/safcm-master/control.sock"


def test_all_keys():
    s = settings.parse(
        "interface: 127.0.0.1\npublish_port: 5505\nreturn_port: 5506\n"
        "state_dir: /srv/state/\nconfig_dir: /srv/config\nauto_accept: true\n"
        "job_timeout: 2m\nkeep_jobs: 12h\nadmin_group: wheel\n"
        "control_socket: /run/safcm.sock\nlog_level: DEBUG\n"
    )
    assert s.state_dir == "/srv/state"
    assert (s.job_timeout, s.keep_jobs) == (120.0, 43200.0)
    assert s.admin_group == "wheel" and s.control_path == "/run/safcm.sock"
    assert s.log_level == "debug" and s.auto_accept is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("publish_port: 70000\n", "master.yaml:1: publish_port: must be a TCP port"),
        ("publish_port: -1\n", "publish_port: must be a TCP port"),
        ("publish_port: [1]\n", "publish_port: must be a single value, not a list"),
        ("auto_accept: yes\n", "auto_accept: must be true or false, got 'yes'"),
        ("\nauto_accept: yes please\n", "master.yaml:2: auto_accept: must be true or false"),
        ("job_timeout: soon\n", "job_timeout: must be a duration"),
        ("job_timeout: 0\n", "job_timeout: must be longer than zero"),
        ("job_timeout: 0.5\n", "job_timeout: must be from 1 s to 86395 s"),
        ("job_timeout: 24h\n", "job_timeout: must be from 1 s to 86395 s (23h 59m 55s)"),
        ("job_timeout: 2d\n", "envelope lives at most 24 hours, 5 s of them past the job's"),
        ("state_dir: var/lib\n", "state_dir: must be an absolute path"),
        ("interface: example.org\n", "interface: must be an IP address"),
        ("admin_group: 'Bad Group'\n", "admin_group: must be a Unix group name"),
        ("retrun_port: 1\n", "retrun_port: unknown key"),
        ("publish_port: 1\npublish_port: 2\n", "master.yaml:2: duplicate key 'publish_port'"),
        ("publish_port: 4506\n", "publish_port, return_port and key_port must differ"),
        ("- a\n- b\n", "must be a mapping"),
        ("a: [\n", "YAML syntax error"),
    ],
)
def test_bad_settings_are_named(text, message):
    with pytest.raises(ConfigError) as info:
        settings.parse(text)
    assert message in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        settings.parse("publish_port: x\nreturn_port: y\nfoo: 1\n")
    assert len(info.value.problems) == 3


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        settings.load(str(tmp_path / "nope.yaml"))


def test_empty_value_keeps_the_default():
    s = settings.parse("admin_group:\njob_timeout: null\n")
    assert s.admin_group is None and s.job_timeout == 60


def test_the_longest_job_timeout_fits_an_envelope():
    assert settings.parse("job_timeout: 86395\n").job_timeout == 86395


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("admin_group: nosuchgroup\n", "admin_group: there is no group 'nosuchgroup'"),
        ("state_dir: {file}\n", "state_dir: {file} exists and is not a directory"),
        ("state_dir: {file}/sub\n", "state_dir: {file}/sub is not a directory"),
        ("state_dir: /{long}\n", "state_dir: the control socket /{long}/control.sock is longer"),
        ("control_socket: {tmp}/none/c.sock\n", "control_socket: the directory {tmp}/none does"),
        ("control_socket: {file}\n", "control_socket: {file} exists and is not a socket"),
    ],
)
def test_what_the_daemon_cannot_start_with_is_named(tmp_path, text, message):
    names = {"tmp": str(tmp_path), "file": str(tmp_path / "file"), "long": "x" * 100}
    (tmp_path / "file").write_text("")
    parsed = settings.parse(text.format(**names), "m.yaml")
    with pytest.raises(ConfigError) as info:
        settings.check_startup(parsed, "m.yaml")
    [problem] = info.value.problems
    assert (problem.file, problem.line) == ("m.yaml", None)
    assert message.format(**names) in problem.message


def test_settings_the_daemon_can_start_with_pass(tmp_path):
    text = (
        f"state_dir: {tmp_path}/new/state\ncontrol_socket: {tmp_path}/c.sock\nadmin_group: root\n"
    )
    assert settings.startup_problems(settings.parse(text), "m.yaml") == []
