"""WebSocket-over-HTTP toward the origin (route target ``over_http``; reference 4.2, 4.3).

The sans-IO part: ``replay_headers`` (the client's handshake headers replayed on every request,
minus ``Upgrade``, ``Connection``, ``Accept``, ``Connection-Id``, ``Content-Length``,
``Content-Type``, ``Sec-WebSocket-Extensions`` and every client ``Meta-*``), ``woh_headers``
(what each request adds: ``Sec-WebSocket-Extensions: grip``, ``Accept``, ``Content-Type``,
``Connection-Id``, ``Meta-<Name>`` for each bound meta), ``check_response`` (exactly ``200`` and
``Content-Type: application/websocket-events``) and ``apply_headers`` (``Set-Meta-*``,
``Keep-Alive-Interval``).  ``edge.origin.client`` adds ``Grip-Sig`` (fresh for every request),
``Grip-Feature``, ``Host`` and ``Content-Length``; its ``encode_request_head`` refuses a
header name that is not a token or a value with CR, LF, NUL (a ``Meta-*`` from a control
message, say): that request is not sent and the session closes with 1011, unretried.

``WohOrigin`` is the I/O: the OPEN request (relayed to the client as an HTTP response when the
origin rejects it; never retried; targets fail over on connect errors), then one task that keeps
exactly one request in flight (``parkable``, edge.parking: that task runs only while a request is
due, started by ``kick``, and returns when idle; the keep-alive interval is then armed on the
edge's ``WsTimers``): it waits for client events (queued in an ``edge.ws.outbox.Outbox``,
at most ``MAX_PENDING_BYTES`` of content before the client is no longer read), a ``refresh`` or
the keep-alive interval, POSTs them (``Content-Bytes-Replayed`` when some were offered before),
applies the origin's ``Content-Bytes-Accepted`` and the response's events to the session.  The
target option ``one_event`` sends one event per request.  A request that fails before a
response is retried up to ``RETRIES`` times (1 s x 2^n + up to 1 s of jitter); after that, or on
a bad response, the client is closed with 1011.

Closing follows Pushpin: the client's close goes to the origin first (``CLOSE`` after the queued
messages) and the client is closed with the origin's answering ``CLOSE``; when the origin
answers without one and has no keep-alive, the connection is over (the client's close is
echoed).  ``DISCONNECT`` (client vanished) is sent alone, in the background, its response
ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from broker.errors import RemoteProtocolError
from edge.http1 import responses
from edge.http1.headers import clean_response_headers
from edge.origin.client import OriginError, RequestHeadError, open_origin
from edge.ws.control import grip_extension, grip_prefix
from edge.ws.events import (
    CONTENT_TYPE,
    EventsError,
    WsEvent,
    decode_events,
    encode_event,
    parse_close_content,
)
from edge.ws.outbox import Outbox

if TYPE_CHECKING:
    from edge.routes import Route, Target
    from edge.services import OriginServices
    from edge.ws.session import ParkedWs, WsSession

Headers = list[tuple[bytes, bytes]]

log = logging.getLogger(__name__)

MAX_RESPONSE_BODY = 1_000_000
MAX_REJECT_BODY = 100_000
MAX_PENDING_BYTES = 200_000
MIN_KEEP_ALIVE_S = 20.0
RETRIES = 5
_REPLAY_DROP = frozenset(
    [
        b"upgrade",
        b"connection",
        b"accept",
        b"connection-id",
        b"content-length",
        b"content-type",
        b"sec-websocket-extensions",
    ]
)


# -- sans-IO ---------------------------------------------------------------------------------


def replay_headers(client_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [
        (k, v)
        for k, v in client_headers
        if k.lower() not in _REPLAY_DROP and not k.lower().startswith(b"meta-")
    ]


def woh_headers(cid: str, meta: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    out = [
        (b"Sec-WebSocket-Extensions", b"grip"),
        (b"Accept", CONTENT_TYPE.encode()),
        (b"Connection-Id", cid.encode()),
        (b"Content-Type", CONTENT_TYPE.encode()),
    ]
    for name, value in meta.items():
        out.append(
            (b"Meta-" + name.encode("latin-1", "replace"), value.encode("latin-1", "replace"))
        )
    return out


def check_response(status: int, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a WOH response is not acceptable (None when it is)."""
    if status != 200:
        return f"origin answered {status}"
    ctype = next((v for k, v in headers if k.lower() == b"content-type"), None)
    if ctype != CONTENT_TYPE.encode():
        return f"origin answered Content-Type {ctype!r}, not {CONTENT_TYPE}"
    return None


