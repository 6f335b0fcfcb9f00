"""The master's SQLite stores: job history and minion keys, on a real database file."""

import json
import sqlite3

import pytest

from safcm.common import codec
from safcm.common.crypto import PublicKeys
from safcm.common.errors import StoreError, UsageError
from safcm.common.ids import jid_time
from safcm.common.model import FileSpec
from safcm.master.db import DB_NAME, open_db
from safcm.master.facts import FactStore
from safcm.master.jobcontent import JobParts
from safcm.master.jobstore import (
    Answer,
    HostState,
    HostStatus,
    JobRecord,
    JobStore,
    StoredResult,
)
from safcm.master.keystore import Action, KeyState, KeyStore
from safcm.master.lifecycle import OpenRow
from safcm.master.outcomes import change_count, host_status


def parts(*hosts: str, files: tuple[FileSpec, ...] = ()) -> JobParts:
    """A job's parts for `hosts`, each with the same `files`."""
    job_parts = JobParts(100.0)
    for host in hosts:
        body = {
            "module": "files",
            "dry_run": False,
            "deadline": 100.0,
            "files": [f.to_wire() for f in files],
            "absent": [],
            "purge": [],
            "secrets": [],
        }
        job_parts.add(host, body, lambda _host: frozenset())
    return job_parts


def job(jid, target="web*", deadline=100.0, dry_run=False):
    return JobRecord(jid, 10.0, deadline, "root", target, "files", dry_run, "abc123")


def test_database_is_private_and_wal(tmp_path, sqlite_conn):
    conn = sqlite_conn
    assert (tmp_path / DB_NAME).stat().st_mode & 0o777 == 0o600
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1


def test_job_life_cycle(conn):
    store = JobStore(conn)
    store.create(job("J1"), parts("web1", "web2", "web3"))
    assert store.last_jid() == "J1"
    assert store.open_hosts() == [
        OpenRow("J1", h, HostState.SENT, 100.0) for h in ("web1", "web2", "web3")
    ]
    assert set(store.parts("J1").hosts) == {"web1", "web2", "web3"}

    store.record([("J1", "web1"), ("J1", "db1")], [], now=11)  # db1: never sent there
    store.record([("J1", "web1")], [], now=12)  # a second receipt changes nothing
    assert store.get_hosts("J1", "web1")[0].received == 11
    assert set(store.parts("J1").hosts) == {"web2", "web3"}  # web1 received it
    assert [(r.host, r.state) for r in store.open_hosts()] == [
        ("web1", HostState.RECEIVED),
        ("web2", HostState.SENT),
        ("web3", HostState.SENT),
    ]
    assert store.host_state("J1", "web1") is HostState.RECEIVED
    assert store.host_state("J1", "db1") is None
    assert store.host_state("J2", "web1") is None

    body = {"module": "files", "result": {"changes": [{"path": "/etc/motd"}]}}
    stored = StoredResult("J1", "web1", HostStatus.CHANGED, 1, body, 12.0, codec.pack(body))
    store.record([], [stored], now=12)
    assert store.stored_bytes("web1") == len(codec.pack(body))
    assert store.host_state("J1", "web1") is HostState.DONE

    store.no_response([("J1", "web1"), ("J1", "web2"), ("J1", "web3")])  # web1 keeps its result
    assert store.open_hosts() == []
    assert store.parts("J1") is None  # nothing left to publish
    # A late result is still stored; its host is no longer "no response".
    late = StoredResult(
        "J1", "web3", HostStatus.OK, 0, {"late": True}, 120.0, codec.pack({"late": True})
    )
    store.record([], [late], now=120)

    hosts = {h.host: h for h in store.get_hosts("J1")}
    assert hosts["web1"].result == body and hosts["web1"].status is HostStatus.CHANGED
    assert hosts["web2"].state is HostState.NO_RESPONSE and hosts["web2"].result is None
    assert hosts["web3"].result == {"late": True}
    assert hosts["web3"].late and not hosts["web1"].late  # web1 answered in time
    [summary] = store.list_jobs()
    assert (summary.hosts, summary.changed, summary.ok, summary.no_response) == (3, 1, 1, 1)
    assert store.get_hosts("J1", "web2")[0].host == "web2"


