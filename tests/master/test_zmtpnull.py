"""The key port's own ZMTP reader: a real libzmq DEALER is answered; a
multipart message, an oversized frame or a foreign greeting ends the
connection before anything is kept of it."""

from __future__ import annotations

import struct

import pytest
import zmq

from safcm.master.zmtpnull import (
    GREETING,
    HELLO,
    NullConnection,
    ZmtpError,
    frame,
)

READY = frame(b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER", command=True)


def connection() -> NullConnection:
    return NullConnection(max_frame=512)


def test_a_request_split_anywhere_comes_out_whole():
    data = GREETING + READY + frame(b"one") + frame(b"x" * 300)
    for cut in range(len(data)):
        conn = connection()
        assert conn.feed(data[:cut]) + conn.feed(data[cut:]) == [b"one", b"x" * 300]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "not a ZMTP greeting"),
        (GREETING[:10] + b"\x02", "ZMTP version 2, not 3"),
        (GREETING[:12] + b"CURVE".ljust(20, b"\0"), "mechanism 'CURVE'"),
        (GREETING + frame(b"early"), "a message before the READY command"),
        (GREETING + READY + b"\x01\x05hello", "a multipart message"),
        (GREETING + READY + b"\x02" + struct.pack(">Q", 513), "a frame of 513 bytes"),
        (GREETING + b"\x06" + struct.pack(">Q", 2**40), "a frame of 1099511627776 bytes"),
        (GREETING + READY + READY, "command 'READY'"),
        (GREETING + READY + b"\x80\x00", "frame flags 0x80"),
    ],
)
def test_a_broken_wire_ends_the_connection_as_soon_as_it_shows(data, reason):
    conn = connection()
    with pytest.raises(ZmtpError, match=reason):
        conn.feed(data)


def test_what_waits_is_at_most_one_frame():
    # An endless "more" message is refused at its first frame's header, and
    # a large frame at its size: nothing of its body is kept.
    conn = connection()
    conn.feed(GREETING + READY)
    conn.feed(b"\x00\xff" + b"y" * 100)  # a frame of 255 bytes, partly here
    assert len(conn._buf) == 102


def test_a_libzmq_dealer_is_answered():
    # The minion's side is a real DEALER, unchanged: greeting, READY, then
    # one-frame requests and replies.
    ctx = zmq.Context()
    server = ctx.socket(zmq.STREAM)
    dealer = ctx.socket(zmq.DEALER)
    try:
        for sock in (server, dealer):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 10_000)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        peer, empty = server.recv_multipart()  # the connection opened
        assert empty == b""
        server.send_multipart([peer, HELLO])
        dealer.send(b"what are your keys?")
        conn = connection()
        got: list[bytes] = []
        while not got:
            who, data = server.recv_multipart()
            assert who == peer
            got = conn.feed(data)
        assert got == [b"what are your keys?"]
        server.send_multipart([peer, frame(b"k" * 400)])  # a long frame
        assert dealer.recv() == b"k" * 400
    finally:
        dealer.close(0)
        server.close(0)
        ctx.term()
