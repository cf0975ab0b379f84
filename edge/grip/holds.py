"""GRIP holds over HTTP: what a client connection does once the origin answered with GRIP.

Theory of operation
-------------------
``handle_grip(conn, req, route, resp)`` (called by ``httpserver.Connection``) parses the
instruct (``edge.grip.instruct``) and runs one of three flows; each may re-request the origin, so the
whole thing is a loop over *attempts* (at most ``MAX_ATTEMPTS`` retries per client request):

* **answer now** (no hold, no next link): the instruct's response, ``Grip-Status`` applied.
* **response hold** (long-poll): a ``ResponseSession`` on the hub.  Channels with ``prev-id``
  are first resolved against broker history (``edge.sync.resume``): the first retained message
  after the prev-id answers the poll.  Only when history cannot answer is the request retried
  against the origin with ``Grip-Last: <channel>; last-id=<prev-id>`` (Pushpin; the retried
  answer is held as is).  The poll is also retried on a published ``hint``, on ``recover``, and
  about 1 s after a channel's first subscription on this edge when
  ``update_on_first_subscription`` is on (skipped when every channel's prev-id was resolved
  by history: then nothing can have been missed).
* **stream** (``Grip-Hold: stream``, or a ``Grip-Link rel=next`` without hold: Pushpin's
  "streaming historical data"): the head and body go out at once, chunked.  Next links are
  fetched (GET, only ``Grip-Last`` + ``Grip-Sig``/``Grip-Feature``, never the client's headers)
  and their bodies appended; a next response may carry another link (a chain), turn the
  response into a stream hold, or end it.  A held stream fetches its next link on a ``hint``,
  on ``recover``, after ``timeout`` seconds unless every channel got a message in that window
  (idle recovery), when a prev-id cannot be resolved by history, and ~1 s after a first
  subscription.  A prev-id that history cannot answer and no next link: Pushpin's error.

Next links must stay on the route's origin: a relative link, or an absolute one naming the
client-facing host of the request or one of the route's targets.  Any other host is refused
(the stream ends; the reason is logged, and appended on ``debug`` routes).

``Grip-Link rel=gone``: when the client disconnects before the hold ended, the edge POSTs an
empty body to it (best effort, not retried), as Pushpin 1.41 does.

``HoldRegistry`` is the edge-wide registry these flows use for ``recover`` and for the
first-subscription times of channels.
"""

from __future__ import annotations

import logging
import random
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import trio

from _speedups import http_chunk
from broker.errors import GripcastError, InstructError, RemoteProtocolError
from edge import readtimer
from edge.grip import filters
from edge.grip.cache import InstructCache
from edge.grip.instruct import Hold, is_grip_response
from edge.grip.session import ResponseSession, StreamSession
from edge.http1 import responses
from edge.origin.client import OriginError, open_origin
from edge.sessionstate import OPEN

if TYPE_CHECKING:
    from edge.grip.cache import InstructOptions
    from edge.grip.instruct import Channel
    from edge.http1.connection import Connection, Request
    from edge.origin.client import OriginResponse
    from edge.routes import Route, Target
    from edge.services import ConnectionServices
    from edge.sync.resume import Resume

log = logging.getLogger(__name__)

MAX_ACCEPT_BODY = 100_000  # Pushpin's MAX_ACCEPT_RESPONSE_BODY
MAX_ACCEPT_REQUEST_BODY = 100_000  # Pushpin's MAX_ACCEPT_REQUEST_BODY
MAX_ATTEMPTS = 8  # origin requests per client request (retries, hints)
FIRST_SUB_DELAY_S = 1.0  # Pushpin's SUBSCRIBED_DELAY
NEXT_LINK_TRIES = 5
NEXT_LINK_MAX_CHAIN = 1000


class LinkRefused(OriginError):
    """A next/gone link that leaves the route's origin."""


# -- sans-IO helpers -------------------------------------------------------------------------


