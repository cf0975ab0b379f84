"""Pushpin's built-in ``test`` route target (Debian's shipped routes file is ``* test``).

What it answers (Pushpin's ``TestHttpRequest``), by path (a trailing ``/`` dropped):

* ``/``: ``200``, ``Hello from the Pushpin test handler!``;
* ``/response``: a GRIP response hold (``Grip-Hold: response``), body ``nothing for now``;
* ``/stream``: a GRIP stream hold, body ``[stream opened]``;
* anything else: ``404``, ``no such test resource``;
* a request body over 100,000 bytes: ``400``, ``request too large``.

Every body is ``text/plain`` and ends with a newline.  The held channels are the query's
``channel`` values (each once), else ``test``.

The edge serves it as a real origin on a loopback port of its own (``serve``), and routes
point their ``test`` targets there (``edge.routes.RouteTable.bind_test_origin``), so holds,
retries and next links go through the ordinary origin path.  ``respond`` is sans-IO.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

import httptools
import trio

from broker.items import status_reason

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 100_000
READ_SIZE = 65536


def respond(target: bytes, body_size: int) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` for a request to the test target."""
    if body_size > MAX_REQUEST_BYTES:
        return 400, [("Content-Type", "text/plain")], b"request too large\n"
    path, _, query = target.decode("latin-1").partition("?")
    if len(path) >= 2 and path.endswith("/"):
        path = path[:-1]
    channels: list[str] = []
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k == "channel" and v not in channels:
            channels.append(v)
    if not channels:
        channels = ["test"]
    headers = [("Content-Type", "text/plain")]
    if path == "/":
        return 200, headers, b"Hello from the Pushpin test handler!\n"
    if path in ("/response", "/stream"):
        headers.append(("Grip-Hold", path[1:]))
        headers.append(("Grip-Channel", ", ".join(channels)))
        body = b"nothing for now\n" if path == "/response" else b"[stream opened]\n"
        return 200, headers, body
    return 404, headers, b"no such test resource\n"


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
        self.done: list[tuple[bytes, int, bool]] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.url, self.size = b"", 0

    def on_url(self, url: bytes) -> None:
        self.url += url

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
            except httptools.HttpParserError:
                return
            for target, size, keep in p.done:
                status, headers, body = respond(target, size)
                await stream.send_all(encode(status, headers, body, keep))
                if not keep:
                    return
            p.done.clear()


async def serve(listeners: list[trio.SocketListener]) -> None:
    """Serve the test target on ``listeners`` (loopback) until cancelled."""

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await _serve_one(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("test target connection ended: %s", exc)

    await trio.serve_listeners(handler, listeners)
