"""WebSocket clients on the edge: handshake, the ``WsSession`` the hub delivers to, and the
connection task.

Theory of operation
-------------------
``httpserver.Connection`` hands an ``Upgrade: websocket`` request here (``serve_websocket``)
with the bytes that followed it.  The handshake is checked (RFC 6455 4.2.1; the accept token is
wsproto's), the route is matched as a WebSocket request, and the origin side is opened first:
WebSocket-over-HTTP (``edge.ws.over_http``, target ``over_http``) or a WebSocket to the origin
(``edge.ws.proxy``).  A rejection by the origin is relayed to the client as an HTTP response;
otherwise the client gets ``101 Switching Protocols`` with the origin's headers.

From then on two tasks run under one nursery: this task reads the client socket and feeds
``edge.ws.connection.WsConnection`` (frames parsed by the ``_speedups`` twin); the origin side's task
turns client events into origin traffic and origin traffic into session actions.  With a
WebSocket-over-HTTP origin and a plain client socket (``_run_parked``), the origin side's task
runs only while a request is due (``WohOrigin.kick``), and an idle session parks
(``edge.parking``): no task, no nursery, no frames while idle; client input, a kick, a kill or
our close written wake it in a new task (``resume_websocket``), where it goes on as before.  The
``keep-alive`` and ``send-delayed`` messages the origin asks for are sent by the edge's one
shared timer task (``edge.ws.timers``: coarse buckets, no task or timer per connection).

Every byte to the client, from the origin side or from a publish, goes through the delivery
path (``Deliverer.write_many``): one non-blocking send, else the session's bounded buffer and a
writer task, and a session that overflows it is dropped.  So a slow WebSocket client never
delays anyone else, and published frames are built once per message
(``message_frame``) and written as the same bytes to every subscriber.

GRIP over the socket (``edge.ws.control``): when the origin enabled the ``grip`` extension, a
TEXT ``c:`` message from it is a control message (subscribe, unsubscribe, detach, set-meta,
keep-alive, send-delayed, flush-delayed), other messages must carry the prefix (stripped) or are
dropped.  Route ``sub=`` channels are subscribed at open.  A ``subscribe`` with ``prev-id``
first replays, from broker history, what the connection missed (``edge.sync.resume``); when history
cannot cover the gap the origin gets the TEXT event ``c:{"type":"resume-failed",...}``
(docs/websocket.md); when a channel's history is lost later (``on_history_lost``) it gets
``c:{"type":"history-lost",...}``.

Pings: a client's ping goes to the origin (a ``PING`` event with its payload, or a ping frame
to a WebSocket origin) and the origin's pong comes back as the client's pong, as Pushpin relays
every frame; the origin's pings reach the client the same way.  Only a detached session (no
origin left) answers pings itself.

Closing: a close from the client is passed to the origin, whose answering close (or, after
``CLOSE_TIMEOUT_S``, an echo of the client's code) is sent back; a close from the origin or a
publish is sent to the client, whose reply (or ``CLOSE_TIMEOUT_S``) ends the connection.  A
client that vanishes without a close makes the origin side send ``DISCONNECT``.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import trio
from wsproto.utilities import generate_accept_token

from _speedups import ws_frame
from broker.errors import RemoteProtocolError
from edge import proxyrules
from edge.fastpath import read_now
from edge.grip import filters
from edge.http1 import responses
from edge.proxyrules import claims_tls, pick_route
from edge.readtimer import Waker
from edge.sessionstate import CLOSE, DEAD, DONE, FLUSHED, KILL, OPEN, HistoryLost, Session
from edge.ws import control as wc
from edge.ws.connection import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    CloseState,
    Message,
    Ping,
    Pong,
    WsConnection,
    WsError,
)
from edge.ws.deflate import Deflate, Inflater, deflate_message, negotiate, set_rsv1

if TYPE_CHECKING:
    from broker.wire import Envelope
    from edge.http1.connection import Connection, Request
    from edge.routes import Route
    from edge.services import ConnectionServices, SessionServices
    from edge.tlsconn import TlsConn
    from edge.ws.events import WsEvent
    from edge.ws.over_http import WohOrigin
    from edge.ws.proxy import WsOrigin

    OriginSide = WohOrigin | WsOrigin
    Headers = list[tuple[bytes, bytes]]

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0
wait_readable = trio.lowlevel.wait_readable
READ_SIZE = 65536
MAX_FRAME = 16384  # origin messages are split into frames of at most this size (Pushpin's)
_ids = itertools.count(1)
_OPCODES = {"text": OP_TEXT, "binary": OP_BINARY, "ping": OP_PING, "pong": OP_PONG}
_LOGGED_HEADERS = frozenset([b"user-agent", b"x-forwarded-for"])  # read by edge.accesslog


# -- handshake (sans-IO) ---------------------------------------------------------------------


class HandshakeError(RemoteProtocolError):
    def __init__(self, status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(text, status=status)
        self.status, self.text, self.headers = status, text, list(headers)

    def response(self) -> bytes:
        body = self.text.encode() + b"\n"
        hs = [("Content-Type", "text/plain")] + self.headers
        return responses.full(self.status, "", hs, body, keep_alive=False)


def _get(headers: Headers, name: bytes) -> bytes | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _tokens(headers: Headers, name: bytes) -> set[bytes]:
    out: set[bytes] = set()
    for k, v in headers:
        if k.lower() == name:
            out.update(t.strip().lower() for t in v.split(b","))
    return out


def is_websocket_request(headers: Headers) -> bool:
    return b"websocket" in _tokens(headers, b"upgrade")


def check_handshake(method: bytes, headers: Headers) -> bytes:
    """Validate a client's opening handshake; returns its ``Sec-WebSocket-Key``."""
    if method != b"GET":
        raise HandshakeError(405, "WebSocket handshake must be a GET.", [("Allow", "GET")])
    if b"upgrade" not in _tokens(headers, b"connection"):
        raise HandshakeError(400, "Missing Connection: Upgrade.")
    version = _get(headers, b"sec-websocket-version")
    if version is None or version.strip() != b"13":
        raise HandshakeError(
            426, "Unsupported WebSocket version.", [("Sec-WebSocket-Version", "13")]
        )
    key = (_get(headers, b"sec-websocket-key") or b"").strip()
    try:
        ok = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise HandshakeError(400, "Bad Sec-WebSocket-Key.")
    return key


