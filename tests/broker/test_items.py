"""broker.items: JSON (both shapes), tnetstring as pubcontrol makes it, framings, errors."""

from __future__ import annotations

import base64
import json

import pytest
import tnetstring as tnet3  # what pubcontrol's zmq client uses
from gripcontrol import HttpResponseFormat, HttpStreamFormat, WebSocketMessageFormat
from pubcontrol import Item as PcItem

from broker.errors import PublishError
from broker.items import (
    Item,
    parse_http_publish,
    parse_items_container,
    parse_pull_frames,
    parse_sub_item,
    parse_zmq_item,
    status_reason,
)


def body(*items) -> bytes:
    return json.dumps({"items": list(items)}).encode()


def one(item: dict) -> Item:
    (parsed,) = parse_http_publish(body(item))
    return parsed


def pubcontrol_frame(item: PcItem, channel: str) -> bytes:
    """Exactly what pubcontrol's ZmqPubControlClient pushes (no 'T' prefix)."""
    content = item.export(formats_field=True, tnetstring=True)
    content[b"channel"] = channel.encode()
    return tnet3.dumps(content)


STREAM_HI = {"action": "send", "content": b"hi\n"}


# -- JSON -----------------------------------------------------------------------------------------


def test_json_formats_key():
    item = one(
        {
            "channel": "c",
            "id": "2",
            "prev-id": "1",
            "meta": {"a": "b"},
            "formats": {"http-stream": {"content": "hi\n"}},
        }
    )
    assert item == Item("c", {"http-stream": STREAM_HI}, "2", "1", {"a": "b"}, False)


def test_json_top_level_formats_as_pypubcontrol_sends():
    item = PcItem([HttpStreamFormat("hi\n"), HttpResponseFormat(body="x")], id="9")
    exported = item.export()
    exported["channel"] = "c"
    parsed = one(exported)
    assert parsed.id == "9"
    assert parsed.formats["http-stream"] == STREAM_HI
    assert parsed.formats["http-response"] == {
        "action": "send",
        "code": 200,
        "reason": "OK",
        "headers": [],
        "body": b"x",
        "body-patch": None,
    }


def test_json_bin_fields_are_base64():
    b64 = base64.b64encode(b"\x00\xff").decode()
    item = one(
        {
            "channel": "c",
            "formats": {
                "http-stream": {"content-bin": b64},
                "http-response": {
                    "body-bin": b64,
                    "code": 404,
                    "headers": [["A", "1"], ["A", "2"]],
                },
                "ws-message": {"content-bin": b64},
            },
        }
    )
    assert item.formats["http-stream"]["content"] == b"\x00\xff"
    resp = item.formats["http-response"]
    assert (resp["body"], resp["code"], resp["reason"]) == (b"\x00\xff", 404, "Not Found")
    assert resp["headers"] == [["A", "1"], ["A", "2"]]
    assert item.formats["ws-message"] == {
        "action": "send",
        "type": "binary",
        "content": b"\x00\xff",
        "code": None,
        "reason": "",
    }


def test_json_many_items_and_no_seq():
    items = parse_http_publish(
        body(
            {"channel": "a", "formats": {"http-stream": {"content": "1"}}},
            {"channel": "b", "no-seq": True, "http-stream": {"content": "2"}},
        )
    )
    assert [(i.channel, i.no_seq) for i in items] == [("a", False), ("b", True)]


