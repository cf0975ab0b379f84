"""HTTP/1.1 client from the edge to the origin (trio sockets, httptools response parsing).

``OriginClient.build_request`` (no I/O) applies Pushpin's request rules (reference 1.4):
hop-by-hop and client ``Grip-*`` headers dropped, ``Grip-Sig``/``Grip-Feature`` added, Host kept unless the
target's ``host=`` or the route's ``as_host=``, route ``header=`` props applied, path rewritten
(``replace_beg``, ``path_rem``).  ``open_origin`` connects with failover across the route's
targets (connect errors only), sends the request and returns an ``OriginResponse`` once the
response head is in; its body is an async iterator.  Connections are kept alive and reused
(``edge.origin.pool``): a response read to its end parks its connection for the next request
to that target, and a request on a reused connection that ends before any response byte is
retried once on a fresh one.  With ``origin_keepalive_idle_s = 0`` every request has its own
connection (``Connection: close``).  Every wait is bounded by ``timeout_s``.

``OriginClient`` holds what these share per edge (no module-level state): the connection pool,
the ``ReadTimer`` that ends late waits (its ``serve`` task runs in the edge's nursery) and the
memo of header names already checked.  The edge creates one (``Edge.origin_client``) and every
caller passes it to ``open_origin``; a unit test builds its own.

Hostile or broken origins and header sources (docs/security.md):

* ``OriginClient.encode_request_head`` is the one place a request head toward an origin is
  written, for HTTP requests, WebSocket-over-HTTP POSTs and WebSocket-to-WebSocket handshakes.
  Every header name must be an HTTP token and every value (and the Host) a field value (no CR, LF,
  NUL or other control character but HTAB), whatever its source: client headers, ``Grip-Last``
  built from published ids, ``Meta-*`` from the origin or control messages, route
  ``header=``.  Anything else raises ``RequestHeadError`` and nothing is sent.
* ``ResponseHead`` (the httptools callbacks) skips interim ``1xx`` responses (not ``101``) and
  keeps reading for the final one; bytes after the final response (a second response, garbage)
  are never parsed as anything: the connection is marked not reusable and closed, never pooled.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import httptools
import trio

from _speedups import forward_filter, head_join
from broker.errors import GripcastError, RemoteProtocolError
from edge import opener as _opener
from edge.fastpath import read_now, send_now
from edge.origin.pool import DEFAULT_IDLE_S, OriginPool, close_stream
from edge.origin.tls import OriginStream, OriginTls, TlsHandshakeError, server_name
from edge.proxyrules import denied_destination
from edge.readtimer import ReadTimer
from edge.routes import Route, Target

log = logging.getLogger(__name__)

GRIP_FEATURES = (
    b"status, link:next, link:gone, filter:skip-self, filter:skip-users, "
    b"filter:require-sub, filter:build-id, filter:var-subst"
)
DROP_HEADERS = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"accept-encoding",
        b"content-encoding",
        b"transfer-encoding",
        b"expect",
        b"content-length",
        b"host",
        b"te",
        b"upgrade",
        b"proxy-connection",
    ]
)
READ_SIZE = 65536
MAX_INTERIM = 32  # interim 1xx responses accepted before a final one (more: 502)

_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # a CTL but HTAB
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")  # a CTL or a space
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class OriginError(RemoteProtocolError):
    """The origin could not be reached or answered badly (502 to the client)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=502)


def _escape_high(target: bytes) -> bytes:
    """``target`` with every byte above 0x7f percent-encoded (``/caf\xc3\xa9`` ->
    ``/caf%C3%A9``), as an HTTP client library sends a non-ASCII URL."""
    return b"".join(b"%%%02X" % c if c > 0x7F else bytes((c,)) for c in target)


def is_tls(stream: OriginStream) -> bool:
    """``isinstance(stream, trio.SSLStream)`` without the ABC machinery for the usual plain
    ``SocketStream`` (an ABC ``isinstance`` costs about a microsecond, five times per request)."""
    return type(stream) is not _SOCKET_STREAM and isinstance(stream, trio.SSLStream)