def resolve_link(
    link: str, host: str, path: str, route: Route
) -> tuple[bytes, bool, tuple[Target, ...]]:
    """Where to send a next/gone link: ``(path, rewrite, targets)``.

    ``host``/``path`` are the client request's.  Relative links resolve against the request
    URI and go through the route as a client request would (``rewrite`` True, all targets).
    Absolute links must name the request's host (same handling) or one of the route's targets
    (sent to that target as is).  Anything else raises ``LinkRefused``.
    """
    base = f"http://{host or 'localhost'}{path}"
    url = urljoin(base, link)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise LinkRefused(f"next link {link!r} is not http")
    target_path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = parts.netloc.lower()
    if authority == (host or "localhost").lower() or (parts.netloc == "" and link.startswith("/")):
        return target_path.encode("latin-1"), True, ()
    for t in route.targets:
        names = {f"{t.host}:{t.port}".lower(), str(t).lower()}
        if t.port == 80:
            names.add(t.host.lower())
        if authority in names:
            return target_path.encode("latin-1"), False, (t,)
    raise LinkRefused(f"next link {link!r} leaves the route's origin")


def grip_last(
    channels: Iterable[str], prefix: str, cursors: Mapping[str, str | None]
) -> list[tuple[bytes, bytes]]:
    """``Grip-Last`` headers: one per channel with a known last id (names without ``prefix``,
    as the backend wrote them)."""
    out = []
    for name in channels:
        last = cursors.get(name)
        if last is None:
            continue
        shown = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        out.append((b"Grip-Last", f"{shown}; last-id={last}".encode("utf-8", "replace")))
    return out


def _prev_id(c: Channel) -> str:
    """The prev-id of one of a hold's prev-id channels (those are picked by ``prev_id is not
    None``)."""
    assert c.prev_id is not None
    return c.prev_id


class HoldRegistry:
    """Held HTTP sessions (weakly) and when each channel was first subscribed on this edge."""

    def __init__(self) -> None:
        self._sessions: weakref.WeakSet[ResponseSession | StreamSession] = weakref.WeakSet()
        self._first: dict[str, float] = {}

    def add(self, session: ResponseSession | StreamSession) -> None:
        self._sessions.add(session)

    def discard(self, session: ResponseSession | StreamSession) -> None:
        self._sessions.discard(session)

    def first_subscribed(self, channel: str, now: float) -> None:
        self._first[channel] = now
        if len(self._first) > 10_000:
            horizon = now - 10 * FIRST_SUB_DELAY_S
            self._first = {c: t for c, t in self._first.items() if t > horizon}

    def first_sub_deadline(self, channels: Iterable[str], now: float) -> float | None:
        """When a hold on ``channels`` should retry (a channel's first subscription + 1 s)."""
        due = [
            self._first[c] + FIRST_SUB_DELAY_S
            for c in channels
            if c in self._first and self._first[c] + FIRST_SUB_DELAY_S > now - 0.001
        ]
        return max(due) if due else None

    def recover(self) -> int:
        n = 0
        for s in list(self._sessions):
            s.hint()
            n += 1
        return n

    def __len__(self) -> int:
        return len(self._sessions)


class _Retry(GripcastError):
    """Re-request the origin with these extra headers (a control-flow signal, never escapes)."""

    def __init__(self, extra: list[tuple[bytes, bytes]], resolve: bool) -> None:
        super().__init__("retry")
        self.extra = extra
        self.resolve = resolve


# -- the flows -------------------------------------------------------------------------------


def _client_path(req: Request) -> tuple[str, str]:
    path = req.url
    host = req.host
    if path.startswith((b"http://", b"https://")):
        rest = path.split(b"://", 1)[1]
        host, _, p = rest.partition(b"/")
        path = b"/" + p
    return host.decode("latin-1"), path.decode("latin-1")


async def _parse(
    resp: OriginResponse, route: Route, cache: InstructCache
) -> tuple[Hold, AsyncIterator[bytes] | None]:
    raw = resp.headers
    kw: InstructOptions = {"prefix": route.prefix, "extra_channels": tuple(resp.target.subs)}
    ctype, hold_value, has_next = b"", None, False
    for k, v in raw:
        lk = k.lower()
        if lk == b"content-type":
            if not ctype:
                ctype = v
        elif lk == b"grip-hold":
            if hold_value is None:
                hold_value = v
        elif lk == b"grip-link" and b"next" in v:
            has_next = True
    is_json = ctype.split(b";", 1)[0].strip() == b"application/grip-instruct"
    if not is_json and (hold_value == b"stream" or (hold_value is None and has_next)):
        # parsed once per distinct instruct (edge.instructcache), shared by held sessions
        hold = cache.instruct(resp.status, resp.reason, raw, b"", **kw)
        if hold.mode == "stream" or (hold.mode is None and hold.next_link):
            if resp.complete:  # the whole body is in: it goes out with the head, in one send
                body = await resp.read_body(1 << 62)
                return cache.instruct(
                    resp.status, resp.reason, raw, b"", stream_body=body, **kw
                ), None
            # relayed as it arrives (no size limit)
            return hold, _proxy_filtered(hold, resp.body_chunks())
    body = await resp.read_body(MAX_ACCEPT_BODY)
    return cache.instruct(resp.status, resp.reason, raw, body, **kw), None


