"""The edge's stats ledger (sans-IO, time passed in) and what the broker makes of its reports."""

from broker import wire
from broker.ingest import tnetstring
from broker.ops.stats import StatsEncoder
from edge.ops.connstats import ConnStats
from edge.sync.hub import Hub


class S:
    def __init__(self, kind):
        self.kind = kind


def take(cs, now, sent=0, hub=None, channels=None):
    hub = hub or Hub()
    if channels is None:
        channels = hub.live_channels()
    rep = cs.take(now, sent, channels, hub.kinds)
    # the map the broker receives (the bytes on the wire are those of this map)
    return None if rep is None else wire.decode_control(wire.encode_request(rep))


def on(ttl=120, **kw):
    cs = ConnStats("gripcast-edge0_9", **kw)
    cs.enable(ttl)
    return cs


def test_connections_open_upgrade_close():
    cs = on()
    a = cs.opened("sa", "127.0.0.1", 0.0)
    cs.opened("sb", "10.0.0.2", 0.0)
    assert a == "gripcast-edge0_9:1"
    cs.websocket("sb", "uuid-b")
    m = take(cs, 1.0)
    assert m["op"] == "stats" and m["edge"] == "gripcast-edge0_9" and m["full"] is True
    assert m["conns"] == [["gripcast-edge0_9:1", "http", "127.0.0.1"], ["uuid-b", "ws", "10.0.0.2"]]
    assert m["gone"] == [] and m["connections"] == 2 and m["connections_max"] == 2
    assert m["conn_s"] == 2.0
    cs.closed("sb", 2.0)
    m = take(cs, 2.0)
    assert m["conns"] == [] and m["gone"] == ["uuid-b"] and m["full"] is False
    assert m["connections"] == 1 and m["connections_max"] == 2
    assert m["conn_s"] == 2.0  # since the last report: 2 connections for 1 s


def test_short_connection_is_reported_opened_then_gone():
    cs = on()
    cs.opened("s", "1.2.3.4", 0.0)
    cs.closed("s", 0.1)
    m = take(cs, 1.0)
    assert m["conns"] == [["gripcast-edge0_9:1", "http", "1.2.3.4"]]
    assert m["gone"] == ["gripcast-edge0_9:1"]
    assert take(cs, 2.0)["conns"] == []


def test_upgrade_after_report_replaces_the_http_conn():
    cs = on()
    cs.opened("s", "1.2.3.4", 0.0)
    take(cs, 1.0)
    cs.websocket("s", None)  # WS-to-WS: a fresh uuid
    m = take(cs, 2.0)
    assert m["gone"] == ["gripcast-edge0_9:1"]
    ((cid, kind, peer),) = m["conns"]
    assert kind == "ws" and len(cid) == 36 and peer == "1.2.3.4"


def test_refresh_every_three_quarters_of_the_ttl_in_buckets():
    cs = on(ttl=8)  # 6 buckets of one report each
    for i in range(12):
        cs.opened(i, "p", 0.0)
    take(cs, 1.0)
    refreshed = {}
    for n in range(2, 14):
        for cid, _, _ in take(cs, float(n))["conns"]:
            refreshed.setdefault(cid, []).append(n)
    assert len(refreshed) == 12  # every connection, twice in 12 reports, 6 reports apart
    assert all(len(v) == 2 and v[1] - v[0] == 6 for v in refreshed.values())


def test_off_counts_only_then_on_reports_everything():
    cs = ConnStats("e")
    cs.opened("a", "p", 0.0)
    assert take(cs, 1.0) is None and cs._new == {}
    cs.opened("b", "p", 1.0)
    cs.closed("a", 1.5)
    cs.enable(120)
    m = take(cs, 2.0)
    assert [c[0] for c in m["conns"]] == ["e:2"] and m["gone"] == [] and m["full"]


def test_subscriber_counts_per_mode_with_hub_changes():
    hub = Hub()
    hub.changed = set()
    cs = on()
    s1, s2, s3 = S("stream"), S("stream"), S("ws")
    hub.add(s1, ["a"], 0)
    hub.add(s2, ["a", "b"], 0)
    hub.add(s3, ["a"], 0)
    assert cs.needs_full(0.0, "broker-1")
    m = take(cs, 1.0, hub=hub)
    assert sorted(m["subs"]) == [["stream", "a", 2], ["stream", "b", 1], ["ws", "a", 1]]
    hub.changed = set()
    hub.remove(s2, 1.5)
    assert hub.changed == {"a", "b"}
    assert not cs.needs_full(2.0, "broker-1")
    m = take(cs, 2.0, hub=hub, channels=hub.changed)
    assert sorted(m["subs"]) == [["stream", "a", 1], ["stream", "b", 0]]
    # nothing changed: nothing listed
    assert take(cs, 3.0, hub=hub, channels=set())["subs"] == []
    # a broker restart (new id) or a long silence: everything again
    assert cs.needs_full(4.0, "broker-2")
    m = take(cs, 4.0, hub=hub)
    assert m["full"] and sorted(m["subs"]) == [["stream", "a", 1], ["ws", "a", 1]]
    assert cs.needs_full(4.0 + 6.0, "broker-2")


