"""The ``conncheck`` and ``refresh`` commands on the command socket (reference 6.2) with a real
broker and two edges, a scripted WebSocket-over-HTTP origin and raw WebSocket clients, one on
each edge: the broker relays each command to both edges and answers from what they hold."""

from __future__ import annotations

import json

import pytest
import tnetstring
import zmq
from gripcontrol import decode_websocket_events

from tests.helpers import wait_for
from tests.integration.cluster import Cluster, Origin
from tests.integration.wsraw import client_frame, raw_ws

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WOH = "application/websocket-events"
CHANNEL = "cmd-room"


def command(uri: str, method: str, args: dict | None = None, rid: bytes = b"t1") -> dict:
    """One request on the command socket (as Pushpin's tools/command.py sends it)."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.linger = 0
    try:
        s.connect(uri)
        req: dict = {b"id": rid, b"method": method.encode()}
        if args is not None:
            req[b"args"] = args
        s.send(tnetstring.dumps(req))
        assert s.poll(10_000), f"no answer to {method}"
        return tnetstring.loads(s.recv())
    finally:
        s.close()


def woh_app(origin: Origin):
    """Accept the OPEN and subscribe to CHANNEL; answer everything else with nothing."""

    def handle(_req) -> tuple[int, dict, bytes]:
        _, _, _, body = origin.requests[-1]
        evs = decode_websocket_events(body)
        if evs and evs[0].type == "OPEN":
            sub = b"c:" + json.dumps({"type": "subscribe", "channel": CHANNEL}).encode()
            out = b"OPEN\r\nTEXT %x\r\n%s\r\n" % (len(sub), sub)
            return 200, {"Content-Type": WOH, "Sec-WebSocket-Extensions": "grip"}, out
        return 200, {"Content-Type": WOH}, b""

    return handle


def requests_of(origin: Origin, cid: str) -> list[bytes]:
    return [body for _, _, h, body in origin.requests if h.get("Connection-Id") == cid]


def test_conncheck_and_refresh_across_two_edges(tmp_path):
    routes: dict = {}
    with Origin(routes) as origin:
        routes["/ws"] = woh_app(origin)
        with Cluster(
            tmp_path,
            routes=[f"* 127.0.0.1:{origin.port},over_http"],
            edges=2,
            separate_ports=True,
        ) as c:
            socks = [raw_ws(c.edge_ports[i], "/ws") for i in range(2)]
            try:
                wait_for(lambda: len(origin.requests) == 2, what="two OPENs")
                cids = [h["Connection-Id"] for _, _, h, _ in origin.requests]
                assert len(set(cids)) == 2
                uri = c.command_uri

                # conncheck: the open ids, whichever edge holds them; not the unknown one
                rep = command(
                    uri, "conncheck", {b"ids": [cids[1].encode(), b"nope", cids[0].encode()]}
                )
                assert rep == {
                    b"id": b"t1",
                    b"success": True,
                    b"value": [cids[1].encode(), cids[0].encode()],
                }
                assert command(uri, "conncheck", {b"ids": []}) == {
                    b"id": b"t1",
                    b"success": True,
                    b"value": [],
                }
                assert command(uri, "conncheck", {b"ids": b"x"})[b"condition"] == b"bad-request"

                # refresh by cid: that connection's origin gets an (empty) request now
                rep = command(uri, "refresh", {b"cid": cids[1].encode()})
                assert rep == {b"id": b"t1", b"success": True, b"value": None}
                wait_for(lambda: requests_of(origin, cids[1]) == [b"OPEN\r\n", b""])
                assert requests_of(origin, cids[0]) == [b"OPEN\r\n"]
                refresh = [r for r in origin.requests if r[2].get("Connection-Id") == cids[1]][-1]
                assert refresh[0] == "POST" and refresh[2]["Content-Type"] == WOH

                # refresh of an unknown connection
                rep = command(uri, "refresh", {b"cid": b"nope"})
                assert rep == {b"id": b"t1", b"success": False, b"condition": b"item-not-found"}

                # refresh by channel: every session subscribed, on both edges
                rep = command(uri, "refresh", {b"channel": CHANNEL.encode()})
                assert rep == {b"id": b"t1", b"success": True, b"value": None}
                wait_for(lambda: requests_of(origin, cids[0]) == [b"OPEN\r\n", b""])
                wait_for(lambda: requests_of(origin, cids[1]) == [b"OPEN\r\n", b"", b""])
                assert command(uri, "refresh", {b"channel": b"nobody"})[b"success"] is True

                # a closed connection is no longer found
                socks[0].sendall(client_frame(8, b"\x03\xe8"))
                wait_for(lambda: b"CLOSE" in b"".join(requests_of(origin, cids[0])))
                wait_for(
                    lambda: command(uri, "conncheck", {b"ids": [cids[0].encode()]})[b"value"] == [],
                    what="closed connection still found",
                )
                rep = command(uri, "conncheck", {b"ids": [c.encode() for c in cids]})
                assert rep[b"value"] == [cids[1].encode()]
                rep = command(uri, "refresh", {b"cid": cids[0].encode()})
                assert rep[b"condition"] == b"item-not-found"

                # an edge that goes away is not waited for: the answer comes from the other
                c.edge_procs[0].stop()
                rep = command(uri, "conncheck", {b"ids": [c.encode() for c in cids]})
                assert rep == {b"id": b"t1", b"success": True, b"value": [cids[1].encode()]}
            finally:
                for s in socks:
                    s.close()
