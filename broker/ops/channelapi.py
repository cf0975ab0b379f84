"""The channel API: a channel's history, its state, and the live channels (docs/channel-api.md).

Three queries, asked over HTTP on the publish API port (``GET``, the publish JWT auth when
``publish_jwt_key`` is set, JSON answers) or on the ZeroMQ command socket (tnetstring, as
Pushpin's other commands, ``broker.ingest.commands``):

==============================================  ==================  =========================
HTTP                                            command method      answer
==============================================  ==================  =========================
``/channels/<ch>/items?after=<id>&limit=<n>``   ``channel-items``   retained items after a
                                                                    cursor, in order
``/channels/<ch>``                              ``channel-info``    last id, history size,
                                                                    subscribers by mode
``/channels?prefix=<p>&after=<ch>&limit=<n>``   ``channels``        live channels with counts,
                                                                    by name, a page at a time
==============================================  ==================  =========================

History (``ItemsQuery``) is the store's ``replay`` (``broker.history`` has its cursor rules):
``after`` is any cursor the resume path accepts (a publisher id still in history, or
``<epoch>:<seq>``); without it, the history from the start of the epoch.  ``truncated`` is
True when history cannot cover the gap after the cursor (unknown id, another epoch, a cursor
older than the oldest item kept, or beyond the last): the items are then the oldest retained
ones and the origin falls back to its own data.  ``more`` says a ``limit`` cut the answer
short; ``next`` is the cursor to ask from then.

Counts come from the edges' once-a-second reports (``broker.ops.stats``: they flow whether or
not the Pushpin stats socket is on); ``counts_age_s`` is how old the oldest edge's figures are.
An edge silent for ``channel_counts_max_age_s`` is forgotten with its counts.

Unknown channels are not an error: a channel nobody published to is an empty one (``last_seq``
0, no items, no subscribers), as the resume path sees it.  Asking about one gives it an epoch in
the store, as a subscription does.

Everything above the I/O part at the end is sans-IO: ``parse_http`` and ``parse_command`` turn a
request into a frozen query (or raise ``QueryError`` with the status and reason), and
``items_answer``, ``channel_answer``, ``channels_answer`` build the answer from what the store
and the counts say.  ``published_answer`` is the publish API's ``Accept: application/json``
answer with the id each item was given.
"""

from __future__ import annotations

import base64
import heapq
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote

from broker.errors import PublishError, RemoteProtocolError, StoreUnavailable
from broker.history import Position, Replay
from broker.items import Item, item_bytes, validate_channel, validate_id
from broker.ops.stats import MODES, StatsEncoder
from broker.store.memory import Store
from broker.wire import REPLAY_LIMIT, Envelope

PATH = "/channels"
ITEMS_LIMIT_DEFAULT = 100
ITEMS_LIMIT_MAX = REPLAY_LIMIT  # 1000: what one store replay returns at most
ITEMS_MAX_BYTES = 1 << 20  # payload bytes in one history answer (at least one item), then "more"
CHANNELS_LIMIT_DEFAULT = 100
CHANNELS_LIMIT_MAX = 1000
MAX_QUERY_FIELDS = 10
COMMAND_METHODS = ("channel-items", "channel-info", "channels")
# paths under /channels that are someone else's (broker.ops.presence)
_OTHER_SUFFIXES = ("/presence",)


class QueryError(RemoteProtocolError):
    """A bad channel API request: ``status`` and the one-line ``reason`` to answer with."""


@dataclass(frozen=True, slots=True)
class ItemsQuery:
    channel: str
    after: str | None = None
    limit: int = ITEMS_LIMIT_DEFAULT


@dataclass(frozen=True, slots=True)
class ChannelQuery:
    channel: str


@dataclass(frozen=True, slots=True)
class ChannelsQuery:
    prefix: str = ""
    after: str | None = None
    limit: int = CHANNELS_LIMIT_DEFAULT


Query = ItemsQuery | ChannelQuery | ChannelsQuery


@dataclass(frozen=True, slots=True)
class ChannelApiStatistics:
    queries: dict[str, int]
    refused: int  # bad requests (4xx, bad-request)
    store_failures: int


# -- requests ------------------------------------------------------------------------------------


