"""The delivery hot path: tracked broker messages -> bytes on client sockets.

Per batch (DESIGN.md "Measured facts"): each message is encoded once per transport (one
``http_chunk`` for every chunked HTTP stream, the raw content for HTTP/1.0 streams, one
response per long-poll hold); each stream session's pending bytes for the batch are joined and
written with ONE non-blocking ``send()`` per connection, all in one ``send_batch`` call per
~1,000 sockets, with a checkpoint between slices.  A batch of one message to many sessions
(a broadcast) takes one compiled pass per session instead (``_speedups.send_plain``: checked,
cursor set, sent), the same slices apart; only the sessions that are not plain (filters,
prev-ids, closes, long-polls, backlogs) go the general way.  A connection that would
block keeps the rest in its own bounded buffer and gets a writer task; one whose buffer passes
``buffer_limit`` is dropped (the client resumes with its cursor) and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from ssl import SSLError
from typing import TYPE_CHECKING, Any

import trio

from _speedups import http_chunk, queue_singles, send_batch, send_pending, send_plain
from edge.grip import filters
from edge.grip.jsonpatch import PatchError, patch_body
from edge.grip.nextlink_track import Verdict
from edge.grip.session import ResponseSession, StreamSession
from edge.grip.sseid import ID_TOKEN, render_ids
from edge.http1 import responses
from edge.sessionstate import CLOSING, DEAD, DONE, Session
from edge.ws.session import WsSession
from edge.ws.session import message_frame as ws_message_frame

if TYPE_CHECKING:
    from broker.histogram import IntHistogram
    from broker.wire import Envelope
    from edge.sync.hub import Hub
    from edge.sync.resume import _Gate

log = logging.getLogger(__name__)

SLICE = 1000
WRITE_CHUNK = 256 * 1024
# a backlog's write starts at WRITE_CHUNK and follows what the socket takes (twice the last
# partial write, at least MIN_WRITE_CHUNK): a reader that takes a few KiB a wake-up must not
# cost a copy of the whole chunk per send()
MIN_WRITE_CHUNK = 16 * 1024


@dataclass(frozen=True, slots=True)
class DeliveryStatistics:
    messages: int
    deliveries: int
    bytes_sent: int
    backlogged: int
    overflows: int
    send_errors: int
    writers: int
    # slow consumers right now (connections with a backlog): how many, the largest backlog
    # in bytes, and the longest time one has been behind (see ``Deliverer.lag``)
    lagging: int = 0
    max_buffered_bytes: int = 0
    max_lag_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ConnectionLag:
    """One slow connection: unsent bytes queued, and seconds since its backlog began."""

    conn: int
    buffered_bytes: int
    behind_s: float


def _content(fmt: dict[str, Any]) -> bytes:
    c = fmt.get("content")
    if c is None:
        return b""
    return c.encode("utf-8") if isinstance(c, str) else bytes(c)


def _ids(s: StreamSession | ResponseSession, env: Envelope) -> dict[str, str | None]:
    """The session's channel ids as ``build-id`` sees them while ``env`` is delivered."""
    seen = s.cursors() if type(s) is StreamSession else {}  # a long-poll gets one message
    return filters.prev_ids(
        ((c.name, c.prev_id) for c in s.hold.channels), seen, env.channel, env.cursor
    )


def _filter_failed(s: StreamSession | ResponseSession, env: Envelope, reason: str) -> bytes:
    """A content filter failed, or the format's ``content-filters`` do not match the
    subscription's: as Pushpin 1.36, a stream ends (the bytes returned end it) and a
    long-poll is answered 502."""
    log.info("filter error conn=%s channel=%s: %s", s.id, env.channel, reason)
    if isinstance(s, StreamSession):
        told = f"\n\n{reason}\n".encode() if s.debug else b""  # debug routes: the reason
        if told and s.chunked:
            told = http_chunk(told)
        return told + s.close()
    text = reason if s.debug else "Error while proxying to origin."
    s.respond(responses.error(502, text, keep_alive=s.keep_alive))
    return b""


