"""GRIP instructs (edge/grip/instruct.py) and header helpers (edge/http1/headers.py) under hostile origins.

An origin may answer anything: parsing yields a ``Hold`` or an ``InstructError`` (502 to the
client), never another exception.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from broker.errors import InstructError, RemoteProtocolError
from edge.grip.instruct import grip_facts, is_grip_response, parse_instruct
from edge.http1 import headers as hdr
from tests.fuzz.strategies import FUZZ, header_value, nasty_number, nasty_text

grip_names = st.sampled_from(
    [
        "Grip-Hold",
        "Grip-Channel",
        "Grip-Timeout",
        "Grip-Keep-Alive",
        "Grip-Link",
        "Grip-Status",
        "Grip-Set-Meta",
        "Grip-Expose-Headers",
        "Grip-Previous-Id",
        "grip-hold",
        "Content-Type",
        "X-Other",
    ]
)
grip_values = st.one_of(
    header_value,
    nasty_number,
    st.sampled_from(
        [
            "stream",
            "response",
            "bogus",
            "application/grip-instruct",
            "text/plain; charset=utf-8",
            "\\x00; format=cstring",
            "abc; timeout=-1",
            "a; prev-id=1, b; filter=skip-self",
            "<http://evil.example/x>; rel=next",
            "</next>; rel=next; timeout=0",
            "<>; rel=gone",
            "<x",
            "200 OK",
            "999",
            "a; format=base64",
            "c; mode=interval; timeout=1",
            'x; y="unterminated',
        ]
    ),
    st.lists(nasty_text, max_size=5).map(", ".join),
)
headers = st.lists(st.tuples(grip_names, grip_values), max_size=8)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=True),
    st.text(max_size=10),
)
json_values = st.recursive(
    json_scalar,
    lambda c: st.one_of(
        st.lists(c, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "hold",
                    "mode",
                    "channels",
                    "name",
                    "prev-id",
                    "timeout",
                    "keep-alive",
                    "content",
                    "content-bin",
                    "response",
                    "code",
                    "reason",
                    "headers",
                    "body",
                    "body-bin",
                    "meta",
                    "x",
                    "filters",
                    "format",
                    "next",
                    "next-link",
                ]
            ),
            c,
            max_size=5,
        ),
    ),
    max_leaves=20,
)
bodies = st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()))


def _is_grip(headers: list[tuple[bytes, bytes]]) -> bool:
    """``is_grip_response`` as it was before ``grip_facts`` (kept here as the oracle)."""
    for k, v in headers:
        lk = k.lower()
        if lk.startswith(b"grip-"):
            return True
        if (
            lk == b"content-type"
            and v.split(b";", 1)[0].strip().lower() == b"application/grip-instruct"
        ):
            return True
    return False


def _streamish(raw: list[tuple[bytes, bytes]]) -> bool:
    """The scan ``grip_facts`` replaced in ``edge.grip.holds`` (kept here as the oracle)."""
    ctype, hold_value, has_next = b"", None, False
    for k, v in raw:
        lk = k.lower()
        if lk == b"content-type":
            if not ctype:
                ctype = v
        elif lk == b"grip-hold":
            if hold_value is None:
                hold_value = v
        elif lk == b"grip-link" and b"next" in v:
            has_next = True
    is_json = ctype.split(b";", 1)[0].strip() == b"application/grip-instruct"
    return not is_json and (hold_value == b"stream" or (hold_value is None and has_next))


@FUZZ
@given(headers)
def test_grip_facts_answers_as_the_three_scans_it_replaces(hs):
    bhs = [(k.encode("latin-1"), v.encode("utf-8", "surrogatepass")) for k, v in hs]
    first_hold = next((v for k, v in bhs if k.lower() == b"grip-hold"), None)
    assert grip_facts(bhs) == (_is_grip(bhs), first_hold, _streamish(bhs))
    assert is_grip_response(bhs) is _is_grip(bhs)


@FUZZ
@given(st.integers(-5, 1200), st.text(max_size=20), headers, bodies)
def test_parse_instruct_never_crashes(code, reason, hs, body):
    # as the edge hands them over: raw header bytes decoded as latin-1
    bhs = [(k.encode("latin-1"), v.encode("utf-8", "surrogatepass")) for k, v in hs]
    is_grip_response(bhs)
    hs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in bhs]
    try:
        hold = parse_instruct(code, reason, hs, body, prefix="p-", extra_channels=("x",))
    except InstructError as exc:
        assert exc.status == 502 and isinstance(exc.reason, str)
        return
    assert hold.mode in (None, "response", "stream")
    for ch in hold.channels:
        assert ch.name.startswith("p-") or ch.name == "x"


@FUZZ
@given(header_value, st.booleans())
def test_header_param_parsing(value, parse_first):
    try:
        hdr.split_list(value)
        hdr.parse_params(value, parse_first)
    except hdr.ParamError:
        pass
    hs = [("Grip-Channel", value), ("grip-channel", value)]
    try:
        hdr.all_params(hs, "Grip-Channel", parse_first)
    except (hdr.ParamError, RemoteProtocolError):
        pass
    hdr.clean_response_headers(hs)


def test_deeply_nested_instruct_json_is_a_clear_error():
    for doc in (b"[" * 100_000, b'{"hold":' * 50_000):
        try:
            parse_instruct(200, "OK", [("Content-Type", "application/grip-instruct")], doc)
        except InstructError:
            pass