_101_DROP = frozenset(
    [
        "content-length",
        "content-type",
        "keep-alive-interval",
        "connection",
        "upgrade",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "transfer-encoding",
        "keep-alive",
        "content-encoding",
    ]
)


def accept_head(
    key: bytes,
    origin_headers: Iterable[tuple[bytes | str, bytes | str]],
    deflate: Deflate | None = None,
    extensions: bytes = b"",
) -> bytes:
    """``101 Switching Protocols`` for ``key`` with the origin's headers (str or bytes pairs),
    and the permessage-deflate agreement when there is one; ``extensions``: a
    ``Sec-WebSocket-Extensions`` to send (to a trusted proxy in front)."""
    hs = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", generate_accept_token(key).decode("ascii")),
    ]
    if deflate is not None:
        hs.append(("Sec-WebSocket-Extensions", deflate.response()))
    for k, v in origin_headers:
        ks = k.decode("latin-1") if isinstance(k, bytes) else k
        lk = ks.lower()
        if lk in _101_DROP or lk.startswith(("grip-", "set-meta-")):
            continue
        hs.append((ks, v.decode("latin-1") if isinstance(v, bytes) else v))
    if extensions:
        hs.append(("Sec-WebSocket-Extensions", extensions.decode("latin-1")))
    return responses.head(101, "Switching Protocols", hs)


def message_frame(fmt: dict[str, Any], compressed: bool = False) -> bytes:
    """The frame of a published ``ws-message`` send (built once, sent to every subscriber;
    once more, compressed, for the subscribers that agreed to permessage-deflate)."""
    op = _OPCODES.get(fmt.get("type") or "text", OP_TEXT)
    content = fmt.get("content") or b""
    if op >= OP_PING:
        return ws_frame(op, content[:125])
    if compressed:
        return set_rsv1(ws_frame(op, deflate_message(content)))
    return ws_frame(op, content)


def _frames(op: int, data: bytes, compressed: bool = False) -> bytes:
    if compressed:
        data = deflate_message(data)
    if len(data) <= MAX_FRAME:
        frame = ws_frame(op, data)
        return set_rsv1(frame) if compressed else frame
    parts = [
        ws_frame(op if i == 0 else 0, data[i : i + MAX_FRAME], i + MAX_FRAME >= len(data))
        for i in range(0, len(data), MAX_FRAME)
    ]
    if compressed:
        parts[0] = set_rsv1(parts[0])
    return b"".join(parts)


