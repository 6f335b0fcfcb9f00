"""The connection table (master/transport.py): which connections to cut. Pure,
with time passed in. Then cut() itself, on real TCP connections, and the caps
that fit a descriptor limit (master/daemon.py)."""

from __future__ import annotations

import os
import random
import socket

import pytest

from safcm.common.errors import DaemonError
from safcm.master.daemon import fitting_cap
from safcm.master.transport import (
    IDENTIFY_GRACE,
    MAX_CONNECTIONS_PER_KEY,
    UNKNOWN_IDLE,
    Connection,
    ConnectionTable,
    cut,
    peer_of,
)
from tests.procs import no_descriptor_free

PEER = ("127.0.0.1", 40000)


def test_over_the_cap_the_oldest_silent_connection_goes():
    table = ConnectionTable(cap=3)
    for fd in (10, 11, 12):
        assert table.opened(fd, PEER, now=0.0) is None
    table.active(10, "aa", known=True, now=1.0)  # a minion said who it is
    victim = table.opened(13, PEER, now=2.0)
    assert victim is not None and victim.fd == 11  # the oldest silent one, not the minion
    victim = table.opened(14, PEER, now=3.0)
    assert victim is not None and victim.fd == 12  # 11 is already being cut
    table.closed(11)
    table.closed(12)
    assert len(table) == 3


def test_over_the_cap_with_every_slot_identified_the_newcomer_goes():
    table = ConnectionTable(cap=2)
    for fd, key in ((10, "aa"), (11, "bb")):
        table.opened(fd, PEER, now=0.0)
        table.active(fd, key, known=True, now=0.0)
    victim = table.opened(12, PEER, now=1.0)
    assert victim is not None and victim.fd == 12


def test_a_reused_descriptor_is_a_new_connection():
    table = ConnectionTable(cap=10)
    table.opened(10, PEER, now=0.0)
    table.active(10, "aa", known=True, now=0.0)
    table.opened(10, ("127.0.0.1", 40001), now=5.0)  # closed event lost or late
    assert table.conns[10].key is None and table.conns[10].peer == ("127.0.0.1", 40001)


def test_one_key_holds_a_few_connections_at_most():
    table = ConnectionTable(cap=100)
    cut = []
    for fd in range(MAX_CONNECTIONS_PER_KEY + 2):
        table.opened(fd, PEER, now=0.0)
        cut.append(table.active(fd, "aa", known=True, now=0.0))
    assert cut == [False] * MAX_CONNECTIONS_PER_KEY + [True, True]


def test_silent_and_idle_connections_are_stale():
    table = ConnectionTable(cap=100)
    table.opened(1, PEER, now=0.0)  # never says anything
    table.opened(2, PEER, now=0.0)
    table.active(2, "unknown", known=False, now=0.0)  # a pending minion that went quiet
    table.opened(3, PEER, now=0.0)
    table.active(3, "minion", known=True, now=0.0)  # accepted: quiet is fine
    assert table.stale(IDENTIFY_GRACE / 2) == []
    assert [c.fd for c in table.stale(IDENTIFY_GRACE + 1)] == [1]
    assert table.stale(IDENTIFY_GRACE + 2) == []  # already being cut
    assert [c.fd for c in table.stale(UNKNOWN_IDLE + 1)] == [2]


def test_unknown_keys_have_a_share_of_the_cap():
    table = ConnectionTable(cap=8)
    assert table.unknown_cap == 2
    table.opened(1, PEER, now=0.0)  # the asking connection is counted
    assert table.room_for_unknown()
    table.opened(2, PEER, now=0.0)
    assert table.room_for_unknown()
    table.opened(3, PEER, now=0.0)
    assert not table.room_for_unknown()
    table.active(3, "minion", known=True, now=0.0)
    assert table.room_for_unknown()


