"""Prometheus metrics, /health and /ready of real broker and edge processes."""

from __future__ import annotations

import httpx
import pytest
from gripcontrol import GripPubControl, create_grip_channel_header
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port_block, free_ports, wait_for
from tests.integration.cluster import (
    PORT_KEYS,
    Cluster,
    Origin,
    Proc,
    StreamClient,
    gripcast,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def scrape(port: int) -> dict:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            key = s.name + (
                "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
                if s.labels
                else ""
            )
            out[key] = s.value
    return out


def stream_hold(channel):
    def handler(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header(channel),
            },
            b"[open]\n",
        )

    return handler


def test_metrics_move_with_traffic(tmp_path):
    base = free_port_block(2)
    mports = [base, base + 1]
    with (
        Origin({"/s": stream_hold("m")}) as origin,
        Cluster(
            tmp_path,
            [f"* 127.0.0.1:{origin.port}"],
            metrics_port=mports[0],
            edge_metrics_port=mports[1],
        ) as cluster,
    ):
        bport, eport = mports
        assert httpx.get(f"http://127.0.0.1:{bport}/health").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{bport}/ready").status_code == 200
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{eport}/ready").status_code == 200,
            what="edge ready",
        )
        before_b, before_e = scrape(bport), scrape(eport)
        clients = [StreamClient(cluster.url("/s")).wait_open() for _ in range(3)]
        for c in clients:
            c.read_until(b"[open]\n")
        pub = GripPubControl({"control_uri": cluster.publish_url})
        for i in range(5):
            pub.publish_http_stream("m", f"msg{i}\n")
        for c in clients:
            c.read_until(b"msg4\n")
        b, e = scrape(bport), scrape(eport)
        # (gripcontrol may batch several items into one request)
        assert (
            b["gripcast_broker_publishes_received_total{input=http}"]
            > before_b["gripcast_broker_publishes_received_total{input=http}"]
        )
        assert b["gripcast_broker_messages_stored_total"] == 5
        assert b["gripcast_broker_messages_fanned_out_total"] == 5
        assert b["gripcast_broker_live_channels"] == 1
        # the memory store reports its history (a Redis store reports replays instead)
        assert b["gripcast_broker_history_channels"] == 1
        assert b["gripcast_broker_history_retained"] == 5
        assert b["gripcast_broker_store_latency_seconds_count"] >= 1
        assert e["gripcast_edge_connections{transport=http}"] == 3
        assert e["gripcast_edge_held_sessions{mode=stream}"] == 3
        assert e["gripcast_edge_subscriptions"] == 3
        assert e["gripcast_edge_channels"] == 1
        assert (
            e["gripcast_edge_deliveries_total"] - before_e["gripcast_edge_deliveries_total"] == 15
        )
        assert e["gripcast_edge_messages_received_total"] == 5
        assert e["gripcast_edge_delivery_latency_seconds_count"] == 15
        assert e["gripcast_edge_delivery_latency_seconds_bucket{le=10.0}"] == 15
        assert e["gripcast_edge_broker_link_up"] == 1
        assert e["gripcast_edge_slow_consumer_disconnects_total"] == 0
        # trio tasks alive in each process (read from trio's own run statistics)
        assert e["gripcast_edge_trio_tasks"] >= 1 and b["gripcast_broker_trio_tasks"] >= 1
        for c in clients:
            c.close()
        r = httpx.get(f"http://127.0.0.1:{eport}/nope")
        assert r.status_code == 404


def test_edge_not_ready_until_broker_link_is_up(tmp_path):
    ports = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS))))
    eport = free_port_block(1)
    cfg = write_config(tmp_path / "g.toml", ports, [], edge_metrics_port=eport)
    edge = Proc(gripcast("edge", "--config", cfg)).wait_ready()
    broker = None
    try:
        r = httpx.get(f"http://127.0.0.1:{eport}/ready")
        assert r.status_code == 503
        assert "broker link" in r.text
        assert httpx.get(f"http://127.0.0.1:{eport}/health").status_code == 200
        assert scrape(eport)["gripcast_edge_broker_link_up"] == 0
        broker = Proc(gripcast("broker", "--config", cfg)).wait_ready()
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{eport}/ready").status_code == 200,
            what="edge ready once the broker is up",
        )
    finally:
        assert edge.stop() == 0
        if broker is not None:
            assert broker.stop() == 0