# -- the session -----------------------------------------------------------------------------


class WsSession(Session):
    """One client WebSocket: what the hub maps channels to and the delivery path writes to.

    A ``Session`` (``edge.sessionstate``): CLOSING once our close frame is queued (nothing else
    goes out), DONE once it is written (only the client's close reply is awaited), DEAD when
    dropped.  Has the fields ``Deliverer.write_many`` relies on (``fd``, ``sock``, ``buf``,
    ``writing``, ``last_out``, ``finish()``, ``kill()``) and the ones ``edge.grip.filters`` reads
    (``filters``, ``meta``, ``channel_names``).
    """

    kind = "ws"
    # what one delivery reads and writes (deflate, filters, cursors, crypt, writing, buf,
    # fd, sent, last_out) are _speedups.SessionCore's fields
    __slots__ = (
        "id",
        "app",
        "sock",
        "ws",
        "side",
        "prefix",
        "scope",
        "read_scope",
        "meta",
        "channel_names",
        "detached",
        "keep_alive",
        "ka_last",
        "delayed",
        "delayed_at",
        "timer_at",
        "_closed",
        "client_close",
        "chan_prefix",
    )

    def __init__(
        self,
        app: SessionServices,
        sock: trio.socket.SocketType,
        side: OriginSide,
        prefix: str | None,
        now: float,
        max_message: int,
        chan_prefix: str = "",
        deflate: Deflate | None = None,
        crypt: TlsConn | None = None,
    ) -> None:
        super().__init__()
        self.id = next(_ids)
        self.app = app
        self.sock = sock
        self.fd = sock.fileno()
        self.crypt = crypt  # a TLS client's state (edge.tlsconn): the delivery path encrypts
        self.ws = WsConnection(
            max_message=max_message, inflater=Inflater(deflate) if deflate is not None else None
        )
        # permessage-deflate agreed: data messages go out compressed (edge.ws.deflate)
        self.deflate = deflate is not None
        self.side = side
        self.prefix = prefix  # None: GRIP not enabled by the origin
        self.buf = bytearray()
        self.writing = False
        # the session's nursery's cancel scope; a ParkedWs while parked (edge.parking)
        self.scope: trio.CancelScope | ParkedWs | None = None
        # the connection task's read wait: a CancelScope once closing (the reply's deadline),
        # else a Waker (edge.readtimer: no cancel scope kept per idle session), or the
        # ParkedWs of a parked session (its cancel() wakes it)
        self.read_scope: trio.CancelScope | Waker | ParkedWs | None = None
        self.last_out = now
        self.sent = 0  # bytes the delivery path wrote (the access log's count)
        self.filters: dict[str, tuple[str, ...]] = {}
        self.meta: dict[str, str] = {}
        self.channel_names: frozenset[str] = frozenset()
        self.detached = False
        self.keep_alive: wc.KeepAlive | None = None
        self.ka_last = now
        self.delayed: wc.OutMessage | None = None
        self.delayed_at = math.inf
        self.timer_at = math.inf  # when the edge's WsTimers will call due_frames (edge.wstimers)
        self._closed: trio.Event | None = None  # made on first wait (most sessions never wait)
        self.client_close: Close | None = None
        # the route's ``prefix=``: prepended to every channel the origin names (route sub=
        # channels, subscribe/unsubscribe), as Pushpin does and as HTTP holds do, so one
        # tenant's origin cannot reach another tenant's channels; events to the origin name
        # channels without it
        self.chan_prefix = chan_prefix

    def channel(self, name: str) -> str:
        """The hub's name of the origin's channel ``name`` (the route prefix prepended)."""
        return self.chan_prefix + name

    def shown(self, channel: str) -> str:
        """The origin's name of the hub's ``channel`` (the route prefix removed)."""
        p = self.chan_prefix
        return channel[len(p) :] if p and channel.startswith(p) else channel

    def __repr__(self) -> str:
        return f"<WsSession conn={self.id} fd={self.fd}>"

    @property
    def closed(self) -> trio.Event:
        """Set once our close frame is written (or the session is dropped)."""
        if self._closed is None:
            self._closed = trio.Event()
            if self.state >= DONE:
                self._closed.set()
        return self._closed

    def _set_closed(self) -> None:
        if self._closed is not None:
            self._closed.set()

    # -- what the delivery path calls ----------------------------------------------------------

    def finish(self) -> None:
        """Our close frame is fully written: only the client's close reply is awaited now."""
        self._on(FLUSHED)
        self._set_closed()
        rs = self.read_scope
        if isinstance(rs, trio.CancelScope):
            rs.deadline = min(rs.deadline, trio.current_time() + CLOSE_TIMEOUT_S)
        elif rs is not None:  # an idle wait (a Waker) or a parked session (a ParkedWs): woken,
            rs.cancel()  # it waits again with the deadline

    def kill(self, reason: str) -> None:
        if self._on(KILL) is not DEAD:
            self.reason = reason
        self._set_closed()
        if self.scope is not None:
            self.scope.cancel()

    def hint(self) -> None:
        """Nothing to refresh: a WebSocket's origin is told by events, not re-requested."""

    @property
    def cid(self) -> str:
        """The connection id (``Connection-Id`` toward a WebSocket-over-HTTP origin)."""
        return self.side.cid

    def refresh(self) -> None:
        """The ``refresh`` command: a WebSocket-over-HTTP origin is asked now (while open)."""
        if self.state is OPEN:
            self.side.refresh()

    def end_for_shutdown(self) -> None:
        """The edge is draining (``edge.ops.lifecycle``): close 1012 so the client reconnects elsewhere."""
        if self.state is OPEN:
            self.app.nursery.start_soon(self.close, 1012, "service restart")
        return None

    def cut_off(self, reason: str) -> None:
        if self.state < DONE:
            self.kill(f"resume: {reason}")

    def on_history_lost(self, channel: str) -> HistoryLost:
        """The broker lost ``channel``'s history (``edge.sync.repair``): never continue silently.

        An origin that speaks GRIP gets the TEXT event ``c:{"type": "history-lost", "channel":
        ...}`` (as for ``resume-failed``: the app resyncs its client) and the subscription goes
        on in the new epoch; with no GRIP origin to tell, the client is closed 1012 so it
        reconnects and the origin decides.
        """
        if self.state is not OPEN:
            return HistoryLost.NOTHING
        if self.prefix is None:
            self.app.nursery.start_soon(self.close, 1012, "history lost")
            return HistoryLost.TOLD
        event = (
            b"c:" + json.dumps({"type": "history-lost", "channel": self.shown(channel)}).encode()
        )
        self.app.nursery.start_soon(self._tell_origin, event)
        return HistoryLost.TOLD

    async def _tell_origin(self, event: bytes) -> None:
        if self.state < DONE:
            await self.side.client_event("TEXT", event)

    def on_publish(
        self, fmt: dict[str, Any], env: Envelope, flt: tuple[str, ...] | None
    ) -> bytes | None:
        """A published ``ws-message`` that is not a plain shared frame: bytes to send or None."""
        action = fmt.get("action", "send")
        if action == "send":
            content = fmt.get("content") or b""
            try:
                content = filters.apply(flt or (), self.meta, env.meta, self.channel_names, content)
            except filters.FilterError as exc:
                log.info("filter dropped message conn=%s channel=%s: %s", self.id, env.channel, exc)
                return None
            if content is None:
                return None
            return message_frame(dict(fmt, content=content), self.deflate)
        if action == "close":
            code = fmt.get("code")
            data = self.close_frame(code if code is not None else 1000, fmt.get("reason") or "")
            if data:
                self.side.close_published()
            return data
        if action == "refresh":
            self.side.refresh()
        return None

    def close_frame(self, code: int | None, reason: str = "") -> bytes:
        data = self.ws.close(code, reason)
        if data and self.state is OPEN:
            self._on(CLOSE)
        return data

    # -- writing (always through the delivery path) ---------------------------------------------

    async def write(self, data: bytes) -> None:
        if data and self.state < DONE:
            await self.app.deliverer.write_many([(self, [data])], trio.current_time())

    def message_bytes(self, type_: str, data: bytes) -> bytes | None:
        """The frame(s) of one message to the client; None once closing."""
        if self.state or self.ws.state is not CloseState.OPEN:
            return None
        op = _OPCODES.get(type_, OP_TEXT)
        if op >= OP_PING:
            return ws_frame(op, data[:125])
        return _frames(op, data, self.deflate)

    async def send_message(self, type_: str, data: bytes) -> None:
        frame = self.message_bytes(type_, data)
        if frame is not None:
            await self.write(frame)

    async def close(self, code: int | None = 1000, reason: str = "") -> None:
        """Send our close frame (once); the connection ends when the client answers."""
        data = self.close_frame(code, reason)
        if data:
            await self.write(data)

    # -- origin traffic (either origin side) -----------------------------------------------------

    async def from_origin(
        self, type_: str, content: bytes | None, *, single_frame: bool = True
    ) -> None:
        """One message from the origin: GRIP processing, then to the client."""
        content = content or b""
        if type_ in ("TEXT", "BINARY"):
            if self.prefix is not None:
                if type_ == "TEXT" and content.startswith(b"c:"):
                    if not single_frame:
                        return  # fragmented control messages are ignored (Pushpin)
                    try:
                        ctl = wc.parse_control(content[2:])
                    except wc.WsControlError as exc:
                        if exc.close_code:
                            await self.close(exc.close_code, exc.reason)
                        else:
                            log.warning("bad control message conn=%s: %s", self.id, exc.reason)
                        return
                    await self.control(ctl)
                    return
                stripped = wc.strip_prefix(content, self.prefix)
                if stripped[0] == "drop":
                    log.debug("dropping unprefixed message conn=%s", self.id)
                    return
                content = stripped[1]
            await self.send_message("text" if type_ == "TEXT" else "binary", content)
        elif type_ in ("PING", "PONG"):
            await self.send_message(type_.lower(), content)

    async def control(self, ctl: object) -> None:
        app = self.app
        if isinstance(ctl, wc.Subscribe):
            name = self.channel(ctl.channel)
            chans = list(app.hub.channels_of(self))
            if name not in chans and len(chans) >= wc.MAX_CHANNELS:
                log.info("subscribe ignored (over %d channels) conn=%s", wc.MAX_CHANNELS, self.id)
                return
            if ctl.filters:
                self.filters[name] = ctl.filters
            else:
                self.filters.pop(name, None)
            if name not in chans:
                self.set_channels(chans + [name])
                if ctl.prev_id is not None:
                    await self.resume(name, ctl.prev_id)  # (waits for the position itself)
                elif not app.positioned([name]):
                    # as a stream hold's head: what follows the subscribe (the origin's next
                    # messages, its next request) waits for the channel's position, so that a
                    # message published once the subscription showed is after the baseline
                    # (published earlier, the broker's answer would count it as delivered)
                    await app.wait_positioned([name])
        elif isinstance(ctl, wc.Unsubscribe):
            if ctl.channel in self.side.fixed_channels:
                return  # route sub= channels stay
            name = self.channel(ctl.channel)
            chans = [c for c in app.hub.channels_of(self) if c != name]
            self.filters.pop(name, None)
            self.set_channels(chans)
        elif isinstance(ctl, wc.Detach):
            self.detached = True
            self.side.detach()
        elif isinstance(ctl, wc.SetMeta):
            if ctl.value is None:
                self.meta.pop(ctl.name, None)
            else:
                self.meta[ctl.name] = ctl.value
        elif isinstance(ctl, wc.KeepAlive):
            self.keep_alive = ctl if ctl.message is not None else None
            self.ka_last = trio.current_time()
            self.arm_timer()
        elif isinstance(ctl, wc.SendDelayed):
            if self.delayed is not None:
                await self.flush_delayed()
            self.delayed = ctl.message
            self.delayed_at = trio.current_time() + ctl.timeout_s
            self.arm_timer()
        elif isinstance(ctl, wc.FlushDelayed):
            await self.flush_delayed()
        # SessionId: accepted, nothing to do (no session feature yet)

    def set_channels(self, channels: list[str]) -> None:
        app = self.app
        app.hub.remove(self, trio.current_time())
        app.add_session(self, channels)
        self.channel_names = frozenset(channels)

    async def resume(self, channel: str, cursor: str) -> None:
        """Reliable WebSocket: replay what came after ``cursor`` before live messages."""
        ok = await self.app.resume(self, channel, cursor)
        if not ok and self.state < DONE:
            event = {"type": "resume-failed", "channel": self.shown(channel), "prev-id": cursor}
            await self.side.client_event("TEXT", b"c:" + json.dumps(event).encode())

    async def flush_delayed(self) -> None:
        msg, self.delayed, self.delayed_at = self.delayed, None, math.inf
        if msg is not None:
            await self.send_message(msg.type, msg.content)

    # -- keep-alive and send-delayed (control messages from the origin; edge.wstimers) ----------

    def next_timer(self) -> float:
        """When the next keep-alive or delayed message is due (inf: none)."""
        side = self.side  # (None in unit tests of the timers alone)
        due = self.delayed_at if side is None else min(self.delayed_at, side.idle_due())
        ka = self.keep_alive
        if ka is not None:
            base = self.ka_last if ka.mode == "interval" else max(self.ka_last, self.last_out)
            due = min(due, base + ka.timeout_s)
        return due

    def arm_timer(self) -> None:
        due = self.next_timer()
        if due < math.inf and self.state < DONE:
            self.app.ws_timers.arm(self, due)

    def due_frames(self, now: float) -> list[bytes]:
        """What is due at ``now`` (sans-IO): the delayed message, else a keep-alive.  (A
        parked WebSocket-over-HTTP origin side's keep-alive request is started here too.)"""
        side = self.side
        if side is not None and now >= side.idle_due():
            side.kick()
        if self.state:  # closing or ended
            return []
        if now >= self.delayed_at:
            msg, self.delayed, self.delayed_at = self.delayed, None, math.inf
            data = self.message_bytes(msg.type, msg.content) if msg is not None else None
            if self.keep_alive is not None and self.keep_alive.mode == "idle":
                self.ka_last = now  # it is traffic: the idle keep-alive waits again
            return [data] if data else []
        ka = self.keep_alive
        if ka is not None and now >= self.next_timer():
            self.ka_last = now
            msg = ka.message  # never None: control() keeps no KeepAlive without a message
            data = self.message_bytes(msg.type, msg.content) if msg is not None else None
            return [data] if data else []
        return []


