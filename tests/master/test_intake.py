"""Results are committed off the loop (master/intake.py, master/resultwriter.py)
and confirmed only once durable: on a real master daemon run in this process
(its loop in a thread of its own, as master/daemon.py run() runs it), with its
real sockets and database, the real CLI, and a scriptable minion
(tests/system/fake.py). In this process a test can hold the database's write
lock, as another process may (a backup, an sqlite3 shell), to keep a commit
waiting, and shrink a bound.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from safcm.common import codec
from safcm.common.loop import Loop
from safcm.common.protocol import (
    ENROL_NONCE_LENGTH,
    Channel,
    MsgType,
    decode_plain,
    encode_plain,
)
from safcm.master import control, daemon, intake, keys, peers
from safcm.master.daemon import Master
from safcm.master.db import DB_NAME
from safcm.master.facts import read_facts
from safcm.master.sandbox import Sandbox, wait_for
from safcm.master.settings import load
from safcm.master.transport import DOMAIN_PUBLISH, DOMAIN_RETURN
from safcm.minion import facts as minion_facts
from tests.garbage import garbage_kept
from tests.system.conftest import accepted_fake
from tests.system.fake import FakeMinion, ping_result

REPO = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "repo")
# Seconds a test waits for the daemon to reach a state.
SETTLE = 30.0
# Milliseconds the result writer waits for the database's lock where a test
# holds it to keep a commit waiting: longer than any test holds it.
HELD_MS = 120_000
# ...where a test holds it to make the commit fail...
FAIL_MS = 100
# ...and to make it fail while the daemon stops: long enough that the stop
# begins while the commit still waits.
FAIL_AT_STOP_MS = 3000


class InProcess:
    """A master daemon whose loop runs in a thread of this process. Its
    state is touched only on that thread (call())."""

    def __init__(self, sb: Sandbox, **settings: Any) -> None:
        self.sb = sb
        self.settings = load(sb.master.config)._replace(**settings)
        self.state_dir = self.settings.state_dir
        self.loop = Loop()
        self.master: Master | None = None
        self.failed: BaseException | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="master")
        self.thread.start()
        if not self._ready.wait(SETTLE) or self.master is None:
            raise RuntimeError(f"the master did not start: {self.failed!r}")

    def _serve(self) -> None:
        ctx = zmq.Context()
        try:
            # Made here: its SQLite connection belongs to this thread.
            master = Master(self.settings, loop=self.loop, ctx=ctx)
            try:
                master.start()
                self.master = master
                self._ready.set()
                self.loop.run()
            finally:
                master.close()
        except BaseException as e:
            self.failed = e
            raise
        finally:
            self._ready.set()
            self.loop.close()
            ctx.term()

    def call(self, fn: Callable[[], Any]) -> Any:
        """fn() on the loop's thread, between two of its callbacks."""
        done = threading.Event()
        outcome: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as e:
                outcome.append((False, e))
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        if not done.wait(SETTLE):
            raise TimeoutError("the master's loop did not take its turn")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        """As on SIGTERM: the loop stops, then the daemon closes (Master.close())."""
        if self.thread.is_alive():
            self.loop.stop()
            self.thread.join(SETTLE)
        assert not self.thread.is_alive(), "the master did not stop"


@pytest.fixture
def sandbox():
    base = tempfile.mkdtemp(prefix="safcm-t-", dir="/tmp")  # short: the control socket's path
    sb = Sandbox(base, REPO, heartbeat_interval=0.2, job_timeout=20)
    yield sb
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def master(sandbox, caplog):
    """start(**settings): a master in this process, stopped at the end of the test."""
    caplog.set_level(logging.DEBUG, logger="safcm-master")
    started: list[InProcess] = []

    def start(**settings: Any) -> InProcess:
        m = InProcess(sandbox, **settings)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


@pytest.fixture
def fake(sandbox):
    fakes: list[FakeMinion] = []

    def make(minion_id: str) -> FakeMinion:
        f = FakeMinion(sandbox, minion_id)
        fakes.append(f)
        return f

    yield make
    for f in fakes:
        f.close()


