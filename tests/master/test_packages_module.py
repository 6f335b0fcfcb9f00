"""The packages module on the master (master/modules/packages.py): each
host's job fields from the repository, and how a result is shown."""

from __future__ import annotations

import pathlib

import pytest

from safcm.common.errors import ConfigError
from safcm.master.modules import modules
from safcm.master.render import Style
from safcm.master.repository import load_repository

CASES = pathlib.Path(__file__).parent / "repos"
PLAIN = Style(colour=False)
MODULE = modules()["packages"]


def section(**fields) -> dict:
    return {
        "dry_run": False,
        "changes": [],
        "unsettled": [],
        "error": None,
        "output": "",
        "duration": 0.5,
        **fields,
    }


def test_compile_gives_each_host_its_settled_packages():
    repo = load_repository(str(CASES / "packages" / "repo"))
    fields = MODULE.compile(repo, ["h1", "h3"], None)
    assert fields["h3"] == {
        "package_specs": [
            {"name": "curl", "want": "install", "version": None},
            {"name": "less", "want": "remove", "version": None},
            {"name": "telnet", "want": "remove", "version": None},
            {"name": "vim", "want": "install", "version": None},
        ]
    }
    assert {"name": "less", "want": "install", "version": "590-2"} in fields["h1"]["package_specs"]


def test_a_conflict_two_hosts_share_is_reported_once():
    repo = load_repository(str(CASES / "invalid_packages_conflict" / "repo"))
    with pytest.raises(ConfigError) as e:
        MODULE.compile(repo, ["h1", "h2"], None)
    assert [str(p) for p in e.value.problems] == (
        (CASES / "invalid_packages_conflict" / "errors.txt").read_text().splitlines()
    )
    assert MODULE.compile(repo, ["h2"], None)["h2"]["package_specs"][0]["name"] == "curl"


def test_render_says_what_happened_to_each_package_with_versions():
    lines = MODULE.render(
        section(
            changes=[
                {"name": "app", "action": "upgraded", "old": "1.0", "new": "2.0"},
                {"name": "lib", "action": "installed", "old": None, "new": "1.1"},
                {"name": "telnet", "action": "removed", "old": "0.17-44", "new": None},
            ]
        ),
        PLAIN,
    )
    assert [line.strip() for line in lines] == [
        "upgraded package app 1.0 -> 2.0",
        "installed package lib 1.1",
        "removed package telnet 0.17-44",
    ]
    dry = MODULE.render(
        section(
            dry_run=True, changes=[{"name": "app", "action": "installed", "old": None, "new": "1"}]
        ),
        PLAIN,
    )
    assert [line.strip() for line in dry] == ["would install package app 1"]


def test_render_shows_apts_failure_and_unsettled_packages_escaped():
    evil = "\x1b]0;owned\x07"
    lines = MODULE.render(
        section(
            unsettled=[
                {"name": "broken" + evil, "status": "install ok half-configured", "version": "1"}
            ],
            error="apt-get exited with status 100: E: bad" + evil,
            output="line one\nline two" + evil,
        ),
        PLAIN,
    )
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x07" not in text
    assert "unsettled: package broken\\x1b]0;owned\\x07 1 is install ok half-configured" in text
    assert "apt failed: apt-get exited with status 100: E: bad\\x1b" in text
    assert lines[-1].strip() == "line two\\x1b]0;owned\\x07"
    assert MODULE.changes(section()) == 0