@pytest.mark.parametrize(
    "fmt,expected",
    [
        (
            {"http-stream": {"action": "close"}},
            {"http-stream": {"action": "close", "content": b""}},
        ),
        ({"http-stream": {"action": "hint"}}, {"http-stream": {"action": "hint", "content": b""}}),
        (
            {"http-response": {"action": "hint"}},
            {
                "http-response": {
                    "action": "hint",
                    "code": 200,
                    "reason": "OK",
                    "headers": [],
                    "body": None,
                    "body-patch": None,
                }
            },
        ),
        (
            {
                "http-response": {
                    "code": 299,
                    "body-patch": [{"op": "add", "path": "/a", "value": 1}],
                    "headers": {"X": "y"},
                    "content-filters": ["skip-self"],
                }
            },
            {
                "http-response": {
                    "action": "send",
                    "code": 299,
                    "reason": "Undefined Reason",
                    "headers": [["X", "y"]],
                    "body": None,
                    "body-patch": [{"op": "add", "path": "/a", "value": 1}],
                    "content-filters": ["skip-self"],
                }
            },
        ),
        (
            {"http-response": {"code": 200, "reason": "Fine", "body": "b"}},
            {
                "http-response": {
                    "action": "send",
                    "code": 200,
                    "reason": "Fine",
                    "headers": [],
                    "body": b"b",
                    "body-patch": None,
                }
            },
        ),
        (
            {"ws-message": {"content": "t"}},
            {
                "ws-message": {
                    "action": "send",
                    "type": "text",
                    "content": b"t",
                    "code": None,
                    "reason": "",
                }
            },
        ),
        (
            {"ws-message": {"type": "ping"}},
            {
                "ws-message": {
                    "action": "send",
                    "type": "ping",
                    "content": b"",
                    "code": None,
                    "reason": "",
                }
            },
        ),
        (
            {"ws-message": {"action": "close", "code": 4000, "reason": "bye"}},
            {
                "ws-message": {
                    "action": "close",
                    "type": "text",
                    "content": b"",
                    "code": 4000,
                    "reason": "bye",
                }
            },
        ),
        (
            {"ws-message": {"action": "refresh"}},
            {
                "ws-message": {
                    "action": "refresh",
                    "type": "text",
                    "content": b"",
                    "code": None,
                    "reason": "",
                }
            },
        ),
        # accepted by Pushpin but ignored: dropped
        (
            {"http-response": {"action": "close"}, "http-stream": {"content": "x"}},
            {"http-stream": {"action": "send", "content": b"x"}},
        ),
        ({"http-stream": {"action": "refresh"}}, {}),
    ],
)
def test_normalised_formats(fmt, expected):
    assert one({"channel": "c", "formats": fmt}).formats == expected


def test_gripcontrol_ws_message_close_export():
    f = WebSocketMessageFormat(action="close", code=1001, reason="away")
    assert one({"channel": "c", "ws-message": f.export()}).formats["ws-message"]["code"] == 1001


def test_empty_ids_are_absent():
    item = one({"channel": "c", "id": "", "prev-id": "", "http-stream": {"content": ""}})
    assert (item.id, item.prev_id) == (None, None)


# -- Pushpin's error messages ---------------------------------------------------------------------

