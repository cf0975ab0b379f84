"""The foundation's end-to-end paths with real processes, real sockets and real client libraries.

A client holds an HTTP stream through an edge, the origin answers with GRIP, a publisher
publishes (gripcast publish, gripcontrol over HTTP, pubcontrol over ZeroMQ PUSH), the broker
sequences and fans out, the edge delivers.
"""

from __future__ import annotations

import subprocess

import pytest
from gripcontrol import (
    GripPubControl,
    HttpStreamFormat,
    create_grip_channel_header,
    create_hold_stream,
)
from pubcontrol import Item
from pubcontrol.zmqpubcontrolclient import ZmqPubControlClient

from tests.helpers import free_ports
from tests.integration.cluster import (
    PORT_KEYS,
    Cluster,
    Origin,
    Proc,
    StreamClient,
    gripcast,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def stream_hold_header(channel):
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


def stream_hold_instruct(channel):
    def handler(req):
        body = create_hold_stream(channel, "[open-json]\n")
        return 200, {"Content-Type": "application/grip-instruct"}, body.encode()

    return handler


def test_run_demo_then_curl_and_publish(tmp_path):
    """The README's first command: gripcast run --demo; a stream client; gripcast publish."""
    ports = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS) + 1)))
    demo_port = free_ports(1)[0]
    cfg = write_config(tmp_path / "run.toml", ports, [])
    runner = Proc(
        gripcast("run", "--demo", "--edges", "2", "--config", cfg, "--demo-port", str(demo_port))
    )
    try:
        runner.wait_ready(timeout=60)
        client = StreamClient(f"http://127.0.0.1:{ports['client_port']}/stream")
        client.read_until(b"[stream open]\n")
        assert client.status == 200
        out = subprocess.run(
            gripcast("publish", "test", "hello", "--url", f"http://127.0.0.1:{ports['http_port']}"),
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr
        assert "Published" in out.stdout
        client.read_until(b"hello\n")
        client.close()
    finally:
        code = runner.stop()
    assert code == 0


def test_two_edges_http_and_zmq_publishers(tmp_path):
    with Origin(
        {"/hdr": stream_hold_header("news"), "/json": stream_hold_instruct("news")}
    ) as origin:
        cluster = Cluster(
            tmp_path, routes=[f"* 127.0.0.1:{origin.port}"], edges=2, separate_ports=True
        )
        with cluster:
            clients = []
            for edge in (0, 1):
                for path, opening in (("/hdr", b"[open]\n"), ("/json", b"[open-json]\n")):
                    c = StreamClient(cluster.url(path, edge))
                    c.read_until(opening)
                    assert c.headers["transfer-encoding"] == "chunked"
                    assert "grip-hold" not in c.headers
                    clients.append(c)

            # gripcontrol over HTTP (formats at item top level, Authorization header sent)
            pub = GripPubControl({"control_uri": cluster.publish_url, "key": "secret-ignored"})
            pub.publish_http_stream("news", "one\n", blocking=True)
            for c in clients:
                c.read_until(b"one\n")

            # pubcontrol over ZeroMQ: discovery on the command socket, then a bare tnetstring on
            # PUSH.  (pubcontrol closes with linger 0, so keep it open until delivery.)
            zpub = ZmqPubControlClient(cluster.command_uri)
            try:
                zpub.publish("news", Item(HttpStreamFormat("two\n")), blocking=True)
                for c in clients:
                    c.read_until(b"two\n")
            finally:
                zpub.close()

            # gripcast publish (the CLI)
            out = subprocess.run(
                gripcast("publish", "news", "three", "--url", cluster.publish_url),
                capture_output=True,
                text=True,
                timeout=20,
            )
            assert out.returncode == 0, out.stderr

            for c in clients:
                data = c.read_until(b"three\n")
                body = data.split(b"\n", 1)[1]
                assert body == b"one\ntwo\nthree\n", body
                c.close()

            # the close action ends every stream
            closer = StreamClient(cluster.url("/hdr", 1))
            closer.read_until(b"[open]\n")
            subprocess.run(
                gripcast("publish", "news", "--close", "--url", cluster.publish_url),
                check=True,
                capture_output=True,
                timeout=20,
            )
            assert closer.read_to_end(timeout=10).endswith(b"[open]\n")
            closer.close()
        # every origin request carried a Grip-Sig
        assert origin.requests and all("Grip-Sig" in h for (_, _, h, _) in origin.requests)
