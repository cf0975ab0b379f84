"""broker.ingest.commands (publisher command socket) and broker.control (edge control protocol)."""

from __future__ import annotations

import pytest
import tnetstring as tnet3
from gripcontrol import HttpStreamFormat
from pubcontrol import Item as PcItem

from broker import control, wire
from broker.errors import RemoteProtocolError
from broker.history import Position, Replay
from broker.ingest import commands
from broker.ops.presence import LIMIT_MAX, PresenceQuery

URIS = {
    "command": "tcp://127.0.0.1:5563",
    "publish-pull": "tcp://127.0.0.1:5560",
    "publish-sub": "tcp://127.0.0.1:5562",
}


def run(request: dict) -> tuple[commands.CommandResult, dict | None]:
    result = commands.handle_command(tnet3.dumps(request), URIS)
    return result, (tnet3.loads(result.reply) if result.reply is not None else None)


def test_get_zmq_uris_as_pubcontrol_asks():
    result, reply = run({b"method": b"get-zmq-uris"})
    assert reply == {
        b"success": True,
        b"value": {
            b"command": b"tcp://127.0.0.1:5563",
            b"publish-pull": b"tcp://127.0.0.1:5560",
            b"publish-sub": b"tcp://127.0.0.1:5562",
        },
    }
    assert result.method == "get-zmq-uris" and result.error is None


def test_id_is_echoed():
    _, reply = run({b"id": b"42", b"method": b"recover"})
    assert reply == {b"id": b"42", b"success": True, b"value": None}


def test_recover():
    result, reply = run({b"method": b"recover"})
    assert result.recover and reply[b"success"] is True and reply[b"value"] is None


def test_publish():
    item = PcItem(HttpStreamFormat("hi\n"), id="1").export(formats_field=True, tnetstring=True)
    item[b"channel"] = b"c"
    result, reply = run({b"id": b"1", b"method": b"publish", b"args": {b"items": [item]}})
    assert reply == {b"id": b"1", b"success": True, b"value": None}
    assert [(i.channel, i.id) for i in result.items] == [("c", "1")]


@pytest.mark.parametrize(
    "args,message",
    [
        ({}, b"Invalid format: object does not contain 'items'"),
        ({b"items": b"x"}, b"Invalid format: object contains 'items' with wrong type"),
        ({b"items": [{b"channel": b"c"}]}, b"Invalid format: no formats specified"),
    ],
)
def test_publish_bad_request(args, message):
    result, reply = run({b"method": b"publish", b"args": args})
    assert reply == {b"success": False, b"condition": b"bad-request", b"value": message}
    assert result.items == () and result.error


def test_method_not_found():
    result, reply = run({b"id": b"7", b"method": b"get-zombies"})
    assert reply == {b"id": b"7", b"success": False, b"condition": b"method-not-found"}
    assert result.error == "method-not-found"


def test_presence_query():
    result, reply = run({b"id": b"p", b"method": b"presence", b"args": {b"channel": b"chat:a"}})
    assert reply is None and result.presence == PresenceQuery("chat:a") and result.rid == b"p"
    for limit in (5, b"5"):
        result, _ = run({b"method": b"presence", b"args": {b"channel": b"c", b"limit": limit}})
        assert result.presence == PresenceQuery("c", 5)
    result, _ = run({b"method": b"presence", b"args": {b"channel": b"c", b"limit": 10**9}})
    assert result.presence == PresenceQuery("c", LIMIT_MAX)  # capped, as over HTTP
    answer = {"channel": "c", "count": 0, "users": [], "truncated": False}
    assert tnet3.loads(commands.presence_reply(b"p", PresenceQuery("c"), answer)) == {
        b"id": b"p",
        b"success": True,
        b"value": {b"channel": b"c", b"count": 0, b"users": [], b"truncated": False},
    }
    off = tnet3.loads(commands.presence_reply(None, PresenceQuery("c"), None))
    assert off[b"condition"] == b"item-not-found" and b"presence is off" in off[b"value"]


@pytest.mark.parametrize(
    "args,why",
    [
        ({}, b"'channel' is required"),
        ({b"channel": 5}, b"'channel' is required"),
        ({b"channel": b""}, b"Invalid channel"),
        ({b"channel": b"\xff"}, b"not UTF-8"),
        ({b"channel": b"c", b"limit": 0}, b"Invalid limit"),
        ({b"channel": b"c", b"limit": b"x"}, b"Invalid limit"),
        ({b"channel": b"c", b"limit": True}, b"Invalid limit"),
    ],
)
def test_presence_bad_request(args, why):
    result, reply = run({b"method": b"presence", b"args": args})
    assert reply[b"condition"] == b"bad-request" and why in reply[b"value"]
    assert result.presence is None