def test_list_filters_and_order(conn):
    store = JobStore(conn)
    store.create(job("20260101T000000.000001Z", target="web*"), parts("web1", "web2"))
    store.create(job("20260101T000000.000002Z", target="@db"), parts("db1"))
    store.create(job("20260101T000000.000003Z", target="web1"), parts("web1"))
    jids = [s.job.jid[-3:] for s in store.list_jobs()]
    assert jids == ["03Z", "02Z", "01Z"]
    assert [s.job.jid[-3:] for s in store.list_jobs(host="web1")] == ["03Z", "01Z"]
    assert [s.job.jid[-3:] for s in store.list_jobs(target="@db")] == ["02Z"]
    assert [s.job.jid[-3:] for s in store.list_jobs(limit=1)] == ["03Z"]
    assert store.purge_before("20260101T000000.000003Z") == (2, False)
    assert [s.job.jid[-3:] for s in store.list_jobs()] == ["03Z"]
    # host rows went with their jobs
    assert conn.execute("SELECT count(*) FROM job_hosts").fetchone()[0] == 1


def test_a_jobs_module_is_known_once_it_started_and_forgotten_when_purged(conn, monkeypatch):
    monkeypatch.setattr("safcm.master.jobstore.MODULE_MEMO", 2)
    store = JobStore(conn)
    first, second, third = (f"20260101T000000.00000{i}Z" for i in (1, 2, 3))
    store.store(job(first, dry_run=True), parts("web1"))
    assert store.module_of(first) is None  # stored, not started: no result answers it
    store.start(first)
    assert store.module_of(first) == ("files", True)
    store.create(job(second), parts("web1"))
    store.create(job(third), parts("web1"))
    assert store.module_of(second) == ("files", False)
    assert store.module_of(third) == ("files", False)  # the memo drops the first
    assert store.module_of(first) == ("files", True)  # read again
    assert store.purge_before(third) == (2, False)
    assert store.module_of(first) is None and store.module_of(second) is None
    assert store.module_of(third) == ("files", False)


def test_old_jobs_are_purged_a_chunk_of_host_rows_at_a_time(conn):
    store = JobStore(conn)
    store.create(job("20260101T000000.000001Z"), parts("web1", "web2", "web3"))
    store.create(job("20260101T000000.000002Z"), parts("db1"))
    store.create(job("20260101T000000.000003Z"), parts("web1"))
    cutoff = "20260101T000000.000003Z"
    steps = []
    while True:
        jobs, more = store.purge_before(cutoff, rows=2)
        steps.append(jobs)
        if not more:
            break
    assert steps == [0, 0, 2]  # four host rows two at a time, then the jobs themselves
    assert [s.job.jid[-3:] for s in store.list_jobs()] == ["03Z"]
    assert conn.execute("SELECT count(*) FROM job_hosts").fetchone()[0] == 1
    assert store.purge_before(cutoff, rows=2) == (0, False)


def test_history_survives_reopen(tmp_path):
    c = open_db(str(tmp_path))
    JobStore(c).create(job("J9"), parts("web1"))
    c.close()
    c = open_db(str(tmp_path))
    assert JobStore(c).get_job("J9") == job("J9")
    c.close()


def pub(sign: bytes, kx: bytes = b"k" * 32, curve: bytes | None = None) -> PublicKeys:
    return PublicKeys(sign=sign, kx=kx, curve=curve or sign[:1] * 32)


