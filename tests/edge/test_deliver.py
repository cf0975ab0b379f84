"""Delivery hot path on pipes (no sockets, no sleeps): one write per connection per batch."""

from __future__ import annotations

import fcntl
import os

import pytest
import trio
import trio.testing

import _speedups
from broker.wire import Envelope
from edge.grip.instruct import Hold
from edge.grip.session import ResponseSession, StreamSession
from edge.sync.deliver import Deliverer
from edge.sync.hub import Hub


@pytest.fixture(autouse=True)
def pure_send_batch(monkeypatch):
    """Pipes stand in for sockets; the compiled twin uses send(2), which pipes refuse."""
    monkeypatch.setattr(
        "edge.sync.deliver.send_batch", _speedups.twin("sendmany", False).send_batch
    )


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
    return Envelope(
        channel=channel,
        seq=seq,
        epoch="e",
        formats={"http-stream": {"action": action, "content": content}},
    )


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
        env = Envelope(
            channel="c",
            seq=1,
            epoch="e",
            formats={
                "http-response": {
                    "action": "send",
                    "code": 200,
                    "reason": "OK",
                    "headers": [],
                    "body": b"hi",
                }
            },
        )
        await d.deliver([env], now=1.0)
        assert s.result.endswith(b"\r\n\r\nhi")

    trio.run(main)


def test_hint_does_not_kill_a_backlogged_stream():
    """Issue 11 item 12: a published hint wakes the held connection's wait with
    ``notify_closing`` (edge.readtimer.Waker); the writer task waiting on the same socket
    must not take that for a closed socket and drop the stream."""
    from edge import readtimer

    async def main():
        hub = Hub()
        pipe = PipeEnd()
        s = StreamSession(pipe, Hold(mode="stream", next_link="http://o/next"), True, now=0.0)
        s.writing = False
        hub.add(s, ["c"], 0)
        async with trio.open_nursery() as nursery:
            d = Deliverer(hub, 1 << 20, spawn=nursery.start_soon)
            await d.deliver([stream(b"y" * 150_000)], now=1.0)  # past the pipe: a backlog
            await trio.testing.wait_all_tasks_blocked()
            assert s.writing and s.buf
            s.scope = readtimer.Waker(pipe)  # what hold_stream's wait installs
            await d.deliver([stream(b"", action="hint", seq=2)], now=2.0)
            assert s.hinted and s.scope.fired
            got = bytearray()
            while (s.buf or s.writing) and not s.dead:
                got += pipe.read()
                await trio.testing.wait_all_tasks_blocked()
            got += pipe.read()
        assert not s.dead, s.reason
        assert len(got) > 150_000
        pipe.close()

    trio.run(main)


def test_bad_body_patch_answers_one_session_with_the_timeout_body():
    """Issue 11 item 2: a patch past the limits (or one nested too deep) is one session's
    failed patch (Pushpin keeps the timeout body), never an exception out of delivery."""

    async def main():
        hub = Hub()
        s = ResponseSession(
            Hold(mode="response", body=b'{"a":"' + b"x" * 1000 + b'"}'), keep_alive=True, deadline=9
        )
        s2 = ResponseSession(Hold(mode="response", body=b"{}"), keep_alive=True, deadline=9)
        hub.add(s, ["c"], 0)
        hub.add(s2, ["d"], 0)
        d = Deliverer(hub, 1 << 20, spawn=None)
        deep: object = 1
        for _ in range(3000):
            deep = [deep]
        bomb = [{"op": "copy", "from": "", "path": f"/k{i}"} for i in range(30)]
        for chan, patch in (("d", [{"op": "add", "path": "/d", "value": deep}]), ("c", bomb)):
            env = Envelope(
                channel=chan,
                seq=1,
                epoch="e",
                formats={
                    "http-response": {
                        "action": "send",
                        "code": 200,
                        "reason": "OK",
                        "headers": [],
                        "body": None,
                        "body-patch": patch,
                    }
                },
            )
            await d.deliver([env], now=1.0)
        assert s.result.endswith(b'\r\n\r\n{"a":"' + b"x" * 1000 + b'"}')
        assert s2.result.endswith(b"\r\n\r\n{}")

    trio.run(main)


def test_one_message_patches_a_shared_timeout_body_once(monkeypatch):
    """A patch costs up to the edge's budget per timeout body, not per poll: 500 polls with
    the same timeout body patch it once."""
    import edge.http1.responses as responses_mod

    calls = []
    real = responses_mod.patch_body
    monkeypatch.setattr(responses_mod, "patch_body", lambda b, p: calls.append(b) or real(b, p))

    async def main():
        hub = Hub()
        polls = [
            ResponseSession(Hold(mode="response", body=b'{"n":0}'), keep_alive=True, deadline=9)
            for _ in range(500)
        ]
        other = ResponseSession(Hold(mode="response", body=b'{"n":1}'), keep_alive=True, deadline=9)
        for s in polls + [other]:
            hub.add(s, ["c"], 0)
        d = Deliverer(hub, 1 << 20, spawn=None)
        env = Envelope(
            channel="c",
            seq=1,
            epoch="e",
            formats={
                "http-response": {
                    "action": "send",
                    "code": 200,
                    "reason": "OK",
                    "headers": [],
                    "body": None,
                    "body-patch": [{"op": "add", "path": "/p", "value": True}],
                }
            },
        )
        await d.deliver([env], now=1.0)
        assert all(s.result.endswith(b'\r\n\r\n{"n":0,"p":true}') for s in polls)
        assert other.result.endswith(b'\r\n\r\n{"n":1,"p":true}')
        assert len(calls) == 2

    trio.run(main)


def test_sessions_count_what_the_delivery_path_wrote():
    """``sent`` (the access log's count of a held stream's bytes) is every byte written."""

    async def main():
        hub = Hub()
        p1 = PipeEnd()
        s1 = session(p1)
        hub.add(s1, ["c"], 0)
        d = Deliverer(hub, 1 << 20, spawn=None)
        await d.deliver([stream(b"one"), stream(b"two", seq=2)], now=1.0)
        assert s1.sent == len(p1.read()) == 16
        p1.close()

    trio.run(main)
