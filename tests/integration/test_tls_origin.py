"""HTTPS and WSS origins behind a real gripcast cluster (issue 14, origin side).

The origins are Python TLS servers in the test (http.server and the ``websockets`` library
with an ``ssl`` context), their certificates issued at test time by a test CA
(``tests.edge.test_origin_tls.Pki``, the ``cryptography`` package).  gripcast verifies them
against that CA through the ``origin_ca_file`` config key (docs/tls.md)."""

from __future__ import annotations

import asyncio
import ssl
import threading

import httpx
import pytest
import websockets
from gripcontrol import GripPubControl, HttpStreamFormat, WebSocketMessageFormat
from pubcontrol import Item

from tests.edge.test_origin_tls import Pki, server_context
from tests.helpers import free_ports
from tests.integration.cluster import Cluster, Origin
from tests.integration.wsorigin import WohOriginApp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


def tls_origin(ctx: ssl.SSLContext, routes: dict) -> Origin:
    """A scripted ``Origin`` (tests.integration.cluster) serving HTTPS with ``ctx``."""
    origin = Origin(routes)
    origin.httpd.socket = ctx.wrap_socket(origin.httpd.socket, server_side=True)
    return origin


def hello(peers: list):
    def fn(h):
        peers.append(h.client_address[1])
        return 200, {"Content-Type": "text/plain"}, b"hello over tls\n"

    return fn


def stream(channel: str):
    def fn(h):
        return (
            200,
            {"Content-Type": "text/plain", "Grip-Hold": "stream", "Grip-Channel": channel},
            b"start\n",
        )

    return fn