HTTP_ERRORS = [
    (b"not json", "Body is not valid JSON."),
    (b"\xff\xfe", "Body is not valid JSON."),
    (b"[]", "Invalid format."),
    (b'"items"', "Invalid format."),
    (b"{}", "Invalid format: object does not contain 'items'"),
    (b'{"items": {}}', "Invalid format: object contains 'items' with wrong type"),
    (body("x"), "Invalid format: publish item object is not an object"),
    (
        body({"formats": {"http-stream": {"content": "x"}}}),
        "Invalid format: publish item object does not contain 'channel'",
    ),
    (
        body({"channel": 5, "http-stream": {"content": "x"}}),
        "Invalid format: publish item object contains 'channel' with wrong type",
    ),
    (body({"channel": "c"}), "Invalid format: no formats specified"),
    (body({"channel": "c", "formats": {}}), "Invalid format: no formats specified"),
    (
        body({"channel": "c", "formats": []}),
        "Invalid format: publish item object contains 'formats' with wrong type",
    ),
    (body({"channel": "c", "http-stream": {"action": "explode"}}), "Invalid format: "),
    (
        body({"channel": "c", "http-stream": {"action": 3}}),
        "Invalid format: 'http-stream' contains 'action' with wrong type",
    ),
    (body({"channel": "c", "http-stream": "x"}), "Invalid format: 'http-stream' is not an object"),
    (
        body({"channel": "c", "http-stream": {}}),
        "Invalid format: 'http-stream' does not contain 'content' or 'content-bin'",
    ),
    (
        body({"channel": "c", "http-stream": {"content": 1}}),
        "Invalid format: 'http-stream' contains 'content' with wrong type",
    ),
    (
        body({"channel": "c", "http-response": {}}),
        "Invalid format: 'http-response' does not contain 'body', 'body-bin', or 'body-patch'",
    ),
    (
        body({"channel": "c", "http-response": {"code": 1000, "body": ""}}),
        "Invalid format: 'http-response' contains 'code' with invalid value",
    ),
    (
        body({"channel": "c", "http-response": {"code": [], "body": ""}}),
        "Invalid format: 'http-response' contains 'code' with wrong type",
    ),
    (
        body({"channel": "c", "http-response": {"headers": 5, "body": ""}}),
        "Invalid format: 'http-response' contains 'headers' with wrong type",
    ),
    (
        body({"channel": "c", "http-response": {"headers": [["a"]], "body": ""}}),
        "Invalid format: headers contains list with wrong number of elements",
    ),
    (
        body({"channel": "c", "http-response": {"headers": {"a": 1}, "body": ""}}),
        "Invalid format: headers contains 'a' with wrong type",
    ),
    (
        body({"channel": "c", "http-response": {"headers": [["a\r\nb", "1"]], "body": ""}}),
        "Invalid format: headers contains 'a\r\nb' with invalid value",
    ),
    (
        body({"channel": "c", "http-stream": {"content": "", "content-filters": "x"}}),
        "Invalid format: 'http-stream' contains 'content-filters' with wrong type",
    ),
    (
        body({"channel": "c", "ws-message": {"type": "blob", "content": ""}}),
        "Invalid format: 'ws-message' contains 'type' with unknown value",
    ),
    (
        body({"channel": "c", "ws-message": {}}),
        "Invalid format: 'ws-message' does not contain 'content' or 'content-bin'",
    ),
    (
        body({"channel": "c", "ws-message": {"content-bin": 5}}),
        "Invalid format: 'ws-message' contains 'content-bin' with wrong type",
    ),
    (
        body({"channel": "c", "http-stream": {"content": ""}, "meta": {"a": 1}}),
        "Invalid format: 'meta' contains 'a' with wrong type",
    ),
    (
        body({"channel": "c", "http-stream": {"content": ""}, "meta": []}),
        "Invalid format: publish item object contains 'meta' with wrong type",
    ),
    (
        body({"channel": "c", "http-stream": {"content": ""}, "no-seq": 1}),
        "Invalid format: publish item object contains 'no-seq' with wrong type",
    ),
    (
        body({"channel": "c", "http-stream": {"content": ""}, "size": -1}),
        "Invalid format: publish item object contains 'size' with invalid value",
    ),
    (
        body({"channel": "c", "http-stream": {"content": ""}, "id": 7}),
        "Invalid format: publish item object contains 'id' with wrong type",
    ),
    # channel validation (ours; Pushpin has none)
    (
        body({"channel": "", "http-stream": {"content": ""}}),
        "Invalid format: publish item object contains 'channel' with invalid value (empty)",
    ),
    (
        body({"channel": "a\x00b", "http-stream": {"content": ""}}),
        "Invalid format: publish item object contains 'channel' with invalid value (NUL byte)",
    ),
    (
        body({"channel": "x" * 1025, "http-stream": {"content": ""}}),
        "Invalid format: publish item object contains 'channel' with invalid value "
        "(longer than 1024 bytes)",
    ),
]


@pytest.mark.parametrize("data,message", HTTP_ERRORS)
def test_http_errors(data, message):
    with pytest.raises(PublishError) as info:
        parse_http_publish(data)
    assert info.value.reason == message
    assert info.value.status == 400


