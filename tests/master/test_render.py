"""Human output: changes, diffs, triggers, summaries, tables; hostile strings escaped."""

from __future__ import annotations

import io

from safcm.common.model import (
    ApplyFailure,
    ApplyResult,
    FileChange,
    FileState,
    FileType,
    Outcome,
    OwedTrigger,
    TriggerRun,
    TriggerStatus,
)
from safcm.master import render
from safcm.master.render import Style, Tally

PLAIN = Style(colour=False)
ROOT = FileState(FileType.FILE, 0o644, 0, 0, "root", "root")


def body(apply: ApplyResult | None = None, **kw) -> dict:
    base = {
        "module": "files",
        "status": "ok",
        "started": 10.0,
        "finished": 10.5,
        "apply": None if apply is None else apply.to_wire(),
        "ping": None,
        "error": None,
    }
    base.update(kw)
    return base


def test_changes_with_modes_owners_types_and_diffs():
    old_dir = FileState(FileType.DIR, 0o755, 0, 0, "root", "root")
    result = ApplyResult(
        dry_run=False,
        changes=[
            FileChange("/etc/new", True, ROOT),
            FileChange(
                "/etc/motd",
                False,
                FileState(FileType.FILE, 0o600, 33, 4, "www-data", "adm"),
                ROOT,
                "--- old\n+++ new\n@@ -1 +1 @@\n-a\n+b\n",
            ),
            FileChange("/srv/x", False, ROOT, old_dir),
        ],
        triggers=[TriggerRun("systemctl reload app", TriggerStatus.FAILED, 3, "boom\n", 0.1)],
    )
    text = render.render_host("web1", render.CHANGED, body(result, status="failed"), PLAIN)
    assert text.splitlines()[0] == "web1: changed (0.50 s)"
    assert "created /etc/new" in text and "file 0644 root:root" in text
    assert "mode 0644 -> 0600, owner root:root -> www-data:adm, content" in text
    assert "replaced /srv/x" in text and "type dir -> file (old directory removed)" in text
    assert "        -a\n        +b" in text
    assert "trigger systemctl reload app: failed (exit 3)" in text and "        boom" in text


def test_dry_run_words_and_failure():
    result = ApplyResult(
        dry_run=True,
        changes=[FileChange("/etc/new", True, ROOT, outcome=Outcome.WOULD_APPLY)],
        failures=[ApplyFailure("/etc/x", "symlink not permitted in path: /etc")],
    )
    text = render.render_host("web1", render.FAILED, body(result, status="failed"), PLAIN)
    assert "web1: FAILED" in text
    assert "would create /etc/new" in text
    assert "failed: /etc/x: symlink not permitted in path: /etc" in text


def test_every_change_says_its_outcome_and_claims_nothing_that_did_not_happen():
    old_dir = FileState(FileType.DIR, 0o755, 0, 0, "root", "root")
    refusal = "a non-empty directory is in the way of this file; remove it by hand"
    result = ApplyResult(
        dry_run=False,
        changes=[
            FileChange("/etc/motd", False, ROOT, old_dir, None, Outcome.FAILED, refusal),
            FileChange("/etc/motd.d/x", True, ROOT, None, None, Outcome.SKIPPED, "not tried"),
            FileChange(
                "/etc/old.conf", False, None, ROOT, "--- a/etc/old.conf\n+++ /dev/null\n-gone\n"
            ),
        ],
        failures=[ApplyFailure("/etc/motd", refusal)],
        owed=[
            OwedTrigger("systemctl reload app", "/etc/app/logging.conf", "20260101T000000.000000Z")
        ],
    )
    text = render.render_host("web1", render.FAILED, body(result, status="failed"), PLAIN)
    lines = text.splitlines()
    assert lines[1].startswith("    FAILED to replace /etc/motd")
    assert "type dir -> file" in lines[1] and "removed" not in lines[1]
    assert lines[2] == f"        reason: {refusal}"
    assert lines[3].startswith("    skipped: create /etc/motd.d/x")
    assert lines[4] == "        reason: not tried"
    assert lines[5].startswith("    removed /etc/old.conf") and "file 0644 root:root" in lines[5]
    assert "        -gone" in lines
    assert f"    failed: /etc/motd: {refusal}" in lines
    assert (
        "    trigger systemctl reload app: owed (since /etc/app/logging.conf changed in job"
        " 20260101T000000.000000Z; it runs after the next run without failure)"
    ) in lines


