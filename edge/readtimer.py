"""Coarse timeouts for socket waits, without a trio cancel scope per wait.

A new connection through the proxy waits once for the origin's response head.  Bounding that
wait with ``trio.move_on_after`` cost a cancel scope per wait (its creation, a deadline in
trio's heap, the cancel-status bookkeeping on enter and exit): under
``python -m bench fanout --transport sse --clients 10000`` py-spy put about an eighth of an
edge's per-connection Python time there (bench/RESULTS.md).  Origin timeouts are seconds long
and need no precision, so here one ``ReadTimer`` per edge (``Edge.origin_client.timer``)
checks every ``TICK_S`` for expired waits and ends each with
``edge.opener.notify_closing(sock)`` (trio's, and the same for a wait parked in the edge's
opener), which raises ``trio.ClosedResourceError`` in the task or coroutine waiting on that
socket; ``Wait.expired`` tells the waiter that this was a timeout (it then treats the socket
as broken and closes it).  ``call_after`` is the same deadline for a wait that is not on a
socket: it calls a function instead.  Its ``serve()`` task runs in the edge's nursery
(``edge.server.serve``): an error there ends the edge's nursery, like any of its tasks, and
``start`` refuses to run before ``serve`` did (a wait that can never time out).

    w = timer.start(sock, timeout_s)
    try:
        await trio.lowlevel.wait_readable(sock)   # ClosedResourceError with w.expired: timeout
    finally:
        w.done()

A timeout fires between ``timeout_s`` and ``timeout_s + TICK_S`` after ``start``; while no wait
is started the task is parked (an idle edge is not woken for it).

``Waker`` is the same trick for a held stream's wait on its client, which has no deadline:
``cancel()`` (what ``StreamSession.finish()``/``kill()`` call on ``session.scope``) wakes the
task waiting on the socket instead of cancelling a scope, so a held connection needs no
``CancelScope`` (its creation and bookkeeping per connection, and its memory while held).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from broker.errors import LocalProtocolError
from broker.runtime.ticks import sleep_tick
from edge.opener import notify_closing

TICK_S = 0.25


class Wait:
    __slots__ = ("sock", "deadline", "expired", "_active", "on_expire")

    def __init__(
        self,
        sock: trio.socket.SocketType | None,
        deadline: float,
        active: dict[Wait, None],
        on_expire: Callable[[], None] | None = None,
    ) -> None:
        self.sock = sock  # None: ``on_expire`` is called instead (``ReadTimer.call_after``)
        self.deadline = deadline
        self.expired = False
        self._active = active
        self.on_expire = on_expire

    def done(self) -> None:
        self._active.pop(self, None)


class Waker:
    """Stands in for a ``CancelScope`` whose only use is ``cancel()`` (see the docstring)."""

    __slots__ = ("sock", "fired")

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.fired = False

    def cancel(self) -> None:
        if not self.fired:
            self.fired = True
            try:
                trio.lowlevel.notify_closing(self.sock)
            except Exception:  # pragma: no cover - already closed: nothing waits on it
                pass


class ReadTimer:
    """Deadlines for socket waits, ended by one task (``serve``) every ``TICK_S``."""

    __slots__ = ("_active", "_serving", "_idle")

    def __init__(self) -> None:
        self._active: dict[Wait, None] = {}  # unfinished waits (insertion-ordered set)
        self._serving = False
        self._idle: trio.Event | None = None  # set by start(): serve() parks while none waits

    def start(self, sock: trio.socket.SocketType, timeout_s: float) -> Wait:
        """Bound the waits on ``sock`` from now on by ``timeout_s`` (until ``done()``)."""
        if not self._serving:
            raise LocalProtocolError(
                "ReadTimer.start before its serve() task started: the wait could never time out"
            )
        active = self._active
        w = Wait(sock, trio.current_time() + timeout_s, active)
        active[w] = None
        if self._idle is not None:
            self._idle.set()
        return w

    @property
    def serving(self) -> bool:
        """Its ``serve()`` task runs: ``start`` and ``call_after`` may be used."""
        return self._serving

    def call_after(self, timeout_s: float, on_expire: Callable[[], None]) -> Wait:
        """Call ``on_expire()`` ``timeout_s`` from now (as coarsely), unless ``done()`` first:
        a deadline for a wait that is not on a socket (``Edge.wait_positioned`` in a
        connection the opener runs, ``edge.opener.Gate``)."""
        if not self._serving:
            raise LocalProtocolError(
                "ReadTimer.call_after before its serve() task started: it could never fire"
            )
        active = self._active
        w = Wait(None, trio.current_time() + timeout_s, active, on_expire)
        active[w] = None
        if self._idle is not None:
            self._idle.set()
        return w

    def expire(self, now: float) -> int:
        """End the waits whose deadline passed; how many.  (Only unfinished waits are kept:
        in-flight origin requests, fresh connections' first reads and new channels' position
        waits in the opener, so a scan per tick is cheap.)"""
        active = self._active
        late = [w for w in active if w.deadline <= now]
        for w in late:
            del active[w]
            w.expired = True
            if w.on_expire is not None:
                w.on_expire()
                continue
            try:
                notify_closing(w.sock)  # (edge.opener: a wait there too)
            except Exception:  # pragma: no cover - a socket closed meanwhile: nothing waits on it
                pass
        return len(late)

    def pending(self) -> int:
        """Waits started and not done (nor expired)."""
        return len(self._active)

    async def serve(self) -> None:
        """Run forever in the edge's nursery: expire late waits every ``TICK_S`` (on the
        process's shared tick grid, ``broker.runtime.ticks``); parked while no wait is
        started, so that an idle edge is not woken four times a second for nothing."""
        self._serving = True
        active = self._active
        while True:
            if not active:
                idle = self._idle = trio.Event()
                try:
                    await idle.wait()
                finally:
                    self._idle = None
            await sleep_tick(TICK_S)
            if active:
                self.expire(trio.current_time())
