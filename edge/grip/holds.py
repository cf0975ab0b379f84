"""GRIP holds over HTTP: what a client connection does once the origin answered with GRIP.

Theory of operation
-------------------
``handle_grip(conn, req, route, resp)`` (called by ``httpserver.Connection``) parses the
instruct (``edge.grip.instruct``) and runs one of three flows; each may re-request the origin, so the
whole thing is a loop over *attempts* (at most ``MAX_ATTEMPTS`` retries per client request):

* **answer now** (no hold, no next link): the instruct's response, ``Grip-Status`` applied.
* **response hold** (long-poll): a ``ResponseSession`` on the hub.  Channels with ``prev-id``
  are first resolved against broker history (``edge.sync.resume``): the first retained message
  after the prev-id answers the poll.  A prev-id the channel's history does not hold while it
  holds others (a conflict) retries the request against the origin at once with
  ``Grip-Last: <channel>; last-id=<prev-id>`` (Pushpin; the retried answer is held as is).
  Otherwise the poll is held with Pushpin's prev-id check (``edge.grip.nextlink_track``): an
  item whose ``prev-id`` is not the poll's is a gap, and the request is retried with
  ``Grip-Last``.  It is also retried on a published ``hint`` (at once), on ``recover``, and
  about 1 s after a channel's first subscription on this edge when
  ``update_on_first_subscription`` is on (skipped when history held every prev-id).
* **stream** (``Grip-Hold: stream``, or a ``Grip-Link rel=next`` without hold: Pushpin's
  "streaming historical data"): the head and body go out at once, chunked.  Next links are
  fetched (GET, only ``Grip-Last`` + ``Grip-Sig``/``Grip-Feature``, never the client's headers)
  and their bodies appended; a next response may carry another link (a chain), turn the
  response into a stream hold, or end it.  A held stream fetches its next link on a ``hint``
  (at once), and through the update limiter on a prev-id gap, on ``recover``, after
  ``timeout`` seconds unless every channel got a message in that window (idle recovery), when
  a prev-id conflicts with history, and ~1 s after a first subscription.  Between asking and
  the answer, what is published to it is held and filtered by the answer's prev-ids
  (``edge.grip.nextlink_track``).  A prev-id that history does not hold and no next link:
  Pushpin's error (the initial response goes out, then the stream ends).

Updates at low priority go through the edge's ``UpdateLimiter`` (``edge.grip.nextlink``: 10
actions a second, at most 100 sessions each), and identical next-link fetches in flight share
one origin request (``edge.grip.nextlink_fetch``), as Pushpin's update manager and auto-share.

Next links stay on the route's origin (relative links, the request's host, a route target);
another host only with ``next_link_other_hosts`` (``edge.grip.nextlink.resolve_link``).

``Grip-Link rel=gone``: when the client disconnects before the hold ended, the edge POSTs an
empty body to it (best effort, not retried), as Pushpin 1.41 does.

``HoldRegistry`` is the edge-wide registry these flows use for ``recover``, the update limiter
and the first-subscription times of channels.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import trio

from _speedups import http_chunk
from broker.errors import GripcastError, InstructError, RemoteProtocolError
from edge import opener, readtimer
from edge.grip import filters
from edge.grip.aco import finish_held, with_cors
from edge.grip.cache import InstructCache
from edge.grip.instruct import Hold, grip_facts, is_grip_response
from edge.grip.nextlink import (
    UPDATES_PER_S,
    LinkRefused,
    LinkTarget,
    UpdateLimiter,
    resolve_link,
    share_key,
)
from edge.grip.nextlink_fetch import Fetched, SharedFetches
from edge.grip.nextlink_track import PrevIds
from edge.grip.session import ResponseSession, StreamSession, _subscription
from edge.http1 import responses
from edge.origin.client import OriginError, open_origin
from edge.sessionstate import OPEN

if TYPE_CHECKING:
    from broker.wire import Envelope
    from edge.grip.cache import InstructOptions
    from edge.grip.instruct import Channel
    from edge.http1.connection import Connection, Request
    from edge.jsonp import JsonpRequest
    from edge.origin.client import OriginResponse
    from edge.routes import Route
    from edge.services import ConnectionServices
    from edge.sync.resume import Resume

__all__ = [
    "HoldRegistry",
    "LinkRefused",
    "LinkTarget",
    "grip_last",
    "handle_grip",
    "resolve_link",
]

log = logging.getLogger(__name__)

MAX_ACCEPT_BODY = 100_000  # Pushpin's MAX_ACCEPT_RESPONSE_BODY
MAX_ACCEPT_REQUEST_BODY = 100_000  # Pushpin's MAX_ACCEPT_REQUEST_BODY
MAX_ATTEMPTS = 8  # origin requests per client request (retries, hints)
FIRST_SUB_DELAY_S = 1.0  # Pushpin's SUBSCRIBED_DELAY
NEXT_LINK_TRIES = 5
NEXT_LINK_MAX_CHAIN = 1000
# the broker's own cursor form, "<epoch>:<seq>" (epoch: 16 hex digits): no publisher id
_CURSOR = re.compile(r"[0-9a-f]{16}:[0-9]+\Z")


# -- sans-IO helpers -------------------------------------------------------------------------


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


def is_cursor(prev_id: str | None) -> bool:
    """Whether ``prev_id`` is the broker's ``<epoch>:<seq>`` cursor (not a publisher id)."""
    return prev_id is not None and _CURSOR.match(prev_id) is not None


