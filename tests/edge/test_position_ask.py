"""A newly subscribed channel's position request waits for the broker's marker on subscribe
(``Edge._run_tracker_actions``): the marker nearly always comes first, and then no request
is sent; without it, the request goes out ``POSITION_ASK_AFTER_S`` (and up to a
``ReadTimer`` tick) later.  Other position requests (a resync, a link input of another epoch)
are sent at once.

The edge's own methods run on a stand-in with the attributes they use (a real ``Tracker``,
``ReadTimer`` and nursery; ``_ask_position`` recorded), under trio's ``MockClock``."""

from __future__ import annotations

from types import SimpleNamespace

import trio
import trio.testing

from broker.wire import Marker
from edge.readtimer import TICK_S, ReadTimer
from edge.server import POSITION_ASK_AFTER_S, Edge
from edge.sync.tracker import Tracker


def _edge(nursery: trio.Nursery, timer: ReadTimer) -> SimpleNamespace:
    e = SimpleNamespace(
        tracker=Tracker(),
        origin_client=SimpleNamespace(timer=timer),
        nursery=nursery,
        _pos_asks={},
        _pos_waiters={},
        _pos_deadlines={},
        _reorder_wake=trio.Event(),
        asked=[],
    )

    async def ask(channel: str) -> None:
        e.asked.append(channel)

    e._ask_position = ask
    e._ask_position_late = lambda ch: Edge._ask_position_late(e, ch)  # type: ignore[arg-type]
    e.run_actions = lambda: Edge._run_tracker_actions(e)  # type: ignore[arg-type]
    return e


def _run(body) -> None:
    async def main() -> None:
        timer = ReadTimer()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.serve)
            await trio.testing.wait_all_tasks_blocked()
            await body(_edge(nursery, timer))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_brokers_marker_positions_a_new_channel_and_no_request_goes_out():
    async def body(e) -> None:
        e.tracker.track("room")
        e.run_actions()
        assert e._pos_asks.keys() == {"room"} and e.asked == []  # not asked yet
        e.tracker.on_marker(Marker("room", "e1", 4), [])
        e.run_actions()  # (what the edge does after each input to the tracker)
        assert e._pos_asks == {} and e.tracker.position("room") == ("e1", 4)
        await trio.sleep(POSITION_ASK_AFTER_S + 2 * TICK_S)
        assert e.asked == []

    _run(body)


def test_without_a_marker_the_position_is_asked_after_the_delay():
    async def body(e) -> None:
        start = trio.current_time()
        e.tracker.track("room")
        e.run_actions()
        await trio.sleep(POSITION_ASK_AFTER_S / 2)
        assert e.asked == []
        await trio.sleep(POSITION_ASK_AFTER_S + 2 * TICK_S)
        assert e.asked == ["room"] and e._pos_asks == {}
        assert trio.current_time() - start <= POSITION_ASK_AFTER_S + 3 * TICK_S

    _run(body)


def test_a_channel_dropped_before_the_delay_is_not_asked():
    async def body(e) -> None:
        e.tracker.track("room")
        e.run_actions()
        e.tracker.untrack("room")  # its last client left
        await trio.sleep(POSITION_ASK_AFTER_S + 2 * TICK_S)
        assert e.asked == [] and e._pos_asks == {}

    _run(body)


def test_a_resync_asks_every_channel_at_once():
    async def body(e) -> None:
        e.tracker.track("room")
        e.tracker.on_marker(Marker("room", "e1", 4), [])
        e.run_actions()
        assert e._pos_asks == {}  # positioned before its request was looked at: none
        e.tracker.resync()  # a broker restarted: no new subscription, so no marker
        e.run_actions()
        await trio.testing.wait_all_tasks_blocked()
        assert e.asked == ["room"]
        await trio.sleep(POSITION_ASK_AFTER_S + 2 * TICK_S)
        assert e.asked == ["room"]  # once

    _run(body)