# -- the connection task ---------------------------------------------------------------------


async def serve_websocket(
    conn: Connection, req: Request, host: bytes, path: bytes, begin: object = None
) -> bool:
    """Serve one WebSocket client on ``conn`` (an ``httpserver.Connection``) until it ends
    (False) or parks (True: ``Connection.serve`` resumes it when woken, ``resume_websocket``)."""
    from edge.ws.over_http import WohOrigin
    from edge.ws.proxy import WsOrigin

    app = conn.app
    tls = conn.tls or claims_tls(app.rules, req.headers)
    route = pick_route(
        app.routes,
        app.rules,
        host.decode("latin-1"),
        path.decode("latin-1"),
        req.headers,
        ws=True,
        tls=tls,
    )
    conn.ws_route = route  # for the access log's line (edge.accesslog)
    if route is None:
        await conn.send_all(responses.error(502, "Route not found"))
        return False
    app.stats.request(route.id)  # stats "activity" and "counts" (edge.ops.connstats)
    try:
        key = check_handshake(req.method, req.headers)
    except HandshakeError as exc:
        await conn.send_all(exc.response())
        return False
    side_cls = WohOrigin if route.targets[0].over_http else WsOrigin
    peer = str(conn.addr[0]) if conn.addr else ""
    trusted = app.upstream.trusted_now(req.headers)  # a GRIP proxy in front (edge.upstream)
    headers = proxyrules.apply(
        app.rules, route, req.headers, tls=tls, ws=True, peer=peer, trusted=trusted
    )
    side = side_cls(app, route, headers, path)
    del headers  # (the origin side keeps what it replays: this frame lives as long as the session)
    opened = await side.open()
    if opened.reject is not None:
        await conn.send_all(opened.reject)
        return False
    # a trusted proxy in front gets the origin's extension relayed; no compression then
    deflate = (
        negotiate(req.headers) if app.cfg.allow_compression and not opened.pass_extensions else None
    )
    # the request's headers live as long as the session (the caller's frames hold ``req``):
    # keep only what its access-log line reads (edge.accesslog); the origin side has its own
    req.headers = [(k, v) for k, v in req.headers if k.lower() in _LOGGED_HEADERS]
    await conn.send_all(accept_head(key, opened.headers, deflate, opened.pass_extensions))
    now = trio.current_time()
    session = WsSession(
        app,
        conn.sock,
        side,
        opened.prefix,
        now,
        ws_max_message(app),
        chan_prefix=route.prefix or "",
        deflate=deflate,
        crypt=conn.crypt,
    )
    events = opened.events
    del opened  # the origin's response headers: not kept for the session's life
    app.ws_opened += 1
    app.stats.websocket(conn.sock, side.cid)  # a "conn" of type ws from now on (edge.connstats)
    app.websockets[side.cid] = session  # found by the refresh command (edge.ws.commands)
    if isinstance(side, WohOrigin) and app.parker.serving:
        # an idle session parks (edge.parking): no task while idle (wss too: a woken TLS
        # client's records are read through its TlsConn)
        side.parkable = True
        side.session = session
        session.set_channels([session.channel(c) for c in side.fixed_channels])
        await _positioned(app, session)
        w = ParkedWs(conn, session, req, path, begin)
        return await _run_parked(w, events, bytes(conn.upgrade_rest))
    clean = False
    try:
        async with trio.open_nursery() as nursery:
            session.scope = nursery.cancel_scope
            session.set_channels([session.channel(c) for c in side.fixed_channels])
            await _positioned(app, session)
            nursery.start_soon(side.serve, session)
            await _from_origin(session, events)
            del events
            clean = bool(await _read_client(conn, session, side, bytes(conn.upgrade_rest)))
            nursery.cancel_scope.cancel()
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("websocket ended conn=%s: %s", session.id, exc)
    finally:
        _ended(conn, session, clean)
        await side.aclose()
    if session.dead:
        log.debug("websocket dropped conn=%s: %s", session.id, session.reason)
    return False


