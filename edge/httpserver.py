"""Client HTTP/1.1 connections: parse (httptools), route, proxy to the origin, hold.

Theory of operation
-------------------
One trio task per client connection (the control plane; delivery never runs here).  The task
feeds bytes to ``httptools.HttpRequestParser``; completed requests queue up and are handled
strictly one at a time, so pipelined requests are answered in order.  Reading stops while a
request is being handled, which bounds what a client can make us buffer.

Per request: pick a route (none -> ``502 Route not found``), forward to the origin
(``edge.origin``), then by the origin's answer:

* no ``Grip-*`` header and not ``application/grip-instruct`` (or a ``no_grip`` route):
  passthrough, streamed; re-framed with chunked encoding when the origin gave no length;
* an instruct without hold: answered at once (GRIP headers stripped, ``Grip-Status`` applied);
* ``stream`` hold: the head and the initial body are sent, the ``StreamSession`` is registered
  with the hub *before* that (deliveries meanwhile are buffered, never lost), then the task only
  watches for the client leaving while the delivery path writes to the socket directly.  A
  published ``close`` ends the stream with the last chunk and the connection is reused;
* ``response`` hold: a ``ResponseSession`` waits for a published ``http-response`` or its
  timeout (timer buckets), then the task writes that one response and reads the next request.

Errors: a malformed request gets 400 (431 for oversized heads, 413 for oversized bodies) and
the connection closes; origin failures and bad instructs get ``502 Error while proxying to
origin.`` (the real reason only on ``debug`` routes, always in the log).
"""
from __future__ import annotations

import logging

import httptools
import trio

from _speedups import http_chunk
from broker.errors import InstructError, RemoteProtocolError
from edge import responses
from edge.grip import is_grip_response, parse_instruct
from edge.origin import OriginError, open_origin
from edge.session import ResponseSession, StreamSession

log = logging.getLogger(__name__)

MAX_ACCEPT_BODY = 100_000  # instruct bodies read whole (Pushpin's MAX_ACCEPT_RESPONSE_BODY)
KEEPALIVE_IDLE_S = 120.0
READ_SIZE = 65536
_PASS_DROP = frozenset([b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer",
                        b"upgrade", b"proxy-connection"])


class Request:
    __slots__ = ("method", "url", "headers", "body", "keep_alive", "http11", "host")

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.keep_alive = True
        self.http11 = True
        self.host = b""


