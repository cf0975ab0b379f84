"""``bench/connfloor.c``'s Python twin: the same least proxy per new held stream, in plain
Python (one ``select.epoll`` loop per forked worker, stdlib sockets, no framework).

``python -m bench connrate --target floor --floor python`` runs it (``bench.connfloor``).  Its
CPU per connection beside the C floor's and gripcast's says how much of gripcast's cost is the
interpreter itself and how much is the work gripcast does on top (routing, header rules,
Grip-Sig, GRIP parsing, sessions, trio).  Not a server: a measuring tool.

usage: python -m bench.connfloor_py LISTEN_PORT ORIGIN_PORT WORKERS
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
from collections.abc import Callable

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
    b"Connection: Transfer-Encoding\r\n\r\n"
)
BAD = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"


def answer(buf: bytes) -> tuple[int, bytes | None]:
    """An origin answer in ``buf``: (bytes it takes, the client's bytes), (0, None) while it is
    not all in; the client's bytes are a stream head and first chunk when the origin holds a
    stream, else a 502."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0, None
    head = buf[:end].lower()
    i = head.find(b"\r\ncontent-length:")
    n = int(head[i + 17 :].split(b"\r\n", 1)[0]) if i >= 0 else 0
    if len(buf) < end + 4 + n:
        return 0, None
    if b"\r\ngrip-hold: stream" not in head:
        return end + 4 + n, BAD
    return end + 4 + n, HEAD + b"%x\r\n%s\r\n" % (n, buf[end + 4 : end + 4 + n])


def recv(sock: socket.socket) -> bytes | None:
    """What the socket has: ``b""`` at its end (or an error), None when nothing yet."""
    try:
        return sock.recv(4096)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def listening(port: int) -> socket.socket:
    """A worker's non-blocking listener on 127.0.0.1:``port``, shared with the other workers
    (``SO_REUSEPORT``, as gripcast's edges); accepted sockets inherit ``TCP_NODELAY``."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    return listener


def worker(port: int, origin_port: int) -> None:
    listener = listening(port)
    ep = select.epoll()
    lfd = listener.fileno()
    ep.register(lfd, select.EPOLLIN)
    clients: dict[int, list] = {}  # fd -> [socket, request bytes, held]
    origins: dict[int, list] = {}  # fd -> [socket, answer bytes, client fd or None]
    pool: list[int] = []  # idle origin connections

    def close_client(fd: int) -> None:
        ep.unregister(fd)
        clients.pop(fd)[0].close()
        for o in origins.values():  # an answer on its way goes nowhere
            if o[2] == fd:
                o[2] = None

    def forward(cfd: int) -> None:
        c = clients[cfd]
        try:
            path = c[1].split(b"\r\n", 1)[0].split(b" ")[1]
        except IndexError:
            c[0].send(BAD)
            close_client(cfd)
            return
        if pool:
            ofd = pool.pop()
        else:
            o = socket.create_connection(("127.0.0.1", origin_port))
            o.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            o.setblocking(False)
            ofd = o.fileno()
            origins[ofd] = [o, b"", None]
            ep.register(ofd, select.EPOLLIN)
        origins[ofd][2] = cfd
        origins[ofd][0].send(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path)

    while True:
        for fd, _ in ep.poll():
            if fd == lfd:
                while True:
                    try:
                        s, _addr = listener.accept()
                    except BlockingIOError:
                        break
                    s.setblocking(False)
                    clients[s.fileno()] = [s, b"", False]
                    ep.register(s.fileno(), select.EPOLLIN)
            elif fd in clients:
                c = clients[fd]
                data = recv(c[0])
                if data is None:
                    continue
                if not data:
                    close_client(fd)
                elif not c[2]:
                    c[1] += data
                    if b"\r\n\r\n" in c[1]:
                        c[2] = True  # answered or held from here on: later bytes are dropped
                        forward(fd)
            elif fd in origins:
                o = origins[fd]
                data = recv(o[0])
                if data is None:
                    continue
                if not data:
                    ep.unregister(fd)
                    if fd in pool:
                        pool.remove(fd)
                    origins.pop(fd)[0].close()
                    continue
                o[1] += data
                used, out = answer(o[1])
                if out is None:
                    continue
                o[1] = o[1][used:]
                cfd, o[2] = o[2], None
                pool.append(fd)
                if cfd is not None and cfd in clients:
                    clients[cfd][0].send(out)
                    if out is BAD:
                        close_client(cfd)


def main(
    argv: list[str],
    run: Callable[[int, int], object] = worker,
    usage: str = __doc__ or "",
) -> int:
    """``LISTEN_PORT ORIGIN_PORT WORKERS``: fork the workers (``run(port, origin_port)`` in
    each), wait for them, and kill them on SIGTERM (``bench.connfloor_trio`` runs its own)."""
    if len(argv) != 3:
        print(usage.rsplit("usage: ", 1)[1], file=sys.stderr)
        return 2
    port, origin_port, workers = (int(a) for a in argv)
    kids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                run(port, origin_port)
            finally:
                os._exit(1)  # a worker only ends by an error
        kids.append(pid)

    def stop(*_: object) -> None:
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    for k in kids:
        try:
            os.waitpid(k, 0)
        except ChildProcessError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
