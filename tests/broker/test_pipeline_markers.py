"""The broker's trailing positions and stats packets, sent in batches (issue 16).

* the heartbeat carries the position of each live channel published since the last one, once
  (wire version 3: packed in the heartbeat frame; the property that lets an edge notice a lost
  tail: tests/edge/test_markers.py and test_linkrepair.py cover the edge's side), with a
  counter that shows a lost heartbeat; more than ``MARKS_PER_HEARTBEAT`` positions go in
  several heartbeat frames;
* stats packets go out one ZeroMQ message each.

Sockets are ZeroMQ ``inproc`` (no network), as in tests/speedups/test_fanout.py.
"""

from __future__ import annotations

import time

import pytest
import trio
import zmq

from broker import wire
from broker.config import Config
from broker.errors import RemoteProtocolError, StoreUnavailable
from broker.history import MemoryHistory
from broker.ingest.pipeline import Pipeline, PipelineSockets
from broker.items import Item
from broker.ops.stats import StatsEncoder
from broker.runtime.zmqtrio import ZSocket
from broker.store.memory import MemoryStore


@pytest.fixture
def rig():
    ctx = zmq.Context()
    xpub, stats_pub = ctx.socket(zmq.XPUB), ctx.socket(zmq.XPUB)  # as broker.config.WIRING
    sub, stats_sub = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    try:
        xpub.bind("inproc://markers-edge")
        stats_pub.bind("inproc://markers-stats")
        for s, addr in ((sub, "inproc://markers-edge"), (stats_sub, "inproc://markers-stats")):
            s.connect(addr)
            s.setsockopt(zmq.SUBSCRIBE, b"")
        xpub.recv()  # the subscription notice: the pipe is up
        assert stats_pub.poll(5000)  # its notice too (left unread: the pipeline reads it)
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
    """The frames ready on ``s``, batch messages split into their channel frames."""
    out = []
    while s.poll(50):
        out.append(s.recv())
    return wire.channel_frames(out)


def _items(*channels):
    return [Item(ch, {"http-stream": {"content": f"{ch}\n"}}) for ch in channels]


def _beats(frames):
    beats = [wire.decode_heartbeat(f) for f in frames]
    assert all(wire.is_heartbeat(f) for f in frames)
    return [(hb.n, sorted(wire.decode_marks(hb.marks)) if hb.marks else []) for hb in beats]


def test_heartbeat_carries_live_channels_published_since_the_last_one(rig):
    p, sub, stats_sub = rig
    p.live.update({"a", "b", "c"})
    trio.run(p.publish, _items("a", "b", "a", "dead"))
    frames = _drain(sub)
    assert [wire.decode_frame(f).channel for f in frames] == ["a", "b", "a"]
    epoch = {e.channel: e.epoch for e in map(wire.decode_frame, frames)}  # per channel
    stats = _drain(stats_sub)
    assert [f.split(b" ", 1)[0] for f in stats] == [b"message"] * 3  # one per live message

    p.heartbeat()  # a (seq 2) and b (seq 1); "dead" is not live
    assert _beats(_drain(sub)) == [(1, [("a", epoch["a"], 2), ("b", epoch["b"], 1)])]
    trio.run(p.publish, _items("c"))
    epoch["c"] = wire.decode_frame(_drain(sub)[0]).epoch
    p.heartbeat()  # c only: a's position went once (a lost heartbeat shows in the counter)
    assert _beats(_drain(sub)) == [(2, [("c", epoch["c"], 1)])]
    p.heartbeat()
    assert _beats(_drain(sub)) == [(3, [])]  # the heartbeat alone
    assert p.statistics().trailing_markers == 3
    # the status page still sees the last two rounds
    assert set(p.recent_positions()) == set()  # nothing published in the last two rounds


def test_many_positions_spread_over_several_heartbeat_frames(rig, monkeypatch):
    p, sub, _stats = rig
    monkeypatch.setattr(wire, "MARKS_PER_HEARTBEAT", 3)
    chans = [f"c{i}" for i in range(7)]
    p.live.update(chans)
    trio.run(p.publish, _items(*chans))
    _drain(sub)
    p.heartbeat()
    beats = _beats(_drain(sub))
    assert [n for n, _ in beats] == [1, 2, 3]
    assert [len(m) for _, m in beats] == [3, 3, 1]
    assert sorted(ch for _, m in beats for ch, _e, _s in m) == chans


def test_paced_heartbeat_lets_publishes_in_between_its_frames(rig):
    """The broker's loop sends the positions a few hundred a frame with a checkpoint between
    frames: a publish runs in between, and every position still goes once, with the counter
    following the frames (channels not live take no place in a frame)."""
    p, sub, _stats = rig
    chans = [f"c{i}" for i in range(10)]
    p.live.update(chans[::2] + ["late"])
    trio.run(p.publish, _items(*chans))
    _drain(sub)
    order: list[str] = []

    async def main():
        async def beat():
            await p.heartbeat_paced(per=2)
            order.append("heartbeat done")

        async def publish():
            while p.statistics().trailing_markers < 2:  # once the first frame went out
                await trio.sleep(0)
            await p.publish(_items("late"))
            order.append("published")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(beat)
            nursery.start_soon(publish)

    trio.run(main)
    assert order == ["published", "heartbeat done"]  # the publish ran between the frames
    frames = _drain(sub)
    beats = _beats([f for f in frames if f.startswith(wire.HEARTBEAT_TOPIC)])
    assert [n for n, _ in beats] == [1, 2, 3]
    assert [len(m) for _, m in beats] == [2, 2, 1]
    assert sorted(ch for _, m in beats for ch, _e, _s in m) == sorted(chans[::2])
    # the late publish is in the next heartbeat
    p.heartbeat()
    assert [ch for _, m in _beats(_drain(sub)) for ch, _e, _s in m] == ["late"]


def test_marks_roundtrip_and_bad_marks_are_refused():
    marks = [("a", "e1", 0), ("é" * 30, "x" * 40, 2**63 - 1)]
    assert wire.decode_marks(wire.encode_marks(marks)) == tuple(marks)
    for bad in (
        b"\xc1",
        b"\x01",  # not an array
        wire.encode_marks([("a", "e1", -1)]),
        wire.encode_marks([("", "e1", 1)]),
        wire.encode_marks([("a\x00b", "e1", 1)]),
        b"\x91\x92\xa1a\xa1e",  # two fields
        b"\x91\x93\xa1a\x01\x01",  # epoch not a str
        b"\x91\x93\xa1a\xa1e\xc3",  # seq a bool
    ):
        with pytest.raises(RemoteProtocolError):
            wire.decode_marks(bad)
    hb = wire.decode_heartbeat(wire.encode_heartbeat("b", 1.0, 2.0, n=7, marks=b"xy"))
    assert (hb.n, hb.marks, hb.wire_version) == (7, b"xy", wire.WIRE_VERSION)
    hb = wire.decode_heartbeat(wire.encode_heartbeat("b", 1.0, 2.0))
    assert (hb.n, hb.marks) == (0, b"")


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