def apply_headers(headers: Iterable[tuple[bytes, bytes]], meta: dict[str, str]) -> float | None:
    """Bind ``Set-Meta-*`` into ``meta``; returns the ``Keep-Alive-Interval`` (None if absent)."""
    interval = None
    for k, v in headers:
        lk = k.lower()
        if lk.startswith(b"set-meta-"):
            name = k[9:].decode("latin-1")
            # meta names are compared case-insensitively; keep the first spelling seen
            existing = next((n for n in meta if n.lower() == name.lower()), name)
            if v:
                meta[existing] = v.decode("latin-1")
            else:
                meta.pop(existing, None)
        elif lk == b"keep-alive-interval":
            try:
                interval = max(MIN_KEEP_ALIVE_S, float(v.strip()))
            except ValueError:
                pass
    return interval


@dataclass(frozen=True, slots=True)
class Opened:
    """The origin side's answer to opening: a rejection to relay, or the 101's ingredients."""

    reject: bytes | None = None
    headers: Headers = dataclasses.field(default_factory=list)
    prefix: str | None = None
    events: list[WsEvent] = dataclasses.field(default_factory=list)
    # the origin's grip extension, relayed to a trusted GRIP proxy in front (edge.upstream)
    pass_extensions: bytes = b""


def rejection(
    status: int, reason: str, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> bytes:
    hs = clean_response_headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers])
    return responses.full(status, reason, hs, body, keep_alive=False)


# -- I/O -------------------------------------------------------------------------------------


