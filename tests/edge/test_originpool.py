"""edge.originpool and keep-alive reuse in edge.origin (real sockets on 127.0.0.1, no sleeps)."""
from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from edge.origin import pool as originpool
from edge.origin.client import open_origin
from edge.routes import parse_routes
from tests.helpers import skip_missing

pytestmark = pytest.mark.timeout(10)


def run_closing_the_pool(main) -> None:
    """trio.run(main), then close what is left in the run's pool (a connection left open is a
    ResourceWarning, an error in this suite)."""
    async def wrapper():
        try:
            await main()
        finally:
            originpool.sweep(math.inf)
            while _OPENED:
                _OPENED.pop().close()

    trio.run(wrapper)


_OPENED: list = []  # both ends of every pair, closed by run_closing_the_pool


def _pair():
    a, b = trio.socket.socketpair()
    _OPENED.extend((a, b))
    return trio.SocketStream(a), b


def test_take_give_reuse_and_lifetime():
    async def main():
        stream, peer = _pair()
        assert originpool.take(("h", 1), 0.0) is None
        originpool.give(("h", 1), stream, 0.0)
        assert originpool.idle_count() == 1
        assert originpool.take(("h", 1), 1.0) is stream  # live: reused
        originpool.give(("h", 1), stream, 1.0)
        assert originpool.take(("h", 1), 1.0 + originpool.DEFAULT_IDLE_S + 1) is None  # too old
        assert originpool.idle_count() == 0
        peer.close()

    run_closing_the_pool(main)


def test_closed_or_chatty_idle_connection_is_dropped():
    async def main():
        s1, p1 = _pair()
        s2, p2 = _pair()
        originpool.give(("h", 2), s1, 0.0)
        originpool.give(("h", 2), s2, 0.0)
        p2.close()  # EOF waiting on s2 (the most recent: tried first)
        await p1.send(b"x")  # stray bytes on an idle connection: not reusable either
        assert originpool.take(("h", 2), 0.5) is None
        assert originpool.idle_count() == 0
        p1.close()

    run_closing_the_pool(main)


def test_sweep_and_disable():
    async def main():
        s, p = _pair()
        originpool.give(("h", 3), s, 0.0)
        assert originpool.sweep(1.0) == 0
        assert originpool.sweep(originpool.DEFAULT_IDLE_S + 2) == 1
        originpool.configure(0)
        try:
            s2, p2 = _pair()
            originpool.give(("h", 3), s2, 0.0)  # pooling off: closed at once
            assert originpool.idle_count() == 0
        finally:
            originpool.configure(originpool.DEFAULT_IDLE_S)
        p.close()
        p2.close()

    run_closing_the_pool(main)


async def _origin(listener, accepted: list, close_after: int | None = None):
    """A tiny keep-alive origin: answers every request with a 3-byte body; counts connections;
    optionally closes each connection after ``close_after`` responses."""
    async def serve(stream):
        accepted.append(stream)
        buf, n = b"", 0
        async with stream:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
                    n += 1
                    if close_after is not None and n >= close_after:
                        return

    await trio.serve_listeners(serve, [listener])


@pytest.mark.parametrize("close_after", [None, 1])
def test_open_origin_reuses_and_retries_a_closed_connection(close_after):
    async def main():
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        route = parse_routes([f"* 127.0.0.1:{port}"]).routes[0]
        accepted: list = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_origin, listeners[0], accepted, close_after)
            for _ in range(3):
                resp = await open_origin(route, b"GET", b"/x", [(b"Host", b"h")], b"",
                                         sig=None, timeout_s=5)
                assert resp.status == 200 and await resp.read_body(100) == b"abc"
                await resp.aclose()
                if close_after:  # let the origin's close arrive (it is not retried otherwise)
                    await trio.testing.wait_all_tasks_blocked()
            # keep-alive: one connection for all three; origin closing each: a new one each
            assert len(accepted) == (3 if close_after else 1)
            nursery.cancel_scope.cancel()

    run_closing_the_pool(main)


def test_request_on_a_pooled_connection_closed_under_it_is_retried_fresh():
    async def main():
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        route = parse_routes([f"* 127.0.0.1:{port}"]).routes[0]
        accepted: list = []
        stale, peer = _pair()
        originpool.give(("127.0.0.1", port), stale, trio.current_time())

        async def close_on_request():
            await peer.recv(4096)  # the request arrives, the "origin" closes unanswered
            peer.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_origin, listeners[0], accepted, None)
            nursery.start_soon(close_on_request)
            resp = await open_origin(route, b"GET", b"/x", [(b"Host", b"h")], b"",
                                     sig=None, timeout_s=5)
            assert resp.status == 200 and await resp.read_body(100) == b"abc"
            assert len(accepted) == 1  # the retry went to the real origin
            nursery.cancel_scope.cancel()

    run_closing_the_pool(main)


def test_live_connection_on_a_descriptor_above_1023_is_reused():
    """select() cannot take fd >= 1024: a busy edge's pooled connections have such fds."""
    import resource
    import socket as stdsocket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:  # raise our own soft limit when the hard one allows
        if hard != resource.RLIM_INFINITY and hard < 1200:
            skip_missing(f"RLIMIT_NOFILE >= 1200 (the hard limit is {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))

    async def main():
        filler = [stdsocket.socket() for _ in range(1100)]
        try:
            stream, peer = _pair()
            assert stream.socket.fileno() >= 1024
            originpool.give(("big", 1), stream, 0.0)
            assert originpool.take(("big", 1), 1.0) is stream  # live: reused, not dropped
            originpool.give(("big", 1), stream, 1.0)
            await peer.send(b"stray")
            assert originpool.take(("big", 1), 1.0) is None  # bytes nobody asked for: dropped
            peer.close()
        finally:
            for s in filler:
                s.close()
    run_closing_the_pool(main)
