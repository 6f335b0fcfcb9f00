"""The (job, host) lifecycle, driven with injected times and a fake that
records every effect the machine asks for (master/lifecycle.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from safcm.common import codec
from safcm.master.jobstore import Answer, HostStatus
from safcm.master.lifecycle import (
    MAX_DEADLINE_EXTENSION,
    PATIENCE_MAX,
    PROGRESS_GRACE,
    QUEUE_FULL_RETRY,
    RECEIPT_PATIENCE,
    REPUBLISH_FIRST,
    REPUBLISH_MAX,
    RESUBSCRIBE_MIN_INTERVAL,
    START_SLICE,
    STORE_RETRY,
    WAKE_SLICE,
    Lifecycles,
    OpenRow,
    State,
    Verdict,
)
from tests.common.strategies import fuzz

T0 = 1_000_000.0  # unix time of the first event
TIMEOUT = 60.0
RESULT = Answer(HostStatus.OK, codec.pack({"status": "ok"}))


class Recorder:
    """The machine's Effects: records each call (wake-ups apart), and keeps
    the store's state of pairs that are no longer open."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.wakes: list[float] = []
        self.stored: dict[tuple[str, str], State] = {}
        self.fail_store = False
        self.timer: float | None = None  # the daemon's one wake-up timer

    def stored_state(self, jid: str, host: str) -> State | None:
        return self.stored.get((jid, host))

    def publish(self, jid: str, host: str) -> None:
        self.events.append(("publish", jid, host))

    def store_receipt(self, jid: str, host: str) -> None:
        self.events.append(("store_receipt", jid, host))

    def store_no_response(self, pairs: list[tuple[str, str]]) -> None:
        if self.fail_store:
            raise OSError("database is locked")
        self.events.append(("store_no_response", sorted(pairs)))
        for pair in pairs:
            self.stored[pair] = State.NO_RESPONSE

    def answered(self, jid: str, host: str, result: Answer | None) -> None:
        self.events.append(("answered", jid, host, result))

    def progress(self, jid: str, host: str, until: float) -> None:
        self.events.append(("progress", jid, host, until))

    def finished(self, jid: str) -> None:
        self.events.append(("finished", jid))

    def wake_at(self, when: float) -> None:
        self.wakes.append(when)
        if self.timer is None or when < self.timer:
            self.timer = when

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events


def machine(hosts: tuple[str, ...] = ("web1",), jid: str = "J1") -> tuple[Lifecycles, Recorder]:
    fake = Recorder()
    lc = Lifecycles(fake)
    lc.start(jid, hosts, T0 + TIMEOUT, now=T0)
    return lc, fake


def store_result(lc: Lifecycles, fake: Recorder, jid: str, host: str, now: float) -> Verdict:
    """What the daemon does with a result: take it, store it, say so."""
    verdict = lc.result(jid, host, now)
    if verdict in (Verdict.NEW, Verdict.LATE):
        fake.stored[(jid, host)] = State.DONE
        lc.result_stored(jid, host, now, RESULT)
    return verdict


def test_published_at_once_then_again_with_backoff_until_the_receipt():
    fake = Recorder()
    lc = Lifecycles(fake)
    timeout = 300.0
    lc.start("J1", ["web1"], T0 + timeout, now=T0)
    assert fake.take() == [("publish", "J1", "web1")]
    assert fake.wakes == [T0 + REPUBLISH_FIRST]
    sends = []
    for tenth in range(1, 10 * int(timeout) - 50):  # woken often: only what is due happens
        lc.wake(T0 + tenth / 10)
        if fake.take() == [("publish", "J1", "web1")]:
            sends.append(tenth / 10)
    # 20, 40, and then at most REPUBLISH_MAX = 60 s apart.
    assert sends == [20.0, 60.0, 120.0, 180.0, 240.0] and REPUBLISH_MAX == 60.0
    lc.receipt("J1", "web1", T0 + 255)
    assert fake.take() == [("store_receipt", "J1", "web1")]
    assert lc.state("J1", "web1") is State.RECEIVED


