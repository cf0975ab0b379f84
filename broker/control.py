"""The edge control protocol, broker side, sans-IO (the contract is in ``broker.wire``).

``parse_control(frame)`` validates one request into a ``ControlRequest``; the server asks the
store and builds the reply with ``position_reply``, ``replay_reply``, ``hello_reply`` or
``error_reply``.  Every reply echoes ``rid``.  A request that cannot be decoded at all, or is
invalid, gets an error reply (``rid`` is None when it could not be read).  A ``stats`` message
(fire-and-forget, never answered) is handed over whole in ``ControlRequest.stats`` for
``broker.stats`` to validate.
"""
from __future__ import annotations

from dataclasses import dataclass

from broker.errors import PublishError, RemoteProtocolError
from broker.history import Position, Replay
from broker.items import validate_channel
from broker.wire import REPLAY_LIMIT, decode_control, encode_control

OPS = ("hello", "position", "replay", "stats")


@dataclass(frozen=True, slots=True)
class ControlRequest:
    op: str
    rid: object
    channel: str = ""
    epoch: str | None = None
    after_seq: int | None = None
    after_id: str | None = None
    limit: int = REPLAY_LIMIT
    stats: dict | None = None  # the whole message, for op "stats"


class ControlError(RemoteProtocolError):
    """An invalid control request; ``rid`` is what to echo in the error reply."""

    def __init__(self, reason: str, rid: object = None) -> None:
        super().__init__(reason)
        self.rid = rid


def _opt_str(m: dict, key: str, rid: object) -> str | None:
    v = m.get(key)
    if v is None or isinstance(v, str):
        return v
    raise ControlError(f"'{key}' must be a string", rid)


def _opt_int(m: dict, key: str, rid: object) -> int | None:
    v = m.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ControlError(f"'{key}' must be a non-negative integer", rid)
    return v


def parse_control(frame: bytes) -> ControlRequest:
    try:
        m = decode_control(frame)
    except RemoteProtocolError as exc:
        raise ControlError(exc.reason) from None
    rid = m.get("rid")
    op = m.get("op")
    if op not in OPS:
        raise ControlError(f"unknown op {op!r}", rid)
    if op == "hello":
        return ControlRequest("hello", rid)
    if op == "stats":
        return ControlRequest("stats", rid, stats=m)
    channel = m.get("channel")
    if not isinstance(channel, str):
        raise ControlError("'channel' must be a string", rid)
    try:
        validate_channel(channel, "request")
    except PublishError as exc:
        raise ControlError(exc.reason, rid) from None
    if op == "position":
        return ControlRequest("position", rid, channel)
    limit = _opt_int(m, "limit", rid)
    return ControlRequest(
        "replay",
        rid,
        channel,
        epoch=_opt_str(m, "epoch", rid),
        after_seq=_opt_int(m, "after_seq", rid),
        after_id=_opt_str(m, "after_id", rid),
        limit=REPLAY_LIMIT if limit is None else min(limit, REPLAY_LIMIT),
    )


def hello_reply(rid: object, broker_id: str, started: float, cluster_id: str = "") -> bytes:
    return encode_control({"rid": rid, "ok": True, "broker_id": broker_id, "started": started,
                           "cluster_id": cluster_id})


def position_reply(rid: object, channel: str, pos: Position) -> bytes:
    return encode_control(
        {
            "rid": rid,
            "ok": True,
            "channel": channel,
            "epoch": pos.epoch,
            "last_seq": pos.last_seq,
            "last_id": pos.last_id,
        }
    )


def replay_reply(rid: object, channel: str, rep: Replay) -> bytes:
    return encode_control(
        {
            "rid": rid,
            "ok": True,
            "channel": channel,
            "epoch": rep.epoch,
            "last_seq": rep.last_seq,
            "complete": rep.complete,
            "items": [env.to_map() for env in rep.items],
        }
    )


def error_reply(rid: object, reason: str) -> bytes:
    return encode_control({"rid": rid, "ok": False, "error": reason})
