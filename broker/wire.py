"""The broker <-> edge wire contract (sans-IO: bytes in, objects out).

Fan-out (broker XPUB -> edge SUB), one frame per message::

    <channel utf-8> 0x00 <msgpack envelope map>

The channel and the NUL separator come first so that SUB prefix filtering is exact: an edge
subscribes to ``topic(channel)`` (= channel + b"\\0").  Channel names therefore never contain
NUL (publish parsing rejects them).  The broker's heartbeat uses the reserved topic
``HEARTBEAT_TOPIC`` (it starts with NUL, which no channel name can).

Batches (wire version 4): when one fan-out step has more than one frame for live channels (a
publish request of many items), the broker sends them as few messages on the reserved topic
``BATCH_TOPIC``: the topic, then for each frame its length (4 bytes, big-endian) and the frame,
up to ``edge_pub_batch_bytes`` a message (a step of one frame sends the plain frame; 0 turns
batches off).  One ZeroMQ message a batch instead of one a frame: ~1 us an item less in the
broker, and less in the edges (bench/RESULTS.md, nineteenth session).  Every edge that holds a
channel subscribes to ``BATCH_TOPIC`` and takes from each batch the frames of the channels it
subscribed to (``split_batch``): what an edge reads is still what its channel subscriptions
select; the broker's XPUB notices still say which channels are live.  The per-channel order is
the link's order: a batch holds the step's frames in order, and a marker or heartbeat sent
after it arrives after it.

Envelope map keys: ``seq`` (int, 1, 2, ... per channel and epoch), ``epoch`` (str), ``id``
(publisher id or None), ``prev_id`` (str or None), ``formats`` (normalised, see
``broker.items``), ``meta`` (dict str -> str), ``ts`` (broker receive time, float seconds).

Control (edge DEALER -> broker ROUTER), one msgpack map per frame, correlated by ``rid``:

    {"op": "hello", "rid", "wire"}           -> {"rid", "ok", "broker_id", "started", "cluster_id", "wire"}
    {"op": "position", "rid", "channel"}     -> {"rid", "ok", "channel", "epoch", "last_seq", "last_id"}
    {"op": "replay", "rid", "channel", "epoch", "after_seq", "after_id", "limit"}
        -> {"rid", "ok", "channel", "epoch", "last_seq", "complete", "items": [envelope maps]}

``replay`` returns the retained messages after the cursor: ``after_seq`` within ``epoch``, or
the message whose publisher ``id`` (or ``"<epoch>:<seq>"`` cursor) is ``after_id``.
``complete`` is False when history cannot cover the whole gap (cursor older than what is
retained, unknown id, or a different epoch): then ``items`` holds what is retained and the
caller must fall back (Pushpin's way: ask the origin).  Errors: ``{"rid", "ok": False,
"error": "<reason>"}``.

Each request and reply is a frozen dataclass below (``HelloRequest``, ``PositionRequest``,
``ReplayRequest``, ``StatsReport``; ``HelloReply``, ``PositionReply``, ``ReplayReply``,
``ErrorReply``), written with ``encode_request`` / ``encode_reply`` and read with
``decode_request`` (the broker) / ``decode_reply`` (the edge, which knows from ``rid`` which
request a reply answers).  The decoders check shapes and types and raise ``ControlError``
(requests: it carries the ``rid`` to echo) or ``RemoteProtocolError`` (replies).

Wire version: ``WIRE_VERSION`` is sent in ``hello`` both ways (``"wire"``; a peer that sends
none predates versioning: version 0) and in every heartbeat.  Peers of different versions
refuse each other: the broker answers a mismatched ``hello`` with an error naming both
versions; the edge stops (``EXIT_CONFIG``) on a mismatched hello reply or heartbeat, before
it serves clients when the broker answers in time (``edge.server``).  Bump it whenever a
change to this module is not understood by the previous release.

Fire-and-forget (no ``rid``, no reply), sent by each edge about once a second (sooner when
1,000 events wait) while the broker's heartbeat carries ``stats_ttl`` (its stats socket is on);
dropped by the edge rather than ever blocking (``edge.ops.connstats`` builds it, ``broker.ops.stats``
turns it into Pushpin's stats packets)::

    {"op": "stats", "edge": "<edge name>", "full": bool,
     "conns": [[id, "http"|"ws", peer_address], ...],   new and refreshed client connections
     "gone": [id, ...],                                  closed ones
     "subs": [[mode, channel, n], ...],                  subscribers on this edge, per mode
                                                         (response|stream|ws), for the channels
                                                         that changed (0: none left); every
                                                         one when ``full``
     "connections": n, "connections_max": n,             open now, most since the last report
     "conn_s": float, "sent": n,                         connection-seconds, messages sent to
                                                         clients, since the last report
     "activity": [[route, n], ...], "requests": n,       per route id ("": none) activity and
                                                         requests received since the last
                                                         report (left out when none; an older
                                                         broker ignores them)
     "version": str, "addr": "host:port",               the edge's release, where its clients
     "lagging": n, "max_lag_s": float}                   connect, its slow consumers now and
                                                         the longest behind (the broker's status
                                                         page; left out when unset)

Position marker (broker XPUB, on the channel's own topic): whenever an edge's SUB subscribes
to a channel (the broker's XPUB is VERBOSE so it sees every subscribe), the broker sends
``topic(channel) + msgpack {"marker": True, "epoch", "last_seq"}`` on that topic.  Because it
is sent after the subscription is active, it reaches the new subscriber and closes the race
between "SUB subscribed" and "position asked": a tracker that sees ``last_seq`` beyond what it
delivered replays the gap.  Other subscribers of the channel see it too and ignore it (or
repair a gap they had not noticed yet).  ``decode_frame`` returns a ``Marker`` for it.

Heartbeat (broker XPUB, every ``HEARTBEAT_INTERVAL_S``): ``HEARTBEAT_TOPIC`` + msgpack
``{"broker_id", "started", "ts", "wire", "n"}``, plus ``"stats_ttl": <seconds>`` while the broker's stats
socket is on (edges then send ``stats`` reports); a new ``broker_id`` means the broker
restarted.  ``n`` counts the broker process's heartbeat frames (1, 2, 3, ...): an edge that sees
it skip knows it lost a heartbeat frame, and with it the positions it carried.

Trailing positions (wire version 3; they replace version 2's marker frame per channel and
heartbeat): the heartbeat also carries ``"marks"``, a msgpack ``bin`` holding a packed msgpack
array of ``[channel, epoch, last_seq]``, one for each live channel published since the last
heartbeat (``encode_marks`` / ``decode_marks``; a ``bin`` so that a reader that only wants the
heartbeat copies it without decoding it).  A heartbeat carries at most ``MARKS_PER_HEARTBEAT``
positions: more are spread over several heartbeat frames sent back to back, each with its own
``n``.  They let an edge notice that it lost the last messages of a channel over PUB/SUB (HWM,
reconnect) although nothing more is published on it: a position beyond what the edge delivered
is a gap, repaired from history.  Sent once, not repeated: losing a heartbeat shows in the
next one's ``n``, and the edge then asks the position of every channel it tracks, as after a
broker restart (``edge.sync.markers``).

Recover (broker XPUB, reserved topic ``RECOVER_TOPIC``, which every edge subscribes to like the
heartbeat): ``RECOVER_TOPIC`` + msgpack ``{"ts"}``, sent when a publisher calls ``POST
/recover`` or the ``recover`` command.  Edges then do what Pushpin does: every response hold
re-requests the origin (with ``Grip-Last`` for its prev-id channels) and every stream hold
with a next link fetches it.

Commands relayed to the edges (Pushpin's ``conncheck`` and ``refresh``, which its handler asks
its proxy; reference 6.2).  Each edge subscribes, besides the heartbeat, to ``COMMAND_TOPIC``
and to its own presence topic ``edge_topic(name)`` (``name``: the edge's stats name, unique per
process).  The broker's XPUB sees every presence subscribe, and libzmq emits the unsubscribe
when an edge's SUB disconnects, so ``edge_notice`` of those notices is the broker's list of live
edges (after a broker restart the SUBs reconnect and subscribe again).  The broker sends::

    COMMAND_TOPIC + msgpack {"cmd": n, "op": "conncheck", "ids": [str, ...]}
    COMMAND_TOPIC + msgpack {"cmd": n, "op": "refresh", "cid": str|None, "channel": str|None}

and every edge answers each one, fire-and-forget on its DEALER, with what it found here::

    {"op": "answer", "edge": "<edge name>", "cmd": n, "found": [str, ...]}

(conncheck: the ids open on this edge; refresh: the WebSocket connection ids it refreshed).  The
broker answers the command once every live edge answered, an edge that went away counting as
answered (``broker.ingest.edgecmds``).  Typed as ``ConnCheckCommand``, ``RefreshCommand``
(``encode_command`` / ``decode_command``) and ``CommandAnswer`` (a control request, like
``StatsReport``).  Wire version 2 added them: a version 1 edge would not answer, and a broker
would wait for it.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

import msgpack

import _speedups  # read at call time: ``_speedups._fanout_py`` imports this module
from broker.errors import RemoteProtocolError

if TYPE_CHECKING:
    from broker.items import Formats

WIRE_VERSION = 4  # 2: edge commands (conncheck, refresh) and presence topics; 3: heartbeat
# counter and batched trailing positions ("n", "marks") instead of one marker frame per channel;
# 4: channel frames batched on BATCH_TOPIC
SEP = b"\x00"
HEARTBEAT_TOPIC = b"\x00hb\x00"
BATCH_TOPIC = b"\x00batch\x00"
HEARTBEAT_INTERVAL_S = 1.0
RECOVER_TOPIC = b"\x00recover\x00"
COMMAND_TOPIC = b"\x00cmd\x00"
EDGE_TOPIC = b"\x00edge\x00"  # + edge name + SEP: an edge's presence topic
REPLAY_LIMIT = 1000
MARKS_PER_HEARTBEAT = 4096  # trailing positions per heartbeat frame (more: several frames)

# The envelope map's keys, in the order the fan-out writes them: the one list.  ``Envelope``
# has these fields (plus ``channel``), ``envelope_map`` is generated from it, the pure fan-out
# twin (``_speedups._fanout_py``) uses ``envelope_map``, and tests check the compiled twin's
# byte constants (``_fanout_c.pyx``) against it.
ENVELOPE_FIELDS = ("seq", "epoch", "id", "prev_id", "formats", "meta", "ts")

_packb: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _attr_map_function(name: str, keys: tuple[str, ...]) -> Callable[[Any], dict[str, Any]]:
    """``def name(o): return {"k1": o.k1, ...}`` for ``keys``, generated once (as dataclasses
    generate ``__init__``): a dict literal, as fast as one written out by hand."""
    for k in keys:
        if not k.isidentifier():
            raise ValueError(f"not an attribute name: {k!r}")
    src = f"def {name}(o):\n    return {{{', '.join(f'{k!r}: o.{k}' for k in keys)}}}\n"
    ns: dict[str, Callable[[Any], dict[str, Any]]] = {}
    exec(src, ns)  # noqa: S102 (source built from the identifiers above)
    return ns[name]


envelope_map = _attr_map_function("envelope_map", ENVELOPE_FIELDS)
envelope_map.__doc__ = "The envelope map of ``env`` (keys ``ENVELOPE_FIELDS``, in order)."


def topic(channel: str) -> bytes:
    """The SUB subscription prefix for ``channel``."""
    return channel.encode("utf-8") + SEP


def is_batch(frame: bytes) -> bool:
    return frame.startswith(BATCH_TOPIC)


class _Every:
    """A container that holds every channel (``split_batch`` without ``wanted``)."""

    def __contains__(self, item: object) -> bool:
        return True


_EVERY = _Every()


def split_batch(frame: bytes, wanted: Container[bytes] | None = None) -> list[bytes]:
    """The channel frames of the batch message ``frame`` (``is_batch``), in order: those whose
    channel (utf-8 bytes) is in ``wanted``, or every one; ``RemoteProtocolError`` for a
    message cut short."""
    try:
        return _speedups.split_batch(frame, len(BATCH_TOPIC), _EVERY if wanted is None else wanted)
    except ValueError as exc:
        raise RemoteProtocolError(f"bad batch message: {exc}") from None


def channel_frames(frames: Iterable[bytes], wanted: Container[bytes] | None = None) -> list[bytes]:
    """``frames`` as one frame per message: each batch message replaced by its frames, those of
    the channels in ``wanted`` (utf-8 names) or every one (for readers of the broker's fan-out
    outside the edge: tests, ``bench``; a reader that subscribed to some channels only passes
    them, as an edge does: a batch also holds other subscribers' channels)."""
    out: list[bytes] = []
    for f in frames:
        if f.startswith(BATCH_TOPIC):
            out.extend(split_batch(f, wanted))
        else:
            out.append(f)
    return out


@dataclass(frozen=True, slots=True)
class Envelope:
    """One sequenced message of one channel, as the broker fans it out."""

    channel: str
    seq: int
    epoch: str
    formats: Formats
    id: str | None = None
    prev_id: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    ts: float = 0.0

    @property
    def cursor(self) -> str:
        """The message id clients resume from: the publisher's id, else ``epoch:seq``."""
        return self.id if self.id is not None else f"{self.epoch}:{self.seq}"

    def to_map(self) -> dict[str, Any]:
        return envelope_map(self)

    @classmethod
    def from_map(cls, channel: str, m: Any) -> Envelope:
        if not isinstance(m, dict):
            raise RemoteProtocolError("bad envelope: not a map")
        try:  # make_envelope: __init__'s result without its per-field object.__setattr__
            return _speedups.make_envelope(
                cls,
                channel,
                int(m["seq"]),
                str(m["epoch"]),
                m.get("formats") or {},
                m.get("id"),
                m.get("prev_id"),
                m.get("meta") or {},
                float(m.get("ts") or 0.0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"bad envelope: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Marker:
    """A channel's position, sent by the broker on the channel topic when an edge subscribes."""

    channel: str
    epoch: str
    last_seq: int


def encode_marker(channel: str, epoch: str, last_seq: int) -> bytes:
    return topic(channel) + _packb({"marker": True, "epoch": epoch, "last_seq": last_seq})


def encode_envelope(env: Envelope) -> bytes:
    """The one fan-out frame for ``env``."""
    return topic(env.channel) + _packb(envelope_map(env))


def encode_envelopes(envs: Iterable[Envelope]) -> list[bytes]:
    """``encode_envelope`` for each of ``envs`` (a batch, written by ``_speedups``'
    ``encode_envelopes``: the same bytes; the broker's fan-out uses its ``fan_out``)."""
    return _speedups.encode_envelopes(envs)


def decode_frame(frame: bytes) -> Envelope | Marker:
    """Parse one fan-out frame (not the heartbeat) into an Envelope or a Marker."""
    i = frame.find(SEP)
    if i <= 0:
        raise RemoteProtocolError("bad fan-out frame: no channel")
    try:
        channel = frame[:i].decode("utf-8")
        m = _unpackb(frame[i + 1 :])
    except (UnicodeDecodeError, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"bad fan-out frame: {exc}") from exc
    if not isinstance(m, dict):
        raise RemoteProtocolError("bad fan-out frame: envelope is not a map")
    if m.get("marker"):
        try:
            return Marker(channel, str(m["epoch"]), int(m["last_seq"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"bad marker: {exc}") from exc
    return Envelope.from_map(channel, m)


# -- heartbeat and recover ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heartbeat:
    broker_id: str
    started: float
    ts: float
    stats_ttl: int = 0  # the broker's stats socket's connection ttl (0: off)
    wire_version: int = 0  # 0: a broker that predates wire versions
    n: int = 0  # the broker process's heartbeat counter (0: none, before wire version 3)
    marks: bytes = b""  # packed trailing positions (``decode_marks``); b"": none


def is_heartbeat(frame: bytes) -> bool:
    return frame.startswith(HEARTBEAT_TOPIC)


def encode_heartbeat(
    broker_id: str,
    started: float,
    ts: float,
    stats_ttl: int = 0,
    n: int = 0,
    marks: bytes = b"",
) -> bytes:
    """A heartbeat frame; ``n``: its counter (0: left out), ``marks``: ``encode_marks``'s
    packed positions (b"": left out)."""
    hb: dict[str, Any] = {
        "broker_id": broker_id,
        "started": started,
        "ts": ts,
        "wire": WIRE_VERSION,
    }
    if stats_ttl > 0:
        hb["stats_ttl"] = int(stats_ttl)
    if n > 0:
        hb["n"] = int(n)
    if marks:
        hb["marks"] = bytes(marks)
    return HEARTBEAT_TOPIC + _packb(hb)


def encode_marks(marks: Iterable[tuple[str, str, int]]) -> bytes:
    """The packed trailing positions of a heartbeat: a msgpack array of ``[channel, epoch,
    last_seq]``."""
    return _packb(marks if isinstance(marks, list) else list(marks))  # tuples pack as arrays


def decode_marks(data: bytes) -> list[tuple[str, str, int]]:
    """``encode_marks``'s positions, checked (``RemoteProtocolError`` on any bad entry)."""
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"bad marks: {exc}") from exc
    if not isinstance(raw, tuple):
        raise RemoteProtocolError("bad marks: not an array")
    for m in raw:
        if not (
            isinstance(m, tuple)
            and len(m) == 3
            and type(m[0]) is str
            and m[0]
            and "\x00" not in m[0]
            and type(m[1]) is str
            and type(m[2]) is int
            and m[2] >= 0
        ):
            raise RemoteProtocolError(f"bad marks: bad entry {m!r:.80}")
    return raw  # type: ignore[return-value]  # checked above: tuples of (str, str, int)


def decode_heartbeat(frame: bytes) -> Heartbeat:
    try:
        m = _unpackb(frame[len(HEARTBEAT_TOPIC) :])
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"bad heartbeat: {exc}") from exc
    if not isinstance(m, dict) or "broker_id" not in m:
        raise RemoteProtocolError("bad heartbeat")
    ttl = m.get("stats_ttl", 0)
    n = m.get("n", 0)
    marks = m.get("marks", b"")
    try:
        return Heartbeat(
            broker_id=str(m["broker_id"]),
            started=_number(m, "started"),
            ts=_number(m, "ts"),
            stats_ttl=ttl if _is_count(ttl) else 0,
            wire_version=_version(m),
            n=n if _is_count(n) else 0,
            marks=marks if isinstance(marks, bytes) else b"",
        )
    except ControlError as exc:
        raise RemoteProtocolError(f"bad heartbeat: {exc.reason}") from None


def is_recover(frame: bytes) -> bool:
    return frame.startswith(RECOVER_TOPIC)


def encode_recover(ts: float) -> bytes:
    return RECOVER_TOPIC + _packb({"ts": ts})


# -- commands relayed to the edges (conncheck, refresh) and the edges' presence ---------------


def edge_topic(name: str) -> bytes:
    """The presence topic an edge named ``name`` subscribes to (names never contain NUL)."""
    return EDGE_TOPIC + name.encode("utf-8") + SEP


def edge_notice(frame: bytes) -> tuple[bool, str] | None:
    """Parse an XPUB notice of a presence topic: (subscribed?, edge name), else None."""
    if len(frame) < 2 or frame[0] not in (0, 1) or not frame.startswith(EDGE_TOPIC, 1):
        return None
    body = frame[1 + len(EDGE_TOPIC) :]
    if not body.endswith(SEP) or len(body) < 2 or SEP in body[:-1]:
        return None
    try:
        return frame[0] == 1, body[:-1].decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class ConnCheckCommand:
    """Which of ``ids`` are open client connections (Pushpin's ``conncheck``)."""

    cmd: int
    ids: tuple[str, ...]
    op: ClassVar[str] = "conncheck"


@dataclass(frozen=True, slots=True)
class RefreshCommand:
    """Refresh the WebSocket connection ``cid``, or every WebSocket session subscribed to
    ``channel`` (Pushpin's ``refresh``: a WebSocket-over-HTTP session asks its origin now)."""

    cmd: int
    cid: str | None = None
    channel: str | None = None
    op: ClassVar[str] = "refresh"


EdgeCommand = ConnCheckCommand | RefreshCommand


def is_command(frame: bytes) -> bool:
    return frame.startswith(COMMAND_TOPIC)


def encode_command(c: EdgeCommand) -> bytes:
    if isinstance(c, ConnCheckCommand):
        m: dict[str, Any] = {"cmd": c.cmd, "op": c.op, "ids": list(c.ids)}
    elif isinstance(c, RefreshCommand):
        m = {"cmd": c.cmd, "op": c.op, "cid": c.cid, "channel": c.channel}
    else:
        raise TypeError(f"not an edge command: {c!r}")
    return COMMAND_TOPIC + _packb(m)


def decode_command(frame: bytes) -> EdgeCommand:
    """One command frame (``is_command``), typed; RemoteProtocolError if malformed."""
    try:
        m = _unpackb(frame[len(COMMAND_TOPIC) :])
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"bad command: {exc}") from exc
    if not isinstance(m, dict):
        raise RemoteProtocolError("bad command: not a map")
    cmd, op = m.get("cmd"), m.get("op")
    try:
        if not _is_count(cmd):
            raise ControlError("'cmd' must be a non-negative integer")
        if op == "conncheck":
            return ConnCheckCommand(cmd, _str_list(m, "ids"))
        if op == "refresh":
            cid, channel = _opt_str(m, "cid"), _opt_str(m, "channel")
            if (cid is None) == (channel is None):
                raise ControlError("refresh needs exactly one of 'cid' and 'channel'")
            return RefreshCommand(cmd, cid, channel)
    except ControlError as exc:
        raise RemoteProtocolError(f"bad command: {exc.reason}") from None
    raise RemoteProtocolError(f"bad command: unknown op {op!r}")


# -- control: requests (edge -> broker) and replies (broker -> edge) ---------------------------

Rid = Any  # what the edge chose (an int from ``edge.sync.link``); echoed as it came


class ControlError(RemoteProtocolError):
    """An invalid control request; ``rid`` is what to echo in the error reply."""

    def __init__(self, reason: str, rid: Rid = None) -> None:
        super().__init__(reason)
        self.rid = rid


def version_mismatch(edge_version: int, broker_version: int) -> str:
    """The one sentence both sides log (and the broker replies) for a wire version mismatch."""
    return (
        f"wire version mismatch: edge speaks wire version {edge_version}, broker speaks "
        f"wire version {broker_version} (upgrade both to the same release)"
    )


@dataclass(frozen=True, slots=True)
class HelloRequest:
    wire_version: int = WIRE_VERSION
    rid: Rid = None
    op: ClassVar[str] = "hello"


@dataclass(frozen=True, slots=True)
class PositionRequest:
    channel: str
    rid: Rid = None
    op: ClassVar[str] = "position"


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """After ``after_seq`` within ``epoch``, or after the message ``after_id``."""

    channel: str
    epoch: str | None = None
    after_seq: int | None = None
    after_id: str | None = None
    limit: int = REPLAY_LIMIT
    rid: Rid = None
    op: ClassVar[str] = "replay"


@dataclass(frozen=True, slots=True)
class StatsReport:
    """An edge's fire-and-forget connections and counts report (no ``rid``, no reply;
    validated by ``broker.ops.stats``)."""

    edge: str
    full: bool = False
    conns: tuple[
        tuple[str, ...], ...
    ] = ()  # ((id, "http"|"ws", peer), ...): new or refreshed connections
    gone: tuple[str, ...] = ()  # (id, ...): closed connections
    subs: tuple[
        tuple[str | int, ...], ...
    ] = ()  # ((mode, channel, count), ...): changed counts (all of them when full)
    connections: int = 0
    connections_max: int = 0
    conn_s: float = 0.0
    sent: int = 0
    activity: tuple[tuple[str, int], ...] = ()  # ((route id or "", count), ...)
    requests: int = 0
    raw: dict[Any, Any] | None = field(
        default=None, compare=False, repr=False
    )  # the map as received
    # for the broker's status page (left out when unset; an older broker ignores them)
    version: str = ""  # the edge's gripcast release
    addr: str = ""  # where its clients connect
    lagging: int = 0  # client connections behind right now
    max_lag_s: float = 0.0  # the longest one of them has been behind
    op: ClassVar[str] = "stats"
    rid: ClassVar[Rid] = None


@dataclass(frozen=True, slots=True)
class CommandAnswer:
    """An edge's answer to a relayed command ``cmd`` (no ``rid``, no reply): the ids it found
    (conncheck: open here; refresh: the WebSocket connections it refreshed)."""

    edge: str
    cmd: int
    found: tuple[str, ...] = ()
    op: ClassVar[str] = "answer"
    rid: ClassVar[Rid] = None


Request = HelloRequest | PositionRequest | ReplayRequest | StatsReport | CommandAnswer


@dataclass(frozen=True, slots=True)
class HelloReply:
    rid: Rid
    broker_id: str
    started: float
    cluster_id: str = ""
    wire_version: int = WIRE_VERSION
    # the broker keeps channels in a store other brokers share (Redis): edges listing several
    # brokers refuse one that does not (docs/cluster.md); absent (older broker): False
    shared_store: bool = False


@dataclass(frozen=True, slots=True)
class PositionReply:
    rid: Rid
    channel: str
    epoch: str
    last_seq: int
    last_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReplayReply:
    rid: Rid
    channel: str
    epoch: str
    last_seq: int
    complete: bool
    items: tuple[Envelope, ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorReply:
    rid: Rid
    error: str


Reply = HelloReply | PositionReply | ReplayReply | ErrorReply
REPLY_TYPES: dict[str, type] = {
    "hello": HelloReply,
    "position": PositionReply,
    "replay": ReplayReply,
}


def encode_control(msg: dict[str, Any]) -> bytes:
    """Encode one control map (``encode_request`` / ``encode_reply`` are the typed way)."""
    return _packb(msg)


def decode_control(frame: bytes) -> dict[Any, Any]:
    """Decode one control frame into its map (``decode_request`` / ``decode_reply`` type it)."""
    try:
        m = _unpackb(frame)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"bad control message: {exc}") from exc
    if not isinstance(m, dict):
        raise RemoteProtocolError("bad control message: not a map")
    return m


def request_map(req: Request | PresenceReport) -> dict[str, Any]:
    if isinstance(req, HelloRequest):
        return {"op": "hello", "rid": req.rid, "wire": req.wire_version}
    if isinstance(req, PositionRequest):
        return {"op": "position", "rid": req.rid, "channel": req.channel}
    if isinstance(req, ReplayRequest):
        return {
            "op": "replay",
            "rid": req.rid,
            "channel": req.channel,
            "epoch": req.epoch,
            "after_seq": req.after_seq,
            "after_id": req.after_id,
            "limit": req.limit,
        }
    if isinstance(req, StatsReport):
        m: dict[str, Any] = {
            "op": "stats",
            "edge": req.edge,
            "full": req.full,
            "conns": [list(c) for c in req.conns],
            "gone": list(req.gone),
            "subs": [list(s) for s in req.subs],
            "connections": req.connections,
            "connections_max": req.connections_max,
            "conn_s": req.conn_s,
            "sent": req.sent,
        }
        if req.activity:
            m["activity"] = [list(a) for a in req.activity]
        if req.requests:
            m["requests"] = req.requests
        for key in ("version", "addr", "lagging", "max_lag_s"):
            if getattr(req, key):
                m[key] = getattr(req, key)
        return m
    if isinstance(req, CommandAnswer):
        return {"op": "answer", "edge": req.edge, "cmd": req.cmd, "found": list(req.found)}
    if isinstance(req, PresenceReport):
        return presence_map(req)
    raise TypeError(f"not a control request: {req!r}")


def encode_request(req: Request | PresenceReport) -> bytes:
    return _packb(request_map(req))


def reply_map(rep: Reply) -> dict[str, Any]:
    if isinstance(rep, HelloReply):
        return {
            "rid": rep.rid,
            "ok": True,
            "broker_id": rep.broker_id,
            "started": rep.started,
            "cluster_id": rep.cluster_id,
            "wire": rep.wire_version,
            "shared_store": rep.shared_store,
        }
    if isinstance(rep, PositionReply):
        return {
            "rid": rep.rid,
            "ok": True,
            "channel": rep.channel,
            "epoch": rep.epoch,
            "last_seq": rep.last_seq,
            "last_id": rep.last_id,
        }
    if isinstance(rep, ReplayReply):
        return {
            "rid": rep.rid,
            "ok": True,
            "channel": rep.channel,
            "epoch": rep.epoch,
            "last_seq": rep.last_seq,
            "complete": rep.complete,
            "items": [envelope_map(e) for e in rep.items],
        }
    if isinstance(rep, ErrorReply):
        return {"rid": rep.rid, "ok": False, "error": rep.error}
    raise TypeError(f"not a control reply: {rep!r}")


def encode_reply(rep: Reply) -> bytes:
    return _packb(reply_map(rep))


def _is_count(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _opt_str(m: dict[Any, Any], key: str, rid: Rid = None) -> str | None:
    v = m.get(key)
    if v is None or isinstance(v, str):
        return v
    raise ControlError(f"'{key}' must be a string", rid)


def _str(m: dict[Any, Any], key: str, rid: Rid = None) -> str:
    v = m.get(key)
    if isinstance(v, str):
        return v
    raise ControlError(f"'{key}' must be a string", rid)


def _opt_int(m: dict[Any, Any], key: str, rid: Rid = None) -> int | None:
    v = m.get(key)
    if v is None or _is_count(v):
        return v
    raise ControlError(f"'{key}' must be a non-negative integer", rid)


def _str_list(m: dict[Any, Any], key: str, rid: Rid = None) -> tuple[str, ...]:
    v = m.get(key)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise ControlError(f"'{key}' must be a list of strings", rid)


def _number(m: dict[Any, Any], key: str, rid: Rid = None) -> float:
    v = m.get(key, 0.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ControlError(f"'{key}' must be a number", rid)
    return float(v)


def _version(m: dict[Any, Any], rid: Rid = None) -> int:
    v = m.get("wire", 0)  # absent: a peer that predates wire versions
    if not _is_count(v):
        raise ControlError("'wire' must be a non-negative integer", rid)
    return v


def decode_request(frame: bytes) -> Request | PresenceReport:
    """One control request, typed; ``ControlError`` (with the ``rid`` to echo) if invalid.

    Channel names are checked for type only (the broker checks them as publish does); a
    ``stats`` report keeps its map in ``raw`` for ``broker.ops.stats`` to validate."""
    try:
        m = decode_control(frame)
    except RemoteProtocolError as exc:
        raise ControlError(exc.reason) from None
    rid = m.get("rid")
    op = m.get("op")
    if op == "hello":
        return HelloRequest(_version(m, rid), rid)
    if op == "position":
        return PositionRequest(_str(m, "channel", rid), rid)
    if op == "replay":
        limit = _opt_int(m, "limit", rid)
        return ReplayRequest(
            _str(m, "channel", rid),
            epoch=_opt_str(m, "epoch", rid),
            after_seq=_opt_int(m, "after_seq", rid),
            after_id=_opt_str(m, "after_id", rid),
            limit=REPLAY_LIMIT if limit is None else min(limit, REPLAY_LIMIT),
            rid=rid,
        )
    if op == "stats":
        edge = m.get("edge")
        return StatsReport(edge if isinstance(edge, str) else "", raw=m)
    if op == "answer":
        cmd = m.get("cmd")
        if not _is_count(cmd):
            raise ControlError("'cmd' must be a non-negative integer", rid)
        return CommandAnswer(_str(m, "edge", rid), cmd, _str_list(m, "found", rid))
    if op == "presence":
        return decode_presence(m, rid)
    raise ControlError(f"unknown op {op!r}", rid)


def reply_from_map(m: dict[Any, Any], expect: type) -> Reply:
    """Type a decoded reply map that answers a request whose reply type is ``expect``
    (``REPLY_TYPES[op]``); an ``ErrorReply`` when the broker refused.  RemoteProtocolError if
    the map does not have the reply's shape."""
    rid = m.get("rid")
    try:
        ok = m.get("ok")
        if ok is False:
            err = m.get("error")
            return ErrorReply(rid, err if isinstance(err, str) else repr(err))
        if ok is not True:
            raise ControlError("'ok' must be a boolean")
        if expect is HelloReply:
            return HelloReply(
                rid,
                _str(m, "broker_id"),
                _number(m, "started"),
                _opt_str(m, "cluster_id") or "",
                _version(m),
                m.get("shared_store") is True,
            )
        if expect is PositionReply:
            return PositionReply(
                rid,
                _str(m, "channel"),
                _str(m, "epoch"),
                _opt_int(m, "last_seq") or 0,
                _opt_str(m, "last_id"),
            )
        if expect is ReplayReply:
            channel = _str(m, "channel")
            items = m.get("items")
            if items is None:
                items = []
            elif not isinstance(items, list):
                raise ControlError("'items' must be a list")
            complete = m.get("complete", False)
            if not isinstance(complete, bool):
                raise ControlError("'complete' must be a boolean")
            return ReplayReply(
                rid,
                channel,
                _str(m, "epoch"),
                _opt_int(m, "last_seq") or 0,
                complete,
                tuple(Envelope.from_map(channel, i) for i in items),
            )
    except ControlError as exc:
        raise RemoteProtocolError(f"bad {_reply_name(expect)} reply: {exc.reason}") from None
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(f"bad {_reply_name(expect)} reply: {exc.reason}") from None
    raise TypeError(f"not a reply type: {expect!r}")


def _reply_name(expect: type) -> str:
    return {v: k for k, v in REPLY_TYPES.items()}.get(expect, "control")


def decode_reply(frame: bytes, expect: type) -> Reply:
    """``reply_from_map(decode_control(frame), expect)``."""
    return reply_from_map(decode_control(frame), expect)


def subscription_notice(frame: bytes) -> tuple[bool, str] | None:
    """Parse an XPUB subscription frame: (subscribed?, channel), or None for non-channel topics."""
    if not frame or frame[0] not in (0, 1):
        return None
    body = frame[1:]
    if not body.endswith(SEP) or body.startswith(SEP):
        return None
    try:
        return frame[0] == 1, body[:-1].decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- presence (edge -> broker, fire-and-forget; broker.ops.presence) ----------------------------
#
#     {"op": "presence", "edge": "<edge name>", "full": bool,
#      "users": [[channel, user, n], ...]}      connections of ``user`` on ``channel`` on this
#                                               edge, for the pairs that changed (0: none left);
#                                               every pair when ``full``
#
#      "seq": n, "since": [s, ...]}            (optional) the report's number (per edge, one
#                                               series for all brokers) and, per entry of
#                                               "users", the number of the report that first
#                                               listed the pair (0: gone); the presence event
#                                               ids derive from them (broker.ops.presence)
#
# Sent by each edge about once a second (``edge.ops.presence``) to every live broker while a
# namespace has presence on, even with nothing changed: the broker takes an edge silent for
# ``broker.ops.presence.EDGE_SILENCE_S`` as gone.  A broker that predates it answers an error
# reply without a ``rid``, which the edge ignores (wire version unchanged: nothing else depends
# on it).


@dataclass(frozen=True, slots=True)
class PresenceReport:
    """An edge's presence report: connections per (channel, user) on this edge."""

    edge: str
    full: bool = False
    users: tuple[tuple[str, str, int], ...] = ()  # ((channel, user, connections), ...)
    seq: int = 0  # this report's number (0: unnumbered, an older edge)
    since: tuple[int, ...] = ()  # per entry of ``users``: the seq that first listed it (0: gone)
    op: ClassVar[str] = "presence"
    rid: ClassVar[Rid] = None


def presence_map(req: PresenceReport) -> dict[str, Any]:
    return {
        "op": "presence",
        "edge": req.edge,
        "full": req.full,
        "users": [list(u) for u in req.users],
        "seq": req.seq,
        "since": list(req.since),
    }


def decode_presence(m: dict[Any, Any], rid: Rid = None) -> PresenceReport:
    """A ``presence`` request map, typed; ``ControlError`` if malformed."""
    users = m.get("users")
    if not isinstance(users, list):
        raise ControlError("'users' must be a list", rid)
    out: list[tuple[str, str, int]] = []
    for u in users:
        if (
            not isinstance(u, list)
            or len(u) != 3
            or not isinstance(u[0], str)
            or not isinstance(u[1], str)
            or not _is_count(u[2])
        ):
            raise ControlError("'users' must hold [channel, user, count] entries", rid)
        out.append((u[0], u[1], u[2]))
    full = m.get("full", False)
    if not isinstance(full, bool):
        raise ControlError("'full' must be a boolean", rid)
    seq = m.get("seq", 0)
    if not _is_count(seq):
        raise ControlError("'seq' must be a non-negative integer", rid)
    since = m.get("since", [])
    if (
        not isinstance(since, list)
        or not all(_is_count(s) for s in since)
        or (since and len(since) != len(out))
    ):
        raise ControlError("'since' must be a list of integers, one per 'users' entry", rid)
    return PresenceReport(_str(m, "edge", rid), full, tuple(out), seq, tuple(since))
