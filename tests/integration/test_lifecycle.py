"""Graceful drain (SIGTERM) and reload (SIGHUP) of real edge and broker processes."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import pytest
from gripcontrol import GripPubControl, create_grip_channel_header

from tests.helpers import free_port_block, wait_for
from tests.integration.cluster import Cluster, Origin, StreamClient
from tests.integration.test_metrics import scrape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def stream_hold(channel, body=b"[open]\n"):
    def handler(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header(channel),
            },
            body,
        )

    return handler


def response_hold(channel):
    def handler(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "response",
                "Grip-Channel": create_grip_channel_header(channel),
                "Grip-Timeout": "60",
            },
            b"timeout-body\n",
        )

    return handler


def plain(text):
    def handler(req):
        return 200, {"Content-Type": "text/plain"}, text

    return handler


def publish(cluster, channel, text, **kw):
    GripPubControl({"control_uri": cluster.publish_url}).publish_http_stream(channel, text, **kw)


def test_edge_sigterm_drains_streams_and_long_polls_then_exits(tmp_path):
    mport = free_port_block(2)
    with (
        Origin(
            {"/s": stream_hold("d"), "/lp": response_hold("d"), "/p": plain(b"plain\n")}
        ) as origin,
        Cluster(
            tmp_path,
            [f"* 127.0.0.1:{origin.port}"],
            edges=2,
            separate_ports=True,
            drain_timeout_s=5.0,
            edge_metrics_port=mport,
        ) as cluster,
    ):
        stream = StreamClient(cluster.url("/s", edge=0)).wait_open()
        stream.read_until(b"[open]\n")
        lp_result = {}

        def long_poll():
            r = httpx.get(cluster.url("/lp", edge=0), timeout=20)
            lp_result["status"], lp_result["body"] = r.status_code, r.content

        lp = threading.Thread(target=long_poll, daemon=True)
        lp.start()
        # an idle keep-alive connection, which the drain closes
        idle = socket.create_connection(("127.0.0.1", cluster.edge_ports[0]), timeout=10)
        idle.sendall(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"plain\n" not in got:
            got += idle.recv(4096)
        publish(cluster, "d", "one\n")
        stream.read_until(b"one\n")
        wait_for(
            lambda: scrape(mport)["gripcast_edge_held_sessions{mode=response}"] == 1,
            what="long-poll held",
        )

        edge0 = cluster.edge_procs[0].proc
        t0 = time.monotonic()
        edge0.send_signal(signal.SIGTERM)
        data = stream.read_to_end(timeout=10)
        assert data.endswith(b"one\n")
        assert not hasattr(stream, "error"), stream.error  # a complete response, not a cut
        lp.join(10)
        assert lp_result == {"status": 200, "body": b"timeout-body\n"}
        assert idle.recv(4096) == b""  # closed by the edge
        idle.close()
        assert edge0.wait(10) == 0
        assert time.monotonic() - t0 < 5.0
        stream.close()

        # the client reconnects to the other edge and goes on receiving
        again = StreamClient(cluster.url("/s", edge=1)).wait_open()
        again.read_until(b"[open]\n")
        publish(cluster, "d", "two\n")
        again.read_until(b"two\n")
        again.close()


def test_edge_drain_timeout_cuts_what_is_left(tmp_path):
    """A client that never reads keeps its stream's final chunk unsent: drain_timeout_s bounds
    the wait."""
    mport = free_port_block(2)
    with (
        Origin({"/s": stream_hold("slow")}) as origin,
        Cluster(
            tmp_path,
            [f"* 127.0.0.1:{origin.port}"],
            drain_timeout_s=1.0,
            client_buffer_bytes=1 << 26,
            edge_metrics_port=mport,
        ) as cluster,
    ):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", cluster.edge_ports[0]))
        sock.sendall(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        got = b""
        while b"[open]" not in got:
            got += sock.recv(4096)
        big = "x" * 900_000 + "\n"
        for _ in range(12):  # ~11 MB the client never reads: more than the kernel buffers
            publish(cluster, "slow", big)
        wait_for(
            lambda: scrape(mport)["gripcast_edge_messages_received_total"] == 12,
            what="messages reached the edge",
        )
        assert scrape(mport)["gripcast_edge_backlogged_total"] >= 1  # the edge holds a backlog
        edge0 = cluster.edge_procs[0].proc
        t0 = time.monotonic()
        edge0.send_signal(signal.SIGTERM)
        assert edge0.wait(10) == 0
        elapsed = time.monotonic() - t0
        assert 0.8 < elapsed < 4.0, elapsed
        sock.close()


def test_edge_sighup_reloads_routes_without_dropping_connections(tmp_path):
    with (
        Origin({"/s": stream_hold("r"), "/x": plain(b"from-a\n")}) as a,
        Origin({"/x": plain(b"from-b\n")}) as b,
    ):
        routes = tmp_path / "routes"
        routes.write_text(f"* 127.0.0.1:{a.port}\n")
        with Cluster(tmp_path, [], routes_file=str(routes)) as cluster:
            edge = cluster.edge_procs[0]
            stream = StreamClient(cluster.url("/s")).wait_open()
            stream.read_until(b"[open]\n")
            assert httpx.get(cluster.url("/x")).content == b"from-a\n"

            routes.write_text(f"*,path_beg=/x 127.0.0.1:{b.port}\n* 127.0.0.1:{a.port}\n")
            edge.proc.send_signal(signal.SIGHUP)
            edge.wait_ready(timeout=10)  # READY=1 again after RELOADING=1
            assert httpx.get(cluster.url("/x")).content == b"from-b\n"

            # a broken routes file is refused; the running routes stay
            routes.write_text("* 127.0.0.1:notaport\n")
            edge.proc.send_signal(signal.SIGHUP)
            edge.wait_ready(timeout=10)
            assert httpx.get(cluster.url("/x")).content == b"from-b\n"
            assert edge.proc.poll() is None

            publish(cluster, "r", "still-here\n")
            stream.read_until(b"still-here\n")  # the held stream survived both reloads
            stream.close()


def test_broker_sigterm_never_acknowledges_what_it_did_not_store(tmp_path):
    """Publishers hammer the broker while it stops: every publish answered 200 was stored and
    fanned out (the held stream got it); after the stop, publishes fail instead."""
    with (
        Origin({"/s": stream_hold("b")}) as origin,
        Cluster(tmp_path, [f"* 127.0.0.1:{origin.port}"], drain_timeout_s=5.0) as cluster,
    ):
        stream = StreamClient(cluster.url("/s")).wait_open()
        stream.read_until(b"[open]\n")
        acked: list[str] = []
        failed: list[str] = []
        stop = threading.Event()
        lock = threading.Lock()

        def publisher(k):
            with httpx.Client(timeout=5) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    mid = f"p{k}-{n}"
                    body = {
                        "items": [
                            {
                                "channel": "b",
                                "id": mid,
                                "formats": {"http-stream": {"content": mid + "\n"}},
                            }
                        ]
                    }
                    try:
                        r = client.post(cluster.publish_url + "/publish/", json=body)
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        (acked if ok else failed).append(mid)
                    if not ok:
                        return

        threads = [threading.Thread(target=publisher, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) >= 200, what="publishes acknowledged")
        broker = cluster.broker.proc
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(10) == 0
        stop.set()
        for t in threads:
            t.join(10)
        assert failed, "publishes after the stop must fail"
        for mid in acked:
            stream.read_until(f"{mid}\n".encode(), timeout=10)
        stream.close()


def test_broker_sighup_reload(tmp_path):
    with Cluster(tmp_path, []) as cluster:
        broker = cluster.broker
        config = tmp_path / "gripcast.toml"
        config.write_text(config.read_text() + "history_max_items = 5\n")
        broker.proc.send_signal(signal.SIGHUP)
        broker.wait_ready(timeout=10)
        config.write_text(config.read_text() + "this is not toml\n")
        broker.proc.send_signal(signal.SIGHUP)
        broker.wait_ready(timeout=10)
        assert broker.proc.poll() is None
        r = httpx.post(
            cluster.publish_url + "/publish/",
            json={"items": [{"channel": "c", "formats": {"http-stream": {"content": "x"}}}]},
        )
        assert r.status_code == 200
