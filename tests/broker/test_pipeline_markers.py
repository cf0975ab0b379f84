"""The broker's trailing position markers and stats packets, sent in batches (issue 16).

* ``_marker_frame`` writes exactly ``wire.encode_marker``'s bytes (from a cached head per epoch);
* the heartbeat re-sends the position of each live channel published in the last two rounds,
  once per channel, after the heartbeat itself (the property that lets an edge notice a lost
  tail: tests/edge/test_linkrepair.py covers the edge's side);
* stats packets go out one ZeroMQ message each.

Sockets are ZeroMQ ``inproc`` (no network), as in tests/speedups/test_fanout.py.
"""

from __future__ import annotations

import time

import pytest
import trio
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import wire
from broker.config import Config
from broker.errors import StoreUnavailable
from broker.history import MemoryHistory
from broker.ingest.pipeline import Pipeline, PipelineSockets, _marker_frame
from broker.items import Item
from broker.ops.stats import StatsEncoder
from broker.runtime.zmqtrio import ZSocket
from broker.store.memory import MemoryStore


@settings(max_examples=300, deadline=None)
@given(
    channel=st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s),
    epoch=st.text(max_size=40),
    last_seq=st.integers(0, 2**63 - 1),
)
def test_marker_frame_is_wire_encode_marker(channel, epoch, last_seq):
    assert _marker_frame(channel, epoch, last_seq) == wire.encode_marker(channel, epoch, last_seq)
    assert wire.decode_frame(_marker_frame(channel, epoch, last_seq)) == wire.Marker(
        channel, epoch, last_seq
    )


@pytest.fixture
def rig():
    ctx = zmq.Context()
    xpub, stats_pub = ctx.socket(zmq.XPUB), ctx.socket(zmq.PUB)
    sub, stats_sub = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    try:
        xpub.bind("inproc://markers-edge")
        stats_pub.bind("inproc://markers-stats")
        for s, addr in ((sub, "inproc://markers-edge"), (stats_sub, "inproc://markers-stats")):
            s.connect(addr)
            s.setsockopt(zmq.SUBSCRIBE, b"")
        xpub.recv()  # the subscription notice: the pipe is up
        stats_pub.send(b"ready")  # PUB has no notice: retry until the SUB gets one
        while not stats_sub.poll(20):
            stats_pub.send(b"ready")
        while stats_sub.poll(20):
            stats_sub.recv()
        enc = StatsEncoder("b")
        p = Pipeline(
            Config(),
            MemoryStore(MemoryHistory(max_items=100)),
            PipelineSockets(None, None, ZSocket(xpub, "edge_pub"), ZSocket(stats_pub, "stats")),  # type: ignore[arg-type]
            broker_id="b1",
            started=time.time(),
            uris={},
            stats=enc,
        )
        yield p, sub, stats_sub
    finally:
        for s in (xpub, stats_pub, sub, stats_sub):
            s.close(linger=0)
        ctx.term()


def _drain(s):
    out = []
    while s.poll(50):
        out.append(s.recv())
    return out


def _items(*channels):
    return [Item(ch, {"http-stream": {"content": f"{ch}\n"}}) for ch in channels]


def test_heartbeat_marks_live_channels_of_the_last_two_rounds(rig):
    p, sub, stats_sub = rig
    p.live.update({"a", "b", "c"})
    trio.run(p.publish, _items("a", "b", "a", "dead"))
    frames = _drain(sub)
    assert [wire.decode_frame(f).channel for f in frames] == ["a", "b", "a"]
    epoch = {e.channel: e.epoch for e in map(wire.decode_frame, frames)}  # per channel
    stats = _drain(stats_sub)
    assert [f.split(b" ", 1)[0] for f in stats] == [b"message"] * 3  # one per live message

    p.heartbeat()  # round 1: a (seq 2) and b (seq 1); "dead" is not live
    frames = _drain(sub)
    assert wire.is_heartbeat(frames[0])
    assert sorted((wire.decode_frame(f) for f in frames[1:]), key=repr) == [
        wire.Marker("a", epoch["a"], 2),
        wire.Marker("b", epoch["b"], 1),
    ]
    trio.run(p.publish, _items("c"))
    epoch["c"] = wire.decode_frame(_drain(sub)[0]).epoch
    p.live.discard("b")
    p.heartbeat()  # round 2: a again (its marker may have been lost), c new; b no longer live
    markers = sorted((wire.decode_frame(f) for f in _drain(sub)[1:]), key=repr)
    assert markers == [wire.Marker("a", epoch["a"], 2), wire.Marker("c", epoch["c"], 1)]
    p.heartbeat()  # round 3: c's second marker only
    assert [wire.decode_frame(f) for f in _drain(sub)[1:]] == [wire.Marker("c", epoch["c"], 1)]
    p.heartbeat()
    assert len(_drain(sub)) == 1  # the heartbeat alone
    assert p.statistics().trailing_markers == 5


class _RefusingStore(MemoryStore):
    """Stores every write but, while ``down``, refuses it afterwards (a WAIT no replica
    confirmed) and refuses reads too."""

    down = False

    async def append_batch(self, items, now):
        envs = await super().append_batch(items, now)
        if self.down:
            raise StoreUnavailable("only 0 of 1 replicas confirmed")
        return envs

    async def position(self, channel):
        if self.down:
            raise StoreUnavailable("only 0 of 1 replicas confirmed")
        return await super().position(channel)


def test_a_refused_write_is_announced_once_the_store_answers(rig):
    p, sub, _stats = rig
    store = _RefusingStore(MemoryHistory(max_items=100))
    p.store = store
    p.live.update({"a", "gone"})
    trio.run(p.publish, _items("a"))
    (first,) = map(wire.decode_frame, _drain(sub))
    store.down = True
    for ch in ("a", "a", "gone"):
        with pytest.raises(StoreUnavailable):
            trio.run(p.publish, _items(ch))  # stored (seq 2, 3 of a), not acknowledged
    assert _drain(sub) == []  # nothing fanned out
    p.live.discard("gone")
    trio.run(p.remark_refused)  # the store still refuses: nothing yet
    assert _drain(sub) == []
    store.down = False
    trio.run(p.remark_refused)  # a's confirmed position: edges repair seqs 2 and 3
    assert [wire.decode_frame(f) for f in _drain(sub)] == [wire.Marker("a", first.epoch, 3)]
    trio.run(p.remark_refused)  # once
    assert _drain(sub) == []
