"""Epoch change (history lost) end to end, as docs/reliability.md says: a broker restarted with
the memory store starts every channel in a new epoch, and the edge never continues silently.
HTTP streams and SSE are closed without the final chunk (clients reconnect, the origin decides);
long-polls get their timeout response now. Against a control: with the Redis store the same
restart keeps the epoch, and every session goes on."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from gripcontrol import GripPubControl

from tests.helpers import MISSING, free_port_block, wait_for
from tests.integration.cluster import Cluster, Origin, StreamClient
from tests.integration.test_faults import restart_broker
from tests.redis_server import RedisServer, redis_available

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

POLL_TIMEOUT_S = 40  # the long-poll's own timeout: far beyond what the test waits


def o_stream(req):
    return (
        200,
        {"Content-Type": "text/plain", "Grip-Hold": "stream", "Grip-Channel": "ep-stream"},
        b"[open]\n",
    )


def o_sse(req):
    return (
        200,
        {"Content-Type": "text/event-stream", "Grip-Hold": "stream", "Grip-Channel": "ep-sse"},
        b": open\n\n",
    )


def o_poll(req):
    return (
        200,
        {
            "Content-Type": "text/plain",
            "Grip-Hold": "response",
            "Grip-Channel": "ep-poll",
            "Grip-Timeout": str(POLL_TIMEOUT_S),
        },
        b"poll timeout\n",
    )


def held(mport: int, mode: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'gripcast_edge_held_sessions{{mode="{mode}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def origin():
    with Origin({"/stream": o_stream, "/sse": o_sse, "/poll": o_poll}) as o:
        yield o


def run(tmp_path, origin, **store):
    """Publish once on each channel (so its epoch is known), hold a stream, an SSE stream and
    a long-poll, restart the broker, and check what each session got."""
    mport = free_port_block(1)
    with Cluster(tmp_path, [f"* 127.0.0.1:{origin.port}"], edge_metrics_port=mport, **store) as cl:
        pub = GripPubControl({"control_uri": cl.publish_url})
        for ch in ("ep-stream", "ep-sse", "ep-poll"):  # each channel has an epoch now
            pub.publish_http_stream(ch, "before\n", blocking=True)
        s = StreamClient(cl.url("/stream"))
        e = StreamClient(cl.url("/sse"))
        s.read_until(b"[open]\n")
        e.read_until(b": open\n\n")
        poll: dict = {}

        def do_poll():
            r = httpx.get(cl.url("/poll"), timeout=POLL_TIMEOUT_S + 10)
            poll["at"], poll["response"] = time.monotonic(), r

        t = threading.Thread(target=do_poll, daemon=True)
        t.start()
        # the long-poll's first-subscription update (about a second after the hold, as
        # Pushpin's) re-requests the origin: an item published while that request is in flight
        # is not the re-held poll's, as with Pushpin; so the broker restarts once it is done
        wait_for(
            lambda: sum(1 for r in origin.requests if r[1] == "/poll") >= 2,
            what="the long-poll's first-subscription update did not come",
        )
        wait_for(
            lambda: held(mport, "stream") >= 2 and held(mport, "response") >= 1,
            what="the three sessions are not all held",
        )
        restarted = time.monotonic()
        restart_broker(cl)
        try:
            check(s, e, poll, t, restarted, pub, store)
        finally:
            s.close()
            e.close()


def check(s, e, poll, t, restarted, pub, store):
    if not store:  # memory store: a new epoch on every channel
        s.read_to_end(timeout=20)
        e.read_to_end(timeout=20)
        assert s.ended and e.ended, "a stream was continued across the epoch change"
        for c in (s, e):  # closed without the final chunk (an abort, not a clean end)
            assert isinstance(getattr(c, "error", None), httpx.RemoteProtocolError), c.data
        assert b"before" not in s.data + e.data
        t.join(20)
        assert "response" in poll, "the long-poll was not answered"
        assert poll["response"].text == "poll timeout\n"
        assert poll["at"] - restarted < POLL_TIMEOUT_S / 2  # now, not at its own timeout
    else:  # Redis store: the same epoch, everything goes on
        pub.publish_http_stream("ep-stream", "after\n", blocking=True)
        pub.publish_http_stream("ep-sse", "data: after\n\n", blocking=True)
        pub.publish_http_response("ep-poll", "after\n", blocking=True)
        s.read_until(b"after\n", timeout=20)
        e.read_until(b"data: after\n\n", timeout=20)
        t.join(20)
        assert poll["response"].text == "after\n"
        assert not s.ended and not e.ended


def test_memory_store_restart_ends_streams_sse_and_long_polls(tmp_path, origin):
    run(tmp_path, origin)


@pytest.mark.skipif(not redis_available(), reason=MISSING + "redis-server is not installed")
def test_redis_store_restart_keeps_them_all(tmp_path, origin):
    with RedisServer() as redis:
        run(tmp_path, origin, store=f"redis://127.0.0.1:{redis.port}/0")
