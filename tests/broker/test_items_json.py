"""The publish body's JSON through orjson: the same value and the same errors as the stdlib way.

``broker.items._json_loads`` decodes a body with ``orjson`` when it can and falls back to
``_json_loads_std`` (``json``'s C scanner, refusing unpaired surrogate escapes) otherwise; for
every input both must accept the same documents, decode them to the same values (types
included: an int stays an int, ``-0.0`` keeps its sign) and refuse the same ones.  Both
``digit_run`` twins (the guard that sends bodies with 64-bit-overflowing integers to the
stdlib) agree with a plain scan.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import items
from broker.errors import PublishError
from tests.speedups.test_fanout import _twins

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ERRORS = (ValueError, UnicodeDecodeError, RecursionError)


def _outcome(loads, data):
    try:
        return ("ok", _typed(loads(data)))
    except ERRORS as exc:
        return ("error", type(exc).__name__ if not isinstance(exc, ValueError) else "ValueError")


def _typed(v):
    """A value with its types spelled out (1 == 1.0 == True in Python; NaN != NaN)."""
    if isinstance(v, dict):
        return ("dict", [(_typed(k), _typed(x)) for k, x in v.items()])
    if isinstance(v, list):
        return ("list", [_typed(x) for x in v])
    if isinstance(v, float):
        return ("float", "nan" if math.isnan(v) else v.hex())
    return (type(v).__name__, v)


def _same(data):
    assert _outcome(items._json_loads, data) == _outcome(items._json_loads_std, data)


needs_orjson = pytest.mark.skipif(items._orjson_loads is None, reason="orjson not installed")

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010))
)
_docs = st.recursive(
    _scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=12,
).filter(lambda d: isinstance(d, (dict, list)))


def _encode(doc, ascii_only: bool) -> bytes:
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@needs_orjson
@SETTINGS
@given(_docs, st.booleans())
def test_documents_decode_alike(doc, ascii_only):
    _same(_encode(doc, ascii_only))


@needs_orjson
@SETTINGS
@given(_docs, st.booleans(), st.data())
def test_damaged_documents_decode_or_fail_alike(doc, ascii_only, data):
    body = bytearray(_encode(doc, ascii_only))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body)))
        what = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(
            st.sampled_from(
                b'0123456789-+.eE"\\u{}[],: \t\n\x00\x01\x7f\xc3\xa9\xed\xa0\x80\xef\xbb\xbf'
            )
        )
        if what == "insert":
            body[at:at] = bytes([byte])
        elif at < len(body):
            body[at : at + 1] = b"" if what == "delete" else bytes([byte])
    _same(bytes(body))


@needs_orjson
@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":2}',  # the last duplicate wins, both ways
        b"[NaN, Infinity, -Infinity]",  # orjson refuses: json accepts, as before
        b"[1e400, -1e400, 1e-400]",
        b"[18446744073709551616, -9223372036854775809, 18446744073709551615]",  # > 64 bits
        b"[123456789012345678901234567890, 1234567890123456789.5]",
        b'["\\ud800"]',
        b'{"\\udc00":1}',
        b'["\\ud83d\\ude00", "\\u00e9", "\\/", "\\u0000"]',
        b'["\xed\xa0\x80"]',  # UTF-8-encoded surrogate: not UTF-8
        b"\xef\xbb\xbf[1]",
        b"[" * 1100 + b"]" * 1100,  # past orjson's nesting limit
        b"[" * 5000 + b"]" * 5000,  # past the interpreter's
        b"[-0, -0.0, 0e0, 1E2, 0.1]",
        b'{"a":1} \n',
        b'{"a":1}x',
        b'{"a":1}\x00',
        b"[01]",
        b"[1.]",
        b'["\x01"]',
        b'{\x00"\x00}\x00',  # json.loads' encoding detection (UTF-16) is the stdlib's
    ],
)
def test_the_edges_of_both_parsers(data):
    _same(data)


@needs_orjson
def test_integers_beyond_64_bits_stay_exact_integers():
    big = 2**64
    (item,) = items.parse_http_publish(
        b'{"items":[{"channel":"c","id":"1","formats":{"http-response":'
        b'{"body":"x","code":%d}}}],"n":%d}' % (200, big)
    )
    assert item.channel == "c"
    assert items._json_loads(b'{"n":%d}' % big) == {"n": big}
    assert type(items._json_loads(b'{"n":%d}' % big)["n"]) is int


@needs_orjson
def test_the_usual_body_goes_through_orjson(monkeypatch):
    calls = []
    real = items._orjson_loads

    def spy(data):
        calls.append(data)
        return real(data)

    monkeypatch.setattr(items, "_orjson_loads", spy)
    body = b'{"items":[{"channel":"c","id":"17","formats":{"http-stream":{"content":"hi\\n"}}}]}'
    (item,) = items.parse_http_publish(body)
    assert calls == [body]
    assert item.formats["http-stream"]["content"] == b"hi\n"
    calls.clear()
    items.parse_http_publish(body.replace(b'"17"', b'"17","n":1234567890123456789'))
    assert calls == []  # a 19-digit run: the stdlib's way


def test_errors_keep_pushpins_message_either_way():
    for bad in (b"not json", b'{"items":[}', b'{"items":["\\ud800"]}', b"\xef\xbb\xbf{"):
        with pytest.raises(PublishError, match="Body is not valid JSON"):
            items.parse_http_publish(bad)


@SETTINGS
@given(
    st.binary(max_size=80) | st.text("0123456789a", max_size=80).map(str.encode),
    st.integers(-1, 25),
)
def test_digit_run_twins_agree_with_a_plain_scan(data, n):
    want = n <= 0 or re.search(b"[0-9]{%d}" % n, data) is not None
    for mod in _twins("items"):
        assert mod.digit_run(data, n) is want, mod.__name__
        assert mod.digit_run(memoryview(data), n) is want, mod.__name__
