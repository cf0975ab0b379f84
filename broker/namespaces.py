"""Channel namespaces: per-prefix settings from ``[[namespace]]`` tables (sans-IO).

The TOML config may hold any number of tables::

    [[namespace]]
    prefix = "chat:"            # channels starting with this (required, non-empty, unique)
    history_max_items = 10000   # history bounds for these channels (absent: the global ones)
    history_max_age_s = 86400.0
    presence = true             # who is subscribed, by the ``user`` meta (broker.ops.presence)
    presence_suffix = "/presence"  # the companion channel of join/leave events
    publish_zmq = true          # false: publish over the HTTP API only; ZeroMQ publishes
                                # (PUSH, SUB, the command socket) are refused, logged, counted

A channel takes the settings of the namespace with the **longest** prefix it starts with;
a channel in no namespace uses the global settings (``history_max_items``,
``history_max_age_s``; presence off; ZeroMQ publish allowed).  A presence companion channel
(``chat:room/presence``) is in the namespace of its name like any channel, so its own history
bound applies to it.

``parse_namespaces`` turns the raw TOML list into ``Namespace`` records and reports every
problem at once; ``NamespaceTable`` answers the lookups (a bounded cache in front of a scan of
the prefixes, longest first: a lookup is a dict hit for a channel seen before).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_PRESENCE_SUFFIX = "/presence"
CACHE_MAX = 10_000  # channel -> namespace lookups remembered (cleared when full)

_KEYS = (
    "prefix",
    "history_max_items",
    "history_max_age_s",
    "presence",
    "presence_suffix",
    "publish_zmq",
)


@dataclass(frozen=True, slots=True)
class Namespace:
    """One ``[[namespace]]`` table (None: the global setting applies)."""

    prefix: str
    history_max_items: int | None = None
    history_max_age_s: float | None = None
    presence: bool = False
    presence_suffix: str = DEFAULT_PRESENCE_SUFFIX
    publish_zmq: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _KEYS}


def namespace_from_dict(d: Mapping[str, Any]) -> Namespace:
    """Rebuild a ``Namespace`` handed to a child process (``Namespace.to_dict`` output)."""
    return Namespace(**{k: d[k] for k in _KEYS if k in d})


def parse_namespaces(value: Any, problems: list[str]) -> tuple[Namespace, ...]:
    """The ``[[namespace]]`` tables (a list of dicts; a JSON string of one from the
    ``GRIPCAST_NAMESPACES`` environment variable), every problem appended to ``problems``."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as exc:
            problems.append(f"namespace: not a JSON list of tables ({exc})")
            return ()
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list | tuple):
        problems.append("namespace: must be [[namespace]] tables")
        return ()
    out: list[Namespace] = []
    seen: set[str] = set()
    for i, raw in enumerate(value):
        if isinstance(raw, Namespace):
            raw = raw.to_dict()
        where = f"namespace[{i}]"
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: must be a table")
            continue
        before = len(problems)
        prefix = raw.get("prefix")
        if not isinstance(prefix, str) or not prefix:
            problems.append(f"{where}: prefix must be a non-empty string")
            prefix = ""
        else:
            where = f"namespace {prefix!r}"
            if "\x00" in prefix:
                problems.append(f"{where}: prefix must not contain NUL")
            if prefix in seen:
                problems.append(f"{where}: duplicate prefix")
            seen.add(prefix)
        for key in raw:
            if key not in _KEYS:
                problems.append(f"{where}: unknown key {key!r}")
        items = raw.get("history_max_items")
        if items is not None and (
            isinstance(items, bool) or not isinstance(items, int) or items < 1
        ):
            problems.append(f"{where}: history_max_items must be an integer of at least 1")
        age = raw.get("history_max_age_s")
        if age is not None and (
            isinstance(age, bool)
            or not isinstance(age, int | float)
            or not math.isfinite(age)
            or age <= 0
        ):
            problems.append(f"{where}: history_max_age_s must be a positive number")
        for key in ("presence", "publish_zmq"):
            if key in raw and not isinstance(raw[key], bool):
                problems.append(f"{where}: {key} must be true or false")
        suffix = raw.get("presence_suffix", DEFAULT_PRESENCE_SUFFIX)
        if not isinstance(suffix, str) or not suffix or "\x00" in suffix:
            problems.append(f"{where}: presence_suffix must be a non-empty string")
        if len(problems) > before:
            continue
        out.append(
            Namespace(
                prefix=prefix,
                history_max_items=items,
                history_max_age_s=None if age is None else float(age),
                presence=raw.get("presence", False),
                presence_suffix=suffix,
                publish_zmq=raw.get("publish_zmq", True),
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class NamespaceStatistics:
    namespaces: int
    zmq_refused: int  # ZeroMQ-published items refused (publish_zmq = false)


class NamespaceTable:
    """Longest-prefix lookups over ``namespaces``; also counts the ZeroMQ refusals."""

    def __init__(self, namespaces: Sequence[Namespace] = ()) -> None:
        self.namespaces = tuple(namespaces)
        self._by_length = sorted(self.namespaces, key=lambda n: len(n.prefix), reverse=True)
        self._cache: dict[str, Namespace | None] = {}
        self.zmq_closed = any(not n.publish_zmq for n in self.namespaces)
        self.has_presence = any(n.presence for n in self.namespaces)
        self.zmq_refused = 0

    def __bool__(self) -> bool:
        return bool(self.namespaces)

    def match(self, channel: str) -> Namespace | None:
        """The namespace ``channel`` is in (longest prefix), or None."""
        cache = self._cache
        try:
            return cache[channel]
        except KeyError:
            pass
        found = None
        for ns in self._by_length:
            if channel.startswith(ns.prefix):
                found = ns
                break
        if len(cache) >= CACHE_MAX:
            cache.clear()
        cache[channel] = found
        return found

    def history_limits(self, channel: str, max_items: int, max_age_s: float) -> tuple[int, float]:
        """``(max_items, max_age_s)`` for ``channel``: its namespace's, else the given globals."""
        ns = self.match(channel)
        if ns is None:
            return max_items, max_age_s
        return (
            max_items if ns.history_max_items is None else ns.history_max_items,
            max_age_s if ns.history_max_age_s is None else ns.history_max_age_s,
        )

    def presence_of(self, channel: str) -> Namespace | None:
        """The namespace of ``channel`` if it has presence on (None otherwise)."""
        ns = self.match(channel)
        return ns if ns is not None and ns.presence else None

    def zmq_allowed(self, channel: str) -> bool:
        ns = self.match(channel)
        return ns is None or ns.publish_zmq

    def split_zmq(self, items: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """``(allowed, refused)`` of ZeroMQ-published ``items`` (anything with ``channel``);
        the refused ones are counted."""
        if not self.zmq_closed:
            return list(items), []
        allowed: list[Any] = []
        refused: list[Any] = []
        for item in items:
            (allowed if self.zmq_allowed(item.channel) else refused).append(item)
        self.zmq_refused += len(refused)
        return allowed, refused

    def statistics(self) -> NamespaceStatistics:
        return NamespaceStatistics(len(self.namespaces), self.zmq_refused)


def limit_runs(
    items: Sequence[Any],
    limits: NamespaceTable | None,
    max_items: int,
    max_age_s: float,
    step: int,
) -> Iterable[tuple[int, float, Sequence[Any]]]:
    """Split ``items`` (in order) into chunks of at most ``step`` consecutive items that share
    their channels' history limits: ``(max_items, max_age_s, chunk)`` each.  Without namespaces
    (``limits`` None or empty) the chunks are plain slices with the global limits (the Redis
    store writes one script call per chunk, ``broker.store.redis``)."""
    if not limits:
        for i in range(0, len(items), step):
            yield max_items, max_age_s, items[i : i + step]
        return
    run: list[Any] = []
    cur: tuple[int, float] | None = None
    for item in items:
        lim = limits.history_limits(item.channel, max_items, max_age_s)
        if run and (lim != cur or len(run) >= step):
            assert cur is not None
            yield cur[0], cur[1], run
            run = []
        cur = lim
        run.append(item)
    if run:
        assert cur is not None
        yield cur[0], cur[1], run


def zmq_refusal(channel: str, ns: Namespace | None) -> str:
    """The logged reason of a ZeroMQ publish refused by ``publish_zmq = false``."""
    prefix = ns.prefix if ns is not None else ""
    return (
        f"ZeroMQ publish refused for channel {channel!r}: namespace {prefix!r} has "
        "publish_zmq = false (publish over the HTTP API)"
    )


def refused_command_reply(failed_reply: bytes | None, reason: str) -> bytes | None:
    """The command socket's answer to a ``publish`` refused by ``publish_zmq = false``: the
    ``failed_reply`` the command built (its tnetstring carries the request's ``id``) with the
    condition ``forbidden`` and ``reason`` (None: the request wanted no answer)."""
    if failed_reply is None:
        return None
    from broker.ingest import tnetstring  # the broker's codec; this module stays import-light

    reply = tnetstring.loads(failed_reply)
    if not isinstance(reply, dict):
        return None
    reply[b"condition"] = b"forbidden"
    reply[b"value"] = reason.encode("utf-8")
    return tnetstring.dumps(reply)
