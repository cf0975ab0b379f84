"""Pushpin stats packets built by the broker (sans-IO): framing, conn/sub/message/report."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import wire
from broker.control import parse_control
from broker.errors import RemoteProtocolError
from broker.ingest import tnetstring
from broker.ops.stats import EDGE_EXPIRE_S, StatsEncoder, packet, parse_edge_report
from broker.wire import Envelope


def parse(frame: bytes):
    kind, _, rest = frame.partition(b" ")
    assert rest[:1] == b"T"
    return kind.decode(), tnetstring.loads(rest[1:])


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def _norm(d):
    return {_s(k): _s(v) for k, v in d.items()}


def packets(frames):
    return [(kind, _norm(f)) for kind, f in map(parse, frames)]


def report(edge="gripcast-edge0_7", **kw):
    m = {
        "op": "stats",
        "edge": edge,
        "full": False,
        "conns": [],
        "gone": [],
        "subs": [],
        "connections": 0,
        "connections_max": 0,
        "conn_s": 0.0,
        "sent": 0,
    }
    m.update(kw)
    return m


def test_packet_framing_is_pushpins():
    kind, fields = parse(packet("conn", {"from": "x", "id": "1"}))
    assert kind == "conn"
    assert fields in ({"from": "x", "id": "1"}, {b"from": b"x", b"id": b"1"})


def test_conn_packets_match_pushpins_observed_packet():
    # OBS (reference 6.1): conn T108:4:from,21:pushpin-handler_18434,3:ttl,3:120#4:type,4:http,
    # 2:id,13:condure:0-0-8,12:peer-address,9:127.0.0.1,}
    enc = StatsEncoder("gripcast-broker_1")
    frames = enc.edge_report(
        report(
            conns=[["gripcast-edge0_7:1", "http", "127.0.0.1"], ["5f0c", "ws", "::1"]],
            gone=["gripcast-edge0_7:0"],
        ),
        0.0,
    )
    raw = [parse(f) for f in frames]
    # tnetstring types as Pushpin's StatsPacket::fromVariant requires them
    kind, f = raw[0]
    assert kind == "conn"
    assert f == {
        b"from": b"gripcast-edge0_7",
        b"id": b"gripcast-edge0_7:1",
        b"type": b"http",
        b"peer-address": b"127.0.0.1",
        b"ttl": 120,
    }
    assert _norm(raw[1][1])["type"] == "ws" and _norm(raw[1][1])["peer-address"] == "::1"
    assert raw[2] == (
        "conn",
        {b"from": b"gripcast-edge0_7", b"id": b"gripcast-edge0_7:0", b"unavailable": True},
    )


def test_conn_ttl_from_config_and_no_empty_peer():
    enc = StatsEncoder("b", conn_ttl_s=600)
    ((kind, f),) = packets(enc.edge_report(report(conns=[["c1", "http", ""]]), 0.0))
    assert f["ttl"] == 600 and "peer-address" not in f


def test_sub_counts_are_summed_over_edges_per_mode():
    enc = StatsEncoder("b")
    got = packets(enc.edge_report(report("e1", subs=[["stream", "news", 2], ["ws", "news", 1]]), 0))
    assert got == [
        ("sub", {"from": "b", "mode": "stream", "channel": "news", "ttl": 60, "subscribers": 2}),
        ("sub", {"from": "b", "mode": "ws", "channel": "news", "ttl": 60, "subscribers": 1}),
    ]
    got = packets(enc.edge_report(report("e2", subs=[["stream", "news", 3]]), 0))
    assert [f["subscribers"] for _, f in got] == [5]
    assert enc.subscribers("stream", "news") == 5
    # unchanged counts make no packet; a drop to 0 on one edge lowers the sum
    assert enc.edge_report(report("e2", subs=[]), 1) == []
    got = packets(enc.edge_report(report("e1", subs=[["stream", "news", 0]]), 1))
    assert [f["subscribers"] for _, f in got] == [3]
    got = packets(enc.edge_report(report("e2", subs=[["stream", "news", 0]]), 1))
    assert got == [("sub", {"from": "b", "mode": "stream", "channel": "news", "unavailable": True})]


def test_full_report_replaces_the_edges_subscriptions():
    enc = StatsEncoder("b")
    enc.edge_report(report("e1", subs=[["stream", "a", 1], ["response", "b", 4]]), 0)
    got = packets(enc.edge_report(report("e1", full=True, subs=[["stream", "a", 1]]), 1))
    assert got == [("sub", {"from": "b", "mode": "response", "channel": "b", "unavailable": True})]


def test_silent_edges_expire():
    enc = StatsEncoder("b")
    enc.edge_report(report("e1", subs=[["stream", "a", 2]], connections=5), 0)
    enc.edge_report(report("e2", subs=[["stream", "a", 1]], connections=1), 9)
    out = packets(enc.report(EDGE_EXPIRE_S + 1))
    assert (
        "sub",
        {"from": "b", "mode": "stream", "channel": "a", "ttl": 60, "subscribers": 1},
    ) in out
    assert list(enc.edges) == ["e2"]
    rep = next(f for k, f in packets(enc.report(EDGE_EXPIRE_S + 2)) if k == "report")
    assert rep["connections"] == 1


def test_report_folds_edge_counts():
    enc = StatsEncoder("b")
    enc.received(3)
    enc.edge_report(report("e1", connections=2, connections_max=7, conn_s=100.0, sent=10), 0)
    enc.edge_report(report("e2", connections=3, connections_max=3, conn_s=30.0, sent=5), 0)
    out = packets(enc.report(100.0))
    kind, rep = out[0]
    assert kind == "report"
    # the most open at once: e1's peak of 7 (e2's 3 arrived when e1 was down to 2)
    assert rep == {
        "from": "b",
        "connections": 7,
        "minutes": 2,
        "received": 3,
        "sent": 15,
        "duration": 0,
    }
    # the next interval: peak is what is open now; the seconds left over carry on
    enc.edge_report(report("e1", connections=2, connections_max=2, conn_s=50.0), 105)
    enc.edge_report(report("e2", connections=3, connections_max=3), 105)
    kind, rep = packets(enc.report(110.0))[0]
    assert rep == {
        "from": "b",
        "connections": 5,
        "minutes": 1,
        "received": 0,
        "sent": 0,
        "duration": 10000,
    }


def test_report_refreshes_live_subscriptions():
    enc = StatsEncoder("b")
    enc.edge_report(report("e1", subs=[["ws", "chat", 4]]), 0)
    out = packets(enc.report(1.0))
    assert out[1] == (
        "sub",
        {"from": "b", "mode": "ws", "channel": "chat", "ttl": 60, "subscribers": 4},
    )


def test_message_counts_receivers_of_each_transport():
    enc = StatsEncoder("b")
    envs = [
        Envelope("news", 1, "e", {"http-stream": {"content": "a"}, "ws-message": {}}, id="i1"),
        Envelope("dead", 1, "e", {"http-stream": {}}),
        Envelope("fresh", 1, "e", {"http-response": {}}),
    ]
    # no edge has reported yet: live channels count as one receiver per format
    got = [
        (f["channel"], f["transport"], f["count"], f.get("item-id"))
        for _, f in packets(enc.messages(envs, {"news", "fresh"}))
    ]
    assert got == [
        ("news", "http-stream", 1, "i1"),
        ("news", "ws-message", 1, "i1"),
        ("fresh", "http-response", 1, None),
    ]
    enc.edge_report(report("e1", subs=[["stream", "news", 3]]), 0)
    got = [
        (f["channel"], f["transport"], f["count"])
        for _, f in packets(enc.messages(envs[:1], {"news"}))
    ]
    assert got == [("news", "http-stream", 3)]  # no ws subscribers: no ws-message packet


_names = st.text(min_size=1, max_size=12).filter(lambda s: "\x00" not in s)


@settings(max_examples=200, deadline=None)
@given(
    channel=_names,
    item_id=st.none() | st.text(max_size=20),
    transports=st.lists(
        st.sampled_from(["http-response", "http-stream", "ws-message", "other"]),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    counts=st.lists(st.integers(0, 10**6), min_size=3, max_size=3),
    source=st.text(min_size=1, max_size=30),
)
def test_message_packets_are_the_bytes_of_the_generic_encoder(
    channel, item_id, transports, counts, source
):
    """The fast ``message`` encoder writes exactly ``packet("message", {...})``."""
    enc = StatsEncoder(source)
    subs = [[m, channel, n] for m, n in zip(("response", "stream", "ws"), counts, strict=True)]
    enc.edge_report(report("e1", subs=subs), 0)
    env = Envelope(channel, 1, "e", {t: {} for t in transports}, id=item_id)
    fast = enc.messages([env, env], {channel})
    json_enc = StatsEncoder(source, fmt="json")
    json_enc.edge_report(report("e1", subs=subs), 0)
    expected = []
    known = any(counts)  # else: live, but no edge reported it: one receiver per transport
    for t in transports:
        mode = {"http-response": "response", "http-stream": "stream", "ws-message": "ws"}.get(t)
        n = dict(zip(("response", "stream", "ws"), counts, strict=True)).get(mode or "", 0)
        n = n if known else 1
        if n <= 0:
            continue
        fields = {"from": source, "channel": channel, "transport": t, "count": n}
        if item_id is not None:
            fields["item-id"] = item_id
        expected.append(packet("message", fields))
    assert fast == expected * 2
    assert len(json_enc.messages([env], {channel})) == len(expected)  # the JSON path agrees


@settings(max_examples=200, deadline=None)
@given(
    mode=st.sampled_from(["response", "stream", "ws"]),
    channel=_names,
    n=st.integers(0, 10**9),
    ttl=st.integers(1, 10**6),
    source=st.text(min_size=1, max_size=30),
)
def test_sub_packets_are_the_bytes_of_the_generic_encoder(mode, channel, n, ttl, source):
    enc = StatsEncoder(source, sub_ttl_s=ttl)
    if n > 0:
        fields = {"from": source, "mode": mode, "channel": channel, "ttl": ttl, "subscribers": n}
    else:
        fields = {"from": source, "mode": mode, "channel": channel, "unavailable": True}
    assert enc._sub_packet(mode, channel, n) == packet("sub", fields)


@pytest.mark.parametrize(
    "bad",
    [
        {"op": "stats"},
        report(edge=""),
        report(edge=7),
        report(conns=[["id", "tcp", "1.2.3.4"]]),
        report(conns=[["id", "http"]]),
        report(conns=[["", "http", ""]]),
        report(conns="x"),
        report(gone=[None]),
        report(subs=[["push", "c", 1]]),
        report(subs=[["stream", "c", -1]]),
        report(subs=[["stream", "", 1]]),
        report(subs=[["stream", "c", True]]),
        report(connections=-1),
        report(sent="9"),
        report(conn_s=-1.0),
        report(conn_s=float("nan")),
    ],
)
def test_bad_reports_are_refused_and_change_nothing(bad):
    enc = StatsEncoder("b")
    enc.edge_report(report("e1", subs=[["stream", "c", 1]], connections=1), 0)
    with pytest.raises(RemoteProtocolError):
        enc.edge_report(bad, 1)
    assert enc.bad_reports == 1 and list(enc.edges) == ["e1"]
    assert enc.subscribers("stream", "c") == 1


def test_parse_edge_report_and_control_op():
    req = parse_control(wire.encode_control(report(conns=[["c", "ws", "10.0.0.1"]])))
    assert req.op == "stats" and req.rid is None
    rep = parse_edge_report(req.stats)
    assert rep.edge == "gripcast-edge0_7" and rep.conns == (("c", "ws", "10.0.0.1"),)


def test_heartbeat_announces_the_stats_ttl():
    hb = wire.decode_heartbeat(wire.encode_heartbeat("b", 1.0, 2.0, stats_ttl=120))
    assert hb.stats_ttl == 120
    assert wire.decode_heartbeat(wire.encode_heartbeat("b", 1.0, 2.0)).stats_ttl == 0


def test_conn_packets_fast_path_equals_generic_encoding():
    from broker.ops.stats import conn_packets

    conns = [
        ("gripcast-edge0_7:1", "http", "127.0.0.1"),
        ("é-id", "ws", ""),
        ("x" * 200, "http", "2001:db8::1"),
    ]
    got = conn_packets("gripcast-edge0_7", conns, ["a", "ü"], 120)
    want = []
    for cid, ctype, peer in conns:
        f = {"from": "gripcast-edge0_7", "id": cid, "type": ctype}
        if peer:
            f["peer-address"] = peer
        f["ttl"] = 120
        want.append(packet("conn", f))
    want += [
        packet("conn", {"from": "gripcast-edge0_7", "id": c, "unavailable": True})
        for c in ("a", "ü")
    ]
    assert got == want


_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
_value = st.recursive(
    _scalar,
    lambda c: st.one_of(
        st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=4)
    ),
    max_leaves=20,
)
_entry = st.one_of(
    _value,
    st.lists(
        st.one_of(st.sampled_from(["http", "ws", "stream", "ws", "response", "c"]), _scalar),
        min_size=2,
        max_size=4,
    ),
)
_reports = st.fixed_dictionaries(
    {"edge": st.one_of(st.just("e"), _scalar)},
    optional={
        k: st.one_of(st.lists(_entry, max_size=4), _value)
        for k in (
            "conns",
            "gone",
            "subs",
            "connections",
            "connections_max",
            "conn_s",
            "sent",
            "full",
        )
    },
)


@settings(max_examples=300, deadline=None)
@given(_reports)
def test_any_edge_report_is_folded_in_or_refused_cleanly(m):
    """An edge report never raises anything but RemoteProtocolError, and whatever it did, the
    encoder's totals stay consistent with its per-edge state."""
    enc = StatsEncoder("b")
    enc.edge_report(report("e0", subs=[["stream", "c", 1]], connections=1), 0)
    try:
        frames = enc.edge_report(m, 1)
    except RemoteProtocolError:
        frames = []
    for f in frames:
        parse(f)
    totals = {}
    for est in enc.edges.values():
        for key, n in est.subs.items():
            totals[key] = totals.get(key, 0) + n
    assert totals == enc._subs
    assert enc._conn_total == sum(e.connections for e in enc.edges.values())


