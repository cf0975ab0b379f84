"""broker.ops.status: the live status page's data assembly, routing and auth (sans-IO: no
sockets, time passed in)."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from broker import wire
from broker.errors import RemoteProtocolError
from broker.history import HistoryStatistics
from broker.ingest.auth import PublishAuth, load_verify_key
from broker.ops.stats import StatsEncoder
from broker.ops.status import (
    COOKIE,
    ChannelRates,
    Figures,
    RateRing,
    StatusPage,
    StoreState,
    assemble,
    edge_rows,
    is_status_path,
    store_state,
)

SECRET = "a-long-enough-test-secret-of-32-bytes!"
T0 = 1_700_000_000.0


def report(edge, connections=0, sent=0, subs=(), **extra):
    m = {
        "op": "stats",
        "edge": edge,
        "connections": connections,
        "sent": sent,
        "subs": [list(s) for s in subs],
    }
    m.update(extra)
    return m


def figures(enc: StatsEncoder, now: float, **kw) -> Figures:
    base = dict(
        broker_id="b1",
        version="9.9",
        started=T0,
        draining=False,
        store=StoreState("memory", True, {}),
        received={"http": 5},
        rejected=1,
        published=5,
        fanned_out=4,
        fanout_dropped=0,
        live_channels=2,
        http_active=1,
        stats_socket=False,
        edges=edge_rows(enc.edges, now),
        delivered=enc.sent_total,
        top_subscribed=tuple(enc.top_channels(10)),
        channels_with_subscribers=enc.channels_with_subscribers(),
    )
    base.update(kw)
    return Figures(**base)


# -- rates ---------------------------------------------------------------------------------------


def test_rate_ring_turns_counters_into_per_second_rates():
    ring = RateRing(size=3)
    assert ring.add(T0, 100, 0) is None  # the first sample only sets the base
    s = ring.add(T0 + 1, 150, 300)
    assert (s.publish_per_s, s.deliver_per_s) == (50, 300)
    s = ring.add(T0 + 3, 170, 300)  # two seconds: a rate, not a count
    assert (s.publish_per_s, s.deliver_per_s) == (10, 0)
    assert ring.add(T0 + 3, 999, 999) is None  # no time passed: ignored
    s = ring.add(T0 + 4, 10, 10)  # a counter went down (a restart): 0, not negative
    assert (s.publish_per_s, s.deliver_per_s) == (0, 0)
    ring.add(T0 + 5, 20, 20)
    assert [x.t for x in ring.samples] == [T0 + 3, T0 + 4, T0 + 5]  # the ring keeps `size`
    assert ring.latest.publish_per_s == 10


def test_channel_rates_from_successive_positions():
    cr = ChannelRates()
    cr.update(T0, {"a": ("e", 10), "b": ("e", 5)})
    assert cr.rates == {}  # nothing to diff against yet
    cr.update(T0 + 1, {"a": ("e", 40), "b": ("e", 7), "c": ("e", 1000)})
    assert cr.rates == {"a": 30, "b": 2}  # c: first seen, its seq counts from before
    assert cr.top(1) == [("a", 30)]
    cr.update(T0 + 2, {"a": ("f", 3), "c": ("e", 1010)})  # a: new epoch; b: quiet
    assert cr.rates == {"c": 10}


# -- the document --------------------------------------------------------------------------------


def test_assemble_sums_the_edges_reports():
    enc = StatsEncoder(source="b")
    enc.edge_report(
        report(
            "edge0",
            connections=3,
            sent=10,
            subs=[("stream", "news", 2), ("ws", "news", 1), ("ws", "chat", 1)],
            version="1.2.3",
            addr="h0:7999",
            lagging=5,
            max_lag_s=3.5,
        ),
        T0,
    )
    enc.edge_report(report("edge1", connections=4, sent=5, subs=[("ws", "news", 4)]), T0 + 0.5)
    # the last report counts (release and address kept when a report leaves them out)
    enc.edge_report(report("edge0", connections=2, sent=7, lagging=1, max_lag_s=0.25), T0 + 1)
    ring = RateRing()
    ring.add(T0, 0, 0)
    ring.add(T0 + 1, 20, 40)
    doc = assemble(figures(enc, T0 + 1.5), ring.samples, [("news", 12.5)], T0 + 1.5)
    json.dumps(doc)  # serialisable as it is
    assert doc["totals"]["connections"] == 6
    assert doc["totals"]["delivered"] == 22
    assert doc["totals"]["channels_with_subscribers"] == 2
    e0, e1 = doc["edges"]
    assert (e0["name"], e0["addr"], e0["version"], e0["connections"]) == (
        "edge0",
        "h0:7999",
        "1.2.3",
        2,
    )
    assert (e0["sent"], e0["lagging"], e0["max_lag_s"]) == (17, 1, 0.25)
    assert e0["report_age_s"] == 0.5 and e0["up_s"] == 1.5
    assert (e1["name"], e1["addr"], e1["version"], e1["sent"]) == ("edge1", "", "", 5)
    assert doc["top_subscribed"] == [
        {"channel": "news", "subscribers": 7},
        {"channel": "chat", "subscribers": 1},
    ]
    assert doc["top_publishing"] == [{"channel": "news", "publish_per_s": 12.5}]
    assert doc["rates"] == {"publish_per_s": 20, "deliver_per_s": 40}
    assert doc["chart"]["samples"] == [[T0 + 1, 20, 40]]
    assert doc["broker"]["uptime_s"] == 1.5 and doc["broker"]["version"] == "9.9"
    assert doc["store"] == {"kind": "memory", "up": True, "detail": {}}


def test_assemble_with_nothing_yet():
    doc = assemble(figures(StatsEncoder(source="b"), T0), [], [], T0)
    assert doc["edges"] == [] and doc["chart"]["samples"] == []
    assert doc["rates"] == {"publish_per_s": 0.0, "deliver_per_s": 0.0}
    assert doc["totals"]["connections"] == 0


def test_an_expired_edge_leaves_the_page():
    enc = StatsEncoder(source="b")
    enc.edge_report(report("edge0", connections=3, subs=[("ws", "c", 3)]), T0)
    enc.expire(T0 + 60)
    doc = assemble(figures(enc, T0 + 60), [], [], T0 + 60)
    assert doc["edges"] == [] and doc["top_subscribed"] == []


def test_store_state():
    hist = HistoryStatistics(
        channels=2,
        retained=7,
        appended=9,
        evicted_channels=0,
        expired=0,
        trimmed=3,
        payload_bytes=120,
    )
    assert store_state("memory", hist, False) == StoreState(
        "memory", True, {"channels": 2, "retained": 7, "payload_bytes": 120, "trimmed": 3}
    )
    assert not store_state("memory", hist, True).up  # the last write failed


def test_store_state_of_redis():
    from broker.store.redis import RedisStoreStatistics
    from broker.store.redisclient import RedisClientStatistics

    def redis(connected):
        client = RedisClientStatistics(connected, "r1", 6379, 0, 1, 0, 2, 5, 5, 0, 0, 0, 0)
        return RedisStoreStatistics(5, 1, 1, 0, 0, 0, 0, client, None, 0, 0, 0)

    up = store_state("redis", redis(True), False)
    assert up == StoreState("redis", True, {"server": "r1:6379", "connected": True, "drops": 2})
    assert not store_state("redis", redis(False), False).up  # the connection is down
    assert not store_state("redis", redis(True), True).up  # the last write failed


@pytest.mark.parametrize(
    "field, value", [("version", 5), ("addr", "x" * 300), ("lagging", -1), ("max_lag_s", "1")]
)
def test_bad_status_fields_refuse_the_report(field, value):
    enc = StatsEncoder(source="b")
    with pytest.raises(RemoteProtocolError):
        enc.edge_report(report("edge0", **{field: value}), T0)
    assert enc.edges == {} and enc.bad_reports == 1


def test_the_wire_carries_the_status_fields_only_when_set():
    plain = wire.request_map(wire.StatsReport("e0"))
    assert not {"version", "addr", "lagging", "max_lag_s"} & plain.keys()
    m = wire.request_map(wire.StatsReport("e0", version="1", addr="h:1", lagging=2, max_lag_s=0.5))
    assert (m["version"], m["addr"], m["lagging"], m["max_lag_s"]) == ("1", "h:1", 2, 0.5)


# -- routing, caching, auth ------------------------------------------------------------------------


class Source:
    def __init__(self):
        self.calls = 0
        self.enc = StatsEncoder(source="b")

    def __call__(self, now):
        self.calls += 1
        return figures(self.enc, now)


def page(key: str = "", **kw):
    src = Source()
    return StatusPage(PublishAuth(load_verify_key(key)), src, html=b"<html>page</html>", **kw), src


def token(**claims):
    # PyJWT checks exp against the real clock (PublishAuth's ``now`` is not passed to it)
    return jwt.encode({"exp": int(time.time()) + 3600, **claims}, SECRET)


def header(resp, name):
    return [v for k, v in resp.headers if k.lower() == name.lower()]


def test_only_its_paths():
    assert is_status_path("/status") and is_status_path("/status/?x=1")
    assert is_status_path("/status/data?token=t")
    assert not is_status_path("/statusx") and not is_status_path("/status/other")
    p, _ = page()
    assert p.answer("GET", "/publish", [], T0) is None
    assert p.answer("GET", "/status/nope", [], T0) is None


def test_page_and_data_without_auth():
    p, src = page()
    r = p.answer("GET", "/status", [], T0)
    assert r.status == 200 and r.body == b"<html>page</html>"
    assert header(r, "Content-Type") == ["text/html; charset=utf-8"]
    assert "default-src 'none'" in header(r, "Content-Security-Policy")[0]
    assert header(r, "Content-Length") == [str(len(r.body))]
    r = p.answer("GET", "/status/data", [], T0)
    assert r.status == 200 and json.loads(r.body)["broker"]["id"] == "b1"
    assert header(r, "Cache-Control") == ["no-store"]
    assert p.answer("POST", "/status/data", [], T0).status == 405
    r = p.answer("HEAD", "/status/data", [], T0)
    assert r.status == 200 and r.body == b"" and int(header(r, "Content-Length")[0]) > 0


def test_the_data_is_assembled_at_most_once_per_cache_period():
    p, src = page(cache_s=0.5)
    first = p.answer("GET", "/status/data", [], T0).body
    for i in range(10):  # ten polls in 0.45 s: one assembly
        assert p.answer("GET", "/status/data", [], T0 + i * 0.05).body == first
    assert src.calls == 1
    p.answer("GET", "/status/data", [], T0 + 0.6)
    assert src.calls == 2


def test_with_very_many_channels_the_data_is_kept_longer():
    calls = []

    def source(now):
        calls.append(now)
        return figures(StatsEncoder(source="b"), now, channels_with_subscribers=300_000)

    p = StatusPage(PublishAuth(load_verify_key("")), source, html=b"", cache_s=0.5)
    for t in (0, 0.6, 1.4):  # 300,000 channels: 3 x CACHE_CHANNELS, so 1.5 s
        p.answer("GET", "/status/data", [], T0 + t)
    assert calls == [T0]
    p.answer("GET", "/status/data", [], T0 + 1.6)
    assert calls == [T0, T0 + 1.6]


@pytest.mark.parametrize("path", ["/status", "/status/data"])
def test_auth_refuses_a_missing_or_bad_token(path):
    p, _ = page(SECRET)
    for target, headers in [
        (path, []),
        (path + "?token=garbage", []),
        (path + "?token=" + jwt.encode({"exp": 2**31}, "another-secret-another-secret-!!"), []),
        (path, [("Cookie", f"{COOKIE}={token(exp=int(time.time()) - 600)}")]),
        (path, [(b"Authorization", b"Bearer nope")]),
        # a good cookie does not rescue a bad Authorization header
        (path, [(b"Authorization", b"Bearer nope"), ("Cookie", f"{COOKIE}={token()}")]),
    ]:
        r = p.answer("GET", target, headers, T0)
        assert r.status == 401, (target, headers)
        assert header(r, "WWW-Authenticate") == ["Bearer"]
        assert b"Invalid token" in r.body or b"Authorization required" in r.body
    assert p.refused == 6


def test_auth_accepts_a_header_a_query_token_or_the_cookie():
    p, _ = page(SECRET)
    t = token()
    assert (
        p.answer("GET", "/status/data", [(b"Authorization", f"Bearer {t}".encode())], T0).status
        == 200
    )
    assert p.answer("GET", "/status/data?token=" + t, [], T0).status == 200
    cookies = [("Cookie", f"other=1; {COOKIE}={t}")]
    assert p.answer("GET", "/status/data", cookies, T0).status == 200
    assert p.answer("GET", "/status", cookies, T0).status == 200


def test_opening_the_page_with_a_token_sets_the_cookie_and_drops_it_from_the_address():
    p, _ = page(SECRET)
    t = token()
    r = p.answer("GET", "/status?token=" + t, [], T0)
    assert r.status == 303 and header(r, "Location") == ["/status"]
    (cookie,) = header(r, "Set-Cookie")
    assert cookie.startswith(f"{COOKIE}={t};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/status" in cookie
    # without auth a query token is not needed and nothing is set
    p2, _ = page()
    assert p2.answer("GET", "/status?token=x", [], T0).status == 200


def test_the_packaged_page_is_self_contained():
    from broker.ops.status import page_html

    html = page_html().decode()
    assert "/status/data" in html and 'id="chart-publish"' in html
    # nothing fetched from elsewhere: no external scripts, styles or fonts
    for needle in ("http://", "https://", "src=", "@import", "url("):
        assert needle not in html
    assert html.count("href=") == html.count('href="data:')
