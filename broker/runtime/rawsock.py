"""Plain non-blocking sockets under trio, for the paths where trio's socket wrappers cost more
than the work (the edge's client connections, ``edge.fastpath``; the broker's publish API,
``broker.ingest.httpapi``).

trio's socket methods take two scheduling rounds after every successful call (a checkpoint
before and after); a connection that is read once and answered once pays them on each of
accept, recv, send and close.  ``RawStream`` makes the one syscall when it can and waits with
``trio.lowlevel.wait_readable`` / ``wait_writable`` only when the socket would block.

``accept_forever`` is the one accept loop of both: every pending connection at each wake-up of
the listening socket, with plain non-blocking ``accept()`` calls.

``stdlib_socket`` is the only place that reaches into trio (its private ``_sock``);
``tests/edge/test_fastpath.py`` fails loudly if trio moves it (callers would otherwise quietly
take their slower fallbacks).
"""

from __future__ import annotations

import errno
import logging
import socket as stdsocket
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import trio

log = logging.getLogger(__name__)

ACCEPT_PAUSE_S = 0.1  # after EMFILE/ENFILE/ENOBUFS/ENOMEM: the accept is tried again then
# out of descriptors or memory: pause (the pending connections wait in the backlog)
ACCEPT_PAUSE = frozenset([errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
# that one connection failed (reset before it was accepted, refused by a firewall): the next
ACCEPT_SKIP = frozenset([errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR])


def stdlib_socket(sock: trio.socket.SocketType) -> stdsocket.socket | None:
    """The non-blocking stdlib socket a trio socket wraps, or None if this trio has none."""
    raw = getattr(sock, "_sock", None)
    return raw if isinstance(raw, stdsocket.socket) else None


def plain_accept(raw: Any) -> Callable[[], tuple[stdsocket.socket, Any]]:
    """``raw.accept``, for a stdlib socket without its Python wrapper's per-call work: the
    listener's family and type are read once, not converted to enums at every connection (~2 us
    of each accept).  The listener is non-blocking, so the wrapper's other step (making the new
    socket blocking under a default timeout) never applies.  Anything else: its ``accept``."""
    raw_accept = getattr(raw, "_accept", None)
    if type(raw) is not stdsocket.socket or raw_accept is None or raw.gettimeout() != 0.0:
        return raw.accept
    family, kind, proto = int(raw.family), int(raw.type), raw.proto
    new = stdsocket.socket

    def accept() -> tuple[stdsocket.socket, Any]:
        fd, addr = raw_accept()
        return new(family, kind, proto, fileno=fd), addr

    return accept


def accept_failed(exc: OSError, what: str) -> bool:
    """What an ``accept()`` error means (``what``: whose listener, for the log): True, that one
    connection failed, go on with the next; False, out of descriptors or memory (logged), pause
    ``ACCEPT_PAUSE_S`` before accepting again; anything else is raised."""
    if exc.errno in ACCEPT_SKIP:
        return True
    if exc.errno in ACCEPT_PAUSE:
        log.warning("%s: accept failed (%s): pausing %.1fs", what, exc.strerror, ACCEPT_PAUSE_S)
        return False
    raise exc


async def accept_forever(
    raw: stdsocket.socket,
    on_accept: Callable[[stdsocket.socket, Any], Awaitable[None] | None],
    *,
    batch: int,
    what: str,
) -> NoReturn:
    """Accept connections on the non-blocking listening socket ``raw`` forever: at each
    wake-up, up to ``batch`` plain ``accept()`` calls, each connection handed to
    ``on_accept(sock, addr)``: it spawns whatever serves it and returns None, or returns an
    awaitable that serves it here, before the next accept (it must not wait long: the
    listener waits behind it).  A connection that
    failed before it was accepted is skipped; running out of descriptors or memory is logged
    (``what``: whose listener) and the loop pauses ``ACCEPT_PAUSE_S`` instead of ending."""
    wait_readable = trio.lowlevel.wait_readable
    accept = plain_accept(raw)
    while True:
        await wait_readable(raw)
        for _ in range(batch):
            try:
                sock, addr = accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if accept_failed(exc, what):
                    continue
                await trio.sleep(ACCEPT_PAUSE_S)
                break
            inline = on_accept(sock, addr)
            if inline is not None:
                await inline


class RawStream:
    """A connected non-blocking stdlib socket with the stream methods a request handler uses
    (``receive_some``, ``send_all``, ``send_eof``, ``aclose``; ``close`` without a checkpoint).
    Errors are the socket's ``OSError``s (trio's streams raise ``BrokenResourceError``)."""

    __slots__ = ("sock", "pending")

    def __init__(self, sock: stdsocket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.pending = b""  # read ahead (``read_ahead``), returned by the next receive_some

    def read_ahead(self, max_bytes: int) -> bytes:
        """What the socket holds now, without waiting (b"" when nothing yet or at EOF), kept
        for the next ``receive_some`` to return."""
        try:
            self.pending = self.sock.recv(max_bytes)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass  # (the next receive_some raises it)
        return self.pending

    async def receive_some(self, max_bytes: int) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
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

    def abort(self) -> None:
        """Close from outside the task serving it: a wait on the socket ends with
        ``trio.ClosedResourceError``; a later read or write fails with ``OSError``."""
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def aclose(self) -> None:
        self.sock.close()
