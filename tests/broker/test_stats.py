from broker import tnetstring
from broker.stats import StatsEncoder, packet
from broker.wire import Envelope


def parse(frame: bytes):
    kind, _, rest = frame.partition(b" ")
    assert rest[:1] == b"T"
    return kind.decode(), tnetstring.loads(rest[1:])


def test_packet_framing_is_pushpins():
    kind, fields = parse(packet("conn", {"from": "x", "id": "1"}))
    assert kind == "conn"
    assert fields in ({"from": "x", "id": "1"}, {b"from": b"x", b"id": b"1"})


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def _norm(d):
    return {_s(k): _s(v) for k, v in d.items()}


def test_sub_message_and_report():
    enc = StatsEncoder("gripcast-broker_1")
    kind, f = parse(enc.sub("news", True))
    assert kind == "sub" and _norm(f)["channel"] == "news" and f[next(k for k in f if _s(k) == "ttl")] == 60
    kind, f = parse(enc.sub("news", False))
    assert _norm(f)["unavailable"] is True
    envs = [Envelope("news", 1, "e", {"http-stream": {"content": "a"}, "ws-message": {}}, id="i1"),
            Envelope("dead", 1, "e", {"http-stream": {}})]
    frames = enc.messages(envs, {"news"})
    got = [(_norm(parse(f)[1])["transport"], _norm(parse(f)[1]).get("item-id")) for f in frames]
    assert got == [("http-stream", "i1"), ("ws-message", "i1")]
    enc.received(3)
    first = enc.report(100.0, ["news"])
    kind, f = parse(first[0])
    assert kind == "report" and _norm(f)["received"] == 3 and _norm(f)["sent"] == 1
    assert parse(first[1])[0] == "sub"
    kind, f = parse(enc.report(110.0, [])[0])
    assert _norm(f)["received"] == 0 and _norm(f)["duration"] == 10000
