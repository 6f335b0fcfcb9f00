"""The --json format (master/jsonout.py) against its schemas (docs/schema), and
the time arguments of `jobs list` (cli.parse_when)."""

from __future__ import annotations

import datetime
import io
import os
import time

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from safcm.common.model import ApplyResult, FileChange, FileState, FileType, Outcome
from safcm.master import cli, jsonout
from safcm.master.tables import write_json, write_json_streamed
from tests import schemas

ROOT_DIR = FileState(FileType.DIR, 0o755, 0, 0, "root", "root")
ROOT_FILE = FileState(FileType.FILE, 0o644, 0, 0, "root", "root")
T0 = datetime.datetime(2026, 11, 18, 9, 6, 40, 250000, tzinfo=datetime.UTC).timestamp()


def result(changes=(), status="ok"):
    apply = ApplyResult(dry_run=False, changes=list(changes), triggers=[], failures=[], owed=[])
    return {
        "module": "files",
        "status": status,
        "started": T0,
        "finished": T0 + 1.5,
        "apply": apply.to_wire(),
        "ping": None,
        "error": None,
    }


def test_times_are_iso_8601_in_utc_and_modes_octal_strings():
    assert jsonout.iso_time(T0) == "2026-11-18T09:06:40.250000Z"
    assert jsonout.iso_time(0) == "1970-01-01T00:00:00.000000Z"
    change = FileChange(
        "/etc",
        False,
        ROOT_DIR,
        FileState(FileType.DIR, 0o2775, 0, 0, "root", "root"),
        None,
        Outcome.APPLIED,
    )
    doc = jsonout.result_document(result([change]))
    assert doc["started"] == "2026-11-18T09:06:40.250000Z"
    assert doc["finished"] == "2026-11-18T09:06:41.750000Z"
    [c] = doc["apply"]["changes"]
    assert (c["old"]["mode"], c["new"]["mode"]) == ("2775", "0755")


def test_run_document_lists_every_host_with_one_spelling_of_each_outcome():
    created = FileChange("/etc/motd", True, ROOT_FILE, None, "+hi\n", Outcome.APPLIED)
    started = {
        "jid": "20261118T090640.250000Z",
        "hosts": ["web2", "web1", "db1", "web3"],
        "skipped": [{"host": "db9", "reason": "its key is not accepted"}],
    }
    request = {"target": "*", "group": False, "module": "files", "dry_run": False}
    results = {"web1": result([created]), "web2": result(), "db1": None}
    doc = schemas.validate(jsonout.run_document(started, request, results), "run")
    assert [(h["host"], h["status"]) for h in doc["hosts"]] == [
        ("db1", "no response"),
        ("db9", "skipped"),
        ("web1", "changed"),
        ("web2", "ok"),
        ("web3", "pending"),
    ]
    assert doc["summary"] == {
        "hosts": 4,
        "changed": 1,
        "ok": 1,
        "failed": 0,
        "no response": 1,
        "pending": 1,
        "skipped": 1,
    }
    assert doc["format"] == "safcm/1"


class Reads(dict):
    """Results that count the reads of a result."""

    reads = 0

    def __getitem__(self, host):
        self.reads += 1
        return super().__getitem__(host)


def test_run_hosts_reads_each_result_when_its_turn_comes():
    """So that the CLI, whose results are in a file, holds one at a time."""
    started = {"jid": "20261118T090640.250000Z", "hosts": ["c", "a", "b"], "skipped": []}
    results = Reads(a=result(), b=None, c=result())
    hosts = jsonout.run_hosts(started, results, [])
    for count, name in enumerate("abc", 1):
        assert next(hosts)["host"] == name
        assert results.reads == count
    assert next(hosts, None) is None


def test_the_schemas_refuse_the_old_shapes():
    started = {"jid": "20261118T090640.250000Z", "hosts": ["web1"], "skipped": []}
    request = {"target": "web1", "group": False, "module": "files", "dry_run": False}
    doc = jsonout.run_document(started, request, {"web1": result()})
    schemas.validate(doc, "run")
    bad = [
        {**doc, "hosts": {"web1": doc["hosts"][0]}},  # hosts keyed by name
        {**doc, "hosts": [{**doc["hosts"][0], "status": "unchanged"}]},
        {
            **doc,
            "hosts": [{**doc["hosts"][0], "result": {**doc["hosts"][0]["result"], "started": T0}}],
        },
        {**doc, "format": "safcm/0"},
        {k: v for k, v in doc.items() if k != "format"},
    ]
    for d in bad:
        with pytest.raises(jsonschema.ValidationError):
            schemas.validate(d, "run")
    change = doc["hosts"][0]["result"]["apply"]["changes"]
    assert change == []  # (an integer mode is refused below, in a change of its own)
    state = {"type": "file", "mode": 420, "uid": 0, "gid": 0, "user": None, "group": None}
    integer_mode = {"path": "/x", "created": True, "old": None, "new": state, "diff": None}
    integer_mode.update(outcome="applied", reason="")
    apply = {**doc["hosts"][0]["result"]["apply"], "changes": [integer_mode]}
    with pytest.raises(jsonschema.ValidationError, match="420"):
        schemas.validate(
            {
                **doc,
                "hosts": [
                    {**doc["hosts"][0], "result": {**doc["hosts"][0]["result"], "apply": apply}}
                ],
            },
            "run",
        )


