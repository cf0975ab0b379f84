"""The stats socket builds ``message`` packets only for subscribers that can receive them.

The socket is an XPUB (its consumers see a PUB); ``StatsListeners`` folds in its subscription
notices.  Unit tests for the topic logic, then a pipeline on real ZeroMQ sockets: nobody
listening, a consumer joining (heard at the very next publish, as a PUB would), leaving.
"""

from __future__ import annotations

import time

import pytest
import trio
import zmq

from broker.config import Config
from broker.history import MemoryHistory
from broker.ingest.pipeline import Pipeline, PipelineSockets
from broker.items import Item
from broker.ops.stats import StatsEncoder, StatsListeners
from broker.runtime.zmqtrio import ZSocket
from broker.store.memory import MemoryStore


def _fold(listeners, *notices):
    listeners.notices([[n] for n in notices])
    return listeners.messages


@pytest.mark.parametrize(
    "topic, heard",
    [
        (b"", True),  # everything
        (b"m", True),
        (b"message ", True),  # Pushpin's monitor tools subscribe so
        (b"message T", True),
        (b"message T5:from", True),  # longer: some message packets match it
        (b"message J", False),  # the other format
        (b"report ", False),
        (b"messages", False),
        (b"sub ", False),
    ],
)
def test_which_topics_hear_message_packets(topic, heard):
    assert _fold(StatsListeners(), b"\x01" + topic) is heard


def test_json_format_prefix():
    assert _fold(StatsListeners("json"), b"\x01message J") is True
    assert _fold(StatsListeners("json"), b"\x01message T") is False
    with pytest.raises(ValueError):
        StatsListeners("xml")


def test_subscribe_then_unsubscribe_and_other_topics():
    sl = StatsListeners()
    assert sl.messages is False
    assert _fold(sl, b"\x01report ", b"\x01message ") is True
    assert _fold(sl, b"\x00message ") is False  # its last subscriber left
    assert sl.topics == {b"report "}
    assert _fold(sl, b"", b"\x02junk", b"\x00never") is False  # empty, unknown flag, unknown
    assert _fold(sl, b"\x01") is True  # the empty topic
    assert _fold(sl, b"\x00") is False


# -- a pipeline on real sockets ----------------------------------------------------------------


@pytest.fixture
def rig():
    ctx = zmq.Context()
    edge_pub, stats_pub = ctx.socket(zmq.XPUB), ctx.socket(zmq.XPUB)
    stats_pub.setsockopt(zmq.RCVHWM, 0)
    try:
        edge_pub.bind("inproc://listeners-edge")
        stats_pub.bind("inproc://listeners-stats")
        p = Pipeline(
            Config(),
            MemoryStore(MemoryHistory(max_items=100)),
            PipelineSockets(None, None, ZSocket(edge_pub, "edge_pub"), ZSocket(stats_pub, "stats")),  # type: ignore[arg-type]
            broker_id="b1",
            started=time.time(),
            uris={},
            stats=StatsEncoder("b"),
        )
        p.live.add("a")
        yield p, ctx
    finally:
        edge_pub.close(linger=0)
        stats_pub.close(linger=0)
        ctx.term()


def _items(n):
    return [Item("a", {"http-stream": {"content": f"{i}\n"}}) for i in range(n)]


def _drain(s):
    out = []
    while s.poll(100):
        out.append(s.recv())
    return out


def _consumer(ctx, *topics):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect("inproc://listeners-stats")
    for t in topics:
        sub.setsockopt(zmq.SUBSCRIBE, t)
    return sub


def test_nobody_listening_builds_nothing(rig):
    p, ctx = rig
    trio.run(p.publish, _items(3))
    assert p.stats_listeners.skipped == 3
    reports = _consumer(ctx, b"report ")  # a consumer of other packets only
    try:
        assert p.sockets.stats is not None and p.sockets.stats.sock.poll(5000)  # its notice
        trio.run(p.publish, _items(2))
        assert p.stats_listeners.skipped == 5
        assert p.stats_listeners.topics == {b"report "}
        assert _drain(reports) == []
    finally:
        reports.close()


def test_a_consumer_is_heard_at_the_next_publish_and_forgotten_when_it_leaves(rig):
    p, ctx = rig
    sub = _consumer(ctx, b"message ")
    try:
        # no task reads the notices here: the publish itself reads them when nobody is known
        deadline = time.monotonic() + 5
        got: list[bytes] = []
        while not got and time.monotonic() < deadline:
            trio.run(p.publish, _items(1))
            got = _drain(sub)
        assert got and all(f.startswith(b"message T") for f in got)
        skipped = p.stats_listeners.skipped
        trio.run(p.publish, _items(4))
        assert len(_drain(sub)) == 4 and p.stats_listeners.skipped == skipped
    finally:
        sub.close(linger=0)
    # it left: its unsubscribe notice comes (the notice task would read it; here, by hand)
    z = p.sockets.stats
    assert z is not None
    deadline = time.monotonic() + 5
    while p.stats_listeners.messages and time.monotonic() < deadline:
        if z.sock.poll(50):
            trio.run(p.handle_stats_notices, z.recv_batch())
    assert p.stats_listeners.messages is False
    trio.run(p.publish, _items(2))
    assert p.stats_listeners.skipped == skipped + 2