def test_keys(conn):
    keys = KeyStore(conn)
    enrol = dict(now=1.0, auto_accept=False)
    assert keys.enrol("web1", pub(b"s" * 32, b"k" * 32), **enrol) is KeyState.PENDING
    assert keys.enrol("web2", pub(b"t" * 32, b"l" * 32), **enrol) is KeyState.PENDING
    assert keys.accepted("web1") is None
    # The same keys again: the same state. Other keys for a known id: refused, recorded.
    assert keys.enrol("web1", pub(b"s" * 32, b"k" * 32), **enrol) is KeyState.PENDING
    assert keys.enrol("web1", pub(b"X" * 32, b"k" * 32), **enrol) is None
    assert keys.enrol("web1", pub(b"X" * 32, b"k" * 32), now=2.0, auto_accept=False) is None
    [refused] = keys.refused()
    fpx = pub(b"X" * 32).fingerprint()
    assert (refused.id, refused.fingerprint, refused.attempts) == ("web1", fpx, 2)
    assert refused.public == pub(b"X" * 32)

    # web1 is contested: accepting it needs the fingerprint of the key to accept.
    with pytest.raises(UsageError, match="other keys have claimed the id of web1"):
        keys.set_state(["web*"], KeyState.ACCEPTED, now=3.0)
    assert keys.accepted("web2") is None  # nothing was accepted
    with pytest.raises(UsageError, match="no key with fingerprint"):
        keys.set_state(
            ["web1"], KeyState.ACCEPTED, now=3.0, fingerprint=pub(b"Q" * 32).fingerprint()
        )
    changed = keys.set_state(
        ["web1"], KeyState.ACCEPTED, now=3.0, fingerprint=pub(b"s" * 32).fingerprint()
    )
    assert [k.id for k in changed] == ["web1"]
    assert keys.refused() == []  # settled
    changed = keys.set_state(["web*"], KeyState.ACCEPTED, now=3.0)
    assert [k.id for k in changed] == ["web2"]
    assert keys.accepted("web1").sign_pub == b"s" * 32
    assert keys.set_state(["web1"], KeyState.ACCEPTED, now=4.0) == []  # already accepted
    with pytest.raises(UsageError, match="db9"):
        keys.set_state(["db9"], KeyState.ACCEPTED, now=4.0)
    keys.set_state(["web2"], KeyState.REJECTED, now=5.0)
    assert keys.accepted("web2") is None

    keys.touch("web1", 6.0, seq=9)
    keys.flush()
    assert KeyStore(conn).get("web1").seq == 9  # a replay stays refused after a restart
    facts = FactStore(conn)
    facts.put("web1", {"os_id": "debian"}, now=6.0)
    facts.put("web2", {"os_id": "debian"}, now=6.0)
    assert [k.id for k in keys.delete(["web1"])] == ["web1"]
    assert keys.refused() == []
    assert list(facts.all()) == ["web2"]  # a new host under the id inherits no facts
    # After delete the id may enrol with new keys, and starts pending again.
    assert keys.enrol("web1", pub(b"X" * 32, b"k" * 32), **enrol) is KeyState.PENDING

    again = KeyStore(conn)  # what a restarted daemon reads back
    assert {k.id: k.state for k in again.all()} == {
        "web1": KeyState.PENDING,
        "web2": KeyState.REJECTED,
    }


def test_auto_accept(conn):
    keys = KeyStore(conn)
    assert (
        keys.enrol("db1", pub(b"a" * 32, b"b" * 32), now=1, auto_accept=True) is KeyState.ACCEPTED
    )


