"""broker.items: what a publisher may not put in an item (issue 11 items 2, 3, 4 and 8).

Every input framing (HTTP JSON, ZeroMQ ``J``/``T``/bare tnetstring, ``M`` and ``B`` msgpack,
SUB) goes through the same checks, with both ``_speedups`` twins (the test run sets which):
the fast twins hand anything doubtful to the complete parser, which refuses it with a reason.
"""

from __future__ import annotations

import json

import msgpack
import pytest
import tnetstring as tnet3

from broker.errors import PublishError
from broker.items import (
    MAX_ID_BYTES,
    MAX_PATCH_DEPTH,
    MAX_PATCH_OPS,
    check_patch,
    parse_http_publish,
    parse_pull_frame,
    parse_sub_item,
    parse_zmq_item,
)

BAD_IDS = [
    "1\r\nX-Smuggled: yes",
    "1\r\n\r\nGET / HTTP/1.1",
    "a\x00b",
    "a\nb",
    "tab\there",
    "\x7f",
    "x" * (MAX_ID_BYTES + 1),
    "\u00e9" * (MAX_ID_BYTES // 2 + 1),
]


def http(item: dict) -> bytes:
    return json.dumps({"items": [item]}).encode()


def stream_item(**extra) -> dict:
    return {"channel": "c", "formats": {"http-stream": {"content": "x"}}, **extra}


def every_framing(item: dict):
    """(name, parse) for each input path: each returns items or raises PublishError."""

    def pull(frame):
        items, errors = parse_pull_frame(frame)
        if errors:
            raise PublishError(errors[0])
        return items

    tn = {k.encode(): v.encode() for k, v in item.items() if k != "formats"}
    tn[b"formats"] = {b"http-stream": {b"content": b"x"}}
    yield "http", lambda: parse_http_publish(http(item))
    yield "J", lambda: [parse_zmq_item(b"J" + json.dumps(item).encode())]
    yield "T", lambda: [parse_zmq_item(b"T" + tnet3.dumps(tn))]
    yield "M", lambda: pull(b"M" + msgpack.packb(item))
    yield "B", lambda: pull(b"B" + msgpack.packb([item]))
    sub = {k: v for k, v in item.items() if k != "channel"}
    yield "SUB", lambda: [parse_sub_item(b"c", b"J" + json.dumps(sub).encode())]


@pytest.mark.parametrize("key", ["id", "prev-id"])
@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_with_control_characters_or_too_long_are_refused_on_every_path(key, bad):
    for name, parse in every_framing(stream_item(**{key: bad})):
        with pytest.raises(PublishError, match=f"'{key}' with invalid value") as info:
            parse()
        assert info.value.status == 400, name


@pytest.mark.parametrize("key", ["id", "prev-id"])
def test_ordinary_ids_pass_on_every_path(key):
    for ok in ["1", "2024-01-01T00:00:00Z", "\u00e9" * (MAX_ID_BYTES // 2), "a b"]:
        for name, parse in every_framing(stream_item(**{key: ok})):
            (item,) = parse()
            assert getattr(item, key.replace("-", "_")) == ok, name


@pytest.mark.parametrize(
    "reason",
    ["OK\r\nSet-Cookie: a=b\r\n\r\nHTTP/1.1 200 OK", "a\nb", "a\x00", "\x1b[31m", "x" * 513],
)
def test_reason_must_be_reason_phrase_text(reason):
    item = {"channel": "c", "http-response": {"code": 200, "reason": reason, "body": "x"}}
    with pytest.raises(PublishError, match="'reason' with invalid value") as info:
        parse_http_publish(http(item))
    assert info.value.status == 400
    fine = "Fine\tby me \u00e9"
    ok = {"channel": "c", "http-response": {"code": 200, "reason": fine, "body": ""}}
    assert parse_http_publish(http(ok))[0].formats["http-response"]["reason"] == fine


@pytest.mark.parametrize(
    "headers",
    [
        [["X Y", "1"]],
        [["X:Y", "1"]],
        [["", "1"]],
        [["X\r\nY", "1"]],
        [["(x)", "1"]],
        [["X-A", "1\r\nSet-Cookie: a"]],
        [["X-A", "a\x00"]],
        {"X\u00e9": "1"},
        {"X-A": "\x01"},
    ],
)
def test_header_names_are_tokens_and_values_field_text(headers):
    item = {"channel": "c", "http-response": {"headers": headers, "body": "x"}}
    with pytest.raises(PublishError, match="headers contains") as info:
        parse_http_publish(http(item))
    assert info.value.status == 400


def test_body_patch_limits():
    ok = [{"op": "add", "path": f"/k{i}", "value": i} for i in range(MAX_PATCH_OPS)]
    item = {"channel": "c", "http-response": {"body-patch": ok}}
    assert parse_http_publish(http(item))[0].formats["http-response"]["body-patch"] == ok
    too_many = ok + [{"op": "remove", "path": "/k0"}]
    deep: object = 1
    for _ in range(MAX_PATCH_DEPTH + 1):
        deep = {"a": deep}
    nested_ok: object = 1
    for _ in range(MAX_PATCH_DEPTH - 2):
        nested_ok = [nested_ok]
    big = [{"op": "add", "path": "/a", "value": "x" * (1 << 20)}]
    for patch, why in [
        (too_many, "more than 100 operations"),
        ([{"op": "add", "path": "/a", "value": deep}], "nested deeper than 64"),
        (big, "over 1048576 bytes"),
    ]:
        item = {"channel": "c", "http-response": {"body-patch": patch}}
        with pytest.raises(PublishError, match="'body-patch' with invalid value") as info:
            parse_http_publish(http(item))
        assert why in info.value.reason and info.value.status == 400
    assert check_patch([{"op": "add", "path": "/a", "value": nested_ok}]) is None


def test_a_value_nested_far_past_the_limit_is_refused_without_recursion():
    deep: object = 1
    for _ in range(100_000):
        deep = [deep]
    assert "nested deeper" in check_patch([{"op": "add", "path": "/a", "value": deep}])


# -- item size and the history byte budget (item 8) ---------------------------------------------


def test_an_item_over_the_size_cap_is_refused_on_every_path():
    from broker.items import MAX_ITEM_BYTES

    big = "x" * (MAX_ITEM_BYTES + 1)
    item = {"channel": "c", "formats": {"http-stream": {"content": big}}}
    for frame in (
        b"J" + json.dumps(item).encode(),
        b"M" + msgpack.packb(item),
        b"B" + msgpack.packb([item, stream_item()]),
    ):
        items, errors = parse_pull_frame(frame)
        assert len(errors) == 1 and "larger than 1048576 bytes" in errors[0]
        assert [i.channel for i in items] == (["c"] if frame[:1] == b"B" else [])
    with pytest.raises(PublishError, match="larger than"):
        parse_zmq_item(b"J" + json.dumps(item).encode())
    ok = {"channel": "c", "formats": {"http-stream": {"content": big[:-1]}}}
    assert parse_pull_frame(b"J" + json.dumps(ok).encode())[1] == []


@pytest.mark.parametrize("many", [False, True])
def test_history_byte_budget_drops_the_oldest_and_keeps_the_newest(many):
    from broker.history import MemoryHistory
    from broker.items import Item

    def item(n: int, size: int) -> Item:
        return Item(
            channel="c",
            formats={"http-stream": {"action": "send", "content": b"x" * size}},
            id=str(n),
        )

    h = MemoryHistory(max_items=1000, max_bytes=10_000)
    items = [item(i, 3000) for i in range(10)]
    if many:
        h.append_many(items, now=1.0)
    else:
        for it in items:
            h.append(it, now=1.0)
    kept = h.replay("c", after_seq=0).items
    assert [e.id for e in kept] == ["7", "8", "9"]  # 9,000 bytes: a fourth would pass 10,000
    assert h.statistics().retained == 3
    h.append(item(10, 50_000), now=1.0)  # one item over the budget: kept alone (newest)
    assert [e.id for e in h.replay("c", after_seq=0).items] == ["10"]
