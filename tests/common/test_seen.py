"""The persistent seen-jid store: refuses repeats, survives reopening, purges."""

import os
import sqlite3

import pytest

from safcm.common.crypto import Header
from safcm.common.errors import EnvelopeError, ReplayError, StoreError
from safcm.common.seen import SeenJids

JOB, RECEIPT = 5, 8


def header(jid="20270115T080000.000000Z", msg_type=JOB):
    return Header(1, msg_type, jid, "@master", "web1", 1000, 1060)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "seen.db")


def test_a_repeat_is_refused_as_an_opaque_replay(path):
    with SeenJids(path) as seen:
        seen.check_and_add(header(), keep_until=1120, now=1000)
        with pytest.raises(ReplayError) as info:
            seen.check_and_add(header(), keep_until=1120, now=1001)
        assert isinstance(info.value, EnvelopeError)
        assert str(info.value) == "envelope rejected"
        assert info.value.header == header()
        assert "replay" in info.value.reason


def test_the_same_jid_under_another_type_is_not_a_replay(path):
    with SeenJids(path) as seen:
        seen.check_and_add(header(msg_type=JOB), keep_until=1120, now=1000)
        seen.check_and_add(header(msg_type=RECEIPT), keep_until=1120, now=1000)
        assert seen.contains(JOB, header().jid)
        assert seen.contains(RECEIPT, header().jid)
        assert len(seen) == 2


def test_a_replay_is_refused_after_reopening(path):
    with SeenJids(path) as seen:
        seen.check_and_add(header(), keep_until=1120, now=1000)
    with SeenJids(path) as seen, pytest.raises(ReplayError):
        seen.check_and_add(header(), keep_until=1120, now=1050)


def test_entries_are_kept_until_keep_until_then_purged(path):
    with SeenJids(path) as seen:
        seen.check_and_add(header("20270115T080000.000001Z"), keep_until=1120, now=1000)
        seen.check_and_add(header("20270115T080000.000002Z"), keep_until=1500, now=1000)
        assert seen.purge(now=1120) == 0  # kept up to and including keep_until
        assert seen.purge(now=1120.5) == 1
        assert not seen.contains(JOB, "20270115T080000.000001Z")
        assert seen.contains(JOB, "20270115T080000.000002Z")


def test_adding_purges_expired_entries(path):
    with SeenJids(path) as seen:
        for i in range(5):
            seen.check_and_add(header(f"20270115T080000.00000{i}Z"), keep_until=1100 + i, now=1000)
        seen.check_and_add(header("20270115T090000.000000Z"), keep_until=2000, now=1102.5)
        assert len(seen) == 3


def test_the_store_is_durable_wal(path):
    with SeenJids(path) as seen:
        seen.check_and_add(header(), keep_until=1120, now=1000)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_jids_are_parameters_never_sql(path):
    evil = Header(1, JOB, "x'); DROP TABLE seen; --", "@master", "web1", 1, 2)
    with SeenJids(path) as seen:
        seen.check_and_add(evil, keep_until=10, now=1)
        assert seen.contains(JOB, evil.jid)
        assert len(seen) == 1


def test_an_unusable_database_is_a_store_error(tmp_path):
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="seen-jid store"):
        SeenJids(str(bad))
    with pytest.raises(StoreError, match="seen-jid store"):
        SeenJids(os.path.join(str(tmp_path), "missing-dir", "seen.db"))


def test_a_store_from_before_the_started_mark_is_given_it(path):
    # kept_jobs as minions before the mark made it: the kept job survives.
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE kept_jobs (jid TEXT PRIMARY KEY, body BLOB NOT NULL);")
    db.execute("INSERT INTO kept_jobs VALUES ('J1', x'00')")
    db.commit()
    db.close()
    with SeenJids(path) as seen:
        assert seen.kept() == ["J1"] and seen.started() == frozenset()
        seen.mark_started("J1")
    with SeenJids(path) as seen:
        assert seen.started() == {"J1"} and seen.kept_body("J1") == b"\x00"
        seen.drop("J1")
        assert seen.started() == frozenset()
