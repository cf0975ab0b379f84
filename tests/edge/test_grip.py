"""GRIP header parameters and instruct parsing; cases from Pushpin's instructtest.cpp."""

from __future__ import annotations

import json

import pytest

from broker.errors import InstructError
from edge.grip.instruct import (
    Channel,
    KeepAlive,
    grip_facts,
    is_grip_response,
    parse_instruct,
    unescape_cstring,
)
from edge.http1.headers import ParamError, clean_response_headers, parse_params, split_list

CT = ("Content-Type", "text/plain")


def instruct(headers, body=b"hello world", code=200, reason="OK", **kw):
    return parse_instruct(code, reason, [CT] + list(headers), body, **kw)


# -- header parameter parsing (core/httpheaders.cpp) ------------------------------------------


@pytest.mark.parametrize(
    "value, parts",
    [
        ("a, b ,c", ["a", "b", "c"]),
        ('a; x="1,2", b', ['a; x="1,2"', "b"]),
        (r'a; x="q\",v", b', [r'a; x="q\",v"', "b"]),
        ("single", ["single"]),
        ("a,,b", ["a", "", "b"]),
    ],
)
def test_split_list(value, parts):
    assert split_list(value) == parts


@pytest.mark.parametrize("value", ['a; x="open', 'a; x="esc\\'])
def test_split_list_errors(value):
    with pytest.raises(ParamError):
        split_list(value)


@pytest.mark.parametrize(
    "value, params",
    [
        ("apple", [("apple", "")]),
        (
            "  apple  ; prev-id=item1; filter=f1",
            [("apple", ""), ("prev-id", "item1"), ("filter", "f1")],
        ),
        (r'ch; k="q\"v"; flag', [("ch", ""), ("k", 'q"v'), ("flag", "")]),
        ('x; k="a;b" ; j = 2 ', [("x", ""), ("k", "a;b"), ("j", "2")]),
        ("ping\\n; timeout=10", [("ping\\n", ""), ("timeout", "10")]),
    ],
)
def test_parse_params(value, params):
    assert parse_params(value) == params


def test_parse_params_first_pair_for_set_meta():
    assert parse_params("foo=bar", parse_first=True) == [("foo", "bar")]


def test_unterminated_quoted_param():
    with pytest.raises(ParamError):
        parse_params('a; k="x')


# -- detection and cleaning ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, grip",
    [
        ([(b"Content-Type", b"text/plain")], False),
        ([(b"grip-status", b"404")], True),
        ([(b"Grip-Channel", b"x")], True),
        ([(b"Content-Type", b"application/grip-instruct; charset=utf-8")], True),
        ([(b"X-Grip", b"1")], False),
    ],
)
def test_is_grip_response(headers, grip):
    assert is_grip_response(headers) is grip


@pytest.mark.parametrize(
    "headers, facts",
    [
        ([(b"Content-Type", b"text/plain")], (False, None, False)),
        ([(b"Grip-Hold", b"stream"), (b"grip-hold", b"response")], (True, b"stream", True)),
        ([(b"Grip-Hold", b"response")], (True, b"response", False)),
        ([(b"Grip-Link", b"</n>; rel=next")], (True, None, True)),
        (
            [(b"Grip-Link", b"</n>; rel=next"), (b"Grip-Hold", b"response")],
            (True, b"response", False),
        ),
        # a JSON instruct is never relayed as a stream, even with a stream hold header
        (
            [(b"Content-Type", b"application/grip-instruct"), (b"Grip-Hold", b"stream")],
            (True, b"stream", False),
        ),
        # an empty first Content-Type: the next one is the type (as _streamish reads it)
        (
            [(b"Content-Type", b""), (b"Content-Type", b"application/grip-instruct; x=1")],
            (True, None, False),
        ),
        # the instruct type, differently cased: GRIP (is_grip_response lowers it), while the
        # stream test compares it as sent
        (
            [(b"Content-Type", b"Application/Grip-Instruct"), (b"Grip-Hold", b"stream")],
            (True, b"stream", True),
        ),
    ],
)
def test_grip_facts(headers, facts):
    assert grip_facts(headers) == facts


def test_clean_response_headers():
    headers = [
        ("Content-Type", "a"),
        ("Grip-Hold", "stream"),
        ("Connection", "close"),
        ("Keep-Alive", "5"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "3"),
        ("X-Keep", "1"),
    ]
    assert clean_response_headers(headers) == [("Content-Type", "a"), ("X-Keep", "1")]
    assert clean_response_headers(headers, keep_length=True)[-2:] == [
        ("Content-Length", "3"),
        ("X-Keep", "1"),
    ]
    assert clean_response_headers(headers, expose=["x-keep"]) == [("X-Keep", "1")]


# -- instructtest.cpp ------------------------------------------------------------------------