@pytest.mark.parametrize(
    "payload",
    [
        b"garbage",
        tnet3.dumps([b"x"]),
        tnet3.dumps({b"id": b"1"}),
        tnet3.dumps({b"method": b"recover", b"args": b"x"}),
        tnet3.dumps({b"method": 5}),
    ],
)
def test_invalid_requests_get_no_reply(payload):
    result = commands.handle_command(payload, URIS)
    assert result.reply is None and result.error


def test_split_envelope():
    assert commands.split_envelope([b"id", b"", b"p"]) == ([b"id", b""], b"p")
    assert commands.split_envelope([b"id", b"p"]) == ([b"id"], b"p")
    with pytest.raises(RemoteProtocolError):
        commands.split_envelope([b"p"])
    with pytest.raises(RemoteProtocolError):
        commands.split_envelope([b"id", b"", b"p", b"q"])


# -- edge control -------------------------------------------------------------------------------


def req(**m) -> bytes:
    return wire.encode_control(m)


def test_parse_control_requests():
    assert control.parse_control(
        req(op="hello", rid=1, wire=wire.WIRE_VERSION)
    ) == control.ControlRequest("hello", 1)
    assert control.parse_control(req(op="position", rid=2, channel="c")).channel == "c"
    r = control.parse_control(
        req(op="replay", rid=3, channel="c", epoch="e", after_seq=4, after_id=None, limit=5000)
    )
    assert (r.epoch, r.after_seq, r.after_id, r.limit) == ("e", 4, None, wire.REPLAY_LIMIT)


@pytest.mark.parametrize(
    "payload,rid,why",
    [
        (b"\xc1", None, "bad control message"),
        (req(op="nope", rid=1), 1, "unknown op"),
        (req(op="position", rid=2), 2, "'channel' must be a string"),
        (req(op="position", rid=3, channel=""), 3, "invalid value"),
        (req(op="replay", rid=4, channel="c", after_seq=-1), 4, "after_seq"),
        (req(op="replay", rid=5, channel="c", epoch=5), 5, "epoch"),
        (
            req(op="hello", rid=6),
            6,
            f"edge speaks wire version 0, broker speaks wire version {wire.WIRE_VERSION}",
        ),
        (
            req(op="hello", rid=7, wire=99),
            7,
            f"edge speaks wire version 99, broker speaks wire version {wire.WIRE_VERSION}",
        ),
        (req(op="hello", rid=8, wire="1"), 8, "'wire' must be a non-negative integer"),
    ],
)
def test_parse_control_errors(payload, rid, why):
    with pytest.raises(control.ControlError, match=why) as info:
        control.parse_control(payload)
    assert info.value.rid == rid
    reply = wire.decode_control(control.error_reply(info.value.rid, info.value.reason))
    assert reply["ok"] is False and reply["rid"] == rid


def test_control_replies():
    assert wire.decode_control(control.hello_reply(1, "b", 2.0, "c1")) == {
        "rid": 1,
        "ok": True,
        "broker_id": "b",
        "started": 2.0,
        "cluster_id": "c1",
        "wire": wire.WIRE_VERSION,
        "shared_store": False,
    }
    # a broker on a Redis store says so: edges listing several brokers refuse one that does not
    hello = wire.decode_control(control.hello_reply(1, "b", 2.0, "c1", shared_store=True))
    assert hello["shared_store"] is True
    assert wire.reply_from_map(hello, wire.HelloReply).shared_store is True
    assert wire.decode_control(control.position_reply(2, "c", Position("e", 3, "x"))) == {
        "rid": 2,
        "ok": True,
        "channel": "c",
        "epoch": "e",
        "last_seq": 3,
        "last_id": "x",
    }
    env = wire.Envelope("c", 3, "e", {"http-stream": {"action": "send", "content": b"z"}})
    m = wire.decode_control(control.replay_reply(3, "c", Replay("e", 3, True, [env])))
    assert (m["complete"], m["last_seq"]) == (True, 3)
    assert wire.Envelope.from_map("c", m["items"][0]) == env


def test_recover_rate_limited_reply():
    """Over the broker's recover_per_s the command socket answers rate-limited (issue 11)."""
    from broker.ingest import commands as c
    from broker.ingest import tnetstring as t

    res = c.handle_command(t.dumps({b"id": b"7", b"method": b"recover"}), {})
    assert res.recover
    limited = c.rate_limited(res, "over recover_per_s=1")
    reply = t.loads(limited.reply)
    assert reply[b"id"] == b"7" and reply[b"success"] is False
    assert reply[b"condition"] == b"rate-limited" and not limited.recover
