"""Enrolment and key management between real daemons."""

from __future__ import annotations

import json
import os
import re
import shutil

from safcm.common.crypto import KeyPair
from safcm.master.sandbox import wait_for
from tests.schemas import validate
from tests.system.conftest import SETTLE, enrol, keys, wait_state


def test_pending_accept_reject_delete(sandbox):
    sandbox.start_master()
    sandbox.add_minion("web1")
    sandbox.start_minion("web1")
    wait_state(sandbox, "web1", "pending")
    # A pending minion cannot be targeted.
    result = sandbox.cli("run", "web1", "ping")
    assert result.returncode == 2
    assert "matches no accepted minion (web1: its key is pending)" in result.stderr

    listing = sandbox.cli("keys", "list").stdout
    fingerprint = sandbox.minion_cli("web1", "fingerprint").stdout.split(": ", 1)[1].strip()
    assert "web1" in listing and "pending" in listing and fingerprint in listing
    # A pending minion that keeps knocking is seen, and its new key logged once.
    wait_for(lambda: keys(sandbox)["web1"]["last_seen"] is not None, SETTLE, "web1 seen")
    assert sandbox.master.log_text().count(f"new key of web1 is pending ({fingerprint})") == 1
    master_fp = sandbox.cli("keys", "fingerprint").stdout.strip()
    assert master_fp.startswith("master key fingerprint: SHA256:")

    accepted = sandbox.cli("keys", "accept", "web1")
    assert accepted.returncode == 0 and f"accepted web1 ({fingerprint})" in accepted.stdout
    wait_state(sandbox, "web1", "accepted", connected=True)
    assert sandbox.cli("run", "web1", "ping").returncode == 0
    assert "connected" in sandbox.cli("keys", "list").stdout

    assert sandbox.cli("keys", "reject", "web1").returncode == 0
    wait_state(sandbox, "web1", "rejected")
    result = sandbox.cli("run", "web1", "ping")
    assert result.returncode == 2 and "its key is rejected" in result.stderr
    wait_for(
        lambda: "the master rejected our key" in sandbox.minions["web1"].log_text(),
        SETTLE,
        "the minion to learn it is rejected",
    )

    assert sandbox.cli("keys", "delete", "web1").returncode == 0
    # The minion keeps asking, so it comes back as pending with the same key.
    wait_state(sandbox, "web1", "pending")
    assert keys(sandbox)["web1"]["fingerprint"] == fingerprint

    unknown = sandbox.cli("keys", "accept", "nosuch*")
    assert unknown.returncode == 2 and "no minion key matches: nosuch*" in unknown.stderr


def test_keys_exit_as_their_help_says(sandbox):
    enrol(sandbox, "web1")
    for action in ("accept", "reject", "delete"):
        shown = sandbox.cli("keys", action, "--help").stdout
        assert "\n  2  nothing was done: a pattern matches no key, or only keys a pattern" in shown
        assert "no key matched" not in shown
    # A pattern that matches no key: nothing changed, and a script can tell.
    for pattern in ("nosuch", "x*"):
        result = sandbox.cli("keys", "accept", pattern)
        assert result.returncode == 2 and result.stdout == ""
        assert f"no minion key matches: {pattern}; nothing was changed" in result.stderr
    # A key that is so already: done.
    shown = sandbox.cli("keys", "accept", "--help").stdout
    assert "0  done, also when the keys matched were accepted already ('nothing changed')" in shown
    again = sandbox.cli("keys", "accept", "web1")
    assert (again.returncode, again.stdout) == (0, "nothing changed\n")


def test_changed_key_for_known_id_is_refused(sandbox):
    enrol(sandbox, "web1")
    old = keys(sandbox)["web1"]["fingerprint"]
    sandbox.stop(sandbox.minions["web1"])
    # The host comes back with other keys: a reinstall, or someone posing as web1.
    shutil.rmtree(os.path.join(sandbox.minions["web1"].settings["state_dir"], "keys"))
    sandbox.start_minion("web1")
    wait_for(
        lambda: "the id is claimed by key" in sandbox.master.log_text(),
        SETTLE,
        "the master to refuse the new key",
    )
    # The old web1 stopped; the new one never gets to send an accepted heartbeat.
    wait_for(lambda: not keys(sandbox)["web1"]["connected"], SETTLE, "web1 to count as gone")
    listing = keys(sandbox)
    assert listing["web1"]["fingerprint"] == old and listing["web1"]["state"] == "accepted"
    shown = sandbox.cli("keys", "list").stdout
    assert "refused keys" in shown
    assert re.search(r"^web1 +accepted .* [1-9][0-9]*$", shown, re.M), shown  # REFUSED column
    listed = validate(json.loads(sandbox.cli("keys", "list", "--json").stdout), "keys-list")
    [web1] = listed["keys"]
    assert web1["refused_attempts"] == sum(r["attempts"] for r in listed["refused"]) >= 1
    new = sandbox.minion_cli("web1", "fingerprint").stdout.split(": ", 1)[1].strip()
    assert new != old and new in shown
    result = sandbox.cli("run", "web1", "ping", "--timeout", "2")
    assert result.returncode == 1
    assert f"web1: presents a new key ({new})" in result.stdout, result.stdout

    # The administrator decides it is a reinstall: delete, then accept the new key.
    assert sandbox.cli("keys", "delete", "web1").returncode == 0
    wait_state(sandbox, "web1", "pending")
    assert keys(sandbox)["web1"]["fingerprint"] == new
    sandbox.cli("keys", "accept", "web1")
    wait_state(sandbox, "web1", "accepted", connected=True)
    assert sandbox.cli("run", "web1", "ping").returncode == 0


