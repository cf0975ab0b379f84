"""Hostile-input rules of the client request parser (no sockets, time passed in)."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from broker.config import Config
from edge import readtimer
from edge.http1.connection import KEEPALIVE_IDLE_S, Connection


class App:
    cfg = Config(client_header_bytes=1024, client_body_bytes=100, client_head_timeout_s=5.0)


def conn() -> Connection:
    return Connection(App(), sock=None, addr=None)


def test_head_deadlines():
    c = conn()
    assert c.read_deadline(100.0) == 105.0  # a fresh connection: first head within 5 s
    assert c.read_deadline(103.0) == 105.0  # ... counted from when it opened
    c.now = 104.0
    c.feed(b"GET / HTTP/1.1\r\nHo")
    assert c.read_deadline(104.5) == 109.0  # a begun head: 5 s from its first byte
    c.now = 105.0
    c.feed(b"st: h\r\nContent-Length: 10\r\n\r\nab")
    # a body has client_body_timeout_s from the end of its head, however it trickles in
    assert c.read_deadline(106.0) == 105.0 + App.cfg.client_body_timeout_s
    c.now = 130.0
    c.feed(b"c")
    assert c.read_deadline(130.0) == 105.0 + App.cfg.client_body_timeout_s
    c.feed(b"defghij")
    assert len(c.queue) == 1
    c.cur, c.fresh, c.idle_since = None, False, 200.0  # answered: an idle keep-alive
    assert c.read_deadline(250.0) == 200.0 + KEEPALIVE_IDLE_S


@pytest.mark.parametrize(
    "data, status",
    [
        (b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n", 405),
        (b"GET evil:443 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET ftp://evil/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),  # refused before the body
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n"
            + b"a" * 101
            + b"\r\n0\r\n\r\n",
            413,
        ),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            400,
        ),  # llhttp: strict
    ],
)
def test_rejections(data, status):
    c = conn()
    c.feed(data)
    assert c.reject is not None and c.reject.status == status, c.reject
    assert c.queue == []


@pytest.mark.parametrize(
    "data",
    [
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http://example.com/x HTTP/1.1\r\nHost: other\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"a" * 100,
    ],
)
def test_accepted(data):
    c = conn()
    c.feed(data)
    assert c.reject is None and len(c.queue) == 1


def test_slow_body_gets_408_at_its_total_deadline():
    """A body dribbled one byte per 5 s never resets the deadline (it did: now + limit)."""

    async def main():
        a, b = trio.socket.socketpair()
        c = Connection(App(), sock=a, addr=None)
        await b.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")
        start = trio.current_time()

        async def dribble():
            for _ in range(100):
                await trio.sleep(4.0)
                await b.send(b"x")

        async with trio.open_nursery() as n:
            n.start_soon(dribble)
            assert await c.next_request() is None
            n.cancel_scope.cancel()
        assert c.reject is not None and c.reject.status == 408
        assert trio.current_time() - start <= App.cfg.client_body_timeout_s + 5.0
        a.close()
        b.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_write_to_a_client_that_stops_reading_times_out():
    async def main():
        a, b = trio.socket.socketpair()
        c = Connection(App(), sock=a, addr=None)
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError):
            await c.send_all(b"x" * (16 << 20))  # b never reads
        assert trio.current_time() - start == pytest.approx(App.cfg.client_write_timeout_s)
        a.close()
        b.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("waker", [False, True])
def test_held_connection_buffers_one_pipelined_head_then_stops_reading(waker):
    class Big:
        cfg = Config(client_header_bytes=1024, client_body_bytes=64 << 20)

    async def main():
        ra, b = socket.socketpair()
        a = trio.socket.from_stdlib_socket(ra)
        c = Connection(Big(), sock=a, addr=None)
        b.setblocking(False)
        pending = (
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 8000000\r\n\r\n" + b"x" * 8_000_000
        )
        returned = []

        async def watch():
            await c.watch_client(readtimer.Waker(a) if waker else None)
            returned.append(True)

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            sent = 0
            while sent < len(pending):  # push until the kernel buffers are full
                try:
                    sent += b.send(pending[sent : sent + 65536])
                except BlockingIOError:
                    await trio.testing.wait_all_tasks_blocked()
                    try:
                        sent += b.send(pending[sent : sent + 65536])
                    except BlockingIOError:
                        break
                await trio.testing.wait_all_tasks_blocked()
            assert sent < len(pending)  # the edge stopped reading
            assert len(c.queue) + (c.cur is not None) <= 2
            buffered = sum(len(r.body) for r in c.queue) + (len(c.cur.body) if c.cur else 0)
            assert buffered <= 65536
            # no stream deadline to wait for (a waker): the client is let go; else the
            # hold goes on without reading until its own scope ends
            assert returned == ([True] if waker else [])
            n.cancel_scope.cancel()
        a.close()
        b.close()

    trio.run(main)