def test_a_host_is_published_to_again_only_as_its_jobs_receipts_show_it_late():
    fake = Recorder()
    lc = Lifecycles(fake)
    timeout = 1000.0
    lc.start("J1", ["web1", "web2", "web3"], T0 + timeout, now=T0)
    fake.take()
    # web1 confirms after 15 s: web2 and web3 get until 2 x 15 = 30 s, not 20.
    lc.receipt("J1", "web1", T0 + 15)
    lc.wake(T0 + REPUBLISH_FIRST)
    assert fake.take() == [("store_receipt", "J1", "web1")]
    assert fake.wakes[-1] == T0 + RECEIPT_PATIENCE * 15
    # web2 confirms after 28 s: web3 now waits until 56 s.
    lc.receipt("J1", "web2", T0 + 28)
    fake.take()
    lc.wake(T0 + RECEIPT_PATIENCE * 15)
    assert fake.take() == []
    lc.wake(T0 + RECEIPT_PATIENCE * 28)
    assert fake.take() == [("publish", "J1", "web3")]
    # The patience counts from the last sending, and has a cap however slow
    # a receipt was (one slow or hostile minion cannot hold back the others).
    fake = Recorder()
    lc = Lifecycles(fake)
    lc.start("J2", ["web1", "web2"], T0 + timeout, now=T0)
    lc.receipt("J2", "web1", T0 + 500)  # 500 s: web2 may wait PATIENCE_MAX, not 1,000
    lc.wake(T0 + 500)
    assert fake.take()[-1] == ("publish", "J2", "web2")  # 500 s since its sending
    lc.wake(T0 + 500 + PATIENCE_MAX - 1)
    assert fake.take() == []
    lc.wake(T0 + 500 + PATIENCE_MAX)
    assert fake.take() == [("publish", "J2", "web2")]
    # A receipt for an envelope sent before a restart says nothing of how
    # long receipts take: the others keep the usual schedule.
    fake = Recorder()
    lc = Lifecycles(fake)
    lc.restore([OpenRow("J3", h, State.SENT, T0 + timeout) for h in ("web1", "web2")], now=T0)
    lc.receipt("J3", "web1", T0)
    lc.wake(T0)
    assert fake.take() == [("store_receipt", "J3", "web1"), ("publish", "J3", "web2")]
    lc.wake(T0 + REPUBLISH_FIRST)
    assert fake.take() == [("publish", "J3", "web2")]


def test_an_envelope_its_subscriber_could_not_queue_is_published_again_soon():
    lc, fake = machine(("web1", "web2"))
    fake.take()
    lc.queue_full("J1", "web1", T0 + 0.1)  # web1's queue was full: not sent
    assert fake.wakes[-1] == T0 + 0.1 + QUEUE_FULL_RETRY
    lc.wake(T0 + 0.1 + QUEUE_FULL_RETRY)
    assert fake.take() == [("publish", "J1", "web1")]  # web2's copy was queued: left alone
    lc.wake(T0 + 0.1 + QUEUE_FULL_RETRY + REPUBLISH_FIRST / 2)
    assert fake.take() == []  # then the usual schedule
    lc.queue_full("J1", "web1", T0 + 12)  # full again: the retry waits twice as long
    assert fake.wakes[-1] == T0 + 12 + 2 * QUEUE_FULL_RETRY
    lc.receipt("J1", "web2", T0 + 2)
    fake.take()
    lc.queue_full("J1", "web2", T0 + 3)  # after its receipt: nothing to do
    lc.queue_full("J1", "web1", T0 + TIMEOUT)  # at its deadline: nothing either
    lc.wake(T0 + 4)
    assert fake.take() == []


