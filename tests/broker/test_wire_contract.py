"""broker.wire's typed control messages: round trips, the bytes they keep, malformed replies."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import wire
from broker.errors import RemoteProtocolError
from broker.wire import (
    ErrorReply,
    HelloReply,
    HelloRequest,
    PositionReply,
    PositionRequest,
    ReplayReply,
    ReplayRequest,
    StatsReport,
)

text = st.text(max_size=8)
opt_text = st.one_of(st.none(), text)
count = st.integers(0, 2**40)
rid = st.integers(1, 2**31)
envs = st.lists(
    st.builds(
        wire.Envelope,
        channel=st.just("c"),
        seq=st.integers(1, 99),
        epoch=text,
        formats=st.just({"http-stream": {"content": b"x"}}),
        id=opt_text,
        prev_id=opt_text,
        meta=st.just({}),
        ts=st.floats(0, 1e9),
    ),
    max_size=3,
).map(tuple)

requests = st.one_of(
    st.builds(HelloRequest, st.integers(0, 9), rid),
    st.builds(PositionRequest, text, rid),
    st.builds(
        ReplayRequest,
        text,
        opt_text,
        st.one_of(st.none(), count),
        opt_text,
        st.integers(0, wire.REPLAY_LIMIT),
        rid,
    ),
)
replies = st.one_of(
    st.builds(HelloReply, rid, text, st.floats(0, 1e9), text, st.integers(0, 9)),
    st.builds(PositionReply, rid, text, text, count, opt_text),
    st.builds(
        lambda r, e, n, ok, items: ReplayReply(r, "c", e, n, ok, items),
        rid,
        text,
        count,
        st.booleans(),
        envs,
    ),
)


@given(requests)
def test_request_round_trip(req):
    assert wire.decode_request(wire.encode_request(req)) == req


@given(replies)
def test_reply_round_trip(rep):
    assert wire.decode_reply(wire.encode_reply(rep), type(rep)) == rep


@given(st.sampled_from(list(wire.REPLY_TYPES.values())), rid, text)
def test_error_reply_whatever_was_asked(expect, r, why):
    assert wire.decode_reply(wire.encode_reply(ErrorReply(r, why)), expect) == ErrorReply(r, why)


def test_the_bytes_on_the_wire_are_the_documented_maps():
    m = lambda b: msgpack.unpackb(b, raw=False)  # noqa: E731
    assert m(wire.encode_request(PositionRequest("ch", 5))) == {
        "op": "position",
        "rid": 5,
        "channel": "ch",
    }
    assert m(wire.encode_request(ReplayRequest("ch", "e", 3, None, 10, 6))) == {
        "op": "replay",
        "rid": 6,
        "channel": "ch",
        "epoch": "e",
        "after_seq": 3,
        "after_id": None,
        "limit": 10,
    }
    assert m(wire.encode_request(HelloRequest(rid=1))) == {
        "op": "hello",
        "rid": 1,
        "wire": wire.WIRE_VERSION,
    }
    rep = StatsReport(
        "e0", True, (("c1", "http", "1.2.3.4"),), ("c0",), (("ws", "ch", 2),), 3, 4, 1.5, 9
    )
    assert m(wire.encode_request(rep)) == {
        "op": "stats",
        "edge": "e0",
        "full": True,
        "conns": [["c1", "http", "1.2.3.4"]],
        "gone": ["c0"],
        "subs": [["ws", "ch", 2]],
        "connections": 3,
        "connections_max": 4,
        "conn_s": 1.5,
        "sent": 9,
    }
    got = wire.decode_request(wire.encode_request(rep))
    assert isinstance(got, StatsReport) and got.raw == m(wire.encode_request(rep))


def test_a_hello_or_heartbeat_without_a_version_is_version_0():
    req = wire.decode_request(wire.encode_control({"op": "hello", "rid": 1}))
    assert req == HelloRequest(0, 1)
    rep = wire.decode_reply(
        wire.encode_control({"rid": 1, "ok": True, "broker_id": "b", "started": 1.0}), HelloReply
    )
    assert rep == HelloReply(1, "b", 1.0, "", 0)
    old_beat = wire.HEARTBEAT_TOPIC + msgpack.packb({"broker_id": "b", "started": 0, "ts": 0})
    assert wire.decode_heartbeat(old_beat).wire_version == 0
    beat = wire.decode_heartbeat(wire.encode_heartbeat("b", 1.0, 2.0))
    assert (beat.broker_id, beat.wire_version) == ("b", wire.WIRE_VERSION)


def test_version_mismatch_names_both():
    assert wire.version_mismatch(1, 2).startswith(
        "wire version mismatch: edge speaks wire version 1, broker speaks wire version 2"
    )


@pytest.mark.parametrize(
    "expect,m,why",
    [
        (HelloReply, {"rid": 1}, "'ok' must be a boolean"),
        (HelloReply, {"rid": 1, "ok": True}, "'broker_id' must be a string"),
        (HelloReply, {"rid": 1, "ok": True, "broker_id": "b", "wire": "2"}, "'wire'"),
        (HelloReply, {"rid": 1, "ok": True, "broker_id": "b", "started": "x"}, "'started'"),
        (PositionReply, {"rid": 1, "ok": True, "channel": "c"}, "'epoch' must be a string"),
        (
            PositionReply,
            {"rid": 1, "ok": True, "channel": "c", "epoch": "e", "last_seq": -1},
            "'last_seq'",
        ),
        (
            ReplayReply,
            {"rid": 1, "ok": True, "channel": "c", "epoch": "e", "items": {}},
            "'items' must be a list",
        ),
        (
            ReplayReply,
            {"rid": 1, "ok": True, "channel": "c", "epoch": "e", "complete": 1},
            "'complete' must be a boolean",
        ),
        (
            ReplayReply,
            {"rid": 1, "ok": True, "channel": "c", "epoch": "e", "items": [{"x": 1}]},
            "bad envelope",
        ),
        (
            ReplayReply,
            {"rid": 1, "ok": True, "channel": "c", "epoch": "e", "items": [3]},
            "bad envelope",
        ),
    ],
)
def test_malformed_replies_are_remote_protocol_errors(expect, m, why):
    with pytest.raises(RemoteProtocolError, match=why):
        wire.decode_reply(wire.encode_control(m), expect)


@pytest.mark.parametrize("frame", [b"\xc1", b"\x93\x01\x02\x03", msgpack.packb("x")])
def test_undecodable_replies(frame):
    with pytest.raises(RemoteProtocolError, match="bad control message"):
        wire.decode_reply(frame, HelloReply)


@given(
    st.one_of(
        st.binary(max_size=60),
        st.dictionaries(
            st.sampled_from(
                [
                    "rid",
                    "ok",
                    "op",
                    "channel",
                    "epoch",
                    "last_seq",
                    "items",
                    "complete",
                    "broker_id",
                    "wire",
                    "started",
                    "error",
                    "limit",
                ]
            ),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-3, 3),
                text,
                st.lists(st.integers(-(2**63), 2**64 - 1), max_size=2),
            ),
            max_size=8,
        ).map(msgpack.packb),
    )
)
def test_decoders_raise_only_protocol_errors(frame):
    for expect in wire.REPLY_TYPES.values():
        try:
            wire.decode_reply(frame, expect)
        except RemoteProtocolError:
            pass
    try:
        wire.decode_request(frame)
    except wire.ControlError:
        pass