def test_no_hold():
    i = instruct([("Grip-Channel", "test")])
    assert i.mode is None and (i.code, i.reason) == (200, "OK")
    assert i.headers == (CT,) and i.body == b"hello world"
    i = instruct([("Grip-Channel", "test"), ("Grip-Status", "404")])
    assert (i.code, i.reason) == (404, "Not Found")
    i = instruct([("Grip-Channel", "test"), ("Grip-Status", "404 Nothing To See Here")])
    assert (i.code, i.reason) == (404, "Nothing To See Here")
    body = (
        b'{"response":{"code": 200,"headers":{"Content-Type":"text/plain"},"body":"hello world"}}'
    )
    i = parse_instruct(200, "OK", [("Content-Type", "application/grip-instruct")], body)
    assert i.mode is None and (i.code, i.reason) == (200, "OK")
    assert i.headers == (CT,) and i.body == b"hello world"


def test_response_hold():
    i = instruct(
        [
            ("Grip-Hold", "response"),
            ("Grip-Channel", "apple"),
            ("Grip-Channel", "banana, cherry"),
            ("Grip-Timeout", "120"),
            ("Grip-Set-Meta", "foo=bar, bar=baz"),
        ]
    )
    assert i.mode == "response"
    assert [c.name for c in i.channels] == ["apple", "banana", "cherry"]
    assert i.timeout_s == 120 and i.meta == {"foo": "bar", "bar": "baz"}
    assert i.headers == (CT,) and i.body == b"hello world"
    body = json.dumps(
        {
            "hold": {
                "mode": "response",
                "channels": [{"name": "test"}],
                "timeout": 120,
                "meta": {"foo": "bar", "bar": "baz"},
            },
            "response": {
                "code": 200,
                "headers": {"Content-Type": "text/plain"},
                "body": "hello world",
            },
        }
    ).encode()
    i = parse_instruct(200, "OK", [("Content-Type", "application/grip-instruct")], body)
    assert i.mode == "response" and i.channels == (Channel("test"),)
    assert i.timeout_s == 120 and i.meta == {"foo": "bar", "bar": "baz"}
    assert (i.code, i.reason, i.headers, i.body) == (200, "OK", (CT,), b"hello world")


def test_response_hold_channel_params():
    expected = (
        Channel("apple", "item1", ("f1",)),
        Channel("banana", None, ("f2",)),
        Channel("cherry", None, ("f1", "f2")),
    )
    i = instruct(
        [
            ("Grip-Hold", "response"),
            ("Grip-Channel", "apple; prev-id=item1; filter=f1"),
            ("Grip-Channel", "banana; filter=f2, cherry; filter=f1; filter=f2"),
        ]
    )
    assert i.channels == expected
    body = json.dumps(
        {
            "hold": {
                "mode": "response",
                "channels": [
                    {"name": "apple", "prev-id": "item1", "filters": ["f1"]},
                    {"name": "banana", "filters": ["f2"]},
                    {"name": "cherry", "filters": ["f1", "f2"]},
                ],
            },
            "response": {
                "code": 200,
                "headers": {"Content-Type": "text/plain"},
                "body": "hello world",
            },
        }
    )
    i = parse_instruct(200, "OK", [("Content-Type", "application/grip-instruct")], body.encode())
    assert i.channels == expected and i.body == b"hello world"


def test_stream_hold():
    i = instruct(
        [("Grip-Hold", "stream"), ("Grip-Channel", "apple"), ("Grip-Channel", "banana, cherry")]
    )
    assert i.mode == "stream" and len(i.channels) == 3 and i.keep_alive is None
    body = b'{"hold":{"mode":"stream","channels":[{"name":"test"}]},"response":{"code": 200,"headers":{"Content-Type":"text/plain"},"body":"hello world"}}'
    i = parse_instruct(200, "OK", [("Content-Type", "application/grip-instruct")], body)
    assert i.mode == "stream" and i.channels == (Channel("test"),) and i.body == b"hello world"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("ping1\\n; timeout=10", KeepAlive(b"ping1\\n", 10, "idle")),
        ("ping2\\n; format=cstring", KeepAlive(b"ping2\n", 55, "idle")),
        ("cGluZzMK; format=base64", KeepAlive(b"ping3\n", 55, "idle")),
        ("ping4\\n; mode=interval", KeepAlive(b"ping4\\n", 55, "interval")),
        (":\\n\\n; format=cstring; timeout=0", KeepAlive(b":\n\n", 1, "idle")),
    ],
)
def test_stream_hold_keep_alive(value, expected):
    i = instruct([("Grip-Hold", "stream"), ("Grip-Channel", "test"), ("Grip-Keep-Alive", value)])
    assert i.keep_alive == expected


def test_json_keep_alive_is_interval():
    body = b'{"hold":{"mode":"stream","channels":[{"name":"t"}],"keep-alive":{"content":"x","timeout":20}}}'
    i = parse_instruct(200, "OK", [("Content-Type", "application/grip-instruct")], body)
    assert i.keep_alive == KeepAlive(b"x", 20, "interval")
    assert i.body == b"" and i.headers == ()


