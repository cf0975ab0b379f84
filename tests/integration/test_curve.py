"""CurveZMQ between the broker and edges (and, opted in, publishers), with real processes.

An edge with an allowed key pair gets messages; an edge whose key the broker does not know is
refused at the handshake and gets nothing; with ``curve_publishers`` a Curve PUSH publisher is
accepted and a plain one is not, while the HTTP API keeps working.
"""

from __future__ import annotations

import json
import time

import pytest
import zmq
from gripcontrol import GripPubControl, create_grip_channel_header

from tests.helpers import free_port_block, free_ports
from tests.integration.cluster import Cluster, Origin, Proc, StreamClient, gripcast
from tests.integration.test_metrics import scrape, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def keypair():
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def wait_handshake_failed(events, timeout: float = 10.0) -> bool:
    """Read a socket monitor until a handshake fails (True) or succeeds (False)."""
    from zmq.utils.monitor import recv_monitor_message

    failed = {
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        zmq.EVENT_HANDSHAKE_FAILED_AUTH,
        zmq.EVENT_DISCONNECTED,
    }
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not events.poll(int(max(deadline - time.monotonic(), 0) * 1000) + 1):
            continue
        ev = recv_monitor_message(events)["event"]
        if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return False
        if ev in failed:
            return True
    raise TimeoutError("the plain PUSH's monitor reported no handshake result")


def stream(req):
    return (
        200,
        {
            "Content-Type": "text/plain",
            "Grip-Hold": "stream",
            "Grip-Channel": create_grip_channel_header("sec"),
        },
        b"[open]\n",
    )


def test_curve_edges_and_publishers(tmp_path):
    bpub, bsec = keypair()
    epub, esec = keypair()
    ppub, psec = keypair()
    _, rogue_sec = keypair()
    mport = free_port_block(1)
    with Origin({"/stream": stream}) as origin:
        cluster = Cluster(
            tmp_path,
            [f"* 127.0.0.1:{origin.port}"],
            separate_ports=False,
            curve_secret_key=bsec,
            curve_public_key=bpub,
            curve_allowed_clients=[epub, ppub],
            curve_client_secret_key=esec,
            curve_publishers="true",
            metrics_port=mport,
        )
        rogue_port = free_ports(1)[0]
        cluster.start()
        try:
            rogue = Proc(
                gripcast(
                    "edge",
                    "--index",
                    "9",
                    "--config",
                    cluster.config,
                    "--port",
                    f"127.0.0.1:{rogue_port}",
                ),
                env={"GRIPCAST_CURVE_CLIENT_SECRET_KEY": rogue_sec},
            ).wait_ready()
            try:
                good = StreamClient(cluster.url("/stream"))
                bad = StreamClient(f"http://127.0.0.1:{rogue_port}/stream")
                good.read_until(b"[open]\n")
                bad.read_until(b"[open]\n")
                pub = GripPubControl({"control_uri": cluster.publish_url})
                pub.publish_http_stream("sec", "over curve 1\n")
                good.read_until(b"over curve 1\n")

                ctx = zmq.Context.instance()
                push = ctx.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, 0)
                push.curve_serverkey, push.curve_publickey, push.curve_secretkey = (
                    bpub.encode(),
                    ppub.encode(),
                    psec.encode(),
                )
                push.connect(f"tcp://127.0.0.1:{cluster.ports['push_in_port']}")
                plain = ctx.socket(zmq.PUSH)
                plain.setsockopt(zmq.LINGER, 0)
                plain_events = plain.get_monitor_socket()
                plain.connect(f"tcp://127.0.0.1:{cluster.ports['push_in_port']}")
                try:
                    item = {"channel": "sec", "formats": {"http-stream": {"content": ""}}}
                    item["formats"]["http-stream"]["content"] = "curve push 2\n"
                    push.send(b"J" + json.dumps(item).encode())
                    good.read_until(b"curve push 2\n")
                    # a plain PUSH never completes a handshake: its send stays queued. The
                    # positive signal: the plain socket's own monitor reports a failed handshake
                    item["formats"]["http-stream"]["content"] = "plain push\n"
                    try:  # never blocks: once its handshake failed the socket has no pipe
                        plain.send(b"J" + json.dumps(item).encode(), zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                    assert wait_handshake_failed(plain_events), "the plain PUSH got in"
                    pub.publish_http_stream("sec", "over curve 3\n")
                    good.read_until(b"over curve 3\n")
                    assert b"plain push" not in good.data
                finally:
                    plain.disable_monitor()
                    plain_events.close(linger=0)
                    push.close()
                    plain.close()
                # the edge whose key is not allowed: its refused handshakes are counted ...
                wait_for(
                    lambda: (
                        scrape(mport).get("gripcast_broker_curve_handshakes_refused_total", 0) >= 1
                    ),
                    what="refused handshakes counted",
                )
                # ... and it never got a message: what reached it is read now, after the good
                # edge got the last one (an accepted edge gets each within milliseconds)
                bad.read_for(1.0)
                assert bad.data == b"[open]\n", bad.data
                good.close()
                bad.close()
            finally:
                assert rogue.stop() == 0
        finally:
            codes = cluster.stop()
        assert codes == [0, 0]
