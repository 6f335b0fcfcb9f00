"""The packages planner (minion/packages.py): dpkg's state and apt's simulation in,
apt arguments and changes out. Pure; tests/minion/test_apt.py runs real apt."""

from __future__ import annotations

import pytest

from safcm.common.packages import PackageSpec, Want
from safcm.minion.packages import (
    DpkgParseError,
    compare_versions,
    diff_states,
    parse_dpkg_status,
    parse_simulation,
    plan,
    unsettled,
)

DPKG = (
    "app\tinstall ok installed\t1.0-1\n"
    "old\tdeinstall ok config-files\t0.9\n"
    "gone\tunknown ok not-installed\t\n"
    "held\thold ok installed\t2.0\n"
    "broken\tinstall ok half-configured\t3.0\n"
    "unpacked\tinstall ok unpacked\t1\n"
    "reinst\tinstall reinstreq half-installed\t1\n"
    "libc6:amd64\tinstall ok installed\t2.36-9\n"
)
STATE = parse_dpkg_status(DPKG)


@pytest.mark.parametrize(
    ("a", "b", "sign"),
    [
        ("1.0", "1.0", 0),
        ("1.0", "2.0", -1),
        ("1.10", "1.9", 1),
        ("1.0~rc1", "1.0", -1),  # a tilde sorts before the end
        ("1.0~~", "1.0~", -1),
        ("1.0a", "1.0", 1),
        ("1.0a", "1.0+", -1),  # letters before other characters
        ("1:0.1", "9.9", 1),  # the epoch first
        ("1.0-2", "1.0-10", -1),  # the revision
        ("1.0", "1.0-0", 0),
        ("2.36-9+deb12u4", "2.36-9", 1),
        ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12", -1),
    ],
)
def test_compare_versions(a, b, sign):
    assert compare_versions(a, b) == sign
    assert compare_versions(b, a) == -sign


def test_parse_dpkg_status():
    assert STATE["app"].version == "1.0-1" and not STATE["app"].unsettled
    assert not STATE["old"].present and not STATE["gone"].present
    assert "libc6" in STATE  # the architecture qualifier is dropped
    assert [s.name for s in unsettled(STATE)] == ["broken", "reinst", "unpacked"]
    with pytest.raises(DpkgParseError):
        parse_dpkg_status("app install ok installed 1.0\n")


@pytest.mark.parametrize(
    ("want", "args"),
    [
        (PackageSpec("app", Want.INSTALL), []),
        (PackageSpec("app", Want.INSTALL, "1.0-1"), []),
        (PackageSpec("app", Want.INSTALL, "2.0"), ["app=2.0"]),
        (PackageSpec("old", Want.INSTALL), ["old"]),  # config files only: not installed
        (PackageSpec("new", Want.INSTALL), ["new"]),
        (PackageSpec("held", Want.INSTALL), []),
        (PackageSpec("broken", Want.INSTALL), ["broken"]),  # apt configures it again
        (PackageSpec("app", Want.REMOVE), ["app-"]),
        (PackageSpec("old", Want.REMOVE), []),
        (PackageSpec("gone", Want.REMOVE), []),
        (PackageSpec("new", Want.REMOVE), []),
        (PackageSpec("broken", Want.REMOVE), ["broken-"]),
    ],
)
def test_plan(want, args):
    result = plan([want], STATE)
    assert result.args == args
    assert result.satisfied == (0 if args else 1)


def test_diff_states():
    after = parse_dpkg_status(
        "app\tinstall ok installed\t2.0\n"  # upgraded
        "old\tinstall ok installed\t0.8\n"  # installed again (config files before)
        "held\tdeinstall ok config-files\t2.0\n"  # removed
        "broken\tinstall ok installed\t3.0\n"  # configured
        "unpacked\tinstall ok unpacked\t1\n"
        "reinst\tinstall reinstreq half-installed\t1\n"
        "libc6\tinstall ok installed\t2.36-9\n"
        "dep\tinstall ok installed\t1.2\n"  # pulled in
    )
    assert [(c.name, str(c.action), c.old, c.new) for c in diff_states(STATE, after)] == [
        ("app", "upgraded", "1.0-1", "2.0"),
        ("broken", "configured", "3.0", "3.0"),
        ("dep", "installed", None, "1.2"),
        ("held", "removed", "2.0", None),
        ("old", "installed", None, "0.8"),
    ]


SIMULATION = """\
Reading package lists...
The following NEW packages will be installed:
  dep old
1 upgraded, 2 newly installed, 1 to remove and 0 not upgraded.
Remv held [2.0]
Inst app [1.0-1] (0.5 localhost [all])
Inst dep (1.2 Debian:12.8/stable [amd64])
Inst old (0.8 localhost [all])
Conf dep (1.2 Debian:12.8/stable [amd64])
Conf old (0.8 localhost [all])
Conf app (0.5 localhost [all])
Conf broken (3.0 localhost [all])
"""


def test_parse_simulation_names_what_diff_states_would():
    got = parse_simulation(SIMULATION, STATE)
    assert [(c.name, str(c.action), c.old, c.new) for c in got] == [
        ("app", "downgraded", "1.0-1", "0.5"),
        ("broken", "configured", "3.0", "3.0"),
        ("dep", "installed", None, "1.2"),
        ("held", "removed", "2.0", None),
        ("old", "installed", None, "0.8"),
    ]
