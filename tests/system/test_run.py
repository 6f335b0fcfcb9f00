"""`safcm-master run` against real minions: files on disk, no-op runs, dry runs,
targets, output and exit codes."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pty
import pwd
import re
import select
import sqlite3
import stat
import subprocess
import time

import pytest

from safcm.common.protocol import MsgType
from safcm.master.control import ControlClient
from safcm.master.db import DB_NAME
from safcm.master.sandbox import wait_for
from tests import schemas
from tests.schemas import validate
from tests.system.conftest import (
    SETTLE,
    accepted_fake,
    by_host,
    changed_paths,
    enrol,
    jobs_list,
    jobs_show,
    logged,
    run_json,
)
from tests.system.fake import ping_result

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Created by the example repository's trigger on /etc/app, not by the engine.
TRIGGER_MADE = {"/etc/app/.restart-requested"}


def compiled(sb, host: str) -> dict[str, dict]:
    result = sb.cli("show", host, "--json")
    assert result.returncode == 0, result.stderr
    return {f["path"]: f for f in schemas.loads(result.stdout, "show")["files"]}


def changed_paths_full(doc: dict, host: str) -> list[dict]:
    return by_host(doc)[host]["result"]["apply"]["changes"]


def on_disk(root: str) -> set[str]:
    paths = {"/"}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            paths.add("/" + os.path.relpath(os.path.join(dirpath, name), root))
    return paths


def assert_root_matches(sb, host: str) -> None:
    """Every compiled file is on disk exactly as declared, and nothing else is there."""
    root = sb.root(host)
    files = compiled(sb, host)
    assert on_disk(root) - TRIGGER_MADE == set(files)
    for path, f in files.items():
        full = os.path.join(root, path.lstrip("/")) if path != "/" else root
        st = os.lstat(full)
        kind = {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "symlink": stat.S_ISLNK}[f["type"]]
        assert kind(st.st_mode), f"{host}:{path} is not a {f['type']}"
        uid = f["uid"] if f["uid"] is not None else pwd.getpwnam(f["user"]).pw_uid
        gid = f["gid"] if f["gid"] is not None else grp.getgrnam(f["group"]).gr_gid
        assert (st.st_uid, st.st_gid) == (uid, gid), f"{host}:{path} owner"
        if f["type"] == "symlink":
            assert os.readlink(full) == f["target"]
            continue
        assert stat.S_IMODE(st.st_mode) == int(f["mode"], 8), f"{host}:{path} mode"
        if f["type"] == "file":
            with open(full, "rb") as fh:
                assert hashlib.sha256(fh.read()).hexdigest() == f["sha256"], f"{host}:{path}"


def test_files_on_three_minions_then_nothing_changes(sandbox):
    enrol(sandbox, "web1", "web2", "web3", "db1")
    code, doc = run_json(sandbox, "web*", "files")
    assert code == 0
    assert [h["host"] for h in doc["hosts"]] == ["web1", "web2", "web3"]
    assert doc["format"] == "safcm/1"
    assert doc["summary"] == {
        "hosts": 3,
        "changed": 3,
        "ok": 0,
        "failed": 0,
        "no response": 0,
        "pending": 0,
        "skipped": 0,
    }
    # Each result was kept in the CLI's temporary file until the end: it
    # comes back as the master stored it.
    shown = by_host(jobs_show(sandbox, doc["jid"]))
    for host in ("web1", "web2", "web3"):
        assert by_host(doc)[host]["result"] == shown[host]["result"]
    motd = next(c for c in changed_paths_full(doc, "web1") if c["path"] == "/etc/motd")
    assert motd["new"]["mode"] == "0644"
    for host in ("web1", "web2", "web3"):
        assert_root_matches(sandbox, host)
        assert by_host(doc)[host]["status"] == "changed"
        # Everything is created; "/" (the minion's root) already was 0755 root:root.
        assert set(changed_paths(doc, host)) == set(compiled(sandbox, host)) - {"/"}
    # Special bits and owners really are on disk (assert_root_matches checked
    # them all; these are the ones the example exists to show).
    www = os.lstat(os.path.join(sandbox.root("web1"), "srv/www"))
    assert stat.S_IMODE(www.st_mode) == 0o2775 and www.st_gid == grp.getgrnam("www-data").gr_gid
    uploads = os.lstat(os.path.join(sandbox.root("web1"), "srv/www/uploads"))
    assert stat.S_IMODE(uploads.st_mode) == 0o1777
    with open(os.path.join(sandbox.root("web2"), "etc/motd")) as f:
        assert "web2" in f.read()
    assert not os.path.exists(os.path.join(sandbox.root("web2"), "etc/app/feature-flags.conf"))
    # web3 is taken out of the group "web" (web_remove): it gets only what "all" gives.
    assert not os.path.exists(os.path.join(sandbox.root("web3"), "srv"))
    # The host outside the target is untouched.
    assert os.listdir(sandbox.root("db1")) == []
    triggers = by_host(doc)["web1"]["result"]["apply"]["triggers"]
    assert {t["status"] for t in triggers} == {"ok"}
    assert any("reload web server" in t["output"] for t in triggers)

    hosts = ("web1", "web2", "web3")
    before = {h: os.stat(os.path.join(sandbox.root(h), "etc/motd")) for h in hosts}
    code, doc = run_json(sandbox, "web*", "files")
    assert code == 0
    assert doc["summary"]["ok"] == 3 and doc["summary"]["changed"] == 0
    for host in hosts:
        assert by_host(doc)[host]["result"]["apply"]["changes"] == []
        assert by_host(doc)[host]["result"]["apply"]["triggers"] == []
        after = os.stat(os.path.join(sandbox.root(host), "etc/motd"))
        assert (after.st_ino, after.st_ctime_ns) == (before[host].st_ino, before[host].st_ctime_ns)


def test_dry_run_shows_the_diff_and_writes_nothing(sandbox):
    enrol(sandbox, "web1")
    assert run_json(sandbox, "web1", "files")[0] == 0
    motd = os.path.join(sandbox.root("web1"), "etc/motd")
    with open(motd, "a") as f:
        f.write("edited by hand\n")
    os.chmod(motd, 0o600)
    os.unlink(os.path.join(sandbox.root("web1"), "etc/app/logging.conf"))
    with open(motd, "rb") as f:
        edited = f.read()

    human = sandbox.cli("run", "web1", "files", "--dry-run")
    assert human.returncode == 0
    assert "would change /etc/motd" in human.stdout
    assert "mode 0600 -> 0644" in human.stdout
    assert "-edited by hand" in human.stdout
    assert "would create /etc/app/logging.conf" in human.stdout
    assert "1 would change" in human.stdout

    _, doc = run_json(sandbox, "web1", "files", "--dry-run")
    apply = by_host(doc)["web1"]["result"]["apply"]
    assert apply["dry_run"] is True
    assert sorted(changed_paths(doc, "web1")) == ["/etc/app/logging.conf", "/etc/motd"]
    assert {t["status"] for t in apply["triggers"]} == {"would run"}
    # Nothing was written.
    with open(motd, "rb") as f:
        assert f.read() == edited
    assert stat.S_IMODE(os.stat(motd).st_mode) == 0o600
    assert not os.path.exists(os.path.join(sandbox.root("web1"), "etc/app/logging.conf"))
    jobs = jobs_list(sandbox)
    assert [j["dry_run"] for j in jobs] == [True, True, False]


def test_ping_group_targets_and_exit_codes(sandbox):
    enrol(sandbox, "web1", "web2", "db1")
    code, doc = run_json(sandbox, "-G", "web", "ping")
    assert code == 0 and sorted(by_host(doc)) == ["web1", "web2"]
    assert by_host(doc)["web1"]["result"]["ping"]["version"]
    assert by_host(doc)["web1"]["result"]["ping"]["time"].endswith("Z")
    code, doc = run_json(sandbox, "@monitored", "ping")
    assert code == 0 and sorted(by_host(doc)) == ["db1", "web1", "web2"]
    code, doc = run_json(sandbox, "web1,db1", "ping")
    assert code == 0 and sorted(by_host(doc)) == ["db1", "web1"]
    # Errors under --json are a document on stdout too, with the same exit code.
    code, doc = run_json(sandbox, "nosuch*", "ping")
    assert code == 2 and doc["error"]["kind"] == "usage"
    assert "matches no host" in doc["error"]["message"]
    code, doc = run_json(sandbox, "web1", "nosuchmodule")
    assert code == 2 and doc["error"]["kind"] == "usage"
    keys_doc = schemas.loads(sandbox.cli("keys", "list", "--json").stdout, "keys-list")
    assert [(k["host"], k["state"]) for k in keys_doc["keys"]] == [
        ("db1", "accepted"),
        ("web1", "accepted"),
        ("web2", "accepted"),
    ]
    assert all(k["last_seen"].endswith("Z") for k in keys_doc["keys"])

    for args, message in [
        (("nosuch*", "ping"), "'nosuch*' matches no host in hosts.yaml"),
        (("@nosuch", "ping"), "unknown group 'nosuch'"),
        (("web3", "files"), "matches no accepted minion"),
    ]:
        result = sandbox.cli("run", *args)
        assert result.returncode == 2, result
        assert message in result.stderr
    assert sandbox.cli("run", "web1", "nosuchmodule").returncode == 2  # argparse usage error


def test_configuration_error_exits_2_before_anything_is_sent(sandbox):
    enrol(sandbox, "web1")
    with open(os.path.join(sandbox.config_dir, "web", "permissions.yaml"), "a") as f:
        f.write('/srv/www/releases: "9999"\n')
    result = sandbox.cli("run", "web*", "files")
    assert result.returncode == 2
    assert "web/permissions.yaml:" in result.stderr and "invalid mode '9999'" in result.stderr
    code, doc = run_json(sandbox, "web*", "files")
    assert code == 2 and doc["error"]["kind"] == "config"
    assert any(
        p["file"].endswith("web/permissions.yaml") and "invalid mode '9999'" in p["message"]
        for p in doc["error"]["problems"]
    )
    assert jobs_list(sandbox) == []
    assert os.listdir(sandbox.root("web1")) == []
    # ping sends no files: a broken permissions.yaml does not stop it.
    code, doc = run_json(sandbox, "web*", "ping")
    assert code == 0, doc


def test_human_output_escapes_and_colours(sandbox):
    enrol(sandbox, "web1")
    evil = os.path.join(sandbox.config_dir, "web1", "files", "etc", "evil\x1b[2Jname")
    with open(evil, "w") as f:
        f.write("x\n")
    plain = sandbox.cli("run", "web1", "files", env={"NO_COLOR": "1"})
    assert plain.returncode == 0
    assert "\x1b" not in plain.stdout
    assert "evil\\x1b[2Jname" in plain.stdout
    assert "1 host targeted: 1 changed" in plain.stdout


def test_a_host_name_that_is_not_utf8_shows_escaped_once(sandbox):
    """The minion reports an entry it purges whose name is not UTF-8 in
    escape_name() form (caf\\xe9.conf); the text output shows that form once,
    a control character in a name only as an escape, and --json carries the
    reported form as it is."""
    monitor = os.path.join(sandbox.base, "roots", "db1", "etc", "monitor")  # db1's root
    os.makedirs(monitor)
    for name in (b"caf\xe9.conf", b"evil\x1b[2J.conf"):
        with open(os.path.join(os.fsencode(monitor), name), "w") as f:
            f.write("x\n")
    enrol(sandbox, "db1")
    code, doc = run_json(sandbox, "db1", "files", "--dry-run")
    assert code == 0, doc
    assert {"/etc/monitor/caf\\xe9.conf", "/etc/monitor/evil\x1b[2J.conf"} <= set(
        changed_paths(doc, "db1")
    )
    for args in (("run", "db1", "files"), ("jobs", "show", "last")):
        plain = sandbox.cli(*args, env={"NO_COLOR": "1"})
        assert plain.returncode == 0, plain.stderr
        assert "removed /etc/monitor/caf\\xe9.conf " in plain.stdout, args
        assert "removed /etc/monitor/evil\\x1b[2J.conf " in plain.stdout, args
        assert "\\\\x" not in plain.stdout and "\x1b" not in plain.stdout, args
    assert not os.path.exists(os.path.join(os.fsencode(monitor), b"caf\xe9.conf"))


def test_daemon_not_running_is_a_clear_error(sandbox):
    result = sandbox.cli("run", "*", "ping")
    assert result.returncode == 2
    assert "the master daemon is not running" in result.stderr
    for args in (
        ("run", "*", "ping"),
        ("jobs", "list"),
        ("jobs", "show", "last"),
        ("keys", "list"),
    ):
        result = sandbox.cli(*args, "--json")
        assert result.returncode == 2
        doc = schemas.loads(result.stdout, "error")
        assert doc["error"]["kind"] == "daemon", args


def test_history_shows_runs_with_diffs(sandbox):
    enrol(sandbox, "web1", "web2")
    _, first = run_json(sandbox, "web*", "files")
    motd = os.path.join(sandbox.root("web2"), "etc/motd")
    with open(motd, "a") as f:
        f.write("local edit\n")
    _, second = run_json(sandbox, "web2", "files")

    listing = jobs_list(sandbox)
    assert [j["jid"] for j in listing] == [second["jid"], first["jid"]]
    assert listing[0]["target"] == "web2" and listing[0]["summary"]["changed"] == 1
    assert listing[1]["summary"]["hosts"] == 2 and listing[1]["user"] == "root"
    assert [j["jid"] for j in jobs_list(sandbox, "--host", "web1")] == [first["jid"]]
    assert [j["jid"] for j in jobs_list(sandbox, "--target", "web*")] == [first["jid"]]
    both, none = [second["jid"], first["jid"]], []
    for args, expected in [
        (("--module", "files"), both),
        (("--module", "ping"), none),
        (("--status", "changed"), both),
        (("--status", "ok"), none),
        (("--status", "failed"), none),
        (("--status", "no response"), none),
        (("--user", "root"), both),
        (("--user", "nobody"), none),
        (("--since", "1h"), both),
        (("--until", "1h"), none),
        (("--since", listing[0]["submitted"]), [second["jid"]]),
        (("--until", listing[1]["submitted"]), [first["jid"]]),
        (("--since", "2000-01-01", "--until", "2000-01-02T00:00Z"), none),
    ]:
        assert [j["jid"] for j in jobs_list(sandbox, *args)] == expected, args
    bad = sandbox.cli("jobs", "list", "--since", "yesterday-ish", "--json")
    assert bad.returncode == 2
    assert schemas.loads(bad.stdout, "error")["error"]["kind"] == "usage"
    assert "--since" in bad.stderr
    table = sandbox.cli("jobs", "list", env={"TZ": "UTC"}).stdout.splitlines()
    assert table[1].startswith(second["jid"]) and " UTC " in table[1]

    shown = jobs_show(sandbox, second["jid"])
    [host] = shown["hosts"]
    assert host["host"] == "web2" and host["status"] == "changed"
    assert shown["submitted"] <= host["returned"]  # ISO 8601 in UTC sorts as time
    assert jobs_show(sandbox, "last") == shown
    [change] = host["result"]["apply"]["changes"]
    assert change["path"] == "/etc/motd" and "-local edit" in change["diff"]
    human = sandbox.cli("jobs", "show", second["jid"]).stdout
    assert "-local edit" in human and "changed /etc/motd" in human
    assert sandbox.cli("jobs", "show", "20000101T000000.000000Z").returncode == 2
    assert sandbox.cli("jobs", "show", "../../etc").returncode == 2


def test_progress_on_a_terminal(sandbox):
    enrol(sandbox, "web1", "web2")
    sandbox.stop(sandbox.minions["web2"])
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [
                sandbox.python,
                "-m",
                "safcm.master.cli",
                "-c",
                sandbox.master.config,
                "run",
                "web*",
                "ping",
                "--timeout",
                "3",
            ],
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
            env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": SOURCE},
            cwd=SOURCE,
        )
        os.close(secondary)
        out, _ = proc.communicate(timeout=60)
        shown = b""
        while select.select([primary], [], [], 0.5)[0]:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 1
    assert b"1 of 2 hosts returned, waiting" in shown
    assert "web2: no response" in out and "\x1b" not in out


def test_command_line_forms(sandbox):
    enrol(sandbox, "web1")
    for command in (["safcm.master.cli"], ["safcm.minion.cli"]):
        result = sandbox.run([sandbox.python, "-m", *command, "--version"])
        assert result.returncode == 0 and "0." in result.stdout
    # -c after the subcommand, and a duration with a unit.
    result = sandbox.run(
        [
            sandbox.python,
            "-m",
            "safcm.master.cli",
            "run",
            "web1",
            "ping",
            "--timeout",
            "1m",
            "-c",
            sandbox.master.config,
        ]
    )
    assert result.returncode == 0, result.stderr
    fingerprint = sandbox.run(
        [
            sandbox.python,
            "-m",
            "safcm.minion.cli",
            "fingerprint",
            "-c",
            sandbox.minions["web1"].config,
        ]
    )
    assert fingerprint.returncode == 0 and "minion web1 key fingerprint" in fingerprint.stdout
    # An empty target is said in the user's words, not the protocol's.
    result = sandbox.cli("run", "", "ping")
    assert result.returncode == 2
    assert "TARGET is empty" in result.stderr and "body" not in result.stderr
    result = sandbox.cli("run", "web1", "ping", "--timeout", "soon")
    assert result.returncode == 2 and "must be a duration" in result.stderr


def test_check_validates_settings_and_repository_without_a_daemon(sandbox):
    result = sandbox.cli("check")
    assert result.returncode == 0, result.stderr
    assert "ok; 4 hosts compiled" in result.stdout
    assert sandbox.cli("check", "web1").stdout.endswith("ok; 1 host compiled\n")
    result = sandbox.cli("check", "web1", "--json")
    assert result.returncode == 0
    doc = validate(json.loads(result.stdout), "check")
    assert (doc["ok"], doc["stage"], doc["hosts"], doc["problems"]) == (True, None, ["web1"], [])
    with open(os.path.join(sandbox.config_dir, "web", "permissions.yaml"), "a") as f:
        f.write('/srv/www/releases: "9999"\n')
    result = sandbox.cli("check")
    assert result.returncode == 2
    assert "web/permissions.yaml:" in result.stderr and "invalid mode '9999'" in result.stderr
    result = sandbox.cli("check", "--json")
    assert result.returncode == 2 and result.stderr == ""
    doc = validate(json.loads(result.stdout), "check")
    assert (doc["ok"], doc["stage"], doc["config_dir"]) == (False, "repository", sandbox.config_dir)
    [problem] = doc["problems"]
    assert problem["file"].endswith("web/permissions.yaml") and problem["line"] >= 1
    assert "invalid mode '9999'" in problem["message"]
    sandbox.configure_master(bogus=1)
    result = sandbox.cli("check")
    assert result.returncode == 2 and "bogus: unknown key" in result.stderr
    doc = validate(json.loads(sandbox.cli("check", "--json").stdout), "check")
    assert doc["stage"] == "settings" and doc["config_dir"] is None
    assert "bogus: unknown key" in doc["problems"][0]["message"]
    # The minion's settings.
    sandbox.add_minion("web1")
    result = sandbox.minion_cli("web1", "check")
    assert result.returncode == 0 and "ok; minion web1, master 127.0.0.1, pins master" in (
        result.stdout
    )
    sandbox.add_minion("web2", heartbeat_interval="soon")
    result = sandbox.minion_cli("web2", "check")
    assert result.returncode == 2 and "heartbeat_interval" in result.stderr


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (
            {"admin_group": "nosuchgroup"},
            "admin_group: there is no group 'nosuchgroup' on this host",
        ),
        (
            {"control_socket": "/nonexistent-safcm/control.sock"},
            "control_socket: the directory /nonexistent-safcm does not exist",
        ),
        # A job could not be sent: its envelope would outlive MAX_ENVELOPE_TTL.
        ({"job_timeout": "2d"}, "job_timeout: must be from 1 s to 86395 s (23h 59m 55s)"),
    ],
)
def test_check_refuses_what_the_daemon_refuses(sandbox, settings, problem):
    sandbox.configure_master(**settings)
    checked = sandbox.cli("check")
    assert checked.returncode == 2, checked.stdout
    assert f"{sandbox.master.config}" in checked.stderr and problem in checked.stderr
    doc = validate(json.loads(sandbox.cli("check", "--json").stdout), "check")
    assert doc["stage"] == "settings" and problem in doc["problems"][0]["message"]
    # The daemon refuses to start with the same words, and changes nothing.
    started = sandbox.cli("daemon", timeout=SETTLE)
    assert started.returncode == 2 and problem in started.stderr
    assert not os.path.exists(sandbox.master.settings["state_dir"])


# A template that keeps the compiler busy for seconds (a million steps of
# Jinja), and renders to one short line.
SLOW_TEMPLATE = (
    "{% set ns = namespace(n=0) %}{% for i in range(1000) %}{% for j in range(1000) %}"
    "{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}steps: {{ ns.n }}\n"
)


def test_the_master_serves_others_while_a_run_is_prepared(sandbox):
    # Loading and compiling run off the event loop: while a slow compile goes
    # on, another administrator's request is answered, and the job starts after.
    enrol(sandbox, "web1")
    with open(os.path.join(sandbox.config_dir, "all", "files", "etc", "motd"), "w") as f:
        f.write(SLOW_TEMPLATE)
    run = sandbox.spawn_cli("run", "web1", "files", "--json")
    try:
        logged(sandbox.master, "preparing a run of files for web1 (by root)")
        listing = sandbox.cli("keys", "list")
        assert listing.returncode == 0 and "web1" in listing.stdout
        assert ": files on web1 by root" not in sandbox.master.log_text()  # not started yet
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    assert by_host(schemas.loads(out, "run"))["web1"]["status"] == "changed"
    with open(os.path.join(sandbox.minions["web1"].settings["root"], "etc", "motd")) as f:
        assert f.read() == "steps: 1000000\n"


def test_a_job_is_stored_off_the_loop_and_takes_no_result_before_it_starts(sandbox, fake):
    # A job's rows are written off the event loop, and may wait there: here for
    # another writer of the database (a backup, an sqlite3 shell). Meanwhile
    # the master answers others, and a result for the job (none can be
    # genuine: nothing was published) is refused, not filed; once the rows
    # are in, the job starts and takes its host's real result.
    sandbox.start_master()
    web3 = accepted_fake(sandbox, fake, "web3")
    web3.subscribe()
    other_writer = sqlite3.connect(
        os.path.join(sandbox.master.settings["state_dir"], DB_NAME), isolation_level=None
    )
    other_writer.execute("BEGIN IMMEDIATE")
    run = sandbox.spawn_cli("run", "web3", "ping", "--json")
    try:
        jid = wait_for(
            lambda: re.search(r"job (\S+): storing it for 1 hosts", sandbox.master.log_text()),
            SETTLE,
            "the job to be stored",
        ).group(1)
        # Quick steps from here to the COMMIT: the job waits for the lock
        # only so long (WORKER_BUSY_TIMEOUT_MS), then fails.
        with ControlClient(sandbox.control_path) as client:
            listing = client.request(MsgType.KEYS, {"action": "list", "ids": []}).body
        assert [k["id"] for k in listing["keys"]] == ["web3"]
        early = {**ping_result(time.time()), "ping": {"version": "early", "time": time.time()}}
        web3.send_raw(web3.seal(MsgType.RESULT, early, jid=jid))
        logged(sandbox.master, f"result for job {jid}, which was never sent to it")
        assert f"job {jid}: ping on web3" not in sandbox.master.log_text()  # not started yet
        other_writer.execute("COMMIT")
        _frame, job = web3.recv_job(int(SETTLE * 1000))
        assert job.jid == jid
        web3.send_raw(web3.seal(MsgType.RESULT, ping_result(time.time()), jid=jid))
        assert web3.recv().type is MsgType.RESULT_RECEIPT
        out, err = run.communicate(timeout=SETTLE)
    finally:
        other_writer.close()
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    assert by_host(schemas.loads(out, "run"))["web3"]["status"] == "ok"
    [host] = jobs_show(sandbox, jid)["hosts"]
    assert host["result"]["ping"]["version"] == "fake"
