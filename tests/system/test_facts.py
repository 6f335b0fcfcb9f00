"""Facts end to end: two real minions whose roots hold different os-release
files report different facts; `facts`, `show` and `check` show them; a
detected group's files reach only the host whose facts match; templates read
each host's own facts; a change of facts is reported; and a minion can state
only its own facts."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from safcm.common.protocol import MsgType
from safcm.master.sandbox import Sandbox, wait_for
from tests import schemas
from tests.system.conftest import (
    HEARTBEAT,
    SETTLE,
    accepted_fake,
    by_host,
    enrol,
    logged,
    run_json,
    wait_state,
)

# The minions look at their facts this often, in seconds (the least allowed),
# so a change reaches the master quickly.
FACTS_INTERVAL = 0.5

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux {v}"\nID=debian\nVERSION_ID="{v}"\n'

REPO = {
    "hosts.yaml": "- name: web1\n- name: web2\n",
    "groups.yaml": ("web: ['web*']\ndebian12:\n  detect: {os_id: debian, os_version_id: '12'}\n"),
    "config.yaml": "group_order: [web, debian12]\n",
    "all/templates.yaml": "- /etc/motd\n",
    "all/files/etc/motd": "{{ host }} runs {{ facts.os_id }} {{ facts.os_version_id }}\n",
    "debian12/files/etc/debian12.conf": "for Debian 12 only\n",
    "web1/files/etc/web1.key": "web1's own\n",
}


@pytest.fixture
def sb(request):
    base = tempfile.mkdtemp(prefix="safcm-t-", dir="/tmp")
    repo = os.path.join(base, "repo-source")
    for path, text in REPO.items():
        full = os.path.join(repo, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
    sandbox = Sandbox(base, repo, heartbeat_interval=HEARTBEAT, job_timeout=20)
    yield sandbox
    sandbox.close()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for daemon in [sandbox.master, *sandbox.minions.values()]:
            print(f"----- log of {daemon.name}\n{daemon.log_text()[-6000:]}")
    shutil.rmtree(base, ignore_errors=True)


def os_release(sb: Sandbox, minion: str, version: str) -> None:
    # The minion's root, as Sandbox.add_minion() makes it (before or after).
    path = os.path.join(sb.base, "roots", minion, "etc", "os-release")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(DEBIAN.format(v=version))
    os.replace(path + ".tmp", path)


def facts_doc(sb: Sandbox, *hosts: str) -> dict[str, dict]:
    """`facts HOSTS --json`, checked against docs/schema/facts.json, by host."""
    result = sb.cli("facts", *hosts, "--json")
    assert result.returncode == 0, result.stderr
    return {h["host"]: h for h in schemas.loads(result.stdout, "facts")["hosts"]}


def version_of(sb: Sandbox, host: str) -> str | None:
    facts = facts_doc(sb, host)[host]["facts"]
    return None if facts is None else facts["os_version_id"]


def read(sb: Sandbox, minion: str, path: str) -> str | None:
    full = os.path.join(sb.root(minion), path.lstrip("/"))
    if not os.path.exists(full):
        return None
    with open(full) as f:
        return f.read()


def test_two_minions_report_different_facts(sb):
    sb.start_master()
    # Before any minion reported: nothing to show.
    assert facts_doc(sb) == {}
    os_release(sb, "web1", "12")
    os_release(sb, "web2", "11")
    enrol(sb, "web1", "web2", facts_interval=FACTS_INTERVAL)
    wait_for(
        lambda: version_of(sb, "web1") == "12" and version_of(sb, "web2") == "11",
        SETTLE,
        "both minions' facts",
    )
    doc = facts_doc(sb)
    assert sorted(doc) == ["web1", "web2"]
    web1 = doc["web1"]["facts"]
    assert (web1["os_id"], web1["os_name"]) == ("debian", "Debian GNU/Linux 12")
    assert web1["kernel"] == os.uname().release  # the running kernel's, not the root's
    table = sb.cli("facts").stdout
    assert "web1" in table and "web2" in table and "debian" in table

    # show and check compile with the stored facts, and mark detected groups.
    shown = sb.cli("show", "web1").stdout
    assert "debian12 (detected from facts)" in shown
    assert "debian12" not in sb.cli("show", "web2").stdout
    show = schemas.loads(sb.cli("show", "web1", "--json").stdout, "show")
    assert show["detected"] == ["debian12"] and show["facts"]["os_version_id"] == "12"
    check = sb.cli("check")
    assert check.returncode == 0, check.stderr
    assert "group debian12 (detected from facts): web1\n" in check.stdout
    document = json.loads(sb.cli("check", "--json").stdout)
    assert schemas.validate(document, "check")["detected"] == {"debian12": ["web1"]}

    # A detected group is a target too, from the facts the master holds.
    code, doc = run_json(sb, "@debian12", "ping")
    assert code == 0 and sorted(by_host(doc)) == ["web1"]

    # The detected group's files reach web1 only; templates read each host's own facts.
    code, doc = run_json(sb, "web*", "files")
    assert code == 0, doc
    assert read(sb, "web1", "/etc/debian12.conf") == "for Debian 12 only\n"
    assert read(sb, "web2", "/etc/debian12.conf") is None
    assert read(sb, "web1", "/etc/motd") == "web1 runs debian 12\n"
    assert read(sb, "web2", "/etc/motd") == "web2 runs debian 11\n"
    assert read(sb, "web2", "/etc/web1.key") is None

    # web2 is upgraded: its minion notices and reports it; the next run follows.
    before = facts_doc(sb, "web2")["web2"]["changed"]
    os_release(sb, "web2", "12")
    wait_for(lambda: version_of(sb, "web2") == "12", SETTLE, "web2's new facts")
    logged(sb.minions["web2"], "facts changed; sent them to the master")
    assert facts_doc(sb, "web2")["web2"]["changed"] > before
    code, doc = run_json(sb, "web*", "files")
    assert code == 0, doc
    assert read(sb, "web2", "/etc/debian12.conf") == "for Debian 12 only\n"
    assert read(sb, "web2", "/etc/motd") == "web2 runs debian 12\n"
    assert read(sb, "web2", "/etc/web1.key") is None  # a detected group is never another host


def test_facts_of_a_host_the_master_does_not_know_is_an_error(sandbox):
    """A host whose key the master holds but that has not reported yet
    (pending: facts come once it is accepted) says so; a host id with no key
    and no facts exits 2 (nothing was done) and names the host and why."""
    sandbox.start_master()
    sandbox.add_minion("web1")
    sandbox.start_minion("web1")
    wait_state(sandbox, "web1", "pending")
    assert facts_doc(sandbox, "web1")["web1"]["facts"] is None
    assert sandbox.cli("facts", "web1").stdout == "web1: no facts reported yet\n"
    reason = (
        "unknown host nosuch: the master holds no key and no facts for it"
        " (safcm-master keys list shows the minions it knows)"
    )
    for args in (("nosuch",), ("web1", "nosuch")):
        result = sandbox.cli("facts", *args)
        assert result.returncode == 2, args
        assert result.stdout == "" and result.stderr == f"safcm-master: {reason}\n", args
    result = sandbox.cli("facts", "nosuch", "--json")
    assert result.returncode == 2
    error = schemas.loads(result.stdout, "error")["error"]
    assert (error["kind"], error["message"]) == ("usage", reason)
    # The same with the daemon stopped: facts reads the database itself.
    sandbox.stop(sandbox.master)
    assert sandbox.cli("facts", "nosuch").returncode == 2
    assert sandbox.cli("facts", "web1").returncode == 0


def test_a_minion_states_only_its_own_facts(sandbox, fake):
    enrol(sandbox, "web1")
    wait_for(lambda: facts_doc(sandbox, "web1")["web1"]["facts"], SETTLE, "web1's facts")
    real = facts_doc(sandbox, "web1")["web1"]["facts"]
    web3 = accepted_fake(sandbox, fake, "web3")
    lie = {**real, "os_id": "forged", "hostname": "web1"}
    # Sealed with web3's own key but naming web1 as its sender: dropped.
    web3.send_raw(web3.seal(MsgType.FACTS, lie, sender="web1"))
    logged(sandbox.master, "claims to be from 'web1' on the connection of web3")
    # Its own facts, however false, are stored as web3's only.
    web3.send_raw(web3.seal(MsgType.FACTS, lie))
    wait_for(lambda: facts_doc(sandbox, "web3")["web3"]["facts"], SETTLE, "web3's facts")
    assert facts_doc(sandbox, "web3")["web3"]["facts"]["os_id"] == "forged"
    assert facts_doc(sandbox, "web1")["web1"]["facts"] == real
