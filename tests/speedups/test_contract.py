"""The fan-out and item twins agree with the one contract (``broker.wire``, ``broker.items``).

The envelope's field names and order are written once, in ``broker.wire.ENVELOPE_FIELDS``:
the pure twin builds its maps with ``wire.envelope_map``; the compiled twin keeps byte
constants for speed, checked here.  Every frame either twin writes must decode, with the
contract's own decoder, to the fields the contract lists, in its order.
"""

from __future__ import annotations

import dataclasses
import math
import uuid

import msgpack
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from broker import items, wire
from broker.wire import ENVELOPE_FIELDS, Envelope
from tests.speedups.test_fanout import SETTINGS, _twins, envelope


def _key_order(frame: bytes) -> list[str]:
    body = frame[frame.index(wire.SEP) + 1 :]
    return [k for k, _ in msgpack.unpackb(body, raw=False, object_pairs_hook=list)]


def _same(a: Envelope, b: Envelope) -> bool:
    """Equal, with NaN equal to itself (a float field may be NaN)."""
    for f in dataclasses.fields(Envelope):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif msgpack.packb(x, use_bin_type=True) != msgpack.packb(y, use_bin_type=True):
            return False
    return True


def test_envelope_dataclass_has_the_contract_fields():
    names = [f.name for f in dataclasses.fields(Envelope)]
    assert names[0] == "channel" and sorted(names[1:]) == sorted(ENVELOPE_FIELDS)
    env = Envelope("c", 1, "e", {"f": 1}, "i", "p", {"m": "v"}, 2.5)
    assert list(env.to_map()) == list(ENVELOPE_FIELDS)
    assert list(wire.envelope_map(env)) == list(ENVELOPE_FIELDS)


def test_compiled_byte_constants_are_the_contract_keys():
    mods = [m for m in _twins("fanout") if m.__name__.endswith("_c")]
    if not mods:
        pytest.skip("compiled twins are not built")
    packed = mods[0].ENVELOPE_KEYS_PACKED
    want = [msgpack.packb(k) for k in ENVELOPE_FIELDS]
    want[0] = bytes([0x80 | len(ENVELOPE_FIELDS)]) + want[0]  # the fixmap header, then "seq"
    assert list(packed) == want


@SETTINGS
@given(st.lists(envelope, min_size=1, max_size=5))
def test_both_twins_write_what_the_contract_decodes(envs):
    for mod in _twins("fanout"):
        try:
            frames = mod.encode_envelopes(envs)
        except (OverflowError, UnicodeEncodeError, ValueError, TypeError):
            continue  # unencodable input: the twins agree on that (tests/speedups/test_fanout)
        for env, frame in zip(envs, frames):
            assert _key_order(frame) == list(ENVELOPE_FIELDS), mod.__name__
            got = wire.decode_frame(frame)
            assert isinstance(got, Envelope) and got.channel == env.channel
            if isinstance(env.seq, int) and isinstance(env.epoch, str):
                want = dataclasses.replace(
                    env, ts=float(env.ts or 0.0), formats=env.formats or {}, meta=env.meta or {}
                )
                assert _same(got, want), mod.__name__


def test_fan_out_frames_decode_to_the_contract(twins):
    ctx = zmq.Context.instance()
    pub, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        # a fresh name per run: closing is asynchronous in libzmq, so the previous twin's
        # socket may still hold a reused inproc name when the next one binds
        addr = f"inproc://contract-fanout-{uuid.uuid4().hex}"
        pub.bind(addr)
        sub.connect(addr)
        envs = [
            Envelope("a", 1, "e", {"http-stream": {"content": b"x"}}, "i1", None, {"k": "v"}, 1.5),
            Envelope("a", 2, "e", {}, None, "i1", {}, 0.0),
        ]
        assert twins.fan_out(pub, envs, {"a"}, {}) == (2, 0)
        frames = [sub.recv(), sub.recv()]
        assert [wire.decode_frame(f) for f in frames] == envs
        assert all(_key_order(f) == list(ENVELOPE_FIELDS) for f in frames)
    finally:
        pub.close(0)
        sub.close(0)


def test_make_envelope_sets_every_contract_field(twins):
    values = {
        "channel": "c",
        "seq": 7,
        "epoch": "e",
        "formats": {"f": 1},
        "id": "i",
        "prev_id": "p",
        "meta": {"m": "v"},
        "ts": 2.5,
    }
    env = twins.make_envelope(Envelope, *values.values())
    assert {f.name: getattr(env, f.name) for f in dataclasses.fields(Envelope)} == values


# -- items: the twins fill exactly the fields of broker.items.Item --------------------------------

item_values = st.fixed_dictionaries(
    {
        "channel": st.text(min_size=1, max_size=8).filter(lambda c: "\x00" not in c),
        "formats": st.fixed_dictionaries(
            {},
            optional={
                "http-stream": st.fixed_dictionaries({"content": st.text(max_size=5)}),
                "ws-message": st.fixed_dictionaries({"content": st.binary(max_size=5)}),
                "http-response": st.fixed_dictionaries({"body": st.text(max_size=5)}),
            },
        ),
    },
    optional={"id": st.text(max_size=5), "prev-id": st.text(max_size=5), "no-seq": st.booleans()},
)


@SETTINGS
@given(item_values)
def test_item_twins_agree_with_the_item_contract(value):
    fields = [f.name for f in dataclasses.fields(items.Item)]
    try:
        want = items.parse_item(dict(value), json=True)
    except Exception:  # noqa: BLE001 - the complete parser refuses: the twins must not accept
        want = None
    for mod in _twins("items"):
        got = mod.normalise_item(dict(value), None, True, items.Item)
        if got is None:
            continue  # left to the complete parser
        assert type(got) is items.Item and want is not None, mod.__name__
        assert {n: getattr(got, n) for n in fields} == {n: getattr(want, n) for n in fields}
