"""edge.readtimer: coarse socket-wait timeouts (trio's MockClock, a socketpair, no sleeps)."""
import math
import socket

import pytest
import trio
import trio.testing

from edge import readtimer
from edge.origin import pool as originpool
from edge.origin.client import OriginError, OriginResponse
from edge.routes import Target


def _run(fn):
    async def main():
        try:
            await fn()
        finally:  # a response read to its end goes back to the run's pool: close it there
            originpool.sweep(math.inf)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_expired_wait_is_woken_and_marked():
    async def main():
        a, b = trio.socket.socketpair()
        with a, b:
            w = readtimer.start(a, 2.0)
            t0 = trio.current_time()
            with pytest.raises(trio.ClosedResourceError):
                await trio.lowlevel.wait_readable(a)
            assert w.expired
            assert 2.0 <= trio.current_time() - t0 <= 2.0 + readtimer.TICK_S + 1e-6
    _run(main)


def test_done_wait_never_fires():
    async def main():
        a, b = trio.socket.socketpair()
        with a, b:
            w = readtimer.start(a, 1.0)
            w.done()
            await b.send(b"x")
            await trio.sleep(5)
            await trio.lowlevel.wait_readable(a)
            assert not w.expired
            assert readtimer.expire(readtimer._state.get(), trio.current_time()) == 0
    _run(main)


def test_origin_read_times_out_as_origin_error():
    async def main():
        a, b = socket.socketpair()
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        with b:
            resp = OriginResponse(stream, Target("127.0.0.1", 1), 3.0, head_only=False)
            t0 = trio.current_time()
            with pytest.raises(OriginError, match="timeout waiting for origin"):
                await resp._read_head()
            assert 3.0 <= trio.current_time() - t0 <= 3.0 + readtimer.TICK_S + 1e-6
            assert resp._broken
            await resp.aclose()
    _run(main)


def test_origin_read_in_time_is_not_cut():
    async def main():
        a, b = socket.socketpair()
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        with b:
            resp = OriginResponse(stream, Target("127.0.0.1", 1), 3.0, head_only=False)

            async def answer():
                await trio.sleep(2.9)
                b.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            async with trio.open_nursery() as n:
                n.start_soon(answer)
                await resp._read_head()
            assert resp.status == 200
            await trio.sleep(10)  # the expired registration must not touch the socket later
            assert await resp.read_body(100) == b"ok"
            await resp.aclose()
    _run(main)


def test_waker_ends_a_wait_on_the_socket_and_fires_once():
    async def main():
        a, b = trio.socket.socketpair()
        with a, b:
            waker = readtimer.Waker(a)

            async def fire():
                await trio.sleep(1)
                waker.cancel()
                waker.cancel()  # a second cancel is a no-op
            async with trio.open_nursery() as n:
                n.start_soon(fire)
                with pytest.raises(trio.ClosedResourceError):
                    await trio.lowlevel.wait_readable(a)
            assert waker.fired
            await b.send(b"x")  # the socket itself is still usable
            await trio.lowlevel.wait_readable(a)
            assert await a.recv(1) == b"x"
    _run(main)
