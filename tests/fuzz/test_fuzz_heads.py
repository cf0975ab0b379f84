"""Every response head the edge writes toward a client is valid HTTP, whatever the source
(issue 11 item 3): a published ``http-response`` (code, reason, headers, body-patch), an origin's
GRIP instruction (``Grip-Status``, JSON ``response`` with reason and headers), a passed-through
origin response, a WebSocket accept with the origin's headers.  Checked: one head, a status
line ``HTTP/1.x DDD reason-phrase``, each field ``token: field-value``, nothing after the blank
line but the body."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from broker.errors import InstructError, PublishError
from broker.items import parse_http_publish
from edge.grip.instruct import Hold, parse_instruct
from edge.http1 import responses
from edge.ws.session import accept_head
from tests.fuzz.strategies import FUZZ, header_value, nasty_text, token

_STATUS = re.compile(rb"HTTP/1\.[01] \d{3} [\t\x20-\x7e\x80-\xff]*")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")

names = st.one_of(
    token,
    nasty_text,
    st.sampled_from(["Set-Cookie", "X A", "X:Y", "X\r\nY", "", "Content-Length", "Grip-Hold", "é"]),
)
values = st.one_of(
    header_value,
    st.sampled_from(["1\r\nSet-Cookie: a=b", "\r\n\r\nHTTP/1.1 200", "a\x00", "\x7f", "ok\tok"]),
)
reasons = st.one_of(
    nasty_text, st.sampled_from(["OK\r\nSet-Cookie: x\r\n\r\nHTTP/1.1 200 OK", "", "\n", "Fine"])
)
pairs = st.lists(st.tuples(names, values), max_size=6)


def check_head(head: bytes) -> None:
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1, head
    lines = head[:-4].split(b"\r\n")
    assert _STATUS.fullmatch(lines[0]), lines[0]
    for line in lines[1:]:
        name, sep, value = line.partition(b": ")
        assert sep and _TOKEN.fullmatch(name) and _VALUE.fullmatch(value), line


def check_response(data: bytes) -> None:
    check_head(data[: data.index(b"\r\n\r\n") + 4])


@FUZZ
@given(code=st.integers(100, 999), reason=reasons, hs=pairs)
def test_head_from_any_text(code, reason, hs):
    check_head(responses.head(code, reason, hs))
    check_head(
        responses.head(
            code,
            reason.encode("utf-8", "replace"),
            [(k.encode("utf-8", "replace"), v.encode("utf-8", "replace")) for k, v in hs],
        )
    )


@FUZZ
@given(
    code=st.integers(200, 599),
    reason=reasons,
    hs=pairs,
    hold_hs=pairs,
    body=st.one_of(st.none(), st.binary(max_size=20)),
)
def test_published_response_heads(code, reason, hs, hold_hs, body):
    hold = Hold(mode="response", code=200, reason="OK", headers=hold_hs, body=b"{}")
    fmt = {
        "action": "send",
        "code": code,
        "reason": reason,
        "headers": [list(p) for p in hs],
        "body": body,
        "body-patch": None if body is not None else [{"op": "add", "path": "/a", "value": reason}],
    }
    check_response(responses.published(hold, fmt))
    # and what the broker lets through is a subset: a publish it accepts is also valid as is
    item = {
        "channel": "c",
        "http-response": {
            "code": code,
            "reason": reason,
            "headers": [list(p) for p in hs],
            "body": "x",
        },
    }
    try:
        parsed = parse_http_publish(json.dumps({"items": [item]}).encode())
    except PublishError:
        return
    f = parsed[0].formats["http-response"]
    raw = responses.head(f["code"], f["reason"], f["headers"])
    assert raw.count(b"\r\n") == 2 + len(f["headers"])  # nothing was dropped: all valid


@FUZZ
@given(
    status=st.one_of(
        st.builds(lambda c, r: f"{c} {r}", st.integers(100, 599), reasons), nasty_text
    ),
    hs=pairs,
    jreason=reasons,
    jhs=pairs,
    mode=st.sampled_from(["response", "stream"]),
)
def test_origin_instruction_heads(status, hs, jreason, jhs, mode):
    headers = [("Grip-Hold", mode), ("Grip-Channel", "c"), ("Grip-Status", status)] + hs
    try:
        hold = parse_instruct(200, "OK", headers, b"body")
    except InstructError:
        hold = None
    if hold is not None:
        check_response(responses.timeout(hold))
        check_head(responses.stream_head(hold, chunked=True))
    body = json.dumps(
        {
            "hold": {"mode": mode, "channels": [{"name": "c"}]},
            "response": {"code": 200, "reason": jreason, "headers": dict(jhs), "body": "x"},
        }
    ).encode()
    try:
        hold = parse_instruct(200, "OK", [("Content-Type", "application/grip-instruct")], body)
    except InstructError:
        return
    check_response(responses.timeout(hold))
    check_head(responses.stream_head(hold, chunked=False))


@FUZZ
@given(hs=pairs)
def test_websocket_accept_heads(hs):
    check_head(accept_head(b"dGhlIHNhbXBsZSBub25jZQ==", hs))
    check_head(
        accept_head(
            b"dGhlIHNhbXBsZSBub25jZQ==",
            [(k.encode("utf-8", "replace"), v.encode("utf-8", "replace")) for k, v in hs],
        )
    )
