"""Delivery hot path on pipes (no sockets, no sleeps): one write per connection per batch."""
from __future__ import annotations

import fcntl
import os

import pytest
import trio
import trio.testing

import _speedups
from broker.wire import Envelope
from edge.deliver import Deliverer
from edge.grip import Hold
from edge.hub import Hub
from edge.session import ResponseSession, StreamSession


@pytest.fixture(autouse=True)
def pure_send_batch(monkeypatch):
    """Pipes stand in for sockets; the compiled twin uses send(2), which pipes refuse."""
    monkeypatch.setattr("edge.deliver.send_batch", _speedups.twin("sendmany", False).send_batch)


class PipeEnd:
    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        for fd in (self.r, self.w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)

    def fileno(self) -> int:
        return self.w

    def read(self) -> bytes:
        try:
            return os.read(self.r, 1 << 20)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def stream(content: bytes, action="send", seq=1, channel="c") -> Envelope:
    return Envelope(channel=channel, seq=seq, epoch="e",
                    formats={"http-stream": {"action": action, "content": content}})


def session(pipe, chunked=True) -> StreamSession:
    s = StreamSession(pipe, Hold(mode="stream"), chunked, now=0.0)
    s.writing = False
    return s


def test_batch_joined_per_connection_and_close():
    async def main():
        hub = Hub()
        p1, p2 = PipeEnd(), PipeEnd()
        s1, s2 = session(p1), session(p2, chunked=False)
        hub.add(s1, ["c"], 0)
        hub.add(s2, ["c"], 0)
        d = Deliverer(hub, 1 << 20, spawn=None)
        await d.deliver([stream(b"one"), stream(b"two", seq=2)], now=1.0)
        assert p1.read() == b"3\r\none\r\n3\r\ntwo\r\n"
        assert p2.read() == b"onetwo"
        await d.deliver([stream(b"", action="close", seq=3), stream(b"late", seq=4)], now=2.0)
        assert p1.read() == b"0\r\n\r\n" and p2.read() == b""
        assert s1.done and s2.done and not s1.dead
        st = d.statistics()
        assert st.messages == 4 and st.deliveries == 3
        p1.close()
        p2.close()

    trio.run(main)


def test_slow_client_is_buffered_then_dropped():
    async def main():
        hub = Hub()
        pipe = PipeEnd()
        s = session(pipe)
        hub.add(s, ["c"], 0)
        spawned = []
        d = Deliverer(hub, 300_000, spawn=lambda fn, arg: spawned.append(arg))
        big = b"x" * 100_000
        for i in range(3):  # a pipe holds 64 KiB: the rest goes to the session's buffer
            await d.deliver([stream(big, seq=i + 1)], now=1.0)
        assert spawned == [s] and s.writing and len(s.buf) > 0
        assert not s.dead
        await d.deliver([stream(big, seq=4)], now=1.0)
        assert s.dead and s.reason == "buffer overflow"
        assert d.statistics().overflows == 1
        pipe.close()

    trio.run(main)


def test_writer_task_drains_backlog():
    async def main():
        hub = Hub()
        pipe = PipeEnd()
        s = session(pipe)
        hub.add(s, ["c"], 0)
        async with trio.open_nursery() as nursery:
            d = Deliverer(hub, 1 << 20, spawn=nursery.start_soon)
            await d.deliver([stream(b"y" * 150_000), stream(b"", action="close", seq=2)], now=1.0)
            got = bytearray()
            while not s.done:
                got += pipe.read()
                await trio.testing.wait_all_tasks_blocked()
            got += pipe.read()
        assert got.endswith(b"0\r\n\r\n") and len(got) > 150_000
        pipe.close()

    trio.run(main)


def test_response_hold_gets_published_response():
    async def main():
        hub = Hub()
        s = ResponseSession(Hold(mode="response", body=b"timeout"), keep_alive=True, deadline=9)
        hub.add(s, ["c"], 0)
        d = Deliverer(hub, 1 << 20, spawn=None)
        env = Envelope(channel="c", seq=1, epoch="e", formats={"http-response": {
            "action": "send", "code": 200, "reason": "OK", "headers": [], "body": b"hi"}})
        await d.deliver([env], now=1.0)
        assert s.result.endswith(b"\r\n\r\nhi")

    trio.run(main)
