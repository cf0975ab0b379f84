"""Publish input parsing (broker/items.py, broker/ingest/tnetstring.py, broker/ingest/commands.py) under
hostile publishers: every input is an ``Item`` list or a ``PublishError`` with Pushpin's text;
tnetstring garbage is a ``RemoteProtocolError``; nothing else escapes.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from broker.errors import PublishError, RemoteProtocolError
from broker.ingest import tnetstring
from broker.ingest.commands import handle_command, split_envelope
from broker.ingest.httpapi import check_head, handle_request
from broker.items import parse_http_publish, parse_items, parse_sub_item, parse_zmq_item
from tests.fuzz.strategies import FUZZ, nasty_number

keys = st.sampled_from(
    [
        "channel",
        "id",
        "prev-id",
        "formats",
        "http-stream",
        "http-response",
        "ws-message",
        "content",
        "content-bin",
        "action",
        "code",
        "reason",
        "headers",
        "body",
        "body-bin",
        "body-patch",
        "type",
        "meta",
        "size",
        "no-seq",
        "content-filters",
        "items",
        "x",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        ["send", "close", "hint", "refresh", "text", "binary", "ping", "!!", "", "\x00", "aGk="]
    ),
)
values = st.recursive(
    scalars,
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(keys, c, max_size=6)),
    max_leaves=25,
)
items = st.dictionaries(keys, values, max_size=6)
docs = st.one_of(st.fixed_dictionaries({"items": st.lists(items, max_size=3)}), values)


def to_tnet(v):
    """JSON-ish value -> tnetstring-able (bytes strings), keeping hostile shapes."""
    if isinstance(v, dict):
        return {k.encode(): to_tnet(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_tnet(x) for x in v]
    if isinstance(v, str):
        return v.encode("utf-8", "surrogatepass")
    if isinstance(v, float) and v != v:
        return 0.0
    return v


def ok_items(fn, *args):
    try:
        out = fn(*args)
    except PublishError as exc:
        assert isinstance(exc.reason, str)
        return None
    for item in out if isinstance(out, list) else [out]:
        assert item.channel and "\x00" not in item.channel
        assert item.formats
    return out


@FUZZ
@given(docs)
def test_http_publish_json(doc):
    body = json.dumps(doc).encode()
    ok_items(parse_http_publish, body)
    res = handle_request("POST", "/publish/", [(b"Content-Length", str(len(body)).encode())], body)
    assert res.response.status in (200, 400)


@FUZZ
@given(st.binary(max_size=300))
def test_http_publish_bytes(body):
    ok_items(parse_http_publish, body)


@FUZZ
@given(
    st.sampled_from(["POST", "GET", "PUT", "X"]),
    st.lists(
        st.tuples(
            st.sampled_from(["Content-Length", "Transfer-Encoding", "Expect", "Accept"]),
            st.one_of(nasty_number, st.text(max_size=10)),
        ),
        max_size=4,
    ),
    st.text(max_size=30),
)
def test_http_api_head_and_paths(method, hs, target):
    check = check_head(method, hs)
    if check.response is not None:
        assert check.response.status in (400, 411)
    res = handle_request(method, target, hs, b"{}")
    assert 200 <= res.response.status < 500


@FUZZ
@given(st.one_of(items, values))
def test_zmq_items_json_and_tnetstring(item):
    ok_items(parse_zmq_item, b"J" + json.dumps(item).encode())
    try:
        tn = tnetstring.dumps(to_tnet(item))
    except ValueError:
        return
    ok_items(parse_zmq_item, b"T" + tn)
    ok_items(parse_zmq_item, tn)
    ok_items(parse_sub_item, b"chan", b"T" + tn)
    ok_items(lambda v: parse_items(v, json=False), [to_tnet(item)])


@FUZZ
@given(st.binary(max_size=300))
def test_zmq_item_garbage(frame):
    ok_items(parse_zmq_item, frame)
    ok_items(parse_sub_item, frame[:10], frame)


tnet_tags = st.sampled_from([b",", b"#", b"^", b"!", b"~", b"}", b"]", b"x", b""])


@st.composite
def tnet_garbage(draw, depth=0):
    """Almost-valid tnetstrings: wrong lengths, tags, nesting."""
    payload = (
        draw(st.binary(max_size=20))
        if depth > 2
        else b"".join(draw(st.lists(tnet_garbage(depth + 1), max_size=3)))
    )
    n = draw(st.one_of(st.just(str(len(payload))), nasty_number))
    return n.encode() + b":" + payload + draw(tnet_tags)


@FUZZ
@given(st.one_of(tnet_garbage(), st.binary(max_size=200)))
def test_tnetstring_loads(data):
    try:
        tnetstring.loads(data)
    except RemoteProtocolError:
        pass


@FUZZ
@given(
    st.lists(st.binary(max_size=40), max_size=5),
    st.one_of(
        tnet_garbage(),
        values.map(
            lambda v: (
                tnetstring.dumps({b"method": b"publish", b"args": to_tnet(v)}) if True else b""
            )
        ),
    ),
)
def test_command_socket(frames, payload):
    try:
        split_envelope(frames)
    except RemoteProtocolError:
        pass
    uris = {"command": "tcp://127.0.0.1:1", "publish-pull": "", "publish-sub": ""}
    handle_command(payload, uris)


DEEP = [b"[" * 100_000, b'{"a":' * 50_000, b"[" * 999 + b"]" * 999]


def test_deeply_nested_json_is_a_clear_error():
    for doc in DEEP:
        ok_items(parse_http_publish, doc)
        ok_items(parse_zmq_item, b"J" + doc)
        ok_items(parse_http_publish, b'{"items": [{"channel": "c", "meta": ' + doc + b"}]}")
    deep_tnet = b"0:]"
    for _ in range(5000):
        deep_tnet = b"%d:%s]" % (len(deep_tnet), deep_tnet)
    try:
        tnetstring.loads(deep_tnet)
    except RemoteProtocolError:
        pass
    ok_items(parse_zmq_item, b"T" + deep_tnet)