# -- activity, counts, the JSON format (Pushpin's statsmanager.cpp / statspacket.cpp) ----------


def test_activity_and_counts_packets_from_an_edge_report():
    enc = StatsEncoder("gripcast-broker_1")
    frames = enc.edge_report(report(activity=[["", 3], ["api", 1], ["idle", 0]], requests=2), 0.0)
    assert packets(frames) == [
        ("activity", {"from": "gripcast-broker_1", "count": 3}),
        ("activity", {"from": "gripcast-broker_1", "route": "api", "count": 1}),
        ("counts", {"from": "gripcast-broker_1", "requests-received": 2}),
    ]
    assert enc.edge_report(report(), 1.0) == []  # nothing to say: no packets (as Pushpin)


def test_bad_activity_is_refused():
    for bad in ([["", -1]], [["", "x"]], [[1, 1]], [["a"]], "x"):
        with pytest.raises(RemoteProtocolError):
            parse_edge_report(report(activity=bad))
    with pytest.raises(RemoteProtocolError):
        parse_edge_report(report(requests=-1))


def test_json_framing_is_qt_compact_with_sorted_keys():
    # QJsonDocument(obj).toJson(Compact): keys sorted (QJsonObject), no spaces, UTF-8
    assert packet("counts", {"requests-received": 1, "from": "x"}, "json") == (
        b'counts J{"from":"x","requests-received":1}'
    )
    assert packet("sub", {"channel": "\u00e9", "unavailable": True, "from": "x"}, "json") == (
        'sub J{"channel":"\u00e9","from":"x","unavailable":true}'.encode()
    )