def _prev_id(c: Channel) -> str:
    """The prev-id of one of a hold's prev-id channels (those are picked by ``prev_id is not
    None``)."""
    assert c.prev_id is not None
    return c.prev_id


def _until_hint(envs: list[Envelope]) -> list[Envelope]:
    """Held items up to the first ``hint`` (Pushpin clears its queue on a hint: "any items
    will be redundant", the next link's answer brings them)."""
    for i, env in enumerate(envs):
        fmt = env.formats.get("http-stream")
        if fmt is not None and fmt.get("action") == "hint":
            return envs[: i + 1]
    return envs


def _checked_ids(hold: Hold) -> dict[str, str | None]:
    """The prev-ids an instruct gives, for Pushpin's check (a broker cursor is not checked)."""
    return {c.name: (None if is_cursor(c.prev_id) else c.prev_id) for c in hold.channels}


def _tracking(prev: list[Channel], resumes: list[Resume]) -> PrevIds | None:
    """The prev-id check of a hold after history was asked: a channel whose prev-id history
    held is checked leniently, one it did not hold strictly, a broker cursor not at all."""
    ids: dict[str, str | None] = {}
    strict = []
    for c, r in zip(prev, resumes):
        if is_cursor(c.prev_id):
            continue
        ids[c.name] = c.prev_id
        if not r.found:
            strict.append(c.name)
    return PrevIds(ids, strict) if ids else None


class HoldRegistry:
    """Held HTTP sessions, the update limiter and its task, the shared next-link fetches, and
    when each channel was first subscribed on this edge.

    A session is added once its hold registers and discarded in the ``finally`` of the flow
    that serves it (``hold_response``, ``hold_stream``; a parked stream stays until it ends):
    a plain set, not a ``WeakSet`` (whose Python-level add and discard, and a weak reference
    with a callback, cost ~1 us a held connection)."""

    def __init__(self, updates_per_s: float = UPDATES_PER_S) -> None:
        self._sessions: set[ResponseSession | StreamSession] = set()
        self._first: dict[str, float] = {}
        self.limiter: UpdateLimiter[ResponseSession | StreamSession] = UpdateLimiter(updates_per_s)
        self.fetches = SharedFetches()
        self._wake: trio.Event | None = None

    def add(self, session: ResponseSession | StreamSession) -> None:
        self._sessions.add(session)

    def discard(self, session: ResponseSession | StreamSession) -> None:
        self._sessions.discard(session)
        self.limiter.discard(session)

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

    # -- updates (edge.grip.nextlink) ------------------------------------------------------------

    def request_update(self, session: ResponseSession | StreamSession, now: float) -> bool:
        """A low-priority update: queued in the limiter (a stream holds what is published to
        it from now on); False when the session cannot update (a stream without next link)."""
        key = session.update_key
        if key is None or session.state is not OPEN:
            return False
        if isinstance(session, StreamSession):
            if session.track is None:
                session.track = PrevIds({})
            session.track.begin_update()
        self.limiter.add(key, session, now)
        if self._wake is not None:
            self._wake.set()
        return True

    def cancel_update(self, session: ResponseSession | StreamSession) -> None:
        """The session updates now (high priority) or ended: no turn needed any more."""
        self.limiter.discard(session)

    def recover(self, now: float) -> int:
        """Pushpin's ``recover``: every held session updates, at low priority."""
        return sum(1 for s in list(self._sessions) if self.request_update(s, now))

    async def serve_updates(self) -> None:
        """Release the limiter's actions as they fall due (one task per edge)."""
        limiter = self.limiter
        while True:
            due = limiter.next_due()
            if due is None:
                self._wake = trio.Event()
                await self._wake.wait()
                self._wake = None
                continue
            await trio.sleep_until(due)
            for s in limiter.pop_due(trio.current_time()):
                s.hint()

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


