"""Client HTTP/1.1 connections: parse (httptools), route, proxy to the origin, hold.

Theory of operation
-------------------
One trio task per client connection (the control plane; delivery never runs here).  The task
feeds bytes to ``httptools.HttpRequestParser``; completed requests queue up and are handled
strictly one at a time, so pipelined requests are answered in order.  Reading stops while a
request is being handled, which bounds what a client can make us buffer.

Per request: pick a route (none -> ``502 Route not found``), forward to the origin
(``edge.origin.client``), then by the origin's answer:

* no ``Grip-*`` header and not ``application/grip-instruct`` (or a ``no_grip`` route):
  passthrough, streamed; re-framed with chunked encoding when the origin gave no length;
* GRIP (holds, next links, prev-id resume, retries): ``edge.grip.holds.handle_grip``, summarised:
* an instruct without hold: answered at once (GRIP headers stripped, ``Grip-Status`` applied);
* ``stream`` hold: the head and the initial body are sent, the ``StreamSession`` is registered
  with the hub *before* that (deliveries meanwhile are buffered, never lost), then the task only
  watches for the client leaving while the delivery path writes to the socket directly.  A
  published ``close`` ends the stream with the last chunk and the connection is reused;
* ``response`` hold: a ``ResponseSession`` waits for a published ``http-response`` or its
  timeout (timer buckets), then the task writes that one response and reads the next request.

Errors: a malformed request gets 400 (431 for oversized heads, 414 for oversized targets, 413
for bodies over ``client_body_bytes``, 408 for a head not complete within
``client_head_timeout_s``) and the connection closes after a short linger (so the answer is
not lost to a reset); origin failures and bad instructs get ``502 Error while proxying to
origin.`` (the real reason only on ``debug`` routes, always in the log).

Hostile input (docs/multihost.md, "Hostile input"): conflicting ``Content-Length`` /
``Transfer-Encoding`` or two different lengths are 400 (no smuggling past the edge); so is a
second ``Host`` (the Host that picks the route is the one the origin gets), and a chunked
body's trailer fields are dropped, never added to the request's headers; only
origin-form targets (``/...``), ``*`` and absolute ``http(s)://`` targets are accepted, and an
absolute target is routed by its authority like a Host header, so a request can only ever reach
a configured route's targets (no open proxy); ``CONNECT`` is 405.
"""

from __future__ import annotations

import logging
from os import read as _os_read
from socket import SHUT_WR as socket_SHUT_WR
from typing import TYPE_CHECKING

import httptools
import trio

from _speedups import http_chunk, request_facts
from broker.errors import InstructError, RemoteProtocolError
from edge import accesslog, jsonp, proxyrules
from edge import opener as _opener
from edge.cors import cors_headers
from edge.fastpath import PeerAddress, read_now, send_now
from edge.grip.holds import handle_grip, hold_stream
from edge.grip.instruct import grip_facts
from edge.grip.nextlink import LinkRefused
from edge.http1 import responses
from edge.origin.client import OriginError, open_origin
from edge.proxyrules import claims_tls, pick_route
from edge.ws.session import (
    is_websocket_request,
    resume_websocket,
    serve_websocket,
    woh_forbidden,
)

if TYPE_CHECKING:
    from edge.grip.holds import HeldStream
    from edge.origin.client import OriginResponse
    from edge.readtimer import Waker
    from edge.routes import Route
    from edge.services import ConnectionServices
    from edge.tlsconn import TlsConn
    from edge.ws.session import ParkedWs

log = logging.getLogger(__name__)

KEEPALIVE_IDLE_S = 120.0
MAX_JSONP_BODY = 100_000  # a JSON-P answer is buffered whole (Pushpin's initial buffer)
READ_SIZE = 65536
_NOT_GRIP: tuple[bool, bytes | None, bool | None] = (False, None, None)  # (grip_facts' form)
_PASS_DROP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
    ]
)


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


