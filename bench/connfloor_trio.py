"""``bench/connfloor.c``'s trio twin: the same least proxy per new held stream, shaped as
gripcast's edge is (one trio task per new connection, the origin's answer awaited in it, the
held client parked in a plain ``select.epoll`` that one task watches), with nothing of
gripcast's own work.

``python -m bench connrate --target floor --floor trio`` runs it (``bench.connfloor``).  Beside
the plain-Python floor (``bench/connfloor_py.py``, no framework) it prices trio's part of a
connection: the task, the wait for the origin and its wake-up.  Not a server: a measuring tool.

usage: python -m bench.connfloor_trio LISTEN_PORT ORIGIN_PORT WORKERS
"""

from __future__ import annotations

import select
import socket
import sys
from functools import partial

import trio

from bench import connfloor_py
from bench.connfloor_py import BAD, answer


async def worker(port: int, origin_port: int) -> None:
    listener = connfloor_py.listening(port)
    held = select.epoll()
    parked: dict[int, socket.socket] = {}
    pool: list[socket.socket] = []  # idle origin connections

    async def origin() -> socket.socket:
        while pool:
            o = pool.pop()
            try:
                o.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return o  # idle and alive
            except OSError:
                pass
            o.close()
        o = socket.socket()
        o.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        o.setblocking(False)
        try:
            o.connect(("127.0.0.1", origin_port))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(o)
        return o

    async def serve(c: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            try:
                data = c.recv(4096)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(c)
                continue
            if not data:
                c.close()
                return
            request += data
        try:
            path = request.split(b"\r\n", 1)[0].split(b" ")[1]
        except IndexError:
            c.send(BAD)
            c.close()
            return
        o = await origin()
        o.send(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path)
        buf = b""
        while True:
            await trio.lowlevel.wait_readable(o)
            data = o.recv(4096)
            if not data:
                o.close()
                c.send(BAD)
                c.close()
                return
            buf += data
            _, out = answer(buf)
            if out is not None:
                break
        pool.append(o)
        c.send(out)
        if out is BAD:
            c.close()
            return
        parked[c.fileno()] = c
        held.register(c.fileno(), select.EPOLLIN)

    async def watch_held() -> None:
        while True:
            await trio.lowlevel.wait_readable(held.fileno())
            for fd, _ in held.poll(0):
                held.unregister(fd)
                parked.pop(fd).close()  # a held client only ever closes (or sends junk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_held)
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:
                try:
                    c, _addr = listener.accept()
                except BlockingIOError:
                    break
                c.setblocking(False)
                nursery.start_soon(serve, c)


def main(argv: list[str]) -> int:
    return connfloor_py.main(argv, partial(trio.run, worker), __doc__ or "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
