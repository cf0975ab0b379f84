"""The ingest fast paths agree with the complete code they shortcut (no sockets).

* ``_speedups`` ``normalise_item`` (both twins) returns exactly what ``broker.items``' complete
  parser returns for the usual item shape, and None (hand over) for everything else: so every
  error keeps Pushpin's message.
* gripcast's ``M``/``B`` PULL frames (msgpack items).
* ``Sequencer.add_many`` == ``add`` item by item; ``MemoryHistory.append_many`` == ``append``
  item by item; ``wire.encode_envelopes`` == ``encode_envelope`` each.
"""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _speedups
from broker import sequencer, wire
from broker.errors import PublishError
from broker.history import MemoryHistory
from broker.ingest import tnetstring
from broker.items import (
    MAX_ITEM_BYTES,
    Item,
    _parse_item_full,
    parse_item,
    parse_pull_frame,
    parse_pull_frames,
    parse_zmq_item,
)
from broker.sequencer import Sequencer
from tests.speedups.test_fanout import _twins

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _twin_modules():
    mods = [_speedups.twin("items", False)]
    try:
        mods.append(_speedups.twin("items", True))
    except ImportError:
        pass
    return mods


def outcome(fn, *args, **kw):
    """(item fields with key order made visible, or the error) of one parse."""
    try:
        item = fn(*args, **kw)
    except PublishError as exc:
        return ("error", exc.reason)
    return ("item", item, msgpack.packb([item.formats, item.meta], use_bin_type=True))


def to_tnet(v):
    if isinstance(v, dict):
        return {k.encode() if isinstance(k, str) else k: to_tnet(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_tnet(x) for x in v]
    if isinstance(v, str):
        return v.encode("utf-8", "surrogatepass")
    return v


# -- the usual shape, and everything near it ---------------------------------------------------

long_text = st.builds(lambda c, n: c * n, st.sampled_from("xé"), st.integers(250, 300))
text = st.one_of(st.text(max_size=8), st.sampled_from(["", "a", "\x00"]), long_text)
odd = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 1000),
    st.floats(allow_nan=False),
    st.binary(max_size=4),
    text,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
maybe_odd = st.one_of(text, text, text, odd)
action = st.one_of(
    st.none(),
    st.just("send"),
    st.just("send"),
    st.sampled_from(["close", "hint", "refresh", "", "bogus"]),
    odd,
)


def fmt(payload_key, extra_keys):
    return st.fixed_dictionaries(
        {payload_key: st.one_of(text, text, st.binary(max_size=6), odd)},
        optional={"action": action, **{k: odd for k in extra_keys}},
    )


hs = fmt("content", ["content-bin", "content-filters", "x"])
hr = fmt("body", ["code", "reason", "headers", "body-bin", "body-patch", "content-filters"])
ws = fmt("content", ["type", "content-bin", "content-filters", "code"])
formats = st.fixed_dictionaries(
    {},
    optional={
        "http-stream": st.one_of(hs, hs, odd),
        "http-response": st.one_of(hr, odd),
        "ws-message": st.one_of(ws, odd),
    },
)
good_text = st.one_of(st.text(min_size=1, max_size=6), long_text)
payload = st.one_of(st.text(max_size=6), st.binary(max_size=6))
usual_formats = st.fixed_dictionaries(
    {},
    optional={
        "http-stream": st.fixed_dictionaries(
            {"content": payload}, optional={"action": st.just("send")}
        ),
        "http-response": st.fixed_dictionaries(
            {"body": payload}, optional={"action": st.just("send")}
        ),
        "ws-message": st.fixed_dictionaries(
            {"content": payload}, optional={"action": st.just("send")}
        ),
    },
)
usual = st.fixed_dictionaries(
    {"channel": good_text, "formats": usual_formats},
    optional={
        "id": st.text(max_size=3),
        "prev-id": st.text(max_size=3),
        "meta": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
        "no-seq": st.booleans(),
    },
)
option_keys = st.sampled_from(
    [
        "channel",
        "id",
        "prev-id",
        "formats",
        "meta",
        "size",
        "no-seq",
        "http-stream",
        "action",
        "content",
        "content-bin",
        "body",
        "body-bin",
        "content-filters",
        "type",
        "code",
        "reason",
        "headers",
        "body-patch",
    ]
)