def match_path(target: str) -> bool:
    """Whether ``target`` (path and query) is one of this API's paths."""
    path = target.split("?", 1)[0]
    if path in (PATH, PATH + "/"):
        return True
    return path.startswith(PATH + "/") and not path.rstrip("/").endswith(_OTHER_SUFFIXES)


def _channel(raw: str) -> str:
    try:
        return validate_channel(unquote(raw, errors="strict"), "channel")
    except UnicodeDecodeError:
        raise QueryError("Invalid channel: not UTF-8.") from None
    except PublishError as exc:
        raise QueryError(f"Invalid channel: {_why(exc)}.") from None


def _why(exc: PublishError) -> str:
    """The reason in a ``validate_*`` message ("... invalid value (NUL byte)" -> "NUL byte")."""
    head, sep, tail = exc.reason.rpartition("(")
    return tail.rstrip(")") if sep else exc.reason


def _limit(value: object, default: int, maximum: int) -> int:
    if value is None:
        return default
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise QueryError(f"Invalid limit: must be an integer from 1 to {maximum}.")
    return value


def _cursor(value: object, what: str = "after") -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise QueryError(f"Invalid {what}: not UTF-8.") from None
    if not isinstance(value, str) or not value:
        raise QueryError(f"Invalid {what}: must be a non-empty id.")
    try:
        return validate_id(value, what, what)
    except PublishError as exc:
        raise QueryError(f"Invalid {what}: {_why(exc)}.") from None


def _query(text: str, allowed: Sequence[str]) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except (ValueError, UnicodeDecodeError):
        raise QueryError("Invalid query string.") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        if k not in allowed:
            raise QueryError(f"Unknown parameter {k!r} (allowed: {', '.join(allowed) or 'none'}).")
        if k in out:
            raise QueryError(f"Parameter {k!r} given twice.")
        out[k] = v
    return out


def parse_http(method: str, target: str) -> Query:
    """The query a ``match_path`` request asks; ``QueryError`` (405, 400, 404) if it is bad."""
    path, _, qs = target.partition("?")
    if method.upper() != "GET":
        raise QueryError(f"Method not allowed: {method}.", status=405)
    rest = path[len(PATH) :].strip("/")
    if not rest:
        q = _query(qs, ("prefix", "after", "limit"))
        return ChannelsQuery(
            prefix=q.get("prefix", ""),
            after=q.get("after") or None,
            limit=_limit(q.get("limit"), CHANNELS_LIMIT_DEFAULT, CHANNELS_LIMIT_MAX),
        )
    if rest.endswith("/items"):
        q = _query(qs, ("after", "limit"))
        return ItemsQuery(
            channel=_channel(rest[: -len("/items")]),
            after=_cursor(q.get("after")),
            limit=_limit(q.get("limit"), ITEMS_LIMIT_DEFAULT, ITEMS_LIMIT_MAX),
        )
    _query(qs, ())
    return ChannelQuery(_channel(rest))


def parse_command(method: str, args: Mapping[bytes, Any]) -> Query:
    """The query of a ``COMMAND_METHODS`` command (args as in the HTTP query, values as
    tnetstring byte strings or ints); ``QueryError`` if it is bad."""

    def text(key: bytes) -> str | None:
        v = args.get(key)
        if v is None:
            return None
        if not isinstance(v, bytes):
            raise QueryError(f"Invalid {key.decode()}: must be a string.")
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise QueryError(f"Invalid {key.decode()}: not UTF-8.") from None

    if method == "channels":
        return ChannelsQuery(
            prefix=text(b"prefix") or "",
            after=text(b"after") or None,
            limit=_limit(args.get(b"limit"), CHANNELS_LIMIT_DEFAULT, CHANNELS_LIMIT_MAX),
        )
    name = text(b"channel")
    if name is None:
        raise QueryError("Invalid channel: 'channel' is required.")
    try:
        channel = validate_channel(name, "channel")
    except PublishError as exc:
        raise QueryError(f"Invalid channel: {_why(exc)}.") from None
    if method == "channel-info":
        return ChannelQuery(channel)
    if method == "channel-items":
        return ItemsQuery(
            channel, _cursor(args.get(b"after")), _limit(args.get(b"limit"), 100, ITEMS_LIMIT_MAX)
        )
    raise QueryError(f"Unknown method {method!r}.", status=404)