@pytest.fixture
def runs():
    """spawn(sb, *args): a CLI in the background; any still running is killed at the end."""
    spawned: list[subprocess.Popen] = []

    def spawn(sb: Sandbox, *args: str) -> subprocess.Popen:
        proc = sb.spawn_cli(*args)
        spawned.append(proc)
        return proc

    yield spawn
    for proc in spawned:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def logged(caplog, text: str) -> None:
    wait_for(lambda: text in caplog.text, SETTLE, f"the master to log {text!r}")


def start_job(sb: Sandbox, runs, minion: FakeMinion) -> tuple[subprocess.Popen, str]:
    """`run ID ping` started: its CLI and the jid the minion received."""
    proc = runs(sb, "run", minion.id, "ping", "--json")
    _frame, job = minion.recv_job(int(SETTLE * 1000))
    return proc, job.jid


def send_result(minion: FakeMinion, jid: str) -> None:
    """The minion's result of a ping job (sent again: a new envelope of it)."""
    minion.send_raw(minion.seal(MsgType.RESULT, ping_result(time.time()), jid=jid))


def answered(minion: FakeMinion) -> bool:
    """A heartbeat is answered: the master's loop reads and replies. The
    reply comes after anything the master sent before it."""
    minion.heartbeat()
    return minion.recv(int(SETTLE * 1000)).type is MsgType.HEARTBEAT_REPLY