class _Reject(RemoteProtocolError):
    """Stop parsing: answer ``status`` with ``text`` and close."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text, status=status)
        self.status, self.text = status, text


class Connection:
    # slotted: one of these lives as long as every held connection
    __slots__ = (
        "app",
        "sock",
        "addr",
        "parser",
        "queue",
        "cur",
        "head_bytes",
        "reject",
        "upgrade",
        "upgrade_rest",
        "eof",
        "need_continue",
        "now",
        "head_started",
        "idle_since",
        "fresh",
        "body_started",
        "sent",
        "status",
        "mode",
        "ws_route",
        "tls",
        "crypt",
        "held",
        "wsheld",
    )

    def __init__(
        self,
        app: ConnectionServices,
        sock: trio.socket.SocketType,
        addr: PeerAddress | None,
        crypt: TlsConn | None = None,
    ) -> None:
        self.app = app
        self.sock = sock  # the client's socket (for a TLS client, ciphertext goes through it)
        self.addr = addr
        self.tls = crypt is not None  # the client came in on an HTTPS listener
        self.crypt = crypt  # its TLS state (edge.tlsconn): reads decrypt, writes encrypt
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.queue: list[Request] = []
        self.cur: Request | None = None
        self.head_bytes = 0
        self.reject: _Reject | None = None
        self.upgrade = False
        self.upgrade_rest = b""  # bytes after an Upgrade request's head (WebSocket frames)
        self.eof = False
        self.need_continue = False
        self.now = 0.0  # trio time of the last read, for head deadlines (sans-IO parsing)
        self.head_started = 0.0
        self.body_started = 0.0  # when the current request's head completed
        self.idle_since: float | None = None  # end of the last request (None: not started)
        self.fresh = True  # no request answered yet
        self.sent = 0  # bytes written by this task (the access log's byte count)
        self.status = 0  # the status of the current request's answer (0: none yet)
        self.mode = ""  # how the current request was answered (edge.accesslog)
        self.ws_route: Route | None = None  # a WebSocket session's route (edge.ws.session)
        # a stream hold handle() left to run here (edge.grip.holds.HeldStream): see serve()
        self.held: HeldStream | None = None
        # a parked WebSocket (edge.ws.session.ParkedWs): serve() resumes it when woken
        self.wsheld: ParkedWs | None = None

    # -- httptools callbacks -------------------------------------------------------------------
    # httptools calls the others only between on_message_begin and on_message_complete, and
    # only from ``feed`` (the parser is set): ``self.cur`` and ``self.parser`` are not None there
    # (each is read once into a local, so the asserts cost no more than the reads they replace)

    def on_message_begin(self) -> None:
        self.cur = Request()
        self.head_bytes = 0
        self.head_started = self.now

    def on_url(self, url: bytes) -> None:
        cur = self.cur
        assert cur is not None
        cur.url += url
        self.head_bytes += len(url)
        if len(cur.url) > self.app.cfg.client_header_bytes:
            raise _Reject(414, "URI Too Long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.app.cfg.client_header_bytes:
            raise _Reject(431, "Request Header Fields Too Large")
        cur = self.cur
        assert cur is not None
        if cur.method:  # a chunked body's trailer (after the head): counted, dropped,
            return  # never a request header (a second Host past the route, say)
        cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        r = self.cur
        parser = self.parser
        assert r is not None and parser is not None
        self.body_started = self.now
        r.method = parser.get_method()
        r.keep_alive = parser.should_keep_alive()
        r.http11 = parser.get_http_version() == "1.1"
        lengths, te, host, hosts, expect = request_facts(r.headers)
        if host is not None:
            r.host = host
        if expect:
            self.need_continue = True
        if hosts > 1:  # the Host that picks the route must be the one the origin gets
            raise _Reject(400, "Duplicate Host header")
        if len(lengths) > 1 or (lengths and te):
            raise _Reject(400, "Conflicting Content-Length and Transfer-Encoding")
        if r.method == b"CONNECT":
            raise _Reject(405, "CONNECT is not supported.")
        url = r.url
        if not (
            url.startswith(b"/")
            or url.startswith((b"http://", b"https://"))
            or (url == b"*" and r.method == b"OPTIONS")
        ):
            raise _Reject(400, "Bad request target")
        if lengths and int(next(iter(lengths))) > self.app.cfg.client_body_bytes:
            raise _Reject(413, "Request body too large.")

    def on_body(self, body: bytes) -> None:
        cur = self.cur
        assert cur is not None
        cur.body += body
        if len(cur.body) > self.app.cfg.client_body_bytes:
            raise _Reject(413, "Request body too large.")

    def on_message_complete(self) -> None:
        cur = self.cur
        assert cur is not None
        self.queue.append(cur)
        self.cur = None

    # -- I/O -----------------------------------------------------------------------------------

    def write_now(self, data: bytes) -> int:
        """What ``send_all`` does when the socket takes it at once, without a coroutine:
        counts ``data`` (as sent) and writes what the socket takes now; the bytes written.
        The caller sends the rest with ``send_all(rest, counted=True)``."""
        self.sent += len(data)
        if not self.status and data[:5] == b"HTTP/" and data[9:12].isdigit():
            self.status = int(data[9:12])  # the answer's status, for the access log
        if self.crypt is not None:
            return 0  # TLS: all of it through send_all (it encrypts and queues)
        return send_now(self.sock, data)

    async def send_all(
        self, data: bytes | bytearray | memoryview, *, counted: bool = False
    ) -> None:
        """Write ``data``; a client that does not take it within ``client_write_timeout_s``
        (it stopped reading) gets its connection broken: ``trio.BrokenResourceError``.
        ``counted``: the rest of what ``write_now`` counted already."""
        if not counted:
            self.sent += len(data)
            if not self.status and data[:5] == b"HTTP/" and bytes(data[9:12]).isdigit():
                self.status = int(bytes(data[9:12]))  # the answer's status, for the access log
        crypt = self.crypt
        if crypt is not None:  # behind any ciphertext still queued (a writer task's backlog)
            crypt.queue(data)
            crypt.send_out()  # usually all of it
            if not crypt.out:
                return
            with trio.move_on_after(self.app.cfg.client_write_timeout_s):
                await crypt.flush()
                return
            raise trio.BrokenResourceError("client write timeout")
        n = send_now(self.sock, data)  # usually all of it: no trio send, no task switch
        if n == len(data):
            return
        view = memoryview(data)[n:]
        with trio.move_on_after(self.app.cfg.client_write_timeout_s):
            while view:
                n = await self.sock.send(view)
                view = view[n:]
            return
        raise trio.BrokenResourceError("client write timeout")

    def feed(self, data: bytes) -> None:
        if self.parser is None:  # dropped while the connection was held (watch_client)
            self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade = True
            self.upgrade_rest = data[exc.args[0] :] if exc.args else b""
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

    async def next_request(self, read_tried: bool = False) -> Request | None:
        """The next request, None at the end.  ``read_tried``: ``request_now`` has just found
        nothing to read (its read is not made again)."""
        while not self.queue:
            if self.reject is not None or self.upgrade or self.eof:
                return None
            if self.need_continue and self.cur is not None:
                self.need_continue = False
                await self.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            if self.now == 0.0:
                # a new connection's first read: the request is usually in already; read it
                # without a cancel scope or trio's recv (later reads go through trio)
                data = None if read_tried else self.read_now()
                read_tried = False
                if data is None and self.crypt is None and _opener.driving():
                    data = await self._first_read()
                    if data is None:
                        return None  # nothing within client_head_timeout_s
                if data is not None:
                    self.now = trio.current_time()
                    if not data:
                        self.eof = True
                    else:
                        self.feed(data)
                    continue
            with trio.move_on_at(self.read_deadline(trio.current_time())):
                data = await self.recv()
                self.now = trio.current_time()
                if not data:
                    self.eof = True
                else:
                    self.feed(data)
                continue
            if self.cur is not None:  # a request had begun (slowloris): answer, then close
                self.reject = _Reject(408, "Request Timeout")
            return None  # idle connection
        return self.queue.pop(0)

    async def _first_read(self) -> bytes | None:
        """A fresh plain connection the opener runs (``edge.opener``) whose request is not in
        yet: its first bytes (``b""`` at EOF), waited for in the opener's epoll within
        ``client_head_timeout_s`` (``edge.readtimer``'s coarse deadline: a cancel scope, as a
        trio ``recv``, would make the opener give its task to this connection); None when
        nothing came in time."""
        wait = self.app.origin_client.timer.start(self.sock, self.app.cfg.client_head_timeout_s)
        try:
            while True:
                try:  # (the first wait on this socket: new to the opener's epoll)
                    await _opener.wait_readable(self.sock, new=True)
                except trio.ClosedResourceError:
                    if not wait.expired:
                        raise
                if wait.expired:
                    return None
                data = self.read_now()
                if data is not None:
                    return data
        finally:
            wait.done()

    def request_now(self) -> Request | None:
        """What ``next_request`` returns when that needs no wait, without its coroutine: a
        queued request, or the one a fresh connection's first read brings (the usual case).
        None: await ``next_request`` (it also answers None at the end)."""
        if (
            not self.queue
            and self.now == 0.0
            and self.reject is None
            and not self.upgrade
            and not self.eof
            and not self.need_continue
        ):
            data = self.read_now()
            if data is None:
                return None
            self.now = trio.current_time()
            if not data:
                self.eof = True
                return None
            self.feed(data)
        return self.queue.pop(0) if self.queue else None

    def read_now(self) -> bytes | None:
        """One non-blocking read of the client (plaintext): ``b""`` at EOF, None: nothing yet."""
        crypt = self.crypt
        return read_now(self.sock, READ_SIZE) if crypt is None else crypt.read_now(READ_SIZE)

    async def recv(self) -> bytes:
        """Wait for the client's next bytes (plaintext)."""
        crypt = self.crypt
        if crypt is None:
            return await self.sock.recv(READ_SIZE)
        return await crypt.recv(READ_SIZE)

    def read_deadline(self, now: float) -> float:
        """When to give up waiting for more of the next request.

        A fresh connection has ``client_head_timeout_s`` to send its first request head; an idle
        keep-alive connection ``KEEPALIVE_IDLE_S``; a begun head must complete within
        ``client_head_timeout_s`` of its first byte; a body must be complete within
        ``client_body_timeout_s`` of the end of its head (however it trickles in).
        """
        limit = self.app.cfg.client_head_timeout_s
        if self.cur is None:
            if self.idle_since is None:
                self.idle_since = now
            return self.idle_since + (limit if self.fresh else KEEPALIVE_IDLE_S)
        if self.cur.method == b"":
            return self.head_started + limit
        return self.body_started + self.app.cfg.client_body_timeout_s

    async def serve(self) -> bool:
        """Serve requests until the connection ends (False) or its stream hold parked (True:
        ``edge.parking`` calls ``serve`` again, in a new task, once it is woken)."""
        try:
            if self.wsheld is not None:  # a parked WebSocket, woken (edge.ws.session)
                return await self.resume_websocket()
            while True:
                if self.held is None:  # (else a parked stream hold, woken: it goes on)
                    req = self.request_now()
                    if req is None:
                        req = await self.next_request(read_tried=True)
                        if req is None:
                            break
                    keep = await self.handle(req)
                    if keep is None:
                        return True  # a WebSocket parked (edge.parking): no task while idle
                held = self.held
                if held is not None:
                    # a stream hold runs here, after handle() and the GRIP code returned: their
                    # frames are not kept for the life of the held connection
                    try:  # inline, not a helper coroutine: one frame less while held
                        done = await hold_stream(self, held.req, held.route, held.hold, None, held)
                    except (OriginError, InstructError, LinkRefused) as exc:
                        done = await self.proxy_error(held.req, held.route, exc)
                    if done is None:
                        return True  # parked: no task while idle (``self.held`` keeps the hold)
                    keep = done
                    self.held = None
                    accesslog.log_request(
                        self.app.cfg,
                        self.app.rules,
                        held.req,
                        held.route,
                        held.path,
                        self,
                        held.begin,  # type: ignore[arg-type]
                        self.mode,
                    )
                    del held
                if not keep:
                    return False
                self.idle_since, self.fresh = trio.current_time(), False
                if self.queue:  # pipelined requests: let other tasks run between them
                    await trio.lowlevel.checkpoint()
            if self.reject is not None:
                await self.send_all(responses.error(self.reject.status, self.reject.text))
                await self.linger()
            elif self.upgrade and self.cur is not None:
                await self.send_all(responses.error(501, "Upgrade is not supported."))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("client connection ended addr=%s: %s", self.addr, exc)
        return False

    async def resume_websocket(self) -> bool:
        """A parked WebSocket session, woken: True when it parked again; once it ends, its
        access-log line (edge.ws.session.ParkedWs keeps what the line reads)."""
        w = self.wsheld
        assert w is not None
        parked = False
        try:
            parked = await resume_websocket(self)
        finally:
            if not parked:
                app = self.app
                accesslog.log_request(
                    app.cfg, app.rules, w.req, self.ws_route, w.path, self, w.begin, self.mode
                )
        return parked

    async def linger(self, max_s: float = 1.0, max_bytes: int = 1 << 20) -> None:
        """Half-close and read (and drop) what the client still sends, briefly: closing with
        unread input would reset the connection and could destroy the answer just sent."""
        try:
            self.sock.shutdown(socket_SHUT_WR)
        except OSError:
            return
        with trio.move_on_after(max_s):
            got = 0
            while got < max_bytes:
                data = await self.sock.recv(READ_SIZE)
                if not data:
                    break
                got += len(data)

    # -- one request ---------------------------------------------------------------------------

    async def handle(self, req: Request) -> bool | None:
        """Answer ``req``; True if the connection may serve another request (None: a WebSocket
        session parked, ``edge.parking``: ``serve`` resumes it once woken)."""
        app = self.app
        app.requests += 1
        path = req.url
        host = req.host
        if path.startswith((b"http://", b"https://")):
            # absolute form: the authority replaces Host (RFC 9112 3.2.2); the request still
            # only goes to the targets of the route it matches, never to that authority
            rest = path.split(b"://", 1)[1]
            host, _, p = rest.partition(b"/")
            host = host.rpartition(b"@")[2]
            path = b"/" + p
            req.headers = [(k, v) for k, v in req.headers if k.lower() != b"host"]
            req.headers.append((b"Host", host))
            req.host = host
        if self.upgrade and not self.queue and is_websocket_request(req.headers):
            self.parser = None  # no more HTTP on this connection
            log_rec = accesslog.Begin(trio.current_time(), self.sent)
            self.status, self.mode, self.ws_route = 0, "ws", None
            parked = False
            try:  # edge.ws: the connection is the socket's now
                parked = await serve_websocket(self, req, host, path, log_rec)
            finally:  # the session's line, however it ended (once it ends, if it parked)
                if not parked:
                    accesslog.log_request(
                        app.cfg, app.rules, req, self.ws_route, path, self, log_rec, self.mode
                    )
            return None if parked else False
        rules = app.rules
        # a TLS client, or one behind a trusted TLS terminator (accept_x_forwarded_protocol)
        tls = self.tls or claims_tls(rules, req.headers)
        route = pick_route(
            app.routes,
            rules,
            host.decode("latin-1"),
            path.decode("latin-1"),
            req.headers,
            ws=False,
            tls=tls,
        )
        log_rec = (
            accesslog.Begin(trio.current_time(), self.sent)
            if app.cfg.access_log
            else accesslog.NO_BEGIN  # log_request returns at once: no clock read, no record
        )
        self.status = 0
        keep = await self._handle_routed(req, route, path, tls)
        held = self.held
        if held is not None:  # serve() runs the hold, then writes the line
            held.path, held.begin = path, log_rec
            return keep
        accesslog.log_request(app.cfg, rules, req, route, path, self, log_rec, self.mode)
        return keep

    async def _handle_routed(
        self, req: Request, route: Route | None, path: bytes, tls: bool
    ) -> bool:
        app = self.app
        self.mode = "error"
        if route is None:
            await self.send_all(responses.error(502, "Route not found", keep_alive=req.keep_alive))
            return req.keep_alive
        app.stats.request(route.id)  # stats "activity" and "counts" (edge.ops.connstats)
        trusted = app.upstream.trusted_now(req.headers)  # a GRIP proxy in front (chaining)
        if not trusted and woh_forbidden(route, req.headers):
            await self.send_all(
                responses.error(
                    403,
                    "Client not allowed to send WebSocket events directly.",
                    keep_alive=req.keep_alive,
                )
            )
            return req.keep_alive
        aco = route.aco or app.rules.aco
        method, headers, body = req.method, req.headers, bytes(req.body) if req.body else b""
        jreq = None
        if aco:
            try:
                jreq = jsonp.parse_request(route.jsonp, method, path, headers)
            except jsonp.JsonpError as exc:
                await self.send_error(req, 400, exc.reason, aco=True)
                return req.keep_alive
            if jreq is not None:
                method, path, headers, body = jreq.method, jreq.target, jreq.headers, jreq.body
        peer = str(self.addr[0]) if self.addr else ""
        headers = proxyrules.apply(
            app.rules, route, headers, tls=tls, ws=False, peer=peer, trusted=trusted
        )
        try:
            resp = await open_origin(
                app.origin_client,
                route,
                method,
                path,
                headers,
                body,
                sig=None if trusted else app.sign(route),
                timeout_s=app.cfg.origin_timeout_s,
                trusted=trusted,
            )
        except OriginError as exc:
            return await self.proxy_error(req, route, exc)
        try:  # trusted: GRIP instructions go up to the proxy in front, untouched
            grip, hold, resp.streamish = (
                grip_facts(resp.headers) if not (trusted or route.no_grip) else _NOT_GRIP
            )
            if not grip:
                self.mode = "passthrough"
                if jreq is not None:
                    return await self.passthrough_jsonp(req, resp, jreq)
                return await self.passthrough(req, resp, cors_request=req.headers if aco else None)
            self.mode = hold.decode("latin-1") if hold in (b"response", b"stream") else "instruct"
            return await handle_grip(self, req, route, resp, aco=aco, jsonp=jreq)
        except (OriginError, InstructError) as exc:
            return await self.proxy_error(req, route, exc)
        finally:
            if not resp.close_now():
                await resp.aclose()

    async def proxy_error(self, req: Request, route: Route, exc: RemoteProtocolError) -> bool:
        self.app.proxy_errors += 1
        log.log(
            accesslog.route_level(route, logging.WARNING),
            "error while proxying to origin route=%s path=%s: %s",
            route.name,
            req.url.decode("latin-1", "replace"),
            exc.reason,
        )
        text = (
            exc.reason if route.debug or self.app.rules.debug else "Error while proxying to origin."
        )
        await self.send_error(req, 502, text, aco=route.aco or self.app.rules.aco)
        return req.keep_alive

    async def send_error(self, req: Request, status: int, text: str, *, aco: bool) -> None:
        """A ``text/plain`` error answer; on ``aco`` routes with CORS headers (Pushpin)."""
        extra = cors_headers(req.headers, [(b"Content-Type", b"text/plain")]) if aco else []
        await self.send_all(responses.error(status, text, keep_alive=req.keep_alive, extra=extra))

    async def passthrough_jsonp(
        self, req: Request, resp: OriginResponse, jreq: jsonp.JsonpRequest
    ) -> bool:
        """A passthrough answer wrapped as JSON-P (``edge.jsonp``): always 200, complete."""
        try:
            body = await resp.read_body(MAX_JSONP_BODY)
        except OriginError as exc:
            log.warning("JSON-P passthrough body failed: %s", exc.reason)
            return False
        headers = [(k, v) for k, v in resp.headers if k.lower() not in _PASS_DROP]
        reason = resp.reason.encode("latin-1") if isinstance(resp.reason, str) else resp.reason
        hs, out = jsonp.wrap(jreq, resp.status, reason, headers, body)
        if not req.keep_alive:
            hs.append((b"Connection", b"close"))
        await self.send_all(responses.head(200, "OK", hs) + out)
        return req.keep_alive

    async def passthrough(
        self,
        req: Request,
        resp: OriginResponse,
        cors_request: list[tuple[bytes, bytes]] | None = None,
    ) -> bool:
        headers = [(k, v) for k, v in resp.headers if k.lower() not in _PASS_DROP]
        if cors_request is not None:
            headers += cors_headers(cors_request, headers)
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

    def queue_blocked(self) -> bool:
        return self.reject is not None or self.upgrade

    def read_held(self, probe: bool = True) -> bool:
        """A held connection about to park (``edge.parking``): read what the client sent
        (through TLS for a TLS client), without waiting; True when the hold must end (the
        client closed, sent a bad request or record, or a pipelined request head:
        ``watch_client``'s rules for a hold without a deadline).  Between requests the parser
        is dropped (``watch_client``).

        ``probe`` False (a hold's first park): a plain socket is not read.  The parker's epoll
        watches readiness, not edges (one-shot, armed by the park), so bytes or a hang-up
        already there wake the connection at once, and the woken hold reads them here; the
        usual first park (nothing sent) saves a read that fails with EAGAIN.  A TLS client is
        always read (its ``TlsConn`` may hold decrypted bytes the socket no longer shows)."""
        if self.cur is None:
            self.parser = None
        if not probe and self.crypt is None:
            return False
        fd = self.sock.fileno()
        crypt = self.crypt
        while True:
            if crypt is not None:  # a TLS client: what its records complete, as watch_client
                try:
                    data = crypt.read_now(READ_SIZE)
                except OSError:  # ssl.SSLError: a bad record, a refused renegotiation
                    self.eof = True
                    return True
                if data is None:  # nothing complete now: the socket wakes the parker again
                    return False
            else:
                try:
                    data = _os_read(fd, READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    return False
                except OSError:
                    self.eof = True
                    return True
            if not data:
                self.eof = True
                return True
            self.feed(data)
            if self.reject is not None:
                return True
            if self.queue or (self.cur is not None and self.cur.method):
                return True

    async def watch_client(self, waker: Waker | None = None) -> None:
        """Return when the client closes; bytes it sends meanwhile are parsed for later.

        A held connection may wait here for hours, so it keeps little: between requests the
        parser is dropped (``feed`` makes a new one, which starts where the old one was: at a
        message boundary), and the socket is read after ``wait_readable`` directly rather than
        through trio's ``recv`` (two fewer coroutine frames per held connection).  With a
        ``waker`` (``edge.readtimer.Waker``) it also returns once that has fired.

        While held, at most one pipelined request head (and what came in the same read) is
        buffered; then reading stops (docstring of the loop below)."""
        if self.cur is None:
            self.parser = None
        sock = self.sock
        fd = sock.fileno()
        crypt = self.crypt
        while waker is None or not waker.fired:
            await trio.lowlevel.wait_readable(sock)
            if crypt is not None:
                data = crypt.read_now(READ_SIZE)
                if data is None:
                    continue
            else:
                try:
                    data = _os_read(fd, READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
            if not data:
                self.eof = True
                return
            self.feed(data)
            if self.reject is not None:
                return
            if self.queue or (self.cur is not None and self.cur.method):
                # a pipelined request head is in: buffer no more (its body stays in the
                # kernel) and stop reading until the held request is answered.  A stream with
                # no deadline (a waker) may never end: the client is let go instead.
                if waker is not None:
                    return
                await trio.sleep_forever()  # the caller's cancel scope ends the hold