# -- answers -------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Nested values as JSON has them (bytes as UTF-8 text, replacement characters if not)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if v is not None}
    return value


def format_json(fmt: Mapping[str, Any]) -> dict[str, Any]:
    """One format of an item as the publish JSON writes it: a binary (not UTF-8) body or
    content under ``<key>-bin``, base64 (the marker publishers use: ``body-bin``,
    ``content-bin``); unset fields left out."""
    out: dict[str, Any] = {}
    for key, value in fmt.items():
        t = type(value)
        if t is str or t is int:  # most fields (action, code, type): as they are
            out[key] = value
        elif t is bytes:
            try:
                out[key] = value.decode("utf-8")
            except UnicodeDecodeError:
                out[key + "-bin"] = base64.b64encode(value).decode("ascii")
        elif value is not None:
            out[key] = _jsonable(value)
    return out


def item_json(env: Envelope) -> dict[str, Any]:
    """One retained item: ``id`` (``epoch:seq``, the cursor to resume after it), ``seq``, the
    publisher's ``publisher_id`` and ``prev_id`` when it had them, ``ts``, ``formats``."""
    out: dict[str, Any] = {"id": f"{env.epoch}:{env.seq}", "seq": env.seq}
    if env.id is not None:
        out["publisher_id"] = env.id
    if env.prev_id is not None:
        out["prev_id"] = env.prev_id
    out["ts"] = env.ts
    out["formats"] = {name: format_json(f) for name, f in env.formats.items()}
    if env.meta:
        out["meta"] = dict(env.meta)
    return out


def items_answer(q: ItemsQuery, rep: Replay, max_bytes: int = ITEMS_MAX_BYTES) -> dict[str, Any]:
    """The answer to ``q`` from the store's replay: at most ``max_bytes`` of payload (at least
    one item), so one answer never holds the loop long whatever the items' size."""
    items = rep.items
    total = 0
    for n, env in enumerate(items):
        total += item_bytes(env)
        if total > max_bytes and n:
            items = items[:n]
            break
    last = items[-1].seq if items else None
    more = last is not None and last < rep.last_seq
    out: dict[str, Any] = {
        "channel": q.channel,
        "epoch": rep.epoch,
        "last_seq": rep.last_seq,
        "truncated": not rep.complete,
        "items": [item_json(env) for env in items],
        "more": more,
    }
    if more:
        out["next"] = f"{rep.epoch}:{last}"
    return out


def _age(counts: StatsEncoder | None, now: float) -> float | None:
    age = counts.reports_age(now) if counts is not None else None
    return None if age is None else round(age, 3)


def channel_answer(
    q: ChannelQuery,
    pos: Position,
    oldest: Replay,
    live: bool,
    counts: StatsEncoder | None,
    now: float,
) -> dict[str, Any]:
    """``pos``: the store's position; ``oldest``: a one-item replay from the epoch's start (its
    item is the oldest retained)."""
    first = oldest.items[0].seq if oldest.items and oldest.epoch == pos.epoch else None
    last_seq = pos.last_seq
    modes = counts.channel_modes(q.channel) if counts is not None else {}
    return {
        "channel": q.channel,
        "epoch": pos.epoch,
        "last_seq": last_seq,
        "last_id": f"{pos.epoch}:{last_seq}" if last_seq else None,
        "last_publisher_id": pos.last_id,
        "history": {
            "items": last_seq - first + 1 if first is not None else 0,
            "first_seq": first,
        },
        "live": live,
        "subscribers": sum(modes.values()),
        "by_mode": {m: modes.get(m, 0) for m in MODES},
        "edges": len(counts.edges) if counts is not None else 0,
        "counts_age_s": _age(counts, now),
    }


