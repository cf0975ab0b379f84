"""Held connections with no task: parked sockets watched by one edge-wide task.

Theory of operation
-------------------
An idle held HTTP stream does nothing for hours: the delivery path writes to its fd directly
(``edge.sync.deliver``), keep-alives come from the edge's timer wheel, and its connection task
only waits for the client to send something or leave.  That waiting task cost more than half of
what a held connection kept (bench/RESULTS.md, "Memory per connection, fourth round"): the trio
``Task`` and its ``Context``, the coroutine frames of ``_serve_connection``,
``Connection.serve``, ``hold_stream`` and ``watch_client``, and trio's ``wait_readable`` chain
(four more coroutines, the abort closure, ``EpollWaiters``).

So a stream hold that has nothing to wait for but its client *parks*: its task
returns, leaving the hold's state on the connection (``Connection.held``: the request, the
route, the ``_Stream`` and the next-link chain count), and its socket is registered, for input
and hang-up, with this module's own ``epoll``, which one task (``Parker.serve``) waits on.  The
connection is woken (``wake``: a new connection task resumes the hold where it parked, and
from there the rest of the connection, as before) when

* its socket becomes readable: the client sent bytes or closed (``EPOLLIN``/``EPOLLRDHUP``/
  ``EPOLLHUP``): the resumed hold reads, as ``watch_client`` did, and ends or parks again;
* its session asks for it (``StreamSession.scope.cancel()``: a published close was flushed, the
  session was killed, a hint or a prev-id gap): the ``scope`` of a parked session is its
  ``HeldStream``, whose ``cancel()`` is ``wake``.

Nothing else changes for the connection: it stays counted in ``Edge.connections`` and
``Edge.sockets`` (the drain shuts its read side, which wakes it), its stats record stays, its
session stays on the hub.  Holds with a deadline (a next link's idle window, the first
subscription's update) keep their task (their waits are not only on the socket).  A TLS
client's stream parks too: woken, its records are read through its ``TlsConn`` (and the TLS
connection gauge counts it until it closes); so do wss WebSockets.
When the edge's nursery is cancelled (the process stops), ``serve`` closes the sockets still
parked and accounts them as closed (``on_abandon``).

Idle WebSockets park the same way (``edge.ws.session``: a WebSocket-over-HTTP origin, the
common case; ws or wss).  An open session has two things to wait for:
the client (input, close) and its origin side's request loop (``WohOrigin.serve``), which runs
only while a request is due.  When that loop is not running and the client has sent nothing,
the session parks (``Connection.wsheld``, an ``edge.ws.session.ParkedWs``: the session's
``scope`` and ``read_scope`` while parked).  It is woken by client bytes or a hang-up, by its
origin side's ``kick`` (a ``refresh``, a published close, an event for the origin, the origin's
``Keep-Alive-Interval`` through the edge's ``WsTimers``), by a kill, or once our close frame is
written (``finish``: the client's reply is then awaited with its deadline, in the task).
Publishes, ``keep-alive``/``send-delayed`` messages and shutdown closes go out from the
delivery path and the timer task, as before, without waking it.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from edge.http1.connection import Connection

# one-shot: an event disarms the fd, so a woken connection is not taken out of the epoll (a
# syscall); it is armed again when it parks again, and a closed socket leaves the epoll by itself
_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
MAX_EVENTS = 1024


@dataclass(frozen=True, slots=True)
class ParkingStatistics:
    parked: int  # connections parked right now
    parks: int  # times a connection parked
    wakes: int  # times one was woken


class Parker:
    """One per edge: parked connections (held streams, WebSockets) by fd, the epoll they are
    registered with, and the task that wakes them (``serve``)."""

    def __init__(
        self,
        resume: Callable[[Connection], Any],
        spawn: Callable[..., Any],
        on_abandon: Callable[[Connection], None],
    ) -> None:
        self._resume = resume  # async resume(conn): a new connection task for ``conn``
        self._spawn = spawn  # spawn(async_fn, *args, name=...): start a task in the edge nursery
        self._on_abandon = on_abandon  # the process stops: account ``conn`` as closed
        self._ep = select.epoll()
        self._parked: dict[int, Connection] = {}
        self._serving = False
        self.parks = self.wakes = 0

    @property
    def serving(self) -> bool:
        """``serve`` runs: parking is possible (else connections keep their task)."""
        return self._serving

    def park(self, conn: Connection) -> None:
        """Watch ``conn``'s socket until the client sends, closes, or ``wake(conn)``."""
        fd = conn.sock.fileno()
        try:
            self._ep.register(fd, _EVENTS)
        except FileExistsError:  # parked before on this socket: still in the epoll, disarmed
            self._ep.modify(fd, _EVENTS)
        self._parked[fd] = conn
        self.parks += 1

    def wake(self, conn: Connection) -> None:
        """Resume ``conn`` in a new task (no-op when it is not parked).  Its socket stays in
        the epoll (disarmed by the event that woke it; a wake without one, a session's
        ``cancel``, leaves it armed: an event that comes while it runs finds it not parked
        and is dropped, and disarms it): ``park`` arms it again, and closing the socket
        takes it out."""
        fd = conn.sock.fileno()
        if self._parked.get(fd) is conn:
            del self._parked[fd]
            self.wakes += 1
            self._spawn(self._resume, conn, name="client")

    def __len__(self) -> int:
        return len(self._parked)

    async def serve(self) -> None:
        """Run in the edge's nursery: wake the connections whose socket has news."""
        ep, parked = self._ep, self._parked
        self._serving = True
        try:
            while True:
                await trio.lowlevel.wait_readable(ep.fileno())
                for fd, _ in ep.poll(0, MAX_EVENTS):
                    conn = parked.get(fd)
                    if conn is not None:
                        self.wake(conn)
        finally:
            self._serving = False
            left = list(parked.values())
            parked.clear()
            for conn in left:
                conn.sock.close()
                self._on_abandon(conn)
            ep.close()

    def statistics(self) -> ParkingStatistics:
        return ParkingStatistics(len(self._parked), self.parks, self.wakes)