def _streamish(raw: list[tuple[bytes, bytes]]) -> bool:
    """Whether a response's instruct may be a stream (its body relayed as it arrives):
    ``edge.grip.instruct.grip_facts``' third answer."""
    return grip_facts(raw)[2]


def _parse_complete(resp: OriginResponse, route: Route, cache: InstructCache) -> Hold | None:
    """``_parse`` of a complete stream-hold response (the common case: the origin's whole
    answer came with its head), without awaiting anything; None: not that case."""
    raw = resp.headers
    streamish = resp.streamish
    if not (_streamish(raw) if streamish is None else streamish):
        return None
    hold = cache.instruct(
        resp.status,
        resp.reason,
        raw,
        b"",
        prefix=route.prefix,
        extra_channels=tuple(resp.target.subs),
        stream_body=resp.buffered_body(),
    )
    if hold.mode == "stream" or (hold.mode is None and hold.next_link):
        return hold
    return None  # (never reached: a streamish response parses as a stream or a next link)


async def _parse(
    resp: OriginResponse, route: Route, cache: InstructCache
) -> tuple[Hold, AsyncIterator[bytes] | None]:
    raw = resp.headers
    kw: InstructOptions = {"prefix": route.prefix, "extra_channels": tuple(resp.target.subs)}
    if _streamish(raw):
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


async def _parse_fetched(
    f: Fetched, route: Route, cache: InstructCache
) -> tuple[Hold, AsyncIterator[bytes] | None]:
    """``_parse`` of a next link's answer (``edge.grip.nextlink_fetch``)."""
    raw = f.headers
    kw: InstructOptions = {"prefix": route.prefix, "extra_channels": f.subs}
    if _streamish(raw):
        hold = cache.instruct(f.status, f.reason, raw, b"", **kw)
        if hold.mode == "stream" or (hold.mode is None and hold.next_link):
            if f.rest is None:
                return cache.instruct(f.status, f.reason, raw, b"", stream_body=f.body, **kw), None
            return hold, _proxy_filtered(hold, f.chunks())
    parts, size = [], 0
    async for piece in f.chunks():
        size += len(piece)
        if size > MAX_ACCEPT_BODY:
            raise OriginError("GRIP instruct response too large from a next link")
        parts.append(piece)
    return cache.instruct(f.status, f.reason, raw, b"".join(parts), **kw), None


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


async def handle_grip(
    conn: Connection,
    req: Request,
    route: Route,
    resp: OriginResponse,
    *,
    aco: bool = False,
    jsonp: JsonpRequest | None = None,
) -> bool:
    """Answer a client request whose origin response is a GRIP instruct; True if the
    connection may serve another request.  Closes ``resp`` (and any retried responses).
    ``aco``: the route's auto cross-origin, with ``jsonp`` when the request was JSON-P
    (``edge.grip.aco``: CORS on heads, JSON-P or CORS on a response hold's answer)."""
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
                quick = _parse_complete(resp, route, app.instruct_cache) if resp.complete else None
                if quick is not None:
                    hold, body_iter = quick, None
                else:
                    hold, body_iter = await _parse(resp, route, app.instruct_cache)
                if hold.mode == "response":
                    finish = _AcoFinish(req.headers, jsonp) if aco else None
                    return await hold_response(
                        conn, req, route, hold, resolve, attempts < MAX_ATTEMPTS, finish
                    )
                if aco:  # heads (stream, answer now) get CORS, never JSON-P
                    hold = replace(hold, headers=with_cors(hold.headers, req.headers))
                if hold.mode == "stream" or hold.next_link:
                    if body_iter is None:
                        resp.forget()  # a held stream keeps none of the origin's response
                        # run by ``Connection.serve`` itself (``run_held_stream``), once this
                        # and its callers' frames are gone: a held connection keeps ~1.2 KB
                        # of coroutine frames less
                        conn.held = HeldStream(req, route, hold)
                        return req.keep_alive
                    done = await hold_stream(conn, req, route, hold, body_iter)
                    assert done is not None  # (parks only when run by Connection.serve)
                    return done
                if hold.body_error is not None:
                    raise InstructError(hold.body_error)
                await conn.send_all(responses.timeout(hold, keep_alive=req.keep_alive))
                return req.keep_alive
            finally:
                if not resp.close_now():
                    await resp.aclose()
        except _Retry as retry:
            attempts += 1
            resolve = retry.resolve
            log.debug("retrying origin request path=%s attempt=%d", req.url, attempts)
            if jsonp is not None:  # the request JSON-P stood for (Pushpin retries that one)
                method, target, headers, body = (
                    jsonp.method,
                    jsonp.target,
                    jsonp.headers,
                    jsonp.body,
                )
            else:
                method, headers, body = req.method, req.headers, bytes(req.body)
                target = _client_path(req)[1].encode("latin-1")
            try:
                resp = await open_origin(
                    app.origin_client,
                    route,
                    method,
                    target,
                    headers,
                    body,
                    sig=app.sign(route),
                    timeout_s=app.cfg.origin_timeout_s,
                    extra=retry.extra,
                )
            except OriginError as exc:
                return await conn.proxy_error(req, route, exc)
            if route.no_grip or not is_grip_response(resp.headers):
                try:
                    if jsonp is not None:
                        return await conn.passthrough_jsonp(req, resp, jsonp)
                    return await conn.passthrough(req, resp, req.headers if aco else None)
                finally:
                    await resp.aclose()
            continue
        except (OriginError, InstructError, LinkRefused) as exc:
            return await conn.proxy_error(req, route, exc)


