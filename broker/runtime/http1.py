"""The one HTTP/1 request reader of the broker's two HTTP servers (the publish API,
``broker.ingest.httpapi``, and the ops listener, ``broker.runtime.opshttp``), on httptools.

``RequestReader(stream, max_head_bytes)``: ``await read_head()`` returns the request head
(``None`` if the client closed first), ``await read_body()`` the body (``None`` if the client
closed first).  A head that does not parse raises ``BadRequest``; one over ``max_head_bytes``
raises ``HeadTooLarge``: the caller answers (each server has its own words) and may then
``linger`` so that closing with unread input does not reset the connection and lose the answer.
An upgrade request is read as a plain request (neither server upgrades).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import httptools
import trio

from broker.errors import RemoteProtocolError


class Receiving(Protocol):
    """What ``RequestReader`` reads from (a trio stream, or ``broker.runtime.rawsock.RawStream``)."""

    async def receive_some(self, max_bytes: int) -> bytes | bytearray: ...


class Answering(Receiving, Protocol):
    """What ``answer_early`` writes to and drains."""

    async def send_all(self, data: bytes) -> None: ...

    async def send_eof(self) -> None: ...


READ_BYTES = 65536
LINGER_S = 1.0  # draining unread request bytes after an early answer


class BadRequest(RemoteProtocolError):
    """The request does not parse as HTTP/1."""


class HeadTooLarge(RemoteProtocolError):
    """The request head is over the server's limit."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    url: str
    version: str  # "1.1" or "1.0"
    headers: list[tuple[bytes, bytes]]


class _Callbacks:
    """httptools callbacks for one request."""

    __slots__ = ("url", "headers", "body", "headers_done", "complete")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class RequestReader:
    """Reads one request from ``stream`` (see the module docstring)."""

    def __init__(
        self, stream: Receiving, max_head_bytes: int, read_bytes: int = READ_BYTES
    ) -> None:
        self.stream = stream
        self.max_head_bytes = max_head_bytes
        self.read_bytes = read_bytes
        self._req = _Callbacks()
        self._parser = httptools.HttpRequestParser(self._req)

    @property
    def complete(self) -> bool:
        """The whole request (head and body) has been read."""
        return self._req.complete

    def _feed(self, data: bytes | bytearray) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._req.headers_done = self._req.complete = True  # answer it as it stands
        except httptools.HttpParserError as exc:
            raise BadRequest(f"bad request: {exc}") from exc

    async def read_head(self) -> RequestHead | None:
        req = self._req
        head = bytearray()
        while not req.headers_done:
            data = await self.stream.receive_some(self.read_bytes)
            if not data:
                return None
            head += data
            self._feed(data)
            if not req.headers_done and len(head) >= self.max_head_bytes:
                raise HeadTooLarge("request head too large")
        end = head.find(b"\r\n\r\n")
        if (end + 4 if end >= 0 else len(head)) > self.max_head_bytes:
            raise HeadTooLarge("request head too large")
        return RequestHead(
            self._parser.get_method().decode("latin-1"),
            req.url.decode("latin-1"),
            self._parser.get_http_version(),
            req.headers,
        )

    async def read_body(self) -> bytes | None:
        req = self._req
        while not req.complete:
            data = await self.stream.receive_some(self.read_bytes)
            if not data:
                return None
            self._feed(data)
        return b"".join(req.body)


def whole_request(data: bytes, max_head_bytes: int) -> tuple[RequestHead, bytes] | None:
    """The request ``data`` holds whole (head and body, nothing after) as its head and body, or
    None (incomplete, more than one, an upgrade, over ``max_head_bytes`` or not HTTP/1): what
    ``RequestReader`` would read from these bytes without waiting for more."""
    req = _Callbacks()
    parser = httptools.HttpRequestParser(req)
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if not req.complete or data.find(b"\r\n\r\n") + 4 > max_head_bytes:
        return None
    body = b"".join(req.body)
    if len(data) != data.find(b"\r\n\r\n") + 4 + len(body):
        return None  # bytes after the request, or a chunked body's framing
    head = RequestHead(
        parser.get_method().decode("latin-1"),
        req.url.decode("latin-1"),
        parser.get_http_version(),
        req.headers,
    )
    return head, body


async def answer_early(
    stream: Answering,
    response: bytes,
    max_drain_bytes: int,
    linger_s: float = LINGER_S,
) -> None:
    """Answer before the request was read in full, then drain what the client still sends
    (briefly), so that closing with unread input does not reset the connection and lose the
    answer."""
    await stream.send_all(response)
    with trio.move_on_after(linger_s):
        await stream.send_eof()
        drained = 0
        while drained < max_drain_bytes:
            data = await stream.receive_some(READ_BYTES)
            if not data:
                break
            drained += len(data)
