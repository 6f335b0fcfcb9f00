"""The lifecycle of a job on one host, and of all open ones: pure, time passed in.

One (job, host) moves through these states (the job_hosts row of
master/jobstore.py keeps the same names):

    sent --receipt--> received --result stored--> done
      \\                  \\
       +--deadline--------+--> no_response --late result stored--> done

    state         input             effects                            next state
    ---------     ---------------   ---------------------------------  -----------
    (new)         start             publish (START_SLICE a wake-up)    sent
    sent          wake, send due    publish (backoff and patience,     sent
                                    until deadline)
    sent          subscribed        publish (at most once a second)    sent
    sent          queue_full        publish (after QUEUE_FULL_RETRY)   sent
    sent          receipt           store_receipt                      received
    sent/recv.    progress          progress (deadline moves)          same
    sent/recv.    result            (caller stores it: NEW)            same, storing
    sent/recv.    result_stored     answered, finished?                done (dropped)
    sent/recv.    wake, deadline    store_no_response, answered,       no_response
                  (WAKE_SLICE a     finished?                          (dropped)
                  wake-up)
    no_response   result            (caller stores it: LATE)           storing
    no_response   result_stored     -                                  done (dropped)
    sent/recv.    stored_elsewhere  answered, finished?                done (dropped)
    done          result            (confirmed again: DUPLICATE)       done

A host of a new job whose turn to be started has not come is not sent to
yet: a receipt, progress or result for it is refused as for a job never
sent (the master published nothing to it, so none can be genuine).

Anything else is ignored: a receipt or progress once the host has answered,
a second receipt, a second copy of a result while the first is stored.

Only open (job, host) pairs (sent, received) are kept in memory, and a late
result while it is stored; the others live in the job store alone, and
`Effects.stored_state` reads them when a late or duplicate result arrives.
A restarted master rebuilds the open ones from the store (restore()); their
progress extensions are lost, so the job's own deadline holds again.

Time is passed in to every input (`now`, unix time: deadlines are stored as
such). The machine asks for what must happen through an `Effects` object: the
daemon's does it (master/daemon.py), the tests' records it. It does no I/O.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from safcm.master.jobstore import Answer

# Re-publishing an envelope without receipt: first after this many seconds,
# then doubling up to REPUBLISH_MAX. Over ZeroMQ's TCP an envelope is lost on
# a live subscription only when that subscriber's queue is full, which the
# publish socket reports (XPUB_NODROP: queue_full() retries it soon), or when
# the connection breaks, and then the minion subscribes again and is served
# at once (subscribed()). So this timer only covers what the minion itself
# dropped (its MAX_QUEUED_JOBS were full) or a lost receipt (its result comes
# anyway). Minions under load take seconds to confirm: at 5 s, 1,000 swarmed
# minions were sent 700-1,200 copies of one create job they already had
# (bench/fanout.py), each sealed and sent for nothing, and more the busier
# they were.
REPUBLISH_FIRST = 20.0
REPUBLISH_MAX = 60.0
# ... and not before RECEIPT_PATIENCE times the slowest receipt of the same
# job so far (from the envelope's last sending), up to PATIENCE_MAX seconds.
# A fleet that confirms slowly (a large job's envelopes queue at the minions,
# or their disks are busy) has its other hosts' receipts coming, not lost:
# at 6,000 swarmed minions a create job was published 14,411 times to 6,000
# hosts, each copy sealed, sent and refused as "seen" for nothing, which
# slowed the minions further. The cap bounds how long one slow (or hostile)
# minion can hold back its job's re-publishes to the others.
RECEIPT_PATIENCE = 2.0
PATIENCE_MAX = 300.0
# Seconds until an envelope the publish socket could not queue (that
# subscriber's queue was full) is tried again, doubling each time it is still
# full, up to REPUBLISH_MAX: a subscriber that stopped reading costs a seal
# now and then, not one a second.
QUEUE_FULL_RETRY = 1.0
# A subscription re-publishes the envelopes waiting for that minion, but one
# envelope at most once per this many seconds: re-subscribing in a loop
# costs the master nothing more.
RESUBSCRIBE_MIN_INTERVAL = 1.0
# A minion still working on a job (JOB_PROGRESS, every few seconds) keeps that
# host's deadline at least this many seconds ahead: three of its reports (see
# minion/daemon.py PROGRESS_INTERVAL), so one or two lost do not end it.
PROGRESS_GRACE = 15.0
# Seconds past the job's own deadline that progress can extend a host's, at
# most: longer than any sane set of triggers (120 of them each hitting the
# minion's 30 s trigger_timeout), and a bound on how long a minion can keep a
# run open. Past it the host is "no response"; a later result is still stored.
MAX_DEADLINE_EXTENSION = 3600.0
# Seconds until "no response" is written again after the store failed (a
# database locked by another process): nothing changed, so it is retried.
STORE_RETRY = 0.25
# Hosts of a new job started (and published) per call: start() takes this
# many, and each wake-up, asked for at once, the next as many, so that the
# loop reads and writes between them (about 10 ms per 1000 hosts on a busy
# 2-core machine; bench/submit.py). Until its turn, a host of the job is not
# sent to: a receipt or result for it is refused, as for a job never sent.
START_SLICE = 1000
# (job, host) pairs whose time has come handled per wake-up at most: a job's
# whole fleet that reaches its deadline together is recorded "no response"
# and answered in slices, the next asked for at once, so the loop reads and
# writes between them (10,000 at once would be one long transaction, then an
# answer to the CLI for each, with nothing else read meanwhile).
WAKE_SLICE = 500


class State(enum.StrEnum):
    SENT = "sent"  # envelope published, no receipt yet
    RECEIVED = "received"  # the minion confirmed receipt, no result yet
    DONE = "done"  # result stored
    NO_RESPONSE = "no_response"  # deadline passed without a result


OPEN = (State.SENT, State.RECEIVED)


class Verdict(enum.Enum):
    """What a result that arrives for (job, host) is to the lifecycle."""

    NEW = "new"  # the host's answer: store it, then tell the CLI
    LATE = "late"  # after "no response": store it (the CLI was told already)
    DUPLICATE = "duplicate"  # stored already, or being stored: confirm it again
    UNKNOWN = "unknown"  # the job never went to that host: refuse it


@dataclass(frozen=True)
class OpenRow:
    """A stored (job, host) without result, as restore() takes it."""

    jid: str
    host: str
    state: State  # sent or received
    deadline: float  # the job's, unix time


class Effects(Protocol):
    """What the lifecycle asks for. Called synchronously; an exception from
    store_no_response leaves the state as it was (retried STORE_RETRY later)."""

    def stored_state(self, jid: str, host: str) -> State | None:
        """The stored state of a (job, host) that is not open: the one thing
        the machine reads. None if the job never went to that host."""
        ...

    def publish(self, jid: str, host: str) -> None:
        """Send the host its envelope of the job (again)."""
        ...

    def store_receipt(self, jid: str, host: str) -> None: ...

    def store_no_response(self, pairs: list[tuple[str, str]]) -> None:
        """Record these (jid, host) pairs as "no response", all at once (the
        daemon hands the write to its result writer, which retries it)."""
        ...

    def answered(self, jid: str, host: str, answer: Answer | None) -> None:
        """The host's first final word on the job, for the CLI that waits:
        its stored result, or None for "no response". Once per (job, host)."""
        ...

    def progress(self, jid: str, host: str, until: float) -> None:
        """The host is still working; it now has until `until` (unix time)."""
        ...

    def finished(self, jid: str) -> None:
        """Every host of the job has answered or is "no response"."""
        ...

    def wake_at(self, when: float) -> None:
        """Call wake() at `when` (unix time), or earlier; a later call with an
        earlier time replaces this one."""
        ...


@dataclass
class Starting:
    """A job whose hosts are being started, START_SLICE at a time."""

    hosts: list[str]
    waiting: set[str]  # not started yet
    deadline: float
    next: int = 0  # index in hosts of the next one to start


@dataclass
class HostJob:
    """One open (job, host)."""

    jid: str
    host: str
    state: State
    deadline: float  # the job's: nothing is published from then on
    until: float  # when it becomes "no response": the deadline, or later by progress
    cap: float  # the latest `until` progress may reach
    publishing: bool = True  # re-published until a receipt (or the deadline)
    next_send: float = -math.inf
    delay: float = REPUBLISH_FIRST
    full_delay: float = QUEUE_FULL_RETRY  # the next retry after its queue was full
    last_sent: float = -math.inf
    storing: bool = False  # its result is being stored
    queued: float = math.inf  # the time of its one live entry in the wake-up heap

    def due(self) -> float:
        """When wake() next has something to do for it."""
        if self.storing:  # result_stored() or result_lost() comes first
            return math.inf
        if self.publishing and self.next_send < self.deadline:
            return min(self.next_send, self.until)
        return self.until

    def sent(self, now: float) -> None:
        self.last_sent = now
        self.next_send = now + self.delay
        self.delay = min(self.delay * 2, REPUBLISH_MAX)


class Lifecycles:
    """Every open (job, host) of the master, and the wake-ups they need."""

    def __init__(self, effects: Effects) -> None:
        self.effects = effects
        self._open: dict[tuple[str, str], HostJob] = {}
        self._by_host: dict[str, set[str]] = {}  # host -> jids open for it
        self._by_job: dict[str, int] = {}  # jid -> hosts still open
        # (due, seq, jid, host): an entry whose time is no longer its pair's
        # `queued` (answered since, or its schedule moved) is stale, skipped.
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._asked: float | None = None  # the wake-up last asked for
        self._hold_until = -math.inf  # no wake-up before this: a store failed
        self._starting: dict[str, Starting] = {}  # jobs with hosts still to start
        self._slowest: dict[str, float] = {}  # jid -> its slowest receipt, seconds
        self._start_due = -math.inf  # when the next slice of them is due

    def __len__(self) -> int:
        return len(self._open)

    def state(self, jid: str, host: str) -> State | None:
        """The state of an open (job, host), or None if it is not open."""
        item = self._open.get((jid, host))
        return None if item is None else item.state

    # ---- inputs ----

    def start(self, jid: str, hosts: Iterable[str], deadline: float, now: float) -> None:
        """A new job, stored: publish it to each host, START_SLICE hosts now
        and as many at each wake-up after (asked for at once)."""
        hosts = list(hosts)
        if hosts:
            # Counted whole at once: the job finishes only once every host has answered.
            self._by_job[jid] = self._by_job.get(jid, 0) + len(hosts)
            self._starting[jid] = Starting(hosts, set(hosts), deadline)
            self._start_some(now)
        self._ask()

    def restore(self, rows: Iterable[OpenRow], now: float) -> None:
        """After a restart: the stored open (job, host) pairs. Those still
        without receipt are published again at the first wake-up, those past
        their deadline become "no response" then."""
        for row in rows:
            item = self._add(row.jid, row.host, row.state, row.deadline)
            item.publishing = row.state is State.SENT
            item.next_send = now
            self._push(item)
        self._ask()

    def wake(self, now: float) -> None:
        """Do what is due: start hosts of new jobs, re-publish, and record
        "no response" at deadlines."""
        self._asked = None
        self._start_some(now)
        due: list[HostJob] = []
        while self._heap and self._heap[0][0] <= now and len(due) < WAKE_SLICE:
            entry = heapq.heappop(self._heap)
            item = self._open.get((entry[2], entry[3]))
            if item is not None and item.queued == entry[0]:
                item.queued = math.inf
                due.append(item)
        expired: list[HostJob] = []
        for item in due:
            if now >= item.deadline:
                item.publishing = False  # its envelope expires with the deadline
            if item.until <= now:
                expired.append(item)
            elif item.publishing and item.next_send <= now:
                patient_until = item.last_sent + self._patience(item.jid)
                if now < patient_until:  # its job's other hosts confirm this slowly
                    item.next_send = patient_until
                    self._push(item)
                else:
                    self._publish(item, now)
            else:
                self._push(item)
        if expired:
            try:
                self.effects.store_no_response([(i.jid, i.host) for i in expired])
            except Exception:
                for item in expired:  # nothing changed: tried again soon
                    self._push(item)
                self._hold_until = now + STORE_RETRY
                self._ask()
                raise
            for item in expired:
                self._close(item, None)
        self._ask()

    def subscribed(self, host: str, now: float) -> None:
        """The host's minion (re)subscribed: send what it has not received,
        each envelope at most once per RESUBSCRIBE_MIN_INTERVAL."""
        for jid in sorted(self._by_host.get(host, ())):
            item = self._open[(jid, host)]
            if not item.publishing or now >= item.deadline:
                continue
            if not 0 <= now - item.last_sent < RESUBSCRIBE_MIN_INTERVAL:
                self._publish(item, now)
            elif item.next_send > item.last_sent + RESUBSCRIBE_MIN_INTERVAL:
                # Sent just now: the next wake-up sends it again soon, not each re-subscription.
                item.next_send = item.last_sent + RESUBSCRIBE_MIN_INTERVAL
                self._push(item)
        self._ask()

    def queue_full(self, jid: str, host: str, now: float) -> None:
        """The envelope of (jid, host) was not queued (that subscriber's
        queue is full): publish it again soon, not at the timer's next turn."""
        item = self._open.get((jid, host))
        if item is None or not item.publishing or now >= item.deadline:
            return
        item.next_send = min(item.next_send, now + item.full_delay)
        item.full_delay = min(item.full_delay * 2, REPUBLISH_MAX)
        self._push(item)
        self._ask()

    def sent_to(self, jid: str, host: str) -> bool:
        """Whether the job went to the host: asked before its receipt or
        progress is opened, which must be refused otherwise."""
        if (jid, host) in self._open:
            return True
        return not self._waiting(jid, host) and self.effects.stored_state(jid, host) is not None

    def receipt(self, jid: str, host: str, now: float) -> None:
        """The host confirmed it has the job (a second receipt, or one after
        its end, changes nothing)."""
        item = self._open.get((jid, host))
        if item is not None and item.state is State.SENT:
            if item.last_sent > -math.inf:  # else sent before a restart: when, unknown
                took = now - item.last_sent
                self._slowest[jid] = max(self._slowest.get(jid, 0.0), took)
            item.state = State.RECEIVED
            item.publishing = False
            self.effects.store_receipt(jid, host)
            self._push(item)
            self._ask()

    def progress(self, jid: str, host: str, now: float) -> float | None:
        """The host is still working on the job: keep its deadline
        PROGRESS_GRACE ahead, up to MAX_DEADLINE_EXTENSION past the job's.
        Returns its deadline now; None if it has answered (or never had the job)."""
        item = self._open.get((jid, host))
        if item is None or item.storing or item.state not in OPEN:
            return None
        until = min(max(now + PROGRESS_GRACE, item.until), item.cap)
        item.until = until
        self._push(item)
        self.effects.progress(jid, host, until)
        return until

    def check_result(self, jid: str, host: str) -> Verdict:
        """What a result from `host` for `jid` would be; changes nothing (asked
        before the result is opened, which costs more)."""
        item = self._open.get((jid, host))
        if item is not None:
            return Verdict.DUPLICATE if item.storing else Verdict.NEW
        if self._waiting(jid, host):  # stored, but nothing was published to it yet
            return Verdict.UNKNOWN
        stored = self.effects.stored_state(jid, host)
        if stored is None:
            return Verdict.UNKNOWN
        if stored is State.NO_RESPONSE:
            return Verdict.LATE
        return Verdict.DUPLICATE if stored is State.DONE else Verdict.NEW

    def result(self, jid: str, host: str, now: float) -> Verdict:
        """A result that answers the job arrived and is about to be stored
        (NEW or LATE): it is stored once, and nothing is published any more.
        The caller stores it, then calls result_stored() or result_lost()."""
        verdict = self.check_result(jid, host)
        if verdict is Verdict.NEW or verdict is Verdict.LATE:
            item = self._open.get((jid, host))
            if item is None:  # late: kept while it is stored, to see duplicates
                item = self._add(jid, host, State.NO_RESPONSE, now, late=True)
            item.storing = True
            item.publishing = False
            self._push(item)
        return verdict

    def result_stored(self, jid: str, host: str, now: float, answer: Answer) -> None:
        """The result taken by result() is stored: the host is done."""
        item = self._open.get((jid, host))
        if item is None or not item.storing:
            return
        if item.state is State.NO_RESPONSE:  # late: the CLI heard "no response" already
            self._drop(item)
        else:
            self._close(item, answer)
        self._ask()

    def result_lost(self, jid: str, host: str, now: float) -> None:
        """The result taken by result() could not be stored: the minion sends
        it again, as it was not confirmed."""
        item = self._open.get((jid, host))
        if item is None or not item.storing:
            return
        if item.state is State.NO_RESPONSE:
            self._drop(item)
            return
        item.storing = False
        self._push(item)
        self._ask()

    def stored_elsewhere(self, jid: str, host: str, answer: Answer | None) -> None:
        """Another master of the cluster received and stored the result of
        (jid, host): the host is done here too (nothing more is published,
        and no "no response" is recorded)."""
        item = self._open.get((jid, host))
        if item is None or item.storing or item.state not in OPEN:
            return
        self._close(item, answer)
        self._ask()

    def forget_host(self, host: str) -> None:
        """The host's key is no longer accepted: nothing more is published to
        it. Its jobs still end, in a result or "no response"."""
        for jid in self._by_host.get(host, ()):
            item = self._open[(jid, host)]
            if item.publishing:
                item.publishing = False
                self._push(item)
        self._ask()

    # ---- inside ----

    def _start_some(self, now: float) -> None:
        """Start (publish) the next START_SLICE hosts of new jobs."""
        budget = START_SLICE
        for jid, starting in list(self._starting.items()):
            end = min(len(starting.hosts), starting.next + budget)
            for host in starting.hosts[starting.next : end]:
                starting.waiting.discard(host)
                item = self._add(jid, host, State.SENT, starting.deadline, count=False)
                self._publish(item, now)
            budget -= end - starting.next
            starting.next = end
            if end == len(starting.hosts):
                del self._starting[jid]
            if not budget:
                break
        self._start_due = now

    def _waiting(self, jid: str, host: str) -> bool:
        """Whether (jid, host) is of a new job, and its host not started yet."""
        starting = self._starting.get(jid)
        return starting is not None and host in starting.waiting

    def _add(
        self,
        jid: str,
        host: str,
        state: State,
        deadline: float,
        *,
        count: bool = True,
        late: bool = False,
    ) -> HostJob:
        """Open (jid, host); `count`: it adds to its job's hosts (start() counts
        them all at once); `late`: a result after "no response", being stored."""
        if (jid, host) in self._open:
            raise ValueError(f"job {jid} is already open for {host}")
        item = HostJob(jid, host, state, deadline, deadline, deadline + MAX_DEADLINE_EXTENSION)
        if count and not late:
            self._by_job[jid] = self._by_job.get(jid, 0) + 1
        if late:  # the job is over, the pair is here only while stored
            item.until = math.inf
            item.publishing = False
        self._open[(jid, host)] = item
        self._by_host.setdefault(host, set()).add(jid)
        return item

    def _patience(self, jid: str) -> float:
        """Seconds after its last sending before a host of `jid` without
        receipt is published to again, given how its other hosts confirm."""
        return min(RECEIPT_PATIENCE * self._slowest.get(jid, 0.0), PATIENCE_MAX)

    def _publish(self, item: HostJob, now: float) -> None:
        self.effects.publish(item.jid, item.host)
        item.sent(now)
        self._push(item)

    def _push(self, item: HostJob) -> None:
        """Queue the pair's next wake-up, if it moved; the old entry goes stale."""
        due = item.due()
        if due != item.queued:
            item.queued = due
            if due < math.inf:
                heapq.heappush(self._heap, (due, next(self._seq), item.jid, item.host))

    def _ask(self) -> None:
        """Ask for a wake-up when the earliest pair is due, unless one at that
        time or earlier is asked for already."""
        while self._heap and self._stale(self._heap[0]):
            heapq.heappop(self._heap)
        due = []
        if self._heap:
            due.append(max(self._heap[0][0], self._hold_until))
        if self._starting:  # the next slice of new hosts: at once
            due.append(self._start_due)
        if not due:
            return
        when = min(due)
        if self._asked is None or when < self._asked:
            self._asked = when
            self.effects.wake_at(when)

    def _stale(self, entry: tuple[float, int, str, str]) -> bool:
        item = self._open.get((entry[2], entry[3]))
        return item is None or item.queued != entry[0]

    def _close(self, item: HostJob, answer: Answer | None) -> None:
        """The host's final word: tell the CLI, and the job if it was the last."""
        self._drop(item)
        self.effects.answered(item.jid, item.host, answer)
        left = self._by_job[item.jid] - 1
        if left:
            self._by_job[item.jid] = left
        else:
            del self._by_job[item.jid]
            self._slowest.pop(item.jid, None)
            self.effects.finished(item.jid)

    def _drop(self, item: HostJob) -> None:
        del self._open[(item.jid, item.host)]
        jids = self._by_host[item.host]
        jids.discard(item.jid)
        if not jids:
            del self._by_host[item.host]