@st.composite
def near_usual(draw):
    """A usual item with up to two keys (top level or in a format) set to something else."""
    value = draw(usual)
    for _ in range(draw(st.integers(0, 2))):
        vf = value.get("formats")
        targets = [value] + (
            [f for f in vf.values() if isinstance(f, dict)] if isinstance(vf, dict) else []
        )
        target = draw(st.sampled_from(targets))
        target[draw(option_keys)] = draw(odd)
    if draw(st.integers(0, 5)) == 0:  # the legacy shape
        value.update(value.pop("formats") if isinstance(value.get("formats"), dict) else {})
    return value


items = st.one_of(
    near_usual(),
    near_usual(),
    near_usual(),
    st.fixed_dictionaries(
        {"channel": maybe_odd, "formats": st.one_of(formats, formats, formats, odd)},
        optional={
            "id": maybe_odd,
            "prev-id": maybe_odd,
            "no-seq": st.one_of(st.booleans(), odd),
            "meta": st.one_of(
                st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3), odd
            ),
            "size": odd,
        },
    ),
    # the legacy shape: formats on the item itself
    st.fixed_dictionaries(
        {"channel": maybe_odd},
        optional={
            "http-stream": st.one_of(hs, st.none(), odd),
            "http-response": st.one_of(hr, st.none()),
            "ws-message": ws,
            "id": maybe_odd,
        },
    ),
)


@SETTINGS
@given(items, st.booleans())
def test_fast_path_agrees_with_the_complete_parser(value, as_json):
    if not as_json:
        value = to_tnet(value)
    full = outcome(_parse_item_full, value, json=as_json)
    results = []
    for mod in _twin_modules():
        fast = mod.normalise_item(value, None, as_json, Item)
        results.append(fast)
        if fast is not None:
            assert full[0] == "item", (mod.__name__, value, full)
            assert outcome(lambda fast=fast: fast) == full, mod.__name__
    assert len({r is None for r in results}) == 1  # both twins take the same decision
    assert outcome(parse_item, value, json=as_json) == full


@SETTINGS
@given(items, st.sampled_from(["sub-channel", "", "a\x00b"]))
def test_fast_path_agrees_with_a_given_channel(value, channel):
    full = outcome(_parse_item_full, value, channel=channel, json=True)
    assert outcome(parse_item, value, channel=channel, json=True) == full


def test_usual_shapes_take_the_fast_path(twins):
    item = twins.normalise_item(
        {
            "channel": "c",
            "id": "1",
            "formats": {
                "http-stream": {"content": "hi"},
                "ws-message": {"content": b"\x00\xff"},
                "http-response": {"body": "b", "action": "send"},
            },
            "meta": {"user": "u"},
        },
        None,
        True,
        Item,
    )
    assert item == Item(
        channel="c",
        id="1",
        meta={"user": "u"},
        formats={
            "http-response": {
                "action": "send",
                "code": 200,
                "reason": "OK",
                "headers": [],
                "body": b"b",
                "body-patch": None,
            },
            "http-stream": {"action": "send", "content": b"hi"},
            "ws-message": {
                "action": "send",
                "type": "text",
                "content": b"\x00\xff",
                "code": None,
                "reason": "",
            },
        },
    )
    tnet = twins.normalise_item(
        {b"channel": b"c", b"prev-id": b"", b"http-stream": {b"content": b"x"}}, None, False, Item
    )
    assert tnet == Item(
        channel="c", prev_id=None, formats={"http-stream": {"action": "send", "content": b"x"}}
    )


