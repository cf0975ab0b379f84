"""``_speedups.send_pending`` (both twins): write_many's common case on real sockets."""

from __future__ import annotations

import socket

import pytest

from edge.grip.instruct import Hold
from edge.grip.session import StreamSession
from edge.ws.session import WsSession

CLS = (StreamSession, WsSession)


@pytest.fixture(autouse=True)
def _usable(twins) -> None:
    """The compiled twin takes only sessions of its own SessionCore: under
    GRIPCAST_NO_SPEEDUPS the edge's sessions derive from the pure one (that shard runs the pure
    twin, the other shard the compiled one)."""
    if twins.kind == "compiled" and not issubclass(StreamSession, twins.SessionCore):
        pytest.skip("the edge's sessions derive from the other twin's SessionCore")


def _session(sock: socket.socket) -> StreamSession:
    s = StreamSession(sock, Hold(mode="stream"), True, now=0.0)
    s.writing = False
    return s


def test_send_pending_sends_the_plain_and_leaves_the_rest(twins):
    pairs = [socket.socketpair() for _ in range(7)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)
    plain, joined, backlog, busy, closing, empty, full = (_session(a) for a, _ in pairs)
    backlog.buf += b"old"
    busy.writing = True
    closing.close()
    # a socket that takes only part of what it is given: its buffers filled first
    pairs[6][0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        while True:
            pairs[6][0].send(b"x" * 65536)
    except BlockingIOError:
        pass
    other = object()  # not a session of the delivery path: the caller's
    big = b"y" * 300_000
    items = [
        (plain, [b"one"]),
        (joined, [b"a", b"b", b"c"]),
        (backlog, [b"new"]),
        (busy, [b"wait"]),
        (closing, [b"late"]),
        (empty, [b""]),
        (full, [big]),
        (other, [b"?"]),
    ]
    rest: list = []
    short: list = []
    sent, nbytes = twins.send_pending(items, 0, 100, 5.0, *CLS, rest, short)
    assert (sent, nbytes) == (2, 6)
    assert pairs[0][1].recv(100) == b"one" and pairs[1][1].recv(100) == b"abc"
    assert (plain.sent, plain.last_out, joined.sent) == (3, 5.0, 3)
    assert [e[0] for e in rest] == [backlog, busy, closing, other]
    assert rest[0] is items[2]  # the entries themselves, untouched
    assert len(short) == 1 and short[0][0] is full and short[0][1] == big
    assert 0 <= short[0][2] < len(big)
    assert full.sent == 0 and empty.sent == 0
    # a slice of the list only
    rest2: list = []
    assert twins.send_pending(items, 1, 2, 6.0, *CLS, rest2, []) == (1, 3)
    assert pairs[1][1].recv(100) == b"abc" and joined.last_out == 6.0
    for a, b in pairs:
        a.close()
        b.close()


def test_send_pending_reports_a_failed_send(twins):
    a, b = socket.socketpair()
    a.setblocking(False)
    s = _session(a)
    b.close()
    short: list = []
    assert twins.send_pending([(s, [b"gone"])], 0, 1, 1.0, *CLS, [], short) == (0, 0)
    assert len(short) == 1 and short[0][2] < 0  # -errno (EPIPE / ECONNRESET)
    a.close()