def _post_gone(app: ConnectionServices, route: Route, req: Request, link: str) -> None:
    async def post() -> None:
        host, path = _client_path(req)
        try:
            where = resolve_link(link, host, path, route, other_hosts=app.cfg.next_link_other_hosts)
            r = await open_origin(
                app.origin_client,
                route,
                b"POST",
                where.path,
                [(b"Host", host.encode("latin-1"))],
                b"",
                sig=app.sign(route),
                timeout_s=app.cfg.origin_timeout_s,
                rewrite=where.rewrite,
                targets=where.targets or None,
            )
            await r.aclose()
        except RemoteProtocolError as exc:
            log.info("gone link failed link=%s: %s", link, exc.reason)

    app.nursery.start_soon(post)


class _AcoFinish:
    """A response hold's answer on an ``aco`` route (``edge.grip.aco.finish_held``)."""

    __slots__ = ("request", "jsonp")

    def __init__(self, request: list[tuple[bytes, bytes]], jsonp: JsonpRequest | None) -> None:
        self.request, self.jsonp = request, jsonp

    def __call__(self, data: bytes) -> bytes:
        return finish_held(data, self.request, self.jsonp)


async def hold_response(
    conn: Connection,
    req: Request,
    route: Route,
    hold: Hold,
    resolve: bool,
    may_retry: bool,
    finish: _AcoFinish | None = None,
) -> bool:
    app = conn.app
    now = trio.current_time()
    session = ResponseSession(hold, req.keep_alive, now + hold.timeout_s)
    session.debug = route.debug
    channels = [c.name for c in hold.channels]
    app.add_session(session, channels)
    prev = [c for c in hold.channels if c.prev_id is not None]
    resumes = [app.resumer.open(session, c.name, _prev_id(c)) for c in prev] if resolve else []
    if not resolve:  # a retried answer: Pushpin's check from the origin's prev-ids, strictly
        ids = {k: v for k, v in _checked_ids(hold).items() if v is not None}
        session.track = PrevIds(ids, ids, queue=False) if ids else None
    app.schedule_timeout(session)
    app.holds.add(session)
    held_all = bool(resumes)  # history held every prev-id: nothing can have been missed
    gone = False
    try:
        for r in resumes:
            await r.probe()
        conflict = [c for c, r in zip(prev, resumes) if not r.ok]
        if conflict and may_retry:
            # the channel's history holds other ids, not this one: ask the origin at once
            raise _Retry(
                grip_last([c.name for c in prev], route.prefix, {c.name: c.prev_id for c in prev}),
                resolve=False,
            )
        if resumes:
            held_all = all(
                r.found or (r.ok and is_cursor(c.prev_id)) for c, r in zip(prev, resumes)
            )
            track = _tracking(prev, resumes)
            if track is not None:
                track.queue = False  # a long-poll takes one answer: no queue
            session.track = track
            for r in resumes:
                await r.finish()
        await app.wait_positioned(channels)
        deadline = None
        if may_retry and app.cfg.update_on_first_subscription and not held_all:
            deadline = app.holds.first_sub_deadline(channels, trio.current_time())
        while session.result is None and not session.retry:
            track = session.track
            with trio.CancelScope() as scope:
                session.scope = scope
                if deadline is not None:
                    scope.deadline = deadline
                if session.result is not None or session.retry or (track and track.gap):
                    scope.cancel()
                await conn.watch_client()
                gone = True
                return False  # the client went away
            session.scope = None
            low = False
            if deadline is not None and trio.current_time() >= deadline:
                deadline, low = None, True  # first subscription: Pushpin's low-priority update
            if track is not None and track.gap:
                track.gap, low = False, True  # a prev-id gap
            if low and may_retry and session.result is None:
                app.holds.request_update(session, trio.current_time())
        if session.result is None and may_retry and session.retry:
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
    await conn.send_all(session.result if finish is None else finish(session.result))
    return req.keep_alive