async def _positioned(app: ConnectionServices, session: WsSession) -> None:
    """Wait until the route's ``sub=`` channels have their position (``control`` does the
    same for a subscribe): the origin's first messages go out after it."""
    chans = list(session.channel_names)
    if chans and not app.positioned(chans):
        await app.wait_positioned(chans)


def _ended(conn: Connection, session: WsSession, clean: bool) -> None:
    app = conn.app
    side = session.side
    conn.sent += session.sent  # what the delivery path wrote, for the access log
    app.websockets.pop(side.cid, None)
    session.end()
    app.remove_session(session)
    if not clean:
        side.disconnected()


class ParkedWs:
    """A parkable WebSocket (WebSocket-over-HTTP origin, plain socket): what its connection
    keeps while parked (``Connection.wsheld``, edge.parking), and, as the session's ``scope``
    and ``read_scope`` while parked, what wakes it (``cancel``: a kill, our close written)."""

    __slots__ = ("conn", "session", "req", "path", "begin")

    def __init__(
        self, conn: Connection, session: WsSession, req: Request, path: bytes, begin: Any
    ) -> None:
        self.conn, self.session = conn, session
        self.req, self.path, self.begin = req, path, begin  # the access-log line's

    def cancel(self) -> None:
        conn = self.conn
        conn.app.parker.wake(conn)