def test_a_glob_accepts_or_rejects_pending_keys_only(conn):
    """Accepting the new 'web*' hosts must not accept the key rejected last
    week, nor rejecting new ones or deleting a flood cut the accepted fleet.
    A key named changes from any state."""
    keys = KeyStore(conn)
    for i, minion in enumerate(("web1", "web2", "web3", "web4")):
        keys.enrol(minion, pub(bytes([65 + i]) * 32), now=1.0, auto_accept=False)
    keys.set_state(["web1"], KeyState.REJECTED, now=2.0)
    keys.set_state(["web2"], KeyState.ACCEPTED, now=2.0)

    assert [k.id for k in keys.left_by_patterns(["web*"], Action.ACCEPT)] == ["web1"]
    assert keys.left_by_patterns(["web*", "web1"], Action.ACCEPT) == []  # named
    changed = keys.set_state(["web*"], KeyState.ACCEPTED, now=3.0)
    assert [k.id for k in changed] == ["web3", "web4"]
    assert keys.get("web1").state is KeyState.REJECTED

    assert keys.set_state(["web*"], KeyState.ACCEPTED, now=4.0) == []  # nothing pending
    left = r"web1\* match only keys a pattern does not accept: web1 \(rejected\); name a key"
    with pytest.raises(UsageError, match=left):
        keys.set_state(["web1*"], KeyState.ACCEPTED, now=4.0)
    with pytest.raises(UsageError, match=r"not reject: web2 \(accepted\), web3 \(accepted\)"):
        keys.set_state(["web[23]"], KeyState.REJECTED, now=4.0)
    assert keys.accepted("web2") is not None

    assert [k.id for k in keys.set_state(["web1"], KeyState.ACCEPTED, now=5.0)] == ["web1"]
    assert [k.id for k in keys.set_state(["web2"], KeyState.REJECTED, now=5.0)] == ["web2"]

    # A glob deletes pending and rejected keys (an enrolment flood cleared), not accepted ones.
    keys.enrol("flood1", pub(b"F" * 32), now=6.0, auto_accept=False)
    assert [k.id for k in keys.delete(["*"])] == ["flood1", "web2"]
    assert [k.id for k in keys.all()] == ["web1", "web3", "web4"]
    with pytest.raises(UsageError, match=r"web\* match only keys a pattern does not delete"):
        keys.delete(["web*"])
    assert [k.id for k in keys.delete(["web1"])] == ["web1"]


def test_last_seen_is_flushed(conn):
    keys = KeyStore(conn)
    keys.enrol("web1", pub(b"s" * 32, b"k" * 32), now=1, auto_accept=True)
    keys.touch("web1", 42.0)
    assert conn.execute("SELECT last_seen FROM minions").fetchone()[0] is None
    keys.flush()
    assert conn.execute("SELECT last_seen FROM minions").fetchone()[0] == 42.0


def test_a_refused_claimant_can_be_chosen_by_fingerprint(conn):
    # A stranger enrolled as web1 first; the real web1 came second and was refused.
    keys = KeyStore(conn)
    stranger, real = pub(b"s" * 32), pub(b"r" * 32)
    keys.enrol("web1", stranger, now=1, auto_accept=False)
    assert keys.enrol("web1", real, now=2, auto_accept=False) is None
    keys.set_state(["web1"], KeyState.ACCEPTED, now=3, fingerprint=real.fingerprint())
    assert keys.accepted("web1").public == real
    assert keys.accepted_by_curve(real.curve).id == "web1"
    assert keys.by_curve(stranger.curve) is None
    assert KeyStore(conn).accepted("web1").public == real


def test_newer_schema_is_refused(tmp_path):
    c = sqlite3.connect(tmp_path / DB_NAME)
    c.execute("PRAGMA user_version = 999")
    c.close()
    with pytest.raises(StoreError, match="newer than this safcm"):
        open_db(str(tmp_path))


