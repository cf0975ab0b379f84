"""WebSockets end to end: real broker and edge processes, the ``websockets`` client library, a
WebSocket-over-HTTP origin written with gripcontrol's helpers (``tests/integration/wsorigin``),
a WebSocket origin written with ``websockets`` (WS-to-WS), publishes with gripcontrol."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import zlib

import httpx
import jwt
import pytest
import websockets
from gripcontrol import GripPubControl, WebSocketMessageFormat
from pubcontrol import Item

from tests.helpers import MISSING, wait_for
from tests.integration.cluster import Cluster
from tests.integration.test_faults import restart_broker
from tests.integration.wsorigin import WohOriginApp
from tests.integration.wsraw import raw_ws
from tests.redis_server import RedisServer, redis_available

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def publish(cluster, channel, fmt, id=None, prev_id=None):
    GripPubControl({"control_uri": cluster.publish_url}).publish(
        channel, Item(fmt, id=id, prev_id=prev_id), blocking=True
    )


def publish_items(cluster, items):
    r = httpx.post(cluster.publish_url + "/publish/", json={"items": items}, timeout=10)
    assert r.status_code == 200, r.text


async def recv(ws, timeout=5.0):
    return await asyncio.wait_for(ws.recv(), timeout)


@pytest.fixture
def woh(tmp_path):
    with WohOriginApp() as origin:
        with Cluster(
            tmp_path,
            routes=[f"* 127.0.0.1:{origin.port},over_http"],
            client_buffer_bytes=65536,
            ws_max_message_bytes=1000,
        ) as cluster:
            yield origin, cluster


# the Grip-Sig is checked with "changeme", the edge's default key (Pushpin's): short on purpose
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_woh_echo_publish_and_close(woh):
    origin, cluster = woh
    url = f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=room"

    async def main():
        async with websockets.connect(
            url, additional_headers={"Meta-User": "spoof", "X-Client": "c1"}
        ) as ws:
            await ws.send("hello")
            assert await recv(ws) == "hello"
            await ws.send(b"\x00\x01")
            assert await recv(ws) == b"\x00\x01"
            await asyncio.to_thread(publish, cluster, "room", WebSocketMessageFormat("pushed"))
            assert await recv(ws) == "pushed"
            await asyncio.to_thread(
                publish, cluster, "room", WebSocketMessageFormat(b"\xff\x00", binary=True)
            )
            assert await recv(ws) == b"\xff\x00"
            await asyncio.to_thread(
                publish,
                cluster,
                "room",
                WebSocketMessageFormat(action="close", code=4001, reason="bye"),
            )
            with pytest.raises(websockets.ConnectionClosed) as exc:
                await recv(ws)
            assert (exc.value.rcvd.code, exc.value.rcvd.reason) == (4001, "bye")

    asyncio.run(main())
    reqs = origin.requests
    assert reqs[0][1] == [("OPEN", None)]
    cids = {h["Connection-Id"] for h, _ in reqs}
    assert len(cids) == 1
    first, second = reqs[0][0], reqs[1][0]
    assert (
        "Meta-User" not in first and second["Meta-User"] == "alice"
    )  # stripped, then Set-Meta echo
    assert first["X-Client"] == "c1" and first["Sec-WebSocket-Extensions"] == "grip"
    assert first["Accept"] == first["Content-Type"] == "application/websocket-events"
    for h, _ in reqs:
        claims = jwt.decode(h["Grip-Sig"], "changeme", algorithms=["HS256"])
        assert claims["iss"] == "pushpin"
    wait_for(lambda: any(t == "CLOSE" for t, _ in origin.events()))


def test_subscribe_waits_for_the_position_so_a_publish_right_after_is_delivered(woh):
    """What the origin sends after a ``subscribe`` reaches the client only once the broker
    answered the channel's position (the wait a stream hold's head has): with the broker
    stopped (SIGSTOP) the ``subscribed`` reply is held; once it shows, a publish is after the
    baseline and is delivered.  Without the wait the reply showed at once, and a publish
    stored before the broker answered the position was counted as delivered: lost."""
    origin, cluster = woh
    url = f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=lobby"

    async def main():
        async with websockets.connect(url) as ws:
            await ws.send("hello")
            assert await recv(ws) == "hello"
            os.kill(cluster.broker.proc.pid, signal.SIGSTOP)
            try:
                await ws.send("sub:fresh")
                with pytest.raises(asyncio.TimeoutError):
                    await recv(ws, timeout=0.8)  # held: the position is not known yet
            finally:
                os.kill(cluster.broker.proc.pid, signal.SIGCONT)
            assert await recv(ws) == "subscribed fresh"
            await asyncio.to_thread(publish, cluster, "fresh", WebSocketMessageFormat("first"))
            assert await recv(ws) == "first"

    asyncio.run(main())


def test_woh_origin_close_unsubscribe_controls_and_limits(woh):
    origin, cluster = woh
    url = f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=c2"

    async def main():
        async with websockets.connect(url) as ws:
            await ws.send("delay")
            assert await recv(ws) == "later"  # send-delayed
            await ws.send("ka")
            assert await recv(ws, 3) == "ka!"  # keep-alive, interval 1 s
            assert await recv(ws, 3) == "ka!"
            await asyncio.wait_for(await ws.ping(b"p"), 5)  # relayed: the origin answers
            assert origin.events("PING") == [("PING", b"p")]
            await ws.send("close")
            with pytest.raises(websockets.ConnectionClosed) as exc:
                while True:
                    await recv(ws)
            assert (exc.value.rcvd.code, exc.value.rcvd.reason) == (4000, "bye")

        async with websockets.connect(url) as ws:
            await ws.send("x" * 1001)  # over ws_max_message_bytes
            with pytest.raises(websockets.ConnectionClosed) as exc:
                await recv(ws)
            assert exc.value.rcvd.code == 1009

        async with websockets.connect(url + "&also=c2side") as ws:
            await ws.send("unsub")
            await ws.send("sync")
            assert await recv(ws) == "sync"  # the unsubscribe was applied before this echo
            # one publish, in order: c2 (left) then c2side (still subscribed). The edge handles
            # a publish's items in order, so receiving the second is the positive signal that
            # the first was handled, and not sent
            await asyncio.to_thread(
                publish_items,
                cluster,
                [
                    {"channel": "c2", "formats": {"ws-message": {"content": "not for you"}}},
                    {"channel": "c2side", "formats": {"ws-message": {"content": "for you"}}},
                ],
            )
            assert await recv(ws) == "for you"

    asyncio.run(main())


def test_woh_open_rejected_and_disconnect(tmp_path):
    with WohOriginApp(reject_open=True) as origin:
        with Cluster(tmp_path, routes=[f"* 127.0.0.1:{origin.port},over_http"]) as cluster:

            async def main():
                with pytest.raises(websockets.InvalidStatus) as exc:
                    async with websockets.connect(f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws"):
                        pass
                assert exc.value.response.status_code == 403
                assert exc.value.response.headers["X-Why"] == "no"
                assert exc.value.response.body == b"go away\n"

            asyncio.run(main())
    with WohOriginApp() as origin:
        with Cluster(tmp_path, routes=[f"* 127.0.0.1:{origin.port},over_http"]) as cluster:
            s = raw_ws(cluster.edge_ports[0], "/ws")
            s.close()  # vanish without a close frame
            wait_for(lambda: origin.events("DISCONNECT"))
            # a plain HTTP client may not send WebSocket events to an over_http origin
            import httpx

            r = httpx.post(
                cluster.url("/ws"),
                content=b"OPEN\r\n",
                headers={"Content-Type": "application/websocket-events"},
            )
            assert r.status_code == 403


def test_reliable_websocket_prev_id_misses_nothing(woh):
    origin, cluster = woh
    base = f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=rel"

    def pub(i):
        publish(
            cluster,
            "rel",
            WebSocketMessageFormat(json.dumps({"id": f"m{i}", "n": i})),
            id=f"m{i}",
            prev_id=f"m{i - 1}" if i > 1 else None,
        )

    async def main():
        seen = []
        async with websockets.connect(base) as ws:
            await ws.send("sync")
            assert await recv(ws) == "sync"
            for i in (1, 2):
                await asyncio.to_thread(pub, i)
                seen.append(json.loads(await recv(ws))["n"])
        for i in range(3, 8):  # published while the client is away
            await asyncio.to_thread(pub, i)
        last = f"m{seen[-1]}"
        async with websockets.connect(base + "&prev=" + last) as ws:
            for _ in range(5):
                seen.append(json.loads(await recv(ws))["n"])
            await asyncio.to_thread(pub, 8)
            seen.append(json.loads(await recv(ws))["n"])
        assert seen == list(range(1, 9))
        # a cursor history cannot answer: the origin is told, so the app can resync
        async with websockets.connect(base + "&prev=unknown-id") as ws:
            await ws.send("sync")
            assert await recv(ws) == "sync"
        wait_for(lambda: any(c and c.startswith(b"c:") for _, c in origin.events("TEXT")))
        ctl = [json.loads(c[2:]) for _, c in origin.events("TEXT") if c and c.startswith(b"c:")]
        assert ctl == [{"type": "resume-failed", "channel": "rel", "prev-id": "unknown-id"}]

    asyncio.run(main())


def test_websocket_is_told_when_its_channel_history_is_lost(woh):
    """An epoch change (the broker restarted with the memory store) is never silent: the
    origin gets ``c:{"type": "history-lost", ...}`` and the subscription goes on."""
    origin, cluster = woh

    async def main():
        async with websockets.connect(
            f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=ep"
        ) as ws:
            await ws.send("sync")
            assert await recv(ws) == "sync"
            await asyncio.to_thread(publish, cluster, "ep", WebSocketMessageFormat("before"))
            assert await recv(ws) == "before"
            await asyncio.to_thread(restart_broker, cluster)
            await asyncio.to_thread(
                wait_for,
                lambda: any(c and c.startswith(b"c:") for _, c in origin.events("TEXT")),
                15,
            )
            ctl = [json.loads(c[2:]) for _, c in origin.events("TEXT") if c and c.startswith(b"c:")]
            assert ctl == [{"type": "history-lost", "channel": "ep"}]
            await asyncio.to_thread(publish, cluster, "ep", WebSocketMessageFormat("after"))
            assert await recv(ws, 10) == "after"

    asyncio.run(main())


def test_draining_edge_closes_websockets_1012(woh):
    """SIGTERM: WebSockets are closed with 1012 so clients reconnect to another edge."""
    origin, cluster = woh

    async def main():
        async with websockets.connect(
            f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=dr"
        ) as ws:
            await ws.send("sync")
            assert await recv(ws) == "sync"
            cluster.edge_procs[0].proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as exc:
                await recv(ws, 10)
            assert (exc.value.rcvd.code, exc.value.rcvd.reason) == (1012, "service restart")

    asyncio.run(main())
    assert cluster.edge_procs[0].proc.wait(10) == 0


def test_slow_websocket_client_never_delays_others(woh):
    origin, cluster = woh
    slow = raw_ws(cluster.edge_ports[0], "/ws?channel=fan", rcvbuf=4096)  # never reads
    big = "x" * 20000

    async def main():
        async with websockets.connect(
            f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=fan"
        ) as ws:
            await ws.send("sync")
            assert await recv(ws) == "sync"
            t0 = time.monotonic()
            for i in range(300):  # 6 MB: far more than the slow client's socket buffers take
                await asyncio.to_thread(
                    publish, cluster, "fan", WebSocketMessageFormat(f"{i}:{big}")
                )
                assert (await recv(ws)).startswith(f"{i}:")
            return time.monotonic() - t0

    elapsed = asyncio.run(main())
    assert elapsed < 20
    # the slow one was cut off once its buffer passed client_buffer_bytes
    slow.settimeout(10)
    got = b""
    try:
        while chunk := slow.recv(65536):
            got += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    assert len(got) < 300 * 20000
    slow.close()


def test_ws_to_ws_proxy_with_grip_extension(tmp_path):
    """The origin speaks WebSocket itself (websockets library) and enables GRIP."""
    from websockets.sync.server import serve

    seen_headers = []

    def handler(conn):
        seen_headers.append(conn.request.headers)
        conn.send('c:{"type": "subscribe", "channel": "wsws"}')
        for msg in conn:
            if msg == "close":
                conn.close(4002, "origin bye")
                return
            conn.send(("m:" + msg) if isinstance(msg, str) else msg)
            conn.send("unprefixed is dropped")

    def add_grip(conn, request, response):
        response.headers["Sec-WebSocket-Extensions"] = "grip"

    server = serve(handler, "127.0.0.1", 0, process_response=add_grip)
    port = server.socket.getsockname()[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with Cluster(tmp_path, routes=[f"* 127.0.0.1:{port}"]) as cluster:

            async def main():
                async with websockets.connect(f"ws://127.0.0.1:{cluster.edge_ports[0]}/x") as ws:
                    await ws.send("hi")
                    assert await recv(ws) == "hi"
                    await asyncio.wait_for(await ws.ping(b"x"), 5)  # relayed to the origin
                    await asyncio.to_thread(publish, cluster, "wsws", WebSocketMessageFormat("pub"))
                    assert await recv(ws) == "pub"
                    await ws.send("close")
                    with pytest.raises(websockets.ConnectionClosed) as exc:
                        await recv(ws)
                    assert (exc.value.rcvd.code, exc.value.rcvd.reason) == (4002, "origin bye")

            asyncio.run(main())
    finally:
        server.shutdown()
        t.join(5)
    assert seen_headers[0]["Sec-WebSocket-Extensions"] == "grip"
    assert seen_headers[0]["Grip-Sig"]


def test_reliable_websocket_catch_up_longer_than_the_buffer_limit(woh):
    """A resume whose backlog (~180 KB) is larger than client_buffer_bytes (64 KiB here)
    completes: the catch-up is not mistaken for a slow consumer."""
    import httpx

    origin, cluster = woh
    base = f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=big"
    pad = "x" * 880

    async def main():
        async with websockets.connect(base) as ws:
            await ws.send("sync")
            assert await recv(ws) == "sync"
            await asyncio.to_thread(
                publish,
                cluster,
                "big",
                WebSocketMessageFormat(json.dumps({"n": 0, "pad": pad})),
                "b0",
            )
            assert json.loads(await recv(ws))["n"] == 0
        items = [
            {
                "channel": "big",
                "id": f"b{i}",
                "prev-id": f"b{i - 1}",
                "formats": {"ws-message": {"content": json.dumps({"n": i, "pad": pad})}},
            }
            for i in range(1, 201)
        ]
        r = await asyncio.to_thread(
            httpx.post, cluster.publish_url + "/publish/", json={"items": items}, timeout=10
        )
        assert r.status_code == 200, r.text
        async with websockets.connect(base + "&prev=b0", max_size=None) as ws:
            got = [json.loads(await recv(ws, timeout=10))["n"] for _ in range(200)]
        assert got == list(range(1, 201))

    asyncio.run(main())


def test_route_prefix_applies_to_websocket_channels(tmp_path):
    """Issue 11 item 5: with ``prefix=t1-`` the origin's ``subscribe`` to ``secret`` and the
    target's ``sub=news`` are the channels ``t1-secret`` and ``t1-news``: a tenant's origin
    cannot reach another tenant's (unprefixed) channels, as Pushpin does."""
    with WohOriginApp() as origin:
        with Cluster(
            tmp_path,
            routes=[f"*,prefix=t1- 127.0.0.1:{origin.port},over_http,sub=news"],
            client_buffer_bytes=65536,
        ) as cluster:
            url = f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=secret"

            async def main():
                async with websockets.connect(url) as ws:
                    await ws.send("hello")
                    assert await recv(ws) == "hello"  # the subscribe was handled before
                    for channel in ("secret", "news", "t1-secret", "t1-news"):
                        await asyncio.to_thread(
                            publish, cluster, channel, WebSocketMessageFormat(f"to {channel}")
                        )
                    got = [await recv(ws), await recv(ws)]
                    assert got == ["to t1-secret", "to t1-news"]
                    await ws.send("unsub")  # the origin unsubscribes "secret": t1-secret goes
                    await ws.send("sync")
                    assert await recv(ws) == "sync"
                    for channel in ("t1-secret", "t1-news"):
                        await asyncio.to_thread(
                            publish, cluster, channel, WebSocketMessageFormat(f"again {channel}")
                        )
                    assert await recv(ws) == "again t1-news"

            asyncio.run(main())


