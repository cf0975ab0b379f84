"""The broker<->edge contract (broker/wire.py, broker/control.py) under garbage frames: decoders
return a value or raise ``RemoteProtocolError``; nothing else escapes (a bad frame from a broker
or an edge is logged and skipped, never fatal)."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from broker import wire
from broker.control import ControlError, parse_control
from broker.errors import RemoteProtocolError
from edge.sync.tracker import Tracker
from tests.fuzz.strategies import FUZZ

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
keys = st.sampled_from(
    [
        "seq",
        "epoch",
        "id",
        "prev_id",
        "formats",
        "meta",
        "ts",
        "marker",
        "last_seq",
        "op",
        "rid",
        "channel",
        "after_seq",
        "after_id",
        "limit",
        "broker_id",
        "items",
        "complete",
        "ok",
    ]
)
values = st.recursive(
    scalars,
    lambda c: st.one_of(
        st.lists(c, max_size=3), st.dictionaries(st.one_of(keys, scalars), c, max_size=5)
    ),
    max_leaves=20,
)
maps = st.dictionaries(keys, values, max_size=8)


def packed(v) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


frames = st.one_of(
    st.binary(max_size=200),
    st.tuples(st.text(max_size=8), maps).map(lambda cm: cm[0].encode() + wire.SEP + packed(cm[1])),
    st.tuples(st.binary(max_size=8), st.binary(max_size=50)).map(lambda p: p[0] + wire.SEP + p[1]),
)


@FUZZ
@given(frames)
def test_decode_frame_and_tracker(frame):
    try:
        msg = wire.decode_frame(frame)
    except RemoteProtocolError:
        return
    t = Tracker()
    t.track(msg.channel)
    out: list = []
    if isinstance(msg, wire.Envelope):
        t.on_envelope(msg, out)
    else:
        t.on_marker(msg, out)
    t.take_actions()


@FUZZ
@given(st.one_of(st.binary(max_size=100), maps.map(packed)))
def test_heartbeat_control_and_notices(frame):
    for fn in (wire.decode_heartbeat, wire.decode_control):
        try:
            fn(wire.HEARTBEAT_TOPIC + frame if fn is wire.decode_heartbeat else frame)
        except RemoteProtocolError:
            pass
    try:
        parse_control(frame)
    except ControlError:
        pass
    wire.subscription_notice(frame)


def test_deeply_nested_msgpack_is_a_clear_error():
    deep = b"\x91" * 100_000 + b"\xc0"  # 100,000 nested one-element arrays
    for frame in (b"chan" + wire.SEP + deep, deep):
        try:
            wire.decode_frame(frame)
        except RemoteProtocolError:
            pass
        try:
            parse_control(frame)
        except ControlError:
            pass


def test_unhashable_msgpack_map_keys_are_a_clear_error():
    for body in (b"\x81\x80\xc0", b"\x81\x90\xc0", b"\x81\x91\x80\xc0"):  # {{}: nil}, {[]: nil}
        for frame in (b"chan" + wire.SEP + body, body):
            for fn in (
                wire.decode_frame,
                wire.decode_control,
                parse_control,
                lambda f: wire.decode_heartbeat(wire.HEARTBEAT_TOPIC + f),
            ):
                try:
                    fn(frame)
                except RemoteProtocolError:
                    pass