def test_unauthenticated_enrolment_is_bounded(conn, monkeypatch):
    from safcm.master import keystore

    monkeypatch.setattr(keystore, "MAX_PENDING_KEYS", 3)
    keys = KeyStore(conn)
    for i in range(3):
        assert (
            keys.enrol(f"m{i}", pub(bytes([i]) * 32, b"k" * 32), now=1, auto_accept=False)
            is KeyState.PENDING
        )
    assert keys.enrol("m9", pub(b"9" * 32, b"k" * 32), now=1, auto_accept=False) is None
    assert keys.get("m9") is None
    for i in range(keystore.MAX_REFUSED_PER_ID + 5):
        keys.enrol("m0", pub((b"%03d" % i * 11)[:32], b"k" * 32), now=10 + i, auto_accept=False)
    refused = keys.refused()
    assert len(refused) == keystore.MAX_REFUSED_PER_ID
    newest = pub((b"%03d" % (keystore.MAX_REFUSED_PER_ID + 4) * 11)[:32])
    assert refused[-1].fingerprint == newest.fingerprint()  # newest kept


def test_at_the_pending_limit_a_new_id_takes_the_place_of_the_key_heard_from_longest_ago(
    conn, monkeypatch
):
    # A flood of invented ids must not shut real hosts out until an
    # administrator clears it: before, the fourth id here was refused for good.
    from safcm.master import keystore

    monkeypatch.setattr(keystore, "MAX_PENDING_KEYS", 3)
    keys = KeyStore(conn)
    enrol = dict(auto_accept=False)
    keys.enrol("old", pub(b"o" * 32), now=0, auto_accept=True)  # accepted: never dropped
    for i, name in enumerate(["m0", "m1", "m2"]):
        assert keys.enrol(name, pub(bytes([i]) * 32), now=1 + i, **enrol) is KeyState.PENDING
    keys.enrol("m1", pub(b"x" * 32), now=4, **enrol)  # a claim on m1: refused, remembered
    keys.touch("m0", 5)  # m0's minion asks again: heard from last; m1 now the stalest
    keys.flush()
    assert keys.make_room().id == "m1"
    assert keys.make_room() is None  # room enough now
    assert keys.enrol("m9", pub(b"9" * 32), now=6, **enrol) is KeyState.PENDING
    assert keys.pending_count() == 3
    assert keys.refused("m1") == []
    again = KeyStore(conn)
    assert [k.id for k in again.all()] == ["m0", "m2", "m9", "old"]
    assert again.pending_count() == 3
    assert again.make_room().id == "m2"  # never heard from since its enrolment at 3
    assert again.accepted("old") is not None


def test_a_reduced_result_that_left_out_every_change_still_counts_as_changed():
    apply = {"dry_run": False, "changes": [], "triggers": [], "failure": None, "duration": 1.0}
    result = {"module": "files", "status": "ok", "apply": apply}
    assert host_status(result) is HostStatus.OK
    reduced = {**result, "reduced": {"changes_omitted": 7}}
    assert host_status(reduced) is HostStatus.CHANGED
    assert change_count(reduced) == 7


def test_a_result_stored_by_safcm_0_1_is_shown_in_todays_format(sqlite_conn):
    conn = sqlite_conn
    from safcm.common.protocol import RESULT
    from safcm.common.schema import validate

    store = JobStore(conn)
    store.create(job("J1"), parts("web1"))
    state = {"type": "file", "mode": 0o644, "uid": 0, "gid": 0, "user": "root", "group": "root"}
    old = {
        "module": "files",
        "status": "failed",
        "started": 1.0,
        "finished": 2.0,
        "apply": {
            "dry_run": False,
            "changes": [
                {"path": "/etc/a", "created": True, "new": state, "old": None, "diff": None},
                {"path": "/etc/motd", "created": False, "new": state, "old": state, "diff": None},
            ],
            "triggers": [],
            "failure": {"path": "/etc/motd", "reason": "a non-empty directory is in the way"},
            "duration": 1.0,
        },
        "ping": None,
        "error": None,
    }
    conn.execute(  # as schema version 1 stored it: JSON text
        "UPDATE job_hosts SET state = 'done', status = 'failed', result = ? WHERE jid = 'J1'",
        (json.dumps(old),),
    )
    [host] = store.get_hosts("J1")
    validate(RESULT, host.result, "stored result")
    assert store.answer_of("J1", "web1") == Answer(HostStatus.FAILED, codec.pack(host.result))
    assert store.result_of("J1", "web1") == host.result
    apply = host.result["apply"]
    assert [c["outcome"] for c in apply["changes"]] == ["applied", "failed"]
    assert apply["failures"] == [old["apply"]["failure"]] and apply["owed"] == []


