"""Pushpin's stats socket on the broker, read with a plain ZeroMQ SUB as Pushpin's tools do."""

from __future__ import annotations

import contextlib
import ipaddress
import time
import uuid

import httpx
import pytest
import zmq
from gripcontrol import create_grip_channel_header
from websockets.sync.client import connect as ws_connect

from broker.ingest import tnetstring
from tests.helpers import free_port_block
from tests.integration.cluster import Cluster, Origin, StreamClient
from tests.integration.test_metrics import scrape
from tests.integration.wsorigin import WohOriginApp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def test_stats_socket_sub_message_report(tmp_path):
    def hold(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header("st"),
            },
            b"[open]\n",
        )

    sport = free_port_block(1)
    with (
        Origin({"/s": hold}) as origin,
        Cluster(
            tmp_path,
            [f"* 127.0.0.1:{origin.port}"],
            stats_spec=f"tcp://127.0.0.1:{sport}",
            stats_report_interval_s=0.5,
        ) as cluster,
    ):
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        for t in (b"sub ", b"message ", b"report "):
            sub.setsockopt(zmq.SUBSCRIBE, t)
        sub.connect(f"tcp://127.0.0.1:{sport}")
        try:
            seen: dict[str, list[dict]] = {}
            # wait for a report: proves the SUB is connected (slow joiner) before traffic
            deadline = time.monotonic() + 10

            def pump(until):
                while not until():
                    assert time.monotonic() < deadline, seen.keys()
                    if sub.poll(100):
                        kind, _, rest = sub.recv().partition(b" ")
                        assert rest[:1] == b"T"
                        fields = {_s(k): _s(v) for k, v in tnetstring.loads(rest[1:]).items()}
                        assert fields["from"].startswith("gripcast-broker_")
                        seen.setdefault(kind.decode(), []).append(fields)

            pump(lambda: "report" in seen)
            client = StreamClient(cluster.url("/s")).wait_open()
            client.read_until(b"[open]\n")
            r = httpx.post(
                cluster.publish_url + "/publish/",
                json={
                    "items": [
                        {
                            "channel": "st",
                            "id": "m1",
                            "formats": {"http-stream": {"content": "x\n"}},
                        }
                    ]
                },
            )
            assert r.status_code == 200
            client.read_until(b"x\n")
            pump(
                lambda: (
                    any(m["channel"] == "st" for m in seen.get("message", []))
                    and any(s["channel"] == "st" for s in seen.get("sub", []))
                )
            )
            msg = next(m for m in seen["message"] if m["channel"] == "st")
            assert msg["item-id"] == "m1" and msg["transport"] == "http-stream"
            n = len(seen["report"])
            pump(
                lambda: (
                    len(seen["report"]) > n
                    and any(rep["received"] >= 1 for rep in seen["report"][n:])
                    or any(rep["received"] >= 1 for rep in seen["report"])
                )
            )
            client.close()
        finally:
            sub.close()
            ctx.term()


def _monitorstats_decode(m_raw: bytes):
    """What Pushpin's tools/monitorstats.py does with a frame, plus the type checks of
    Pushpin's ``StatsPacket::fromVariant`` (strings are byte strings, ttl/counts ints,
    ``unavailable`` a bool, ``peer-address`` an IP address)."""
    at = m_raw.find(b" ")
    mtype = m_raw[:at].decode()
    mdata = m_raw[at + 1 :]
    assert mdata[0] == ord(b"T"), m_raw
    raw = tnetstring.loads(mdata[1:])
    assert isinstance(raw, dict) and isinstance(raw[b"from"], bytes)
    if mtype == "conn":
        assert isinstance(raw[b"id"], bytes)
        if b"unavailable" in raw:
            assert raw[b"unavailable"] is True
        else:
            assert raw[b"type"] in (b"http", b"ws") and isinstance(raw[b"ttl"], int)
            ipaddress.ip_address(raw[b"peer-address"].decode())
    elif mtype == "sub":
        assert raw[b"mode"] in (b"response", b"stream", b"ws") and isinstance(
            raw[b"channel"], bytes
        )
        assert raw.get(b"unavailable") is True or isinstance(raw[b"ttl"], int)
    elif mtype == "report":
        assert all(isinstance(raw[k], int) for k in (b"connections", b"received", b"sent"))
    return mtype, {_s(k): _s(v) for k, v in raw.items()}


