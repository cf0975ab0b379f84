"""Periodic wake-ups on a shared grid, so that a process's timers wake it together.

Every wake-up of an idle process costs about 0.45 ms of CPU on the machines we measured
(``bench/RESULTS.md``, "Idle wake-ups"): the scheduler, the VM's timer, trio's run loop and
caches gone cold since the last one, whatever the task then does.  Six periodic tasks that each
sleep one second from their own start wake a process six times a second; the same six waking at
the next whole second of the host's monotonic clock wake it once.  ``next_tick(period)`` is
that instant as a trio deadline (between now and one period from now), ``sleep_tick`` sleeps
until it.  Periods that divide each other (0.25 s, 1 s, 5 s) land on the same instants, and so
do the processes of one host (the monotonic clock is the host's; trio's own clock is offset
per process).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import trio


def next_tick(period_s: float) -> float:
    """The trio deadline of the next multiple of ``period_s`` of the host's monotonic clock."""
    mono = time.monotonic()
    return trio.current_time() + (math.floor(mono / period_s) + 1) * period_s - mono


async def sleep_tick(period_s: float) -> None:
    """Sleep until ``next_tick(period_s)`` (at most ``period_s``)."""
    await trio.sleep_until(next_tick(period_s))


class TickGate:
    """A periodic task's sleep that is fine while there is work and coarse while there is none:
    ``await gate.wait()`` sleeps to the next ``fine_s`` tick when ``busy()`` is true, else to
    the next ``idle_s`` tick, from which ``wake()`` (something was scheduled) returns it at
    once.  Both on the shared grid (``next_tick``)."""

    __slots__ = ("fine_s", "idle_s", "busy", "_idle")

    def __init__(self, fine_s: float, idle_s: float, busy: Callable[[], bool]) -> None:
        self.fine_s = fine_s
        self.idle_s = idle_s
        self.busy = busy
        self._idle: trio.Event | None = None

    def wake(self) -> None:
        """Work was added: end a coarse wait now (no-op otherwise)."""
        idle = self._idle
        if idle is not None:
            idle.set()

    async def wait(self) -> None:
        if self.busy():
            await sleep_tick(self.fine_s)
            return
        idle = self._idle = trio.Event()
        try:
            with trio.move_on_at(next_tick(self.idle_s)):
                await idle.wait()
        finally:
            self._idle = None