def origin_tls_counts(metrics_port: int) -> tuple[int, ...]:
    """The edge's origin TLS counters: (handshakes, failures, verification failures)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    values = dict(line.split() for line in text.splitlines() if line.startswith("gripcast_"))
    return tuple(
        int(float(values[f"gripcast_edge_origin_tls_{n}_total"]))
        for n in ("handshakes", "handshake_failures", "verify_failures")
    )


def publish(cluster: Cluster, channel: str, fmt) -> None:
    GripPubControl({"control_uri": cluster.publish_url}).publish(channel, Item(fmt), blocking=True)


def test_https_origin_verified_kept_alive_and_streams(tmp_path, pki):
    cert, key = pki.issue("localhost", dns=["localhost"])
    peers: list[int] = []
    with tls_origin(server_context(cert, key), {"/x": hello(peers), "/s": stream("tls-s")}) as o:
        routes = [f"* localhost:{o.port},ssl"]
        metrics_port = free_ports(1)[0]
        with Cluster(
            tmp_path, routes, origin_ca_file=pki.ca_file, edge_metrics_port=metrics_port
        ) as cluster:
            with httpx.Client(timeout=10) as c:
                for _ in range(3):
                    r = c.get(cluster.url("/x"))
                    assert (r.status_code, r.text) == (200, "hello over tls\n")
            assert len(peers) == 3 and len(set(peers)) == 1, peers  # one TLS connection, reused
            assert origin_tls_counts(metrics_port) == (1, 0, 0)  # one handshake, kept alive
            with httpx.Client(timeout=10) as c, c.stream("GET", cluster.url("/s")) as r:
                it = r.iter_raw()
                assert next(it) == b"start\n"
                publish(cluster, "tls-s", HttpStreamFormat("pub\n"))
                assert next(it) == b"pub\n"
    assert o.requests[0][2]["Grip-Sig"]  # signed as over plain HTTP


def test_wrong_ca_is_502_with_the_reason_on_debug_routes(tmp_path, pki):
    cert, key = pki.issue("localhost", dns=["localhost"])
    other = Pki(tmp_path, "Other CA")
    with tls_origin(server_context(cert, key), {"/x": hello([])}) as o:
        routes = [
            f"*,path_beg=/dbg,debug,replace_beg=/x localhost:{o.port},ssl",
            f"* localhost:{o.port},ssl",
        ]
        metrics_port = free_ports(1)[0]
        with Cluster(
            tmp_path, routes, origin_ca_file=other.ca_file, edge_metrics_port=metrics_port
        ) as cluster:
            r = httpx.get(cluster.url("/x"), timeout=10)
            assert (r.status_code, r.text) == (502, "Error while proxying to origin.\n")
            r = httpx.get(cluster.url("/dbg"), timeout=10)
            assert r.status_code == 502
            assert "certificate verify failed" in r.text, r.text
            # (handshakes, failures, verification failures) in the edge's /metrics
            assert origin_tls_counts(metrics_port) == (0, 2, 2)
    assert o.requests == []


def test_insecure_target_skips_verification(tmp_path, pki):
    cert, key = pki.issue("somewhere-else", dns=["somewhere-else.example"])
    with tls_origin(server_context(cert, key), {"/x": hello([])}) as o:
        with Cluster(tmp_path, [f"* 127.0.0.1:{o.port},ssl,insecure"]) as cluster:
            r = httpx.get(cluster.url("/x"), timeout=10)
            assert (r.status_code, r.text) == (200, "hello over tls\n")


def test_mutual_tls_client_certificate(tmp_path, pki):
    cert, key = pki.issue("localhost", dns=["localhost"])
    ccert, ckey = pki.issue("edge-client", client=True)
    ctx = server_context(cert, key, client_ca=pki.ca_file)
    with tls_origin(ctx, {"/x": hello([])}) as o:
        routes = [
            f"*,path_beg=/mtls,replace_beg=/x localhost:{o.port},ssl,"
            f"client_cert={ccert},client_key={ckey}",
            f"* localhost:{o.port},ssl",
        ]
        with Cluster(tmp_path, routes, origin_ca_file=pki.ca_file) as cluster:
            r = httpx.get(cluster.url("/mtls"), timeout=10)
            assert (r.status_code, r.text) == (200, "hello over tls\n")
            r = httpx.get(cluster.url("/x"), timeout=10)  # no client certificate: refused
            assert r.status_code == 502
    assert len(o.requests) == 1


async def _recv(ws) -> str:
    return await asyncio.wait_for(ws.recv(), 10)


def test_websocket_to_websocket_over_wss(tmp_path, pki):
    from websockets.sync.server import serve

    cert, key = pki.issue("localhost", dns=["localhost"])
    seen = []

    def handler(conn):
        seen.append(conn.request.headers)
        conn.send('c:{"type": "subscribe", "channel": "wss-ch"}')
        for msg in conn:
            conn.send("m:" + msg)

    def add_grip(conn, request, response):
        response.headers["Sec-WebSocket-Extensions"] = "grip"

    server = serve(
        handler, "127.0.0.1", 0, ssl=server_context(cert, key), process_response=add_grip
    )
    port = server.socket.getsockname()[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        routes = [f"* localhost:{port},ssl"]
        with Cluster(tmp_path, routes, origin_ca_file=pki.ca_file) as cluster:

            async def main():
                async with websockets.connect(f"ws://127.0.0.1:{cluster.edge_ports[0]}/x") as ws:
                    await ws.send("hi")
                    assert await _recv(ws) == "hi"
                    await asyncio.to_thread(
                        publish, cluster, "wss-ch", WebSocketMessageFormat("pub")
                    )
                    assert await _recv(ws) == "pub"

            asyncio.run(main())
    finally:
        server.shutdown()
        t.join(5)
    assert seen and seen[0]["Grip-Sig"]


def test_websocket_over_http_to_an_https_origin(tmp_path, pki):
    cert, key = pki.issue("localhost", dns=["localhost"])
    app = WohOriginApp()
    app.httpd.socket = server_context(cert, key).wrap_socket(app.httpd.socket, server_side=True)
    with app:
        routes = [f"* localhost:{app.port},ssl,over_http"]
        with Cluster(tmp_path, routes, origin_ca_file=pki.ca_file) as cluster:

            async def main():
                url = f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=woh-tls"
                async with websockets.connect(url) as ws:
                    await ws.send("echo me")
                    assert await _recv(ws) == "echo me"
                    await asyncio.to_thread(
                        publish, cluster, "woh-tls", WebSocketMessageFormat("pub")
                    )
                    assert await _recv(ws) == "pub"

            asyncio.run(main())
    assert app.events("OPEN")