def _plain(env: Envelope) -> tuple[bytes | None, dict[str, Any] | None]:
    """What a plain stream gets of ``env`` (its content, ids rendered) and a plain WebSocket's
    ``ws-message`` format; None for a format that is not a plain send (another action,
    absent), both None when any format names content filters."""
    formats = env.formats
    st = formats.get("http-stream")
    resp = formats.get("http-response")
    ws = formats.get("ws-message")
    if (
        (st is not None and "content-filters" in st)
        or (resp is not None and "content-filters" in resp)
        or (ws is not None and "content-filters" in ws)
    ):
        return None, None
    raw = None
    if st is not None and st.get("action", "send") == "send":
        raw = _content(st)
        if ID_TOKEN in raw:  # "id: %(id)s" -> the message's cursor
            raw = render_ids(raw, env.cursor)
    if ws is not None and ws.get("action", "send") != "send":
        ws = None
    return raw, ws


def _rendered_response(
    r: dict[str, Any], s: ResponseSession, env: Envelope, flt: tuple[str, ...]
) -> dict[str, Any]:
    """A published ``http-response`` through the poll's content filters: its ``body``, or the
    timeout body with its ``body-patch`` applied (Pushpin filters the patched body)."""
    body = r.get("body")
    if body is None:
        patch = r.get("body-patch")
        if patch is None:
            return r
        try:
            body = patch_body(s.hold.body, patch)
        except PatchError:
            body = s.hold.body  # Pushpin keeps the timeout body when the patch does not apply
    elif isinstance(body, str):
        body = body.encode("utf-8")
    if not body:
        return r
    return dict(r, body=filters.render(flt, s.meta, bytes(body), _ids(s, env)))


# sessions whose one-session replays are paced by their socket
_PACED = (StreamSession, WsSession)
Writable = StreamSession | WsSession


