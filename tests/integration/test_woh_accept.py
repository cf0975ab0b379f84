"""WebSocket-over-HTTP end to end: ``Content-Bytes-Accepted`` / ``Content-Bytes-Replayed``
(Pushpin 1.41) and the ``one_event`` target option, with real broker and edge processes, a
scripted origin and a raw WebSocket client (one write carries several frames)."""

from __future__ import annotations

import pytest
from gripcontrol import decode_websocket_events

from tests.helpers import wait_for
from tests.integration.cluster import Cluster, Origin
from tests.integration.wsraw import client_frame, raw_ws, read_frame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WOH = "application/websocket-events"


def script(accept_first: int | None):
    """An origin that accepts the OPEN, then takes only ``accept_first`` content bytes of the
    first message request (all of every later one) and echoes what it accepted."""
    state = {"requests": 0}

    def handle(origin):
        def fn(req):
            _, _, headers, body = origin.requests[-1]
            evs = decode_websocket_events(body)
            if evs and evs[0].type == "OPEN":
                return 200, {"Content-Type": WOH, "Sec-WebSocket-Extensions": "grip"}, b"OPEN\r\n"
            state["requests"] += 1
            content = b"".join(e.content or b"" for e in evs if e.type == "TEXT")
            out = {"Content-Type": WOH}
            n = len(content)
            if state["requests"] == 1 and accept_first is not None:
                n = accept_first
                out["Content-Bytes-Accepted"] = str(n)
            reply = b"m:got:" + content[:n]
            return 200, out, b"TEXT %x\r\n%s\r\n" % (len(reply), reply)

        return fn

    return handle


def run(tmp_path, target_opts: str, accept_first: int | None, frames: list[bytes], replies: int):
    routes: dict = {}
    with Origin(routes) as origin:
        routes["/ws"] = script(accept_first)(origin)
        with Cluster(tmp_path, routes=[f"* 127.0.0.1:{origin.port},over_http{target_opts}"]) as c:
            s = raw_ws(c.edge_ports[0], "/ws")
            try:
                s.sendall(b"".join(frames))
                got = [read_frame(s) for _ in range(replies)]
            finally:
                s.close()
            wait_for(lambda: any(b"DISCONNECT" in r[3] for r in origin.requests))
    reqs = [(h, r) for _, _, h, r in origin.requests]
    return got, reqs


def test_content_bytes_accepted_keeps_the_rest_and_replays_it(tmp_path):
    got, reqs = run(
        tmp_path,
        "",
        5,
        [client_frame(1, b"hello world")],
        1,
    )
    assert got == [(1, b"got:hello")]
    assert reqs[1][1] == b"TEXT b\r\nhello world\r\n"
    assert "Content-Bytes-Replayed" not in reqs[1][0]
    # nothing new came: the rest waits (no request until more data, a keep-alive or a refresh)
    assert [r for _, r in reqs[2:]] == [b"DISCONNECT\r\n"]


def test_replayed_content_goes_out_with_the_next_message(tmp_path):
    routes: dict = {}
    with Origin(routes) as origin:
        routes["/ws"] = script(5)(origin)
        with Cluster(tmp_path, routes=[f"* 127.0.0.1:{origin.port},over_http"]) as c:
            s = raw_ws(c.edge_ports[0], "/ws")
            try:
                s.sendall(client_frame(1, b"hello world"))
                assert read_frame(s) == (1, b"got:hello")
                s.sendall(client_frame(1, b"!"))
                assert read_frame(s) == (1, b"got: world!")
            finally:
                s.close()
    headers, body = origin.requests[2][2], origin.requests[2][3]
    assert body == b"TEXT 6\r\n world\r\nTEXT 1\r\n!\r\n"
    assert headers["Content-Bytes-Replayed"] == "6"


def test_one_event_sends_one_event_per_request(tmp_path):
    got, reqs = run(
        tmp_path,
        ",one_event",
        None,
        [client_frame(1, b"a"), client_frame(1, b"b"), client_frame(1, b"c")],
        3,
    )
    assert got == [(1, b"got:a"), (1, b"got:b"), (1, b"got:c")]
    assert [r for _, r in reqs[1:4]] == [b"TEXT 1\r\na\r\n", b"TEXT 1\r\nb\r\n", b"TEXT 1\r\nc\r\n"]
