"""edge.origin.pool and keep-alive reuse in edge.origin.client (real sockets on 127.0.0.1, no
sleeps).  Each test builds its own ``OriginPool`` or ``OriginClient``: nothing is shared."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from edge.origin.client import OriginClient, open_origin
from edge.origin.pool import DEFAULT_IDLE_S, OriginPool
from edge.routes import parse_routes
from tests.helpers import skip_missing

pytestmark = pytest.mark.timeout(10)


def run_closing_the_pool(
    main: Callable[[OriginPool], Awaitable[None]], pool: OriginPool | None = None
) -> None:
    """trio.run(main(pool)), then close what is left in the pool (a connection left open is a
    ResourceWarning, an error in this suite)."""
    pool = OriginPool() if pool is None else pool

    async def wrapper():
        try:
            await main(pool)
        finally:
            pool.close()
            while _OPENED:
                _OPENED.pop().close()

    trio.run(wrapper)


def run_with_client(main: Callable[[OriginClient], Awaitable[None]]) -> None:
    """trio.run(main(client)) with a fresh ``OriginClient`` whose read timer runs in the
    test's nursery (as ``edge.server.serve`` runs it in the edge's)."""
    client = OriginClient()

    async def with_timer(pool: OriginPool) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.timer.serve)
            await trio.testing.wait_all_tasks_blocked()
            await main(client)
            nursery.cancel_scope.cancel()

    run_closing_the_pool(with_timer, client.pool)


_OPENED: list = []  # both ends of every pair, closed by run_closing_the_pool


def _pair():
    a, b = trio.socket.socketpair()
    _OPENED.extend((a, b))
    return trio.SocketStream(a), b


def test_take_give_reuse_and_lifetime():
    async def main(pool: OriginPool):
        stream, peer = _pair()
        assert pool.take(("h", 1), 0.0) is None
        pool.give(("h", 1), stream, 0.0)
        assert pool.idle_count() == 1
        assert pool.take(("h", 1), 1.0) is stream  # live: reused
        pool.give(("h", 1), stream, 1.0)
        assert pool.take(("h", 1), 1.0 + DEFAULT_IDLE_S + 1) is None  # too old
        assert pool.idle_count() == 0
        peer.close()

    run_closing_the_pool(main)


def test_closed_or_chatty_idle_connection_is_dropped():
    async def main(pool: OriginPool):
        s1, p1 = _pair()
        s2, p2 = _pair()
        pool.give(("h", 2), s1, 0.0)
        pool.give(("h", 2), s2, 0.0)
        p2.close()  # EOF waiting on s2 (the most recent: tried first)
        await p1.send(b"x")  # stray bytes on an idle connection: not reusable either
        assert pool.take(("h", 2), 0.5) is None
        assert pool.idle_count() == 0
        p1.close()

    run_closing_the_pool(main)


def test_idle_connection_closed_on_our_side_is_dropped():
    async def main(pool: OriginPool):
        s, p = _pair()
        pool.give(("h", 4), s, 0.0)
        s.socket.close()  # (its descriptor is gone: -1, never polled)
        assert pool.take(("h", 4), 0.5) is None
        assert pool.idle_count() == 0
        p.close()

    run_closing_the_pool(main)


def test_sweep_and_disable():
    async def main(pool: OriginPool):
        s, p = _pair()
        pool.give(("h", 3), s, 0.0)
        assert pool.sweep(1.0) == 0
        assert pool.sweep(DEFAULT_IDLE_S + 2) == 1
        pool.set_idle_s(0)  # SIGHUP with origin_keepalive_idle_s = 0
        assert not pool.keep_alive and pool.statistics().idle_s == 0
        s2, p2 = _pair()
        pool.give(("h", 3), s2, 0.0)  # pooling off: closed at once
        assert pool.idle_count() == 0
        pool.set_idle_s(5)  # back on, with a shorter lifetime
        s3, p3 = _pair()
        pool.give(("h", 3), s3, 0.0)
        assert pool.statistics() == type(pool.statistics())(idle_s=5.0, targets=1, idle=1)
        assert pool.take(("h", 3), 6.0) is None  # older than the new lifetime
        p.close()
        p2.close()
        p3.close()

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
    async def main(client: OriginClient):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        route = parse_routes([f"* 127.0.0.1:{port}"]).routes[0]
        accepted: list = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_origin, listeners[0], accepted, close_after)
            for _ in range(3):
                resp = await open_origin(
                    client, route, b"GET", b"/x", [(b"Host", b"h")], b"", sig=None, timeout_s=5
                )
                assert resp.status == 200 and await resp.read_body(100) == b"abc"
                await resp.aclose()
                if close_after:  # let the origin's close arrive (it is not retried otherwise)
                    await trio.testing.wait_all_tasks_blocked()
            # keep-alive: one connection for all three; origin closing each: a new one each
            assert len(accepted) == (3 if close_after else 1)
            assert client.pool.idle_count() == 1  # parked in this client's pool (closed or not)
            nursery.cancel_scope.cancel()

    run_with_client(main)


def test_request_on_a_pooled_connection_closed_under_it_is_retried_fresh():
    async def main(client: OriginClient):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        route = parse_routes([f"* 127.0.0.1:{port}"]).routes[0]
        accepted: list = []
        stale, peer = _pair()
        client.pool.give(("127.0.0.1", port), stale, trio.current_time())

        async def close_on_request():
            await peer.recv(4096)  # the request arrives, the "origin" closes unanswered
            peer.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_origin, listeners[0], accepted, None)
            nursery.start_soon(close_on_request)
            resp = await open_origin(
                client, route, b"GET", b"/x", [(b"Host", b"h")], b"", sig=None, timeout_s=5
            )
            assert resp.status == 200 and await resp.read_body(100) == b"abc"
            assert len(accepted) == 1  # the retry went to the real origin
            nursery.cancel_scope.cancel()

    run_with_client(main)


def test_live_connection_on_a_descriptor_above_1023_is_reused():
    """select() cannot take fd >= 1024: a busy edge's pooled connections have such fds."""
    import resource
    import socket as stdsocket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:  # raise our own soft limit when the hard one allows
        if hard != resource.RLIM_INFINITY and hard < 1200:
            skip_missing(f"RLIMIT_NOFILE >= 1200 (the hard limit is {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))

    async def main(pool: OriginPool):
        filler = [stdsocket.socket() for _ in range(1100)]
        try:
            stream, peer = _pair()
            assert stream.socket.fileno() >= 1024
            pool.give(("big", 1), stream, 0.0)
            assert pool.take(("big", 1), 1.0) is stream  # live: reused, not dropped
            pool.give(("big", 1), stream, 1.0)
            await peer.send(b"stray")
            assert pool.take(("big", 1), 1.0) is None  # bytes nobody asked for: dropped
            peer.close()
        finally:
            for s in filler:
                s.close()

    run_closing_the_pool(main)


def test_two_origin_clients_share_no_state():
    """Two edges in one process (or two tests) each own their pool, timer and name memo."""
    a, b = OriginClient(), OriginClient(idle_s=0)
    assert a.pool is not b.pool and a.timer is not b.timer and a._tokens is not b._tokens
    assert a.pool.keep_alive and not b.pool.keep_alive  # settings are per client

    route = parse_routes(["* o:80"]).routes[0]
    raw_a = a.build_request(
        route, route.targets[0], b"GET", b"/", [(b"X-Only-A", b"1")], b"", sig=None
    )
    raw_b = b.build_request(route, route.targets[0], b"GET", b"/", [], b"", sig=None)
    assert b"Connection: close" not in raw_a and b"Connection: close" in raw_b
    assert b"X-Only-A" in a._tokens and b"X-Only-A" not in b._tokens

    async def main(pool: OriginPool):
        stream, peer = _pair()
        a.pool.give(("h", 1), stream, 0.0)
        assert a.pool.idle_count() == 1 and b.pool.idle_count() == 0
        assert b.pool.take(("h", 1), 0.0) is None  # never another client's connection
        assert a.pool.take(("h", 1), 0.0) is stream
        a.pool.give(("h", 1), stream, 0.0)
        b.pool.set_idle_s(1)  # a reload of one edge changes that edge only
        assert a.pool.idle_s == DEFAULT_IDLE_S
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.timer.serve)
            await trio.testing.wait_all_tasks_blocked()
            w = a.timer.start(stream.socket, 60.0)
            assert a.timer.pending() == 1 and b.timer.pending() == 0
            w.done()
            nursery.cancel_scope.cancel()
        a.close()
        peer.close()

    run_closing_the_pool(main)
