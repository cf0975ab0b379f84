"""broker.runtime.ticks: periodic wake-ups on the host's shared grid (trio's MockClock: virtual
time, no real sleeps)."""

from __future__ import annotations

import time

import trio
import trio.testing

from broker.runtime.ticks import TickGate, next_tick


def _run(fn) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_next_tick_is_the_next_multiple_of_the_period_on_the_monotonic_clock():
    async def main():
        for period in (0.25, 1.0, 5.0):
            # the two clocks read back to back: again if the process was preempted between
            # them (a loaded CI run once put 10 ms there)
            for _ in range(100):
                before = time.monotonic()
                now = trio.current_time()
                wait = next_tick(period) - now
                mono = time.monotonic()
                if mono - before < 1e-4:
                    break
            mono = before
            assert 0 < wait <= period
            # the instant waited for, on the host's clock, is a multiple of the period (within
            # the microseconds between the two clock reads), and so of every divisor of it: the
            # 1-s and 5-s timers wake on 0.25-s ticks
            at = mono + wait
            for divisor in (0.25, period):
                k = at / divisor
                assert abs(k - round(k)) * divisor < 1e-3

    _run(main)


def test_tick_gate_fine_when_busy_coarse_when_idle_and_woken_by_work():
    work: list[int] = []
    gate = TickGate(0.25, 1.0, lambda: bool(work))

    async def main():
        t0 = trio.current_time()
        await gate.wait()  # idle: to the next whole second
        assert 0 < trio.current_time() - t0 <= 1.0
        work.append(1)
        t0 = trio.current_time()
        await gate.wait()  # busy: to the next quarter second
        assert 0 < trio.current_time() - t0 <= 0.25
        work.clear()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gate.wait)
            await trio.testing.wait_all_tasks_blocked()
            t0 = trio.current_time()
            gate.wake()  # something was scheduled: the coarse wait ends now
        assert trio.current_time() == t0
        gate.wake()  # not waiting: nothing to do

    _run(main)