def test_a_fleet_at_its_deadline_is_answered_in_slices_one_wake_up_each():
    hosts = [f"m{i:05d}" for i in range(2 * WAKE_SLICE + 1)]
    lc, fake = machine(tuple(hosts))
    for _ in range(len(hosts) // START_SLICE + 1):
        lc.wake(T0)  # every host started
    lc.receipt("J1", hosts[0], T0 + 1)  # a receipt is not an answer
    fake.take()
    slices = []
    now = T0 + TIMEOUT
    while fake.timer is not None and fake.timer <= now:
        fake.timer = None  # the daemon's timer fired
        lc.wake(now)
        events = fake.take()
        [stored] = [e for e in events if e[0] == "store_no_response"]
        slices.append(len(stored[1]))
    assert slices == [WAKE_SLICE, WAKE_SLICE, 1]
    assert events[-1] == ("finished", "J1") and len(lc) == 0


def test_nothing_is_republished_after_the_receipt():
    lc, fake = machine()
    fake.take()
    lc.receipt("J1", "web1", T0 + 1)
    lc.receipt("J1", "web1", T0 + 2)  # a duplicate changes nothing
    lc.subscribed("web1", T0 + 3)
    for t in range(4, int(TIMEOUT)):
        lc.wake(T0 + t)
    assert fake.take() == [("store_receipt", "J1", "web1")]
    assert fake.wakes[-1] == T0 + TIMEOUT  # only the deadline is left


def test_a_subscription_republishes_at_most_once_a_second():
    lc, fake = machine(("web1", "web2"))
    fake.take()
    lc.subscribed("web1", T0 + 0.5)  # sent 0.5 s ago: not again yet
    assert fake.take() == []
    lc.wake(T0 + RESUBSCRIBE_MIN_INTERVAL)  # but soon, not only at the 5 s mark
    assert fake.take() == [("publish", "J1", "web1")]
    lc.subscribed("web1", T0 + 3)
    assert fake.take() == [("publish", "J1", "web1")]
    lc.subscribed("web2", T0 + 3)
    assert fake.take() == [("publish", "J1", "web2")]


def test_the_deadline_makes_no_response_once_and_tells_the_cli():
    lc, fake = machine(("web1", "web2"))
    fake.take()
    lc.receipt("J1", "web2", T0 + 1)
    store_result(lc, fake, "J1", "web1", T0 + 2)
    assert fake.take() == [
        ("store_receipt", "J1", "web2"),
        ("answered", "J1", "web1", RESULT),
    ]
    lc.wake(T0 + TIMEOUT - 0.001)
    assert fake.take() == []
    lc.wake(T0 + TIMEOUT)
    assert fake.take() == [
        ("store_no_response", [("J1", "web2")]),
        ("answered", "J1", "web2", None),
        ("finished", "J1"),
    ]
    lc.wake(T0 + TIMEOUT + 1)
    lc.wake(T0 + 10 * TIMEOUT)
    assert fake.take() == []
    assert len(lc) == 0


def test_a_store_failure_at_the_deadline_is_retried():
    lc, fake = machine()
    fake.take()
    fake.fail_store = True
    with pytest.raises(OSError):
        lc.wake(T0 + TIMEOUT)
    assert fake.take() == [] and lc.state("J1", "web1") is State.SENT
    assert fake.wakes[-1] == T0 + TIMEOUT + STORE_RETRY
    fake.fail_store = False
    lc.wake(T0 + TIMEOUT + STORE_RETRY)
    assert fake.take() == [
        ("store_no_response", [("J1", "web1")]),
        ("answered", "J1", "web1", None),
        ("finished", "J1"),
    ]


def test_hosts_at_the_same_deadline_are_stored_together():
    lc, fake = machine(("web1", "web2", "web3"))
    fake.take()
    lc.wake(T0 + TIMEOUT + 0.5)
    [stored, *rest] = fake.take()
    assert stored == ("store_no_response", [("J1", "web1"), ("J1", "web2"), ("J1", "web3")])
    assert rest[-1] == ("finished", "J1")


def test_progress_moves_the_deadline_up_to_its_cap():
    lc, fake = machine()
    fake.take()
    lc.receipt("J1", "web1", T0 + 1)
    fake.take()
    now = T0 + TIMEOUT - 1
    assert lc.progress("J1", "web1", now) == now + PROGRESS_GRACE
    assert fake.take() == [("progress", "J1", "web1", now + PROGRESS_GRACE)]
    lc.wake(T0 + TIMEOUT)  # the job's deadline: this host is still working
    assert fake.take() == []
    lc.progress("J1", "web1", T0 + 1)  # an old report never shortens it
    assert fake.take() == [("progress", "J1", "web1", now + PROGRESS_GRACE)]
    lc.wake(now + PROGRESS_GRACE)
    assert fake.take()[0] == ("store_no_response", [("J1", "web1")])

    lc, fake = machine()
    cap = T0 + TIMEOUT + MAX_DEADLINE_EXTENSION
    t = T0
    while t < cap + PROGRESS_GRACE:
        lc.progress("J1", "web1", t)
        lc.wake(t)
        t += 5
    assert ("progress", "J1", "web1", cap) in fake.events
    assert ("store_no_response", [("J1", "web1")]) in fake.events
    assert fake.stored[("J1", "web1")] is State.NO_RESPONSE


def test_nothing_is_published_after_the_jobs_deadline_even_when_extended():
    lc, fake = machine()
    fake.take()
    lc.progress("J1", "web1", T0 + TIMEOUT - 1)  # working, though no receipt came
    fake.take()
    for t in range(int(TIMEOUT), int(TIMEOUT + PROGRESS_GRACE)):
        lc.wake(T0 + t)
    lc.subscribed("web1", T0 + TIMEOUT + 2)
    assert [e for e in fake.take() if e[0] == "publish"] == []


def test_a_result_before_the_deadline_is_done_and_told_once():
    lc, fake = machine(("web1", "web2"))
    fake.take()
    assert lc.check_result("J1", "web1") is Verdict.NEW
    assert lc.result("J1", "web1", T0 + 1) is Verdict.NEW
    # A second copy while the first is stored: confirmed again, not stored twice.
    assert lc.check_result("J1", "web1") is Verdict.DUPLICATE
    assert lc.result("J1", "web1", T0 + 1) is Verdict.DUPLICATE
    lc.wake(T0 + REPUBLISH_FIRST)  # the result ends re-publishing, receipt or not
    assert fake.take() == [("publish", "J1", "web2")]
    fake.stored[("J1", "web1")] = State.DONE
    lc.result_stored("J1", "web1", T0 + 1, RESULT)
    lc.result_stored("J1", "web1", T0 + 1, RESULT)
    assert fake.take() == [("answered", "J1", "web1", RESULT)]
    assert store_result(lc, fake, "J1", "web1", T0 + 2) is Verdict.DUPLICATE
    assert store_result(lc, fake, "J1", "web2", T0 + 3) is Verdict.NEW
    assert fake.take() == [("answered", "J1", "web2", RESULT), ("finished", "J1")]
    lc.wake(T0 + TIMEOUT)
    assert fake.take() == []


def test_a_result_that_could_not_be_stored_is_taken_again():
    lc, fake = machine()
    fake.take()
    lc.result("J1", "web1", T0 + 1)
    lc.result_lost("J1", "web1", T0 + 1)
    lc.wake(T0 + REPUBLISH_FIRST)  # the minion has the job: no more publishing
    lc.subscribed("web1", T0 + REPUBLISH_FIRST)
    assert fake.take() == []
    assert store_result(lc, fake, "J1", "web1", T0 + 2) is Verdict.NEW
    assert fake.take() == [("answered", "J1", "web1", RESULT), ("finished", "J1")]


def test_a_late_result_is_stored_and_not_told_again():
    lc, fake = machine()
    lc.wake(T0 + TIMEOUT)
    fake.take()
    assert lc.check_result("J1", "web1") is Verdict.LATE
    assert lc.result("J1", "web1", T0 + TIMEOUT + 5) is Verdict.LATE
    assert lc.check_result("J1", "web1") is Verdict.DUPLICATE
    fake.stored[("J1", "web1")] = State.DONE
    lc.result_stored("J1", "web1", T0 + TIMEOUT + 5, RESULT)
    assert fake.take() == []  # the CLI heard "no response" at the deadline
    assert lc.check_result("J1", "web1") is Verdict.DUPLICATE
    assert len(lc) == 0
    # Receipts and progress after the end change nothing.
    assert lc.sent_to("J1", "web1")
    lc.receipt("J1", "web1", T0 + TIMEOUT + 6)
    assert lc.progress("J1", "web1", T0 + TIMEOUT + 6) is None
    assert fake.take() == []


def test_a_job_never_sent_to_a_host_is_unknown_to_it():
    lc, fake = machine()
    assert lc.check_result("J1", "web9") is Verdict.UNKNOWN
    assert lc.result("J1", "web9", T0) is Verdict.UNKNOWN
    assert lc.check_result("J0", "web1") is Verdict.UNKNOWN
    assert lc.sent_to("J1", "web1")
    assert not lc.sent_to("J1", "web9") and not lc.sent_to("J0", "web1")
    lc.receipt("J1", "web9", T0)
    assert lc.progress("J0", "web1", T0) is None
    assert fake.take() == [("publish", "J1", "web1")]
    assert len(lc) == 1


def test_a_forgotten_host_is_not_published_to_but_still_ends():
    lc, fake = machine(("web1", "web2"))
    fake.take()
    lc.forget_host("web1")
    lc.subscribed("web1", T0 + 2)
    lc.wake(T0 + REPUBLISH_FIRST)
    assert fake.take() == [("publish", "J1", "web2")]
    lc.wake(T0 + TIMEOUT)
    assert fake.take()[0] == ("store_no_response", [("J1", "web1"), ("J1", "web2")])


def test_restart_rebuilds_the_open_pairs_from_stored_rows():
    fake = Recorder()
    lc = Lifecycles(fake)
    now = T0 + 10
    lc.restore(
        [
            OpenRow("J1", "web1", State.SENT, T0 + TIMEOUT),
            OpenRow("J1", "web2", State.RECEIVED, T0 + TIMEOUT),
            OpenRow("J0", "web1", State.SENT, T0 - 1),  # its deadline passed while down
        ],
        now,
    )
    assert fake.take() == [] and fake.wakes == [T0 - 1]
    lc.wake(now)
    assert fake.take() == [
        ("publish", "J1", "web1"),  # only what has no receipt, and is still wanted
        ("store_no_response", [("J0", "web1")]),
        ("answered", "J0", "web1", None),
        ("finished", "J0"),
    ]
    assert lc.state("J1", "web1") is State.SENT and lc.state("J1", "web2") is State.RECEIVED
    lc.wake(now + REPUBLISH_FIRST)  # the schedule starts again from the first delay
    assert fake.take() == [("publish", "J1", "web1")]
    assert store_result(lc, fake, "J1", "web2", now + 6) is Verdict.NEW
    lc.wake(T0 + TIMEOUT)
    assert fake.take() == [
        ("answered", "J1", "web2", RESULT),
        ("store_no_response", [("J1", "web1")]),
        ("answered", "J1", "web1", None),
        ("finished", "J1"),
    ]


def test_an_earlier_wake_up_replaces_a_later_one():
    lc, fake = machine(("web1",))
    lc.receipt("J1", "web1", T0 + 1)
    lc.start("J2", ["web1"], T0 + 3, now=T0 + 1)
    assert fake.wakes == [T0 + REPUBLISH_FIRST, T0 + 3]
    lc.progress("J2", "web1", T0 + 2)
    lc.wake(T0 + 3)  # extended: nothing to do, the next wake-up is asked for
    assert ("store_no_response", [("J2", "web1")]) not in fake.events
    assert fake.wakes[-1] == T0 + 2 + PROGRESS_GRACE


# ---- sequences of events ----

HOSTS = ("a", "b", "c")
JOBS = ("J1", "J2")


class LifecycleSequences(RuleBasedStateMachine):
    """Random interleavings of every input, time only moving forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fake = Recorder()
        self.lc = Lifecycles(self.fake)
        self.now = T0
        self.started: dict[str, tuple[str, ...]] = {}
        self.deadlines: dict[str, float] = {}
        self.storing: set[tuple[str, str]] = set()
        self.done_at: dict[tuple[str, str], int] = {}  # the event index of its end

    @rule(jid=st.sampled_from(JOBS), hosts=st.sets(st.sampled_from(HOSTS), min_size=1))
    def start(self, jid: str, hosts: set[str]) -> None:
        if jid not in self.started:
            self.started[jid] = tuple(sorted(hosts))
            self.deadlines[jid] = self.now + TIMEOUT
            self.lc.start(jid, sorted(hosts), self.now + TIMEOUT, self.now)

    @rule(dt=st.floats(0, 2 * REPUBLISH_MAX))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.fire_timer()

    def fire_timer(self) -> None:
        """What the daemon does: wake the machine when its timer is due."""
        timer = self.fake.timer
        if timer is not None and timer <= self.now:
            self.fake.timer = None
            before = len(self.fake.events)
            self.lc.wake(self.now)
            for event in self.fake.events[before:]:
                if event[0] == "publish":
                    assert self.now < self.deadlines[event[1]], f"{event} after the deadline"

    @rule(jid=st.sampled_from(JOBS), host=st.sampled_from(HOSTS))
    def receipt(self, jid: str, host: str) -> None:
        self.lc.receipt(jid, host, self.now)

    @rule(jid=st.sampled_from(JOBS), host=st.sampled_from(HOSTS))
    def progress(self, jid: str, host: str) -> None:
        self.lc.progress(jid, host, self.now)

    @rule(host=st.sampled_from(HOSTS))
    def subscribed(self, host: str) -> None:
        self.lc.subscribed(host, self.now)

    @rule(jid=st.sampled_from(JOBS), host=st.sampled_from(HOSTS))
    def queue_full(self, jid: str, host: str) -> None:
        self.lc.queue_full(jid, host, self.now)

    @rule(jid=st.sampled_from(JOBS), host=st.sampled_from(HOSTS))
    def result(self, jid: str, host: str) -> None:
        verdict = self.lc.result(jid, host, self.now)
        if verdict in (Verdict.NEW, Verdict.LATE):
            assert (jid, host) not in self.storing
            self.storing.add((jid, host))
        else:
            assert verdict is not Verdict.UNKNOWN or host not in self.started.get(jid, ())

    @precondition(lambda self: self.storing)
    @rule(data=st.data(), ok=st.booleans())
    def stored(self, data: st.DataObject, ok: bool) -> None:
        jid, host = data.draw(st.sampled_from(sorted(self.storing)))
        self.storing.discard((jid, host))
        if ok:
            self.fake.stored[(jid, host)] = State.DONE
            self.lc.result_stored(jid, host, self.now, RESULT)
        else:
            self.lc.result_lost(jid, host, self.now)

    @invariant()
    def each_host_answers_once_and_nothing_is_published_after(self) -> None:
        answered: dict[tuple[str, str], int] = {}
        no_response: dict[tuple[str, str], int] = {}
        finished: dict[str, int] = {}
        for i, event in enumerate(self.fake.events):
            if event[0] == "answered":
                pair = (event[1], event[2])
                assert pair not in answered, f"{pair} answered twice"
                answered[pair] = i
            elif event[0] == "store_no_response":
                for pair in event[1]:
                    assert pair not in no_response, f"{pair} recorded no response twice"
                    assert pair not in answered
                    no_response[pair] = i
            elif event[0] == "publish":
                assert (event[1], event[2]) not in answered, f"{event} after its end"
            elif event[0] == "finished":
                assert event[1] not in finished
                finished[event[1]] = i
        for jid, hosts in self.started.items():
            ended = [h for h in hosts if (jid, h) in answered]
            open_ = [h for h in hosts if self.lc.state(jid, h) in (State.SENT, State.RECEIVED)]
            # Every host is exactly one of: still open, or answered once.
            assert sorted(ended + open_) == list(hosts)
            assert (jid in finished) == (not open_)
            for h in ended:
                assert self.fake.stored.get((jid, h)) in (State.DONE, State.NO_RESPONSE)

    @invariant()
    def a_wake_up_is_asked_for_whatever_is_due(self) -> None:
        dues = [item.due() for item in self.lc._open.values()]
        if dues and min(dues) < math.inf:
            assert self.fake.timer is not None and self.fake.timer <= min(dues)

    def teardown(self) -> None:
        # Time runs out: every host of every job has ended, exactly once.
        for _ in range(1000):
            if self.fake.timer is None:
                break
            self.now = max(self.now, self.fake.timer)
            self.fire_timer()
        for pair in sorted(self.storing):
            self.fake.stored[pair] = State.DONE
            self.lc.result_stored(*pair, self.now, RESULT)
        self.each_host_answers_once_and_nothing_is_published_after()
        assert len(self.lc) == 0
        for jid, hosts in self.started.items():
            for h in hosts:
                assert self.fake.stored[(jid, h)] in (State.DONE, State.NO_RESPONSE)


LifecycleSequences.TestCase.settings = fuzz(0.5)
test_sequences = LifecycleSequences.TestCase


def test_a_large_job_starts_a_slice_of_hosts_per_wake_up_and_ends_with_its_last_host():
    hosts = tuple(f"m{i:05d}" for i in range(START_SLICE * 2 + 1))
    lc, fake = machine(hosts)
    assert fake.take() == [("publish", "J1", h) for h in hosts[:START_SLICE]]
    assert fake.wakes == [T0]  # the next slice: at once
    # The stored job says "sent" for every host (Recorder.stored: the job
    # store), but one not started yet was sent nothing: its receipt, progress
    # or result is refused as for a job never sent, and taken once it starts.
    last = hosts[-1]
    fake.stored.update({("J1", h): State.SENT for h in hosts})
    assert not lc.sent_to("J1", last) and lc.check_result("J1", last) is Verdict.UNKNOWN
    assert lc.result("J1", last, T0) is Verdict.UNKNOWN
    # Every started host answers before the rest start: the job goes on.
    for host in hosts[:START_SLICE]:
        del fake.stored[("J1", host)]
        assert store_result(lc, fake, "J1", host, T0) is Verdict.NEW
    assert ("finished", "J1") not in fake.take()
    lc.wake(T0 + 0.001)
    assert fake.take() == [("publish", "J1", h) for h in hosts[START_SLICE : START_SLICE * 2]]
    lc.wake(T0 + 0.002)
    assert fake.take() == [("publish", "J1", last)]
    assert lc.sent_to("J1", last) and lc.check_result("J1", last) is Verdict.NEW
    for host in hosts[START_SLICE:]:
        del fake.stored[("J1", host)]
        store_result(lc, fake, "J1", host, T0 + 1)
    assert fake.take()[-1] == ("finished", "J1")
    assert len(lc) == 0


def test_a_result_stored_by_another_master_ends_the_pair_here_once():
    """A cluster: another master received and stored web1's result. This one,
    which runs the job, tells the CLI, publishes nothing more and records no
    "no response" for web1; a second notice changes nothing."""
    lc, fake = machine(("web1", "web2"))
    fake.take()
    lc.stored_elsewhere("J1", "web1", RESULT)
    lc.stored_elsewhere("J1", "web1", RESULT)
    lc.stored_elsewhere("J1", "db1", RESULT)  # never sent there
    assert fake.take() == [("answered", "J1", "web1", RESULT)]
    for t in range(1, int(TIMEOUT) + 1):
        lc.wake(T0 + t)
    assert ("publish", "J1", "web1") not in fake.events
    assert fake.take()[-3:] == [
        ("store_no_response", [("J1", "web2")]),
        ("answered", "J1", "web2", None),
        ("finished", "J1"),
    ]
