"""The ``test`` route target over WebSocket (Debian's shipped routes file is ``* test``), as
Pushpin's ``TestWebSocket``: ``/ws`` is an echo whose GRIP session subscribes to the query's
channels (``test`` by default), so a published ``ws-message`` reaches the client; a close is
answered with the same code and reason; any other path is refused with the test handler's 404."""

from __future__ import annotations

import socket

import pytest

from tests.differential.harness import same_as_pushpin
from tests.integration.wsraw import client_frame, raw_ws, read_frame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ROUTES = "*,path_beg=/t/ test\n* test\n"


def _published_reaches(system, s: socket.socket, channel: str, text: str) -> tuple[int, bytes]:
    """Publish ``text`` until it arrives (the subscription is made by the session's first
    control message, which the client cannot see: each try is a readiness probe)."""
    s.settimeout(0.3)
    for _ in range(30):
        system.publish(channel, {"ws-message": {"content": text}})
        try:
            frame = read_frame(s)
        except TimeoutError:
            continue
        s.settimeout(10)
        # a try that raced the subscription may still come in: drain the copies
        while True:
            s.settimeout(0.3)
            try:
                extra = read_frame(s)
            except TimeoutError:
                break
            assert extra == frame
        s.settimeout(10)
        return frame
    raise TimeoutError(f"{system.name}: nothing published to {channel} arrived")


def _handshake(system, path: str, heads: list | None = None) -> socket.socket:
    """``raw_ws`` through ``system``; on Pushpin one more try when its 101 never reaches the
    client (seen a few times in hundreds of runs: Pushpin's log shows the test target's 101 and
    the subscription, and the client's connection closes with nothing: Pushpin's, not the
    scenario's; the raw client looped on that EOF until the test's timeout)."""
    try:
        return raw_ws(system.client_port, path, key=KEY, head_out=heads)
    except (TimeoutError, EOFError):
        if system.name != "pushpin":
            raise
        return raw_ws(system.client_port, path, key=KEY, head_out=heads)


def test_websocket_echo_publish_and_close(each_system, uniq):
    ch = uniq("tws")
    seen = {}
    for system in each_system(routes=ROUTES, warmup=False):
        heads: list[bytes] = []
        s = _handshake(system, f"/ws?channel={ch}", heads)
        try:
            s.sendall(client_frame(1, b"hello"))
            try:
                echo = read_frame(s)
            except TimeoutError:
                # seen once on Pushpin's side under a loaded CI run: its test handler's echo
                # never came (gripcast had passed); one more try on a new connection there
                if system.name != "pushpin":
                    raise
                s.close()
                heads.clear()
                s = _handshake(system, f"/ws?channel={ch}", heads)
                s.sendall(client_frame(1, b"hello"))
                echo = read_frame(s)
            s.sendall(client_frame(2, b"\x00\x01"))
            echo_bin = read_frame(s)
            pub = _published_reaches(system, s, ch, "from the publisher")
            s.sendall(client_frame(8, (4001).to_bytes(2, "big") + b"bye"))
            close = read_frame(s)
        finally:
            s.close()
        status = heads[0].split(b"\r\n", 1)[0]
        has_ext = b"sec-websocket-extensions" in heads[0].lower()
        seen[system.name] = (status, has_ext, echo, echo_bin, pub, close)
    assert seen["gripcast"] == (
        b"HTTP/1.1 101 Switching Protocols",
        False,  # the grip extension is between the proxy and its origin only
        (1, b"hello"),
        (2, b"\x00\x01"),
        (1, b"from the publisher"),
        (8, (4001).to_bytes(2, "big") + b"bye"),
    )
    same_as_pushpin(seen)


def test_websocket_path_prefix_and_unknown_path(each_system):
    """``/t/ws`` through a ``path_beg=/t/`` route is the test handler's ``/ws``; ``/nope``
    is refused with its 404."""
    seen = {}
    for system in each_system(routes=ROUTES, warmup=False):
        s = _handshake(system, "/t/ws")
        try:
            s.sendall(client_frame(1, b"x"))
            echo = read_frame(s)
        finally:
            s.close()
        with socket.create_connection(("127.0.0.1", system.client_port), timeout=10) as c:
            c.sendall(
                b"GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            data = b""
            while not data.endswith(b"no such test resource\n"):
                more = c.recv(4096)
                if not more:
                    break
                data += more
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = sorted(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(b":") for line in lines[1:])
            if k.strip().lower() not in (b"date", b"connection", b"content-length")
        )
        seen[system.name] = (echo, lines[0], headers, body)
    assert seen["gripcast"] == (
        (1, b"x"),
        b"HTTP/1.1 404 Not Found",
        [(b"content-type", b"text/plain")],
        b"no such test resource\n",
    )
    same_as_pushpin(seen)