def test_lost_report_makes_the_next_one_full():
    cs = on()
    take(cs, 1.0)
    assert not cs.needs_full(1.5, None)
    cs.report_lost()
    assert cs.needs_full(2.0, None)


def test_sent_is_a_delta_of_the_delivery_counter():
    cs = on()
    assert take(cs, 1.0, sent=100)["sent"] == 0
    assert take(cs, 2.0, sent=130)["sent"] == 30


def test_batch_events_wake_the_sender_and_pending_is_bounded():
    woke = []
    cs = on(batch_events=3, max_pending=4)
    cs.on_full = lambda: woke.append(1)
    for i in range(6):
        cs.opened(i, "p", 0.0)
    assert woke == [1]
    assert len(take(cs, 1.0)["conns"]) == 4 and cs.dropped == 2


def test_edge_reports_become_pushpin_conn_and_sub_packets():
    hub = Hub()
    hub.changed = set()
    cs = on()
    enc = StatsEncoder("gripcast-broker_1")
    cs.opened("s", "127.0.0.1", 0.0)
    hub.add(S("stream"), ["news"], 0.0)
    cs.needs_full(1.0, "b")
    out = [f.partition(b" ") for f in enc.edge_report(take(cs, 1.0, hub=hub), 1.0)]
    got = [(k, tnetstring.loads(rest[1:])) for k, _, rest in out]
    assert got[0] == (
        b"conn",
        {
            b"from": b"gripcast-edge0_9",
            b"id": b"gripcast-edge0_9:1",
            b"type": b"http",
            b"peer-address": b"127.0.0.1",
            b"ttl": 120,
        },
    )
    assert got[1] == (
        b"sub",
        {
            b"from": b"gripcast-broker_1",
            b"mode": b"stream",
            b"channel": b"news",
            b"ttl": 60,
            b"subscribers": 1,
        },
    )


def test_requests_and_activity_per_route_wake_the_sender_once():
    cs = on()
    woken = []
    cs.on_activity = lambda: woken.append(1)
    cs.request(None)
    cs.request("api")
    cs.request(None)
    cs.activity(None, 2)  # e.g. two stream keep-alives
    assert woken == [1] and cs.activity_pending
    m = take(cs, 1.0)
    assert m["activity"] == [["", 4], ["api", 1]] and m["requests"] == 3
    assert not cs.activity_pending
    m = take(cs, 2.0)
    assert "activity" not in m and "requests" not in m  # left out when there is none
    cs.request(None)
    assert woken == [1, 1]


def test_activity_not_kept_while_stats_are_off():
    cs = ConnStats("e")
    cs.request("api")
    assert not cs.activity_pending
    cs.enable(120)
    cs.enable(0)
    assert take(cs, 1.0) is None


def test_frequent_reports_do_not_speed_up_refreshes():
    cs = on(ttl=4)  # 3 buckets of one second
    for i in range(3):
        cs.opened(f"s{i}", "", 0.0)
    take(cs, 0.0)  # all three reported (new) and placed one per bucket
    refreshed = []
    for k in range(1, 31):  # ten reports a second (activity) for three seconds
        cs.request(None)
        m = take(cs, k / 10)
        refreshed += [c[0] for c in m["conns"]]
    # one bucket a second: each connection refreshed once per 3 s, not ten times as often
    assert sorted(refreshed) == [f"gripcast-edge0_9:{i}" for i in range(1, 4)]


def test_edge_activity_becomes_pushpin_activity_and_counts_packets():
    cs = on()
    cs.request("r1")
    m = take(cs, 1.0)
    enc = StatsEncoder("gripcast-broker_3")
    frames = enc.edge_report(m, 1.0)
    kinds = [f.partition(b" ")[0] for f in frames]
    assert kinds == [b"activity", b"counts"]
    fields = tnetstring.loads(frames[0].partition(b" T")[2])
    assert fields == {b"from": b"gripcast-broker_3", b"route": b"r1", b"count": 1}
