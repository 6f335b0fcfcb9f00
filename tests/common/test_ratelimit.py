"""Token buckets and the peer log limiter: pure, time passed in."""

from __future__ import annotations

import logging

from safcm.common.ratelimit import Bucket, Buckets, PeerLog


def test_a_bucket_allows_its_burst_then_its_rate():
    b = Bucket(rate=2.0, burst=3.0, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5)  # one token back after half a second at 2/s
    assert not b.take(0.5)
    assert b.take(100.0) and b.tokens == 2.0  # never more than the burst


def test_a_clock_stepping_back_takes_no_tokens_away():
    b = Bucket(rate=1.0, burst=2.0, now=100.0)
    b.take(100.0)
    assert b.take(50.0)  # one left; the step back neither adds nor removes


def test_buckets_forget_the_least_recently_used_keys():
    buckets = Buckets(rate=0.0, burst=1.0, max_keys=2)
    assert buckets.take("a", 0.0) and buckets.take("b", 0.0)
    assert not buckets.take("a", 0.0)  # a is empty and now the most recent
    assert buckets.take("c", 0.0)  # b goes
    assert len(buckets) == 2
    assert buckets.take("b", 0.0)  # forgotten, so full again


def test_peer_log_writes_its_burst_then_counts(caplog):
    now = [0.0]
    plog = PeerLog(logging.getLogger("t"), lambda: now[0], rate=1.0, burst=2.0)
    with caplog.at_level(logging.INFO, logger="t"):
        for i in range(10):
            plog.warning("line %d", i)
        assert [r.getMessage() for r in caplog.records] == ["line 0", "line 1"]
        now[0] = 1.5
        plog.warning("again")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[2:] == ["8 more log lines about peers left out (rate limit)", "again"]


def test_security_lines_have_a_budget_of_their_own(caplog):
    now = [0.0]
    plog = PeerLog(
        logging.getLogger("t"),
        lambda: now[0],
        rate=1.0,
        burst=2.0,
        security_rate=1.0,
        security_burst=1.0,
    )
    with caplog.at_level(logging.INFO, logger="t"):
        for i in range(10):  # junk empties the peer budget
            plog.warning("junk %d", i)
        plog.security("refused %s", "web1")
        plog.security("refused %s", "web2")  # beyond its own budget
        now[0] = 1.0
        plog.security("refused %s", "web3")
    assert [r.getMessage() for r in caplog.records] == [
        "junk 0",
        "junk 1",
        "8 more log lines about peers left out (rate limit)",
        "refused web1",
        "1 more log lines about security events left out (rate limit)",
        "refused web3",
    ]
