"""Pushpin's built-in ``test`` route target (Debian's shipped routes file is ``* test``).

What it answers (Pushpin's ``TestHttpRequest``), by path (a trailing ``/`` dropped):

* ``/``: ``200``, ``Hello from the Pushpin test handler!``;
* ``/response``: a GRIP response hold (``Grip-Hold: response``), body ``nothing for now``;
* ``/stream``: a GRIP stream hold, body ``[stream opened]``;
* anything else: ``404``, ``no such test resource``;
* a request body over 100,000 bytes: ``400``, ``request too large``.

Every body is ``text/plain`` and ends with a newline.  The held channels are the query's
``channel`` values (each once), else ``test``.

A WebSocket handshake (Pushpin's ``TestWebSocket``) is accepted on ``/ws`` only (anything else:
the ``404`` above, which the edge relays).  It is an echo: each text or binary message comes
back as it was sent.  When the handshake offers the ``grip`` extension (the edge always does)
the 101 accepts it, the session starts with one ``c:`` ``subscribe`` control message per
channel, and echoed messages carry the ``m:`` prefix, so the edge strips it and a message
published to a channel (``ws-message``) reaches the client.  A close is answered with the same
code and reason.  ``ws_accept`` and ``ws_answer`` are the sans-IO parts.

The edge serves it as a real origin on a loopback port of its own (``serve``), and routes
point their ``test`` targets there (``edge.routes.RouteTable.bind_test_origin``), so holds,
retries and next links go through the ordinary origin path.  ``respond`` is sans-IO.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qsl

import httptools
import trio
from wsproto.utilities import generate_accept_token

from broker.items import status_reason
from edge.ws.connection import Close, Message, Ping, WsConnection, WsError

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 100_000
READ_SIZE = 65536


def _path_channels(target: bytes) -> tuple[str, list[str]]:
    """The path (a trailing ``/`` dropped) and the channels (``?channel=``, else ``test``)."""
    path, _, query = target.decode("latin-1").partition("?")
    if len(path) >= 2 and path.endswith("/"):
        path = path[:-1]
    channels: list[str] = []
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k == "channel" and v not in channels:
            channels.append(v)
    return path, channels or ["test"]


def respond(target: bytes, body_size: int) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` for a request to the test target."""
    if body_size > MAX_REQUEST_BYTES:
        return 400, [("Content-Type", "text/plain")], b"request too large\n"
    path, channels = _path_channels(target)
    headers = [("Content-Type", "text/plain")]
    if path == "/":
        return 200, headers, b"Hello from the Pushpin test handler!\n"
    if path in ("/response", "/stream"):
        headers.append(("Grip-Hold", path[1:]))
        headers.append(("Grip-Channel", ", ".join(channels)))
        body = b"nothing for now\n" if path == "/response" else b"[stream opened]\n"
        return 200, headers, body
    return 404, headers, b"no such test resource\n"


def _offers_grip(headers: list[tuple[bytes, bytes]]) -> bool:
    for k, v in headers:
        if k.lower() == b"sec-websocket-extensions":
            for ext in v.split(b","):
                if ext.split(b";", 1)[0].strip() == b"grip":
                    return True
    return False


def ws_accept(
    target: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[bytes], bool] | None:
    """For a WebSocket handshake: ``(101 head, first messages, grip)``, or None when the path
    is not ``/ws`` (the caller answers with ``respond``'s 404)."""
    path, channels = _path_channels(target)
    if path != "/ws":
        return None
    key = next((v for k, v in headers if k.lower() == b"sec-websocket-key"), b"")
    grip = _offers_grip(headers)
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {generate_accept_token(key).decode('ascii')}",
    ]
    first: list[bytes] = []
    if grip:
        lines.append("Sec-WebSocket-Extensions: grip")
        first = [
            b"c:" + json.dumps({"type": "subscribe", "channel": ch}).encode("utf-8")
            for ch in channels
        ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), first, grip


def ws_answer(ws: WsConnection, data: bytes, grip: bool) -> tuple[bytes, bool]:
    """Feed what the edge sent; ``(bytes to send back, done)``: an echo (``m:`` with grip),
    a pong for a ping, the same close for a close, a protocol error's close."""
    out: list[bytes] = []
    try:
        events = ws.receive_data(data)
    except WsError as exc:
        return ws.close(exc.close_code, exc.reason), True
    for ev in events:
        if isinstance(ev, Message):
            out.append(ws.message(b"m:" + ev.data if grip else ev.data, ev.binary))
        elif isinstance(ev, Ping):
            out.append(ws.pong(ev.data))
        elif isinstance(ev, Close):
            out.append(ws.close(ev.code, ev.reason))
            return b"".join(out), True
    return b"".join(out), False


def encode(status: int, headers: list[tuple[str, str]], body: bytes, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {status_reason(status)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Parser:
    """httptools callbacks: completed requests as ``(target, body_size, keep_alive)``."""

    def __init__(self) -> None:
        self.url = b""
        self.size = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.done: list[tuple[bytes, int, bool]] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.url, self.size, self.headers = b"", 0, []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.size += len(body)

    def on_message_complete(self) -> None:
        self.done.append((self.url, self.size, self.parser.should_keep_alive()))


async def _serve_one(stream: trio.SocketStream) -> None:
    p = _Parser()
    async with stream:
        while True:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return
            try:
                p.parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                await _serve_ws(stream, p, data[upgrade.args[0] :])
                return
            except httptools.HttpParserError:
                return
            for target, size, keep in p.done:
                status, headers, body = respond(target, size)
                await stream.send_all(encode(status, headers, body, keep))
                if not keep:
                    return
            p.done.clear()


async def _serve_ws(stream: trio.SocketStream, p: _Parser, rest: bytes) -> None:
    accepted = ws_accept(p.url, p.headers)
    if accepted is None:
        status, headers, body = respond(p.url, 0)
        await stream.send_all(encode(status, headers, body, False))
        return
    head, first, grip = accepted
    ws = WsConnection(client=False)
    await stream.send_all(head + b"".join(ws.message(m) for m in first))
    data = rest
    while True:
        if data:
            out, done = ws_answer(ws, data, grip)
            if out:
                await stream.send_all(out)
            if done:
                return
        data = await stream.receive_some(READ_SIZE)
        if not data:
            return


async def serve(listeners: list[trio.SocketListener]) -> None:
    """Serve the test target on ``listeners`` (loopback) until cancelled."""

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await _serve_one(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("test target connection ended: %s", exc)

    await trio.serve_listeners(handler, listeners)
