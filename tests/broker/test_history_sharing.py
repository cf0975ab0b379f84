"""What a retained message shares instead of holding its own copy (no sockets, no sleeps):
every envelope of a channel holds the channel's one name string, and items published without
meta hold the one empty ``NO_META``; ``payload_bytes`` (both twins) counts what
``item_bytes`` always counted."""

from __future__ import annotations

import json

import msgpack
import pytest

from _speedups import twin
from broker.errors import PublishError
from broker.history import MemoryHistory
from broker.ingest import tnetstring
from broker.items import (
    MAX_ITEM_BYTES,
    item_bytes,
    parse_http_publish,
    parse_pull_frame,
    parse_sub_item,
)
from broker.wire import Envelope

TWINS = [twin("items", compiled=True), twin("items", compiled=False)]


def _body(n: int, channels: int = 2, meta: bool = False) -> bytes:
    items = []
    for k in range(n):
        item = {"channel": f"room-{k % channels}", "formats": {"http-stream": {"content": f"{k}"}}}
        if meta:
            item["meta"] = {"k": str(k)}
        items.append(item)
    return json.dumps({"items": items}).encode()


def test_envelopes_of_a_channel_hold_one_name_string():
    h = MemoryHistory(max_items=100)
    first = h.append_many(parse_http_publish(_body(10)), 1.0)
    later = h.append_many(parse_http_publish(_body(10)), 2.0)
    for name in ("room-0", "room-1"):
        envs = [e for e in first + later if e.channel == name]
        assert len(envs) == 10
        assert len({id(e.channel) for e in envs}) == 1
    one = h.append(parse_http_publish(_body(1))[0], 3.0)
    assert one.channel is first[0].channel
    # what a replay returns is unchanged
    replay = h.replay("room-0", after_seq=0)
    assert [e.seq for e in replay.items] == list(range(1, 12))
    assert all(e.channel == "room-0" for e in replay.items)


@pytest.mark.parametrize("mod", TWINS, ids=lambda m: m.__name__)
def test_items_without_meta_share_the_one_empty_meta(mod):
    from broker.items import Item

    a = mod.normalise_item(
        {"channel": "c", "formats": {"http-stream": {"content": "x"}}}, None, True, Item
    )
    b = mod.normalise_item(
        {"channel": "c", "formats": {"http-stream": {"content": "y"}}}, None, True, Item
    )
    assert a.meta == {} and a.meta is b.meta is mod.NO_META
    c = mod.normalise_item(
        {"channel": "c", "meta": {"k": "v"}, "formats": {"http-stream": {"content": "x"}}},
        None,
        True,
        Item,
    )
    assert c.meta == {"k": "v"} and c.meta is not mod.NO_META


def test_every_input_path_leaves_the_shared_meta_empty():
    """HTTP (JSON), ZeroMQ frames (JSON, tnetstring, msgpack batch) and SUB messages,
    retained and replayed: nothing writes to the shared empty meta."""
    h = MemoryHistory(max_items=100)
    h.append_many(parse_http_publish(_body(5)), 1.0)
    h.append_many(parse_http_publish(_body(5, meta=True)), 1.0)
    tnet = tnetstring.dumps({b"channel": b"t", b"formats": {b"http-stream": {b"content": b"x"}}})
    batch = msgpack.packb(
        [
            {"channel": "b", "formats": {"http-stream": {"content": "x"}}},
            {"channel": "b", "meta": {"k": "v"}, "formats": {"http-stream": {"content": "y"}}},
        ]
    )
    frames = [
        b"T" + tnet,
        b"J" + json.dumps({"channel": "j", "http-stream": {"content": "x"}}).encode(),
        b"B" + batch,
    ]
    for frame in frames:
        items, rejected = parse_pull_frame(frame)
        assert items and not rejected
        h.append_many(items, 2.0)
    h.append(
        parse_sub_item(b"s", b"J" + json.dumps({"http-stream": {"content": "z"}}).encode()), 3.0
    )
    for name in ("room-0", "t", "j", "b", "s"):
        envs = h.replay(name, after_seq=0).items
        assert envs, name
        for env in envs:
            assert env.meta == {} or env.meta["k"] in ("v", *map(str, range(5))), env
    for mod in TWINS:
        assert mod.NO_META == {}


@pytest.mark.parametrize("mod", TWINS, ids=lambda m: m.__name__)
def test_payload_bytes_counts_content_else_body(mod):
    assert mod.payload_bytes({}) == 0
    formats = {
        "http-stream": {"action": "send", "content": b"abc"},
        "http-response": {"body": b"12345", "code": 200},
        "ws-message": {"content": "xy"},  # str (a decoded envelope's text frame)
    }
    assert mod.payload_bytes(formats) == 3 + 5 + 2
    assert mod.payload_bytes({"http-stream": {"action": "close"}}) == 0
    # content wins over body; a content of None falls back to body
    assert mod.payload_bytes({"f": {"content": b"ab", "body": b"xyz"}}) == 2
    assert mod.payload_bytes({"f": {"content": None, "body": b"xyz"}}) == 3

    class Mapping(dict):  # not exactly a dict: the generic path
        pass

    assert mod.payload_bytes(Mapping(formats)) == 10
    env = Envelope(channel="c", seq=1, epoch="e", formats=formats)
    assert item_bytes(env) == 10


def test_item_size_bound_still_applies():
    big = "x" * (MAX_ITEM_BYTES + 1)
    body = json.dumps({"items": [{"channel": "c", "formats": {"http-stream": {"content": big}}}]})
    with pytest.raises(PublishError, match="larger than"):
        parse_http_publish(body.encode())
