"""Chaining for real (issue 14, docs/chaining.md): GRIP proxies and a gateway in front of and
behind gripcast, each a real process on 127.0.0.1.

* gripcast in front of gripcast, and Debian's Pushpin in front of gripcast: the back one has
  ``upstream_key`` = the front one's ``sig_key``, so it keeps the front's ``Grip-*`` headers and
  passes the origin's GRIP instructions up: the front holds the stream, a publish to the front
  reaches the client, a publish to the back does not.
* a forged or wrongly signed ``Grip-Sig`` straight to the back: an ordinary client.
* nginx (a plain reverse proxy standing in for an API gateway such as Kong) terminating TLS in
  front of gripcast, and gripcast in front of nginx (over TLS) in front of the origin.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx
import jwt
import pytest
from gripcontrol import GripPubControl, HttpStreamFormat
from pubcontrol import Item

from bench.procs import wait_port
from broker.config import Config
from tests.edge.test_origin_tls import Pki
from tests.helpers import free_ports, skip_missing, stop_process
from tests.integration.cluster import Cluster, Origin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FRONT_KEY = "front-proxy-shared-secret-0123456789"
BACK_KEY = "back-own-signing-secret-0123456789ab"


def publish(url: str, channel: str, text: str) -> None:
    GripPubControl({"control_uri": url}).publish(
        channel, Item(HttpStreamFormat(text)), blocking=True
    )


def grip_origin(channel: str) -> Origin:
    def hold(h):
        return (
            200,
            {"Content-Type": "text/plain", "Grip-Hold": "stream", "Grip-Channel": channel},
            b"start\n",
        )

    def ok(h):
        return 200, {"Content-Type": "text/plain"}, b"ok\n"

    def held(h):  # the harness's warm-up of Pushpin's hand-off to its handler
        return 200, {"Grip-Hold": "stream", "Grip-Channel": "__warmup__"}, b"held\n"

    return Origin({"/s": hold, "/__warmup__": ok, "/__warmup_hold__": held})


def sub(tmp_path, name: str):
    d = tmp_path / name
    d.mkdir()
    return d


def read_stream(url: str, publish_first, expect: list[bytes], **client_kw) -> list[bytes]:
    """GET ``url``, read ``start``, call ``publish_first()``, then read ``expect``'s chunks."""
    got = []
    with httpx.Client(timeout=10, **client_kw) as c, c.stream("GET", url) as r:
        assert r.status_code == 200, r.read()
        assert "grip-hold" not in {k.lower() for k in r.headers}
        it = r.iter_raw()
        buf = b""
        while b"start\n" not in buf:
            buf += next(it)
        publish_first()
        buf = buf.split(b"start\n", 1)[1]
        want = b"".join(expect)
        while len(buf) < len(want):
            buf += next(it)
        got.append(buf)
    return got


def test_gripcast_in_front_of_gripcast(tmp_path):
    with grip_origin("chain-gg") as origin:
        back = Cluster(
            sub(tmp_path, "back"),
            [f"* 127.0.0.1:{origin.port}"],
            upstream_key=FRONT_KEY,
            sig_key=BACK_KEY,
        )
        with back:
            front = Cluster(
                sub(tmp_path, "front"),
                [f"* 127.0.0.1:{back.edge_ports[0]}"],
                sig_key=FRONT_KEY,
                sig_iss="front",
            )
            with front:

                def pub():
                    publish(back.publish_url, "chain-gg", "from-back\n")  # not held there
                    publish(front.publish_url, "chain-gg", "from-front\n")

                got = read_stream(front.url("/s"), pub, [b"from-front\n"])
                assert got == [b"from-front\n"]
    headers = origin.requests[0][2]
    claims = jwt.decode(headers["Grip-Sig"], FRONT_KEY, algorithms=["HS256"])
    assert claims["iss"] == "front"  # the front's signature, passed through by the back
    assert headers["Grip-Feature"].startswith("status")


def test_wrong_or_forged_grip_sig_is_an_ordinary_client(tmp_path):
    forged = jwt.encode({"iss": "front", "exp": 4102444800}, "not-the-upstream-key-0123456789ab")
    with grip_origin("chain-forged") as origin:
        with Cluster(
            tmp_path, [f"* 127.0.0.1:{origin.port}"], upstream_key=FRONT_KEY, sig_key=BACK_KEY
        ) as back:
            got = read_stream(
                back.url("/s"),
                lambda: publish(back.publish_url, "chain-forged", "held-here\n"),
                [b"held-here\n"],
                headers={"Grip-Sig": forged, "Grip-Hold": "response"},
            )
            assert got == [b"held-here\n"]
    headers = origin.requests[0][2]
    assert jwt.decode(headers["Grip-Sig"], BACK_KEY, algorithms=["HS256"])["iss"] == "pushpin"
    assert "Grip-Hold" not in headers