class Deliverer:
    def __init__(self, hub: Hub[Session], buffer_limit: int, spawn: Callable[..., Any]) -> None:
        self.hub = hub
        self.buffer_limit = buffer_limit
        self._spawn = spawn  # spawn(async_fn, *args): start a task in the server's nursery
        # (session, channel) -> live envelopes held while that session catches up (edge.resume)
        self.gate: dict[tuple[Session, str], _Gate] = {}
        self._messages = self._deliveries = self._bytes = 0
        self.latency: IntHistogram | None = (
            None  # an IntHistogram (edge.metrics): broker receive -> delivery
        )
        self._backlogged = self._overflows = self._errors = self._writers = 0
        self._lag_since: dict[
            Writable, float
        ] = {}  # session with a writer task -> when its backlog began
        self._pacing: Session | None = (
            None  # the session a paced replay group is being delivered to
        )

    async def deliver(self, envs: list[Envelope], now: float, only: Session | None = None) -> None:
        """Hand a batch of in-order envelopes to every subscribed session (or to ``only``,
        bypassing the resume gate: ``edge.sync.resume`` replaying to one session)."""
        if (
            only is not None
            and len(envs) > 1
            and only is not self._pacing
            and isinstance(only, _PACED)
        ):
            await self._deliver_paced(envs, now, only)
            return
        pending: dict[Writable, list[bytes]] = {}
        lat = self.latency
        wall = time.time() if lat is not None else 0.0
        gate = self.gate
        ws_cls, stream_cls = WsSession, StreamSession  # dispatch on type (locals: the hot loop)
        deliver_now, gap = Verdict.DELIVER, Verdict.GAP
        items: Iterable[tuple[Envelope, Collection[Session] | None]]
        if only is None and len(envs) > 1:
            # runs of messages on one channel: each plain stream's bytes joined once (_runs)
            items = self._runs(envs, pending, lat, wall)
        else:
            items = [(env, None) for env in envs]
        for env, members in items:
            if members is None:  # (not in a run: counted here)
                members = (only,) if only is not None else self.hub.sessions(env.channel)
                self._messages += 1
                if not members:
                    continue
                if lat is not None and env.ts:
                    lat.observe(wall - env.ts, len(members))
            elif not members:
                continue  # a run's message whose every session was a plain stream
            formats = env.formats
            stream = formats.get("http-stream")
            resp = formats.get("http-response")
            wsmsg = formats.get("ws-message")
            # once per message, not per session: the cursor every delivery records, and the
            # formats' actions
            channel, cursor = env.channel, env.cursor
            saction = stream.get("action", "send") if stream is not None else None
            ws_send = wsmsg is not None and wsmsg.get("action", "send") == "send"
            chunk: bytes | None
            raw: bytes | None
            wsframe: bytes | None
            wsframe_z: bytes | None
            data: bytes | None
            chunk = raw = wsframe = wsframe_z = None
            patched: dict[bytes, bytes] | None = (
                None  # body-patch results by timeout body, for this message's polls
            )
            # a format's "content-filters" must match each subscription's (rare: a publisher
            # that uses build-id or var-subst); one test per message otherwise
            cf = (
                (stream is not None and "content-filters" in stream)
                or (resp is not None and "content-filters" in resp)
                or (wsmsg is not None and "content-filters" in wsmsg)
            )
            if not cf and only is None and len(envs) == 1 and len(members) > 1:
                # one message to many: the common case in compiled code
                # (_speedups.send_plain), one pass per open plain stream or WebSocket (its
                # cursor set, its bytes sent), SLICE sessions between checkpoints; the loop
                # below takes the others (filters, prev-ids, closes, long-polls, backlogs)
                if stream is not None and saction == "send":
                    raw = _content(stream)
                    if ID_TOKEN in raw:  # "id: %(id)s" -> the message's cursor
                        raw = render_ids(raw, cursor)
                    chunk = http_chunk(raw)
                group = members if isinstance(members, list) else list(members)
                others: list[Session] = []
                for start in range(0, len(group), SLICE):
                    if start:
                        await trio.lowlevel.checkpoint()
                    short: list[tuple[Writable, bytes, int]] = []
                    sent, nbytes, frame = send_plain(
                        group,
                        start,
                        start + SLICE,
                        channel,
                        cursor,
                        env,
                        gate,
                        chunk if raw else None,
                        raw,
                        wsmsg if ws_send else None,
                        ws_message_frame,
                        stream_cls,
                        ws_cls,
                        pending,
                        now,
                        others,
                        short,
                    )
                    self._deliveries += sent
                    self._bytes += nbytes
                    if frame is not None:
                        wsframe = frame
                    for w, sdata, n in short:
                        self._sent_short(w, sdata, n, now)
                if not others:
                    continue
                members = others
            # ``s`` is dispatched on its exact type through locals (``cls is ws_cls``), which
            # mypy cannot narrow on: each branch uses the attributes of its session class
            s: Any
            for s in members:
                if gate and only is None:
                    held = gate.get((s, channel))
                    if held is not None:
                        held.append(env)
                        continue
                cls = type(s)
                if cls is not ws_cls:
                    tr = s.track  # None unless prev-ids are checked or an update is under way
                    if (
                        tr is not None
                        and not s.state
                        and (stream if cls is stream_cls else resp) is not None
                    ):
                        # Pushpin's prev-id check, before filters (edge.grip.nextlink_track)
                        verdict = tr.admit(env)
                        if verdict is not deliver_now:
                            if verdict is gap:
                                s.on_gap()
                            continue
                flt = s.filters
                if flt:
                    flt = flt.get(channel)
                if cf and not self._content_filters_match(s, cls, flt, env, pending):
                    continue
                if flt and not filters.allowed(flt, s.meta, env.meta, s.channel_names):
                    if cls is stream_cls and not s.state:
                        # Pushpin advances a stream's id past a filtered-out item too (its
                        # next link's Grip-Last, build-id's other channels)
                        s.set_cursor(channel, cursor)
                    continue
                if cls is ws_cls:  # edge.ws: one frame per message, the same bytes for all
                    if wsmsg is None or s.state:  # not OPEN (edge.sessionstate)
                        continue
                    if ws_send and not (flt and filters.changes_content(flt)):
                        if not s.deflate:
                            if wsframe is None:
                                wsframe = ws_message_frame(wsmsg)
                            data = wsframe
                        else:  # permessage-deflate: compressed once per message as well
                            if wsframe_z is None:
                                wsframe_z = ws_message_frame(wsmsg, True)
                            data = wsframe_z
                    else:
                        data = s.on_publish(wsmsg, env, flt)  # close, refresh, var-subst
                        if not data:
                            continue
                    s.set_cursor(channel, cursor)
                    parts = pending.get(s)
                    if parts is None:
                        pending[s] = [data]
                    else:
                        parts.append(data)
                    continue
                if cls is stream_cls:
                    if stream is None or s.state:  # not OPEN
                        continue
                    action = saction
                    if action == "send":
                        if chunk is None:  # raw and chunk are set together
                            raw = _content(stream)
                            if ID_TOKEN in raw:  # "id: %(id)s" -> the message's cursor
                                raw = render_ids(raw, cursor)
                            chunk = http_chunk(raw)
                        if not raw:
                            continue
                        data = chunk if s.chunked else raw
                        if flt and filters.changes_content(flt):
                            # Pushpin's format language owns "%" here: the content as
                            # published, not with edge.grip.sseid's "%(id)s" rendered
                            try:
                                data = filters.render(flt, s.meta, _content(stream), _ids(s, env))
                            except filters.FilterError as exc:
                                data = _filter_failed(s, env, f"filter error: {exc}")
                            else:
                                if not data:
                                    continue
                                if s.chunked:
                                    data = http_chunk(data)
                        s.set_cursor(channel, cursor)
                    elif action == "close":
                        data = s.close()  # OPEN -> CLOSING: the final chunk
                    else:
                        s.hint()  # "hint": fetch the next link now
                        continue
                    parts = pending.get(s)
                    if parts is None:
                        pending[s] = [data]
                    else:
                        parts.append(data)
                elif resp is not None and not s.state:  # a long-poll not answered yet
                    if resp.get("action", "send") == "send":
                        try:
                            r = resp
                            if flt and filters.changes_content(flt):
                                r = _rendered_response(r, s, env, flt)
                            if r.get("body") is None and r.get("body-patch") is not None:
                                if patched is None:
                                    patched = {}
                                s.respond(
                                    responses.published(
                                        s.hold, r, keep_alive=s.keep_alive, patched=patched
                                    )
                                )
                            else:
                                s.respond(responses.published(s.hold, r, keep_alive=s.keep_alive))
                            self._deliveries += 1
                        except filters.FilterError as exc:
                            _filter_failed(s, env, f"filter error: {exc}")
                        except (TypeError, ValueError, RecursionError) as exc:
                            # one session's answer (a patch past edge.jsonpatch's limits is a
                            # PatchError: the timeout body goes out); never the edge
                            log.warning(
                                "bad http-response format channel=%s seq=%s: %s",
                                env.channel,
                                env.seq,
                                exc,
                            )
                    else:
                        s.hint()  # "hint": re-request the origin
        if pending:
            await self.write_many(list(pending.items()), now)

    def _runs(
        self,
        envs: list[Envelope],
        pending: dict[Writable, list[bytes]],
        lat: IntHistogram | None,
        wall: float,
    ) -> Iterator[tuple[Envelope, Collection[Session] | None]]:
        """``deliver``'s messages, with runs of two or more consecutive plain messages on one
        channel taken apart: a message going to many clients at a high rate comes in batches
        of many messages of one channel, and a session that is a plain open HTTP stream (no
        prev-id check, no filters, not catching up) or a plain open WebSocket gets the run's
        bytes joined once for all such sessions and its cursor set once, not a pass per
        message.  Yields ``(env, None)`` outside runs (``deliver`` looks the members up), and
        for a run's messages ``(env, the other sessions)``, which ``deliver`` takes one
        message at a time as before; the plain sessions' bytes are queued when the run
        starts, so every session's bytes stay in message order."""
        n = len(envs)
        i = 0
        members_of = self.hub.members_map()
        gate = self.gate
        while i < n:
            env = envs[i]
            ch = env.channel
            if i + 1 == n or envs[i + 1].channel != ch:  # (many channels: the usual case)
                # messages alone on their channel whose sessions are all plain: queued in
                # compiled code (_speedups.queue_singles); it stops at the first it leaves
                # to the full rules, which take that one here
                j, taken = queue_singles(
                    envs,
                    i,
                    members_of,
                    gate,
                    StreamSession,
                    WsSession,
                    ws_message_frame,
                    http_chunk,
                    render_ids,
                    ID_TOKEN,
                    pending,
                    lat,
                    wall,
                )
                self._messages += taken
                if j > i:
                    i = j
                    continue
                yield env, None
                i += 1
                continue
            raw, wsmsg = _plain(env)
            raws, wsmsgs = [raw], [wsmsg]
            streams, sockets = raw is not None, wsmsg is not None  # what the run can join
            j = i + 1
            while (streams or sockets) and j < n and envs[j].channel == ch:
                r, w = _plain(envs[j])
                if not ((streams and r is not None) or (sockets and w is not None)):
                    break
                streams, sockets = streams and r is not None, sockets and w is not None
                raws.append(r)
                wsmsgs.append(w)
                j += 1
            if j - i < 2:
                yield env, None
                i += 1
                continue
            members = self.hub.sessions(ch)
            others: list[Session] = []
            if members:
                gate = self.gate
                stream_cls, ws_cls = StreamSession, WsSession
                last = None  # the cursor of the run's last message with stream content
                if streams:
                    for k in range(j - 1, i - 1, -1):
                        if raws[k - i]:
                            last = envs[k].cursor
                            break
                chunked = plain = frames = frames_z = b""
                if last is not None:
                    chunked = b"".join([http_chunk(r) for r in raws if r])
                    plain = b"".join([r for r in raws if r])
                last_ws = envs[j - 1].cursor if sockets else None
                s: Any
                for s in members:
                    cls = type(s)
                    if s.state or (s.filters and s.filters.get(ch)) or (gate and (s, ch) in gate):
                        others.append(s)
                        continue
                    if cls is stream_cls and last is not None and s.track is None:
                        s.set_cursor(ch, last)
                        data = chunked if s.chunked else plain
                    elif cls is ws_cls and last_ws is not None:
                        s.set_cursor(ch, last_ws)
                        if not s.deflate:
                            if not frames:
                                frames = b"".join(
                                    [ws_message_frame(w) for w in wsmsgs if w is not None]
                                )
                            data = frames
                        else:  # permessage-deflate: each message compressed, as one by one
                            if not frames_z:
                                frames_z = b"".join(
                                    [ws_message_frame(w, True) for w in wsmsgs if w is not None]
                                )
                            data = frames_z
                    elif cls is stream_cls and streams and last is None and s.track is None:
                        continue  # a run without stream content: nothing, as one by one
                    else:
                        others.append(s)
                        continue
                    parts = pending.get(s)
                    if parts is None:
                        pending[s] = [data]
                    else:
                        parts.append(data)
            for k in range(i, j):
                env = envs[k]
                self._messages += 1
                if lat is not None and env.ts and members:
                    lat.observe(wall - env.ts, len(members))
                yield env, others
            i = j

    def _content_filters_match(
        self,
        s: Any,
        cls: type,
        flt: tuple[str, ...] | None,
        env: Envelope,
        pending: dict[Writable, list[bytes]],
    ) -> bool:
        """True to go on delivering ``env`` to ``s``; False when the format ``s`` would get
        names ``content-filters`` other than the subscription's (Pushpin's check comes before
        the delivery filters): a WebSocket message is dropped, a stream ends, a long-poll is
        answered 502."""
        if cls is WsSession:
            fmt = env.formats.get("ws-message")
        elif cls is StreamSession:
            fmt = env.formats.get("http-stream")
        else:
            fmt = env.formats.get("http-response")
        if fmt is None or s.state:  # not OPEN: nothing is delivered anyway
            return True
        published = fmt.get("content-filters")
        if filters.content_match(flt, published):
            return True
        reason = filters.mismatch_reason(flt, published or ())
        if cls is WsSession:
            log.debug("dropped message conn=%s channel=%s: %s", s.id, env.channel, reason)
            return False
        data = _filter_failed(s, env, reason)
        if cls is StreamSession:
            s.set_cursor(env.channel, env.cursor)
            parts = pending.get(s)
            if parts is None:
                pending[s] = [data]
            else:
                parts.append(data)
        return False

    async def _deliver_paced(self, envs: list[Envelope], now: float, s: Writable) -> None:
        """A replay to one stream or WebSocket session, paced by its socket: groups of at most half the
        buffer limit, each written once the previous one has drained, so a catch-up longer
        than ``buffer_limit`` completes instead of tripping the slow-consumer cut-off (the
        limit is for live delivery, where one connection must not hold up the others)."""
        budget = max(1, self.buffer_limit // 2)
        group: list[Envelope] = []
        size = 0
        fmt_name = "ws-message" if type(s) is WsSession else "http-stream"
        for env in envs:
            fmt = env.formats.get(fmt_name) or {}
            n = len(fmt.get("content") or b"") + 16
            if group and size + n > budget:
                await self._send_group(group, now, s)
                group, size = [], 0
            group.append(env)
            size += n
        if group:
            await self._send_group(group, now, s)

    async def _send_group(self, group: list[Envelope], now: float, s: Writable) -> None:
        # wait while its writer task drains the backlog (not while the connection task owns
        # the socket before the response head: it is the one awaiting this replay)
        while s.buf and s in self._lag_since and s.state < DONE:
            await trio.sleep(0.005)
        if s.state >= DONE:
            return
        self._pacing = s
        try:
            await self.deliver(group, now, only=s)
        finally:
            self._pacing = None

    async def write_many(self, items: Sequence[tuple[Writable, list[bytes]]], now: float) -> None:
        """Write ``[(session, [bytes, ...]), ...]``: one send per connection."""
        done_, closing = DONE, CLOSING  # states as locals: compared once per session
        if type(items) is not list:
            items = list(items)
        for start in range(0, len(items), SLICE):
            if start:
                await trio.lowlevel.checkpoint()
            # the open, idle, plain-text sessions: sent in compiled code; the rest below
            rest: list[tuple[Writable, list[bytes]]] = []
            short: list[tuple[Writable, bytes, int]] = []
            sent, nbytes = send_pending(
                items, start, start + SLICE, now, StreamSession, WsSession, rest, short
            )
            self._deliveries += sent
            self._bytes += nbytes
            for s, data, n in short:
                self._sent_short(s, data, n, now)
            fds: list[int] = []
            datas: list[bytes] = []
            targets: list[Writable] = []
            for s, parts in rest:
                if s.state >= done_:
                    continue  # checked here, after any checkpoint: the fd may be gone
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                crypt = s.crypt
                if s.writing or s.buf or (crypt is not None and crypt.out):
                    self._buffer(s, data)
                elif not data:
                    if s.state is closing:
                        s.finish()
                else:
                    if crypt is not None:  # a TLS client: this batch is one encryption
                        try:
                            data = crypt.encrypt(data)
                        except SSLError as exc:  # its TLS is broken: this connection only
                            self._errors += 1
                            s.kill(f"tls write failed: {exc.reason or exc}")
                            continue
                    fds.append(s.fd)
                    datas.append(data)
                    targets.append(s)
            if not fds:
                continue
            results = send_batch(fds, datas)
            for s, data, n in zip(targets, datas, results):
                if n == len(data):
                    self._deliveries += 1
                    self._bytes += n
                    s.sent += n
                    s.last_out = now
                    if s.state is closing:
                        s.finish()
                else:
                    self._sent_short(s, data, n, now)

    def _sent_short(self, s: Writable, data: bytes, n: int, now: float) -> None:
        """A send that took ``n`` bytes of ``data`` (0: it would block), or failed (-errno)."""
        if n >= 0:
            self._bytes += n
            s.sent += n
            if n:
                s.last_out = now
            crypt = s.crypt
            if crypt is None:
                self._buffer(s, data[n:])
            else:  # ciphertext, sequenced: it leaves before anything encrypted later
                crypt.out += data[n:]
                self._buffer(s, b"")
        else:
            self._errors += 1
            s.kill(f"send failed errno={-n}")

    def _buffer(self, s: Writable, data: bytes) -> None:
        s.buf += data
        crypt = s.crypt
        if len(s.buf) + (0 if crypt is None else len(crypt.out)) > self.buffer_limit:
            self._overflows += 1
            since = self._lag_since.get(s)
            behind = trio.current_time() - since if since is not None else 0.0
            log.info(
                "slow client cut off conn=%s buffered=%d limit=%d behind_s=%.1f "
                "(it resumes with its cursor)",
                s.id,
                len(s.buf),
                self.buffer_limit,
                behind,
            )
            s.buf.clear()
            s.kill("buffer overflow")
            return
        if not s.writing:
            s.writing = True
            self._backlogged += 1
            self._lag_since[s] = trio.current_time()
            self._spawn(self.drain, s)

    def lag(self, now: float) -> list[ConnectionLag]:
        """The connections that are behind right now (their socket would block)."""
        return [
            ConnectionLag(s.id, len(s.buf), now - t)
            for s, t in self._lag_since.items()
            if s.state is not DEAD
        ]

    async def drain(self, s: Writable) -> None:
        """Writer task: flush one session's backlog as the socket accepts it."""
        self._writers += 1
        crypt = s.crypt
        size = WRITE_CHUNK
        try:
            # ended: the fd may be reused (test_sessionstate)
            while (s.buf or (crypt is not None and crypt.out)) and s.state < DONE:
                try:
                    await trio.lowlevel.wait_writable(s.sock)
                except trio.ClosedResourceError:
                    # a hint or recover wakes the connection task's wait on this socket with
                    # notify_closing (edge.readtimer.Waker), and that wakes this wait too: only
                    # a socket really closed (or a session ended) ends the backlog
                    if s.state >= DONE or s.sock.fileno() == -1:
                        s.kill("closed")
                        return
                    continue
                except OSError:
                    s.kill("closed")
                    return
                if s.state >= DONE:
                    return
                if crypt is None:
                    chunk = _head(s.buf, size)
                else:  # a TLS client: queued ciphertext first, then the backlog encrypted
                    if not crypt.out:
                        try:
                            crypt.queue(s.buf[:WRITE_CHUNK])
                        except SSLError as exc:
                            self._errors += 1
                            s.kill(f"tls write failed: {exc.reason or exc}")
                            return
                        del s.buf[:WRITE_CHUNK]
                    chunk = _head(crypt.out, size)
                n = send_batch([s.fd], [chunk])[0]
                size = _next_chunk(size, len(chunk), n)
                if n < 0:
                    self._errors += 1
                    s.kill(f"send failed errno={-n}")
                    return
                if n:
                    del (s.buf if crypt is None else crypt.out)[:n]
                    self._bytes += n
                    s.sent += n
                    s.last_out = trio.current_time()
        finally:
            self._writers -= 1
            s.writing = False
            self._lag_since.pop(s, None)
        if s.state is CLOSING and not s.buf and (crypt is None or not crypt.out):
            s.finish()

    def statistics(self) -> DeliveryStatistics:
        return DeliveryStatistics(
            messages=self._messages,
            deliveries=self._deliveries,
            bytes_sent=self._bytes,
            backlogged=self._backlogged,
            overflows=self._overflows,
            send_errors=self._errors,
            writers=self._writers,
            **self._lag_summary(),
        )

    def _lag_summary(self) -> dict[str, Any]:
        if not self._lag_since:
            return {}
        try:
            now = trio.current_time()
        except RuntimeError:  # outside trio
            return {"lagging": len(self._lag_since)}
        lags = self.lag(now)
        return {
            "lagging": len(lags),
            "max_buffered_bytes": max((c.buffered_bytes for c in lags), default=0),
            "max_lag_s": max((c.behind_s for c in lags), default=0.0),
        }


def _head(buf: bytearray, size: int) -> bytes:
    """The first ``size`` bytes of ``buf`` as bytes, copied once (a bytearray slice would copy
    twice); the view is released before the caller resizes ``buf``."""
    with memoryview(buf) as view:
        return bytes(view[:size])


def _next_chunk(size: int, offered: int, sent: int) -> int:
    """The next write's size after ``sent`` of ``offered`` bytes left: twice a partial write (at
    least MIN_WRITE_CHUNK), doubling back up to WRITE_CHUNK while whole writes go out."""
    if sent < offered:
        return max(MIN_WRITE_CHUNK, min(WRITE_CHUNK, 2 * sent))
    return min(WRITE_CHUNK, 2 * size)
