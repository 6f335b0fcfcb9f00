"""master/batch.py: rolling batches, driven by hand and by Hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safcm.common.errors import UsageError
from safcm.master.batch import BatchSize, Rollout, parse_fail_limit

HOSTS = [f"web{i}" for i in range(1, 8)]


@pytest.mark.parametrize(
    ("text", "targeted", "hosts"),
    [
        ("3", 7, 3),
        ("10", 7, 10),  # larger than the fleet: one batch
        ("10%", 7, 1),  # 0.7 rounds up: never an empty batch
        ("50%", 7, 4),
        ("100%", 7, 7),
        ("1%", 1000, 10),
    ],
)
def test_batch_size(text, targeted, hosts):
    size = BatchSize.parse(text)
    assert size.hosts(targeted) == hosts
    assert str(size) == text


@pytest.mark.parametrize(
    "text", ["0", "0%", "101%", "-1", "1.5", "%", "", "5x", "1000001", "\u00b2", "\u00b2%"]
)
def test_invalid_batch_size(text):
    with pytest.raises(UsageError, match="--batch"):
        BatchSize.parse(text)


@pytest.mark.parametrize("text", ["0", "-2", "x", "", "\u00b2"])
def test_invalid_fail_limit(text):
    with pytest.raises(UsageError, match="--batch-fail"):
        parse_fail_limit(text)


def test_next_batch_starts_only_when_the_previous_one_has_answered():
    rollout = Rollout(HOSTS, 3)
    assert rollout.next_batch() == ["web1", "web2", "web3"]
    assert rollout.next_batch() == []  # web1..3 still running
    rollout.answered("web1", ok=True)
    rollout.answered("web2", ok=False)
    assert rollout.next_batch() == []
    rollout.answered("web3", ok=True)
    assert rollout.next_batch() == ["web4", "web5", "web6"]
    assert rollout.not_run == ["web7"]
    for host in ("web4", "web5", "web6"):
        rollout.answered(host, ok=True)
    assert rollout.next_batch() == ["web7"]
    assert not rollout.finished
    rollout.answered("web7", ok=True)
    assert rollout.finished and not rollout.stopped and rollout.not_run == []
    assert rollout.next_batch() == []


def test_the_failure_limit_stops_the_rollout_but_started_hosts_finish():
    rollout = Rollout(HOSTS, 3, fail_limit=2)
    rollout.next_batch()
    rollout.answered("web1", ok=False)
    assert not rollout.stopped
    rollout.answered("web2", ok=False)
    assert rollout.stopped and not rollout.finished  # web3 still runs
    assert rollout.next_batch() == []
    rollout.answered("web3", ok=True)
    assert rollout.finished and rollout.next_batch() == []
    assert rollout.not_run == ["web4", "web5", "web6", "web7"]


def test_answers_of_hosts_not_waited_for_count_once():
    rollout = Rollout(HOSTS, 2, fail_limit=2)
    rollout.next_batch()
    rollout.answered("web1", ok=False)
    rollout.answered("web1", ok=False)  # a repeated answer
    rollout.answered("web5", ok=False)  # a host not started
    assert rollout.failed == 1 and not rollout.stopped


def test_no_hosts():
    rollout = Rollout([], 5)
    assert rollout.next_batch() == [] and rollout.finished and rollout.not_run == []


@given(
    hosts=st.integers(0, 30),
    size=st.integers(1, 12),
    limit=st.one_of(st.none(), st.integers(1, 10)),
    outcomes=st.lists(st.booleans(), max_size=40),
)
def test_invariants(hosts, size, limit, outcomes):
    names = [f"h{i}" for i in range(hosts)]
    rollout = Rollout(names, size, fail_limit=limit)
    started: list[str] = []
    failures_before_batch: list[int] = []  # failures when each batch started
    failed = 0
    answers = iter(outcomes)
    while not rollout.finished:
        batch = rollout.next_batch()
        assert batch, "a rollout that is not finished always has a host to wait for or start"
        assert len(batch) <= size
        failures_before_batch.append(failed)
        started += batch
        for host in batch:
            ok = next(answers, True)
            failed += not ok
            rollout.answered(host, ok)
    # Every host either started once, in order, or is reported as not run.
    assert started + rollout.not_run == names
    assert rollout.failed == failed
    assert rollout.stopped == (limit is not None and failed >= limit)
    if limit is not None:
        # No batch started once the limit was reached.
        assert all(before < limit for before in failures_before_batch)


def test_a_halt_lets_the_running_batch_finish_and_starts_no_other():
    rollout = Rollout(HOSTS, 3)
    rollout.next_batch()
    rollout.answered("web1", ok=True)
    rollout.halt()
    assert not rollout.finished and rollout.next_batch() == []
    rollout.answered("web2", ok=True)
    rollout.answered("web3", ok=True)
    assert rollout.finished and rollout.halted and not rollout.stopped
    assert rollout.next_batch() == []
    assert rollout.not_run == ["web4", "web5", "web6", "web7"]
