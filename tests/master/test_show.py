"""`safcm-master show HOST`: through the real command line, and its escaping."""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safcm.common.text import escape
from safcm.master import cli
from tests import schemas
from tests.hosts.fleet import write_repo

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "repo"
INVALID_MANY = ROOT / "tests" / "master" / "repos" / "invalid_many" / "repo"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: PLW1510 - the tests look at the exit code
        [sys.executable, "-m", "safcm.master.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rows(table: str) -> dict[str, list[str]]:
    """The table's file rows, by path, split into columns."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("PATH "))
    result = {}
    for line in lines[start + 1 :]:
        if not line.startswith("/"):
            continue
        cells = line.split()
        result[cells[0]] = cells[1:]
    return result


def test_show_table_through_the_cli():
    proc = run_cli("show", "web1", "--repo", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert out.startswith("host web1: groups all, monitored, web, web1 (lowest priority first)\n")
    table = rows(out)
    # TYPE MODE USER GROUP [SIZE/TARGET] FROM [TEMPLATE]
    assert table["/srv/www"] == ["dir", "2775", "root", "www-data", "web"]
    assert table["/srv/www/uploads"] == ["dir", "1777", "root", "root", "web"]
    assert table["/srv/www/current"] == [
        "symlink",
        "0777",
        "root",
        "root",
        "->",
        "releases/1",
        "web",
    ]
    size = len((EXAMPLE / "web1/files/etc/app/feature-flags.conf").read_bytes())
    assert table["/etc/app/feature-flags.conf"] == [
        "file",
        "0644",
        "root",
        "root",
        str(size),
        "web1",
    ]
    motd = "web1 is managed by safcm: local changes to managed files are overwritten.\n"
    motd += "Groups: all, monitored, web, web1\n"
    assert table["/etc/motd"] == ["file", "0644", "root", "root", str(len(motd)), "all", "yes"]
    assert table["/usr/local/bin/health-check"][:4] == ["file", "0750", "root", "adm"]
    # Triggers follow their path's row.
    lines = out.splitlines()
    i = lines.index(next(line for line in lines if line.startswith("/srv/www ")))
    assert lines[i + 1] == '    trigger: echo "reload web server"'
    # Which directories are only passed through (never changed when present).
    assert " ".join(table["/usr/local"][5:]) == "pass-through (created if missing, never changed)"
    assert table["/srv/www"][-1] == "web"  # named in permissions.yaml: managed fully
    assert "absent: /srv/www/releases/0 (recursive)" in lines
    assert "purged: /etc/monitor (undeclared entries are removed)" in lines
    assert lines[-1] == (
        "20 paths: 12 directories (10 passed through), 7 files (2 from templates), 1 symlink;"
        " 3 with triggers"
    )


def test_show_names_the_packages_and_their_groups():
    proc = run_cli("show", "web1", "--repo", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert "install: bash (from all)\n" in proc.stdout
    assert "remove: telnetd (from all)\n" in proc.stdout
    proc = run_cli("show", "web1", "--json", "--repo", str(EXAMPLE))
    packages = schemas.loads(proc.stdout, "show")["packages"]
    assert packages[0] == {"name": "bash", "want": "install", "version": None, "provider": "all"}
    assert [p["name"] for p in packages] == ["bash", "coreutils", "rsh-server", "telnetd"]


# web1's units: "all" and web agree on cron; web1 (the host's own group)
# outranks "all" on ssh; the rest are each one group's.
SERVICES = {
    "all": {"services.yaml": {"enable": ["cron", "ssh"], "stop": ["debug-shell"]}},
    "web": {"services.yaml": {"enable": ["cron", "nginx"], "mask": ["telnet.socket"]}},
    "web1": {"services.yaml": {"disable": ["apache2"], "stop": ["ssh"]}},
}


def test_show_names_the_services_and_their_groups(tmp_path, capsys):
    repo = tmp_path / "repo"
    write_repo(str(repo), ["web1", "db1"], SERVICES)
    assert cli.main(["show", "web1", "--repo", str(repo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # After the (empty) table, by unit name, and before the summary.
    assert lines[-9:-1] == [
        "",
        "disable: apache2.service (from web1)",
        "enable: cron.service (from all, web)",
        "stop: debug-shell.service (from all)",
        "enable: nginx.service (from web)",
        "stop: ssh.service (from web1)",
        "mask: telnet.socket (from web)",
        "",
    ]
    assert cli.main(["show", "web1", "--json", "--repo", str(repo)]) == 0
    services = schemas.loads(capsys.readouterr().out, "show")["services"]
    assert [s["unit"] for s in services] == [
        "apache2.service",
        "cron.service",
        "debug-shell.service",
        "nginx.service",
        "ssh.service",
        "telnet.socket",
    ]
    assert services[1] == {
        "unit": "cron.service",
        "wish": "enable",
        "enablement": "enabled",
        "running": True,
        "declared_by": ["all", "web"],
    }
    assert services[4] == {
        "unit": "ssh.service",
        "wish": "stop",
        "enablement": None,
        "running": False,
        "declared_by": ["web1"],
    }
    assert services[5]["enablement"] == "masked" and services[5]["running"] is False
    # db1 is in web too (write_repo), but not in web1.
    assert cli.main(["show", "db1", "--json", "--repo", str(repo)]) == 0
    services = schemas.loads(capsys.readouterr().out, "show")["services"]
    assert {s["unit"]: s["wish"] for s in services}["ssh.service"] == "enable"


@pytest.mark.parametrize(
    ("groups", "problem"),
    [
        (
            {"web": {"services.yaml": 'enable: ["../../etc/passwd"]\n'}},
            "web/services.yaml:1: '../../etc/passwd.service' is not a valid unit name",
        ),
        (
            {
                "db": {"services.yaml": "stop: [nginx]\n"},
                "web": {"services.yaml": "enable: [nginx]\n"},
            },
            "db/services.yaml:1: nginx.service for web1: stop in db/services.yaml:1 and"
            " enable in web/services.yaml:1, and no group_order in config.yaml ranks them;"
            " list the groups in group_order or make them agree",
        ),
    ],
    ids=["invalid-unit-name", "unranked-conflict"],
)
def test_show_refuses_broken_services_as_check_does(tmp_path, groups, problem):
    repo = tmp_path / "repo"
    write_repo(str(repo), ["web1"], groups)
    settings = tmp_path / "master.yaml"
    settings.write_text(f"state_dir: {tmp_path / 'state'}\nconfig_dir: {repo}\n")
    check = run_cli("-c", str(settings), "check")
    show = run_cli("-c", str(settings), "show", "web1")
    assert (check.returncode, show.returncode) == (2, 2)
    assert show.stdout == ""
    assert show.stderr.splitlines()[1:] == [f"  {problem}"]
    assert [line for line in check.stderr.splitlines() if line.startswith("  ")] == [f"  {problem}"]
    show = run_cli("-c", str(settings), "show", "web1", "--json")
    assert show.returncode == 2
    error = schemas.loads(show.stdout, "error")["error"]
    [found] = error["problems"]
    assert f"{found['file']}:{found['line']}: {found['message']}" == problem


def test_show_json_through_the_cli():
    proc = run_cli("show", "db1", "--json", "--repo", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    doc = schemas.loads(proc.stdout, "show")
    assert doc["host"] == "db1" and doc["format"] == "safcm/1"
    assert doc["groups"] == ["all", "monitored", "db", "db1"]
    files = {f["path"]: f for f in doc["files"]}
    assert [f["path"] for f in doc["files"]] == sorted(files)
    conf = (EXAMPLE / "db/files/etc/db/db.conf").read_bytes()
    assert files["/etc/db/db.conf"] == {
        "path": "/etc/db/db.conf",
        "type": "file",
        "mode": "0640",
        "user": "daemon",
        "uid": None,
        "group": "adm",
        "gid": None,
        "size": len(conf),
        "sha256": hashlib.sha256(conf).hexdigest(),
        "target": None,
        "provider": "db",
        "source": "db/files/etc/db/db.conf",
        "template": False,
        "triggers": ['echo "database configuration changed"'],
        "passthrough": False,
        "secret": False,
    }
    # A secret's content is not even hashed; a pass-through directory is marked.
    assert files["/etc/db/credentials"]["secret"] is True
    assert files["/etc/db/credentials"]["sha256"] is None
    assert files["/usr/local"]["passthrough"] is True and files["/etc/db"]["passthrough"] is False
    assert doc["purge"] == ["/etc/monitor"] and doc["secrets"] == ["/etc/db/credentials"]
    assert doc["absent"] == []
    assert files["/etc/db"]["uid"] == 1 and files["/etc/db"]["user"] is None
    assert files["/etc/db"]["gid"] == 4 and files["/etc/db"]["group"] is None
    assert files["/etc/monitor/agent.conf"]["template"] is True
    # group_order: db1 is not in web, so monitored's logging.conf is the one it gets.
    assert files["/etc/app/logging.conf"]["provider"] == "monitored"
    assert "/srv/www" not in files


def test_show_unknown_host_exits_2():
    proc = run_cli("show", "nope", "--repo", str(EXAMPLE))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "hosts.yaml: unknown host 'nope'" in proc.stderr


def test_show_configuration_error_exits_2_with_every_problem():
    proc = run_cli("show", "web1", "--json", "--repo", str(INVALID_MANY))
    assert proc.returncode == 2
    expected = (INVALID_MANY.parent / "errors.txt").read_text().splitlines()
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("safcm-master: cannot show web1: configuration error in ")
    assert lines[1:] == [f"  {e}" for e in expected]
    # Under --json the same problems are a document on stdout.
    error = schemas.loads(proc.stdout, "error")["error"]
    assert error["kind"] == "config"
    where = [
        p["file"] if p["line"] is None else f"{p['file']}:{p['line']}" for p in error["problems"]
    ]
    assert [
        f"{w}: {p['message']}" for w, p in zip(where, error["problems"], strict=True)
    ] == expected


def test_show_missing_repository_exits_2(tmp_path):
    assert cli.main(["show", "web1", "--repo", str(tmp_path / "none")]) == 2


def test_show_in_process(capsys):
    assert cli.main(["show", "web3", "--repo", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    # web3 is removed from web (web_remove), so it only gets "all".
    assert set(rows(out)) == {"/", "/etc", "/etc/motd"}


def test_show_escapes_control_characters(tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "all/files/etc").mkdir(parents=True)
    (repo / "hosts.yaml").write_text("- name: h1\n")
    (repo / "all/files/etc/evil\x1b[31mred").write_text("x\n")
    (repo / "all/files/etc/link").symlink_to("bell\x07\\")
    (repo / "all/triggers.yaml").write_text('/etc/link:\n  - "echo \\e]0;title\\a"\n')
    assert cli.main(["show", "h1", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "/etc/evil\\x1b[31mred " in out
    assert "-> bell\\x07\\\\ " in out
    assert "    trigger: echo \\x1b]0;title\\x07\n" in out
    assert cli.main(["show", "h1", "--json", "--repo", str(repo)]) == 0
    raw = capsys.readouterr().out
    assert "\x1b" not in raw and "\x07" not in raw
    paths = [f["path"] for f in json.loads(raw)["files"]]
    assert "/etc/evil\x1b[31mred" in paths


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain /etc/motd", "plain /etc/motd"),
        ("tab\there", "tab\\there"),
        ("new\nline\r", "new\\nline\\r"),
        ("esc\x1b[0m", "esc\\x1b[0m"),
        ("del\x7f c1\x9b", "del\\x7f c1\\u009b"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("back\\slash", "back\\\\slash"),
        ("caf\udce9", "caf\\xe9"),  # an undecodable byte kept by surrogateescape
        ("café ünïcode", "café ünïcode"),
    ],
)
def test_escape_text(text, shown):
    assert escape(text) == shown


_ESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8})|(.))")
_NAMED = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}


def unescape(shown: str) -> str:
    def one(m: re.Match) -> str:
        x, u, big, named = m.groups()
        if x is not None:
            code = int(x, 16)
            return chr(code if code < 0x80 else 0xDC00 + code)
        if named is not None:
            return _NAMED[named]
        return chr(int(u or big, 16))

    return _ESCAPE.sub(one, shown)


# Surrogates included: they are how undecodable bytes reach this function.
@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_escape_text_is_printable_and_unambiguous(text):
    shown = escape(text)
    assert shown.isprintable()
    assert unescape(shown) == text


DETECTED = ROOT / "tests" / "master" / "repos" / "detected"


def test_show_marks_groups_detected_from_facts():
    import io

    from safcm.master.show import show_host
    from tests.master.test_compiler import facts_of

    facts = facts_of("detected")
    out = io.StringIO()
    assert (
        show_host(str(DETECTED / "repo"), "web1", as_json=False, out=out, facts=facts["web1"]) == 0
    )
    header = out.getvalue().splitlines()[0]
    assert header == (
        "host web1: groups all, big (detected from facts), bookworm (detected from facts),"
        " debian (detected from facts), web, debian12 (detected from facts), web1"
        " (lowest priority first)"
    )
    out = io.StringIO()
    assert show_host(str(DETECTED / "repo"), "new1", as_json=False, out=out) == 0
    assert "facts: not reported yet (no detected group can hold this host)" in out.getvalue()
    out = io.StringIO()
    assert (
        show_host(str(DETECTED / "repo"), "web2", as_json=True, out=out, facts=facts["web2"]) == 0
    )
    doc = schemas.loads(out.getvalue(), "show")
    assert doc["detected"] == ["arm", "debian"]
    assert doc["facts"]["os_codename"] is None and doc["facts"]["hostname"] == "db1"


def test_facts_command_errors(tmp_path):
    settings = tmp_path / "master.yaml"
    settings.write_text(f"state_dir: {tmp_path / 'state'}\nconfig_dir: {EXAMPLE}\n")
    result = run_cli("-c", str(settings), "facts", "--json")
    assert result.returncode == 0, result.stderr
    assert schemas.loads(result.stdout, "facts") == {"format": "safcm/1", "hosts": []}
    result = run_cli("-c", str(settings), "facts", "web1")  # no database yet: no key, no facts
    assert (result.returncode, result.stdout) == (2, "")
    assert "unknown host web1: the master holds no key and no facts for it" in result.stderr
    result = run_cli("-c", str(settings), "facts", "Web 1", "--json")
    assert result.returncode == 2
    assert schemas.loads(result.stdout, "error")["error"]["kind"] == "usage"
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "master.db").write_text("not a database")
    result = run_cli("-c", str(settings), "facts")
    assert result.returncode == 2 and "cannot read the facts" in result.stderr
