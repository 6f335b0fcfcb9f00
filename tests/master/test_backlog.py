"""The bytes libzmq keeps for the master per connection, read from the kernel."""

from __future__ import annotations

import socket
import time

from safcm.master.backlog import (
    GROWTH_TRIGGER,
    HANDSHAKE_BYTES,
    SWEEP_INTERVAL,
    BacklogWatch,
    Taken,
    probe,
    rss_bytes,
    waiting,
)


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


def test_waiting_counts_what_was_not_taken_beyond_the_wires_own_bytes():
    taken = Taken(opened=100.0, bytes=5_000, frames=10)
    # All that came was taken, the wire's bytes within their allowance.
    assert waiting(5_000 + 10 * 40 + 1_000, 0, taken, now=100.0) < 0
    # An unfinished message of 1 MiB sits in libzmq.
    held = waiting(5_000 + 1_048_576 + HANDSHAKE_BYTES + 640, 0, taken, now=100.0)
    assert held == 1_048_576
    # Bytes still in the kernel are not libzmq's.
    assert waiting(5_000 + 1_048_576 + HANDSHAKE_BYTES + 640, 1_048_576, taken, now=100.0) == 0


def test_the_watch_reads_every_connection_on_a_jump_or_a_sweep():
    watch = BacklogWatch(now=0.0, size=100 << 20)
    assert not watch.look(0.1, (100 << 20) + GROWTH_TRIGGER - 1)
    assert watch.look(0.2, (100 << 20) + 2 * GROWTH_TRIGGER)  # a jump since the last look
    assert not watch.look(0.3, (100 << 20) + 2 * GROWTH_TRIGGER)
    assert watch.look(0.2 + SWEEP_INTERVAL, 50 << 20)  # the sweep came due
    assert not watch.look(0.3 + SWEEP_INTERVAL, 60 << 20)


def test_rss_bytes_is_this_process_size():
    assert 1 << 20 < rss_bytes() < 64 << 30