async def resume_websocket(conn: Connection) -> bool:
    """A parked WebSocket woken (``Connection.serve``, in a new task): True when it parked
    again, False once it ended (``conn.wsheld`` is then None)."""
    w = conn.wsheld
    assert w is not None
    return await _run_parked(w, None, None)


async def _run_parked(w: ParkedWs, events: list[WsEvent] | None, data: bytes | None) -> bool:
    """Run a parkable session until it parks (True) or ends (False).

    The client is read here (``_read_client`` with ``park=True``); the origin side's request
    loop (``WohOrigin.serve``) runs in the session's nursery only while a request is due
    (``WohOrigin.kick``).  Once the loop is not running and the client has nothing to read,
    the socket goes to the edge's ``Parker`` and this task returns; client input, a kick
    (``unpark``), a kill or our close written (``ParkedWs.cancel``) wake it in a new task."""
    conn, session = w.conn, w.session
    side = cast("WohOrigin", session.side)
    conn.wsheld = None
    session.read_scope = None
    side.unpark = None
    clean = parked = False
    try:
        if session.dead:  # killed while parked
            raise trio.ClosedResourceError("killed")
        async with trio.open_nursery() as nursery:
            session.scope = nursery.cancel_scope
            side.spawn = nursery.start_soon
            try:
                if side.active:  # a kick while parked
                    nursery.start_soon(side.serve, session)
                if events is not None:
                    await _from_origin(session, events)
                    del events
                r = await _read_client(conn, session, side, data, w)
                if r is None:
                    parked = True
                else:
                    clean = r
                    nursery.cancel_scope.cancel()
            finally:
                side.spawn = None
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("websocket ended conn=%s: %s", session.id, exc)
    finally:
        if not parked:
            conn.wsheld = None
            _ended(conn, session, clean)
            await side.aclose()
            if session.dead:
                log.debug("websocket dropped conn=%s: %s", session.id, session.reason)
    return parked


