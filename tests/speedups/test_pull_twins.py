"""Both twins of ``parse_j_frames`` (a PULL read's frames): the items and rejection reasons
``broker.items.parse_pull_frame`` gives frame by frame, in order, whichever frames the fast
loop takes and whichever it hands over."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.items import (
    LONG_DIGITS,
    MAX_ITEM_BYTES,
    Item,
    _orjson_loads,
    _scan_once,
    parse_pull_frame,
)
from tests.broker.test_ingest_fast import SETTINGS, _j_frame, items, odd
from tests.speedups.test_fanout import _twins

_USUAL = {"channel": "c", "id": "1", "formats": {"http-stream": {"content": "hi\n"}}}
_TEXT = json.dumps(_USUAL).encode()

# frames the fast loop must hand over (or read right): every one parsed as parse_pull_frame
SPECIAL = [
    b"J" + _TEXT,
    b"J" + _TEXT + b" \r\n\t",  # JSON whitespace after the object
    b"J" + _TEXT + b" x",  # extra data: an error
    b"J" + _TEXT.replace(b'"hi', b'"\\ud800hi'),  # a lone surrogate escape: an error
    b"J" + _TEXT.replace(b'"hi', b'"\\uD83D\\uDE00hi'),  # a pair: fine (the slow path)
    b"J" + _TEXT.replace(b'"hi', b'"\\u00e9hi'),  # an escape, not a surrogate: fast
    b"J" + _TEXT.replace(b'"hi', b'"\\\\ud800hi'),  # an escaped backslash, then text
    b"J" + _TEXT.replace(b"hi", b"\xed\xa0\x80"),  # a UTF-8-encoded surrogate
    b"J" + _TEXT.replace(b"hi", b"\xff"),  # not UTF-8
    b"J" + _TEXT.decode().encode("utf-16-le"),  # another encoding (NUL in bytes 2-4)
    b"J{\x00\x00\x00",
    b"J{",
    b"J{}",
    b"J[]",
    b"J" + b"[" * 5000 + b"]" * 5000,  # deeper than the scanner's recursion
    b'J{"channel": "c", "formats": {"http-stream": {"content": "' + b"x" * 70000 + b'"}}}',
    b"J",
    b"X",
    b"",
    b"M" + msgpack.packb(_USUAL),
    b"B" + msgpack.packb([_USUAL, {"channel": 1}]),
    b"T" + b"0:}",
    b"J" + _TEXT.replace(b'"1"', b"18446744073709551616"),  # beyond 64 bits: the scanner's
    b"J" + _TEXT.replace(b'"1"', b"1e400"),  # orjson refuses, json accepts (inf): a bad id
    b"J" + _TEXT.replace(b'"1"', b"NaN"),
    b"J" + _TEXT.replace(b'"hi', b'"\\u00e9\\/hi'),  # escapes: an accent, a solidus
    b"J" + _TEXT + b"\x00",
    b"J" + b"[" * 1100 + b"]" * 1100,  # past orjson's nesting limit
    b"J" + _TEXT[:-1] + b', "channel": "d"}',  # a repeated key: the last one, both ways
]
# each twin without orjson, and with it (broker.items passes it when installed)
LOADS = [None] + ([_orjson_loads] if _orjson_loads is not None else [])


def _parse(mod, frames, loads, max_bytes=MAX_ITEM_BYTES, slow=parse_pull_frame):
    return mod.parse_j_frames(frames, _scan_once, Item, max_bytes, slow, loads, LONG_DIGITS)


def _expected(frames):
    got_items, got_errors = [], []
    for frame in frames:
        i, e = parse_pull_frame(frame)
        got_items += i
        got_errors += e
    return got_items, got_errors


def _visible(result):
    found, reasons = result
    return [
        (repr(i), msgpack.packb([i.formats, i.meta], use_bin_type=True)) for i in found
    ], reasons


@pytest.mark.parametrize("loads", LOADS, ids=lambda f: "scanner" if f is None else "orjson")
@pytest.mark.parametrize("mod", _twins("items"), ids=lambda m: m.__name__)
@pytest.mark.parametrize("frame", SPECIAL, ids=range(len(SPECIAL)))
def test_special_frames(mod, frame, loads):
    got = _parse(mod, [frame], loads)
    assert _visible(got) == _visible(_expected([frame]))


@pytest.mark.parametrize("loads", LOADS, ids=lambda f: "scanner" if f is None else "orjson")
@pytest.mark.parametrize("mod", _twins("items"), ids=lambda m: m.__name__)
@SETTINGS
@given(
    st.lists(st.one_of(st.one_of(items, odd).map(_j_frame), st.sampled_from(SPECIAL)), max_size=8)
)
def test_any_frames_parse_as_each_frame_does(mod, loads, frames):
    got = _parse(mod, frames, loads)
    assert _visible(got) == _visible(_expected(frames))


@pytest.mark.skipif(_orjson_loads is None, reason="orjson not installed")
@pytest.mark.parametrize("mod", _twins("items"), ids=lambda m: m.__name__)
def test_orjson_reads_the_usual_frame_and_not_a_long_number(mod):
    seen = []

    def spy(data):
        seen.append(bytes(data))
        return _orjson_loads(data)

    usual = b"J" + _TEXT
    long_number = b"J" + _TEXT.replace(b'"1"', b'"1", "n": 1234567890123456789')
    (one, two), errors = _parse(mod, [usual, long_number], spy)
    assert errors == [] and one.id == "1" and two.id == "1"
    assert seen == [_TEXT]  # the 19-digit frame: the scanner's way


@pytest.mark.parametrize("mod", _twins("items"), ids=lambda m: m.__name__)
def test_the_size_bound_is_the_callers(mod):
    frame = _j_frame({"channel": "c", "formats": {"http-stream": {"content": "four"}}})
    got = mod.parse_j_frames([frame, frame], _scan_once, Item, 3, lambda f: ([], ["slow"]))
    assert got == ([], ["slow", "slow"])  # over the bound: handed over, each in its turn
    got = mod.parse_j_frames([frame], _scan_once, Item, 4, lambda f: ([], ["slow"]))
    assert [i.channel for i in got[0]] == ["c"] and got[1] == []
