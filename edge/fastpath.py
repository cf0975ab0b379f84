"""The per-connection fast path of an edge: what a new held connection costs, cut down.

Measured under ``python -m bench fanout --transport sse --clients 10000`` (bench/RESULTS.md):
an edge spent ~450 us of CPU per new held connection, 80% of it in user space, and the profile
(perf + py-spy) put it in the garbage collector (~15%), trio's per-call machinery (a scheduler
round trip after every successful ``send``/``recv``/``accept``, a cancel scope per wait) and
Python-level header work.  The helpers here remove what a connection does not need:

* ``tune_gc()``: freeze the start-up heap (modules, config, routes) out of the collector and
  raise the young-generation threshold; held connections are long-lived objects, and with
  the default threshold (700) every few connections triggered a collection that walked them.
* ``accept_loop()``: one wakeup of the listening socket accepts every pending connection
  (up to ``ACCEPT_BATCH``) with plain non-blocking ``accept()`` calls instead of one trio
  ``accept`` (two checkpoints) each; ``TCP_NODELAY`` is set once on the listener (Linux copies
  it to accepted sockets); transient accept errors (out of file descriptors) are logged and
  retried after a short pause instead of ending the accept loop.
* ``send_now()``: one non-blocking ``send()`` on the socket's fd; the caller falls back to
  trio's send only for what did not fit (so a small response head costs one syscall and no
  task switch).
* ``read_now()``: one non-blocking read; ``None`` when nothing is there yet.
* ``stdlib_socket()``: the stdlib socket inside a trio socket (trio's private ``_sock``; it
  lives in ``broker.runtime.rawsock``, shared with the broker's publish API): the only place
  gripcast reaches into trio; ``tests/edge/test_fastpath.py`` fails loudly if trio moves it
  (the callers would otherwise quietly take their slower fallbacks).
"""

from __future__ import annotations

import logging
import os
import socket as stdsocket
from collections.abc import Callable

import trio

from broker.runtime import gctune
from broker.runtime.rawsock import accept_forever, stdlib_socket

log = logging.getLogger(__name__)

# young collections every 20,000 net allocations instead of 700 (about 70 connections' worth);
# a held connection's objects are promoted out of the young generation on its first collection
GC_THRESHOLD = (20_000, 20, 20)
ACCEPT_BATCH = 256

# a client's address as accept() gives it: (host, port) for IPv4, 4 items for IPv6
PeerAddress = tuple[str, int] | tuple[str, int, int, int]


def tune_gc(threshold: tuple[int, int, int] = GC_THRESHOLD) -> None:
    """Call once after start-up (before serving): freeze what exists, raise the thresholds
    (``broker.runtime.gctune``, the broker's too)."""
    gctune.tune_gc(threshold)


def set_listener_options(sock: trio.socket.SocketType) -> None:
    """Options accepted sockets inherit on Linux (``TCP_NODELAY``): set once, not per accept."""
    try:
        sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
    except OSError:
        pass


async def accept_loop(
    listener: trio.socket.SocketType,
    on_accept: Callable[[trio.socket.SocketType, PeerAddress], None],
    batch: int = ACCEPT_BATCH,
) -> None:
    """Accept connections on ``listener`` (a trio socket) forever; ``on_accept(sock, addr)``
    (synchronous: it spawns whatever serves the connection) gets each as a trio socket."""
    raw = stdlib_socket(listener)
    if raw is None:  # pragma: no cover - another trio
        while True:
            sock, addr = await listener.accept()
            on_accept(sock, addr)
    from_stdlib = trio.socket.from_stdlib_socket

    def accepted(sock: stdsocket.socket, addr: PeerAddress) -> None:
        on_accept(from_stdlib(sock), addr)

    await accept_forever(raw, accepted, batch=batch, what="edge")


def send_now(sock: trio.socket.SocketType, data: bytes | bytearray | memoryview) -> int:
    """Write what the socket takes right now (one non-blocking ``send``); bytes written.

    ``OSError`` (reset, broken pipe) propagates as from trio's ``send``."""
    try:
        return os.write(sock.fileno(), data)
    except (BlockingIOError, InterruptedError):
        return 0


def read_now(sock: trio.socket.SocketType, size: int) -> bytes | None:
    """One non-blocking read: the bytes (``b""`` at EOF), or None when nothing is there yet."""
    try:
        return os.read(sock.fileno(), size)
    except (BlockingIOError, InterruptedError):
        return None