class _Stream:
    """One client's stream across next links (the connection task's state)."""

    __slots__ = (
        "conn",
        "app",
        "req",
        "route",
        "hold",
        "session",
        "registered",
        "frame",
        "_where",
        "_current",
        "gone_link",
        "head_sent",
    )

    def __init__(self, conn: Connection, req: Request, route: Route, hold: Hold) -> None:
        self.conn = conn
        self.app = conn.app
        self.req = req
        self.route = route
        self.hold = hold  # the current instruct
        self.session = StreamSession(conn.sock, hold, req.http11, trio.current_time(), conn.crypt)
        self.session.debug = route.debug
        self.registered = False
        self.frame = http_chunk if self.session.chunked else bytes
        # the client's host and path (read now: the request's headers are dropped once the
        # head is sent); the URI links resolve on is made when first needed
        self._where: tuple[str, str] = _client_path(req)
        self._current: str | None = None
        self.gone_link = hold.gone_link  # only the initial instruct's
        self.head_sent = False
        if hold.next_link:  # (else the session's update_key stays None: set_link's answer)
            self.set_link(hold)

    @property
    def host(self) -> str:
        return self._where[0]

    @property
    def path(self) -> str:
        return self._where[1]

    @property
    def current(self) -> str:
        if self._current is None:
            self._current = f"http://{self.host or 'localhost'}{self.path}"
        return self._current

    @current.setter
    def current(self, value: str) -> None:
        self._current = value

    def set_link(self, hold: Hold) -> None:
        """The update limiter's key: the next link as a URL (None: no next link)."""
        link = hold.next_link
        self.session.update_key = urljoin(self.current, link) if link else None

    async def own_socket(self) -> None:
        """Take the socket for direct writes (deliveries buffer meanwhile)."""
        s = self.session
        while s.writing and not s.done:
            await trio.sleep(0.01)  # a writer task is draining a backlog
        s.writing = True

    def release_socket_now(self) -> bool:
        """``release_socket`` when nothing was buffered meanwhile (no await); False: call
        ``release_socket``."""
        s = self.session
        if s.buf and not s.dead:
            return False
        s.writing = False
        if s.closing and not s.dead:
            s.finish()
        return True

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
        if s.hold is not hold:  # (a new session was made with this hold: already done)
            s.hold = hold
            _subscription(s, hold)
        app.add_session(s, [c.name for c in hold.channels])
        prev = [c for c in hold.channels if c.prev_id is not None] or _NO_CHANNELS
        for c in prev:
            app.begin_resume(s, c.name)
        self.registered = True
        app.holds.add(s)
        return prev

    async def probe(self, prev: list[Channel]) -> list[Resume]:
        """Ask history about each prev-id channel, delivering nothing yet (the response head
        may not be out)."""
        resumes = [self.app.resumer.open(self.session, c.name, _prev_id(c)) for c in prev]
        for r in resumes:
            await r.probe()
        return resumes

    def start_tracking(self, hold: Hold, prev: list[Channel], resumes: list[Resume]) -> bool:
        """Pushpin's prev-id check for a stream that has a next link (before any delivery on
        those channels); True when a prev-id conflicts with history (update, low priority)."""
        if hold.next_link:
            self.session.track = _tracking(prev, resumes)
        return any(not r.ok for r in resumes)

    async def catch_up(self, resumes: list[Resume]) -> None:
        """Replay (paced by the socket: call once the head is out and the socket released)
        and hand over to live delivery; failed resumes just release their held messages."""
        for r in resumes:
            await r.finish()

    async def fetch_next(self, link: str) -> Fetched:
        """GET a next link (shared with identical fetches, retried on errors)."""
        app, route, s = self.app, self.route, self.session
        track = s.track
        extra = grip_last(
            s.channel_names if self.registered else (),
            route.prefix,
            track.grip_last() if track is not None else {},
        )
        where = resolve_link(
            link, self.host, self.path, route, other_hosts=app.cfg.next_link_other_hosts
        )
        host = where.targets[0].host_header if where.external else self.host
        fetches = app.holds.fetches

        async def open_() -> OriginResponse:
            return await open_origin(
                app.origin_client,
                route,
                b"GET",
                where.path,
                [(b"Host", (host or "").encode("latin-1"))],
                b"",
                sig=app.sign(route),
                timeout_s=app.cfg.origin_timeout_s,
                extra=extra,
                rewrite=where.rewrite,
                targets=where.targets or None,
            )

        key = share_key(route.line, where, extra)
        for attempt in range(NEXT_LINK_TRIES):
            try:
                fetched = await fetches.fetch(key, open_)
                if fetched is None:  # another session's answer was too long to share
                    fetched = await fetches.fetch_alone(open_)
            except OriginError as exc:
                log.info("next link failed link=%s try=%d: %s", link, attempt + 1, exc.reason)
            else:
                if 200 <= fetched.status < 300:
                    self.current = urljoin(self.current, link)
                    return fetched
                log.info(
                    "next link failed link=%s try=%d: status %d", link, attempt + 1, fetched.status
                )
                await fetched.aclose()
            if attempt + 1 < NEXT_LINK_TRIES:
                await trio.sleep(2**attempt + random.random())
        raise OriginError("Failed to retrieve next link.")

    async def follow(self, link: str) -> None:
        """Fetch ``link``, append its body and take its instruct.  What is published meanwhile
        is held, then filtered by the new prev-ids (``edge.grip.nextlink_track``)."""
        s = self.session
        track = s.track
        if track is None:
            track = s.track = PrevIds({})
        track.begin_update()
        fetched = await self.fetch_next(link)
        try:
            await self.own_socket()
            try:
                if not is_grip_response(fetched.headers):
                    async for piece in fetched.chunks():
                        if piece:
                            await self.conn.send_all(self.frame(piece))
                    self.hold = Hold(mode=None)
                    self.set_link(self.hold)
                    return
                hold, body_iter = await _parse_fetched(fetched, self.route, self.app.instruct_cache)
                if hold.mode == "response":
                    raise InstructError("Next link returned non-stream hold.")
                if hold.body_error is not None:
                    raise InstructError(hold.body_error)
                await self.send_body(hold.body, body_iter)
                self.hold = hold
                self.set_link(hold)
                if hold.mode == "stream" and self.registered:
                    await self.take_instruct(hold)
                log.debug("next link answered conn=%s link=%s mode=%s", s.id, link, hold.mode)
            finally:
                await self.release_socket()
        finally:
            await fetched.aclose()

    async def take_instruct(self, hold: Hold) -> None:
        """A next link's stream hold while the socket is owned: its channels and prev-ids
        replace the session's, and the held items still worth it are queued behind its body
        (in the session's buffer, so nothing published meanwhile overtakes them)."""
        app, s = self.app, self.session
        names = frozenset(c.name for c in hold.channels)
        if names != s.channel_names:
            app.remove_session(s)
            s.hold = hold
            _subscription(s, hold)
            app.add_session(s, sorted(names))
        else:
            s.hold = hold
            _subscription(s, hold)
        if any(c.prev_id is not None for c in hold.channels) and not hold.next_link:
            bad = next(c.name for c in hold.channels if c.prev_id is not None)
            raise InstructError(f"channel '{bad}' specifies prev-id, but no next link found")
        track = s.track
        assert track is not None  # follow() made one
        rest = _until_hint(track.after_update(_checked_ids(hold), s.channel_names))
        if track.idle:
            s.track = None
        if rest:
            # the socket is ours (s.writing): these go to the session's buffer now, in order,
            # before anything published from here on, and out with release_socket()
            await app.deliverer.deliver(rest, trio.current_time(), only=s)