def test_a_hostile_minion_cannot_reach_the_terminal():
    evil = "\x1b]0;pwned\x07\x1b[2J"
    result = ApplyResult(
        dry_run=False,
        changes=[
            FileChange(
                "/etc/" + evil,
                False,
                FileState(FileType.FILE, 0o644, 0, 0, evil, None),
                ROOT,
                f"--- old\n+++ new\n-{evil}\n+\u202eevil\n",
            ),
        ],
        triggers=[TriggerRun(evil, TriggerStatus.OK, 0, evil + "\nline2\r\n", 0.1)],
    )
    text = render.render_host(
        "web1" + evil, render.CHANGED, body(result, error=None), Style(colour=True)
    )
    stripped = text.replace("\x1b[0m", "")
    for code in ("1", "2", "31", "32", "33", "36"):
        stripped = stripped.replace(f"\x1b[{code}m", "")
    assert "\x1b" not in stripped and "\x07" not in stripped and "\u202e" not in stripped
    assert "\\x1b]0;pwned\\x07" in text and "\\u202eevil" in text
    error = render.render_host(
        "web1", render.FAILED, body(None, status="error", error="bad\x1b[31m"), PLAIN
    )
    assert "error: bad\\x1b[31m" in error


def test_names_the_minion_escaped_show_escaped_once_and_still_safe():
    # As the minion reports them (common/text.py escape_name()): a byte that
    # is not UTF-8 as \xNN, a real backslash doubled; other characters raw.
    odd = FileState(FileType.FILE, 0o644, 1001, 1002, "us\\xe9r", "back\\\\slash")
    result = ApplyResult(
        dry_run=False,
        changes=[
            FileChange("/etc/monitor/caf\\xe9.conf", False, None, odd),
            FileChange("/etc/monitor/a\\\\b\x1b[2J\u202e", False, None, ROOT),
        ],
        failures=[ApplyFailure("/etc/monitor/d\\xffir", "Permission denied")],
        owed=[OwedTrigger("true", "/etc/monitor/caf\\xe9.conf", "20260101T000000.000000Z")],
    )
    text = render.render_host("web1", render.FAILED, body(result, status="failed"), PLAIN)
    lines = [line.strip() for line in text.splitlines()]
    assert "removed /etc/monitor/caf\\xe9.conf" in lines[1]
    assert lines[1].endswith(" file 0644 us\\xe9r:back\\\\slash")
    assert "removed /etc/monitor/a\\\\b\\x1b[2J\\u202e" in lines[2]
    assert "failed: /etc/monitor/d\\xffir: Permission denied" in lines
    assert "(since /etc/monitor/caf\\xe9.conf changed" in text
    assert "\\\\x" not in text  # no escape shown with its backslash doubled
    assert "\x1b" not in text and "\u202e" not in text


def test_no_response_and_ping():
    assert render.render_host("db1", render.NO_RESPONSE, None, PLAIN) == "db1: no response"
    ping = body(None, module="ping", ping={"version": "0.1.0", "time": 1.0})
    assert "pong from safcm-minion 0.1.0" in render.render_host("db1", render.OK, ping, PLAIN)
    assert render.render_host("db1", render.OK, ping, PLAIN).startswith("db1: ok")


def test_summary_and_colour_switch(monkeypatch):
    tally = Tally(targeted=4)
    for status in (render.CHANGED, render.OK, render.FAILED, render.NO_RESPONSE):
        tally.add(status)
    assert render.render_summary(tally, PLAIN) == (
        "4 hosts targeted: 1 changed, 1 unchanged, 1 failed, 1 no response"
    )
    assert "1 would change" in render.render_summary(tally, PLAIN, dry_run=True)
    assert "1 ok" in render.render_summary(tally, PLAIN, module="ping")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert render.use_colour(Tty()) and not render.use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not render.use_colour(Tty())
    monkeypatch.setenv("NO_COLOR", "")
    assert render.use_colour(Tty())