def test_permessage_deflate_when_allowed(tmp_path):
    """``allow_compression``: the websockets client's permessage-deflate offer is accepted with
    ``server_no_context_takeover``; client and origin messages and publishes go compressed, a
    published message as the same bytes to every compressed client."""
    from tests.integration.wsraw import read_frame_full

    with WohOriginApp() as origin:
        with Cluster(
            tmp_path, routes=[f"* 127.0.0.1:{origin.port},over_http"], allow_compression=True
        ) as cluster:
            port = cluster.edge_ports[0]
            offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
            heads: list = []
            raws = [raw_ws(port, "/ws?channel=z", headers=offer, head_out=heads) for _ in range(2)]
            plain = raw_ws(port, "/ws?channel=z")
            text = "compressible " * 50

            async def main():
                async with websockets.connect(f"ws://127.0.0.1:{port}/ws?channel=z") as ws:
                    ext = ws.response.headers["Sec-WebSocket-Extensions"]
                    assert ext == "permessage-deflate; server_no_context_takeover"
                    await ws.send(text)  # compressed by the client, with context takeover
                    assert await recv(ws) == text
                    await ws.send(text)
                    assert await recv(ws) == text
                    await asyncio.to_thread(publish, cluster, "z", WebSocketMessageFormat(text))
                    assert await recv(ws) == text

            try:
                asyncio.run(main())
                assert b"server_no_context_takeover" in heads[0]
                frames = [read_frame_full(s) for s in raws]
                assert frames[0] == frames[1]  # the same compressed bytes for both
                op, fin, rsv1, payload = frames[0]
                assert (op, fin, rsv1) == (1, True, True) and len(payload) < len(text)
                assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == (
                    text.encode()
                )
                assert read_frame_full(plain) == (1, True, False, text.encode())
            finally:
                for s in [*raws, plain]:
                    s.close()
    assert origin.events("TEXT")[:2] == [("TEXT", text.encode())] * 2  # inflated for the origin


