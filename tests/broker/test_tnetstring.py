"""broker.ingest.tnetstring: encode/decode tables, agreement with the tnetstring3 package, bad input."""

from __future__ import annotations

import pytest
import tnetstring as tnet3  # reference implementation, tests only
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import RemoteProtocolError
from broker.ingest import tnetstring

ENCODE = [
    (b"", b"0:,"),
    (b"hello", b"5:hello,"),
    ("h\u00e9", b"3:h\xc3\xa9,"),
    (0, b"1:0#"),
    (-42, b"3:-42#"),
    (12345678901234567890, b"20:12345678901234567890#"),
    (1.5, b"3:1.5^"),
    (True, b"4:true!"),
    (False, b"5:false!"),
    (None, b"0:~"),
    ([], b"0:]"),
    ([1, b"a"], b"8:1:1#1:a,]"),
    ({}, b"0:}"),
    ({b"k": b"v"}, b"8:1:k,1:v,}"),
    ({"k": [None]}, b"10:1:k,3:0:~]}"),
]


@pytest.mark.parametrize("value,encoded", ENCODE)
def test_dumps(value, encoded):
    assert tnetstring.dumps(value) == encoded


@pytest.mark.parametrize("value,encoded", ENCODE)
def test_loads_roundtrip(value, encoded):
    expected = value.encode() if isinstance(value, str) else value
    if isinstance(value, dict):
        expected = {(k.encode() if isinstance(k, str) else k): v for k, v in value.items()}
    assert tnetstring.loads(encoded) == expected


def test_pop_returns_offset():
    data = b"1:a,2:bc,"
    v, off = tnetstring.pop(data)
    assert (v, off) == (b"a", 4)
    assert tnetstring.pop(data, off) == (b"bc", 9)


BAD = [
    (b"", "empty"),
    (b"5", "missing ':'"),
    (b"x:abc,", "not a number"),
    (b"05:hello,", "leading zero"),
    (b"10:abc,", "truncated"),
    (b"3:abc", "truncated"),
    (b"3:abc?", "unknown type tag"),
    (b"3:a1b#", "bad integer"),
    (b"0:#", "bad integer"),
    (b"3:abc^", "bad float"),
    (b"3:yes!", "bad boolean"),
    (b"1:x~", "null with data"),
    (b"4:1:a,}", "dict key without value"),
    (b"8:1:1#1:a,}", "dict key is not a string"),
    (b"4:1:a,]x", "trailing data"),
    (b"6:3:ab,]", "truncated"),
    (b"12345678901:a,", "missing ':'"),
]


@pytest.mark.parametrize("data,why", BAD)
def test_malformed(data, why):
    with pytest.raises(RemoteProtocolError, match=why):
        tnetstring.loads(data)


def test_deep_nesting_is_rejected_not_recursion_error():
    data = b"0:]"
    for _ in range(200):
        data = b"%d:%s]" % (len(data), data)
    with pytest.raises(RemoteProtocolError, match="nested too deeply"):
        tnetstring.loads(data)


def test_unencodable():
    with pytest.raises(ValueError):
        tnetstring.dumps(object())
    with pytest.raises(ValueError):
        tnetstring.dumps({1: b"x"})


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.binary(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@given(values)
def test_roundtrip_and_agreement_with_tnetstring3(value):
    encoded = tnetstring.dumps(value)
    assert tnetstring.loads(encoded) == value
    assert tnet3.loads(encoded) == value
    assert tnetstring.loads(tnet3.dumps(value)) == value


@given(st.binary(max_size=40))
def test_garbage_never_raises_anything_else(data):
    try:
        tnetstring.loads(data)
    except RemoteProtocolError:
        pass