async def _from_origin(session: WsSession, events: list[WsEvent]) -> None:
    """The events that came with the origin's answer to OPEN (a frame of its own: nothing of
    them stays in ``serve_websocket``'s frame)."""
    for ev in events:
        await session.from_origin(ev.type, ev.content)
    events.clear()


def ws_max_message(app: ConnectionServices) -> int:
    return app.cfg.ws_max_message_bytes


async def _read_client(
    conn: Connection,
    session: WsSession,
    side: OriginSide,
    data: bytes | None,
    park: ParkedWs | None = None,
) -> bool | None:
    """Read client frames until the close handshake ends (True) or the client vanishes (False);
    with ``park`` (a parkable session, ``_run_parked``): None once it parked, instead of an
    idle wait while the origin side's request loop is not running."""
    ws = session.ws
    sock = conn.sock
    crypt = conn.crypt
    while True:
        if data:
            try:
                events = ws.receive_data(data)
            except WsError as exc:
                log.info(
                    "websocket protocol error conn=%s code=%d: %s",
                    session.id,
                    exc.close_code,
                    exc.reason,
                )
                await session.close(exc.close_code, exc.reason)
                side.disconnected()
                return True
            for ev in events:
                if isinstance(ev, Message):
                    if not session.detached:
                        await side.client_event("BINARY" if ev.binary else "TEXT", ev.data)
                elif isinstance(ev, Ping):
                    if session.detached:  # no origin to ask (Pushpin drops it): answer here
                        await session.write(ws.pong(ev.data))
                    else:  # the origin answers (a PONG event, or its pong frame), as Pushpin
                        await side.client_event("PING", ev.data or None)
                elif isinstance(ev, Pong):
                    await side.client_event("PONG", ev.data or None)
                elif isinstance(ev, Close):
                    session.client_close = ev
                    if ws.state is CloseState.CLOSED:
                        side.closed_by_client(ev.code, ev.reason)
                        return True  # it answered our close
                    await side.client_close(ev.code, ev.reason)
                    with trio.move_on_after(CLOSE_TIMEOUT_S):
                        await session.closed.wait()
                    if not ws.closed:  # (the origin's close may have come meanwhile)
                        await session.write(
                            ws.close(ev.code if ev.code is not None else None, ev.reason)
                        )
                    return True
            await side.wait_room()
        data = None
        if park is not None and not session.state and not cast("WohOrigin", side).active:
            data = read_now(sock, READ_SIZE) if crypt is None else crypt.read_now(READ_SIZE)
            if data is None:  # idle: park (edge.parking); the caller's task returns
                conn.wsheld = session.scope = session.read_scope = park
                woh = cast("WohOrigin", side)
                woh.spawn = None
                woh.unpark = park
                conn.app.parker.park(conn)
                return None
            if not data:
                return False
            continue
        if not session.state:
            # open: wait without a cancel scope (an idle session may wait for hours); finish()
            # wakes it through the socket (edge.readtimer.Waker), to wait with the deadline
            waker = session.read_scope = Waker(sock)
            try:
                # wait_readable + one read, not trio's recv: fewer frames kept per idle socket
                while data is None:
                    await wait_readable(sock)
                    data = read_now(sock, READ_SIZE) if crypt is None else crypt.read_now(READ_SIZE)
            except trio.ClosedResourceError:
                if not waker.fired:
                    raise
            finally:
                session.read_scope = None
            if data is None:
                continue  # finish(): our close is written, the client's reply is due soon
        else:
            with trio.CancelScope() as scope:
                session.read_scope = scope
                # our close is queued or written: the reply is due soon
                scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
                while data is None:
                    await wait_readable(sock)
                    data = read_now(sock, READ_SIZE) if crypt is None else crypt.read_now(READ_SIZE)
            session.read_scope = None
            if scope.cancelled_caught:
                return session.ws.state is not CloseState.OPEN
        if not data:
            return False


def woh_forbidden(route: Route, headers: Headers) -> bool:
    """A plain HTTP request carrying WebSocket events toward an ``over_http`` target (403)."""
    if not route.targets or not route.targets[0].over_http:
        return False
    ctype = _get(headers, b"content-type") or b""
    return ctype.split(b";", 1)[0].strip().lower() == b"application/websocket-events"
