"""Next links as Pushpin's handler schedules and shares them (sans-IO: ``now`` is passed in).

Theory of operation
-------------------
A held HTTP session *updates* (a stream fetches its next link, a long-poll re-requests the
origin) for two kinds of reasons, as in Pushpin's ``HttpSession::update(priority)``:

* **high priority**, at once: a published ``hint`` action, and the links of a chain;
* **low priority**, through ``UpdateLimiter``: a ``prev-id`` gap (``edge.grip.nextlink_track``),
  the ``recover`` command, a stream's idle window (``Grip-Link ...; timeout=``), a channel's
  first subscription on this edge, a prev-id that conflicts with what the broker knows.

``UpdateLimiter`` is Pushpin's update rate limiter (``RateLimiter`` with ``setRate(10)`` and
batch wait, ``httpsession.cpp`` ``UPDATES_PER_ACTION_MAX``): sessions asking for an update are
grouped into *actions* by key (the next link's URL; ``""`` for long-polls), at most
``per_action`` (100) sessions each, appended to the key's last action while it has room.  One
action runs every ``1 / rate`` seconds (the first one ``1 / rate`` after the limiter was idle:
Pushpin's batch wait), taking the keys in turn.  So a ``recover`` over 10,000 streams sharing
one next link releases 100 of them every 100 ms, and the 100 identical fetches of one action
are shared (``share_key``: ``edge.grip.nextlink_fetch``) into one origin request.

``share_key`` is Pushpin's auto-share key (``handlerengine.cpp`` ``InspectWorker::doFinish``):
the link without its query string plus the sorted ``Grip-Last`` headers: "the query part is
not considered because it may vary per client and Grip-Last supersedes whatever is in the
query".

``resolve_link`` says where a next or gone link goes: relative links and links to the client's
own host through the route; links to one of the route's targets to that target; any other
host only with ``next_link_other_hosts`` (an open proxy otherwise: docs/grip-http.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import urljoin, urlsplit

from broker.errors import RemoteProtocolError

if TYPE_CHECKING:
    from edge.routes import Route, Target

S = TypeVar("S", bound=Hashable)

UPDATES_PER_S = 10  # Pushpin's updateLimiter->setRate(10)
UPDATES_PER_ACTION = 100  # Pushpin's UPDATES_PER_ACTION_MAX


class LinkRefused(RemoteProtocolError):
    """A next/gone link that leaves the route's origin (``next_link_other_hosts`` off)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=502)


@dataclass(frozen=True, slots=True)
class LinkTarget:
    """Where a link goes: the request path, whether it goes through the route's rewriting,
    and the targets to try (empty: the route's own)."""

    path: bytes
    rewrite: bool
    targets: tuple[Target, ...]
    external: bool = False  # another host (``next_link_other_hosts``)


def resolve_link(
    link: str, host: str, path: str, route: Route, *, other_hosts: bool = False
) -> LinkTarget:
    """Where to send a next/gone link; ``host``/``path`` are the client request's.

    Relative links resolve against the request URI and go through the route as a client
    request would (all targets).  Absolute links naming the request's host do too; ones naming
    a route target go to that target as they are; any other host raises ``LinkRefused``
    unless ``other_hosts`` (then it is fetched from that host, as Pushpin does).
    """
    from edge.routes import Target

    base = f"http://{host or 'localhost'}{path}"
    url = urljoin(base, link)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise LinkRefused(f"next link {link!r} is not http")
    target_path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    raw_path = target_path.encode("latin-1", "replace")
    authority = parts.netloc.lower()
    if authority == (host or "localhost").lower() or (parts.netloc == "" and link.startswith("/")):
        return LinkTarget(raw_path, True, ())
    for t in route.targets:
        names = {f"{t.host}:{t.port}".lower(), str(t).lower()}
        if t.port == 80:
            names.add(t.host.lower())
        if authority in names:
            return LinkTarget(raw_path, False, (t,))
    if not other_hosts:
        raise LinkRefused(
            f"next link {link!r} leaves the route's origin (next_link_other_hosts is off)"
        )
    try:
        port = parts.port
    except ValueError:
        raise LinkRefused(f"next link {link!r} has a bad port") from None
    hostname = parts.hostname
    if not hostname:
        raise LinkRefused(f"next link {link!r} has no host")
    secure = parts.scheme == "https"
    target = Target(hostname, port or (443 if secure else 80), ssl=secure, host_header=parts.netloc)
    return LinkTarget(raw_path, False, (target,), external=True)


def share_key(
    route_line: int, where: LinkTarget, grip_last: Iterable[tuple[bytes, bytes]]
) -> tuple[object, ...]:
    """Identical next-link fetches share one origin request: same route, same destination,
    same path without its query, same ``Grip-Last`` set (Pushpin's auto-share key)."""
    path = where.path.split(b"?", 1)[0]
    dest = tuple(str(t) for t in where.targets)
    return (route_line, dest, where.rewrite, path, tuple(sorted(v for _, v in grip_last)))


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    queued: int  # sessions waiting for their update
    actions: int  # actions waiting
    released: int  # sessions released since start
    cancelled: int  # sessions that stopped waiting (ended, or a high-priority update came)


class UpdateLimiter(Generic[S]):
    """Pushpin's update rate limiter (module docstring)."""

    def __init__(self, rate_per_s: float = UPDATES_PER_S, per_action: int = UPDATES_PER_ACTION):
        self.interval = 1.0 / rate_per_s
        self.per_action = per_action
        self._keys: deque[str] = deque()  # keys with actions, in turn order
        self._actions: dict[str, deque[set[S]]] = {}
        self._where: dict[S, set[S]] = {}  # session -> its action
        self._due: float | None = None
        self._released = self._cancelled = 0

    def add(self, key: str, session: S, now: float) -> None:
        """Queue a low-priority update of ``session`` (no-op if it is already queued)."""
        if session in self._where:
            return
        actions = self._actions.get(key)
        if actions is None:
            actions = self._actions[key] = deque()
            self._keys.append(key)
        if not actions or len(actions[-1]) >= self.per_action:
            actions.append(set())
        actions[-1].add(session)
        self._where[session] = actions[-1]
        if self._due is None:
            self._due = now + self.interval  # batch wait: collect for one interval first

    def discard(self, session: S) -> bool:
        """Stop waiting (the session ended, or updates now at high priority)."""
        action = self._where.pop(session, None)
        if action is None:
            return False
        action.discard(session)
        self._cancelled += 1
        return True

    def __contains__(self, session: S) -> bool:
        return session in self._where

    def next_due(self) -> float | None:
        """When ``pop_due`` has something to release (None: nothing queued)."""
        return self._due

    def pop_due(self, now: float) -> list[S]:
        """The sessions of the action due now (one action per interval, keys in turn; an
        action whose sessions all stopped waiting is skipped, as Pushpin's)."""
        if self._due is None or now < self._due:
            return []
        out: list[S] = []
        while self._keys and not out:
            key = self._keys.popleft()
            actions = self._actions[key]
            action = actions.popleft()
            if actions:
                self._keys.append(key)
            else:
                del self._actions[key]
            for s in action:
                del self._where[s]
            out = list(action)
        self._released += len(out)
        self._due = (now + self.interval) if self._keys else None
        return out

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(
            queued=len(self._where),
            actions=sum(len(a) for a in self._actions.values()),
            released=self._released,
            cancelled=self._cancelled,
        )
