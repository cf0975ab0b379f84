"""The broker <-> edge wire contract (sans-IO: bytes in, objects out).

Fan-out (broker XPUB -> edge SUB), one frame per message::

    <channel utf-8> 0x00 <msgpack envelope map>

The channel and the NUL separator come first so that SUB prefix filtering is exact: an edge
subscribes to ``topic(channel)`` (= channel + b"\\0").  Channel names therefore never contain
NUL (publish parsing rejects them).  The broker's heartbeat uses the reserved topic
``HEARTBEAT_TOPIC`` (it starts with NUL, which no channel name can).

Envelope map keys: ``seq`` (int, 1, 2, ... per channel and epoch), ``epoch`` (str), ``id``
(publisher id or None), ``prev_id`` (str or None), ``formats`` (normalised, see
``broker.items``), ``meta`` (dict str -> str), ``ts`` (broker receive time, float seconds).

Control (edge DEALER -> broker ROUTER), one msgpack map per frame, correlated by ``rid``:

    {"op": "hello", "rid": n}                -> {"rid", "ok", "broker_id", "started", "cluster_id"}
    {"op": "position", "rid", "channel"}     -> {"rid", "ok", "channel", "epoch", "last_seq", "last_id"}
    {"op": "replay", "rid", "channel", "epoch", "after_seq", "after_id", "limit"}
        -> {"rid", "ok", "channel", "epoch", "last_seq", "complete", "items": [envelope maps]}

``replay`` returns the retained messages after the cursor: ``after_seq`` within ``epoch``, or
the message whose publisher ``id`` (or ``"<epoch>:<seq>"`` cursor) is ``after_id``.
``complete`` is False when history cannot cover the whole gap (cursor older than what is
retained, unknown id, or a different epoch): then ``items`` holds what is retained and the
caller must fall back (Pushpin's way: ask the origin).  Errors: ``{"rid", "ok": False,
"error": "<reason>"}``.

Fire-and-forget (no ``rid``, no reply), sent by each edge about once a second (sooner when
1,000 events wait) while the broker's heartbeat carries ``stats_ttl`` (its stats socket is on);
dropped by the edge rather than ever blocking (``edge.connstats`` builds it, ``broker.stats``
turns it into Pushpin's stats packets)::

    {"op": "stats", "edge": "<edge name>", "full": bool,
     "conns": [[id, "http"|"ws", peer_address], ...],   new and refreshed client connections
     "gone": [id, ...],                                  closed ones
     "subs": [[mode, channel, n], ...],                  subscribers on this edge, per mode
                                                         (response|stream|ws), for the channels
                                                         that changed (0: none left); every
                                                         one when ``full``
     "connections": n, "connections_max": n,             open now, most since the last report
     "conn_s": float, "sent": n}                         connection-seconds, messages sent to
                                                         clients, since the last report

Position marker (broker XPUB, on the channel's own topic): whenever an edge's SUB subscribes
to a channel (the broker's XPUB is VERBOSE so it sees every subscribe), the broker sends
``topic(channel) + msgpack {"marker": True, "epoch", "last_seq"}`` on that topic.  Because it
is sent after the subscription is active, it reaches the new subscriber and closes the race
between "SUB subscribed" and "position asked": a tracker that sees ``last_seq`` beyond what it
delivered replays the gap.  Other subscribers of the channel see it too and ignore it (or
repair a gap they had not noticed yet).  ``decode_frame`` returns a ``Marker`` for it.

Heartbeat (broker XPUB, every ``HEARTBEAT_INTERVAL_S``): ``HEARTBEAT_TOPIC`` + msgpack
``{"broker_id", "started", "ts"}``, plus ``"stats_ttl": <seconds>`` while the broker's stats
socket is on (edges then send ``stats`` reports); a new ``broker_id`` means the broker
restarted.

Recover (broker XPUB, reserved topic ``RECOVER_TOPIC``, which every edge subscribes to like the
heartbeat): ``RECOVER_TOPIC`` + msgpack ``{"ts"}``, sent when a publisher calls ``POST
/recover`` or the ``recover`` command.  Edges then do what Pushpin does: every response hold
re-requests the origin (with ``Grip-Last`` for its prev-id channels) and every stream hold
with a next link fetches it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import msgpack

from _speedups import encode_envelopes as _encode_envelopes
from broker.errors import RemoteProtocolError

SEP = b"\x00"
HEARTBEAT_TOPIC = b"\x00hb\x00"
HEARTBEAT_INTERVAL_S = 1.0
RECOVER_TOPIC = b"\x00recover\x00"
REPLAY_LIMIT = 1000

_packb = msgpack.Packer(use_bin_type=True).pack


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def topic(channel: str) -> bytes:
    """The SUB subscription prefix for ``channel``."""
    return channel.encode("utf-8") + SEP


@dataclass(frozen=True, slots=True)
class Envelope:
    """One sequenced message of one channel, as the broker fans it out."""

    channel: str
    seq: int
    epoch: str
    formats: dict
    id: str | None = None
    prev_id: str | None = None
    meta: dict = field(default_factory=dict)
    ts: float = 0.0

    @property
    def cursor(self) -> str:
        """The message id clients resume from: the publisher's id, else ``epoch:seq``."""
        return self.id if self.id is not None else f"{self.epoch}:{self.seq}"

    def to_map(self) -> dict:
        return {
            "seq": self.seq,
            "epoch": self.epoch,
            "id": self.id,
            "prev_id": self.prev_id,
            "formats": self.formats,
            "meta": self.meta,
            "ts": self.ts,
        }

    @classmethod
    def from_map(cls, channel: str, m: dict) -> "Envelope":
        try:
            return cls(
                channel=channel,
                seq=int(m["seq"]),
                epoch=str(m["epoch"]),
                formats=m.get("formats") or {},
                id=m.get("id"),
                prev_id=m.get("prev_id"),
                meta=m.get("meta") or {},
                ts=float(m.get("ts") or 0.0),
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
    return topic(env.channel) + _packb(env.to_map())


def encode_envelopes(envs: Iterable[Envelope]) -> list[bytes]:
    """``encode_envelope`` for each of ``envs`` (a batch, written by ``_speedups``'
    ``encode_envelopes``: the same bytes; the broker's fan-out uses its ``fan_out``)."""
    return _encode_envelopes(envs)


def decode_frame(frame: bytes) -> "Envelope | Marker":
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


def is_heartbeat(frame: bytes) -> bool:
    return frame.startswith(HEARTBEAT_TOPIC)


def encode_heartbeat(broker_id: str, started: float, ts: float, stats_ttl: int = 0) -> bytes:
    hb = {"broker_id": broker_id, "started": started, "ts": ts}
    if stats_ttl > 0:
        hb["stats_ttl"] = int(stats_ttl)
    return HEARTBEAT_TOPIC + _packb(hb)


def decode_heartbeat(frame: bytes) -> dict:
    try:
        m = _unpackb(frame[len(HEARTBEAT_TOPIC) :])
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"bad heartbeat: {exc}") from exc
    if not isinstance(m, dict) or "broker_id" not in m:
        raise RemoteProtocolError("bad heartbeat")
    return m


def is_recover(frame: bytes) -> bool:
    return frame.startswith(RECOVER_TOPIC)


def encode_recover(ts: float) -> bytes:
    return RECOVER_TOPIC + _packb({"ts": ts})


def encode_control(msg: dict) -> bytes:
    """Encode one control request or reply (a map with ``rid``)."""
    return _packb(msg)


def decode_control(frame: bytes) -> dict:
    try:
        m = _unpackb(frame)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"bad control message: {exc}") from exc
    if not isinstance(m, dict):
        raise RemoteProtocolError("bad control message: not a map")
    return m


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
