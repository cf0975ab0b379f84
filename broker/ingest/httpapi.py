"""The publish HTTP API, sans-IO (reference 3.3; ``PP:src/handler/handlerengine.cpp``
``controlHttpServer_requestReady`` and ``PP:src/core/simplehttpserver.cpp``).

One request per connection.  The server calls ``check_head`` once the request head is parsed
(Pushpin's server-level checks: 411, bad or too large Content-Length; also whether to send
``100 Continue``), reads the body, then calls ``handle_request``.  Every response carries
``Connection: close`` and ``Content-Length``.  ``Authorization`` is accepted and ignored, as
Pushpin does (pypubcontrol sends a Bearer JWT), unless ``publish_jwt_key`` is set: then the
server checks it first (``broker.ingest.auth``) and answers ``401`` with the reason.

Status texts and bodies are Pushpin's exactly: ``200 Published`` (text or
``{"message": "Published"}``), ``400 Body is not valid JSON.``, ``400 Invalid format...``,
``404 Not Found``, ``405 Method not allowed: GET.`` with ``Allow: POST``, ``406 Not
Acceptable. Supported formats are text/plain and application/json.``, ``411 Request requires
Content-Length.``, ``400 Request body too large.``, ``GET /`` -> ``Pushpin API``,
``POST /recover`` -> ``Updated``.  Errors are always ``text/plain``, as in Pushpin.
``GET /status`` and ``/status/data`` (the live status page) are answered by
``broker.ops.status`` before anything here, and not counted as publishes.

``GET /channels...`` (the channel API: history, channel state, live channels) is
``broker.ops.channelapi``'s, after the same auth.  A publish whose answer is JSON
(``Accept: application/json``) also lists each item's id (``channelapi.published_answer``);
text answers stay Pushpin's ``Published``.

``HttpApi`` at the end is the I/O: the listeners (at most ``http_maxconn`` connections at once,
beyond: a short 503), one request per connection read by ``broker.runtime.http1``, and the
stop (``stop_accepting``, ``wait_idle``) that the broker's lifecycle drives.
"""

from __future__ import annotations

import errno
import json
import logging
import socket as stdsocket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from broker.config import Config
from broker.errors import PublishError, RateLimited, StoreUnavailable
from broker.ingest.auth import PublishAuth
from broker.ingest.pipeline import Pipeline
from broker.items import Item, parse_http_publish, status_reason
from broker.ops import channelapi
from broker.runtime import http1
from broker.runtime.rawsock import RawStream, accept_forever, stdlib_socket
from broker.store.memory import MemoryStore

if TYPE_CHECKING:
    from broker.ops.status import StatusPage

MAX_BODY_BYTES = 1_000_000
MAX_HEADER_BYTES = 10_000
_TEXT = "text/plain"
_JSON = "application/json"
_BODYLESS_METHODS = ("HEAD", "GET", "DELETE", "OPTIONS")