def test_no_compression_by_default(woh):
    origin, cluster = woh

    async def main():
        async with websockets.connect(f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws") as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.send("x")
            assert await recv(ws) == "x"

    asyncio.run(main())


@pytest.mark.skipif(not redis_available(), reason=MISSING + "redis-server is not installed")
def test_websocket_resume_while_the_store_is_down_misses_nothing(tmp_path):
    """Chaos run D: a WebSocket resuming (``prev-id``) while Redis is down got the broker's
    "store unavailable" and went live, missing what followed its cursor.  Now the edge waits
    for the store (Redis restarted on its port, its data reloaded from its append-only file)
    and replays."""
    with RedisServer(None, "--appendonly", "yes") as redis, WohOriginApp() as origin:
        with Cluster(
            tmp_path,
            routes=[f"* 127.0.0.1:{origin.port},over_http"],
            store=f"redis://127.0.0.1:{redis.port}/0",
        ) as cluster:
            base = f"ws://127.0.0.1:{cluster.edge_ports[0]}/ws?channel=rs"

            def pub(i):
                fmt = WebSocketMessageFormat(json.dumps({"id": f"m{i}", "n": i}))
                deadline = time.monotonic() + 15
                while True:  # refused (503) until the broker's store answers again
                    try:
                        return publish(cluster, "rs", fmt, id=f"m{i}")
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)

            async def main():
                seen = []
                async with websockets.connect(base) as ws:
                    await ws.send("sync")
                    assert await recv(ws) == "sync"
                    await asyncio.to_thread(pub, 1)
                    seen.append(json.loads(await recv(ws))["n"])
                for i in (2, 3):  # published (acknowledged) while the client is away
                    await asyncio.to_thread(pub, i)
                redis.stop()  # SIGTERM: the append-only file is flushed
                restarted = threading.Timer(1.5, redis.start)
                restarted.start()
                try:
                    async with websockets.connect(base + "&prev=m1", open_timeout=20) as ws:
                        for _ in range(2):
                            seen.append(json.loads(await recv(ws, 20))["n"])
                        restarted.join()
                        await asyncio.to_thread(pub, 4)
                        seen.append(json.loads(await recv(ws, 20))["n"])
                finally:
                    restarted.join()
                assert seen == [1, 2, 3, 4]
                ctl = [c for _, c in origin.events("TEXT") if c and c.startswith(b"c:")]
                assert ctl == []  # no resume-failed: nothing to resync

            asyncio.run(main())