def test_all_or_nothing():
    with pytest.raises(PublishError):
        parse_http_publish(
            body({"channel": "ok", "http-stream": {"content": "x"}}, {"channel": "bad"})
        )


def test_channel_limit_is_bytes():
    assert one({"channel": "\u00e9" * 512, "http-stream": {"content": ""}}).channel
    with pytest.raises(PublishError):
        one({"channel": "\u00e9" * 513, "http-stream": {"content": ""}})


# -- ZeroMQ framings ------------------------------------------------------------------------------


def test_pubcontrol_push_frame():
    pc = PcItem(
        [HttpStreamFormat("hi\n"), HttpResponseFormat(code=201, headers={"X-A": "1"}, body="b")],
        id="1",
        prev_id="0",
        meta={"sender": "me"},
    )
    item = parse_zmq_item(pubcontrol_frame(pc, "chan"))
    assert item.channel == "chan"
    assert (item.id, item.prev_id, item.meta) == ("1", "0", {"sender": "me"})
    assert item.formats["http-stream"] == STREAM_HI
    assert item.formats["http-response"] == {
        "action": "send",
        "code": 201,
        "reason": "Created",
        "headers": [["X-A", "1"]],
        "body": b"b",
        "body-patch": None,
    }


def test_pubcontrol_close_and_binary_bytes():
    item = parse_zmq_item(pubcontrol_frame(PcItem(HttpStreamFormat(close=True)), "c"))
    assert item.formats == {"http-stream": {"action": "close", "content": b""}}
    raw = tnet3.dumps(
        {
            b"channel": b"c",
            b"formats": {
                b"http-stream": {b"content": b"\x00\xff"},
                b"ws-message": {b"content-bin": b"\x01\x02"},
            },
        }
    )
    item = parse_zmq_item(raw)
    assert item.formats["http-stream"]["content"] == b"\x00\xff"
    assert item.formats["ws-message"]["content"] == b"\x01\x02"
    assert item.formats["ws-message"]["type"] == "binary"


def test_tnetstring_ignores_http_bin_fields_like_pushpin():
    # gripcontrol exports binary http-stream content as base64 'content-bin' even for tnetstring;
    # Pushpin does not accept *-bin http fields in tnetstring input, and neither do we
    pc = PcItem(HttpStreamFormat(b"\xff\x00"))
    with pytest.raises(PublishError, match="'http-stream' does not contain 'content'"):
        parse_zmq_item(pubcontrol_frame(pc, "c"))
    raw = tnet3.dumps({b"channel": b"c", b"http-response": {b"body-bin": b"AA=="}})
    with pytest.raises(
        PublishError, match="'http-response' does not contain 'body' or 'body-patch'"
    ):
        parse_zmq_item(raw)


@pytest.mark.parametrize("prefix", [b"", b"T"])
def test_tnetstring_framings(prefix):
    raw = prefix + tnet3.dumps(
        {b"channel": b"c", b"no-seq": True, b"http-stream": {b"content": b"x"}}
    )
    item = parse_zmq_item(raw)
    assert (item.channel, item.no_seq, item.formats["http-stream"]["content"]) == ("c", True, b"x")


def test_json_framing():
    b64 = base64.b64encode(b"\x00").decode()
    item = parse_zmq_item(
        b"J"
        + json.dumps({"channel": "c", "formats": {"http-stream": {"content-bin": b64}}}).encode()
    )
    assert item.formats["http-stream"]["content"] == b"\x00"


@pytest.mark.parametrize(
    "frame,message",
    [
        (b"J{", "received message with invalid format (json parse failed)"),
        (b"J[1]", "received message with invalid format (not a valid json object)"),
        (b"T5:abc", "received message with invalid format (tnetstring parse failed)"),
        (b"", "received message with invalid format (tnetstring parse failed)"),
        (tnet3.dumps([b"x"]), "publish item object is not an object"),
        (
            tnet3.dumps({b"formats": {b"http-stream": {b"content": b""}}}),
            "publish item object does not contain 'channel'",
        ),
        (
            tnet3.dumps({b"channel": b"\xff", b"http-stream": {b"content": b""}}),
            "publish item object contains 'channel' with wrong type",
        ),
    ],
)
def test_zmq_errors(frame, message):
    with pytest.raises(PublishError) as info:
        parse_zmq_item(frame)
    assert info.value.reason == message