class _Reject(Exception):
    """Stop parsing: answer ``status`` with ``text`` and close."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class Connection:
    def __init__(self, app, sock, addr) -> None:
        self.app = app
        self.sock = sock
        self.addr = addr
        self.parser = httptools.HttpRequestParser(self)
        self.queue: list[Request] = []
        self.cur: Request | None = None
        self.head_bytes = 0
        self.reject: _Reject | None = None
        self.upgrade = False
        self.eof = False
        self.need_continue = False

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.cur = Request()
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.cur.url += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.app.cfg.client_header_bytes:
            raise _Reject(431, "Request Header Fields Too Large")
        self.cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        r = self.cur
        r.method = self.parser.get_method()
        r.keep_alive = self.parser.should_keep_alive()
        r.http11 = self.parser.get_http_version() == "1.1"
        lengths = set()
        te = False
        for k, v in r.headers:
            lk = k.lower()
            if lk == b"content-length":
                lengths.add(v.strip())
            elif lk == b"transfer-encoding":
                te = True
            elif lk == b"host" and not r.host:
                r.host = v
            elif lk == b"expect" and v.strip().lower() == b"100-continue":
                self.need_continue = True
        if len(lengths) > 1 or (lengths and te):
            raise _Reject(400, "Conflicting Content-Length and Transfer-Encoding")

    def on_body(self, body: bytes) -> None:
        self.cur.body += body
        if len(self.cur.body) > self.app.cfg.client_buffer_bytes:
            raise _Reject(413, "Request body too large.")

    def on_message_complete(self) -> None:
        self.queue.append(self.cur)
        self.cur = None

    # -- I/O -----------------------------------------------------------------------------------

    async def send_all(self, data) -> None:
        view = memoryview(data)
        while view:
            n = await self.sock.send(view)
            view = view[n:]

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgrade = True
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            self.reject = cause if isinstance(cause, _Reject) else _Reject(400, "Bad Request")
        except httptools.HttpParserError as exc:
            self.reject = _Reject(400, f"Bad Request ({exc})")
        if self.reject is None and self.cur is not None and self.cur.method == b"":
            # still inside a request head: bound it even before a header completes
            self.head_bytes += len(data)
            if self.head_bytes > self.app.cfg.client_header_bytes + READ_SIZE:
                self.reject = _Reject(431, "Request Header Fields Too Large")

    async def next_request(self) -> Request | None:
        while not self.queue:
            if self.reject is not None or self.upgrade or self.eof:
                return None
            if self.need_continue and self.cur is not None:
                self.need_continue = False
                await self.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            with trio.move_on_after(KEEPALIVE_IDLE_S):
                data = await self.sock.recv(READ_SIZE)
                if not data:
                    self.eof = True
                else:
                    self.feed(data)
                continue
            return None  # idle keep-alive connection
        return self.queue.pop(0)

    async def serve(self) -> None:
        try:
            while True:
                req = await self.next_request()
                if req is None:
                    break
                if not await self.handle(req):
                    return
            if self.reject is not None:
                await self.send_all(responses.error(self.reject.status, self.reject.text))
            elif self.upgrade and self.cur is not None:
                await self.send_all(responses.error(501, "Upgrade is not supported."))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("client connection ended addr=%s: %s", self.addr, exc)

    # -- one request ---------------------------------------------------------------------------

    async def handle(self, req: Request) -> bool:
        """Answer ``req``; True if the connection may serve another request."""
        app = self.app
        app.requests += 1
        path = req.url
        host = req.host
        if path.startswith((b"http://", b"https://")):
            rest = path.split(b"://", 1)[1]
            host, _, p = rest.partition(b"/")
            path = b"/" + p
        route = app.routes.match(host.decode("latin-1"), path.decode("latin-1"), False, False)
        if route is None:
            await self.send_all(responses.error(502, "Route not found", keep_alive=req.keep_alive))
            return req.keep_alive
        try:
            resp = await open_origin(route, req.method, path, req.headers, bytes(req.body),
                                     sig=app.sign(route), timeout_s=app.cfg.origin_timeout_s)
        except OriginError as exc:
            return await self.proxy_error(req, route, exc)
        try:
            if route.no_grip or not is_grip_response(resp.headers):
                return await self.passthrough(req, resp)
            return await self.grip(req, route, resp)
        except (OriginError, InstructError) as exc:
            return await self.proxy_error(req, route, exc)
        finally:
            await resp.aclose()

    async def proxy_error(self, req: Request, route, exc: RemoteProtocolError) -> bool:
        self.app.proxy_errors += 1
        log.warning("error while proxying to origin route_line=%d path=%s: %s",
                    route.line, req.url.decode("latin-1", "replace"), exc.reason)
        text = exc.reason if route.debug else "Error while proxying to origin."
        await self.send_all(responses.error(502, text, keep_alive=req.keep_alive))
        return req.keep_alive

    async def passthrough(self, req: Request, resp) -> bool:
        headers = [(k, v) for k, v in resp.headers if k.lower() not in _PASS_DROP]
        has_length = any(k.lower() == b"content-length" for k, _ in headers)
        no_body = req.method == b"HEAD" or resp.status in (204, 304) or resp.status < 200
        chunked = not has_length and not no_body and req.http11
        keep = req.keep_alive and (has_length or chunked or no_body)
        if chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        if not keep:
            headers.append((b"Connection", b"close"))
        await self.send_all(responses.head(resp.status, resp.reason, headers))
        if no_body:
            return keep
        try:
            async for piece in resp.body_chunks():
                await self.send_all(http_chunk(piece) if chunked else piece)
        except OriginError as exc:
            log.warning("passthrough body cut: %s", exc.reason)
            return False
        if chunked:
            await self.send_all(b"0\r\n\r\n")
        return keep

    async def grip(self, req: Request, route, resp) -> bool:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.headers]
        target = resp.target
        kw = {"prefix": route.prefix, "extra_channels": target.subs}
        stream_body = None
        ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
        if (next((v for k, v in headers if k.lower() == "grip-hold"), None) == "stream"
                and ctype.split(";", 1)[0].strip() != "application/grip-instruct"):
            hold = parse_instruct(resp.status, resp.reason, headers, b"", **kw)
            stream_body = resp.body_chunks()  # relayed as it arrives (no size limit)
        else:
            body = await resp.read_body(MAX_ACCEPT_BODY)
            hold = parse_instruct(resp.status, resp.reason, headers, body, **kw)
        if hold.mode == "stream":
            return await self.hold_stream(req, hold, stream_body)
        if hold.mode == "response":
            return await self.hold_response(req, hold)
        await self.send_all(responses.timeout(hold, keep_alive=req.keep_alive))
        return req.keep_alive

    async def hold_stream(self, req: Request, hold, body_iter) -> bool:
        app = self.app
        session = StreamSession(self.sock, hold, req.http11, trio.current_time())
        channels = [c.name for c in hold.channels]
        app.add_session(session, channels)
        try:
            await app.wait_positioned(channels)
            await self.send_all(responses.stream_head(hold, chunked=session.chunked))
            frame = http_chunk if session.chunked else bytes
            if hold.body:
                await self.send_all(frame(hold.body))
            if body_iter is not None:
                try:
                    async for piece in body_iter:
                        await self.send_all(frame(piece))
                except OriginError as exc:
                    log.warning("stream hold initial body cut: %s", exc.reason)
                    return False
            while session.buf and not session.dead:
                data = bytes(session.buf)
                session.buf.clear()
                await self.send_all(data)
            session.writing = False
            if session.closing and not session.dead:
                session.finish()
            app.schedule_keepalive(session)
            with trio.CancelScope() as scope:
                session.scope = scope
                if session.done:
                    scope.cancel()
                await self.watch_client()
                return False  # the client went away
            if session.dead:
                log.debug("stream dropped conn=%s: %s", session.id, session.reason)
                return False
            return req.keep_alive and session.chunked and not self.queue_blocked()
        finally:
            session.done = True
            app.remove_session(session)

    def queue_blocked(self) -> bool:
        return self.reject is not None or self.upgrade

    async def hold_response(self, req: Request, hold) -> bool:
        app = self.app
        now = trio.current_time()
        session = ResponseSession(hold, req.keep_alive, now + hold.timeout_s)
        channels = [c.name for c in hold.channels]
        app.add_session(session, channels)
        app.schedule_timeout(session)
        try:
            await app.wait_positioned(channels)
            if session.result is None:
                with trio.CancelScope() as scope:
                    session.scope = scope
                    await self.watch_client()
                    return False  # the client went away
        finally:
            session.done = True
            app.remove_session(session)
        await self.send_all(session.result)
        return req.keep_alive

    async def watch_client(self) -> None:
        """Return when the client closes; bytes it sends meanwhile are parsed for later."""
        while True:
            data = await self.sock.recv(READ_SIZE)
            if not data:
                self.eof = True
                return
            self.feed(data)
            if self.reject is not None or len(self.queue) > 16:
                return