def channels_answer(
    q: ChannelsQuery, live: Iterable[str], counts: StatsEncoder | None, now: float
) -> dict[str, Any]:
    """Live channels (some edge subscribed, or subscribers reported) whose name starts with
    ``prefix`` and sorts after ``after``, by name, at most ``limit`` (one pass, no full sort)."""
    totals = counts.channel_totals() if counts is not None else {}
    prefix, after = q.prefix, q.after

    def wanted(names: Iterable[str]) -> Iterable[str]:
        for name in names:
            if name.startswith(prefix) and (after is None or name > after):
                yield name

    names = set(wanted(live))
    names.update(wanted(totals))
    page = heapq.nsmallest(q.limit + 1, names)
    more = len(page) > q.limit
    page = page[: q.limit]
    rows = []
    for name in page:
        modes = counts.channel_modes(name) if counts is not None else {}
        rows.append(
            {
                "channel": name,
                "subscribers": totals.get(name, 0),
                "by_mode": {m: modes.get(m, 0) for m in MODES},
            }
        )
    out: dict[str, Any] = {
        "channels": rows,
        "more": more,
        "edges": len(counts.edges) if counts is not None else 0,
        "counts_age_s": _age(counts, now),
    }
    if more:
        out["next"] = page[-1]
    return out


def published_answer(
    items: Sequence[Item], stored: Sequence[tuple[Item, Envelope]], message: str = "Published"
) -> dict[str, Any]:
    """The publish API's JSON answer: Pushpin's ``message`` plus, per item in request order,
    its ``id`` (the publisher's id, else ``epoch:seq``), ``epoch`` and ``seq``; an item not
    stored by this request (held back waiting for its ``prev-id``, or a repeated id dropped)
    has ``"stored": false`` and no seq."""
    by_item = {id(item): env for item, env in stored}
    rows: list[dict[str, Any]] = []
    for item in items:
        env = by_item.get(id(item))
        if env is None:
            rows.append({"channel": item.channel, "id": item.id, "stored": False})
        else:
            rows.append(
                {
                    "channel": env.channel,
                    "id": env.cursor,
                    "epoch": env.epoch,
                    "seq": env.seq,
                    "stored": True,
                }
            )
    return {"message": message, "items": rows}


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"


# -- the I/O: asking the store ---------------------------------------------------------------------


class Source(Protocol):
    """What the queries read (the broker's ``Pipeline`` has it)."""

    store: Store
    live: set[str]
    edge_stats: StatsEncoder | None


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, body text, content type, extra headers."""

    status: int
    body: str
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class ChannelApi:
    def __init__(self, source: Source, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.clock = clock
        self._queries = {"items": 0, "info": 0, "channels": 0}
        self._refused = 0
        self._store_failures = 0

    async def run(self, q: Query) -> dict[str, Any]:
        """The answer to ``q``; raises ``StoreUnavailable``."""
        src = self.source
        now = self.clock()
        try:
            if isinstance(q, ItemsQuery):
                self._queries["items"] += 1
                rep = await src.store.replay(
                    q.channel, None, 0 if q.after is None else None, q.after, q.limit, now
                )
                return items_answer(q, rep)
            if isinstance(q, ChannelQuery):
                self._queries["info"] += 1
                pos = await src.store.position(q.channel)
                oldest = await src.store.replay(q.channel, pos.epoch, 0, None, 1, now)
                return channel_answer(q, pos, oldest, q.channel in src.live, src.edge_stats, now)
        except StoreUnavailable:
            self._store_failures += 1
            raise
        self._queries["channels"] += 1
        return channels_answer(q, src.live, src.edge_stats, now)

    async def http(self, method: str, target: str, denied: str | None = None) -> Answer:
        """The answer to a ``match_path`` request (errors as one line of text); ``denied``:
        the auth's reason to refuse it (``broker.ingest.auth``), answered 401."""
        if denied is not None:
            self._refused += 1
            return Answer(401, denied + "\n", "text/plain", (("WWW-Authenticate", "Bearer"),))
        try:
            q = parse_http(method, target)
        except QueryError as exc:
            self._refused += 1
            extra = (("Allow", "GET"),) if exc.status == 405 else ()
            return Answer(exc.status, exc.reason + "\n", "text/plain", extra)
        try:
            doc = await self.run(q)
        except StoreUnavailable:
            return Answer(503, "Store unavailable.\n", "text/plain")
        return Answer(200, dumps(doc))

    async def command(self, q: Query) -> dict[str, Any] | None:
        """A command's value, or None when the store is unavailable."""
        try:
            return await self.run(q)
        except StoreUnavailable:
            return None

    def refused(self) -> None:
        self._refused += 1

    def statistics(self) -> ChannelApiStatistics:
        return ChannelApiStatistics(dict(self._queries), self._refused, self._store_failures)