class WohOrigin:
    def __init__(
        self, app: OriginServices, route: Route, client_headers: Headers, path: bytes
    ) -> None:
        self.app = app
        self.route = route
        self.path = path
        self.cid = str(uuid.uuid4())
        self.headers = replay_headers(client_headers)
        # from a trusted GRIP proxy in front (edge.upstream): its Grip-* headers go to the
        # origin (no Grip-Sig of ours) and the origin's GRIP goes up to it untouched
        self.trusted = app.upstream.trusted_now(client_headers)
        self.fixed_channels = tuple(route.targets[0].subs)
        self.meta: dict[str, str] = {}
        self.targets: Sequence[Target] | None = None  # after OPEN: the target that answered
        self.outbox = Outbox()  # one_event set from the target that answers the OPEN
        self.keep_alive_s: float | None = None
        self.wake: trio.Event | None = None  # the request loop's idle wait (not when parkable)
        # parkable (edge.parking, set by serve_websocket): the request loop runs only while a
        # request is due; ``active`` while it runs or is due to start, ``spawn`` starts it in
        # the session's nursery (None while the connection is parked: ``unpark`` wakes it)
        self.parkable = False
        self.active = False
        self.spawn: Callable[..., object] | None = None
        self.unpark: ParkedWs | None = None
        self.room: trio.Event | None = None  # made only while the client is not read (wait_room)
        self.refreshing = False
        self.close_in_flight = False  # serve() is sending the CLOSE (shielded)
        self.detached = False
        self.gone = False  # DISCONNECT sent/received: no more requests
        self.last_request = 0.0
        self.session: WsSession | None = None

    async def _post(self, body: bytes, replayed: int = 0) -> tuple[int, str, Headers, bytes]:
        """One request; returns ``(status, reason, headers, body)``."""
        extra = woh_headers(self.cid, self.meta)
        if replayed:
            extra.append((b"Content-Bytes-Replayed", b"%d" % replayed))
        resp = await open_origin(
            self.app.origin_client,
            self.route,
            b"POST",
            self.path,
            self.headers,
            body,
            sig=None if self.trusted else self.app.sign(self.route),
            timeout_s=self.app.cfg.origin_timeout_s,
            extra=extra,
            targets=self.targets,
            trusted=self.trusted,
        )
        try:
            limit = (
                MAX_REJECT_BODY if check_response(resp.status, resp.headers) else MAX_RESPONSE_BODY
            )
            try:
                data = await resp.read_body(limit)
            except OriginError as exc:
                if "too large" in exc.reason:
                    raise OriginError(f"WebSocket-over-HTTP response over {limit} bytes") from exc
                raise
            if self.targets is None:
                self.targets = (resp.target,)
            return resp.status, resp.reason, resp.headers, data
        finally:
            await resp.aclose()

    async def open(self) -> Opened:
        try:
            status, reason, headers, body = await self._post(encode_event("OPEN"))
        except OriginError as exc:
            return self._proxy_error(exc)
        self.last_request = trio.current_time()
        if check_response(status, headers) is not None:
            return Opened(reject=rejection(status, reason, headers, body))
        try:
            events = decode_events(body)
        except EventsError as exc:
            return self._proxy_error(exc)
        if not events or events[0].type != "OPEN":
            return self._proxy_error(RemoteProtocolError("origin did not accept the OPEN"))
        self.keep_alive_s = apply_headers(headers, self.meta)
        if self.targets:
            self.outbox.one_event = self.targets[0].one_event
        ext = [v.decode("latin-1") for k, v in headers if k.lower() == b"sec-websocket-extensions"]
        if self.trusted:  # the proxy in front acts on GRIP: relay the grip extension, if any
            return Opened(headers=headers, events=events[1:], pass_extensions=grip_extension(ext))
        return Opened(headers=headers, prefix=grip_prefix(ext), events=events[1:])

    def _proxy_error(self, exc: RemoteProtocolError) -> Opened:
        self.app.proxy_errors += 1
        log.warning(
            "websocket-over-http open failed path=%s: %s",
            self.path.decode("latin-1", "replace"),
            exc.reason,
        )
        text = exc.reason if self.route.debug else "Error while proxying to origin."
        return Opened(reject=responses.error(502, text))

    # -- client side events (from the connection task) -----------------------------------------

    async def client_event(self, type_: str, content: bytes | None) -> None:
        if self.gone or self.detached:
            return
        self.outbox.add(type_, content)
        self.kick()

    async def client_close(self, code: int | None, reason: str) -> None:
        """The client closed: relay it to the origin (whose answer closes the client)."""
        if self.gone or self.detached:
            return
        self.outbox.close(code, reason)
        self.kick()

    async def wait_room(self) -> None:
        while self.outbox.size > MAX_PENDING_BYTES and not self.gone and not self.detached:
            room = self.room = trio.Event()
            await room.wait()

    def refresh(self) -> None:
        """Send the origin a request now (a published ``refresh`` action, or the ``refresh``
        command), with whatever events are queued; one more after the request in flight.
        Only while connected and not closing, as Pushpin."""
        if self.gone or self.detached or self.close_in_flight or self.outbox.close_sent:
            return
        self.refreshing = True
        self.kick()

    def kick(self) -> None:
        """A request may be due: wake the request loop (parkable: start it, or wake the
        parked connection, whose new task starts it)."""
        if self.wake is not None:
            self.wake.set()
        if not self.parkable or self.active or self.gone or self.detached:
            return
        self.active = True
        if self.spawn is not None:
            self.spawn(self.serve, self.session)
        elif self.unpark is not None:
            self.unpark.cancel()

    def idle_due(self) -> float:
        """When the keep-alive interval's request is due while the (parkable) request loop is
        not running (inf: not parkable, running, or no interval); ``WsSession.next_timer``
        arms the edge's WsTimers for it, whose call ``kick``s."""
        if not self.parkable or self.active or self.gone or self.detached:
            return math.inf
        ka = self.keep_alive_s
        return self.last_request + ka if ka else math.inf

    def idle(self) -> bool:
        """Nothing for the request loop to do now (parkable: it need not run)."""
        if self.outbox.due() or self.refreshing:
            return False
        ka = self.keep_alive_s
        return not ka or self.last_request + ka > trio.current_time()

    def detach(self) -> None:
        self.detached = True
        self.outbox.clear()
        self._free_room()

    def close_published(self) -> None:
        """A published close is closing the client: a bare ``CLOSE`` goes to the origin now
        (after the queued messages), as Pushpin sends it."""
        if self.gone or self.detached:
            return
        self.outbox.close(None, "")
        self.kick()

    def closed_by_client(self, code: int | None, reason: str) -> None:
        """The client answered a close from us: the origin is told (in the background) unless
        its CLOSE is on the way already."""
        if self.gone or self.detached or self.close_in_flight or self.outbox.close_sent:
            return
        self.gone = True
        self.outbox.close(code, reason)  # (no-op after a published close: that bare CLOSE)
        offer = self.outbox.offer()
        self.app.nursery.start_soon(self._final, offer.body, offer.replayed)

    def disconnected(self) -> None:
        """The client vanished: tell the origin in the background (response ignored)."""
        if self.gone or self.detached:
            return
        self.gone = True
        self.outbox.clear()  # Pushpin's DISCONNECT request carries nothing else
        self.app.nursery.start_soon(self._final, encode_event("DISCONNECT"), 0)

    async def _final(self, body: bytes, replayed: int) -> None:
        try:
            await self._post(body, replayed)
        except (RemoteProtocolError, OSError) as exc:
            log.debug("last request to origin failed cid=%s: %s", self.cid, exc)

    def _free_room(self) -> None:
        room, self.room = self.room, None
        if room is not None:
            room.set()

    async def aclose(self) -> None:
        self._free_room()

    # -- the request loop ------------------------------------------------------------------------

    async def serve(self, session: WsSession) -> None:
        self.session = session
        if not self.parkable:
            await self._serve(session)
            return
        # parkable: runs only while a request is due; then the connection may park
        try:
            await self._serve(session)
        finally:
            self.active = False
            session.arm_timer()  # the keep-alive interval (idle_due) from the edge's WsTimers
            rs = session.read_scope
            if rs is not None and not isinstance(rs, trio.CancelScope):
                rs.cancel()  # the reader's idle wait: it parks now (edge.ws.session)

    async def _serve(self, session: WsSession) -> None:
        outbox = self.outbox
        parkable = self.parkable
        while not self.gone and not self.detached:
            if parkable and self.idle():
                return
            if not outbox.due() and not self.refreshing:
                due = (self.last_request + self.keep_alive_s) if self.keep_alive_s else math.inf
                if not parkable:
                    wake = self.wake = trio.Event()
                    if due == math.inf:  # no keep-alive interval: no cancel scope either
                        await wake.wait()
                    else:
                        with trio.move_on_at(due):
                            await wake.wait()
                if self.gone or self.detached:
                    return
            offer = outbox.offer()
            self.refreshing = False
            try:
                if offer.close:  # the last request: not cut short when the client is done
                    self.close_in_flight = True
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + self.app.cfg.origin_timeout_s
                        status, _, headers, data = await self._post(offer.body, offer.replayed)
                    if scope.cancelled_caught:
                        raise OriginError("timeout waiting for the origin's answer to CLOSE")
                else:
                    status, _, headers, data = await self._post_retrying(offer.body, offer.replayed)
                problem = check_response(status, headers)
                if problem:
                    raise OriginError(problem)
                accepted = next(
                    (v for k, v in headers if k.lower() == b"content-bytes-accepted"), None
                )
                outbox.accept(offer, accepted)
                events = decode_events(data)
            except RemoteProtocolError as exc:
                log.warning("websocket-over-http request failed cid=%s: %s", self.cid, exc.reason)
                self.gone = True
                await session.close(1011, "origin error")
                return
            self._free_room()
            interval = apply_headers(headers, self.meta)
            if interval is not None:
                self.keep_alive_s = interval
            got_close = await self._apply(session, events)
            if outbox.close_sent and not got_close and not self.keep_alive_s:
                self.gone = True  # uncleanly closed: the connection task echoes the client
                session.closed.set()
                return

    async def _post_retrying(
        self, body: bytes, replayed: int = 0
    ) -> tuple[int, str, Headers, bytes]:
        for attempt in range(RETRIES + 1):
            try:
                result = await self._post(body, replayed)
                self.last_request = trio.current_time()
                return result
            except OriginError as exc:
                if attempt == RETRIES or isinstance(exc, RequestHeadError):
                    raise  # a bad header (a meta value with CR/LF...) stays bad: no retry
                delay = (1 << attempt) + random.random()
                log.info(
                    "websocket-over-http retry cid=%s in %.1fs: %s", self.cid, delay, exc.reason
                )
                await trio.sleep(delay)
        raise AssertionError("unreachable")

    async def _apply(self, session: WsSession, events: list[WsEvent]) -> bool:
        got_close = False
        for ev in events:
            if ev.type in ("TEXT", "BINARY", "PING", "PONG"):
                await session.from_origin(ev.type, ev.content)
            elif ev.type == "CLOSE":
                got_close = True
                code, reason = parse_close_content(ev.content)
                await session.close(code if code is not None else 1000, reason)
                self.gone = True
            elif ev.type in ("DISCONNECT", "OPEN"):
                self.gone = True
                session.kill("origin disconnected")
                return True
            else:
                log.debug("ignoring unknown event %s cid=%s", ev.type, self.cid)
        return got_close