def test_list_by_time_module_user_and_outcome(conn):
    """--since/--until are jid bounds, both ends included; --status keeps jobs
    with at least one host of that outcome."""
    store = JobStore(conn)
    t0 = jid_time("20260101T000000.000000Z")

    def make(jid, module="files", user="root"):
        store.create(JobRecord(jid, 0.0, 100.0, user, "web*", module, False, None), parts("web1"))

    make("20260101T000000.000000Z")
    make("20260101T010000.000000Z", module="ping")
    make("20260101T020000.000000Z", user="alice")
    ok = {"status": "ok"}
    store.record(
        [],
        [
            StoredResult(
                "20260101T000000.000000Z", "web1", HostStatus.OK, 0, ok, 1.0, codec.pack(ok)
            )
        ],
        now=1,
    )
    store.no_response([("20260101T010000.000000Z", "web1")])

    def hours(**filters):
        return [int(s.job.jid[9:11]) for s in store.list_jobs(**filters)]

    assert hours(since=t0 + 3600) == [2, 1]
    assert hours(until=t0 + 3600) == [1, 0]
    assert hours(since=t0 + 1, until=t0 + 3600) == [1]
    assert hours(since=t0 + 3600.000001) == [2]
    assert hours(since=t0 + 3600 - 1e-7, until=t0 + 3600 + 1e-7) == [1]  # to the microsecond
    assert hours(module="ping") == [1]
    assert hours(user="alice") == [2]
    assert hours(status="ok") == [0]
    assert hours(status="no response") == [1]
    assert hours(status="pending") == [2]
    assert hours(status="changed") == []
    assert hours(status="failed", user="root") == []
    assert hours(module="files", user="root", since=t0, until=t0) == [0]


def test_facts_in_postgresql_are_read_through_the_store(tmp_path, pg_dsn):
    from safcm.master.db import open_store
    from safcm.master.facts import read_facts, read_key_ids

    db = open_store(str(tmp_path), pg_dsn)
    try:
        assert FactStore(db).put("web1", {"os_id": "debian"}, now=1.0)
        KeyStore(db).enrol("web2", pub(b"s" * 32), now=1.0, auto_accept=False)
    finally:
        db.close()
    assert read_facts(str(tmp_path), pg_dsn)["web1"].facts == {"os_id": "debian"}
    assert read_key_ids(str(tmp_path), pg_dsn) == {"web2"}


def test_facts_keep_when_they_were_reported_and_when_they_changed(tmp_path, sqlite_conn):
    from safcm.master.facts import read_facts

    conn = sqlite_conn

    assert read_facts(str(tmp_path / "nowhere")) == {}  # no database yet: no facts
    facts = FactStore(conn)
    assert facts.put("web1", {"os_id": "debian", "os_version_id": "12"}, now=1.0)
    assert not facts.put("web1", {"os_version_id": "12", "os_id": "debian"}, now=2.0)
    stored = read_facts(str(tmp_path))  # as the CLI reads it, beside the daemon's connection
    assert (stored["web1"].reported, stored["web1"].changed) == (2.0, 1.0)
    assert facts.put("web1", {"os_id": "debian", "os_version_id": "13"}, now=3.0)
    assert read_facts(str(tmp_path))["web1"].facts == {"os_id": "debian", "os_version_id": "13"}
    assert facts.all()["web1"].changed == 3.0
    conn.execute("PRAGMA user_version = 5")  # a database from before facts
    assert read_facts(str(tmp_path)) == {}
