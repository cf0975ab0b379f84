"""gripcast's msgpack PUSH input (M and B frames) through a real broker process, and the
Pushpin framings next to it: every item fanned out once, in order, bad items rejected alone."""

from __future__ import annotations

import json

import msgpack
import pytest
import zmq

from broker import wire
from tests.broker.test_server_integration import (  # noqa: F401 (fixture)
    broker_proc,
    recv_frame,
    subscribe_channel,
)


def item(n: int, **extra) -> dict:
    return {
        "channel": "mp",
        "id": f"m{n}",
        "formats": {"http-stream": {"content": f"{n}\n".encode()}},
        **extra,
    }


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_msgpack_frames_end_to_end(broker_proc):  # noqa: F811
    _, ports = broker_proc
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    push = ctx.socket(zmq.PUSH)
    try:
        for s in (sub, push):
            s.setsockopt(zmq.LINGER, 0)
        subscribe_channel(sub, "mp")
        sub.connect(f"tcp://127.0.0.1:{ports['edge_pub_port']}")
        assert isinstance(recv_frame(sub), wire.Marker)  # the channel is live now
        push.connect(f"tcp://127.0.0.1:{ports['push_in_port']}")

        push.send(b"M" + msgpack.packb(item(1)))
        batch = [item(n) for n in range(2, 2502)]
        batch.insert(5, {"channel": "mp", "formats": {"http-stream": {"content": 5}}})  # bad
        batch.insert(9, "not a map")
        push.send(b"B" + msgpack.packb(batch))
        push.send(b"B\xc1")  # not msgpack: rejected, nothing else disturbed
        # two frames, each a good item alone: the message is refused whole (Pushpin's
        # "parts != 1"), neither part published
        push.send_multipart([b"M" + msgpack.packb(item(7777)), b"M" + msgpack.packb(item(7778))])
        push.send(
            b"J"
            + json.dumps(
                {"channel": "mp", "id": "j", "formats": {"http-stream": {"content": "J\n"}}}
            ).encode()
        )
        push.send(b"M" + msgpack.packb(item(1)))  # a retry of m1: dropped as a duplicate
        push.send(
            b"M"
            + msgpack.packb(
                {
                    **item(9999),
                    "formats": {"ws-message": {"content": b"\x00\xff", "type": "binary"}},
                }
            )
        )

        got = [recv_frame(sub) for _ in range(2503)]
        assert all(isinstance(e, wire.Envelope) for e in got)
        assert [e.seq for e in got] == list(range(1, 2504))
        assert [e.id for e in got] == [f"m{n}" for n in range(1, 2502)] + ["j", "m9999"]
        assert got[1].formats == {"http-stream": {"action": "send", "content": b"2\n"}}
        assert got[-1].formats["ws-message"]["content"] == b"\x00\xff"
        assert got[-1].formats["ws-message"]["type"] == "binary"
        # nothing more: the duplicate and the bad items were dropped. The positive signal: a
        # last item, sent after them all, is the next envelope (position markers, re-sent with
        # heartbeats, may come in between)
        push.send(b"M" + msgpack.packb(item(10000)))
        while isinstance(nxt := recv_frame(sub), wire.Marker):
            pass
        assert (nxt.id, nxt.seq) == ("m10000", 2504)
    finally:
        sub.close()
        push.close()
        ctx.term()