@pytest.mark.parametrize(
    "value",
    [
        {"channel": "c", "formats": {"http-stream": {"content": "x", "content-filters": []}}},
        {"channel": "c", "formats": {"http-stream": {"action": "close"}}},
        {"channel": "c", "formats": {"ws-message": {"content": "x", "type": "binary"}}},
        {"channel": "c", "formats": {"http-response": {"body": "x", "code": 404}}},
        {"channel": "c", "formats": {}},
        {"channel": "", "formats": {"http-stream": {"content": "x"}}},
        {"channel": "a\x00", "formats": {"http-stream": {"content": "x"}}},
        {"channel": "c", "formats": {"http-stream": {"content": 5}}},
        {"channel": "c", "formats": {"http-stream": {"content": "x"}}, "size": 3},
        {"channel": "c", "formats": {"http-stream": {"content": "x"}}, "no-seq": 1},
        {"channel": b"\xff", "formats": {"http-stream": {"content": "x"}}},
    ],
)
def test_unusual_items_go_to_the_complete_parser(twins, value):
    assert twins.normalise_item(value, None, True, Item) is None


@pytest.mark.parametrize(
    ("item_id", "fast"),
    [
        ("plain-id", True),
        ("x" * 256, True),  # MAX_FAST_ID_CHARS
        ("é☃\U0001f600", True),  # non-ASCII: the compiled check reads code points
        ("\x20~", True),  # the bounds of the printable range
        ("x" * 257, False),
        ("a\x00", False),
        ("a\tb", False),
        ("\x1f", False),
        ("a\x7f", False),
        ("\U0001f600\x7f", False),
    ],
)
@pytest.mark.parametrize("key", ["id", "prev-id"])
def test_ids_the_complete_parser_might_refuse_leave_the_fast_path(twins, item_id, fast, key):
    value = {"channel": "c", key: item_id, "formats": {"http-stream": {"content": "x"}}}
    item = twins.normalise_item(value, None, True, Item)
    assert (item is not None) is fast
    if fast:
        assert item == parse_item(value, json=True)


def test_parse_items_inline_path_is_parse_item(monkeypatch):
    # parse_items inlines parse_item for the usual item: same items, same errors (413 over
    # MAX_ITEM_BYTES, Pushpin's message for a bad one)
    from broker import items as items_mod

    values = [
        {"channel": "c", "id": "1", "formats": {"http-stream": {"content": "x"}}},
        {"channel": "c", "formats": {"http-stream": {"action": "close"}}},  # complete parser
    ]
    assert items_mod.parse_items(values, json=True) == [parse_item(v, json=True) for v in values]
    monkeypatch.setattr(items_mod, "MAX_ITEM_BYTES", 3)
    big = [{"channel": "c", "formats": {"http-stream": {"content": "four"}}}]
    assert outcome(items_mod.parse_items, big, json=True) == outcome(parse_item, big[0], json=True)
    assert outcome(items_mod.parse_items, big, json=True)[0] == "error"


def test_error_messages_are_unchanged():
    cases = {
        b'J{"channel":"c","formats":{"http-stream":{"content":5}}}': "'http-stream' contains 'content' with wrong type",
        b'J{"channel":"","formats":{"http-stream":{"content":"x"}}}': "publish item object contains 'channel' with invalid value (empty)",
        b'J{"formats":{"http-stream":{"content":"x"}}}': "publish item object does not contain 'channel'",
        b'J{"channel":"c","formats":{}}': "no formats specified",
        b"J[1]": "received message with invalid format (not a valid json object)",
    }
    for frame, reason in cases.items():
        with pytest.raises(PublishError) as info:
            parse_zmq_item(frame)
        assert info.value.reason == reason


# -- msgpack frames: M (one item) and B (a list) ---------------------------------------------


def test_m_frame_is_one_msgpack_item():
    item = {"channel": "c", "id": "7", "formats": {"http-stream": {"content": b"\x00raw"}}}
    parsed = parse_zmq_item(b"M" + msgpack.packb(item, use_bin_type=True))
    assert parsed == Item(
        channel="c", id="7", formats={"http-stream": {"action": "send", "content": b"\x00raw"}}
    )
    # the same item as J + JSON (text content) gives the same Item
    assert (
        parse_zmq_item(
            b"J" + json.dumps({**item, "formats": {"http-stream": {"content": "\x00raw"}}}).encode()
        )
        == parsed
    )
    # and the complete parser's options work too (base64 content-bin, as in JSON)
    ws = {"channel": "c", "formats": {"ws-message": {"content-bin": "aGk="}}}
    assert (
        parse_pull_frame(b"M" + msgpack.packb(ws))[0][0].formats["ws-message"]["content"] == b"hi"
    )


