"""The edge control protocol, broker side, sans-IO (the contract and its typed messages are in
``broker.wire``).

``parse_control(frame)`` validates one request (``wire.decode_request``, plus the channel name
checked as publish checks it, plus the wire version of a ``hello``) into a ``ControlRequest``;
the server asks the store and builds the reply with ``position_reply``, ``replay_reply``,
``hello_reply`` or ``error_reply`` (``wire.encode_reply`` of the typed replies).  Every reply
echoes ``rid``.  A request that cannot be decoded at all, or is invalid, gets an error reply
(``rid`` is None when it could not be read); so does a ``hello`` of another wire version, with
a reason that names both versions.  A ``stats`` message (fire-and-forget, never answered) is
handed over whole in ``ControlRequest.stats`` for ``broker.ops.stats`` to validate; an
``answer`` to a relayed command (never answered either) in ``ControlRequest.request``, a
``wire.CommandAnswer`` for ``broker.ingest.edgecmds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker import wire
from broker.errors import PublishError
from broker.history import Position, Replay
from broker.items import validate_channel
from broker.wire import REPLAY_LIMIT, WIRE_VERSION, ControlError

__all__ = [
    "OPS",
    "ControlError",
    "ControlRequest",
    "parse_control",
    "hello_reply",
    "position_reply",
    "replay_reply",
    "error_reply",
]

OPS = ("hello", "position", "replay", "stats", "answer", "presence")


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """The server's view of one typed request (``wire.HelloRequest``, ``PositionRequest``,
    ``ReplayRequest`` or ``StatsReport``, in ``request``)."""

    op: str
    rid: object
    channel: str = ""
    epoch: str | None = None
    after_seq: int | None = None
    after_id: str | None = None
    limit: int = REPLAY_LIMIT
    stats: dict[Any, Any] | None = None  # the whole message, for op "stats"
    request: object = field(default=None, compare=False)


def parse_control(frame: bytes) -> ControlRequest:
    req = wire.decode_request(frame)
    rid = req.rid
    if isinstance(req, wire.HelloRequest):
        if req.wire_version != WIRE_VERSION:
            raise ControlError(wire.version_mismatch(req.wire_version, WIRE_VERSION), rid)
        return ControlRequest("hello", rid, request=req)
    if isinstance(req, wire.StatsReport):
        return ControlRequest("stats", rid, stats=req.raw, request=req)
    if isinstance(req, wire.CommandAnswer):
        return ControlRequest("answer", rid, request=req)
    if isinstance(req, wire.PresenceReport):  # fire-and-forget (broker.ops.presence)
        return ControlRequest("presence", rid, request=req)
    try:
        validate_channel(req.channel, "request")
    except PublishError as exc:
        raise ControlError(exc.reason, rid) from None
    if isinstance(req, wire.PositionRequest):
        return ControlRequest("position", rid, req.channel, request=req)
    return ControlRequest(
        "replay",
        rid,
        req.channel,
        epoch=req.epoch,
        after_seq=req.after_seq,
        after_id=req.after_id,
        limit=req.limit,
        request=req,
    )


def hello_reply(
    rid: object, broker_id: str, started: float, cluster_id: str = "", shared_store: bool = False
) -> bytes:
    return wire.encode_reply(
        wire.HelloReply(rid, broker_id, started, cluster_id, WIRE_VERSION, shared_store)
    )


def position_reply(rid: object, channel: str, pos: Position) -> bytes:
    return wire.encode_reply(wire.PositionReply(rid, channel, pos.epoch, pos.last_seq, pos.last_id))


def replay_reply(rid: object, channel: str, rep: Replay) -> bytes:
    return wire.encode_reply(
        wire.ReplayReply(rid, channel, rep.epoch, rep.last_seq, rep.complete, tuple(rep.items))
    )


def error_reply(rid: object, reason: str) -> bytes:
    return wire.encode_reply(wire.ErrorReply(rid, reason))
