"""Fail-over across a route's targets (one loop, ``edge.origin.client.connect_first``, used by
origin requests and WebSocket-to-WebSocket): the first target refuses connections, the second
answers, for an HTTP request and a WebSocket handshake alike."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest
import websockets

from tests.integration.cluster import Cluster, Origin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_http_and_ws_to_ws_fail_over_to_the_second_target(tmp_path):
    from websockets.sync.server import serve

    # bound but never listening: a connect to it is refused, and no one else can take the port
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]

    def echo(conn):
        for msg in conn:
            conn.send("second:" + msg)

    server = serve(echo, "127.0.0.1", 0)
    ws_port = server.socket.getsockname()[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with Origin(
            {"/http/a": lambda req: (200, {"Content-Type": "text/plain"}, b"second\n")}
        ) as origin:
            routes = [
                f"*,path_beg=/http 127.0.0.1:{dead_port} 127.0.0.1:{origin.port}",
                f"* 127.0.0.1:{dead_port} 127.0.0.1:{ws_port}",
            ]
            with Cluster(tmp_path, routes=routes) as cluster:
                r = httpx.get(cluster.url("/http/a"), timeout=20)
                assert (r.status_code, r.text) == (200, "second\n")
                assert [p for _, p, _, _ in origin.requests] == ["/http/a"]

                async def main():
                    async with websockets.connect(
                        f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws"
                    ) as ws:
                        await ws.send("hi")
                        assert await asyncio.wait_for(ws.recv(), 5) == "second:hi"

                asyncio.run(main())
    finally:
        server.shutdown()
        t.join(5)
        dead.close()