def test_json_format_for_every_packet_type():
    import json

    enc = StatsEncoder("b", fmt="json", sub_ttl_s=30)
    frames = enc.edge_report(
        report(
            conns=[["c1", "http", "127.0.0.1"]],
            gone=["c0"],
            subs=[["stream", "ch", 2]],
            activity=[["", 1]],
            requests=1,
        ),
        0.0,
    )
    env = Envelope("ch", 1, "e", {"http-stream": {"content": "x"}}, id="id1")
    frames += enc.messages([env], {"ch"})
    frames += enc.report(5.0)
    got = []
    for f in frames:
        kind, _, rest = f.partition(b" ")
        assert rest[:1] == b"J"
        got.append((kind.decode(), json.loads(rest[1:])))
    kinds = [k for k, _ in got]
    assert kinds == ["conn", "conn", "sub", "activity", "counts", "message", "report", "sub"]
    assert got[0][1] == {"from": "gripcast-edge0_7", "id": "c1", "type": "http", "ttl": 120,
                         "peer-address": "127.0.0.1"}  # fmt: skip
    assert got[1][1] == {"from": "gripcast-edge0_7", "id": "c0", "unavailable": True}
    assert got[2][1] == {
        "from": "b",
        "mode": "stream",
        "channel": "ch",
        "ttl": 30,
        "subscribers": 2,
    }
    assert got[5][1]["item-id"] == "id1" and got[5][1]["count"] == 2


def test_conn_send_off_leaves_conn_packets_out():
    enc = StatsEncoder("b", conn_send=False)
    frames = enc.edge_report(report(conns=[["c1", "http", ""]], subs=[["ws", "c", 1]]), 0.0)
    assert [k for k, _ in packets(frames)] == ["sub"]
