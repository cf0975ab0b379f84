"""The broker's fan-out frames, built and sent in one loop (pure-Python twin of ``_fanout_c``).

A fan-out frame is ``broker.wire``'s contract: ``channel utf-8 + b"\\0" + msgpack`` of the
envelope map ``broker.wire.envelope_map(env)`` (keys ``broker.wire.ENVELOPE_FIELDS``, in that
order, ``msgpack.Packer(use_bin_type=True)``): this twin writes no field name of its own.  ``env`` is anything with those attributes and
``channel`` (``broker.wire.Envelope``).

``make_envelope(cls, channel, seq, epoch, formats, id, prev_id, meta, ts)``: a new ``cls``
(``broker.wire.Envelope``, a frozen slotted class with those fields) without its ``__init__``
(the frozen dataclass sets each field through ``object.__setattr__``: 3x slower).

``encode_envelopes(envs)``: the frames of ``envs``, a list of bytes.

``fan_out(sock, envs, live, recent, batch=None, batch_bytes=BATCH_BYTES)``: the broker's
fan-out step for one sequenced batch.  First, for each run of consecutive envelopes of one
channel, ``recent[channel] = (epoch, seq)`` of the run's last envelope (what an item-by-item
loop leaves behind, in the same key order).  Then each envelope whose channel is in ``live`` is encoded
and sent on the pyzmq socket ``sock`` without blocking (``sock.send(frame, zmq.NOBLOCK)``);
returns ``(sent, would_block)``, counted in envelopes.  With ``batch`` (a topic, bytes) the
frames go as few messages: ``batch`` followed, per frame, by its length (4 bytes, big-endian)
and the frame, a message closed before it would pass ``batch_bytes`` (a frame longer than
that goes alone in one); a message that would hold one frame is sent as that plain frame.
Other ZeroMQ errors raise as ``sock.send`` raises them; an envelope that cannot be encoded
raises what ``msgpack`` raises, after the frames before it were sent (those batched before it
are sent first).

``split_batch(frame, start, wanted)``: the channel frames of a batch message (``frame`` from
offset ``start``, after its topic) whose channel (utf-8, the bytes before the first NUL) is in
``wanted`` (a set of bytes), in order; ``ValueError`` when a length runs past the end (the
frames before it are lost with it: the caller counts the message as bad).

``send_frames(sock, frames)``: send each bytes object of the list ``frames`` as one message on
``sock`` without blocking (the broker's stats packets and trailing markers: one call per batch,
no pyzmq call per frame in the compiled twin); returns ``(sent, would_block)`` like ``fan_out``.

``message_packets(envs, live, subs, chan_subs, head, transports)``: the broker's Pushpin-style
``message`` stats packets (``broker.ops.stats.StatsEncoder.messages``, tnetstring): for each
envelope whose channel is in ``live``, one packet per transport of its ``formats`` with
receivers: ``subs[(mode, channel)]`` (mode from ``TRANSPORT_MODE``; a transport without a mode
has none) when ``channel`` is in ``chan_subs``, else 1; a count <= 0 sends nothing.  ``head``
is the packet's first field (``from``); ``transports`` caches each transport's field (filled
here).  The bytes equal ``packet("message", {...})``'s (tests/broker/test_stats.py).

``recv_frames(sock, limit)``: up to ``limit`` single-frame messages ready on ``sock`` now, as
bytes (the edges' SUB and DEALER readers; the compiled twin reads with libzmq's
``zmq_msg_recv``: no pyzmq call per frame and no ``zmq.Again`` raised at the end of a batch).

``recv_single(sock, limit)``: up to ``limit`` messages ready on ``sock`` now: those of one frame
as bytes, and the number of messages of more than one frame, read whole and left out
(``(frames, multipart)``; the broker's PULL input, where Pushpin refuses a message with
``parts != 1``: the compiled twin reads with ``zmq_msg_recv`` and ``zmq_msg_more``).

``decode_envelopes(frames, cls)``: for each fan-out frame, the ``cls`` (``broker.wire.Envelope``)
it carries, or None when it is not an envelope of exactly the wire's types (the edge's reader,
issue 16: one call per batch).  An Envelope when: a channel (valid UTF-8, at least one byte)
before the first NUL, then a msgpack map (``msgpack.unpackb`` with its defaults: str keys only)
without a ``"marker"`` key, whose ``seq`` is an int (not a bool), ``epoch`` a str, ``formats``
and ``meta`` dicts, ``id`` and ``prev_id`` None or a str, ``ts`` a float or an int (made a
float); the other keys are ignored.  That Envelope equals ``broker.wire.decode_frame``'s.  None
for everything else (a marker, a heartbeat, a bad frame, an envelope of other types): the caller
reads those with ``broker.wire.decode_frame``, which decides and reports.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack
import zmq

# the contract; ``envelope_map`` is read at call time (``broker.wire`` imports ``_speedups``)
from broker import wire as _wire

if TYPE_CHECKING:
    from broker.wire import Envelope

_T = TypeVar("_T")

_pack = msgpack.Packer(use_bin_type=True).pack
_SEP = b"\x00"
_FIELDS = ("channel", "seq", "epoch", "formats", "id", "prev_id", "meta", "ts")
_setters: dict[type, tuple[Any, ...]] = {}
if TYPE_CHECKING:

    def _new(cls: type[_T]) -> _T: ...  # object.__new__, typed for the class it makes
else:
    _new = object.__new__


def make_envelope(
    cls: type[_T],
    channel: str,
    seq: int,
    epoch: str,
    formats: dict[str, dict[str, Any]],
    id: str | None,
    prev_id: str | None,
    meta: dict[str, str],
    ts: float,
) -> _T:
    setters = _setters.get(cls)
    if setters is None:
        setters = _setters[cls] = tuple(getattr(cls, n).__set__ for n in _FIELDS)
    env = _new(cls)
    s_channel, s_seq, s_epoch, s_formats, s_id, s_prev, s_meta, s_ts = setters
    s_channel(env, channel)
    s_seq(env, seq)
    s_epoch(env, epoch)
    s_formats(env, formats)
    s_id(env, id)
    s_prev(env, prev_id)
    s_meta(env, meta)
    s_ts(env, ts)
    return env


def encode_envelopes(envs: Iterable[Envelope]) -> list[bytes]:
    topics: dict[str, bytes] = {}
    pack = _pack
    to_map = _wire.envelope_map
    out: list[bytes] = []
    add = out.append
    for env in envs:
        channel = env.channel
        t = topics.get(channel)
        if t is None:
            t = topics[channel] = channel.encode("utf-8") + _SEP
        add(t + pack(to_map(env)))
    return out


BATCH_BYTES = 1 << 18  # a batch message stops growing past this many bytes


def fan_out(
    sock: zmq.Socket[Any],
    envs: Iterable[Envelope],
    live: Container[str],
    recent: dict[str, tuple[str, int]],
    batch: bytes | None = None,
    batch_bytes: int = BATCH_BYTES,
) -> tuple[int, int]:
    envs = list(envs)
    n = len(envs)
    for i, env in enumerate(envs):
        if i + 1 == n or envs[i + 1].channel != env.channel:  # the last of its run
            recent[env.channel] = (env.epoch, env.seq)
    sent = blocked = 0
    send = sock.send
    noblock = zmq.NOBLOCK
    pack = _pack
    to_map = _wire.envelope_map
    channel: str | None = None
    topic = b""
    is_live = started = False
    pending: list[bytes] = []  # the frames of the batch message being built
    size = 0

    def flush() -> None:
        nonlocal sent, blocked, size
        if batch is None or not pending:
            return
        msg = (
            pending[0]
            if len(pending) == 1
            else batch + b"".join(len(f).to_bytes(4, "big") + f for f in pending)
        )
        try:
            send(msg, noblock)
            sent += len(pending)
        except zmq.Again:
            blocked += len(pending)
        pending.clear()
        size = 0

    try:
        for env in envs:
            if not started or env.channel != channel:
                started = True
                channel = env.channel
                is_live = channel in live
                if is_live:
                    topic = channel.encode("utf-8") + _SEP
            if not is_live:
                continue
            frame = topic + pack(to_map(env))
            if batch is not None:
                if pending and size + 4 + len(frame) > batch_bytes - len(batch):
                    flush()
                pending.append(frame)
                size += 4 + len(frame)
                continue
            try:
                send(frame, noblock)
                sent += 1
            except zmq.Again:
                blocked += 1
    finally:
        flush()
    return sent, blocked


def split_batch(frame: bytes, start: int, wanted: Container[bytes]) -> list[bytes]:
    out: list[bytes] = []
    n = len(frame)
    i = start
    while i < n:
        if i + 4 > n:
            raise ValueError("batch message cut in a length")
        size = int.from_bytes(frame[i : i + 4], "big")
        i += 4
        if size > n - i:
            raise ValueError("batch message cut in a frame")
        item = frame[i : i + size]
        i += size
        nul = item.find(_SEP)
        if item[: nul if nul >= 0 else len(item)] in wanted:
            out.append(item)
    return out


def recv_frames(sock: zmq.Socket[Any], limit: int) -> list[bytes]:
    out: list[bytes] = []
    recv = sock.recv
    noblock = zmq.NOBLOCK
    try:
        while len(out) < limit:
            out.append(recv(noblock))
    except zmq.Again:
        pass
    return out


def recv_single(sock: zmq.Socket[Any], limit: int) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    multipart = 0
    recv = sock.recv
    noblock = zmq.NOBLOCK
    try:
        while len(out) + multipart < limit:
            frame = recv(noblock)
            if sock.getsockopt(zmq.RCVMORE):
                while sock.getsockopt(zmq.RCVMORE):  # the rest came with it (atomic)
                    recv(noblock)
                multipart += 1
            else:
                out.append(frame)
    except zmq.Again:
        pass
    return out, multipart


def send_frames(sock: zmq.Socket[Any], frames: list[bytes]) -> tuple[int, int]:
    sent = blocked = 0
    send = sock.send
    noblock = zmq.NOBLOCK
    for frame in frames:
        try:
            send(frame, noblock)
            sent += 1
        except zmq.Again:
            blocked += 1
    return sent, blocked


def decode_envelopes(frames: list[bytes], cls: type[_T]) -> list[_T | None]:
    envs: list[_T | None] = []
    append = envs.append
    for frame in frames:
        append(_decode_envelope(frame, cls))
    return envs


def _decode_envelope(frame: bytes, cls: type[_T]) -> _T | None:
    i = frame.find(_SEP)
    if i <= 0:
        return None
    try:
        channel = frame[:i].decode("utf-8")
        m = msgpack.unpackb(frame[i + 1 :])
    except Exception:  # noqa: BLE001 - any bad frame takes the caller's checked path
        return None
    if type(m) is not dict or "marker" in m:
        return None
    seq = m.get("seq")
    epoch = m.get("epoch")
    formats = m.get("formats")
    id_ = m.get("id")
    prev_id = m.get("prev_id")
    meta = m.get("meta")
    ts = m.get("ts")
    if (
        type(seq) is not int
        or type(epoch) is not str
        or type(formats) is not dict
        or type(meta) is not dict
        or (id_ is not None and type(id_) is not str)
        or (prev_id is not None and type(prev_id) is not str)
        or (type(ts) is not float and type(ts) is not int)
    ):
        return None
    return make_envelope(cls, channel, seq, epoch, formats, id_, prev_id, meta, float(ts))


def first_topic(frames: list[Any]) -> int:
    """The index of the first of ``frames`` that is not a channel frame (it starts with the
    separator, as every topic of the broker's own does, or is not bytes), or -1: the edge's
    link hands a batch without one on as it is."""
    for i, frame in enumerate(frames):
        if type(frame) is not bytes or frame[:1] == _SEP:
            return i
    return -1


def first_none(values: list[Any]) -> int:
    """The index of the first None in ``values`` (by identity, no ``__eq__``), or -1."""
    for i, v in enumerate(values):
        if v is None:
            return i
    return -1


def retain(env: Envelope) -> None:
    """Mark an envelope that the broker's history keeps as one the cyclic garbage collector
    need not walk.

    A retained envelope holds strings, numbers and its ``formats`` dicts of strings: it can
    never be part of a reference cycle, and refcounting frees it when the history drops it.
    The compiled twin untracks the envelope, ``formats`` and each format's dict
    (``PyObject_GC_UnTrack``), so the broker's middle and full collections no longer walk
    every retained message (at 10,000 channels they ran 4-7 ms every ~2 s and 33 ms at a full
    one: bench/RESULTS.md, ninth session).  A dict given a container later is tracked again
    by CPython itself.  Pure Python cannot untrack an object: here it does nothing, and the
    behaviour is the same but for the collector's work.
    """
    return None


def atom_pair(a: Any, b: Any) -> tuple[Any, Any]:
    """``(a, b)`` for two atoms (strings, numbers, None), made for a long-lived key or value.

    The compiled twin returns it untracked by the cyclic garbage collector (a tuple of atoms
    can never be in a cycle; CPython untracks one only when a collection first examines it),
    so a dict of such pairs and strings stays untracked as well: the sequencer's id cache
    (up to ``id_cache_max`` keys) is then never walked by a full collection, and no pair waits
    in the young generation.  Here it is the plain tuple: the same value, the collector's work
    aside.
    """
    return (a, b)


TRANSPORT_MODE = {"http-response": "response", "http-stream": "stream", "ws-message": "ws"}


def _tn(b: bytes) -> bytes:
    return b"%d:%s," % (len(b), b)


_K_CHANNEL, _K_TRANSPORT, _K_COUNT, _K_ITEM_ID = (
    _tn(b"channel"),
    _tn(b"transport"),
    _tn(b"count"),
    _tn(b"item-id"),
)


def message_receivers(
    envs: Iterable[Envelope],
    live: Container[str],
    subs: dict[tuple[str, str], int],
    chan_subs: Container[str],
) -> Iterator[tuple[Envelope, str, int]]:
    """``(env, transport, count)`` for each ``message`` packet due (``message_packets``'s
    choice; ``broker.ops.stats`` uses it for its JSON packets too)."""
    for env in envs:
        channel = env.channel
        if channel not in live:
            continue
        known = channel in chan_subs  # else: live, but no edge has reported it yet
        for transport in env.formats:
            mode = TRANSPORT_MODE.get(transport, "")  # "": no mode, no subscribers
            count = subs.get((mode, channel), 0) if known else 1
            if count > 0:  # else no receivers of this transport (Pushpin sends none then)
                yield env, transport, count


def message_packets(
    envs: Iterable[Envelope],
    live: Container[str],
    subs: dict[tuple[str, str], int],
    chan_subs: Container[str],
    head: bytes,
    transports: dict[str, bytes],
) -> list[bytes]:
    out: list[bytes] = []
    add = out.append
    for env, transport, count in message_receivers(envs, live, subs, chan_subs):
        t_part = transports.get(transport)
        if t_part is None:
            t_part = transports[transport] = _K_TRANSPORT + _tn(transport.encode("utf-8"))
        digits = b"%d" % count
        body = b"%s%s%s%s%s%d:%s#" % (
            head,
            _K_CHANNEL,
            _tn(env.channel.encode("utf-8")),
            t_part,
            _K_COUNT,
            len(digits),
            digits,
        )
        if env.id is not None:
            body += _K_ITEM_ID + _tn(env.id.encode("utf-8"))
        add(b"message T%d:%s}" % (len(body), body))
    return out
