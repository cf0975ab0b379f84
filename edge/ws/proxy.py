"""WebSocket to WebSocket: the edge as a WebSocket client of an origin that speaks WebSocket
(reference 4, "WS->WS").

``client_handshake`` (sans-IO) builds the opening request: the client's handshake headers
processed as for HTTP (hop-by-hop and ``Grip-*`` dropped, ``Host`` kept), a fresh
``Sec-WebSocket-Key``, ``Sec-WebSocket-Extensions: grip`` instead of the client's extensions,
``Grip-Sig`` and ``Grip-Feature``.  The response is parsed with httptools; ``101`` with the
right ``Sec-WebSocket-Accept`` (wsproto's token) opens the session, any other answer is relayed
to the client.  A ``grip`` extension in the 101 enables GRIP control (``edge.ws.control``);
extensions are never forwarded to the client.  Frames both ways go through
``edge.ws.connection.WsConnection`` (client role: masked) and the ``_speedups`` frame twin.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

import httptools
import trio
from wsproto.utilities import generate_accept_token

from broker.errors import LocalProtocolError, RemoteProtocolError
from edge.http1 import responses
from edge.origin.client import (
    DROP_HEADERS,
    GRIP_FEATURES,
    MAX_INTERIM,
    OriginClient,
    OriginError,
    ResponseHead,
    connect_first,
    forward_headers,
)
from edge.origin.pool import close_stream
from edge.origin.tls import OriginStream
from edge.ws.connection import Close, Message, Ping, Pong, WsConnection, WsError
from edge.ws.control import grip_extension, grip_prefix
from edge.ws.over_http import MAX_REJECT_BODY, Opened, rejection

if TYPE_CHECKING:
    from edge.routes import Route, Target
    from edge.services import OriginServices
    from edge.ws.session import WsSession

Headers = list[tuple[bytes, bytes]]

log = logging.getLogger(__name__)

READ_SIZE = 65536
# the HTTP request rules (reference 1.4), plus the handshake headers the edge sets itself
_DROP = DROP_HEADERS | frozenset(
    [b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions"]
)


def client_handshake(
    client: OriginClient,
    route: Route,
    target: Target,
    path: bytes,
    client_headers: Iterable[tuple[bytes, bytes]],
    key: bytes,
    sig: str | None,
    trusted: bool = False,
) -> bytes:
    """The opening handshake toward ``target``; ``trusted`` (a GRIP proxy in front,
    ``edge.upstream``): its ``Grip-*`` headers are kept and none of ours is added."""
    host, out = forward_headers(route, target, client_headers, _DROP, keep_grip=trusted)
    out += [
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", key),
        (b"Sec-WebSocket-Version", b"13"),
        (b"Sec-WebSocket-Extensions", b"grip"),
    ]
    if sig and not trusted:
        out.append((b"Grip-Sig", sig.encode("ascii")))
    if not route.no_grip and not trusted:
        out.append((b"Grip-Feature", GRIP_FEATURES))
    rpath = route.rewrite_path(path.decode("latin-1")).encode("latin-1")
    return client.encode_request_head(b"GET", rpath, host, out)


class WsOrigin:
    def __init__(
        self, app: OriginServices, route: Route, client_headers: Headers, path: bytes
    ) -> None:
        self.app = app
        self.route = route
        self.path = path
        self.client_headers = client_headers
        # from a trusted GRIP proxy in front: the origin's GRIP goes up to it, untouched
        self.trusted = app.upstream.trusted_now(client_headers)
        # the connection's id (stats, conncheck, refresh); only WebSocket-over-HTTP tells the
        # origin (``Connection-Id``), a proxied WebSocket's origin never sees it (as Pushpin)
        self.cid = str(uuid.uuid4())
        self.fixed_channels = tuple(route.targets[0].subs)
        self.stream: OriginStream | None = None
        self.ws = WsConnection(client=True, max_message=_max(app))
        self.rest = b""
        self.gone = False
        self.detached = False
        self.send_lock = trio.Lock()

    async def open(self) -> Opened:
        try:
            return await self._open()
        except RemoteProtocolError as exc:
            self.app.proxy_errors += 1
            log.warning(
                "websocket origin open failed path=%s: %s",
                self.path.decode("latin-1", "replace"),
                exc.reason,
            )
            await self.aclose()
            text = exc.reason if self.route.debug else "Error while proxying to origin."
            return Opened(reject=responses.error(502, text))

    async def _open(self) -> Opened:
        timeout = self.app.cfg.origin_timeout_s
        tls = self.app.origin_client.tls  # an ssl target: wss (TLS), never plaintext
        _, target, self.stream, _ = await connect_first(self.route.targets, timeout, tls=tls)
        if target.ssl and not isinstance(self.stream, trio.SSLStream):  # never plaintext to it
            raise OriginError(f"{target}: refusing to speak plaintext to a TLS (ssl) target")
        key = base64.b64encode(os.urandom(16))
        request = client_handshake(
            self.app.origin_client,
            self.route,
            target,
            self.path,
            self.client_headers,
            key,
            None if self.trusted else self.app.sign(self.route),
            self.trusted,
        )
        p = ResponseHead()  # skips interim 1xx responses (a 103 before the 101)
        parser = p.parser = httptools.HttpResponseParser(p)
        with trio.move_on_after(timeout) as scope:
            try:
                await self.stream.send_all(request)
                upgraded = False
                while not upgraded and not p.complete:
                    data = bytes(await self.stream.receive_some(READ_SIZE))
                    if not data:
                        break
                    try:
                        parser.feed_data(data)
                    except httptools.HttpParserUpgrade as exc:
                        self.rest = data[exc.args[0] :] if exc.args else b""
                        upgraded = True
                    except httptools.HttpParserError:
                        if not p.complete or p.status == 101:  # else: bytes after a
                            raise  # rejection, never read
                    if sum(map(len, p.chunks)) > MAX_REJECT_BODY:
                        raise OriginError("origin rejection body too large")
                    if p.interim > MAX_INTERIM:
                        raise OriginError(
                            f"origin {target} sent more than {MAX_INTERIM} interim responses"
                        )
            except (OSError, trio.BrokenResourceError) as exc:
                raise OriginError(f"error talking to origin {target}: {exc}") from exc
            except httptools.HttpParserError as exc:
                raise OriginError(f"bad response from origin {target}: {exc}") from exc
        if scope.cancelled_caught:
            raise OriginError(f"timeout waiting for origin {target}")
        if not p.head_done:
            raise OriginError(f"origin {target} closed the connection without a response")
        status = p.status
        if status != 101:
            return Opened(
                reject=rejection(status, p.reason.decode("latin-1"), p.headers, b"".join(p.chunks))
            )
        accept = next((v for k, v in p.headers if k.lower() == b"sec-websocket-accept"), b"")
        if accept.strip() != generate_accept_token(key):
            raise OriginError("origin's Sec-WebSocket-Accept does not match")
        ext = [
            v.decode("latin-1") for k, v in p.headers if k.lower() == b"sec-websocket-extensions"
        ]
        if self.trusted:  # the proxy in front acts on GRIP: relay the grip extension, if any
            return Opened(headers=p.headers, pass_extensions=grip_extension(ext))
        return Opened(headers=p.headers, prefix=grip_prefix(ext))

    async def _send(self, data: bytes) -> None:
        stream = self.stream
        if not data or self.gone or stream is None:  # (no stream: open() failed, nothing to tell)
            return
        async with self.send_lock:
            try:
                await stream.send_all(data)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                self.gone = True

    async def client_event(self, type_: str, content: bytes | None) -> None:
        if self.detached:
            return
        content = content or b""
        if type_ in ("TEXT", "BINARY"):
            await self._send(self.ws.message(content, binary=type_ == "BINARY"))
        elif type_ == "PONG":
            await self._send(self.ws.pong(content))
        elif type_ == "PING":
            await self._send(self.ws.ping(content))
        else:  # control events addressed to WOH origins (resume-failed) go as TEXT
            await self._send(self.ws.message(content))

    async def client_close(self, code: int | None, reason: str) -> None:
        await self._send(self.ws.close(code, reason))

    def idle_due(self) -> float:
        """A WebSocket origin has no request loop to start (edge.ws.over_http): never."""
        return math.inf

    def kick(self) -> None:
        """(edge.ws.over_http's: nothing to start here.)"""

    def close_published(self) -> None:
        """A published close: the origin's WebSocket is closed when the client answers."""

    def closed_by_client(self, code: int | None, reason: str) -> None:
        if not self.gone and self.stream is not None:
            self.app.nursery.start_soon(self._send, self.ws.close(code, reason))

    async def wait_room(self) -> None:
        pass

    def refresh(self) -> None:
        """Nothing to do: Pushpin's ``refresh`` of a proxied WebSocket succeeds doing nothing."""

    def detach(self) -> None:
        self.detached = True
        if self.stream is not None and not self.gone:
            self.app.nursery.start_soon(self._send, self.ws.close(1000, ""))

    def disconnected(self) -> None:
        self.gone = True

    async def aclose(self) -> None:
        if isinstance(self.stream, trio.SSLStream):
            close_stream(self.stream)  # no close_notify: never wait on the origin here
        elif self.stream is not None:
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def serve(self, session: WsSession) -> None:
        stream = self.stream
        if stream is None:
            raise LocalProtocolError("WsOrigin.serve() without a successful open()")
        data = self.rest
        while True:
            if data:
                try:
                    events = self.ws.receive_data(data)
                except WsError as exc:
                    log.warning("origin broke the WebSocket protocol: %s", exc.reason)
                    await self._send(self.ws.close(exc.close_code, exc.reason))
                    self.gone = True
                    await session.close(1011, "origin error")
                    return
                for ev in events:
                    if isinstance(ev, Message):
                        if not self.detached:
                            await session.from_origin("BINARY" if ev.binary else "TEXT", ev.data)
                    elif isinstance(ev, Ping):  # relayed: the client answers (Pushpin)
                        if self.detached:
                            await self._send(self.ws.pong(ev.data))
                        else:
                            await session.from_origin("PING", ev.data)
                    elif isinstance(ev, Pong):
                        await session.from_origin("PONG", ev.data)
                    elif isinstance(ev, Close):
                        if not self.detached:
                            await session.close(ev.code if ev.code is not None else 1000, ev.reason)
                        await self._send(self.ws.close(ev.code, ev.reason))
                        self.gone = True
                        return
            try:
                data = bytes(await stream.receive_some(READ_SIZE))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.gone = True
                if not self.detached:
                    await session.close(1011, "origin went away")
                return


def _max(app: OriginServices) -> int:
    return app.cfg.ws_max_message_bytes
