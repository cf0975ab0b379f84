"""Plain non-blocking sockets under trio, for the paths where trio's socket wrappers cost more
than the work (the edge's client connections, ``edge.fastpath``; the broker's publish API,
``broker.ingest.httpapi``).

trio's socket methods take two scheduling rounds after every successful call (a checkpoint
before and after); a connection that is read once and answered once pays them on each of
accept, recv, send and close.  ``RawStream`` makes the one syscall when it can and waits with
``trio.lowlevel.wait_readable`` / ``wait_writable`` only when the socket would block.

``stdlib_socket`` is the only place that reaches into trio (its private ``_sock``);
``tests/edge/test_fastpath.py`` fails loudly if trio moves it (callers would otherwise quietly
take their slower fallbacks).
"""

from __future__ import annotations

import socket as stdsocket

import trio


def stdlib_socket(sock: trio.socket.SocketType) -> stdsocket.socket | None:
    """The non-blocking stdlib socket a trio socket wraps, or None if this trio has none."""
    raw = getattr(sock, "_sock", None)
    return raw if isinstance(raw, stdsocket.socket) else None


class RawStream:
    """A connected non-blocking stdlib socket with the stream methods a request handler uses
    (``receive_some``, ``send_all``, ``send_eof``, ``aclose``; ``close`` without a checkpoint).
    Errors are the socket's ``OSError``s (trio's streams raise ``BrokenResourceError``)."""

    __slots__ = ("sock",)

    def __init__(self, sock: stdsocket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    async def receive_some(self, max_bytes: int) -> bytes:
        sock = self.sock
        while True:
            try:
                return sock.recv(max_bytes)
            except (BlockingIOError, InterruptedError):
                await trio.lowlevel.wait_readable(sock)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.sock
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view) :]
            except (BlockingIOError, InterruptedError):
                await trio.lowlevel.wait_writable(sock)

    async def send_eof(self) -> None:
        self.sock.shutdown(stdsocket.SHUT_WR)

    def close(self) -> None:
        """Close now (only the one task serving the connection ever waits on it)."""
        self.sock.close()

    async def aclose(self) -> None:
        self.sock.close()