def test_jobs_documents_and_keys_and_errors_fit_their_schemas():
    job = {
        "jid": "20261118T090640.250000Z",
        "submitted": T0,
        "deadline": T0 + 60,
        "user": "root",
        "target": "web*",
        "module": "files",
        "dry_run": False,
        "git_commit": None,
    }
    counts = {"hosts": 3, "changed": 1, "ok": 0, "failed": 0, "no_response": 1, "pending": 1}
    listed = schemas.validate(
        jsonout.jobs_list_document({"jobs": [{**job, **counts}]}), "jobs-list"
    )
    assert listed["jobs"][0]["summary"]["no response"] == 1
    assert listed["jobs"][0]["submitted"] == "2026-11-18T09:06:40.250000Z"
    hosts = [
        {
            "host": "web1",
            "state": "done",
            "status": "ok",
            "received": T0,
            "returned": T0 + 2,
            "late": False,
            "result": result([FileChange("/x", True, ROOT_FILE, None, None, Outcome.APPLIED)]),
        },
        {
            "host": "web2",
            "state": "no_response",
            "status": "no response",
            "received": None,
            "returned": None,
            "late": False,
            "result": None,
        },
        {
            "host": "web3",
            "state": "received",
            "status": "pending",
            "received": T0,
            "returned": None,
            "late": False,
            "result": None,
        },
    ]
    shown = schemas.validate(jsonout.job_show_document({"job": job, "hosts": hosts}), "jobs-show")
    assert [h["status"] for h in shown["hosts"]] == ["changed", "no response", "pending"]
    assert shown["hosts"][0]["returned"] == "2026-11-18T09:06:42.250000Z"
    keys = {
        "master": "SHA256:m",
        "publish_port": 4506,
        "keys": [
            {
                "id": "web1",
                "state": "accepted",
                "fingerprint": "SHA256:a",
                "connected": False,
                "not_subscribed": False,
                "last_seen": T0,
            }
        ],
        "refused": [{"id": "web1", "fingerprint": "SHA256:x", "attempts": 2, "last_seen": T0}],
    }
    doc = schemas.validate(jsonout.keys_document(keys), "keys-list")
    assert doc["keys"][0]["host"] == "web1" and "id" not in doc["keys"][0]
    assert doc["keys"][0]["refused_attempts"] == 2
    error = jsonout.error_document(
        "config", "configuration error", [{"file": "a.yaml", "line": 3, "message": "bad"}]
    )
    schemas.validate(error, "error")
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate({"format": "safcm/1", "error": {"kind": "usage", "message": "x"}}, "error")


NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC).timestamp()


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - 1800),
        ("2h", NOW - 7200),
        ("7d", NOW - 7 * 86400),
        ("90", NOW - 90),
        ("2026-12-02T01:00", NOW - 11 * 3600),
        ("2026-12-02 01:00:30", NOW - 11 * 3600 + 30),
        ("2026-12-02", NOW - 12 * 3600),
        ("2026-12-02T01:00Z", NOW - 11 * 3600),
        ("2026-12-02T01:00+01:00", NOW - 12 * 3600),
        ("01:00", NOW - 11 * 3600),
        ("13:30", NOW + 5400),
        ("01:00Z", NOW - 11 * 3600),
    ],
)
def test_when_is_a_time_or_a_duration_back_from_now(utc, text, expected):
    assert cli.parse_when(text, NOW) == pytest.approx(expected)


def test_a_naive_time_is_local(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Vienna")  # UTC+1 in December
    time.tzset()
    try:
        assert cli.parse_when("2026-12-02T01:00", NOW) == NOW - 12 * 3600
        assert cli.parse_when("2026-12-02T01:00Z", NOW) == NOW - 11 * 3600
    finally:
        monkeypatch.undo()
        time.tzset()
    assert os.environ.get("TZ") != "Europe/Vienna"


@pytest.mark.parametrize("text", ["yesterday", "25:00", "-5m", "2026-13-01", ""])
def test_when_refuses_anything_else(text):
    with pytest.raises(ValueError, match="neither a time"):
        cli.parse_when(text, NOW)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    fields=st.dictionaries(st.sampled_from(["dry_run", "format", "jid", "user"]), JSON_VALUES),
    items=st.lists(JSON_VALUES, max_size=4),
    tty=st.booleans(),
)
def test_a_streamed_document_is_the_document_write_json_writes(fields, items, tty):
    """`jobs show --json` writes its hosts as they come: the same text as the
    whole document, on a terminal (indented) and not (compact)."""
    whole, streamed = (Terminal(), Terminal()) if tty else (io.StringIO(), io.StringIO())
    summary = {"hosts": len(items)}
    write_json({**fields, "hosts": items, "summary": summary}, whole)
    write_json_streamed(streamed, fields, "hosts", iter(items), lambda: {"summary": summary})
    assert streamed.getvalue() == whole.getvalue()


def test_a_late_field_must_sort_after_the_items():
    with pytest.raises(ValueError, match="'a' sorts before 'hosts'"):
        write_json_streamed(io.StringIO(), {}, "hosts", iter([]), lambda: {"a": 1})