def test_b_frame_items_stand_alone():
    good = {"channel": "c", "formats": {"http-stream": {"content": "1"}}}
    bad = {"channel": "c", "formats": {"http-stream": {"content": 5}}}
    frame = b"B" + msgpack.packb([good, bad, 3, {**good, "id": "x"}])
    parsed, errors = parse_pull_frame(frame)
    assert [i.id for i in parsed] == [None, "x"]
    assert errors == [
        "'http-stream' contains 'content' with wrong type",
        "received message with invalid format (not a valid msgpack map)",
    ]
    assert parse_pull_frame(b"B" + msgpack.packb([])) == ([], [])


@pytest.mark.parametrize(
    "frame,reason",
    [
        (b"M\xc1", "received message with invalid format (msgpack parse failed)"),
        (b"M", "received message with invalid format (msgpack parse failed)"),
        (b"M\x93\x01\x02\x03", "received message with invalid format (not a valid msgpack map)"),
        (b"M\x81\x01\x02", "received message with invalid format (msgpack parse failed)"),
        (b"B\xc1", "received message with invalid format (msgpack parse failed)"),
        (b"B\x81\xa1a\x01", "received message with invalid format (not a valid msgpack array)"),
        (b"B\x91\x81\xa1a\xa1\xff", "received message with invalid format (msgpack parse failed)"),
    ],
)
def test_bad_msgpack_frames_are_rejected_with_a_reason(frame, reason):
    assert parse_pull_frame(frame) == ([], [reason])


def test_pushpin_framings_are_unchanged_by_the_new_prefixes():
    item = {"channel": "c", "formats": {"http-stream": {"content": "x"}}}
    want = Item(channel="c", formats={"http-stream": {"action": "send", "content": b"x"}})
    # a bare tnetstring starts with a digit, so neither M nor B can be mistaken for one
    bare = tnetstring.dumps(item)
    assert bare[:1].isdigit()
    assert parse_pull_frame(bare) == ([want], [])
    assert parse_pull_frame(b"T" + bare) == ([want], [])
    assert parse_pull_frame(b"J" + json.dumps(item).encode()) == ([want], [])
    assert parse_pull_frame(b"X") == (
        [],
        ["received message with invalid format (tnetstring parse failed)"],
    )


def _pull_reference(frame: bytes) -> tuple[list[Item], list[str]]:
    """What a ``J`` frame gave before its one-step path: ``parse_zmq_item`` (decode, then the
    complete rules)."""
    try:
        return [parse_zmq_item(frame)], []
    except PublishError as exc:
        return [], [exc.reason]


def _j_frame(value) -> bytes:
    return b"J" + json.dumps(value, default=lambda b: b.decode("latin-1")).encode()


@SETTINGS
@given(st.one_of(items, odd))
def test_j_frames_parse_as_the_complete_path_does(value):
    frame = _j_frame(value)
    got, want = parse_pull_frame(frame), _pull_reference(frame)
    assert got[1] == want[1]
    assert [outcome(lambda i=i: i) for i in got[0]] == [outcome(lambda i=i: i) for i in want[0]]


@pytest.mark.parametrize(
    "frame",
    [
        b"J",
        b"J{",
        b'J{"channel": "c"',
        b"J[1, 2]",
        b'J{"channel": "\\ud800", "formats": {"http-stream": {"content": "x"}}}',
        b'J{"channel": "c", "formats": {"http-stream": {"content": "x"}}} trailing',
        b'J{"channel": "c", "formats": {}}',
        b"J"
        + json.dumps(
            {"channel": "c", "formats": {"http-stream": {"content": "x" * (MAX_ITEM_BYTES + 1)}}}
        ).encode(),
    ],
)
def test_odd_j_frames_keep_their_errors(frame):
    assert parse_pull_frame(frame) == _pull_reference(frame)
    assert parse_pull_frame(frame)[1]  # each refused, with its reason


# -- sequencer, history, encoding: the batch paths == the one-by-one paths ------------------------