@pytest.mark.parametrize(
    "headers, error",
    [
        ([("Grip-Hold", "bogus")], "Grip-Hold must be set to either 'response' or 'stream'"),
        ([("Grip-Timeout", "x")], "failed to parse Grip-Timeout"),
        ([("Grip-Timeout", "-1")], "Grip-Timeout has invalid value"),
        ([("Grip-Keep-Alive", "; timeout=3")], "Grip-Keep-Alive cannot be empty"),
        ([("Grip-Keep-Alive", "x; mode=never")], "no such Grip-Keep-Alive mode 'never'"),
        ([("Grip-Keep-Alive", "x; format=hex")], "no such Grip-Keep-Alive format 'hex'"),
        ([("Grip-Keep-Alive", "x; timeout=soon")], "failed to parse Grip-Keep-Alive timeout value"),
        (
            [("Grip-Keep-Alive", "x\\; format=cstring")],
            "failed to parse Grip-Keep-Alive cstring format",
        ),
        ([("Grip-Status", "abc")], "Grip-Status contains invalid status code"),
        ([("Grip-Status", "1000")], "Grip-Status contains invalid status code"),
        ([("Grip-Link", "nobrackets; rel=next")], "failed to parse Grip-Link value"),
        ([("Grip-Link", "</n>; rel=next; timeout=x")], "failed to parse Grip-Link timeout value"),
        (
            [("Grip-Channel", "c; filter=1; filter=2; filter=3; filter=4; filter=5; filter=6")],
            "too many filters for channel 'c'",
        ),
    ],
)
def test_instruct_errors(headers, error):
    with pytest.raises(InstructError) as ei:
        instruct(headers)
    assert ei.value.reason == error and ei.value.status == 502


@pytest.mark.parametrize(
    "body, error",
    [
        (b"{", "failed to parse application/grip-instruct content as JSON"),
        (b"[]", "instruct must be an object"),
        (b'{"hold": 1}', "instruct contains 'hold' with wrong type"),
        (
            b'{"hold": {"mode": "x", "channels": []}}',
            "hold 'mode' must be set to either 'response' or 'stream'",
        ),
        (b'{"hold": {"channels": [{"name": 1}]}}', "channel contains 'name' with wrong type"),
        (b'{"hold": {"channels": [], "timeout": "x"}}', "hold contains 'timeout' with wrong type"),
        (b'{"response": {"code": 1000}}', "response contains 'code' with invalid value"),
        (
            b'{"response": {"headers": [["a"]]}}',
            "headers contains list with wrong number of elements",
        ),
        (b'{"response": {"body": 5}}', "response contains 'body' with wrong type"),
    ],
)
def test_json_instruct_errors(body, error):
    with pytest.raises(InstructError) as ei:
        parse_instruct(200, "OK", [("Content-Type", "application/grip-instruct")], body)
    assert ei.value.reason == error


def test_json_instruct_needs_200():
    with pytest.raises(InstructError, match="must be 200"):
        parse_instruct(201, "Created", [("Content-Type", "application/grip-instruct")], b"{}")


def test_timeouts_links_prefix_and_channel_limit():
    chans = ", ".join(f"c{i}" for i in range(25))
    i = instruct(
        [
            ("Grip-Hold", "response"),
            ("Grip-Timeout", "2"),
            ("Grip-Channel", chans),
            ("Grip-Link", "</next?x=1>; rel=next, </bye>; rel=gone, <ignored>"),
        ],
        prefix="p-",
    )
    assert i.timeout_s == 5  # minimum
    assert len(i.channels) == 20 and i.channels[0].name == "p-c0"
    assert (i.next_link, i.next_link_timeout_s, i.gone_link) == ("/next?x=1", 120, "/bye")
    assert instruct([("Grip-Hold", "response")]).timeout_s == 55


def test_expose_headers_and_sub_channels():
    i = instruct(
        [("Grip-Hold", "stream"), ("Grip-Expose-Headers", "X-A"), ("X-A", "1"), ("X-B", "2")],
        extra_channels=("implicit",),
    )
    assert i.headers == (("X-A", "1"),)
    assert i.channels == (Channel("implicit"),)


@pytest.mark.parametrize(
    "text, data",
    [
        ("a\\\\b", b"a\\b"),
        ("\\r\\n", b"\r\n"),
        ("\\x41\\x7e", b"A~"),
        ("\\q", b""),
    ],
)
def test_cstring(text, data):
    assert unescape_cstring(text) == data


@pytest.mark.parametrize("text", ["x\\", "\\x4", "\\xZZ"])
def test_cstring_errors(text):
    with pytest.raises(InstructError):
        unescape_cstring(text)


def test_hold_meta_is_read_only():
    """Held sessions share one Hold (edge.grip.cache): its meta cannot be changed under them."""
    i = instruct(
        [("Grip-Hold", "response"), ("Grip-Channel", "a"), ("Grip-Set-Meta", "user=alice")]
    )
    assert i.meta == {"user": "alice"}
    with pytest.raises(TypeError):
        i.meta["user"] = "mallory"