class _ProxyFiltered:
    """A stream body relayed as it arrives, through the hold's proxy-content filters
    (``build-id``: ``edge.grip.filters.IdRenderer``); a filter error ends the response."""

    __slots__ = ("_pieces", "_renderer", "_hold", "_done")

    def __init__(self, hold: Hold, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces
        self._hold = hold
        self._renderer: filters.IdRenderer | None = None
        self._done = False

    def __aiter__(self) -> _ProxyFiltered:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._renderer is None:
                self._renderer = filters.proxy_renderer(
                    (c.filters for c in self._hold.channels), self._hold.meta
                )
            try:
                piece = await self._pieces.__anext__()
            except StopAsyncIteration:
                self._done = True
                return self._renderer.finalize() if self._renderer is not None else b""
            return self._renderer.update(piece) if self._renderer is not None else piece
        except filters.FilterError as exc:
            self._done = True
            raise InstructError(f"filter error: {exc}") from None


def _proxy_filtered(hold: Hold, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if hold.mode == "response" or not filters.proxy_filters(c.filters for c in hold.channels):
        return pieces
    return _ProxyFiltered(hold, pieces)


async def handle_grip(conn: Connection, req: Request, route: Route, resp: OriginResponse) -> bool:
    """Answer a client request whose origin response is a GRIP instruct; True if the
    connection may serve another request.  Closes ``resp`` (and any retried responses)."""
    app = conn.app
    if len(req.body) > MAX_ACCEPT_REQUEST_BODY:
        await resp.aclose()
        await conn.send_all(
            responses.error(400, "Request too large to accept GRIP instruct.", keep_alive=False)
        )
        return False
    resolve = True
    attempts = 0
    while True:
        try:
            try:
                hold, body_iter = await _parse(resp, route, app.instruct_cache)
                if hold.mode == "response":
                    return await hold_response(
                        conn, req, route, hold, resolve, attempts < MAX_ATTEMPTS
                    )
                if hold.mode == "stream" or hold.next_link:
                    if body_iter is None:
                        resp.forget()  # a held stream keeps none of the origin's response
                    return await hold_stream(conn, req, route, hold, body_iter)
                if hold.body_error is not None:
                    raise InstructError(hold.body_error)
                await conn.send_all(responses.timeout(hold, keep_alive=req.keep_alive))
                return req.keep_alive
            finally:
                await resp.aclose()
        except _Retry as retry:
            attempts += 1
            resolve = retry.resolve
            log.debug("retrying origin request path=%s attempt=%d", req.url, attempts)
            try:
                resp = await open_origin(
                    app.origin_client,
                    route,
                    req.method,
                    _client_path(req)[1].encode("latin-1"),
                    req.headers,
                    bytes(req.body),
                    sig=app.sign(route),
                    timeout_s=app.cfg.origin_timeout_s,
                    extra=retry.extra,
                )
            except OriginError as exc:
                return await conn.proxy_error(req, route, exc)
            if route.no_grip or not is_grip_response(resp.headers):
                try:
                    return await conn.passthrough(req, resp)
                finally:
                    await resp.aclose()
            continue
        except (OriginError, InstructError) as exc:
            return await conn.proxy_error(req, route, exc)


def _post_gone(app: ConnectionServices, route: Route, req: Request, link: str) -> None:
    async def post() -> None:
        host, path = _client_path(req)
        try:
            p, rewrite, targets = resolve_link(link, host, path, route)
            r = await open_origin(
                app.origin_client,
                route,
                b"POST",
                p,
                [(b"Host", host.encode("latin-1"))],
                b"",
                sig=app.sign(route),
                timeout_s=app.cfg.origin_timeout_s,
                rewrite=rewrite,
                targets=targets or None,
            )
            await r.aclose()
        except RemoteProtocolError as exc:
            log.info("gone link failed link=%s: %s", link, exc.reason)

    app.nursery.start_soon(post)


async def hold_response(
    conn: Connection, req: Request, route: Route, hold: Hold, resolve: bool, may_retry: bool
) -> bool:
    app = conn.app
    now = trio.current_time()
    session = ResponseSession(hold, req.keep_alive, now + hold.timeout_s)
    session.debug = route.debug
    channels = [c.name for c in hold.channels]
    app.add_session(session, channels)
    prev = [c for c in hold.channels if c.prev_id is not None] if resolve else []
    for c in prev:
        app.begin_resume(session, c.name)
    app.schedule_timeout(session)
    app.holds.add(session)
    answered_by_history = bool(prev)
    gone = False
    try:
        for c in prev:
            ok = await app.resume(session, c.name, _prev_id(c), flush_on_fail=False)
            if not ok:
                answered_by_history = False
                if may_retry:
                    raise _Retry(
                        grip_last(
                            [c.name for c in prev], route.prefix, {c.name: c.prev_id for c in prev}
                        ),
                        resolve=False,
                    )
        await app.wait_positioned(channels)
        deadline = None
        if may_retry and app.cfg.update_on_first_subscription and not answered_by_history:
            deadline = app.holds.first_sub_deadline(channels, trio.current_time())
        if session.result is None and not session.retry:
            with trio.CancelScope() as scope:
                session.scope = scope
                if deadline is not None:
                    scope.deadline = deadline
                if session.result is not None or session.retry:
                    scope.cancel()
                await conn.watch_client()
                gone = True
                return False  # the client went away
            if session.result is None and may_retry and (session.retry or deadline is not None):
                raise _Retry(
                    grip_last(
                        [c.name for c in hold.channels if c.prev_id],
                        route.prefix,
                        {c.name: c.prev_id for c in hold.channels},
                    ),
                    resolve=False,
                )
    finally:
        session.end()
        app.holds.discard(session)
        app.remove_session(session)
        for c in prev:
            app.resumer.abort(session, c.name)
        if gone and hold.gone_link:
            _post_gone(app, route, req, hold.gone_link)
    if session.result is None:  # a retry that may not happen (too many attempts)
        session.result = responses.timeout(hold, keep_alive=req.keep_alive)
    await conn.send_all(session.result)
    return req.keep_alive


class _Stream:
    """One client's stream across next links (the connection task's state)."""

    def __init__(self, conn: Connection, req: Request, route: Route, hold: Hold) -> None:
        self.conn = conn
        self.app = conn.app
        self.req = req
        self.route = route
        self.hold = hold  # the current instruct
        self.session = StreamSession(conn.sock, hold, req.http11, trio.current_time())
        self.session.debug = route.debug
        self.registered = False
        self.frame = http_chunk if self.session.chunked else bytes
        self.host, self.path = _client_path(req)
        self.gone_link = hold.gone_link  # only the initial instruct's
        self.head_sent = False

    def cursors(self) -> dict[str, str]:
        out = {c.name: c.prev_id for c in self.hold.channels if c.prev_id is not None}
        out.update(self.session.last_cursor)
        return out

    async def own_socket(self) -> None:
        """Take the socket for direct writes (deliveries buffer meanwhile)."""
        s = self.session
        while s.writing and not s.done:
            await trio.sleep(0.01)  # a writer task is draining a backlog
        s.writing = True

    async def release_socket(self) -> None:
        s = self.session
        while s.buf and not s.dead:
            data = bytes(s.buf)
            s.buf.clear()
            await self.conn.send_all(data)
        s.writing = False
        if s.closing and not s.dead:
            s.finish()

    async def send_body(self, body: bytes, body_iter: AsyncIterator[bytes] | None) -> None:
        if body:
            await self.conn.send_all(self.frame(body))
        if body_iter is not None:
            async for piece in body_iter:
                if piece:
                    await self.conn.send_all(self.frame(piece))

    def register(self, hold: Hold) -> list[Channel]:
        """Put the session on the hub for ``hold``'s channels; gates prev-id channels."""
        app, s = self.app, self.session
        s.hold = hold
        s.filters = {c.name: c.filters for c in hold.channels if c.filters}
        s.meta = hold.meta
        s.channel_names = frozenset(c.name for c in hold.channels)
        app.add_session(s, [c.name for c in hold.channels])
        prev = [c for c in hold.channels if c.prev_id is not None]
        for c in prev:
            app.begin_resume(s, c.name)
        self.registered = True
        app.holds.add(s)
        return prev

    async def probe(self, prev: list[Channel]) -> tuple[list[Resume], list[Channel]]:
        """Ask history about each prev-id channel, delivering nothing yet (the response head
        may not be out): ``(resumes to finish, the channels history could not answer)``."""
        resumes = [self.app.resumer.open(self.session, c.name, _prev_id(c)) for c in prev]
        failed = [c for c, r in zip(prev, resumes) if not await r.probe()]
        return resumes, failed

    async def catch_up(self, resumes: list[Resume]) -> None:
        """Replay (paced by the socket: call once the head is out and the socket released)
        and hand over to live delivery; failed resumes just release their held messages."""
        for r in resumes:
            await r.finish()

    async def resolve(self, prev: list[Channel]) -> list[Channel]:
        """Resume prev-id channels from history; the channels history could not answer."""
        resumes, failed = await self.probe(prev)
        await self.catch_up(resumes)
        return failed

    async def fetch_next(self, link: str) -> OriginResponse | None:
        """GET a next link (retried on errors); the response, or None to end the stream."""
        app, route = self.app, self.route
        extra = grip_last(
            self.session.channel_names if self.registered else [c.name for c in self.hold.channels],
            route.prefix,
            self.cursors(),
        )
        path, rewrite, targets = resolve_link(link, self.host, self.path, route)
        for attempt in range(NEXT_LINK_TRIES):
            try:
                resp = await open_origin(
                    app.origin_client,
                    route,
                    b"GET",
                    path,
                    [(b"Host", self.host.encode("latin-1"))],
                    b"",
                    sig=app.sign(route),
                    timeout_s=app.cfg.origin_timeout_s,
                    extra=extra,
                    rewrite=rewrite,
                    targets=targets or None,
                )
            except OriginError as exc:
                log.info("next link failed link=%s try=%d: %s", link, attempt + 1, exc.reason)
            else:
                if 200 <= resp.status < 300:
                    return resp
                log.info(
                    "next link failed link=%s try=%d: status %d", link, attempt + 1, resp.status
                )
                await resp.aclose()
            if attempt + 1 < NEXT_LINK_TRIES:
                await trio.sleep(2**attempt + random.random())
        return None

    async def follow(self, link: str) -> bool:
        """Fetch ``link`` and append its body; False when the stream must end."""
        resp = await self.fetch_next(link)
        if resp is None:
            raise OriginError(f"next link {link} failed")
        try:
            await self.own_socket()
            try:
                if not is_grip_response(resp.headers):
                    async for piece in resp.body_chunks():
                        if piece:
                            await self.conn.send_all(self.frame(piece))
                    self.hold = Hold(mode=None)
                    return True
                hold, body_iter = await _parse(resp, self.route, self.app.instruct_cache)
                if hold.mode == "response":
                    raise InstructError("Next link returned non-stream hold.")
                if hold.body_error is not None:
                    raise InstructError(hold.body_error)
                await self.send_body(hold.body, body_iter)
            finally:
                await self.release_socket()
        finally:
            await resp.aclose()
        if hold.mode == "stream" and self.registered:
            names = frozenset(c.name for c in hold.channels)
            if names != self.session.channel_names:
                self.app.remove_session(self.session)
                self.register(hold)
            else:
                self.session.hold = hold
        self.hold = hold
        return True


async def hold_stream(
    conn: Connection, req: Request, route: Route, hold: Hold, body_iter: AsyncIterator[bytes] | None
) -> bool:
    app = conn.app
    st = _Stream(conn, req, route, hold)
    s = st.session
    gone = False
    try:
        failed: list[Channel] = []
        resumes: list[Resume] = []
        if hold.mode == "stream":
            prev = st.register(hold)
            # history first answers whether it can (before the head: Pushpin's 502 below);
            # the replay itself goes out after the head, paced by the client's socket
            resumes, failed = await st.probe(prev)
            if failed and not hold.next_link:
                raise InstructError(
                    f"channel '{failed[0].name}' specifies prev-id, but no next link found"
                )
            await app.wait_positioned([c.name for c in hold.channels])
        head = app.instruct_cache.stream_head(hold, chunked=s.chunked)
        if hold.body and body_iter is None:  # head and initial body in one send
            head, hold_body = head + st.frame(hold.body), b""
        else:
            hold_body = hold.body
        if hold.body_error is not None:
            # build-id failed on the initial body: the head, then the end (Pushpin's doError)
            log.info("stream ended route_line=%d path=%s: %s", route.line, st.path, hold.body_error)
            if s.chunked:
                if route.debug:
                    head += http_chunk(f"\n\n{hold.body_error}\n".encode())
                head += b"0\r\n\r\n"
            await conn.send_all(head)
            return req.keep_alive and s.chunked
        await conn.send_all(head)
        st.head_sent = True
        # a held stream never re-sends the client's request (next links send only Grip-Last,
        # the signature and Host): do not keep its headers and body for the connection's life
        req.headers, req.body = [], bytearray()
        try:
            await st.send_body(hold_body, body_iter)
        except OriginError as exc:
            log.warning("stream hold initial body cut: %s", exc.reason)
            return False
        await st.release_socket()
        if hold.mode == "stream":
            app.schedule_keepalive(s)
            await st.catch_up(resumes)
        want_next = bool(failed)
        first_sub = None
        if hold.mode == "stream" and hold.next_link and app.cfg.update_on_first_subscription:
            first_sub = app.holds.first_sub_deadline(s.channel_names, trio.current_time())
        chain = 0
        while True:
            cur = st.hold
            if cur.mode != "stream":
                if not cur.next_link:
                    break  # the chain ended without a hold: end the response
                want_next = True
            if want_next or s.hinted:
                want_next = s.hinted = False
                link = st.hold.next_link
                if not link:
                    # a stream hold without a next link: a hint (one that came while the
                    # last link was fetched, or a first-subscription fetch) is a no-op
                    # (reference 2.6); urljoin would make the client's own URL of no link
                    continue
                chain += 1
                if chain > NEXT_LINK_MAX_CHAIN:
                    raise OriginError("too many next links")
                await st.follow(link)
                if s.done:
                    break
                if st.hold.mode == "stream" and not st.registered:
                    prev = st.register(st.hold)
                    failed = await st.resolve(prev)  # history first, then the next link
                    want_next = bool(failed) and bool(st.hold.next_link)
                    app.schedule_keepalive(s)
                continue
            # held: wait for the client, a close, a hint, or the next link's idle window
            window = st.hold.next_link_timeout_s if st.hold.next_link else None
            seen = dict(s.last_cursor)
            if not window and first_sub is None:
                # no deadline: wait without a cancel scope; finish()/kill() wake the wait
                # through the socket (edge.readtimer.Waker), a shutdown's close as before
                waker = s.scope = readtimer.Waker(conn.sock)
                if not (s.done or s.hinted):
                    try:
                        await conn.watch_client(waker)
                    except trio.ClosedResourceError:
                        if not waker.fired:
                            raise
                    if not waker.fired:
                        gone = True
                        return False  # the client went away
                s.scope = None
                if s.done:
                    break
                continue
            with trio.CancelScope() as scope:
                s.scope = scope
                if window:
                    scope.deadline = trio.current_time() + window
                if first_sub is not None:
                    scope.deadline = min(scope.deadline, first_sub)
                if s.done or s.hinted:
                    scope.cancel()
                await conn.watch_client()
                gone = True
                return False  # the client went away
            s.scope = None
            if s.done:
                break
            if first_sub is not None and trio.current_time() >= first_sub:
                first_sub = None
                want_next = True
            elif window and not s.hinted:
                idle = [
                    c
                    for c in s.channel_names
                    if s.last_cursor.get(c) == seen.get(c) or c not in s.last_cursor
                ]
                want_next = bool(idle)
        if s.dead:
            log.debug("stream dropped conn=%s: %s", s.id, s.reason)
            return False
        if s.state is OPEN and s.chunked:  # not ended by a published close
            await st.own_socket()
            await conn.send_all(b"0\r\n\r\n")
            s.writing = False
        return req.keep_alive and s.chunked and not conn.queue_blocked()
    except (OriginError, InstructError) as exc:
        if not st.head_sent:
            raise  # answered 502 by handle_grip
        log.warning("stream ended route_line=%d path=%s: %s", route.line, st.path, exc.reason)
        if route.debug and s.chunked and not s.dead:
            with trio.move_on_after(5):
                await st.own_socket()
                await conn.send_all(http_chunk(f"\n\n{exc.reason}\n".encode()) + b"0\r\n\r\n")
        return False
    finally:
        s.end()
        app.holds.discard(s)
        if st.registered:
            app.remove_session(s)
        for c in st.hold.channels:
            app.resumer.abort(s, c.name)
        if gone and st.gone_link:
            _post_gone(app, route, req, st.gone_link)
