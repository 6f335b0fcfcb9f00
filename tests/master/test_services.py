"""services.yaml (master/services.py): reading, and settling a unit that
several groups declare, with the real repository loader."""

from __future__ import annotations

import pytest

from safcm.common.errors import ConfigError
from safcm.common.services import Enablement, UnitSpec
from safcm.common.yamlfile import Problems
from safcm.master.repository import load_repository
from safcm.master.services import host_units, read_services
from tests.hosts.fleet import write_repo

HOSTS = ["web1", "db1"]


def units_of(tmp_path, groups, host="web1", **config) -> list[UnitSpec]:
    root = str(tmp_path / "repo")
    write_repo(root, HOSTS, groups, **config)
    repo = load_repository(root)
    if repo.services.problems:
        raise ConfigError(repo.services.problems)
    declared = repo.services.declared
    problems = Problems()
    units = host_units(declared, repo, host, problems)
    if problems:
        raise ConfigError(problems.by_file())
    return units


def test_every_list_and_the_default_suffix(tmp_path):
    services = {
        "enable": ["nginx", "ssh.socket"],
        "disable": ["apache2"],
        "mask": ["telnet.socket"],
        "start": ["getty@tty2"],
        "stop": ["debug-shell.service"],
    }
    assert units_of(tmp_path, {"all": {"services.yaml": services}}) == [
        UnitSpec("apache2.service", Enablement.DISABLED, False),
        UnitSpec("debug-shell.service", None, False),
        UnitSpec("getty@tty2.service", None, True),
        UnitSpec("nginx.service", Enablement.ENABLED, True),
        UnitSpec("ssh.socket", Enablement.ENABLED, True),
        UnitSpec("telnet.socket", Enablement.MASKED, False),
    ]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("enabled: [a]\n", 1, "unknown key 'enabled' (expected: enable, disable, mask"),
        ("enable: a\n", 1, "enable must be a list of units, not a single value"),
        ("- a\n", 1, "services.yaml must be a mapping, not a list"),
        ("enable:\n  - [a]\n", 2, "a unit must be a name, not a list"),
        ("enable: [getty@]\n", 1, "getty@.service is a template: name an instance"),
        ("enable: ['a b']\n", 1, "'a b.service' is not a valid unit name"),
        ("enable: [a]\nstop: [a.service]\n", 2, "a.service is listed twice (under enable, line 1"),
    ],
)
def test_problems_name_the_file_and_line(tmp_path, text, line, message):
    root = tmp_path / "repo"
    (root / "web").mkdir(parents=True)
    (root / "web" / "services.yaml").write_text(text)
    problems = Problems()
    read_services(str(root), "web", problems)
    assert [(p.file, p.line) for p in problems] == [("web/services.yaml", line)]
    assert message in problems[0].message


def test_groups_that_agree_do_not_conflict(tmp_path):
    same = {"services.yaml": {"enable": ["cron"]}}
    assert units_of(tmp_path, {"base": same, "web": same}) == [
        UnitSpec("cron.service", Enablement.ENABLED, True)
    ]


def test_groups_that_disagree_conflict_unless_ranked(tmp_path):
    groups = {
        "base": {"services.yaml": {"enable": ["cron"]}},
        "web": {"services.yaml": {"mask": ["cron"]}},
    }
    with pytest.raises(ConfigError) as e:
        units_of(tmp_path, groups)
    message = str(e.value)
    assert "cron.service for web1: enable in base/services.yaml:2" in message
    assert "mask in web/services.yaml:2" in message and "no group_order" in message
    assert units_of(tmp_path, groups, group_order=["base", "web"]) == [
        UnitSpec("cron.service", Enablement.MASKED, False)
    ]
    assert units_of(tmp_path, groups, group_order=["web", "base"]) == [
        UnitSpec("cron.service", Enablement.ENABLED, True)
    ]


def test_the_hosts_own_group_wins_and_all_loses(tmp_path):
    groups = {
        "all": {"services.yaml": {"enable": ["cron"]}},
        "web": {"services.yaml": {"disable": ["cron"]}},
        "web1": {"services.yaml": {"stop": ["cron"]}},
    }
    assert units_of(tmp_path, groups) == [UnitSpec("cron.service", None, False)]
    assert units_of(tmp_path, groups, host="db1") == [
        UnitSpec("cron.service", Enablement.DISABLED, False)
    ]


def _state(file_state: str, active: str) -> dict:
    return {"load": "loaded", "active": active, "sub": "x", "enablement": file_state, "result": "r"}


def test_render_says_what_was_done_with_the_states_and_escapes_the_reason():
    from safcm.master.modules.services import render
    from safcm.master.render import Style

    def change(unit, actions, outcome, after, reason=""):
        before = _state("disabled", "inactive")
        return {"unit": unit, "actions": actions, "before": before, "after": after,
                "outcome": outcome, "reason": reason}  # fmt: skip

    section = {
        "dry_run": False,
        "reloaded": True,
        "changes": [
            change("a.service", ["enable", "start"], "applied", _state("enabled", "active")),
            change(
                "b.service",
                ["start"],
                "failed",
                _state("disabled", "failed"),
                "b.service did not start\nevil \x1b[2J line",
            ),
        ],
    }
    lines = render(section, Style(colour=False))
    assert lines[0].strip() == "systemd: unit files reloaded (daemon-reload)"
    assert (
        lines[1].strip() == "enable, start a.service: disabled, inactive (x) -> enabled, active (x)"
    )
    assert lines[2].strip().startswith("FAILED start b.service")
    assert lines[3].strip() == "b.service did not start"
    assert "\x1b" not in "".join(lines) and "evil" in lines[4]
    dry = {
        **section,
        "dry_run": True,
        "changes": [change("a.service", ["enable"], "would apply", None)],
    }
    assert [line.strip() for line in render(dry, Style(colour=False))] == [
        "systemd: unit files would reload (daemon-reload)",
        "would enable a.service (now disabled, inactive (x))",
    ]


def test_services_yaml_is_read_with_the_repository_not_on_each_run(tmp_path):
    """A repository that has not changed is not read again (master/repocache.py):
    the units are compiled from what its load read, and a services.yaml
    problem stops only what compiles units."""
    from safcm.master.compiler import compile_hosts
    from safcm.master.modules.services import compile_units

    root = tmp_path / "repo"
    write_repo(str(root), HOSTS, {"all": {"services.yaml": {"enable": ["nginx"]}}})
    # Both kinds of load: a services run alone loads only what targets need.
    loads = [load_repository(str(root)), load_repository(str(root), targets_only=True)]
    (root / "all" / "services.yaml").unlink()  # a run reads no file
    for repo in loads:
        assert compile_units(repo, ["web1"], None)["web1"]["units"] == [
            UnitSpec("nginx.service", Enablement.ENABLED, True).to_wire()
        ]
    (root / "all" / "services.yaml").write_text("enabled: [nginx]\n")
    broken = load_repository(str(root))
    assert compile_hosts(broken, ["web1"])["web1"].files is not None
    with pytest.raises(ConfigError, match="unknown key 'enabled'"):
        compile_units(broken, ["web1"], None)
