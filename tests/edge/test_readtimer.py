"""edge.readtimer: coarse socket-wait timeouts (trio's MockClock, a socketpair, no sleeps).

Each test owns its ``OriginClient`` and runs its ``ReadTimer`` task in the test's nursery, as
``edge.server.serve`` runs the edge's in the edge's nursery."""

import socket

import pytest
import trio
import trio.testing

from broker.errors import LocalProtocolError
from edge import readtimer
from edge.origin.client import OriginClient, OriginError, OriginResponse
from edge.routes import Target


def _run(fn):
    client = OriginClient()

    async def main():
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.timer.serve)
                await trio.testing.wait_all_tasks_blocked()
                await fn(client)
                nursery.cancel_scope.cancel()
        finally:  # a response read to its end goes back to the client's pool: close it there
            client.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_expired_wait_is_woken_and_marked():
    async def main(client):
        a, b = trio.socket.socketpair()
        with a, b:
            w = client.timer.start(a, 2.0)
            t0 = trio.current_time()
            with pytest.raises(trio.ClosedResourceError):
                await trio.lowlevel.wait_readable(a)
            assert w.expired
            assert 2.0 <= trio.current_time() - t0 <= 2.0 + readtimer.TICK_S + 1e-6

    _run(main)


def test_done_wait_never_fires():
    async def main(client):
        a, b = trio.socket.socketpair()
        with a, b:
            w = client.timer.start(a, 1.0)
            w.done()
            await b.send(b"x")
            await trio.sleep(5)
            await trio.lowlevel.wait_readable(a)
            assert not w.expired
            assert client.timer.expire(trio.current_time()) == 0
            assert client.timer.pending() == 0

    _run(main)


def test_origin_read_times_out_as_origin_error():
    async def main(client):
        a, b = socket.socketpair()
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        with b:
            resp = OriginResponse(client, stream, Target("127.0.0.1", 1), 3.0, head_only=False)
            t0 = trio.current_time()
            with pytest.raises(OriginError, match="timeout waiting for origin"):
                await resp._read_head()
            assert 3.0 <= trio.current_time() - t0 <= 3.0 + readtimer.TICK_S + 1e-6
            assert resp._broken
            await resp.aclose()

    _run(main)


def test_origin_read_in_time_is_not_cut():
    async def main(client):
        a, b = socket.socketpair()
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        with b:
            resp = OriginResponse(client, stream, Target("127.0.0.1", 1), 3.0, head_only=False)

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
    async def main(client):
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


def test_start_before_serve_is_refused():
    """A wait registered with a timer whose task never ran could never time out."""
    timer = readtimer.ReadTimer()

    async def main():
        a, b = trio.socket.socketpair()
        with a, b:
            with pytest.raises(LocalProtocolError, match="serve"):
                timer.start(a, 1.0)

    trio.run(main)


def test_timer_task_failure_propagates_to_the_nursery_that_owns_it():
    """The timer task is the owner's (no system task): an error in it cancels the nursery it
    runs in and reaches that nursery's owner (a system task's error ended the whole process)."""
    timer = readtimer.ReadTimer()
    reached: list[str] = []

    async def main():
        a, b = trio.socket.socketpair()
        with a, b:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(timer.serve)
                await trio.testing.wait_all_tasks_blocked()
                w = timer.start(a, 1.0)
                w.deadline = None  # a broken wait: the timer's task fails comparing it
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:  # the nursery's other tasks are cancelled
                    reached.append("cancelled")
                    raise

    with pytest.raises(ExceptionGroup) as err:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    match, rest = err.value.split(TypeError)
    assert match is not None and rest is None, err.value
    assert reached == ["cancelled"]


def test_idle_timer_is_parked_and_a_new_wait_still_times_out():
    """With no wait started the timer's task sleeps without ticking (an idle edge is not woken
    for it); the first wait after a long idle time still times out within a tick."""

    async def main(client):
        timer = client.timer
        assert timer._idle is not None  # parked: no wait started
        await trio.sleep(100)
        assert timer._idle is not None
        a, b = trio.socket.socketpair()
        with a, b:
            w = timer.start(a, 1.5)
            t0 = trio.current_time()
            with pytest.raises(trio.ClosedResourceError):
                await trio.lowlevel.wait_readable(a)
            assert w.expired
            assert 1.5 <= trio.current_time() - t0 <= 1.5 + readtimer.TICK_S + 1e-6
        await trio.testing.wait_all_tasks_blocked()
        assert timer._idle is not None  # parked again

    _run(main)


def test_call_after_fires_once_coarsely_unless_done_first():
    """``call_after``: a deadline for a wait that is not on a socket (a position wait in a
    connection the opener runs): called between the timeout and a tick after it, once;
    ``done()`` before that cancels it."""

    async def main(client):
        fired: list[float] = []
        t0 = trio.current_time()
        w = client.timer.call_after(2.0, lambda: fired.append(trio.current_time() - t0))
        cancelled = client.timer.call_after(2.0, lambda: fired.append(-1.0))
        cancelled.done()
        await trio.sleep(2.0 + 2 * readtimer.TICK_S)
        assert len(fired) == 1 and 2.0 <= fired[0] <= 2.0 + readtimer.TICK_S
        assert w.expired and client.timer.pending() == 0

    _run(main)
