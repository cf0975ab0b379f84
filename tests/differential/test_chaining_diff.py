"""Chaining (``upstream_key``), the same from Pushpin and gripcast: a request whose
``Grip-Sig`` verifies against ``upstream_key`` keeps its ``Grip-*`` headers (none added) and
gets the origin's GRIP instructions passed through untouched; a wrongly signed one is an
ordinary client (its ``Grip-*`` headers dropped, the hold acted on)."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.differential.harness import HttpClient, OriginResponse, same_as_pushpin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

UPSTREAM_KEY = "upstream-shared-secret-0123456789abcdef"


def _token(key: str) -> str:
    return jwt.encode({"iss": "front", "exp": int(time.time()) + 3600}, key, algorithm="HS256")


def _hold(ch: str) -> OriginResponse:
    return OriginResponse(
        200,
        [("Content-Type", "text/plain"), ("Grip-Hold", "stream"), ("Grip-Channel", ch)],
        b"start\n",
    )


def test_trusted_upstream_gets_grip_passed_through(each_system, origin, uniq):
    ch = uniq("up")
    origin.respond("/up", _hold(ch))
    token = _token(UPSTREAM_KEY)
    seen = {}
    for system in each_system(
        routes=f"* 127.0.0.1:{origin.port}\n", proxy={"upstream_key": UPSTREAM_KEY}
    ):
        with HttpClient(system.client_port) as c:
            c.send(
                f"GET /up HTTP/1.1\r\nHost: example.com\r\nGrip-Sig: {token}\r\n"
                "Grip-Last: x; last-id=1\r\nGrip-Feature: status\r\n\r\n".encode()
            )
            head, body = c.response()
        (req,) = origin.take()
        seen[system.name] = (
            head.comparable(),
            body,
            req.comparable(keep=["grip-sig", "grip-last", "grip-feature"]),
        )
    assert seen["gripcast"] == (
        (
            200,
            "OK",
            (("content-type", "text/plain"), ("grip-channel", ch), ("grip-hold", "stream")),
        ),
        b"start\n",
        (
            "GET",
            "/up",
            (("grip-feature", "status"), ("grip-last", "x; last-id=1"), ("grip-sig", token)),
            b"",
        ),
    )
    same_as_pushpin(seen)


def test_wrongly_signed_upstream_is_an_ordinary_client(each_system, origin, uniq):
    ch = uniq("notup")
    origin.respond("/notup", _hold(ch))
    token = _token("some-other-key-0123456789abcdef-xyz")
    seen = {}
    for system in each_system(
        routes=f"* 127.0.0.1:{origin.port}\n", proxy={"upstream_key": UPSTREAM_KEY}
    ):
        with HttpClient(system.client_port) as c:
            c.send(
                f"GET /notup HTTP/1.1\r\nHost: example.com\r\nGrip-Sig: {token}\r\n"
                "Grip-Last: x; last-id=1\r\n\r\n".encode()
            )
            c.read_until(b"start\n")
            system.publish(ch, {"http-stream": {"content": "held\n"}})
            head, body = c.response(until=b"held\n")
        (req,) = origin.take()
        sig = req.header("Grip-Sig")
        seen[system.name] = (
            head.comparable(),
            body,
            req.comparable(keep=["grip-last"]),
            sig != token,
        )
    assert seen["gripcast"] == (
        (200, "OK", (("content-type", "text/plain"),)),
        b"start\nheld\n",
        ("GET", "/notup", (), b""),
        True,
    )
    same_as_pushpin(seen)


def test_trusted_upstream_on_websocket_over_http_gets_grip_passed_through(
    each_system, origin, uniq
):
    """A WebSocket client whose ``Grip-Sig`` verifies against ``upstream_key``, on an
    ``over_http`` route: the origin's control message reaches the client as sent (the proxy
    does not act on it) and the origin gets the client's ``Grip-Sig``, as from Pushpin."""
    from gripcontrol import decode_websocket_events

    from tests.differential.harness import OriginResponse, open_ws
    from tests.integration.wsraw import client_frame, read_frame

    path = "/" + uniq("woh-up")
    control = b'c:{"type": "subscribe", "channel": "%s"}' % uniq("woh-up-ch").encode()

    def app(req):
        evs = [(e.type, e.content) for e in decode_websocket_events(req.body)]
        body = b""
        headers = [("Content-Type", "application/websocket-events")]
        if evs and evs[0][0] == "OPEN":
            headers.append(("Sec-WebSocket-Extensions", "grip"))
            body = b"OPEN\r\nTEXT %x\r\n%s\r\n" % (len(control), control)
        for name, content in evs:
            if name == "TEXT":
                reply = b"m:" + (content or b"")
                body += b"TEXT %x\r\n%s\r\n" % (len(reply), reply)
        return OriginResponse(200, headers, body)

    origin.respond(path, app)
    token = _token(UPSTREAM_KEY)
    seen = {}
    extensions: dict[str, list[bytes]] = {}
    for system in each_system(
        routes=f"* 127.0.0.1:{origin.port},over_http\n", proxy={"upstream_key": UPSTREAM_KEY}
    ):
        head_out: list[bytes] = []
        s = open_ws(
            system,
            origin,
            path,
            key="dGhlIHNhbXBsZSBub25jZQ==",
            headers={"Grip-Sig": token, "Sec-WebSocket-Extensions": "grip"},
            head_out=head_out,
        )
        try:
            frames = [read_frame(s)]
            s.sendall(client_frame(1, b"hi"))
            frames.append(read_frame(s))
        finally:
            s.close()
        opened = origin.wait_requests(1)[0]
        origin.take()
        ext = [
            line.split(b":", 1)[1].strip()
            for line in head_out[0].split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-extensions:")
        ]
        seen[system.name] = (frames, opened.header("Grip-Sig") == token)
        extensions[system.name] = ext
    assert seen["gripcast"] == ([(1, control), (1, b"m:hi")], True)
    same_as_pushpin(seen)
    # the one difference: gripcast also relays the origin's grip extension in the 101, so the
    # proxy in front (gripcast, or Pushpin on a WebSocket route) turns GRIP on for the session
    # and acts on the control message; Pushpin drops it on WebSocket-over-HTTP routes
    assert extensions["gripcast"] == [b"grip"]
    if "pushpin" in extensions:
        assert extensions["pushpin"] == []