_SOCKET_STREAM = trio.SocketStream


class RequestHeadError(OriginError):
    """A request head toward the origin would carry a bad header name or value (never sent:
    it could smuggle headers or a second request); not worth retrying."""


MAX_TOKENS_MEMO = 4096  # a client can make up header names: keep the memo small


class OriginClient:
    """What one edge's origin requests share: ``pool`` (idle keep-alive connections),
    ``timer`` (ends late waits; run ``timer.serve`` in the edge's nursery), ``tls`` (the TLS
    contexts of ``ssl`` targets, replaced on SIGHUP) and the memo of header names and methods
    seen to be tokens.  Plain attributes: read per request."""

    __slots__ = ("pool", "timer", "tls", "_tokens")

    def __init__(self, idle_s: float = DEFAULT_IDLE_S, tls: OriginTls | None = None) -> None:
        self.pool = OriginPool(idle_s)
        self.timer = ReadTimer()
        self.tls = OriginTls() if tls is None else tls
        self._tokens: set[bytes] = set()  # header names and methods seen to be tokens

    def pool_key(self, target: Target) -> tuple[object, ...]:
        """Which parked connections may serve ``target``: a TLS connection only for the same
        name and TLS profile, never a plaintext one (and the other way round)."""
        if not target.ssl:
            return (target.host, target.port)
        return (target.host, target.port, server_name(target), self.tls.profile(target))

    def encode_request_head(
        self, method: bytes, target: bytes, host: bytes, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        """``METHOD target HTTP/1.1``, ``Host`` and ``headers``, checked: the one writer of
        request heads toward origins.  ``RequestHeadError`` if a name is not a token, a value
        (or the Host) holds a control character other than HTAB, or the method or target is
        malformed."""
        # cheap on the hot path: names and methods are checked once and remembered (regexes
        # over every name and value made build_request 18.7 us for 9 client headers); the
        # joined parts are checked as they are joined (``_speedups.head_join``): no CR, LF or
        # other CTL but HTAB in any of them, a target without spaces
        good = self._tokens
        if method not in good:
            self._remember_token(method)
        if not target.isascii():  # a request target is ASCII (RFC 3986): escape the rest
            target = _escape_high(target)
        head = head_join(method, target, host, headers, good)
        if head is None:  # a header name not seen yet (checked and remembered), or unsound
            for k, _ in headers:
                if k not in good:
                    self._remember_token(k)
            head = head_join(method, target, host, headers, None)
            if head is None:
                raise RequestHeadError(_head_problem(method, target, host, headers))
        return head

    def _remember_token(self, name: bytes) -> None:
        if _TOKEN.fullmatch(name) is None:
            raise RequestHeadError(
                f"refused to send {name[:100]!r} as a method or header name (not an HTTP token)"
            )
        if len(self._tokens) >= MAX_TOKENS_MEMO:
            self._tokens.clear()
        self._tokens.add(name)

    def build_request(
        self,
        route: Route,
        target: Target,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        sig: str | None,
        extra: Sequence[tuple[bytes, bytes]] = (),
        rewrite: bool = True,
        trusted: bool = False,
    ) -> bytes:
        """The request head + body sent to ``target`` for a client request (Pushpin's rules).

        ``extra`` headers (``Grip-Last``) are added after the client's are filtered;
        ``rewrite`` False sends ``path`` as is (a next link that already names the origin);
        ``trusted`` (a GRIP proxy in front, ``edge.upstream``): its ``Grip-*`` headers are kept
        and none of ours is added."""
        host, out = forward_headers(route, target, headers, keep_grip=trusted)
        out.extend(extra)
        if sig and not trusted:
            out.append((b"Grip-Sig", sig.encode("ascii")))
        if not route.no_grip and not trusted:
            out.append((b"Grip-Feature", GRIP_FEATURES))
        if body or method in (b"POST", b"PUT", b"PATCH"):
            out.append((b"Content-Length", b"%d" % len(body)))
        if not self.pool.keep_alive:
            out.append((b"Connection", b"close"))
        if rewrite and (route.path_rem or route.replace_beg is not None):
            rpath = route.rewrite_path(path.decode("latin-1")).encode("latin-1")
        else:  # (the usual route rewrites nothing)
            rpath = path
        return self.encode_request_head(method, rpath, host, out) + body

    def close(self) -> None:
        """Close the parked connections (the edge stopped)."""
        self.pool.close()


def _head_problem(
    method: bytes, target: bytes, host: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> str:
    if _TOKEN.fullmatch(method) is None:
        return f"refused to send a request with method {method!r}"
    if not target or _BAD_TARGET.search(target) is not None:
        return f"refused to send a request with target {target[:100]!r}"
    if _BAD_VALUE.search(host) is not None:
        return "refused to send a Host with a control character"
    for k, v in headers:
        if _TOKEN.fullmatch(k) is None:
            return f"refused to send header name {k[:100]!r} (not an HTTP token)"
        if _BAD_VALUE.search(v) is not None:
            return (
                f"refused to send header {k.decode('latin-1')!r}: its value holds a "
                "control character (CR, LF, NUL, ...)"
            )
    return "refused to send a malformed request head"  # pragma: no cover


# X-Forwarded-Proto/-Protocol, X-Forwarded-For, CDN-Loop, Pushpin-Route and orig_headers
# are Pushpin's [proxy] rules, applied before this by ``edge.proxyrules.apply``


def forward_headers(
    route: Route,
    target: Target,
    headers: Iterable[tuple[bytes, bytes]],
    drop: frozenset[bytes] = DROP_HEADERS,
    *,
    keep_grip: bool = False,
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The Host to send and the client's headers as the origin gets them (reference 1.4):
    hop-by-hop and ``drop`` headers and every client ``Grip-*`` removed (kept with
    ``keep_grip``: a trusted GRIP proxy in front), route ``header=`` props applied.  Shared by
    HTTP requests and WebSocket-to-WebSocket handshakes."""
    client_host, out = forward_filter(headers, drop, keep_grip)
    if target.host_header:
        host = target.host_header.encode("latin-1")
    elif route.as_host:
        host = route.as_host.encode("latin-1")
    else:
        host = client_host or str(target).encode("latin-1")
    for name, value in route.headers:
        bname = name.encode("latin-1")
        out = [(k, v) for k, v in out if k.lower() != bname.lower()]
        if value:
            out.append((bname, value.encode("latin-1")))
    return host, out


class ResponseHead:
    """httptools callbacks for one response toward an origin request (shared with
    ``edge.ws.proxy``).

    Interim ``1xx`` responses (not ``101``, which ends HTTP on the connection) are skipped: their
    status and headers are forgotten and the parser goes on to the next message (llhttp parses
    every 1xx as a body-less message).  Once the final response is complete, anything more the
    origin sent starts a message nobody asked for: ``extra`` is set, parsing stops (the
    callback raises) and the connection is not reused."""

    __slots__ = (
        "status",
        "reason",
        "headers",
        "head_done",
        "complete",
        "clean",
        "keep",
        "chunks",
        "parser",
        "interim",
        "extra",
        "framed",
        "_in_interim",
    )

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.clean = False  # the parser saw the message end (the connection may be reused)
        self.keep = False  # ... and neither side asked to close (read at the message end:
        # llhttp resets its keep-alive state once the message is complete)
        self.chunks: list[bytes] = []
        self.parser: httptools.HttpResponseParser | None = (
            None  # set by the owner; dropped at the message end (breaks the cycle)
        )
        self.interim = 0  # interim responses skipped
        self.extra = False  # bytes followed the final response: never reuse the connection
        self.framed = False  # a Content-Length or Transfer-Encoding header came
        self._in_interim = False

    def on_message_begin(self) -> None:
        if self.complete or self.extra:
            self.extra = True
            raise _Extra()
        self.reason = b""
        self.headers = []
        self.framed = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if len(name) in _FRAMING_LENGTHS and name.lower() in _FRAMING:
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code() if self.parser is not None else 0
        if 100 <= status < 200 and status != 101:
            self._in_interim = True
            self.interim += 1
            return
        self.status = status
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self._in_interim:  # an interim response ended: the final one is still to come
            self._in_interim = False
            self.reason = b""
            self.headers = []
            self.framed = False
            return
        self.complete = self.clean = True
        if self.parser is not None:
            self.keep = self.parser.should_keep_alive()
            self.parser = None


_FRAMING = frozenset([b"content-length", b"transfer-encoding"])
_FRAMING_LENGTHS = frozenset(len(n) for n in _FRAMING)


class _Extra(GripcastError):
    """Raised from a callback to stop parsing bytes that follow the final response."""


class OriginResponse:
    __slots__ = (
        "_client",
        "_stream",
        "_reused",
        "_got",
        "_broken",
        "target",
        "_timeout_s",
        "_p",
        "_parser",
        "_head_only",
        "_eof",
        "status",
        "reason",
        "headers",
        "framed",
        "streamish",
    )

    def __init__(
        self,
        client: OriginClient,
        stream: OriginStream,
        target: Target,
        timeout_s: float,
        head_only: bool,
        reused: bool = False,
    ) -> None:
        self._client = client  # its pool takes the connection back, its timer bounds waits
        self._stream: OriginStream | None = stream
        self._reused = reused
        self._got = False  # any response byte arrived (a reused connection is not retried then)
        self._broken = False  # the connection was closed or reset under us
        self.target = target
        self._timeout_s = timeout_s
        self._p: ResponseHead | None = ResponseHead()
        self._parser: httptools.HttpResponseParser | None
        self._parser = self._p.parser = httptools.HttpResponseParser(self._p)
        self._head_only = head_only
        self._eof = False
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.framed = False  # the origin gave Content-Length or chunked framing
        # set by whoever read the head's GRIP headers (``edge.grip.instruct.grip_facts``):
        # the instruct may be a relayed stream; None: not read yet
        self.streamish: bool | None = None

    async def _read_more(self) -> None:
        # wait for readability (a checkpoint), then one plain read: cheaper than trio's
        # receive_some, which first tries a read that cannot succeed this soon after a request
        # the timeout is the client's ReadTimer's (coarse, no cancel scope per wait)
        # _stream, _parser and _p are dropped only once the response is complete or closed,
        # and nothing reads a response after that
        stream, parser, p = self._stream, self._parser, self._p
        assert stream is not None and parser is not None and p is not None
        data: bytes | None
        if is_tls(stream):
            data = await self._receive_tls(stream)  # type: ignore[arg-type]
        else:
            sock = stream.socket
            wait = self._client.timer.start(sock, self._timeout_s)
            try:
                while True:
                    try:
                        await _opener.wait_readable(sock)
                    except trio.ClosedResourceError:
                        if not wait.expired:
                            raise
                    if wait.expired:
                        self._broken = True
                        raise OriginError(f"timeout waiting for origin {self.target}")
                    try:
                        data = read_now(sock, READ_SIZE)
                    except OSError as exc:
                        self._broken = True
                        raise OriginError(
                            f"error reading from origin {self.target}: {exc}"
                        ) from exc
                    if data is not None:
                        break
            finally:
                wait.done()
        if not data:
            self._eof = self._broken = True
            return
        self._got = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if p.complete:  # bytes after the final response: never read as a response
                p.extra = True
                log.debug("origin sent bytes after its response target=%s: not reused", self.target)
                return
            raise OriginError(f"bad response from origin {self.target}: {exc}") from exc
        if p.interim > MAX_INTERIM:
            raise OriginError(
                f"origin {self.target} sent more than {MAX_INTERIM} interim responses"
            )

    async def _receive_tls(self, stream: trio.SSLStream[trio.SocketStream]) -> bytes:
        """One read through TLS (the records decrypted by ``SSLStream``), bounded in time."""
        with trio.move_on_after(self._timeout_s) as scope:
            try:
                return bytes(await stream.receive_some(READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._broken = True
                raise OriginError(
                    f"error reading from origin {self.target}: {exc.__cause__ or exc}"
                ) from exc
        assert scope.cancelled_caught
        self._broken = True
        raise OriginError(f"timeout waiting for origin {self.target}")

    async def _read_head(self) -> None:
        p = self._p
        assert p is not None  # dropped by forget(), once the body was read
        while not p.head_done:
            await self._read_more()
            if self._eof and not p.head_done:
                raise OriginError(f"origin {self.target} closed the connection without a response")
        self.status = p.status
        if self.status == 101:  # only a WebSocket handshake (edge.wsproxy) may switch protocols
            raise OriginError(f"origin {self.target} answered 101 to an HTTP request")
        self.reason = p.reason.decode("latin-1")
        self.headers = p.headers
        self.framed = p.framed
        if self._head_only or self.status in (204, 304):
            p.complete = True
            p.chunks.clear()
        if p.complete:
            self._release()

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """Yield body pieces as they arrive; OriginError if the origin cuts a framed body."""
        p = self._p
        assert p is not None  # dropped by forget(), once the body was read
        while True:
            if p.chunks:
                chunks, p.chunks = p.chunks, []
                for c in chunks:
                    yield c
            if p.complete:
                self._release()
                return
            if self._eof:
                if self.framed:
                    raise OriginError(f"origin {self.target} closed the connection mid-body")
                return
            await self._read_more()

    async def read_body(self, limit: int) -> bytes:
        parts, size = [], 0
        async for c in self.body_chunks():
            size += len(c)
            if size > limit:
                raise OriginError(f"GRIP instruct response too large from {self.target}")
            parts.append(c)
        return b"".join(parts)

    def buffered_body(self) -> bytes:
        """The whole body of a ``complete`` response, without the async iteration
        ``read_body`` goes through (the connection was already released)."""
        p = self._p
        assert p is not None and p.complete
        chunks, p.chunks = p.chunks, []
        self._release()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def complete(self) -> bool:
        """The whole response is in (what is left of its body is buffered)."""
        return self._p is not None and self._p.complete

    def forget(self) -> None:
        """The caller is done with this response (its body was read): drop its headers and
        parse state, which a held client connection would otherwise keep alive."""
        self.headers = []
        if self._p is not None and self._p.complete:
            self._p = None

    def _release(self) -> None:
        """The response was read to its end: park the connection for reuse (when the parser
        saw the message end and neither side asked to close), else close it.  Drops the
        parser, so a held client connection keeps none of this alive."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        p = self._p
        assert p is not None  # forget() drops it only after this released the connection
        self._parser = p.parser = None
        if p.clean and p.keep and not p.extra and not self._head_only:
            client = self._client
            client.pool.give(client.pool_key(self.target), stream, trio.current_time())
        else:
            close_stream(stream)

    def close_now(self) -> bool:
        """``aclose`` without awaiting when nothing needs it (the connection was released
        or is TLS); False: call ``aclose``."""
        stream = self._stream
        if stream is not None and not is_tls(stream):
            return False
        self._stream = self._parser = None
        if self._p is not None:
            self._p.parser = None
        if stream is not None:
            close_stream(stream)  # no close_notify: nothing waits on a peer that may not read
        return True

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        self._parser = None
        if self._p is not None:
            self._p.parser = None
        if stream is not None and is_tls(stream):
            close_stream(stream)  # no close_notify: nothing waits on a peer that may not read
        elif stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


async def open_origin(
    client: OriginClient,
    route: Route,
    method: bytes,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    sig: str | None,
    timeout_s: float,
    extra: Sequence[tuple[bytes, bytes]] = (),
    rewrite: bool = True,
    targets: Sequence[Target] | None = None,
    trusted: bool = False,
) -> OriginResponse:
    """Connect (failing over across targets on connect errors: ``connect_first``), send, read
    the head, with ``client``'s pool and timer.  Once connected, an error is the answer (no
    other target is tried), except on a pooled connection the origin had closed meanwhile:
    then once more, fresh."""
    targets = targets or route.targets
    errors: list[str] = []
    pool = client.pool

    def take(target: Target) -> OriginStream | None:
        return pool.take(client.pool_key(target), trio.current_time())

    # the usual case: a parked connection to the first target (connect_first's first step,
    # without its coroutine; targets that need a check or a TLS setting go through it)
    first = targets[0] if targets else None
    pooled = None
    if first is not None and not first.untrusted and not first.ssl:
        pooled = pool.take((first.host, first.port), trio.current_time())
    if pooled is not None and first is not None:
        i, target, stream, reused = 0, first, pooled, True
    else:
        i, target, stream, reused = await connect_first(
            targets, timeout_s, errors=errors, take=take, tls=client.tls, timer=client.timer
        )
    while True:
        request = client.build_request(
            route,
            target,
            method,
            path,
            headers,
            body,
            sig=sig,
            extra=extra,
            rewrite=rewrite,
            trusted=trusted,
        )
        resp = OriginResponse(
            client, stream, target, timeout_s, head_only=method == b"HEAD", reused=reused
        )
        ok = False
        try:
            await _opener.cork()  # the origin requests of a batch of connections leave together
            if is_tls(stream):
                await _send_tls(resp, stream, request, timeout_s)  # type: ignore[arg-type]
                sent = len(request)
            else:
                try:  # one non-blocking send first: a request head nearly always fits
                    sent = send_now(stream.socket, request)
                except OSError as exc:
                    resp._broken = True
                    raise OriginError(f"error sending to origin {target}: {exc}") from exc
            if sent < len(request):
                with trio.move_on_after(timeout_s) as scope:
                    try:
                        await stream.send_all(memoryview(request)[sent:])
                    except (OSError, trio.BrokenResourceError) as exc:
                        resp._broken = True
                        raise OriginError(f"error sending to origin {target}: {exc}") from exc
                if scope.cancelled_caught:
                    raise OriginError(f"timeout sending to origin {target}")
            await resp._read_head()
            ok = True
            return resp
        except OriginError:
            if not (reused and resp._broken and not resp._got):
                raise
            log.debug("reused origin connection was closed target=%s: retrying", target)
        finally:
            if not ok:
                await resp.aclose()
        # the origin closed an idle connection: this target once more, fresh, then the rest
        stale, targets = target, list(targets[i:])

        def take_fresh(t: Target, stale: Target = stale) -> OriginStream | None:
            return None if t is stale else take(t)

        i, target, stream, reused = await connect_first(
            targets, timeout_s, errors=errors, take=take_fresh, tls=client.tls, timer=client.timer
        )


@functools.lru_cache(maxsize=1024)
def _ip_literal(host: str) -> int:
    """The address family of ``host`` if it is an IP address (0: a name to resolve)."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return 0


async def _connect_driven(
    target: Target, timeout_s: float, timer: ReadTimer
) -> trio.SocketStream | None:
    """A non-blocking TCP connect to ``target`` (an IP address), its wait in the opener's
    epoll (``edge.opener.wait_writable``) bounded by ``timeout_s`` through ``timer`` (no cancel
    scope: either would make the opener give its task to this connection): what
    ``trio.open_tcp_stream`` gives for one address, or None at the timeout; ``OSError`` if
    the connect fails."""
    raw = socket.socket(_ip_literal(target.host), socket.SOCK_STREAM)
    try:
        raw.setblocking(False)
        err = raw.connect_ex((target.host, target.port))
        sock = trio.socket.from_stdlib_socket(raw)
        if err == errno.EINPROGRESS:
            wait = timer.start(sock, timeout_s)
            try:
                await _opener.wait_writable(sock, new=True)  # (a fresh socket)
            except trio.ClosedResourceError:
                if not wait.expired:
                    raise
            finally:
                wait.done()
            if wait.expired:
                raw.close()
                return None
            err = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        return trio.SocketStream(sock)
    except BaseException:
        raw.close()
        raise


async def _untrusted_denied(target: Target) -> bool:
    try:
        infos = await trio.socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError:
        infos = []
    return denied_destination(target.host, [str(i[4][0]) for i in infos])


async def _send_tls(
    resp: OriginResponse,
    stream: trio.SSLStream[trio.SocketStream],
    data: bytes,
    timeout_s: float,
) -> None:
    with trio.move_on_after(timeout_s) as scope:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            resp._broken = True
            raise OriginError(
                f"error sending to origin {resp.target}: {exc.__cause__ or exc}"
            ) from exc
    if scope.cancelled_caught:
        resp._broken = True
        raise OriginError(f"timeout sending to origin {resp.target}")


async def connect_first(
    targets: Sequence[Target],
    timeout_s: float,
    *,
    errors: list[str] | None = None,
    take: Callable[[Target], OriginStream | None] | None = None,
    tls: OriginTls | None = None,
    timer: ReadTimer | None = None,
) -> tuple[int, Target, OriginStream, bool]:
    """The one connect-with-fail-over loop (origin requests here, WebSocket-to-WebSocket in
    ``edge.ws.proxy``): try ``targets`` in order; a refused or unreachable connect, a connect
    timeout (``timeout_s`` each), or for an ``ssl`` target a failed or late TLS handshake
    (``tls``; without it an ssl target is never tried: no plaintext to it) moves on to the
    next.  ``take`` may offer a pooled connection for a target before connecting.  With
    ``timer`` (the client's), a plain target at an IP address connects without a trio wait in
    a coroutine the opener runs (``_connect_driven``).

    Returns ``(index, target, stream, reused)``; raises ``OriginError`` naming every failure
    (also appended to ``errors``) when no target connects."""
    errors = [] if errors is None else errors
    for i, target in enumerate(targets):
        if target.ssl and tls is None:
            errors.append(f"{target}: no TLS settings to reach this ssl target with")
            continue
        if target.untrusted and await _untrusted_denied(target):
            errors.append(f"{target}: untrusted target at a denied (private) address")
            continue
        pooled = take(target) if take is not None else None
        if pooled is not None:
            return i, target, pooled, True
        stream: trio.SocketStream | None = None
        if timer is not None and not target.ssl and _opener.driving() and _ip_literal(target.host):
            try:  # a connection the opener runs: the connect waits in its epoll (edge.opener)
                stream = await _connect_driven(target, timeout_s, timer)
            except OSError as exc:
                errors.append(f"{target}: {exc.strerror or exc}")
                continue
            if stream is None:
                errors.append(f"{target}: connect timeout")
                continue
            return i, target, stream, False
        with trio.move_on_after(timeout_s) as scope:
            try:
                stream = await trio.open_tcp_stream(target.host, target.port)
            except OSError as exc:
                errors.append(f"{target}: {exc.strerror or exc}")
        if scope.cancelled_caught:
            errors.append(f"{target}: connect timeout")
        if stream is None:
            continue
        if tls is None or not target.ssl:
            return i, target, stream, False
        with trio.move_on_after(timeout_s) as scope:
            try:
                return i, target, await tls.wrap(stream, target), False
            except TlsHandshakeError as exc:
                errors.append(f"{target}: {exc.reason}")
                log.warning("TLS to origin %s failed: %s", target, exc.reason)
        if scope.cancelled_caught:
            errors.append(f"{target}: TLS handshake timeout")
            log.warning("TLS to origin %s failed: handshake timeout", target)
        close_stream(stream)
    raise OriginError("could not connect to any origin: " + "; ".join(errors))
