"""A WebSocket ``subscribe`` control message waits for the channel's position at the broker
before the session goes on (what the origin sent after it, its next request), as a stream
hold's head does: a message published once the subscription showed must be after the
baseline, never counted as delivered by the broker's position answer (edge.ws.session)."""

from __future__ import annotations

import trio
import trio.testing

from edge.ws import control as wc
from edge.ws.session import WsSession
from tests.edge.test_publish_boundaries import FakeApp, FakeSide, FakeSock


class PositioningApp(FakeApp):
    """The channels in ``unknown`` have no position yet, until ``answer()``."""

    def __init__(self) -> None:
        super().__init__()
        self.unknown: set[str] = set()
        self.waited: list[list[str]] = []
        self._answered = trio.Event()

    def positioned(self, channels) -> bool:
        return not any(c in self.unknown for c in channels)

    async def wait_positioned(self, channels, timeout_s: float = 2.0) -> None:
        self.waited.append(list(channels))
        await self._answered.wait()

    def answer(self) -> None:
        self.unknown.clear()
        self._answered.set()


def test_subscribe_returns_only_once_the_channel_is_positioned():
    async def main():
        app, side = PositioningApp(), FakeSide()
        s = WsSession(app, FakeSock(), side, "", 0.0, 1 << 20)
        app.unknown.add("room")
        done = []

        async def subscribe():
            await s.control(wc.parse_control(b'{"type": "subscribe", "channel": "room"}'))
            done.append(True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscribe)
            await trio.testing.wait_all_tasks_blocked()
            assert app.hub.subs[s] == ["room"]  # subscribed at once (live messages are held)
            assert app.waited == [["room"]] and not done  # ... but not past the subscribe
            app.answer()
        assert done == [True]

    trio.run(main)


def test_a_positioned_channel_does_not_wait():
    async def main():
        app, side = PositioningApp(), FakeSide()
        s = WsSession(app, FakeSock(), side, "", 0.0, 1 << 20)
        await s.control(wc.parse_control(b'{"type": "subscribe", "channel": "room"}'))
        assert app.hub.subs[s] == ["room"] and app.waited == []
        # subscribing again to a channel it has changes nothing and never waits
        app.unknown.add("room")
        await s.control(wc.parse_control(b'{"type": "subscribe", "channel": "room"}'))
        assert app.waited == []

    trio.run(main)
