"""One message to many sessions, one pass each (pure-Python twin of ``_deliver_c``).

``edge.sync.deliver.Deliverer.deliver`` calls ``send_plain`` for a batch of one message with
more than one session (a broadcast: the common case at scale), ``SLICE`` sessions at a time.
It takes the sessions whose delivery is plain and leaves every other one to the caller, which
runs the full rules on it (Pushpin's prev-id check, filters, closes, hints, long-polls).

``send_plain(members, start, stop, channel, cursor, env, gate, chunk, raw, wsmsg, ws_frame_fn,
stream_cls, ws_cls, pending, now, others, short)`` -> ``(deliveries, bytes, frame)``.  For each
session ``s`` of ``members[start:stop]``, in order:

* held by the resume gate (``gate[(s, channel)]`` exists): ``env`` is appended to it;
* an open HTTP stream (``type(s) is stream_cls``, ``s.state`` 0, ``s.track`` None, no filter
  for ``channel``) when ``chunk`` is not None: its cursor for ``channel`` becomes ``cursor``,
  and its bytes are ``chunk`` (``s.chunked``) or ``raw``;
* an open WebSocket without permessage-deflate (``type(s) is ws_cls``, ``s.state`` 0,
  ``s.deflate`` false, no filter for ``channel``) when ``wsmsg`` is not None: the same with
  ``ws_frame_fn(wsmsg)`` (built once, at the first such session; returned as ``frame``);
* any other session is appended to ``others``, untouched.

A plain session's bytes are appended to ``pending[s]`` when its socket is taken
(``s.writing``) or it has a backlog (``s.buf``, or a TLS session's queued ciphertext
``s.crypt.out``): the caller's ``write_many`` buffers them.  A TLS session's bytes are
encrypted first (``s.crypt.encrypt(data)``; if that raises, they go to ``pending[s]`` as they
were, and ``write_many`` meets the error).  Then they go out in one non-blocking ``send()`` on
``s.fd`` (MSG_DONTWAIT | MSG_NOSIGNAL in the compiled twin): a whole send is counted (the
returned deliveries and bytes; ``s.sent``, ``s.last_out = now``); a short one (``n`` bytes, 0
when it would block) or a failed one (``-errno``) is appended to ``short`` as
``(s, data, n)`` (``data``: what was sent, ciphertext for TLS), not counted: the caller
buffers, counts or drops it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _speedups._sendmany_py import send_batch


class SessionCore:
    """The fields one delivery reads and writes: the sessions' base class (pure twin).

    ``edge.sessionstate.Session`` derives from ``_speedups.SessionCore``; the compiled twin
    keeps these as C fields that ``send_plain`` reads at fixed offsets.  Unset, they are None,
    0, 0.0 or False (``__init__``), as the compiled twin's are.

    A session's cursors (channel -> cursor of the last message delivered on it) are the first
    channel's in ``cursor_ch`` / ``cursor_at`` and the others' in ``cursor_more`` (None until
    needed); ``set_cursor``, ``cursor_of`` and ``cursors`` are the API.
    """

    __slots__ = (
        "state",
        "track",
        "filters",
        "cursor_ch",
        "cursor_at",
        "cursor_more",
        "crypt",
        "buf",
        "deflate",
        "sent",
        "last_out",
        "fd",
        "chunked",
        "writing",
    )

    state: Any
    track: Any
    filters: Any
    cursor_ch: str | None
    cursor_at: Any
    cursor_more: dict[str, Any] | None
    crypt: Any
    buf: Any
    deflate: Any
    sent: int
    last_out: float
    fd: int
    chunked: bool
    writing: bool

    def __init__(self) -> None:
        self.state = self.track = self.filters = self.crypt = self.buf = self.deflate = None
        self.cursor_ch = self.cursor_at = self.cursor_more = None
        self.sent = self.fd = 0
        self.last_out = 0.0
        self.chunked = self.writing = False

    def set_cursor(self, channel: str, cursor: Any) -> None:
        """``channel``'s cursor is now ``cursor``."""
        ch0 = self.cursor_ch
        if ch0 is None or ch0 == channel:
            self.cursor_ch = channel
            self.cursor_at = cursor
        elif self.cursor_more is None:
            self.cursor_more = {channel: cursor}
        else:
            self.cursor_more[channel] = cursor

    def cursor_of(self, channel: str) -> Any:
        """``channel``'s cursor, or None when nothing was delivered on it."""
        if self.cursor_ch is not None and self.cursor_ch == channel:
            return self.cursor_at
        if self.cursor_more is not None:
            return self.cursor_more.get(channel)
        return None

    def cursors(self) -> dict[str, Any]:
        """A new dict of every channel's cursor, in the order they were first set."""
        out = {} if self.cursor_ch is None else {self.cursor_ch: self.cursor_at}
        if self.cursor_more:
            out.update(self.cursor_more)
        return out