def test_pushpin_in_front_of_gripcast(tmp_path):
    from tests.differential.harness import PUSHPIN_BIN, PushpinSystem

    if not PUSHPIN_BIN:
        skip_missing("pushpin (Debian package pushpin)")
    with grip_origin("chain-pg") as origin:
        with Cluster(
            sub(tmp_path, "back"),
            [f"* 127.0.0.1:{origin.port}"],
            upstream_key=FRONT_KEY,
            sig_key=BACK_KEY,
        ) as back:
            pushpin = PushpinSystem(
                sub(tmp_path, "pushpin"),
                f"* 127.0.0.1:{back.edge_ports[0]}\n",
                {"proxy": {"sig_key": FRONT_KEY, "sig_iss": "pushpin-front"}},
                warmup=True,
            ).start()
            try:

                def pub():
                    publish(back.publish_url, "chain-pg", "from-back\n")
                    publish(pushpin.publish_url, "chain-pg", "from-pushpin\n")

                got = read_stream(
                    f"http://127.0.0.1:{pushpin.client_port}/s", pub, [b"from-pushpin\n"]
                )
                assert got == [b"from-pushpin\n"]
            finally:
                pushpin.stop()
    stream_reqs = [r for r in origin.requests if r[1] == "/s"]
    claims = jwt.decode(stream_reqs[0][2]["Grip-Sig"], FRONT_KEY, algorithms=["HS256"])
    assert claims["iss"] == "pushpin-front"


# -- nginx as the gateway ---------------------------------------------------------------------