def test_sub_item_channel_from_frame():
    pc = PcItem(HttpStreamFormat("hi\n"), id="5")
    payload = tnet3.dumps(pc.export(formats_field=True, tnetstring=True))
    item = parse_sub_item(b"room", payload)
    assert (item.channel, item.id, item.formats["http-stream"]) == ("room", "5", STREAM_HI)
    with pytest.raises(PublishError, match="NUL"):
        parse_sub_item(b"a\x00", payload)


def test_command_items_container_uses_tnetstring_rules():
    args = {b"items": [{b"channel": b"c", b"http-stream": {b"content": b"x"}}]}
    (item,) = parse_items_container(args, json=False)
    assert item.channel == "c"
    with pytest.raises(PublishError, match="^Invalid format: object does not contain 'items'$"):
        parse_items_container({}, json=False)


def test_status_reason_table():
    assert status_reason(200) == "OK"
    assert status_reason(413) == "Request Entity Too Large"
    assert status_reason(299) == "Undefined Reason"


@pytest.mark.parametrize(
    "field",
    [
        '"channel":"\\ud800","formats":{"http-stream":{"content":"x"}}',
        '"channel":"a","id":"\\uDC00","formats":{"http-stream":{"content":"x"}}',
        '"channel":"a","formats":{"http-stream":{"content":"\\ud800"}}',
        '"channel":"a","meta":{"k":"\\ud800"},"formats":{"http-stream":{"content":"x"}}',
        '"channel":"a","formats":{"ws-message":{"content":"x\\ud800"}}',
    ],
)
def test_unpaired_surrogate_escapes_are_refused_not_crashing(field):
    with pytest.raises(PublishError):
        parse_http_publish(('{"items":[{' + field + "}]}").encode())
    with pytest.raises(PublishError):
        parse_zmq_item(("J{" + field + "}").encode())


@pytest.mark.parametrize("lead", [b"", b" \n"])  # the scanner's path, json.loads' path
def test_utf8_encoded_surrogate_bytes_are_invalid_json_not_a_crash(lead):
    # a surrogate written as raw UTF-8 bytes (ED A0 80) is not UTF-8: refused with the
    # invalid-JSON answer, never an encoding error later (it used to escape as one)
    item = b'{"channel":"a","formats":{"http-stream":{"content":"x\xed\xa0\x80"}}}'
    with pytest.raises(PublishError, match="Body is not valid JSON"):
        parse_http_publish(lead + b'{"items":[' + item + b"]}")
    with pytest.raises(PublishError, match="json parse failed"):
        parse_zmq_item(b"J" + lead + item)
    assert parse_pull_frames([b"J" + lead + item]) == (
        [],
        ["received message with invalid format (json parse failed)"],
    )


def test_paired_surrogate_escapes_are_text():
    item = parse_http_publish(
        b'{"items":[{"channel":"a","formats":{"http-stream":{"content":"\\ud83d\\ude00"}}}]}'
    )[0]
    assert item.formats["http-stream"]["content"] == "\U0001f600".encode()


def test_body_patch_that_cannot_travel_to_edges_is_refused():
    body = b'{"items":[{"channel":"a","formats":{"http-response":{"body-patch":[{"op":"add","path":"/x","value":100000000000000000000000}]}}}]}'
    with pytest.raises(PublishError):
        parse_http_publish(body)
    ok = b'{"items":[{"channel":"a","formats":{"http-response":{"body-patch":[{"op":"add","path":"/x","value":5}]}}}]}'
    assert parse_http_publish(ok)[0].formats["http-response"]["body-patch"][0]["value"] == 5
