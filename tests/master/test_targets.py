"""TARGET resolution: globs, lists, groups, and only accepted minions."""

import re

import pytest

from safcm.common.errors import UsageError
from safcm.master.targets import normalise, resolve

HOSTS = ["web1", "web2", "web3", "db1", "db10"]
GROUPS = {"web": ["web1", "web2", "web3"], "empty": []}
ACCEPTED = {"web1", "web2", "db1", "db10", "stray"}
STATES = {"web3": "pending"}


def members(name):
    if name not in GROUPS:
        raise UsageError(f"unknown group {name!r}")
    return GROUPS[name]


def run(target, group=False):
    return resolve(
        normalise(target, group),
        hosts=HOSTS,
        group_members=members,
        accepted=ACCEPTED,
        key_states=STATES.get,
    )


@pytest.mark.parametrize(
    ("target", "group", "hosts"),
    [
        ("web*", False, ["web1", "web2"]),
        ("db1", False, ["db1"]),  # a plain id is not a prefix match
        ("db1*", False, ["db1", "db10"]),
        ("web1,db1", False, ["db1", "web1"]),
        ("web1, web*", False, ["web1", "web2"]),
        ("*", False, ["db1", "db10", "web1", "web2"]),  # 'stray' is not in hosts.yaml
        ("@web", False, ["web1", "web2"]),
        ("web", True, ["web1", "web2"]),
    ],
)
def test_resolve(target, group, hosts):
    assert run(target, group).hosts == hosts


def test_matching_hosts_without_accepted_key_are_reported():
    assert run("web*").skipped == {"web3": "its key is pending"}
    assert run("web1,web3").skipped == {"web3": "its key is pending"}


@pytest.mark.parametrize(
    ("target", "group", "message"),
    [
        ("mail*", False, "'mail*' matches no host in hosts.yaml"),
        ("web1,nope", False, "'nope' matches no host"),
        ("web1,,db1", False, "empty item"),
        ("stray", False, "'stray' matches no host in hosts.yaml"),
        ("web3", False, "matches no accepted minion (web3: its key is pending)"),
        ("@nope", False, "unknown group 'nope'"),
        ("empty", True, "group 'empty' has no hosts"),
        ("@", False, "needs a group name"),
        ("", False, "empty"),
    ],
)
def test_bad_targets(target, group, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        run(target, group)


def test_normalise():
    assert normalise("web", True) == "@web"
    assert normalise("@web", True) == "@web"
    assert normalise(" web* ", False) == "web*"