def test_pinned_minion_refuses_another_master(sandbox):
    other = KeyPair.generate()
    sandbox.start_master()
    sandbox.add_minion("web1", master_fingerprint=other.fingerprint())
    sandbox.start_minion("web1")
    wait_for(
        lambda: "does not match master_fingerprint" in sandbox.minions["web1"].log_text(),
        SETTLE,
        "the minion to refuse the master",
    )
    # It never even connected: the master's keys did not match before CURVE began.
    assert "web1" not in keys(sandbox)
    assert not os.path.exists(
        os.path.join(sandbox.minions["web1"].settings["state_dir"], "master.pub")
    )


def test_trust_on_first_use_then_pinned(sandbox):
    enrol(sandbox, "web1", master_fingerprint=None, trust_first_master=True)
    log = sandbox.minions["web1"]
    assert "trusted on first use and pinned" in log.log_text()
    pinned = os.path.join(sandbox.minions["web1"].settings["state_dir"], "master.pub")
    with open(pinned, "rb") as f:
        first = f.read()
    # The master is replaced by one with other keys (same address and ports).
    sandbox.stop(sandbox.master)
    shutil.rmtree(sandbox.master.settings["state_dir"])
    sandbox.start_master()
    # The pinned CURVE key does not match: the minion cannot even reach the new
    # master, which never hears of it, and it keeps the first pin. It says so
    # when its handshake fails, not after heartbeats went unanswered; or,
    # when the master was away longer than its liveness (both cores busy),
    # at the key port, where it asks first when it reconnects.
    refusals = ("does not hold the key we pinned", "now presents key")
    wait_for(
        lambda: any(
            said in log.log_text().split("accepted by the master")[-1] for said in refusals
        ),
        SETTLE,
        "the minion to give up on the new master",
    )
    assert "web1" not in keys(sandbox)
    with open(pinned, "rb") as f:
        assert f.read() == first


def test_auto_accept_is_explicit(sandbox):
    sandbox.configure_master(auto_accept=True)
    sandbox.start_master()
    sandbox.add_minion("web1")
    sandbox.start_minion("web1")
    wait_state(sandbox, "web1", "accepted", connected=True)


def test_a_pattern_accepts_pending_keys_and_leaves_a_rejected_one(sandbox, fake):
    enrol(sandbox, "web1")
    assert fake("web2").enrol() == "pending"
    assert fake("web3").enrol() == "pending"
    assert sandbox.cli("keys", "reject", "web3").returncode == 0
    # The new hosts: web2 is accepted, the key rejected earlier is left as it is.
    result = sandbox.cli("keys", "accept", "web*")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^accepted web2 \(SHA256:", result.stdout, re.M), result.stdout
    assert "left web3 rejected: a pattern does not accept a key rejected already" in result.stdout
    assert "web1" not in result.stdout  # accepted already
    states = {k: v["state"] for k, v in keys(sandbox).items()}
    assert states == {"web1": "accepted", "web2": "accepted", "web3": "rejected"}
    # A pattern that finds nothing pending changes nothing, and says why.
    result = sandbox.cli("keys", "reject", "web[12]")
    assert result.returncode == 2
    assert (
        "web[12] match only keys a pattern does not reject: web1 (accepted), web2 (accepted)"
        in result.stderr
    )
    wait_state(sandbox, "web1", "accepted", connected=True)  # not cut
    # Named, a decided key changes.
    result = sandbox.cli("keys", "accept", "web3")
    assert result.returncode == 0 and "accepted web3" in result.stdout
    # An enrolment flood cleared with a glob: the accepted keys stay.
    assert fake("flood1").enrol() == "pending"
    result = sandbox.cli("keys", "delete", "*")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^deleted flood1 ", result.stdout, re.M), result.stdout
    assert "left web1 accepted: a pattern does not delete a key accepted already" in result.stdout
    assert sorted(keys(sandbox)) == ["web1", "web2", "web3"]
    wait_state(sandbox, "web1", "accepted", connected=True)


def test_a_host_named_in_the_target_but_not_run_fails_the_run(sandbox):
    enrol(sandbox, "web1", "web2")
    assert sandbox.cli("keys", "reject", "web2").returncode == 0
    wait_state(sandbox, "web2", "rejected")
    named = sandbox.cli("run", "web1,web2", "ping")
    assert named.returncode == 1, named.stdout + named.stderr
    assert "skipped web2: its key is rejected" in named.stdout
    assert "not run on web2, named in the target" in named.stdout
    # Matched by a pattern only: reported, and the run succeeds.
    pattern = sandbox.cli("run", "web*", "ping")
    assert pattern.returncode == 0, pattern.stdout + pattern.stderr
    assert "skipped web2" in pattern.stdout and "named in the target" not in pattern.stdout