class Nginx:
    """nginx with its own prefix, config and pid file in ``dir``, in the foreground."""

    def __init__(self, dir, servers: str) -> None:
        binary = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else ""
        )
        if not binary:
            skip_missing("nginx (Debian package nginx)")
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(
            f"{k}_temp_path {dir}/{k};\n"
            for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = dir / "nginx.conf"
        conf.write_text(
            f"{user}worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\n"
            f"error_log {dir}/error.log info;\nevents {{ worker_connections 256; }}\n"
            f"http {{\naccess_log off;\n{temp}{servers}\n}}\n"
        )
        self.dir = dir
        self.argv = [binary, "-c", str(conf), "-p", str(dir), "-e", f"{dir}/error.log"]

    def __enter__(self) -> Nginx:
        self.proc = subprocess.Popen(self.argv)
        return self

    def wait(self, port: int) -> None:
        try:
            wait_port(port, 15, self.proc)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        stop_process(self.proc)


PROXY = """proxy_http_version 1.1; proxy_buffering off; proxy_request_buffering off;
proxy_set_header Connection ""; proxy_read_timeout 60s;"""


def test_nginx_terminating_tls_in_front_of_gripcast(tmp_path):
    pki = Pki(tmp_path)
    cert, key = pki.issue("localhost", dns=["localhost"])
    accept_xfp = "accept_x_forwarded_protocol" in {f for f in Config.__dataclass_fields__}
    extra = {"accept_x_forwarded_protocol": True} if accept_xfp else {}
    with grip_origin("chain-ng") as origin:
        with Cluster(sub(tmp_path, "gc"), [f"* 127.0.0.1:{origin.port}"], **extra) as gc:
            (tls_port,) = free_ports(1)  # (once the cluster has its ports)
            servers = f"""server {{
  listen 127.0.0.1:{tls_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
  location / {{ proxy_pass http://127.0.0.1:{gc.edge_ports[0]}; {PROXY}
    proxy_set_header Host $http_host; proxy_set_header X-Forwarded-Proto $scheme; }}
}}"""
            with Nginx(sub(tmp_path, "nginx"), servers) as ng:
                ng.wait(tls_port)
                got = read_stream(
                    f"https://localhost:{tls_port}/s",
                    lambda: publish(gc.publish_url, "chain-ng", "through-nginx\n"),
                    [b"through-nginx\n"],
                    verify=ssl_ctx(pki.ca_file),
                )
                assert got == [b"through-nginx\n"]
    headers = origin.requests[0][2]
    if accept_xfp:  # the gateway's X-Forwarded-Proto is believed: the client was on https
        assert headers.get("X-Forwarded-Proto") == "https", headers


def ssl_ctx(ca_file: str):
    import ssl

    return ssl.create_default_context(cafile=ca_file)


def test_gripcast_in_front_of_nginx_over_tls_in_front_of_the_origin(tmp_path):
    pki = Pki(tmp_path)
    cert, key = pki.issue("localhost", dns=["localhost"])
    (tls_port,) = free_ports(1)
    with grip_origin("chain-gn") as origin:
        servers = f"""server {{
  listen 127.0.0.1:{tls_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
  location / {{ proxy_pass http://127.0.0.1:{origin.port}; {PROXY} proxy_set_header Host $http_host; }}
}}"""
        with Nginx(sub(tmp_path, "nginx"), servers) as ng:
            ng.wait(tls_port)
            with Cluster(
                sub(tmp_path, "gc"),
                [f"* localhost:{tls_port},ssl"],
                origin_ca_file=pki.ca_file,
            ) as gc:
                got = read_stream(
                    gc.url("/s"),
                    lambda: publish(gc.publish_url, "chain-gn", "via-gateway\n"),
                    [b"via-gateway\n"],
                )
                assert got == [b"via-gateway\n"]
    assert origin.requests[0][2]["Grip-Sig"]  # gripcast's signature went through nginx


def test_websocket_gripcast_in_front_of_gripcast(tmp_path):
    """WebSocket-to-WebSocket through both: the back relays the origin's grip extension and its
    control messages up untouched; the front acts on them (subscribes, strips the prefix)."""
    import asyncio
    import threading

    import websockets
    from gripcontrol import WebSocketMessageFormat
    from websockets.sync.server import serve

    seen = []

    def handler(conn):
        seen.append(conn.request.headers)
        conn.send('c:{"type": "subscribe", "channel": "chain-ws"}')
        for msg in conn:
            conn.send("m:" + msg)

    def add_grip(conn, request, response):
        response.headers["Sec-WebSocket-Extensions"] = "grip"

    server = serve(handler, "127.0.0.1", 0, process_response=add_grip)
    port = server.socket.getsockname()[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with Cluster(
            sub(tmp_path, "back"), [f"* 127.0.0.1:{port}"], upstream_key=FRONT_KEY, sig_key=BACK_KEY
        ) as back:
            with Cluster(
                sub(tmp_path, "front"),
                [f"* 127.0.0.1:{back.edge_ports[0]}"],
                sig_key=FRONT_KEY,
                sig_iss="front",
            ) as front:

                async def main():
                    url = f"ws://127.0.0.1:{front.edge_ports[0]}/x"
                    async with websockets.connect(url) as ws:
                        await ws.send("hi")
                        assert await asyncio.wait_for(ws.recv(), 10) == "hi"
                        await asyncio.to_thread(
                            GripPubControl({"control_uri": front.publish_url}).publish,
                            "chain-ws",
                            Item(WebSocketMessageFormat("pub")),
                            blocking=True,
                        )
                        assert await asyncio.wait_for(ws.recv(), 10) == "pub"

                asyncio.run(main())
    finally:
        server.shutdown()
        t.join(5)
    claims = jwt.decode(seen[0]["Grip-Sig"], FRONT_KEY, algorithms=["HS256"])
    assert claims["iss"] == "front"


def test_websocket_over_http_behind_a_trusted_gripcast(tmp_path):
    """A WebSocket-over-HTTP route on the back (``over_http``), a GRIP proxy in front: the back
    keeps the front's ``Grip-Sig`` (none of its own), relays the origin's grip extension and its
    ``c:`` control message up untouched (it does not act on them); the front subscribes."""
    import asyncio

    import websockets
    from gripcontrol import WebSocketMessageFormat

    from edge.ws.events import decode_events, encode_event

    origin: Origin

    def woh(h):
        events = decode_events(origin.requests[-1][3])
        out = b""
        for ev in events:
            if ev.type == "OPEN":
                out += encode_event("OPEN")
                out += encode_event("TEXT", b'c:{"type": "subscribe", "channel": "chain-woh"}')
            elif ev.type == "TEXT":
                out += encode_event("TEXT", b"m:" + (ev.content or b""))
            elif ev.type in ("CLOSE", "DISCONNECT"):
                out += encode_event(ev.type, ev.content)
        headers = {"Content-Type": "application/websocket-events"}
        if events and events[0].type == "OPEN":
            headers["Sec-WebSocket-Extensions"] = "grip"
        return 200, headers, out

    origin = Origin({"/x": woh})
    with origin:
        with Cluster(
            sub(tmp_path, "back"),
            [f"* 127.0.0.1:{origin.port},over_http"],
            upstream_key=FRONT_KEY,
            sig_key=BACK_KEY,
        ) as back:
            with Cluster(
                sub(tmp_path, "front"),
                [f"* 127.0.0.1:{back.edge_ports[0]}"],
                sig_key=FRONT_KEY,
                sig_iss="front",
            ) as front:

                async def main():
                    url = f"ws://127.0.0.1:{front.edge_ports[0]}/x"
                    async with websockets.connect(url) as ws:
                        await ws.send("hi")
                        assert await asyncio.wait_for(ws.recv(), 10) == "hi"
                        await asyncio.to_thread(
                            GripPubControl({"control_uri": front.publish_url}).publish,
                            "chain-woh",
                            Item(WebSocketMessageFormat("pub")),
                            blocking=True,
                        )
                        assert await asyncio.wait_for(ws.recv(), 10) == "pub"
                        # published to the back: nobody there subscribed (it did not act)
                        await asyncio.to_thread(
                            GripPubControl({"control_uri": back.publish_url}).publish,
                            "chain-woh",
                            Item(WebSocketMessageFormat("not-here")),
                            blocking=True,
                        )
                        await ws.send("again")
                        assert await asyncio.wait_for(ws.recv(), 10) == "again"

                asyncio.run(main())
    opened = origin.requests[0]
    claims = jwt.decode(opened[2]["Grip-Sig"], FRONT_KEY, algorithms=["HS256"])
    assert claims["iss"] == "front"  # the front's signature, not the back's