seq_items = st.lists(
    st.builds(
        lambda ch, i, p, ns: Item(channel=ch, formats={}, id=i, prev_id=p, no_seq=ns),
        st.sampled_from(["a", "b"]),
        st.one_of(st.none(), st.sampled_from("123456")),
        st.one_of(st.none(), st.none(), st.sampled_from("123456")),
        st.sampled_from([False, False, False, True]),
    ),
    max_size=40,
)


@SETTINGS
@given(st.lists(seq_items, max_size=5), st.integers(1, 4), st.integers(1, 3))
def test_sequencer_add_many_equals_add_one_by_one(batches, pending_max, id_cache_max):
    kw = dict(pending_max=pending_max, id_cache_max=id_cache_max * 4)
    one, many = Sequencer(**kw), Sequencer(**kw)
    for n, batch in enumerate(batches):
        now = float(n * 30)
        expected = [r for item in batch for r in one.add(item, now)]
        assert many.add_many(batch, now) == expected
        assert many.statistics() == one.statistics()
        now += 6
        assert many.poll(now) == one.poll(now)
        assert dict(many._last_ids) == dict(one._last_ids)


@SETTINGS
@given(
    st.lists(seq_items, max_size=6),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from([60.0, 0.0]),
)
def test_sequence_run_twins_equal_add_one_by_one(batches, pending_max, id_cache_max, last_max, ttl):
    """Each twin of ``sequence_run`` under ``add_many``: the same items released, counters,
    id cache (rotations at a tiny ``id_cache_max``), LRU of last ids (evictions at a tiny
    ``last_ids_max``) and waiting items as ``add`` item by item; ttl 0 turns dedupe off."""
    kw = dict(
        pending_max=pending_max,
        id_cache_max=id_cache_max * 2,
        last_ids_max=last_max,
        id_cache_ttl_s=ttl,
    )
    for mod in _twins("sequence"):
        one, many = Sequencer(**kw), Sequencer(**kw)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sequencer, "sequence_run", mod.sequence_run)
            for n, batch in enumerate(batches):
                now = float(n * 20)
                expected = [r for item in batch for r in one.add(item, now)]
                assert many.add_many(batch, now) == expected, mod.__name__
                assert many.statistics() == one.statistics(), mod.__name__
                assert list(many._last_ids.items()) == list(one._last_ids.items())
                assert many._ids == one._ids and many._ids_old == one._ids_old
                assert many._new_until == one._new_until
                now += 6
                assert many.poll(now) == one.poll(now)


@SETTINGS
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c"]), st.one_of(st.none(), st.sampled_from("xyz"))
            ),
            max_size=12,
        ),
        max_size=6,
    ),
    st.integers(1, 5),
    st.integers(1, 2),
)
def test_history_append_many_equals_append_one_by_one(batches, max_items, max_channels):
    epochs = iter(range(10**6))
    kw = dict(
        max_items=max_items,
        max_age_s=10.0,
        max_channels=max_channels,
        new_epoch=lambda: f"e{next(epochs)}",
    )
    one = MemoryHistory(**kw)
    epochs2 = iter(range(10**6))
    many = MemoryHistory(**{**kw, "new_epoch": lambda: f"e{next(epochs2)}"})
    for n, batch in enumerate(batches):
        now = n * 4.0
        items = [Item(channel=ch, formats={}, id=i) for ch, i in batch]
        assert many.append_many(items, now) == [one.append(item, now) for item in items]
        assert many.statistics() == one.statistics()
        for ch in "abc":
            assert many.replay(ch, now=now) == one.replay(ch, now=now)


def test_encode_envelopes_equals_encode_envelope():
    envs = [
        wire.Envelope(
            channel=ch,
            seq=n,
            epoch="e",
            formats={"http-stream": {"action": "send", "content": b"x"}},
            id=str(n) if n % 2 else None,
            meta={"k": "v"},
            ts=1.5,
        )
        for n, ch in enumerate(["a", "b", "a", "é"])
    ]
    assert wire.encode_envelopes(envs) == [wire.encode_envelope(e) for e in envs]
    assert wire.encode_envelopes([]) == []


# -- tnetstring decoding: both twins, same values and same reasons --------------------------------

tnet_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.binary(max_size=6),
        st.floats(allow_nan=False),
    ),
    lambda c: st.one_of(
        st.lists(c, max_size=3), st.dictionaries(st.binary(max_size=3), c, max_size=3)
    ),
    max_leaves=12,
)