def _queue(pending: dict[Any, list[bytes]], s: Any, data: bytes) -> None:
    """``data`` after what ``pending[s]`` holds (write_many sends or buffers it)."""
    parts = pending.get(s)
    if parts is None:
        pending[s] = [data]
    else:
        parts.append(data)


def _send_counted(s: Any, data: Any, now: float, short: list[tuple[Any, bytes, int]]) -> int:
    """One non-blocking send of ``data`` on ``s.fd``: whole, its bytes counted on the session
    and returned; short or failed, ``(s, data, n)`` appended to ``short`` and -1 returned
    (``n`` as the pure ``send_batch`` gives it: bytes taken, 0 when it would block, -errno)."""
    if type(data) is not bytes:
        data = bytes(data)
    n = send_batch([s.fd], [data])[0]
    if n == len(data):
        s.sent += n
        s.last_out = now
        return n
    short.append((s, data, n))
    return -1


def _filtered(s: Any, channel: str) -> bool:
    """A filter on ``channel`` (the general loop applies it)."""
    flt = s.filters
    return bool(flt) and bool(flt.get(channel))


def send_plain(
    members: list[Any],
    start: int,
    stop: int,
    channel: str,
    cursor: str,
    env: Any,
    gate: dict[Any, Any] | None,
    chunk: bytes | None,
    raw: bytes | None,
    wsmsg: Any,
    ws_frame_fn: Callable[[Any], bytes],
    stream_cls: type,
    ws_cls: type,
    pending: dict[Any, list[bytes]],
    now: float,
    others: list[Any],
    short: list[tuple[Any, bytes, int]],
) -> tuple[int, int, bytes | None]:
    frame: bytes | None = None
    data: Any
    deliveries = nbytes = 0
    for s in members[start:stop]:
        if gate:
            held = gate.get((s, channel))
            if held is not None:
                held.append(env)
                continue
        cls = type(s)
        if cls is stream_cls:
            if chunk is None or s.state or s.track is not None or _filtered(s, channel):
                others.append(s)
                continue
            s.set_cursor(channel, cursor)
            data = chunk if s.chunked else raw
        elif cls is ws_cls:
            if wsmsg is None or s.state or s.deflate or _filtered(s, channel):
                others.append(s)
                continue
            if frame is None:
                frame = ws_frame_fn(wsmsg)
            s.set_cursor(channel, cursor)
            data = frame
        else:
            others.append(s)
            continue
        crypt = s.crypt
        if s.writing or s.buf or (crypt is not None and crypt.out):
            _queue(pending, s, data)
            continue
        if crypt is not None:  # a TLS client: one encryption, then the same send
            try:
                data = crypt.encrypt(data)
            except Exception:  # write_many tries again and handles the error
                _queue(pending, s, data)
                continue
        n = _send_counted(s, data, now, short)
        if n >= 0:
            deliveries += 1
            nbytes += n
    return deliveries, nbytes, frame


