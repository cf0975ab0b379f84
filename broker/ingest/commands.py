"""The command socket (Pushpin's ZRPC over ROUTER), sans-IO (reference 6.2).

A request is one tnetstring ``{"id": bytes?, "method": bytes, "args": dict?}`` after the ROUTER
envelope (REQ peers put an empty delimiter frame before it; DEALER peers should too, as with
Pushpin).  The reply is ``{"id"?, "success": true, "value": ...}`` or ``{"id"?, "success":
false, "condition": bytes, "value"?: bytes}``.  Methods:

* ``get-zmq-uris`` -> ``{"command", "publish-pull", "publish-sub"}`` (the bind endpoints; a
  ``*`` host is replaced by publishers with the command URI's host, as pubcontrol does)
* ``publish`` (``args.items``, parsed like tnetstring items) -> ``value: null``; errors are
  ``bad-request`` with Pushpin's ``Invalid format: ...`` message as the value
  (sent once the items are stored; ``store-unavailable`` when the history store refused them)
* ``recover`` -> ``value: null`` (forget remembered last ids); ``rate-limited`` over the
  broker's ``recover_per_s``
* ``conncheck`` (``args.ids``: a list of connection ids) -> the list of those ids that are open
  client connections on some edge (``bad-request`` when ``ids`` is missing or not a list of
  strings; ``proxy-request-failed`` when an edge did not answer in time)
* ``refresh`` (``args.cid``, else ``args.channel``) -> ``value: null`` once the WebSocket
  connection ``cid`` (``item-not-found`` when no edge has it; ``proxy-request-failed`` when an
  edge did not answer in time), or every WebSocket session subscribed to ``channel`` (always a
  success, as in Pushpin), was refreshed: a WebSocket-over-HTTP session sends its origin a
  request now (with the events it has queued, often none); ``bad-request`` without either key
  or when the value is not a string
* ``channel-items`` (``args.channel``, ``args.after``?, ``args.limit``?), ``channel-info``
  (``args.channel``), ``channels`` (``args.prefix``?, ``args.after``?, ``args.limit``?): the
  channel API's queries (``broker.ops.channelapi``, docs/channel-api.md), answered with the
  same map as the HTTP calls; ``bad-request`` with the reason for bad arguments,
  ``store-unavailable`` when the store did not answer.  ``CommandResult.query`` is the query
  to run; the pipeline answers it with ``query_reply``
* ``presence`` (``args.channel``, ``args.limit``?): who is on a channel with presence on
  (``broker.ops.presence``), the same map as ``GET /channels/<ch>/presence``; ``bad-request``
  with the reason for bad arguments, ``item-not-found`` when presence is off for the channel.
  ``CommandResult.presence`` is the query; the pipeline answers it with ``presence_reply``
* anything else -> ``method-not-found``

``conncheck`` and ``refresh`` are answered by the edges: ``CommandResult.relay`` is the command
to relay (``broker.ingest.edgecmds``), and ``relay_reply`` the answer once they have answered.

A request that is not a valid ZRPC tnetstring gets no reply (Pushpin logs and skips it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from broker.errors import PublishError, RemoteProtocolError
from broker.ingest import tnetstring
from broker.items import Item, parse_items_container, validate_channel
from broker.ops import channelapi
from broker.ops.presence import LIMIT_DEFAULT, LIMIT_MAX, PresenceQuery
from broker.wire import ConnCheckCommand, EdgeCommand, RefreshCommand


@dataclass(frozen=True, slots=True)
class CommandResult:
    reply: bytes | None  # the tnetstring reply payload; None: do not answer
    method: str = ""
    items: tuple[Item, ...] = ()
    recover: bool = False
    error: str | None = None  # why the request was rejected, for logging
    # for publish: the reply to send instead of ``reply`` when the store refused the items
    # (``reply`` is only sent once they are stored: nothing is acknowledged that was not);
    # for recover: the reply when the broker's rate limit refused it
    failed_reply: bytes | None = None
    # conncheck and refresh: the command the edges answer (``cmd`` 0: the relay numbers it);
    # ``reply`` is None then, ``relay_reply`` builds it with the request's ``rid``
    relay: EdgeCommand | None = None
    rid: bytes | None = None
    # channel-items, channel-info, channels: the query the pipeline runs (``reply`` is None
    # then; ``query_reply`` builds it with ``rid``)
    query: channelapi.Query | None = None
    # presence: the query the pipeline answers (``reply`` is None; ``presence_reply``)
    presence: PresenceQuery | None = None


def split_envelope(frames: Sequence[bytes]) -> tuple[list[bytes], bytes]:
    """Split ROUTER frames into (routing prefix to echo back, payload).

    ``[id, b"", payload]`` (REQ, or DEALER with delimiter) echoes ``[id, b""]``;
    ``[id, payload]`` (DEALER without delimiter) echoes ``[id]``.
    """
    if len(frames) < 2:
        raise RemoteProtocolError("command: message without routing envelope")
    frames = [bytes(f) for f in frames]
    try:
        i = frames.index(b"", 1)
    except ValueError:
        return frames[:-1], frames[-1]
    if i != len(frames) - 2:
        raise RemoteProtocolError("command: expected exactly one payload frame")
    return frames[: i + 1], frames[-1]


def handle_command(payload: bytes, uris: Mapping[str, str]) -> CommandResult:
    """Answer one command request; ``uris`` has ``command``, ``publish-pull``, ``publish-sub``."""
    try:
        req = tnetstring.loads(payload)
    except RemoteProtocolError as exc:
        return CommandResult(None, error=f"tnetstring parse failed: {exc.reason}")
    if not isinstance(req, dict):
        return CommandResult(None, error="request is not a dict")
    rid = req.get(b"id")
    method = req.get(b"method")
    args = req.get(b"args", {})
    if (
        (rid is not None and not isinstance(rid, bytes))
        or not isinstance(method, bytes)
        or (not isinstance(args, dict))
    ):
        return CommandResult(None, error="invalid request format")
    name = method.decode("utf-8", "replace")

    def ok(
        value: object = None,
        *,
        items: tuple[Item, ...] = (),
        recover: bool = False,
        failed_reply: bytes | None = None,
    ) -> CommandResult:
        return CommandResult(
            _reply(rid, True, value=value),
            name,
            items=items,
            recover=recover,
            failed_reply=failed_reply,
        )

    def fail(condition: str, message: str | None = None) -> CommandResult:
        reply = _reply(rid, False, condition=condition, value=message)
        return CommandResult(reply, name, error=f"{condition}: {message}" if message else condition)

    if name == "get-zmq-uris":
        return ok({k: v.encode("utf-8") for k, v in uris.items() if v})
    if name == "recover":  # refused with failed_reply over the broker's recover_per_s
        return ok(
            None,
            recover=True,
            failed_reply=_reply(
                rid, False, condition="rate-limited", value="too many recover requests; retry later"
            ),
        )
    if name == "publish":
        try:
            items = parse_items_container(args, json=False)
        except PublishError as exc:
            return fail("bad-request", exc.reason)
        return ok(
            None,
            items=tuple(items),
            failed_reply=_reply(
                rid,
                False,
                condition="store-unavailable",
                value="history store unavailable, nothing published; retry later",
            ),
        )
    if name == "conncheck":
        ids = args.get(b"ids")
        if not isinstance(ids, list) or not all(isinstance(i, bytes) for i in ids):
            return fail("bad-request")
        cids = tuple(dict.fromkeys(i.decode("utf-8", "replace") for i in ids))
        return CommandResult(None, name, relay=ConnCheckCommand(0, cids), rid=rid)
    if name == "refresh":
        for key in (b"cid", b"channel"):  # cid first, as Pushpin looks at it first
            if key in args:
                value = args[key]
                if not isinstance(value, bytes):
                    return fail("bad-request")
                text = value.decode("utf-8", "replace")
                cmd = (
                    RefreshCommand(0, cid=text)
                    if key == b"cid"
                    else RefreshCommand(0, channel=text)
                )
                return CommandResult(None, name, relay=cmd, rid=rid)
        return fail("bad-request")
    if name in channelapi.COMMAND_METHODS:
        try:
            query = channelapi.parse_command(name, args)
        except channelapi.QueryError as exc:
            return fail("bad-request", exc.reason)
        return CommandResult(None, name, rid=rid, query=query)
    if name == "presence":
        try:
            q = parse_presence(args)
        except PublishError as exc:
            return fail("bad-request", exc.reason)
        return CommandResult(None, name, rid=rid, presence=q)
    return fail("method-not-found")


def parse_presence(args: Mapping[bytes, object]) -> PresenceQuery:
    """The ``presence`` command's query (``channel``; ``limit``: a positive integer, or its
    digits, at most ``LIMIT_MAX``, as over HTTP); ``PublishError`` with the reason if bad."""
    raw = args.get(b"channel")
    if not isinstance(raw, bytes):
        raise PublishError("Invalid channel: 'channel' is required, a string.")
    try:
        channel = validate_channel(raw.decode("utf-8"), "channel")
    except UnicodeDecodeError:
        raise PublishError("Invalid channel: not UTF-8.") from None
    except PublishError as exc:
        raise PublishError(f"Invalid channel: {exc.reason}") from None
    limit = args.get(b"limit", LIMIT_DEFAULT)
    if isinstance(limit, bytes) and limit.isdigit() and len(limit) < 10:
        limit = int(limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise PublishError("Invalid limit: a positive integer.")
    return PresenceQuery(channel, min(limit, LIMIT_MAX))


def presence_reply(rid: bytes | None, q: PresenceQuery, value: dict[str, object] | None) -> bytes:
    """The reply to a ``presence`` query: its answer, or ``item-not-found`` (None: presence
    is off for the channel)."""
    if value is None:
        reason = f"presence is off for channel {q.channel!r} (no namespace with presence = true)"
        return _reply(rid, False, condition="item-not-found", value=reason)
    return _reply(rid, True, value=value)


def query_reply(rid: bytes | None, value: dict[str, object] | None) -> bytes:
    """The reply to a channel API query: its answer, or ``store-unavailable`` (None)."""
    if value is None:
        return _reply(rid, False, condition="store-unavailable", value="history store unavailable")
    return _reply(rid, True, value=value)


def relay_reply(
    rid: bytes | None, command: EdgeCommand, found: set[str], *, complete: bool
) -> bytes:
    """The reply to a relayed command: ``found`` is what the edges found, ``complete`` whether
    every edge answered (or the answer was known before: every id found, the cid found)."""
    if isinstance(command, ConnCheckCommand):
        if not complete:
            return _reply(rid, False, condition="proxy-request-failed")
        return _reply(rid, True, value=[i.encode("utf-8") for i in command.ids if i in found])
    if command.cid is not None and command.cid not in found:
        condition = "item-not-found" if complete else "proxy-request-failed"
        return _reply(rid, False, condition=condition)
    return _reply(rid, True)  # a channel's sessions: errors ignored, as Pushpin does


def _reply(rid: bytes | None, success: bool, *, value: object = None, condition: str = "") -> bytes:
    out: dict[bytes, object] = {}
    if rid:
        out[b"id"] = rid
    out[b"success"] = success
    if success:
        out[b"value"] = value
    else:
        out[b"condition"] = condition.encode()
        if value is not None:
            out[b"value"] = value.encode("utf-8") if isinstance(value, str) else value
    return tnetstring.dumps(out)


def rate_limited(result: CommandResult, message: str) -> CommandResult:
    """A ``recover`` result answered with its ``rate-limited`` failure instead (nothing done)."""
    return CommandResult(result.failed_reply, result.method, error=f"rate-limited: {message}")
