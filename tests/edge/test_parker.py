"""edge.parking.Parker on real sockets: one-shot registrations (a woken socket stays in the
epoll, disarmed; parking again arms it; a closed socket leaves by itself, so its fd number
can park again for the next connection)."""

from __future__ import annotations

import os
import socket

import trio
import trio.testing

from edge.parking import Parker


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


def _run(body) -> None:
    async def main() -> None:
        woken: trio.MemoryReceiveChannel[_Conn]
        send, woken = trio.open_memory_channel[_Conn](100)

        async def resume(conn: _Conn) -> None:
            await send.send(conn)

        async with trio.open_nursery() as nursery:
            parker = Parker(resume, nursery.start_soon, lambda conn: None)
            nursery.start_soon(parker.serve)
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(10):  # a wake that never comes fails, not hangs
                await body(parker, woken)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_woken_socket_parks_again_and_a_closed_fd_number_parks_anew():
    async def body(parker: Parker, woken) -> None:
        a, b = socket.socketpair()
        conn = _Conn(a)
        parker.park(conn)
        b.send(b"x")
        assert await woken.receive() is conn  # the event woke it (and disarmed the fd)
        assert len(parker) == 0
        assert a.recv(10) == b"x"
        parker.park(conn)  # still in the epoll: armed again, not added twice
        assert len(parker) == 1
        b.send(b"y")
        assert await woken.receive() is conn
        fd = a.fileno()
        a.close()  # leaves the epoll with the file
        b.close()
        c, d = socket.socketpair()
        if c.fileno() != fd:  # the new socket takes the closed one's number
            os.dup2(c.fileno(), fd)
            c.close()
            c = socket.socket(fileno=fd)
        assert c.fileno() == fd
        conn2 = _Conn(c)
        parker.park(conn2)
        d.send(b"z")
        assert await woken.receive() is conn2
        c.close()
        d.close()

    _run(body)


def test_a_wake_without_an_event_leaves_it_armed_and_parking_again_works():
    async def body(parker: Parker, woken) -> None:
        a, b = socket.socketpair()
        conn = _Conn(a)
        parker.park(conn)
        parker.wake(conn)  # a session's cancel(): no event, the fd stays armed
        assert await woken.receive() is conn
        b.send(b"x")  # an event while it is not parked: dropped (and disarms it)
        await trio.testing.wait_all_tasks_blocked()
        assert len(parker) == 0
        parker.park(conn)  # armed again; the byte is still unread: it wakes at once
        assert await woken.receive() is conn
        assert a.recv(10) == b"x"
        a.close()
        b.close()

    _run(body)
