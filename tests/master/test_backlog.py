"""The bytes libzmq keeps for the master per connection, read from the kernel."""

from __future__ import annotations

import socket
import time

from safcm.master.backlog import (
    GROWTH_TRIGGER,
    HANDSHAKE_BYTES,
    IDENTIFY_SOON,
    STRANGERS_WAITING_MAX,
    SWEEP_INTERVAL,
    UNKNOWN_WAITING_MAX,
    BacklogWatch,
    probe,
    rss_bytes,
    to_cut,
    waiting,
)
from safcm.master.transport import Connection


def wait_until_received(fd: int, n: int) -> tuple[int, int]:
    deadline = time.monotonic() + 10
    while True:
        got = probe(fd)
        assert got is not None
        if got[0] >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.001)


def test_probe_reads_what_the_kernel_received_and_what_is_still_unread():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    try:
        client.sendall(b"x" * 10_000)
        assert wait_until_received(conn.fileno(), 10_000) == (10_000, 10_000)
        assert len(conn.recv(4_000)) == 4_000
        assert probe(conn.fileno()) == (10_000, 6_000)
        conn.fileno()  # the probe left the descriptor open
        client.sendall(b"y")
        assert conn.recv(7_000) == b"x" * 6_000 + b"y"
    finally:
        for s in (client, conn, server):
            s.close()
    r, w = socket.socketpair(socket.AF_UNIX)
    try:
        assert probe(r.fileno()) is None  # not TCP
    finally:
        r.close()
        w.close()


def conn(
    fd: int = 7,
    *,
    key: str | None = "ab",
    known: bool = True,
    taken: int = 0,
    handshaken: float | None = 100.0,
) -> Connection:
    return Connection(
        fd, None, 100.0, key=key, known=known, taken=taken, frames=10, handshaken=handshaken
    )


def test_waiting_counts_what_was_not_taken_beyond_the_wires_own_bytes():
    c = conn(taken=5_000)
    # All that came was taken, the wire's bytes within their allowance.
    assert waiting(5_000 + 10 * 40 + 1_000, 0, c, now=100.0) < 0
    # An unfinished message of 1 MiB sits in libzmq.
    sent = 5_000 + 1_048_576 + HANDSHAKE_BYTES + 640
    assert waiting(sent, 0, c, now=100.0) == 1_048_576
    # Bytes still in the kernel are not libzmq's.
    assert waiting(sent, 1_048_576, c, now=100.0) == 0


KNOWN_MAX = 10 * 1024 * 1024
NOW = 200.0


def test_each_connection_is_cut_beyond_what_it_may_have_waiting():
    minion = conn(1)
    unknown = conn(2, known=False)
    quiet = conn(3, key=None, known=False)  # handshake done, not identified yet
    greeting = conn(4, key=None, known=False, handshaken=None)  # in its handshake
    assert (
        to_cut(
            [(minion, KNOWN_MAX), (unknown, UNKNOWN_WAITING_MAX), (quiet, 1), (greeting, 1)],
            KNOWN_MAX,
            NOW,
        )
        == []
    )
    cuts = to_cut(
        [
            (minion, KNOWN_MAX + 1),
            (unknown, UNKNOWN_WAITING_MAX + 1),
            (quiet, KNOWN_MAX + 1),
            (greeting, UNKNOWN_WAITING_MAX + 1),
        ],
        KNOWN_MAX,
        NOW,
    )
    assert [c.fd for c, _ in cuts] == [1, 2, 3, 4]
    assert f"more than {UNKNOWN_WAITING_MAX}" in cuts[1][1]


def test_strangers_together_are_cut_largest_first_beyond_their_share():
    many = [(conn(10 + i, known=False), UNKNOWN_WAITING_MAX) for i in range(400)]
    many[5] = (many[5][0], UNKNOWN_WAITING_MAX - 1)
    cut = {c.fd for c, _ in to_cut(many, KNOWN_MAX, NOW)}
    kept = sum(n for c, n in many if c.fd not in cut)
    assert kept <= STRANGERS_WAITING_MAX < kept + UNKNOWN_WAITING_MAX
    assert many[5][0].fd not in cut  # the smallest stays
    # An accepted minion's bytes are not a stranger's.
    minions = [(conn(1000 + i), KNOWN_MAX) for i in range(10)]
    assert to_cut(minions, KNOWN_MAX, NOW) == []


def test_a_connection_not_identified_yet_counts_as_a_stranger_only_after_a_while():
    # Its first message (a minion's hello) may have a result right behind it.
    fresh = [
        (conn(i, key=None, known=False, handshaken=NOW - IDENTIFY_SOON / 2), KNOWN_MAX)
        for i in range(4)
    ]
    assert to_cut(fresh, KNOWN_MAX, NOW) == []
    later = NOW + IDENTIFY_SOON
    assert len(to_cut(fresh, KNOWN_MAX, later)) == 3  # until what is left fits


def test_the_watch_reads_every_connection_on_growth_or_a_sweep():
    watch = BacklogWatch(now=0.0, size=100 << 20)
    # Slow growth adds up from the last read, not from the last look.
    assert not watch.look(0.1, (100 << 20) + GROWTH_TRIGGER // 2)
    assert watch.look(0.2, (100 << 20) + GROWTH_TRIGGER)
    assert not watch.look(0.3, (100 << 20) + GROWTH_TRIGGER)
    assert not watch.look(0.4, 90 << 20)  # it shrank: growth counts from here
    assert watch.look(0.5, (90 << 20) + GROWTH_TRIGGER)
    assert watch.look(0.5 + SWEEP_INTERVAL, 50 << 20)  # the sweep came due
    assert not watch.look(0.6 + SWEEP_INTERVAL, (50 << 20) + GROWTH_TRIGGER - 1)


def test_rss_bytes_is_this_process_size():
    assert 1 << 20 < rss_bytes() < 64 << 30