def test_a_rejected_key_loses_every_connection():
    table = ConnectionTable(cap=100)
    for fd in (1, 2, 3):
        table.opened(fd, PEER, now=0.0)
    table.active(1, "aa", known=True, now=0.0)
    table.active(2, "aa", known=True, now=0.0)
    table.active(3, "bb", known=True, now=0.0)
    assert sorted(c.fd for c in table.forget_key("aa")) == [1, 2]


def test_the_counts_kept_as_connections_change_match_a_recount():
    """The table keeps its counts as events come (a recount per event costs a
    fleet that reconnects at once its square); after any sequence of events
    each decision is the one a recount gives."""
    rng = random.Random(11)
    table = ConnectionTable(cap=12)
    keys = [f"k{i}" for i in range(5)]
    for now in range(5000):
        fd, key, op = rng.randrange(30), rng.choice(keys), rng.random()
        conns = table.conns.values()
        if op < 0.4:
            victim = table.opened(fd, None, now)
            if victim is not None:
                first_silent = next(
                    c for c in conns if c.key is None and (c is victim or not c.cut)
                )
                assert victim is first_silent
        elif op < 0.55:
            table.closed(fd)
        elif op < 0.9:
            conn = table.conns.get(fd)
            same = sum(1 for c in conns if c.key == key) + 1
            expected = conn is not None and conn.key != key and same > MAX_CONNECTIONS_PER_KEY
            assert table.active(fd, key, rng.random() < 0.5, now) is expected
        elif op < 0.95:
            table.forget_key(key)
        else:
            table.stale(now + rng.choice([0.0, IDENTIFY_GRACE + 1, UNKNOWN_IDLE + 1]))
        assert sum(1 for c in conns if not c.cut) <= table.cap
        assert table.unknown() == sum(1 for c in conns if not c.known)
        assert table.room_for_unknown() is (table.unknown() <= table.unknown_cap)


def test_a_connection_is_cut_at_the_descriptor_limit():
    # The limit is when cuts are needed most: no duplicate descriptor may be
    # needed, and the descriptor itself (libzmq's) is only shut down.
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            with no_descriptor_free():
                peer = peer_of(accepted.fileno())
                done = cut(Connection(accepted.fileno(), peer, 0.0))
            assert peer == client.getsockname()
            assert done
            client.settimeout(5)
            assert client.recv(1) == b""  # the end of the stream
            os.fstat(accepted.fileno())  # still open


def test_a_descriptor_that_changed_hands_is_not_cut():
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            other_peer = ("127.0.0.1", client.getsockname()[1] ^ 1)
            assert not cut(Connection(accepted.fileno(), other_peer, 0.0))
            assert not cut(Connection(accepted.fileno(), None, 0.0))
            client.setblocking(False)
            with pytest.raises(BlockingIOError):  # still open: nothing sent, no end
                client.recv(1)
    r, w = os.pipe()
    try:  # not a socket at all: left alone, and open
        assert peer_of(r) is None
        assert not cut(Connection(r, PEER, 0.0))
        os.fstat(r)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    ("wanted", "limit", "cap"),
    [
        (10_000, 65_536, 10_000),  # the shipped unit's LimitNOFILE holds the default
        (10_000, 1024, 170),  # systemd's default: 256 + 3 x 170 x 1.5 <= 1024
        (10_000, 328, 16),
        (8, 300, 8),  # a small max_connections needs less
    ],
)
def test_the_caps_with_their_burst_share_fit_the_descriptor_limit(wanted, limit, cap):
    assert fitting_cap(wanted, limit) == cap


@pytest.mark.parametrize("limit", [327, 256, 64])
def test_invalid_a_descriptor_limit_below_the_least_cap_is_refused(limit):
    with pytest.raises(DaemonError) as e:
        fitting_cap(10_000, limit)
    assert str(e.value) == (
        f"the descriptor limit {limit} (ulimit -n; LimitNOFILE in the unit) is too low: "
        "16 connections on each of 3 ports need 328 descriptors (256 + 1.5 per "
        "connection); raise the limit"
    )