def _tnet_outcome(mod, data, offset=0):
    try:
        return ("ok", mod.tnet_pop(data, offset))
    except ValueError as exc:
        return ("error", str(exc))


def _tnet_twins():
    mods = [_speedups.twin("tnetstring", False)]
    try:
        mods.append(_speedups.twin("tnetstring", True))
    except ImportError:
        pass
    return mods


@SETTINGS
@given(tnet_values, st.data())
def test_tnetstring_twins_agree(value, data):
    encoded = tnetstring.dumps(value)
    # and damaged: a byte changed, cut short, or junk appended
    i = data.draw(st.integers(0, len(encoded)))
    damaged = data.draw(
        st.sampled_from(
            [
                encoded,
                encoded[:i],
                encoded[:i] + data.draw(st.binary(min_size=1, max_size=2)) + encoded[i + 1 :],
                encoded + b"1:x,",
            ]
        )
    )
    results = [_tnet_outcome(m, damaged) for m in _tnet_twins()]
    assert all(r == results[0] for r in results), results
    assert _tnet_outcome(_speedups.twin("tnetstring", False), encoded) == (
        "ok",
        (tnetstring.loads(encoded), len(encoded)),
    )


@SETTINGS
@given(st.binary(max_size=24), st.integers(0, 4))
def test_tnetstring_twins_agree_on_garbage(data, offset):
    offset = min(offset, len(data))
    results = [_tnet_outcome(m, data, offset) for m in _tnet_twins()]
    assert all(r == results[0] for r in results), results


def test_tnetstring_twin_decodes_and_rejects(twins):
    assert twins.tnet_pop(b"8:1:k,1:v,}xx") == ({b"k": b"v"}, 11)
    assert twins.tnet_pop(b"1:a,2:bc,", 4) == (b"bc", 9)
    with pytest.raises(ValueError, match="unknown type tag '\\?'"):
        twins.tnet_pop(b"3:abc?")
    deep = b"0:]"
    for _ in range(70):
        deep = b"%d:%b]" % (len(deep), deep)
    with pytest.raises(ValueError, match="nested too deeply"):
        twins.tnet_pop(deep)
    with pytest.raises(ValueError, match="offset out of range"):
        twins.tnet_pop(b"0:~", 4)


def test_tnetstring_float_syntax_is_pythons_in_both_twins():
    """Cython inlines float() with a parser that accepts "1.5e+_6"; the twins must not differ."""
    for mod in _tnet_twins():
        assert _tnet_outcome(mod, b"7:1.5e+_6^") == ("error", "tnetstring: bad float")
        assert _tnet_outcome(mod, b"5:1.5e6^") == ("ok", (1.5e6, 8))


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.one_of(items, odd).map(_j_frame),
            st.sampled_from([b"J", b"J{", b"J[]", b"X", b"B\x90", b"M\x80", b"J" + b"\x00" * 3]),
            st.builds(
                lambda n: _j_frame({"channel": "c", "formats": {"http-stream": {"content": n}}}),
                st.sampled_from(["x", "y" * 40]),
            ),
        ),
        max_size=6,
    )
)
def test_pull_frames_parse_as_each_frame_does(frames):
    # parse_pull_frames' inline J path gives what parse_pull_frame gives frame by frame,
    # in order (items and reasons)
    items_, errors = [], []
    for frame in frames:
        got = parse_pull_frame(frame)
        items_ += got[0]
        errors += got[1]
    batch = parse_pull_frames(frames)
    assert batch[1] == errors
    assert [outcome(lambda i=i: i) for i in batch[0]] == [outcome(lambda i=i: i) for i in items_]


def test_pull_frames_size_bound_is_parse_pull_frames(monkeypatch):
    from broker import items as items_mod

    monkeypatch.setattr(items_mod, "MAX_ITEM_BYTES", 3)
    frame = _j_frame({"channel": "c", "formats": {"http-stream": {"content": "four"}}})
    assert parse_pull_frames([frame]) == parse_pull_frame(frame)
    assert parse_pull_frames([frame])[1][0].endswith("bytes")  # a 413's reason
