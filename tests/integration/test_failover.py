"""Fail-over across a route's targets, with real processes: the first target refuses
connections, the second answers. A plain request, a GRIP stream hold, its relative next link
and a WebSocket-over-HTTP session all reach the second target; a route whose only target
refuses answers 502 (so the refusing target really refuses)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets
from gripcontrol import GripPubControl, create_grip_channel_header

from tests.helpers import free_ports
from tests.integration.cluster import Cluster, Origin, StreamClient
from tests.integration.wsorigin import WohOriginApp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def plain(req):
    return 200, {"Content-Type": "text/plain"}, b"from the second target\n"


def stream(req):
    return (
        200,
        {
            "Content-Type": "text/plain",
            "Grip-Hold": "stream",
            "Grip-Channel": create_grip_channel_header("fo"),
            "Grip-Link": "</next>; rel=next; timeout=1",
        },
        b"[open]\n",
    )


def next_(req):
    return (
        200,
        {
            "Content-Type": "text/plain",
            "Grip-Hold": "stream",
            "Grip-Channel": create_grip_channel_header("fo"),
        },
        b"[next]\n",
    )


def test_requests_fail_over_to_the_second_target(tmp_path):
    dead = free_ports(1)[0]  # bound, then closed: connecting is refused
    with (
        Origin({"/plain": plain, "/stream": stream, "/next": next_}) as origin,
        WohOriginApp() as woh,
    ):
        routes = [
            f"*,path_beg=/only-dead 127.0.0.1:{dead}",
            f"*,path_beg=/ws 127.0.0.1:{dead},over_http 127.0.0.1:{woh.port},over_http",
            f"* 127.0.0.1:{dead} 127.0.0.1:{origin.port}",
        ]
        with Cluster(tmp_path, routes) as cluster:
            r = httpx.get(cluster.url("/only-dead"), timeout=10)
            assert r.status_code == 502, (r.status_code, r.text)

            r = httpx.get(cluster.url("/plain"), timeout=10)
            assert (r.status_code, r.text) == (200, "from the second target\n")

            c = StreamClient(cluster.url("/stream"))
            try:
                c.read_until(b"[open]\n")  # sent once the hold is positioned
                GripPubControl({"control_uri": cluster.publish_url}).publish_http_stream(
                    "fo", "published\n", blocking=True
                )
                c.read_until(b"published\n")
                c.read_until(b"[next]\n")  # the relative next link fails over too
            finally:
                c.close()
            assert [p for _, p, _, _ in origin.requests] == ["/plain", "/stream", "/next"]

            async def ws():
                url = f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=fows"
                async with websockets.connect(url) as conn:
                    await conn.send("hello")
                    assert await asyncio.wait_for(conn.recv(), 5) == "hello"

            asyncio.run(ws())
            assert woh.events("OPEN")