Headers = Iterable[tuple[bytes | str, bytes | str]]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def to_bytes(self, http_version: str = "1.1") -> bytes:
        """The whole response: status line (HTTP/1.0 for 1.0 requests), headers, body."""
        version = "1.0" if http_version == "1.0" else "1.1"
        lines = [f"HTTP/{version} {self.status} {self.reason}"]
        lines.extend(f"{k}: {v}" for k, v in self.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(frozen=True, slots=True)
class HeadCheck:
    """Outcome of ``check_head``: an early response, or how much body to read."""

    response: Response | None = None
    content_length: int = 0
    expect_continue: bool = False


@dataclass(frozen=True, slots=True)
class ApiResult:
    response: Response
    items: tuple[Item, ...] = ()
    recover: bool = False
    error: str | None = field(default=None)  # the reason of a rejected publish, for logging


def respond(
    status: int,
    body: str,
    content_type: str = _TEXT,
    extra: tuple[tuple[str, str], ...] = (),
) -> Response:
    data = body.encode("utf-8")
    headers = extra + (
        ("Content-Type", content_type),
        ("Connection", "close"),
        ("Content-Length", str(len(data))),
    )
    return Response(status, status_reason(status), headers, data)


class NormHeaders(list[tuple[str, str]]):
    """Headers as ``norm_headers`` makes them (text, names lower-case, values stripped); it
    returns such a list as it is, so a request's headers are normalised once and handed to
    ``check_head``, ``negotiate``, ``handle_request`` and the auth check alike."""

    __slots__ = ()


def norm_headers(headers: Headers) -> NormHeaders:
    """``headers`` normalised once for every check of one request (see ``NormHeaders``)."""
    if type(headers) is NormHeaders:
        return headers
    if not isinstance(headers, (list, tuple)):
        headers = list(headers)  # read twice below when text is among them
    try:  # the usual input: the parser's (bytes, bytes) pairs
        return NormHeaders(
            [(k.decode("latin-1").lower(), v.decode("latin-1").strip()) for k, v in headers]  # type: ignore[union-attr]
        )
    except AttributeError:  # text among them
        pass
    out = NormHeaders()
    for k, v in headers:
        ks = k.decode("latin-1") if isinstance(k, (bytes, bytearray)) else k
        vs = v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else v
        out.append((ks.lower(), vs.strip()))
    return out


def check_head(method: str, headers: Headers) -> HeadCheck:
    """Pushpin's server-level checks, made before the body is read."""
    hs = norm_headers(headers)
    lengths = [v for k, v in hs if k == "content-length"]
    has_te = any(k == "transfer-encoding" for k, _ in hs)
    if not lengths and (has_te or method.upper() not in _BODYLESS_METHODS):
        return HeadCheck(respond(411, "Request requires Content-Length.\n"))
    if not lengths:
        return HeadCheck()
    try:
        n = int(lengths[0])
        if n < 0 or not lengths[0].isdigit():
            raise ValueError
    except ValueError:
        return HeadCheck(respond(400, "Bad Content-Length.\n"))
    if n > MAX_BODY_BYTES:
        return HeadCheck(respond(400, "Request body too large.\n"))
    expect = any(k == "expect" and v.lower() == "100-continue" for k, v in hs)
    return HeadCheck(content_length=n, expect_continue=expect)


def negotiate(headers: Headers) -> str | None:
    """The response type from ``Accept`` (last acceptable entry wins, as in Pushpin), or None."""
    accepts = [v for k, v in norm_headers(headers) if k == "accept"]
    if not accepts:
        return _TEXT
    chosen = None
    for value in accepts:
        for part in value.split(","):
            mtype = part.split(";", 1)[0].strip().lower()
            if not mtype:
                continue
            if mtype in ("text/plain", "text/*", "*/*", "*"):
                chosen = _TEXT
            elif mtype in ("application/json", "application/*"):
                chosen = _JSON
    return chosen


def _message(text: str, ctype: str) -> Response:
    if ctype == _JSON:
        return respond(200, json.dumps({"message": text}) + "\n", _JSON)
    return respond(200, text + "\n", _TEXT)


def _not_allowed(method: str) -> Response:
    return respond(405, f"Method not allowed: {method}.\n", extra=(("Allow", "POST"),))


def handle_request(method: str, target: str, headers: Headers, body: bytes) -> ApiResult:
    """Answer one complete request (head already accepted by ``check_head``)."""
    ctype = negotiate(headers)
    if ctype is None:
        return ApiResult(
            respond(406, "Not Acceptable. Supported formats are text/plain and application/json.\n")
        )
    path = target.split("?", 1)[0]
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    if path == "/":
        return ApiResult(respond(200, "Pushpin API\n"))
    if path == "/publish":
        if method != "POST":
            return ApiResult(_not_allowed(method))
        try:
            items = parse_http_publish(body)
        except PublishError as exc:
            return ApiResult(respond(400, exc.reason + "\n"), error=exc.reason)
        return ApiResult(_message("Published", ctype), tuple(items))
    if path == "/recover":
        if method != "POST":
            return ApiResult(_not_allowed(method))
        return ApiResult(_message("Updated", ctype), recover=True)
    return ApiResult(respond(404, "Not Found\n"))


def header_too_large() -> Response:
    return respond(400, "Request header too large.\n")


def bad_header() -> Response:
    return respond(400, "Failed to parse request header.\n")


# -- the I/O ---------------------------------------------------------------------------------------

log = logging.getLogger(__name__)

# a connection as the handlers use it: a RawStream (the accept loop's), or trio's stream
Stream = RawStream | trio.SocketStream
# a request read whole: its head, its body, and its headers normalised once (``NormHeaders``)
Request = tuple[http1.RequestHead, bytes, NormHeaders]
REQUEST_TIMEOUT_S = 30.0  # a connection's whole exchange (request, publish, answer)
SWEEP_S = 1.0  # how often connections past REQUEST_TIMEOUT_S are looked for and closed
REFUSE_TIMEOUT_S = 1.0
_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Connection: close\r\nContent-Length: 22\r\n\r\nToo many connections.\n"
)
_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_BATCH = 64  # connections accepted at one wake-up of a listening socket
# a publish request at most this long that is whole at accept is served in the accept loop
# (``HttpApi._inline``): its answer is small enough to leave in one send
INLINE_MAX_BYTES = 8192
IDLE_POLL_S = 0.02


