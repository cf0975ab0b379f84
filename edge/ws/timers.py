"""WebSocket keep-alive and send-delayed timers: one task per edge, not one per connection.

A WebSocket session used to run its own timer task (an Event, a cancel scope and a coroutine
per connection, even when the origin never asked for a timer).  Now a session with a timer
(``keep-alive`` or ``send-delayed`` from the origin) puts itself in a ``TimerWheel`` of
``RESOLUTION_S`` buckets; one task per edge sleeps until the earliest bucket, asks every due
session for its frames (``WsSession.due_frames``) and writes them all through the delivery path
in one ``write_many`` batch.  Sessions without timers cost nothing here.

Cancelling is lazy (as in ``edge.timers``): a session remembers the time it is armed for
(``timer_at``); an entry that comes due while the session is armed for later, or after it
ended, is ignored.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from edge.timers import TimerWheel

if TYPE_CHECKING:
    from edge.sync.deliver import Deliverer
    from edge.ws.session import WsSession

RESOLUTION_S = 0.1  # send-delayed defaults to 1 s: fire within ~0.1 s of the asked time


class WsTimers:
    """The edge's one WebSocket timer task (``serve``, started by ``edge.server.serve``)."""

    def __init__(self, deliverer: Deliverer, resolution_s: float = RESOLUTION_S) -> None:
        self.deliverer = deliverer
        self.wheel: TimerWheel[WsSession] = TimerWheel(resolution_s)
        self._wake = trio.Event()
        self._sleep_until = math.inf

    def arm(self, session: WsSession, when: float) -> None:
        """Make sure ``session.due_frames`` is called at (or soon after) ``when``."""
        if when >= session.timer_at:
            return  # armed earlier already: that entry re-arms
        session.timer_at = when
        self.wheel.schedule(session, when)
        if when < self._sleep_until:
            self._wake.set()

    def due(self, now: float) -> list[tuple[WsSession, list[bytes]]]:
        """``(session, [bytes])`` for every session with something due at ``now`` (sans-IO)."""
        writes = []
        for s in self.wheel.pop_due(now):
            if s.done or s.timer_at > now:
                continue  # ended, or a stale entry of a session armed for later
            s.timer_at = math.inf
            frames = s.due_frames(now)
            if frames:
                writes.append((s, frames))
            s.arm_timer()
        return writes

    async def serve(self) -> None:
        while True:
            nxt = self.wheel.next_due()
            self._wake = trio.Event()
            # a hair after the bucket's end, so that float rounding never leaves it unpopped
            self._sleep_until = math.inf if nxt is None else nxt + 1e-4
            if self._sleep_until > trio.current_time():
                with trio.move_on_at(self._sleep_until):
                    await self._wake.wait()
            now = trio.current_time()
            writes = self.due(now)
            if writes:
                await self.deliverer.write_many(writes, now)
