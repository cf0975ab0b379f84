"""Pushpin's stats socket on the broker, read with a plain ZeroMQ SUB as Pushpin's tools do."""
from __future__ import annotations

import time

import httpx
import pytest
import zmq
from gripcontrol import create_grip_channel_header

from broker import tnetstring
from tests.helpers import free_port_block
from tests.integration.cluster import Cluster, Origin, StreamClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def test_stats_socket_sub_message_report(tmp_path):
    def hold(req):
        return 200, {"Content-Type": "text/plain", "Grip-Hold": "stream",
                     "Grip-Channel": create_grip_channel_header("st")}, b"[open]\n"

    sport = free_port_block(1)
    with Origin({"/s": hold}) as origin, \
            Cluster(tmp_path, [f"* 127.0.0.1:{origin.port}"], stats_spec=f"tcp://127.0.0.1:{sport}",
                    stats_report_interval_s=0.5) as cluster:
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
            r = httpx.post(cluster.publish_url + "/publish/", json={"items": [
                {"channel": "st", "id": "m1", "formats": {"http-stream": {"content": "x\n"}}}]})
            assert r.status_code == 200
            client.read_until(b"x\n")
            pump(lambda: any(m["channel"] == "st" for m in seen.get("message", []))
                 and any(s["channel"] == "st" for s in seen.get("sub", [])))
            msg = next(m for m in seen["message"] if m["channel"] == "st")
            assert msg["item-id"] == "m1" and msg["transport"] == "http-stream"
            n = len(seen["report"])
            pump(lambda: len(seen["report"]) > n and any(
                rep["received"] >= 1 for rep in seen["report"][n:]) or
                any(rep["received"] >= 1 for rep in seen["report"]))
            client.close()
        finally:
            sub.close()
            ctx.term()