class HttpApi:
    """Serves the publish API on trio: reads each request, checks auth, publishes through the
    pipeline (``broker.ingest.pipeline``) and answers once the items are stored."""

    def __init__(
        self, cfg: Config, pipeline: Pipeline, auth: PublishAuth, status: StatusPage | None = None
    ) -> None:
        self.cfg = cfg
        self.status = status  # GET /status, /status/data (broker.ops.status)
        self.pipeline: Pipeline = pipeline
        self.auth: PublishAuth = auth
        self.active = 0  # connections being served
        self.refused = 0  # connections refused at http_maxconn
        self._refusing = 0
        self._accepting: trio.CancelScope | None = None
        self._stopped = False
        # raw connections being served -> the trio time they are closed at (``_sweep``): one
        # dict entry instead of a cancel scope each, whose deadline trio would otherwise
        # register, and look at on every pass of its run loop (~10% of a one-item publish)
        self._deadlines: dict[RawStream, float] = {}
        self._idle_stopped = trio.Event()  # set once stopped with no connection left
        # a store whose writes never wait: a publish can be served in the accept loop
        self._memory_store = isinstance(pipeline.store, MemoryStore)

    # -- listening -------------------------------------------------------------------------------

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until ``stop_accepting``; handlers run in their own nursery,
        which is left to finish (``wait_idle``)."""
        async with trio.open_nursery() as handlers:
            handlers.start_soon(self._sweep)
            with trio.CancelScope() as scope:
                self._accepting = scope
                if self._stopped:
                    scope.cancel()
                try:
                    async with trio.open_nursery() as accepters:
                        for listener in listeners:
                            accepters.start_soon(
                                _accept_loop, listener, handlers, self._handle, self._inline
                            )
                        task_status.started()
                finally:
                    with trio.CancelScope(shield=True):
                        for listener in listeners:
                            await listener.aclose()

    def stop_accepting(self) -> None:
        """Stop accepting and close the listeners; connections already accepted go on."""
        self._stopped = True
        if self._accepting is not None:
            self._accepting.cancel()
        if not self._deadlines:
            self._idle_stopped.set()

    async def _sweep(self) -> None:
        """Close the connections past their deadline, every ``SWEEP_S`` (so a deadline is kept
        within a second), until stopped with none left.  A handler waiting on the socket wakes
        with ``trio.ClosedResourceError``; one busy elsewhere (publishing) finds it closed."""
        deadlines = self._deadlines
        while not (self._stopped and not deadlines):
            with trio.move_on_after(SWEEP_S):
                await self._idle_stopped.wait()
            now = trio.current_time()
            late = [stream for stream, at in deadlines.items() if at <= now]
            for stream in late:
                del deadlines[stream]
                stream.abort()
            if late:
                log.info(
                    "publish API: %d connection(s) closed: no complete exchange in %gs",
                    len(late),
                    REQUEST_TIMEOUT_S,
                )

    async def wait_idle(self) -> None:
        """Return once no connection is being served."""
        while self.active:
            await trio.sleep(IDLE_POLL_S)

    def _inline(self, stream: RawStream) -> Request | None:
        """The request to serve in the accept loop (no task, no scheduling round of its own:
        ~15% of a one-item publish's CPU), read here, or None: it gets its own task.  Only when
        nothing in its exchange can wait: the memory store with the pipeline's lock free, and a
        small ``POST /publish`` already whole in the socket (read ahead here, kept for the
        handler when not served here), answered without an early error."""
        if (
            not self._memory_store
            or self.active >= self.cfg.http_maxconn
            or self.pipeline.lock.locked()
        ):
            return None
        data = stream.read_ahead(INLINE_MAX_BYTES + 1)
        if not data or len(data) > INLINE_MAX_BYTES:
            return None
        request = http1.whole_request(data, MAX_HEADER_BYTES)
        if request is None:
            return None
        head = request[0]
        if head.method != "POST" or head.url.split("?", 1)[0] not in ("/publish", "/publish/"):
            return None
        hs = norm_headers(head.headers)
        check = check_head(head.method, hs)
        if check.response is not None or check.expect_continue:
            return None
        stream.pending = b""  # read: the exchange takes the request as it is
        return head, request[1], hs

    async def _handle(self, stream: Stream, request: Request | None = None) -> None:
        maxconn = self.cfg.http_maxconn
        if self.active >= maxconn:
            # over the cap: a short 503 (bounded too: past another cap's worth, just close)
            self.refused += 1
            if self._refusing >= maxconn:
                await _close(stream)
                return
            self._refusing += 1
            try:
                await _refuse(stream)
            finally:
                self._refusing -= 1
            return
        self.active += 1
        try:
            await self.serve_connection(stream, request)
        finally:
            self.active -= 1

    # -- one connection --------------------------------------------------------------------------

    async def serve_connection(self, stream: Stream, request: Request | None = None) -> None:
        """One request, one response, then close (Pushpin's SimpleHttpServer); the whole
        exchange within ``REQUEST_TIMEOUT_S``.  ``request``: already read (``_inline``)."""
        raw = stream if isinstance(stream, RawStream) else None
        try:
            if raw is not None:
                self._deadlines[raw] = trio.current_time() + REQUEST_TIMEOUT_S
                await self._exchange(stream, request)
            else:
                with trio.move_on_after(REQUEST_TIMEOUT_S):
                    await self._exchange(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:  # a bug must not take the API down; log it with the traceback
            log.exception("http api: unexpected error")
        finally:
            if raw is not None:
                deadlines = self._deadlines
                deadlines.pop(raw, None)
                raw.close()  # (no wait: nothing else waits on it)
                if self._stopped and not deadlines:
                    self._idle_stopped.set()
            else:
                with trio.move_on_after(1):
                    await stream.aclose()

    async def _read_request(self, stream: Stream) -> Request | None:
        """Read the request, answering early what Pushpin's server answers before the body
        (bad or too large a head, ``check_head``); None when answered or the client left."""
        reader = http1.RequestReader(stream, MAX_HEADER_BYTES)
        try:
            head = await reader.read_head()
        except http1.BadRequest:
            await http1.answer_early(stream, bad_header().to_bytes(), MAX_BODY_BYTES)
            return None
        except http1.HeadTooLarge:
            await http1.answer_early(stream, header_too_large().to_bytes(), MAX_BODY_BYTES)
            return None
        if head is None:
            return None
        version = head.version
        hs = norm_headers(head.headers)
        check = check_head(head.method, hs)
        if check.response is not None:
            await http1.answer_early(stream, check.response.to_bytes(version), MAX_BODY_BYTES)
            return None
        if check.expect_continue and not reader.complete:
            await stream.send_all(f"HTTP/{version} 100 Continue\r\n\r\n".encode())
        try:
            body = await reader.read_body()
        except http1.BadRequest:
            await http1.answer_early(stream, bad_header().to_bytes(version), MAX_BODY_BYTES)
            return None
        if body is None:
            return None
        return head, body, hs

    async def _exchange(self, stream: Stream, request: Request | None = None) -> None:
        if request is None:
            request = await self._read_request(stream)
            if request is None:
                return
        head, body, hs = request
        method, url, version = head.method, head.url, head.version
        if url.startswith("/status") and self.status is not None:  # not a publish: not counted
            answer = self.status.answer(method, url, hs, time.time())
            if answer is not None:  # logged without the query (it can hold a token)
                log.debug(
                    "http api method=%s path=%s code=%d", method, url.split("?")[0], answer.status
                )
                await stream.send_all(answer.to_bytes(version))
                return
        p = self.pipeline
        if channelapi.match_path(url):  # the channel API (its own module), same auth
            capi = await p.channels.http(method, url, self.auth.check(method, url, hs, time.time()))
            await stream.send_all(
                respond(capi.status, capi.body, capi.content_type, capi.headers).to_bytes(version)
            )
            return
        p.received("http")
        denied = self.auth.check(method, url, hs, time.time())
        if denied is not None:
            p.reject("http", f"unauthorized: {denied}")
            await stream.send_all(
                respond(401, denied + "\n", extra=(("WWW-Authenticate", "Bearer"),)).to_bytes(
                    version
                )
            )
            return
        pres = p.presence.answer(method, url)  # GET /channels/<ch>/presence
        if pres is not None:
            await stream.send_all(respond(*pres).to_bytes(version))
            return
        result = handle_request(method, url, hs, body)
        if result.error:
            p.reject("http", result.error)
        response = result.response
        if result.items:
            try:
                stored = await p.publish(result.items, strict=True)
                if response.status == 200 and negotiate(hs) == _JSON:  # with the ids
                    doc = channelapi.published_answer(result.items, stored)
                    response = respond(200, json.dumps(doc) + "\n", _JSON)
            except StoreUnavailable:
                response = respond(503, "Store unavailable.\n")
            except RateLimited as exc:
                p.reject("http", exc.reason)
                response = respond(429, exc.reason + "\n", extra=(("Retry-After", "1"),))
        if result.recover and not p.recover("http"):
            response = respond(
                429,
                f"Too many recover requests (recover_per_s={self.cfg.recover_per_s:g}); "
                "retry later.\n",
                extra=(("Retry-After", "1"),),
            )
        log.debug(
            "http api method=%s path=%s code=%d items=%d",
            method,
            url,
            response.status,
            len(result.items),
        )
        data = response.to_bytes(version)
        if type(stream) is RawStream:
            # the answer is the last thing the connection carries (Pushpin's API closes
            # after it): corked (MSG_MORE), then shut down, it leaves in one segment with the
            # FIN, one receive path and one wake-up of the publisher fewer (broker CPU per
            # one-item POST -6%, bench/RESULTS.md, fourteenth session)
            sock = stream.sock
            try:
                n = sock.send(data, stdsocket.MSG_MORE)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n == len(data):
                sock.shutdown(stdsocket.SHUT_WR)
                return
            data = data[n:]
        await stream.send_all(data)


async def _refuse(stream: Stream) -> None:
    """Answer 503, then read briefly what the client sent: closing with unread input would
    reset the connection and could lose the answer."""
    try:
        with trio.move_on_after(REFUSE_TIMEOUT_S):
            await stream.send_all(_TOO_MANY)
            await stream.send_eof()
            drained = 0
            while drained < 65536 and (data := await stream.receive_some(16384)):
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    await _close(stream)


async def _close(stream: Stream) -> None:
    with trio.move_on_after(REFUSE_TIMEOUT_S):
        try:
            await stream.aclose()
        except OSError:
            pass


async def _accept_loop(
    listener: trio.SocketListener,
    handlers: trio.Nursery,
    handle: Callable[[Stream, Request | None], Awaitable[None]],
    inline: Callable[[RawStream], Request | None] = lambda stream: None,
) -> None:
    """Accept every pending connection at each wake-up of the listening socket with plain
    non-blocking ``accept()`` calls, each served as a ``RawStream`` (one syscall per read and
    write when the socket is ready, no trio scheduling round after each: one POST a
    connection, as Pushpin's API, so these are per publish)."""
    raw = stdlib_socket(listener.socket)
    if raw is None:  # pragma: no cover - another trio: its own streams
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:
                    log.error("publish API accept failed (%s); retrying", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            handlers.start_soon(handle, stream, None)
    try:  # accepted sockets inherit it on Linux (trio's streams set it on each)
        raw.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
    except OSError:
        pass
    start_soon = handlers.start_soon

    def accepted(sock: stdsocket.socket, _addr: object) -> Awaitable[None] | None:
        stream = RawStream(sock)
        request = inline(stream)
        if request is not None:
            return handle(stream, request)  # awaited by the accept loop
        start_soon(handle, stream, None)
        return None

    await accept_forever(raw, accepted, batch=ACCEPT_BATCH, what="publish API")