def test_stats_socket_conn_events_from_edges(tmp_path):
    """HTTP stream and WebSocket clients through an edge show up as Pushpin ``conn`` packets
    (type, peer, ttl), go ``unavailable`` when they leave, and count in ``report`` and ``sub``."""

    def hold(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header("cs"),
            },
            b"[open]\n",
        )

    sport = free_port_block(2)
    mport = sport + 1
    with (
        WohOriginApp() as woh,
        Origin({"/s": hold}) as origin,
        Cluster(
            tmp_path,
            [f"*,path_beg=/ws 127.0.0.1:{woh.port},over_http", f"* 127.0.0.1:{origin.port}"],
            metrics_port=mport,
            stats_spec=f"tcp://127.0.0.1:{sport}",
            stats_report_interval_s=0.5,
        ) as cluster,
    ):
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")  # everything, as monitorstats.py without a filter
        sub.connect(f"tcp://127.0.0.1:{sport}")
        seen: list[tuple[str, dict]] = []
        deadline = time.monotonic() + 30

        def pump(pred, start=0):
            """The first packet from ``seen[start:]`` on that matches, receiving until one does."""
            while True:
                for kind, f in seen[start:]:
                    if pred(kind, f):
                        return (kind, f)
                assert time.monotonic() < deadline, seen[-20:]
                if sub.poll(100):
                    seen.append(_monitorstats_decode(sub.recv()))

        with contextlib.ExitStack() as stack:
            stack.callback(ctx.term)
            stack.callback(sub.close)
            pump(lambda k, f: k == "report")  # the SUB is connected (slow joiner)
            http = stack.enter_context(httpx.Client(timeout=10))
            resp = stack.enter_context(http.stream("GET", cluster.url("/s")))
            chunks = resp.iter_raw()
            body = b""
            while b"[open]\n" not in body:
                body += next(chunks)
            _, conn = pump(lambda k, f: k == "conn" and f.get("type") == "http")
            assert conn["from"].startswith("gripcast-edge0_")
            assert conn["id"].startswith(conn["from"] + ":")
            assert conn["peer-address"] == "127.0.0.1" and conn["ttl"] == 120
            _, s = pump(lambda k, f: k == "sub" and f["channel"] == "cs")
            assert s == {
                "from": s["from"],
                "mode": "stream",
                "channel": "cs",
                "ttl": 60,
                "subscribers": 1,
            } and s["from"].startswith("gripcast-broker_")

            ws = stack.enter_context(
                ws_connect(f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=cs", open_timeout=10)
            )
            _, wconn = pump(lambda k, f: k == "conn" and f.get("type") == "ws")
            uuid.UUID(wconn["id"])  # Pushpin's WebSocket ids are uuids: the Connection-Id
            assert any(h.get("Connection-Id") == wconn["id"] for h, _ in woh.requests)
            assert wconn["peer-address"] == "127.0.0.1"
            pump(
                lambda k, f: (
                    k == "sub"
                    and f["channel"] == "cs"
                    and f["mode"] == "ws"
                    and f.get("subscribers") == 1
                )
            )
            pump(lambda k, f: k == "report" and f["connections"] >= 2, start=len(seen))
            m = scrape(mport)
            assert m["gripcast_broker_edges_reporting"] == 1
            assert m["gripcast_broker_stats_edge_reports_total"] >= 1
            assert m["gripcast_broker_stats_edge_reports_bad_total"] == 0

            # a publish reaches both; message packets count each transport's receivers
            r = httpx.post(
                cluster.publish_url + "/publish/",
                json={
                    "items": [
                        {
                            "channel": "cs",
                            "id": "m1",
                            "formats": {
                                "http-stream": {"content": "x\n"},
                                "ws-message": {"content": "y"},
                            },
                        }
                    ]
                },
            )
            assert r.status_code == 200
            while b"x\n" not in body:
                body += next(chunks)
            assert ws.recv(timeout=10) == "y"
            _, msg = pump(lambda k, f: k == "message" and f["transport"] == "ws-message")
            assert msg["count"] == 1 and msg["item-id"] == "m1"
            pump(lambda k, f: k == "report" and f["sent"] >= 2)

            resp.close()  # not read to the end: the connection is closed, not pooled
            pump(lambda k, f: k == "conn" and f["id"] == conn["id"] and f.get("unavailable"))
            ws.close()
            pump(lambda k, f: k == "conn" and f["id"] == wconn["id"] and f.get("unavailable"))
            pump(
                lambda k, f: (
                    k == "sub"
                    and f["channel"] == "cs"
                    and f["mode"] == "ws"
                    and f.get("unavailable")
                )
            )
            pump(lambda k, f: k == "report" and f["connections"] == 0, start=len(seen))

            # the broker built every message packet for this consumer; once it leaves, a
            # publish builds none (the XPUB's unsubscribe notice)
            m = scrape(mport)
            assert m["gripcast_broker_stats_message_listeners"] == 1
            assert m["gripcast_broker_stats_message_packets_skipped_total"] == 0
            sub.close()
            until = time.monotonic() + 10
            while scrape(mport)["gripcast_broker_stats_message_listeners"] != 0:
                assert time.monotonic() < until
                time.sleep(0.05)
            item = {"channel": "cs", "formats": {"http-stream": {"content": "z\n"}}}
            r = httpx.post(cluster.publish_url + "/publish/", json={"items": [item]})
            assert r.status_code == 200
            assert scrape(mport)["gripcast_broker_stats_message_packets_skipped_total"] == 1