@contextlib.contextmanager
def write_lock(m: InProcess) -> Iterator[sqlite3.Connection]:
    """The database's write lock, held as another process would hold it;
    released at the end, or earlier by lock.execute("ROLLBACK")."""
    lock = sqlite3.connect(os.path.join(m.state_dir, DB_NAME), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        yield lock
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()


def stored(m: InProcess, jid: str, host: str) -> tuple[str, str | None, bytes | None]:
    """(state, status, result) of (jid, host), as committed (read beside the daemon)."""
    with contextlib.closing(sqlite3.connect(os.path.join(m.state_dir, DB_NAME))) as c:
        return c.execute(
            "SELECT state, status, result FROM job_hosts WHERE jid = ? AND host = ?", (jid, host)
        ).fetchone()


def test_a_result_is_confirmed_once_durable_and_its_copy_with_it(
    sandbox, master, fake, runs, caplog, monkeypatch
):
    monkeypatch.setattr(daemon, "WORKER_BUSY_TIMEOUT_MS", HELD_MS)
    m = master()
    web3 = accepted_fake(sandbox, fake, "web3")
    run, jid = start_job(sandbox, runs, web3)
    with write_lock(m) as lock:  # the commit waits for it
        send_result(web3, jid)
        send_result(web3, jid)  # the minion's retry, while the first is stored
        logged(caplog, f"job {jid}: duplicate result from web3 while its first is being stored")
        # The loop goes on serving, and has confirmed neither copy.
        assert answered(web3)
        assert stored(m, jid, "web3")[0] == "sent"
        lock.execute("ROLLBACK")
        receipt = web3.recv(int(SETTLE * 1000))
    assert receipt.type is MsgType.RESULT_RECEIPT and receipt.body["jid"] == jid
    assert stored(m, jid, "web3")[:2] == ("done", "ok")
    assert answered(web3)  # one confirmation for both copies
    _out, err = run.communicate(timeout=SETTLE)
    assert run.returncode == 0, err
    assert caplog.text.count(f"job {jid}: result from web3: ok") == 1


def test_a_result_that_cannot_be_stored_is_not_confirmed_and_is_taken_again(
    sandbox, master, fake, runs, caplog, monkeypatch
):
    monkeypatch.setattr(daemon, "WORKER_BUSY_TIMEOUT_MS", FAIL_MS)
    size = len(codec.pack(ping_result(time.time())))
    m = master(result_quota=size * 3 // 2)  # one result fits, two would not
    web3 = accepted_fake(sandbox, fake, "web3")
    run, jid = start_job(sandbox, runs, web3)
    with write_lock(m):
        send_result(web3, jid)
        logged(caplog, "cannot store 1 results and 0 receipts, they will come again: database")
        assert answered(web3)  # not confirmed
    send_result(web3, jid)  # the minion sends it again, as it was not confirmed
    receipt = web3.recv(int(SETTLE * 1000))
    assert receipt.type is MsgType.RESULT_RECEIPT and receipt.body["jid"] == jid
    # Taken as new (not a duplicate of a result never stored), within the
    # quota (the lost copy no longer counts).
    assert stored(m, jid, "web3")[:2] == ("done", "ok")
    assert "duplicate result" not in caplog.text
    _out, err = run.communicate(timeout=SETTLE)
    assert run.returncode == 0, err


# Seconds the return socket rests after a read (RETURN_COALESCE): the second
# result comes while it rests, and is read by its timer (_resume_reading);
# with no rest, the poller reads it.
LONG_REST = 2.0


@pytest.mark.parametrize("rest", [0.0, LONG_REST], ids=["read-when-readable", "read-after-a-rest"])
def test_reading_stops_while_a_full_batch_waits_for_the_writer(
    sandbox, master, fake, runs, caplog, monkeypatch, rest
):
    monkeypatch.setattr(daemon, "WORKER_BUSY_TIMEOUT_MS", HELD_MS)
    monkeypatch.setattr(intake, "BATCH_BYTES", 1)  # every result fills a batch
    # No batch of heartbeat rows alone is written meanwhile: the first
    # result's batch is the one the writer is busy with.
    monkeypatch.setattr(daemon, "SEQ_FLUSH", 3600.0)
    monkeypatch.setattr(intake, "RETURN_COALESCE", rest)
    m = master()
    web3 = accepted_fake(sandbox, fake, "web3")
    _, first = start_job(sandbox, runs, web3)
    _, second = start_job(sandbox, runs, web3)

    def unread() -> bool:
        """Something waits on the return socket, not read (on the loop's thread)."""
        assert m.master is not None and m.master.intake.router is not None
        return bool(m.master.intake.router.get(zmq.EVENTS) & zmq.POLLIN)

    with write_lock(m) as lock:
        send_result(web3, first)
        assert answered(web3)  # read, and being written: the writer waits for the lock
        send_result(web3, second)  # the next batch, full
        logged(caplog, "the return socket waits for the result writer")
        web3.heartbeat()
        wait_for(lambda: m.call(unread), SETTLE, "the heartbeat to reach the master")
        assert m.call(unread)  # a loop turn later: a reader would have taken it
        lock.execute("ROLLBACK")
        # Reading goes on: the heartbeat is answered, and both results confirmed.
        replies = [web3.recv(int(SETTLE * 1000)) for _ in range(3)]
    replies = {(r.type, r.body.get("jid")) for r in replies}
    assert replies == {
        (MsgType.RESULT_RECEIPT, first),
        (MsgType.HEARTBEAT_REPLY, None),
        (MsgType.RESULT_RECEIPT, second),
    }
    assert stored(m, second, "web3")[:2] == ("done", "ok")


def test_a_purge_while_results_are_stored_keeps_counting_them_in_the_quota(
    sandbox, master, fake, runs, monkeypatch
):
    monkeypatch.setattr(daemon, "WORKER_BUSY_TIMEOUT_MS", HELD_MS)
    size = len(codec.pack(ping_result(time.time())))
    m = master(result_quota=size * 3 // 2)  # one result fits, two do not
    web3 = accepted_fake(sandbox, fake, "web3")
    _, first = start_job(sandbox, runs, web3)
    _, second = start_job(sandbox, runs, web3)
    with write_lock(m) as lock:
        send_result(web3, first)
        assert answered(web3)  # read, and being written
        assert m.master is not None
        m.call(m.master.intake.forget_quota)  # what a purge does once it deleted old results
        send_result(web3, second)
        assert answered(web3)
        lock.execute("ROLLBACK")
        receipts = {web3.recv(int(SETTLE * 1000)).body["jid"] for _ in range(2)}
    assert receipts == {first, second}
    assert stored(m, first, "web3")[:2] == ("done", "ok")
    state, status, result = stored(m, second, "web3")
    assert (state, status) == ("done", "failed")
    assert result is not None and b"result_quota" in result


@pytest.mark.parametrize("commits", [True, False], ids=["commits", "fails"])
def test_a_stopping_master_finishes_the_batch_being_written(
    sandbox, master, fake, runs, caplog, monkeypatch, commits
):
    # A commit that ends while the daemon stops (the lock is released) is
    # durable; one that fails is not confirmed, and its result is taken
    # when the minion sends it again to the restarted master.
    monkeypatch.setattr(daemon, "WORKER_BUSY_TIMEOUT_MS", HELD_MS if commits else FAIL_AT_STOP_MS)
    m = master()
    web3 = accepted_fake(sandbox, fake, "web3")
    _, jid = start_job(sandbox, runs, web3)
    with write_lock(m) as lock:
        send_result(web3, jid)
        assert answered(web3)  # read, and being written
        m.loop.stop()
        logged(caplog, "stopping: waiting for 1 results and 0 receipts to be stored")
        if commits:
            lock.execute("ROLLBACK")
        m.stop()
    assert m.failed is None
    assert not [t for t in threading.enumerate() if t.name.startswith("results")]
    if commits:
        assert stored(m, jid, "web3")[:2] == ("done", "ok")
        return
    logged(caplog, "cannot store 1 results and 0 receipts, they will come again")
    assert stored(m, jid, "web3")[0] == "sent"
    master()
    send_result(web3, jid)  # the minion sends it again to the restarted master
    receipt = web3.recv(int(SETTLE * 1000))
    assert receipt.type is MsgType.RESULT_RECEIPT and receipt.body["jid"] == jid
    assert stored(m, jid, "web3")[:2] == ("done", "ok")


def test_a_large_batch_is_confirmed_over_several_loop_turns(
    sandbox, master, fake, runs, monkeypatch
):
    """Each confirmation costs the loop a receipt, a log line and a result
    sent to the waiting CLI: a batch gathered during a slow commit is
    confirmed CONFIRM_SLICE at a time, a loop turn apart, not in one go."""
    monkeypatch.setattr(daemon, "WORKER_BUSY_TIMEOUT_MS", HELD_MS)
    monkeypatch.setattr(intake, "CONFIRM_SLICE", 0.0)  # one result a turn
    more_turns = []
    confirm_more = intake.Intake._confirm_more

    def counted(self):
        more_turns.append(len(self._durable))
        confirm_more(self)

    monkeypatch.setattr(intake.Intake, "_confirm_more", counted)
    m = master()
    web3 = accepted_fake(sandbox, fake, "web3")
    jids = [start_job(sandbox, runs, web3)[1] for _ in range(4)]
    with write_lock(m) as lock:
        send_result(web3, jids[0])  # being written: waits for the lock
        assert answered(web3)
        for jid in jids[1:]:  # gathered into the next batch meanwhile
            send_result(web3, jid)
        wait_for(
            lambda: m.call(lambda: len(m.master.intake._batch)) == 3,
            SETTLE,
            "the next batch to gather three results",
        )
        lock.execute("ROLLBACK")
        receipts = [web3.recv(int(SETTLE * 1000)) for _ in range(4)]
    assert {(r.type, r.body["jid"]) for r in receipts} == {
        (MsgType.RESULT_RECEIPT, jid) for jid in jids
    }
    assert more_turns == [2, 1]  # the second batch: one confirmed, then one a turn
    assert all(stored(m, jid, "web3")[:2] == ("done", "ok") for jid in jids)


def test_facts_are_stored_by_the_writer_and_taken_again_when_it_fails(
    sandbox, master, fake, caplog, monkeypatch
):
    # On the loop, the facts' write would wait for the lock (BUSY_TIMEOUT_MS)
    # and then fail, and the facts would be lost until the next report.
    monkeypatch.setattr(daemon, "WORKER_BUSY_TIMEOUT_MS", FAIL_MS)
    m = master()
    web3 = accepted_fake(sandbox, fake, "web3")
    reported = {**minion_facts.gather("/"), "os_id": "plan9"}
    with write_lock(m):
        web3.send_raw(web3.seal(MsgType.FACTS, reported))
        logged(caplog, "cannot write minions' last-seen times or facts, tried again later")
        assert answered(web3)
        # Compiles use them at once; the database has none yet.
        assert m.call(lambda: m.master.peers.facts["web3"]["os_id"]) == "plan9"
        assert stored_facts(m) == {}
    # Written again with the next flush (SEQ_FLUSH), once the lock is free.
    wait_for(lambda: "web3" in stored_facts(m), SETTLE, "web3's facts in the database")
    assert stored_facts(m)["web3"].facts == reported
    logged(caplog, "facts of web3: os plan9")


def stored_facts(m: InProcess) -> dict[str, Any]:
    return read_facts(m.state_dir)


def test_key_requests_queued_together_are_answered_a_slice_at_a_time(sandbox, master, monkeypatch):
    # A fleet that reconnects at once, or a stranger's flood: each request is
    # a signature, and the loop reads other sockets between slices.
    monkeypatch.setattr(keys, "KEY_SLICE", 0.0)  # one request a call
    per_call: list[int] = []
    answer = keys.KeyService._answer
    on_key_request = keys.KeyService.on_key_request

    def counted_answer(self, *args):
        per_call[-1] += 1
        answer(self, *args)

    def counted_call(self):
        per_call.append(0)
        on_key_request(self)

    monkeypatch.setattr(keys.KeyService, "_answer", counted_answer)
    monkeypatch.setattr(keys.KeyService, "on_key_request", counted_call)
    m = master()
    requests = 20
    # One request a connection, as minions ask: a connection's own share
    # (KEY_REQUEST_CONN_BURST) would drop more.
    dealers = [zmq.Context.instance().socket(zmq.DEALER) for _ in range(requests)]
    for dealer in dealers:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{m.settings.key_port}")
    sent = threading.Event()

    def held() -> None:  # the loop waits while the requests arrive together
        sent.wait(SETTLE)
        m.master.key_service.key_sock.poll(int(SETTLE * 1000))

    try:
        loop_held = threading.Thread(target=m.call, args=(held,))
        loop_held.start()
        for dealer in dealers:
            nonce = os.urandom(ENROL_NONCE_LENGTH)
            dealer.send(encode_plain(MsgType.KEY_REQUEST, {"nonce": nonce}))
        sent.set()
        loop_held.join()
        for dealer in dealers:
            assert dealer.poll(int(SETTLE * 1000)), "a key request was not answered"
            assert decode_plain(dealer.recv(), Channel.KEY).type is MsgType.KEY_REPLY
    finally:
        for dealer in dealers:
            dealer.close(0)
    assert sum(per_call) == requests and max(per_call) == 1


def test_a_job_starts_without_the_loop_waiting_for_the_lock(
    sandbox, master, fake, runs, monkeypatch
):
    # The job is stored; then, before its start is written, another process
    # takes the write lock. On the loop, the start would wait BUSY_TIMEOUT_MS
    # for it and then fail the run.
    monkeypatch.setattr(daemon, "WORKER_BUSY_TIMEOUT_MS", HELD_MS)
    taken = threading.Event()
    locks: list[sqlite3.Connection] = []
    stored = daemon.Runs._stored

    def lock_then_stored(self, *args):
        lock = sqlite3.connect(
            os.path.join(self.settings.state_dir, DB_NAME),
            isolation_level=None,
            check_same_thread=False,
        )
        lock.execute("BEGIN IMMEDIATE")
        locks.append(lock)
        taken.set()
        stored(self, *args)

    monkeypatch.setattr(daemon.Runs, "_stored", lock_then_stored)
    m = master()
    web3 = accepted_fake(sandbox, fake, "web3")
    run = runs(sandbox, "run", "web3", "ping", "--json")
    try:
        assert taken.wait(SETTLE), "the job was never stored"
        assert answered(web3)  # the loop serves while the start waits for the lock
        # Not published before its start is written.
        assert m.call(lambda: list(m.master.publisher.open_jobs)) == []
    finally:
        for lock in locks:
            lock.execute("ROLLBACK")
            lock.close()
    _frame, job = web3.recv_job(int(SETTLE * 1000))
    send_result(web3, job.jid)
    _out, err = run.communicate(timeout=SETTLE)
    assert run.returncode == 0, err


def test_no_response_is_answered_while_its_write_waits_for_the_lock(
    sandbox, master, fake, runs, monkeypatch
):
    # On the loop, the write would wait BUSY_TIMEOUT_MS for the lock and
    # fail, again and again, and the CLI would not hear until it was free.
    monkeypatch.setattr(daemon, "WORKER_BUSY_TIMEOUT_MS", HELD_MS)
    m = master()
    web3 = accepted_fake(sandbox, fake, "web3")
    run = runs(sandbox, "run", "web3", "ping", "--json", "--timeout", "3")
    _frame, job = web3.recv_job(int(SETTLE * 1000))  # and it never answers
    with write_lock(m):
        out, err = run.communicate(timeout=SETTLE)
        assert run.returncode == 1, err
        assert json.loads(out)["hosts"][0]["status"] == "no response"
        assert stored(m, job.jid, "web3")[0] == "sent"
    wait_for(lambda: stored(m, job.jid, "web3")[0] == "no_response", SETTLE, "no response written")


def test_a_stored_batch_and_a_sweep_leave_no_garbage_cycles(
    sandbox, master, fake, runs, monkeypatch
):
    # A batch in flight held its future, whose done callback held the
    # batch: every result of it stayed in memory until a full collection,
    # which then walked them all (at 1,000 hosts a files create's full
    # collections held the loop 51-67 ms). The waiting-bytes sweep's slices
    # were a closure that scheduled itself: a cycle holding the list of
    # every connection. Both must go by reference counting alone.
    monkeypatch.setattr(peers, "SWEEP_SLICE", 1)  # a turn for each connection
    m = master()
    web3 = accepted_fake(sandbox, fake, "web3")
    web3.subscribe()
    with garbage_kept() as found:
        run, jid = start_job(sandbox, runs, web3)
        send_result(web3, jid)
        receipt = web3.recv(int(SETTLE * 1000))
        assert receipt.type is MsgType.RESULT_RECEIPT
        _out, err = run.communicate(timeout=SETTLE)
        assert run.returncode == 0, err
        everything = {DOMAIN_RETURN: 1 << 30, DOMAIN_PUBLISH: 1 << 30}  # nothing is cut
        m.call(lambda: m.master.peers.cut_waiting(everything))
        wait_for(lambda: not m.call(lambda: m.master.peers._sweeping), SETTLE, "the sweep's end")
        garbage = found()
    assert not [o for o in garbage if isinstance(o, intake.Flight)]
    assert not [o for o in garbage if getattr(o, "__qualname__", "").startswith("Peers.")]


def test_a_minion_that_holds_no_subscription_counts_as_deaf_from_its_return_on(
    sandbox, master, fake
):
    # Peers.deaf(): connected for SUBSCRIBE_GRACE of its heartbeat intervals
    # without a subscription on the publish socket. A minion back after a
    # silence is connected since its return, not since its first heartbeat
    # ever: before, a minion that reconnected (both sockets anew) counted as
    # deaf at once, before it had had the time to subscribe.
    m = master()
    web1 = accepted_fake(sandbox, fake, "web1")  # heartbeats; never subscribes

    def presence() -> peers.Presence:
        return m.call(lambda: m.master.peers.presence["web1"])

    def deaf() -> bool:
        web1.heartbeat()
        return bool(m.call(lambda: m.master.peers.deaf("web1")))

    wait_for(deaf, SETTLE, "web1 to count as deaf")
    web2 = accepted_fake(sandbox, fake, "web2")
    web2.subscribe()
    wait_for(
        lambda: m.call(lambda: m.master.peers.subscribed("web2")), SETTLE, "web2's subscription"
    )
    web2.heartbeat()
    wait_for(lambda: "web2" in m.call(lambda: m.master.peers.presence), SETTLE, "web2's heartbeat")
    assert not m.call(lambda: m.master.peers.deaf("web2"))

    # web1 goes quiet until it counts as gone, then comes back.
    before = presence().last_seen
    wait_for(lambda: not m.call(lambda: m.master.peers.connected("web1")), SETTLE, "web1 gone")
    assert not m.call(lambda: m.master.peers.deaf("web1"))  # not connected: not deaf
    web1.heartbeat()
    wait_for(lambda: presence().last_seen > before, SETTLE, "web1's return")
    assert presence().since > before


def test_at_the_pending_limit_a_new_minion_still_enrols_and_the_stalest_key_goes(
    sandbox, master, fake, monkeypatch, caplog
):
    # Before, a full table of pending keys (a stranger's flood of invented
    # ids) answered every new minion "rejected", until an administrator
    # deleted the flood; now the key heard from longest ago makes room.
    from safcm.master import keystore

    monkeypatch.setattr(keystore, "MAX_PENDING_KEYS", 2)
    m = master()
    web1, web2, web3 = fake("web1"), fake("web2"), fake("web3")
    assert web1.enrol() == "pending"
    assert web2.enrol() == "pending"
    assert web3.enrol() == "pending"

    def pending() -> list[str]:
        return m.call(lambda: sorted(k.id for k in m.master.keystore.all()))

    assert pending() == ["web2", "web3"]
    assert "dropped the pending key of web1" in caplog.text
    assert web1.enrol() == "pending"  # still running: it asks again and is back
    assert pending() == ["web1", "web3"]
    listed = json.loads(sandbox.cli("keys", "list", "--json").stdout)
    assert sorted(k["host"] for k in listed["keys"]) == ["web1", "web3"]


def test_a_cli_that_stops_reading_gets_every_result_later_and_is_not_dropped(
    sandbox, master, fake, runs, monkeypatch
):
    # A run's CLI piped into a pager, or its terminal stopped with ^S: its
    # results are read back from the store once it reads again (Runs.answered()),
    # so the master holds about DEFER_BYTES for it. Before, every result
    # was queued until MAX_BACKLOG_BYTES, and then the CLI was dropped.
    m = master()
    hosts = [fake(f"slow{i:02d}") for i in range(100)]  # 16.6 KB of results
    with open(os.path.join(sandbox.config_dir, "hosts.yaml"), "a") as f:
        f.writelines(f"- name: {h.id}\n" for h in hosts)
    for h in hosts:
        assert h.enrol() == "pending"
    assert sandbox.cli("keys", "accept", "slow*").returncode == 0
    for h in hosts:
        assert h.enrol() == "accepted"
        h.subscribe()
    wait_for(
        lambda: all(m.call(lambda: [m.master.peers.subscribed(h.id) for h in hosts])),
        SETTLE,
        "every fake's subscription",
    )
    cli = runs(sandbox, "run", "slow*", "ping", "--json")
    (jid,) = {h.recv_job(int(SETTLE * 1000))[1].jid for h in hosts}
    monkeypatch.setattr(control, "DEFER_BYTES", 1024)
    monkeypatch.setattr(control, "MAKE_BYTES", 1024)
    monkeypatch.setattr(control, "MAX_BACKLOG_BYTES", 8192)
    (conn,) = m.call(lambda: m.master.runs.runs[jid].watchers)
    os.kill(cli.pid, signal.SIGSTOP)
    try:
        m.call(lambda: conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1))
        for h in hosts:
            send_result(h, jid)
        wait_for(lambda: jid not in m.call(lambda: m.master.runs.runs), SETTLE, "every result")
        held_back, queued = m.call(lambda: (len(conn.later), len(conn.out)))
        assert not conn.closed and held_back > 0
        assert queued < control.DEFER_BYTES + 1024
    finally:
        os.kill(cli.pid, signal.SIGCONT)
    out, err = cli.communicate(timeout=SETTLE)
    assert cli.returncode == 0, err
    document = json.loads(out)
    assert sorted(h["host"] for h in document["hosts"]) == sorted(h.id for h in hosts)
    assert {h["status"] for h in document["hosts"]} == {"ok"}