_NO_CHANNELS: list[Channel] = []  # never appended to: shared by holds without prev-ids
_NO_RESUMES: list[Resume] = []  # the same, for their resumes


def _may_park(conn: Connection) -> bool:
    """The edge parks idle streams (``edge.parking``), plain and TLS alike (a TLS client's
    records are read through its ``TlsConn`` when the parker wakes it)."""
    return conn.app.parker.serving


class HeldStream:
    """A stream hold ``handle_grip`` left for ``Connection.serve`` to run (its initial body
    read whole; the origin's response closed)."""

    __slots__ = ("req", "route", "hold", "path", "begin", "st", "chain")

    def __init__(self, req: Request, route: Route, hold: Hold) -> None:
        self.req = req
        self.route = route
        self.hold = hold
        self.path = b""  # the routed path and the access-log record (set by Connection.handle)
        self.begin: object = None
        # while parked (edge.parking): the stream's state and its next-link chain count
        self.st: _Stream | None = None
        self.chain = 0

    def cancel(self) -> None:
        """The parked session's ``scope``: wake its connection (``edge.parking``)."""
        st = self.st
        if st is not None:
            st.conn.app.parker.wake(st.conn)


async def hold_stream(
    conn: Connection,
    req: Request,
    route: Route,
    hold: Hold,
    body_iter: AsyncIterator[bytes] | None,
    held: HeldStream | None = None,
) -> bool | None:
    """Serve a stream hold; whether the connection may serve another request, or None when
    it parked (``edge.parking``: only with ``held``, run by ``Connection.serve``, which calls
    this again with the same ``held`` once the parked connection is woken)."""
    app = conn.app
    st = held.st if held is not None else None
    resumed = st is not None  # a parked hold, woken: it goes on where it parked
    if st is None:
        st = _Stream(conn, req, route, hold)
    s = st.session
    gone = parked = False
    try:
        chain, want_low = 0, False
        first_sub: float | None = None
        if resumed:
            assert held is not None
            s.scope = None
            chain = held.chain
        else:
            # (the hold_stream frame lives as long as the held connection: its locals are
            # shared empties, not a list each, when there is nothing to resume)
            resumes: list[Resume] = _NO_RESUMES
            error = None  # Pushpin's: the initial response goes out, then the stream ends
            want_low = False  # a low-priority update is due (a prev-id conflicting with history)
            if hold.mode == "stream":
                prev = st.register(hold)
                if prev:
                    # history first answers whether it can (before the head); the replay
                    # itself goes out after the head, paced by the client's socket
                    resumes = await st.probe(prev)
                    want_low = st.start_tracking(hold, prev, resumes)
                    unheld = [
                        c
                        for c, r in zip(prev, resumes)
                        if not (r.found or (r.ok and is_cursor(c.prev_id)))
                    ]
                    if unheld and not hold.next_link:
                        error = (
                            f"channel '{unheld[0].name}' specifies prev-id, but no next link found"
                        )
                elif hold.next_link:
                    st.start_tracking(hold, prev, resumes)
                if not app.positioned(s.channel_names):  # (the hold's channels, as a set)
                    await app.wait_positioned([c.name for c in hold.channels])
            head = app.instruct_cache.stream_head(hold, chunked=s.chunked)
            if hold.body and body_iter is None:  # head and initial body in one send
                head, hold_body = head + st.frame(hold.body), b""
            else:
                hold_body = hold.body
            if hold.body_error is not None:
                # build-id failed on the initial body: the head, then the end (Pushpin's doError)
                log.info(
                    "stream ended route_line=%d path=%s: %s", route.line, st.path, hold.body_error
                )
                if s.chunked:
                    if route.debug:
                        head += http_chunk(f"\n\n{hold.body_error}\n".encode())
                    head += b"0\r\n\r\n"
                await conn.send_all(head)
                return req.keep_alive and s.chunked
            await opener.cork()  # the heads of a batch of connections leave together
            n = conn.write_now(head)  # nearly always all of it, without a coroutine
            if n < len(head):  # (a TLS client's head goes all through send_all: n is 0)
                await conn.send_all(memoryview(head)[n:] if n else head, counted=True)
            head = b""  # this frame lives as long as the hold: keep no copy of what was sent
            st.head_sent = True
            # a held stream never re-sends the client's request (next links send only Grip-Last,
            # the signature and Host): do not keep its headers and body for the connection's life
            req.headers, req.body = [], bytearray()
            if hold_body or body_iter is not None:
                try:
                    await st.send_body(hold_body, body_iter)
                except OriginError as exc:
                    log.warning("stream hold initial body cut: %s", exc.reason)
                    return False
            if error is not None:
                await st.release_socket()
                raise InstructError(error)
            if not st.release_socket_now():
                await st.release_socket()
            if hold.mode == "stream":
                app.schedule_keepalive(s)
                if resumes:
                    await st.catch_up(resumes)
            if hold.mode == "stream" and hold.next_link and app.cfg.update_on_first_subscription:
                first_sub = app.holds.first_sub_deadline(s.channel_names, trio.current_time())
            if held is None and not want_low and first_sub is None and _may_park(conn):
                # run by handle_grip (the initial body was relayed from the origin): the rest
                # of the hold runs in Connection.serve, once handle_grip's and its callers'
                # frames are gone, so that it may park (edge.parking)
                conn.held = handoff = HeldStream(req, route, hold)
                handoff.st = st
                parked = True  # (the hold goes on there: no cleanup here)
                return req.keep_alive
        while True:
            cur = st.hold
            track = s.track
            if cur.mode == "stream" and not s.hinted:
                if track is not None and track.gap:
                    track.gap, want_low = False, True
                if want_low:
                    want_low = False
                    if not app.holds.request_update(s, trio.current_time()) and track:
                        # no next link to ask: deliver what was held, as it is
                        queued = track.cancel_update()
                        if queued:
                            await app.deliverer.deliver(queued, trio.current_time(), only=s)
            if cur.mode != "stream" or s.hinted:
                if cur.mode == "stream":
                    s.hinted = False
                elif not cur.next_link:
                    break  # the chain ended without a hold: end the response
                app.holds.cancel_update(s)
                link = cur.next_link
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
                    # a chain turned into a stream hold: history first, then the next link
                    nxt = st.hold
                    prev = st.register(nxt)
                    queued = s.track.cancel_update() if s.track is not None else []
                    s.track = None
                    resumes = await st.probe(prev)
                    want_low = st.start_tracking(nxt, prev, resumes)
                    if queued:
                        await app.deliverer.deliver(queued, trio.current_time(), only=s)
                    await st.catch_up(resumes)
                    app.schedule_keepalive(s)
                continue
            # held: wait for the client, a close, a hint, an update's turn, or the idle window
            window = st.hold.next_link_timeout_s if st.hold.next_link else None
            if not window and first_sub is None:
                if held is not None and _may_park(conn):
                    # no deadline, a plain socket: park (edge.parking); no task while idle
                    if not (s.done or s.hinted or (s.track is not None and s.track.gap)):
                        if conn.read_held(probe=resumed):  # (edge.parking: first park)
                            gone = True
                            return False  # the client went away (or sent what ends it)
                        held.st, held.chain = st, chain
                        s.scope = held  # finish()/kill()/hint() wake it: held.cancel()
                        app.parker.park(conn)
                        parked = True
                        return None
                    if s.done:
                        break
                    continue
                # no deadline: wait without a cancel scope; finish()/kill() wake the wait
                # through the socket (edge.readtimer.Waker), a shutdown's close as before
                waker = s.scope = readtimer.Waker(conn.sock)
                if not (s.done or s.hinted or (s.track is not None and s.track.gap)):
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
            seen = s.cursors()
            with trio.CancelScope() as scope:
                s.scope = scope
                if window:
                    scope.deadline = trio.current_time() + window
                if first_sub is not None:
                    scope.deadline = min(scope.deadline, first_sub)
                if s.done or s.hinted or (s.track is not None and s.track.gap):
                    scope.cancel()
                await conn.watch_client()
                gone = True
                return False  # the client went away
            s.scope = None
            if s.done:
                break
            now = trio.current_time()
            if first_sub is not None and now >= first_sub:
                first_sub = None
                want_low = True
            elif window and scope.deadline <= now and not s.hinted:
                idle = [
                    c
                    for c in s.channel_names
                    if (cur := s.cursor_of(c)) is None or cur == seen.get(c)
                ]
                want_low = bool(idle)
        if s.dead:
            log.debug("stream dropped conn=%s: %s", s.id, s.reason)
            return False
        if s.state is OPEN and s.chunked:  # not ended by a published close
            await st.own_socket()
            await conn.send_all(b"0\r\n\r\n")
            s.writing = False
        return req.keep_alive and s.chunked and not conn.queue_blocked()
    except (OriginError, InstructError, LinkRefused) as exc:
        if not st.head_sent:
            raise  # answered 502 by handle_grip
        # Pushpin's doError for a stream: the reason on debug routes, then the end of the body
        log.warning("stream ended route_line=%d path=%s: %s", route.line, st.path, exc.reason)
        if s.chunked and not s.dead:
            with trio.move_on_after(5):
                await st.own_socket()
                end = http_chunk(f"\n\n{exc.reason}\n".encode()) if route.debug else b""
                await conn.send_all(end + b"0\r\n\r\n")
        elif route.debug and not s.dead:
            with trio.move_on_after(5):
                await st.own_socket()
                await conn.send_all(f"\n\n{exc.reason}\n".encode())
        return False
    finally:
        if not parked:  # (parked: the hold goes on when woken)
            conn.sent += s.sent  # what the delivery path wrote, for the access log
            s.end()
            app.holds.discard(s)
            if st.registered:
                app.remove_session(s)
            for c in st.hold.channels:
                app.resumer.abort(s, c.name)
            if gone and st.gone_link:
                _post_gone(app, route, req, st.gone_link)