def test_a_packages_host_is_worded_as_the_summary_counts_it():
    def packages(dry_run: bool, changes: list) -> dict:
        section = {
            "dry_run": dry_run,
            "changes": changes,
            "unsettled": [],
            "error": None,
            "output": "",
            "duration": 0.5,
        }
        return body(None, module="packages", packages=section)

    install = [{"name": "app", "action": "installed", "old": None, "new": "1.0"}]
    cases = [
        (render.OK, packages(False, []), "unchanged"),
        (render.CHANGED, packages(False, install), "changed"),
        (render.CHANGED, packages(True, install), "would change"),
    ]
    for status, result, word in cases:
        tally = Tally(targeted=1)
        tally.add(status)
        dry = result["packages"]["dry_run"]
        summary = render.render_summary(tally, PLAIN, dry, "packages")
        assert f"1 {word}" in summary
        heading = render.render_host("web1", status, result, PLAIN).splitlines()[0]
        assert heading == f"web1: {word} (0.50 s)"


def test_tables():
    job = {
        "jid": "20261121T193000.123456Z",
        "submitted": 0.0,
        "user": "root",
        "target": "web*",
        "module": "files",
        "dry_run": True,
        "hosts": 3,
        "changed": 1,
        "failed": 0,
        "no_response": 2,
        "pending": 0,
    }
    table = render.render_jobs_table([job], PLAIN).splitlines()
    assert table[0].split() == [
        "JID",
        "SUBMITTED",
        "USER",
        "TARGET",
        "MODULE",
        "HOSTS",
        "CHANGED",
        "FAILED",
        "NO",
        "RESP",
        "PENDING",
    ]
    assert "files (dry run)" in table[1] and table[1].startswith(job["jid"])
    assert render.render_jobs_table([], PLAIN) == "no jobs"
    # A list as long as --limit says there may be more.
    assert len(render.render_jobs_table([job], PLAIN, limit=2).splitlines()) == 2
    cut = render.render_jobs_table([job, job], PLAIN, limit=2).splitlines()
    assert cut[-1] == "(the newest 2 that match; --limit N for more)"
    keys = {
        "master": "SHA256:m",
        "publish_port": 4506,
        "keys": [
            {
                "id": "web1",
                "state": "accepted",
                "fingerprint": "SHA256:a",
                "connected": True,
                "not_subscribed": False,
                "last_seen": 5.0,
            },
            {
                "id": "web2",
                "state": "pending",
                "fingerprint": "SHA256:b",
                "connected": False,
                "not_subscribed": False,
                "last_seen": None,
            },
        ],
        "refused": [{"id": "web1", "fingerprint": "SHA256:x", "attempts": 2, "last_seen": 9.0}],
    }
    text = render.render_keys(keys, PLAIN)
    assert "master key fingerprint: SHA256:m" in text
    assert "connected" in text and "never seen" in text and "refused keys" in text
    assert "NOT SUBSCRIBED" not in text and "port 4506" not in text
    # A host no job reaches is named in its row, and why below the table.
    keys["keys"][0]["not_subscribed"] = True
    rows = render.render_keys(keys, PLAIN).splitlines()
    assert next(r for r in rows if r.startswith("web1 ")).endswith("connected, NOT SUBSCRIBED  2")
    assert any("(port 4506), so no job reaches it" in r for r in rows)


def test_a_reduced_result_says_what_was_left_out():
    change = FileChange("/etc/x", False, ROOT, ROOT, "(diff omitted)\n")
    reduced = {
        "diffs_omitted": 3,
        "outputs_omitted": 1,
        "changes_omitted": 0,
        "triggers_omitted": 0,
        "reason": "too large: 70000000 bytes\x1b[2J",
    }
    text = render.render_host(
        "web1", "changed", body(ApplyResult(False, changes=[change]), reduced=reduced), PLAIN
    )
    assert (
        "    result reduced: 3 diffs omitted, 1 trigger output omitted "
        "(too large: 70000000 bytes\\x1b[2J)"
    ) in text.splitlines()
    assert "result reduced" not in render.render_host("web1", "ok", body(ApplyResult(False)), PLAIN)


def test_a_resumed_result_says_the_changes_before_the_restart_are_not_listed():
    resumed = {**body(ApplyResult(False)), "resumed": True}
    lines = render.render_host("web1", "ok", resumed, PLAIN).splitlines()
    assert f"    {render.RESUMED_NOTE}" in lines
    assert "resumed" not in render.render_host("web1", "ok", body(ApplyResult(False)), PLAIN)