def queue_singles(
    envs: list[Any],
    start: int,
    members_of: dict[str, Any],
    gate: dict[Any, Any] | None,
    stream_cls: type,
    ws_cls: type,
    ws_frame_fn: Callable[[Any], bytes],
    chunk_fn: Callable[[bytes], bytes],
    render_fn: Callable[[bytes, str], bytes],
    id_token: bytes,
    pending: dict[Any, list[bytes]],
    lat: Any,
    wall: float,
) -> tuple[int, int]:
    """A batch's messages of many channels, queued for the plain sessions (the pure twin).

    ``Deliverer.deliver`` calls it for a batch of several messages: from ``envs[start]`` on,
    each message that is alone on its channel in this stretch of the batch (the next message
    is on another channel), whose formats name no ``content-filters``, and whose sessions
    (``members_of[channel]``, a set, possibly missing or empty) are all plain, is taken here:

    * plain: an open HTTP stream (``type(s) is stream_cls``, ``s.state`` 0, ``s.track`` None,
      no filter for the channel) of a message with an ``http-stream`` format whose action is
      ``send``, or an open WebSocket without permessage-deflate (``type(s) is ws_cls``,
      ``s.state`` 0, ``s.deflate`` false, no filter) of a message with a ``ws-message`` format
      whose action is ``send``; or a message without the session's format (a stream without a
      filter for the channel, any WebSocket): it gets nothing; and not held by the resume gate
      (``gate[(s, channel)]``);
    * the message is counted, its latency observed once for all its sessions
      (``lat.observe(wall - env.ts, len(sessions))`` when ``lat`` is not None and ``env.ts``);
    * a stream gets the format's ``content`` as bytes, ``id_token`` rendered with the message's
      cursor (``render_fn``), framed by ``chunk_fn`` when ``s.chunked``; empty content gives
      it nothing; a WebSocket gets ``ws_frame_fn(ws-message format)``, built once; each
      appended to ``pending[s]`` and the session's cursor for the channel set.

    It stops at the first message it does not take (a run of one channel, content filters,
    or a session that is not plain: the caller's full rules deliver it, then call again from
    the next one) and returns ``(index of that message or len(envs), messages taken)``.  What
    it queues is what the caller's per-message loop queues for those messages, in the same
    order.
    """
    n = len(envs)
    i = start
    messages = 0
    gated = bool(gate)
    s: Any
    while i < n:
        env = envs[i]
        channel = env.channel
        if i + 1 < n and envs[i + 1].channel == channel:
            break  # a run of one channel: the caller joins it
        formats = env.formats
        stream = formats.get("http-stream")
        resp = formats.get("http-response")
        wsmsg = formats.get("ws-message")
        if (
            (stream is not None and "content-filters" in stream)
            or (resp is not None and "content-filters" in resp)
            or (wsmsg is not None and "content-filters" in wsmsg)
        ):
            break
        members = members_of.get(channel)
        if not members:
            messages += 1
            i += 1
            continue
        ssend = stream is not None and stream.get("action", "send") == "send"
        wsend = wsmsg is not None and wsmsg.get("action", "send") == "send"
        for s in members:
            cls = type(s)
            if cls is stream_cls:
                if stream is None:  # nothing for it (a filter's verdict could set its cursor)
                    if _filtered(s, channel):
                        return i, messages
                elif not ssend or s.state or s.track is not None or _filtered(s, channel):
                    return i, messages
            elif cls is ws_cls:
                if wsmsg is not None and (
                    not wsend or s.state or s.deflate or _filtered(s, channel)
                ):
                    return i, messages
            else:
                return i, messages
            if gated and gate.get((s, channel)) is not None:  # type: ignore[union-attr]
                return i, messages
        messages += 1
        if lat is not None and env.ts:
            lat.observe(wall - env.ts, len(members))
        cursor = env.cursor
        raw: Any = None
        chunk: Any = None
        frame: Any = None
        for s in members:
            if type(s) is not ws_cls:  # (an HTTP stream: the check above took only these two)
                if stream is None:
                    continue
                if raw is None:
                    c = stream.get("content")
                    if c is None:
                        raw = b""
                    elif isinstance(c, str):
                        raw = c.encode("utf-8")
                    else:
                        raw = bytes(c)
                    if id_token in raw:
                        raw = render_fn(raw, cursor)
                    chunk = chunk_fn(raw)
                if not raw:
                    continue
                data = chunk if s.chunked else raw
            else:
                if wsmsg is None:
                    continue
                if frame is None:
                    frame = ws_frame_fn(wsmsg)
                data = frame
            s.set_cursor(channel, cursor)
            parts = pending.get(s)
            if parts is None:
                pending[s] = [data]
            else:
                parts.append(data)
        i += 1
    return i, messages


def send_pending(
    items: list[tuple[Any, list[bytes]]],
    start: int,
    stop: int,
    now: float,
    stream_cls: type,
    ws_cls: type,
    rest: list[tuple[Any, list[bytes]]],
    short: list[tuple[Any, bytes, int]],
) -> tuple[int, int]:
    """``Deliverer.write_many``'s common case (the pure twin): for each ``(s, parts)`` of
    ``items[start:stop]``, a session of either class (``type(s)`` is ``stream_cls`` or
    ``ws_cls``) that is open (``s.state`` 0), has its socket free (not
    ``s.writing``), no backlog (``s.buf``) and no TLS (``s.crypt`` None) gets ``parts`` joined
    in one non-blocking send on ``s.fd``; nothing when they are empty.  A whole send is counted
    (the returned deliveries and bytes; ``s.sent``, ``s.last_out = now``), a short or failed
    one appended to ``short`` as ``(s, data, n)`` (``n`` as ``send_batch`` gives it).  Every
    other entry goes to ``rest`` untouched, in order, for the caller's rules (buffering,
    closing, TLS, sessions already done).  Returns ``(deliveries, bytes)``."""
    deliveries = nbytes = 0
    for entry in items[start:stop]:
        s, parts = entry
        cls = type(s)
        plain = cls is stream_cls or cls is ws_cls
        if not plain or s.state or s.writing or s.buf or s.crypt is not None:
            rest.append(entry)
            continue
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if not data:
            continue
        n = _send_counted(s, data, now, short)
        if n >= 0:
            deliveries += 1
            nbytes += n
    return deliveries, nbytes
