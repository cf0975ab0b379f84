"""The broker's live status page: ``GET /status`` (a self-contained HTML page) and ``GET
/status/data`` (the JSON it polls every second), served on the publish API port.

Nothing here is measured anew: the figures are the broker's own counters
(``Pipeline.statistics()``) and the edges' reports (``broker.ops.stats.StatsEncoder``, which the
broker folds in whether or not the stats socket is on).  What is added is cheap and off the
publish path:

* ``RateRing``: a ring of ``RING_SECONDS`` per-second samples of two cumulative counters
  (messages stored, messages sent to clients by the edges), turned into rates for the chart;
* ``ChannelRates``: per-channel publish rates from the positions the pipeline already keeps for
  its trailing markers (``Pipeline.recent_positions``: the last seq of every channel published
  in the last two heartbeat rounds), diffed once a second, so the publish path counts nothing;
* ``assemble``: the JSON document, from a ``Figures`` record (pure: testable with no broker);
* ``StatusPage``: routing and auth for the two paths, and a cache so that many pollers cost one
  assembly per ``CACHE_S``.

Auth (when ``publish_jwt_key`` is set): the same JWT as publishing, from ``Authorization:
Bearer``, the ``token`` query parameter, or the ``COOKIE`` cookie.  ``GET /status?token=<JWT>``
with a valid token sets that cookie (``HttpOnly``, ``SameSite=Strict``, ``Path=/status``) and
redirects to ``/status``, so the token leaves the address bar and the page's polls carry the
cookie.  Targets are never logged with their query (``log_target``).

The sampler task (one ``sample`` a second) lives in the composition root (``broker.server``).
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from broker.history import HistoryStatistics
from broker.ingest.httpapi import Response, respond
from broker.ops.stats import EdgeState, StatsEncoder
from broker.store.clusterclient import ClusterClientStatistics
from broker.store.redis import RedisStoreStatistics

if TYPE_CHECKING:
    from broker.ingest.auth import PublishAuth
    from broker.server import Broker

SAMPLE_INTERVAL_S = 1.0
RING_SECONDS = 300  # the chart's window: five minutes of per-second samples
TOP_N = 10  # channels listed by subscribers and by publish rate
CACHE_S = 0.5  # /status/data is assembled at most this often, however many poll it
CACHE_CHANNELS = 100_000  # beyond this many channels with subscribers, CACHE_S grows with them
COOKIE = "gripcast_status_token"
PATHS = ("/status", "/status/data")
_HTML = "text/html; charset=utf-8"
_JSON = "application/json"
_NO_STORE = (("Cache-Control", "no-store"),)
# the page's own inline script and style only: nothing from elsewhere
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)


def is_status_path(target: str) -> bool:
    """Whether the request target (with or without a query) is one of ``PATHS``."""
    path = target.split("?", 1)[0]
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path in PATHS


def log_target(target: str) -> str:
    """The target as it may be logged: without its query (it can hold a token)."""
    return target.split("?", 1)[0]


# -- rates -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateSample:
    t: float  # wall-clock time of the sample
    publish_per_s: float  # messages stored per second since the sample before
    deliver_per_s: float  # messages sent to clients (all edges) per second


class RateRing:
    """Per-second samples of two cumulative counters, kept as rates (the last ``size``)."""

    def __init__(self, size: int = RING_SECONDS) -> None:
        self.samples: deque[RateSample] = deque(maxlen=size)
        self._last: tuple[float, int, int] | None = None

    def add(self, now: float, published: int, delivered: int) -> RateSample | None:
        """Fold the counters in at ``now``; the new sample (None for the first call, or when
        no time passed).  A counter that went down (a restart) counts as 0 for that second."""
        last, self._last = self._last, (now, published, delivered)
        if last is None:
            return None
        dt = now - last[0]
        if dt <= 0:
            self._last = last
            return None
        s = RateSample(
            now,
            max(published - last[1], 0) / dt,
            max(delivered - last[2], 0) / dt,
        )
        self.samples.append(s)
        return s

    @property
    def latest(self) -> RateSample | None:
        return self.samples[-1] if self.samples else None


class ChannelRates:
    """Publish rate per channel from successive ``channel -> (epoch, last_seq)`` snapshots.

    A channel first seen in a snapshot has no rate yet (its seq counts from before); a new
    epoch restarts it; one absent from the snapshot published nothing lately and is dropped.

    ``update`` only keeps the snapshot (the caller hands over a mapping it no longer changes:
    ``Pipeline.recent_positions`` builds a new one each time); the rates are worked out when
    read (``rates``, ``top``: the status page, cached): with many channels the per-channel walk
    took the broker's loop several ms every second, a stall every publish then waited for."""

    def __init__(self) -> None:
        self._last: Mapping[str, tuple[str, int]] = {}
        self._at: float | None = None
        self._cur: Mapping[str, tuple[str, int]] = {}
        self._cur_at: float | None = None
        self._rates: dict[str, float] | None = {}

    def update(self, now: float, positions: Mapping[str, tuple[str, int]]) -> None:
        self._last, self._at = self._cur, self._cur_at
        self._cur, self._cur_at = positions, now
        self._rates = None

    @property
    def rates(self) -> dict[str, float]:
        rates = self._rates
        if rates is None:
            rates = self._rates = {}
            last, at, now = self._last, self._at, self._cur_at
            if at is not None and now is not None and now > at:
                dt = now - at
                for channel, (epoch, seq) in self._cur.items():
                    before = last.get(channel)
                    if before is not None and before[0] == epoch and seq > before[1]:
                        rates[channel] = (seq - before[1]) / dt
        return rates

    def top(self, n: int) -> list[tuple[str, float]]:
        d = self.rates
        return [(ch, r) for r, ch in heapq.nlargest(n, zip(d.values(), d.keys()))]


# -- the figures and the document ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EdgeRow:
    name: str
    addr: str
    version: str
    connections: int
    lagging: int
    max_lag_s: float
    sent: int  # messages sent to clients since the broker first heard of it
    report_age_s: float  # how old its last report is
    up_s: float  # since the broker first heard of it


@dataclass(frozen=True, slots=True)
class StoreState:
    kind: str  # "memory", "redis", ...
    up: bool
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Figures:
    """What ``assemble`` reads: a snapshot of the broker's own statistics."""

    broker_id: str
    version: str
    started: float
    draining: bool
    store: StoreState
    received: dict[str, int]
    rejected: int
    published: int
    fanned_out: int
    fanout_dropped: int
    live_channels: int
    http_active: int
    stats_socket: bool
    edges: tuple[EdgeRow, ...]
    delivered: int
    top_subscribed: tuple[tuple[str, int], ...]
    channels_with_subscribers: int


def edge_rows(edges: Mapping[str, EdgeState], now: float) -> tuple[EdgeRow, ...]:
    return tuple(
        EdgeRow(
            name=name,
            addr=st.addr,
            version=st.version,
            connections=st.connections,
            lagging=st.lagging,
            max_lag_s=round(st.max_lag_s, 3),
            sent=st.sent_total,
            report_age_s=round(max(now - st.last, 0.0), 3),
            up_s=round(max(now - st.first, 0.0), 1),
        )
        for name, st in sorted(edges.items())
    )


def store_state(kind: str, stats: Any, write_failing: bool) -> StoreState:
    """Up unless the last write failed or (Redis) the connection is down."""
    up = not write_failing
    detail: dict[str, Any] = {}
    if isinstance(stats, HistoryStatistics):
        detail = {
            "channels": stats.channels,
            "retained": stats.retained,
            "payload_bytes": stats.payload_bytes,
            "trimmed": stats.trimmed,
        }
    elif isinstance(stats, RedisStoreStatistics):
        c = stats.client
        if isinstance(c, ClusterClientStatistics):  # up while every master is connected
            nodes = list(c.nodes)
            up = up and bool(nodes) and all(n.connected for n in nodes)
            detail = {
                "masters": c.masters,
                "slots_covered": c.slots_covered,
                "nodes": [f"{n.host}:{n.port}" for n in nodes],
                "drops": sum(n.drops for n in nodes),
            }
        else:
            up = up and c.connected
            detail = {"server": f"{c.host}:{c.port}", "connected": c.connected, "drops": c.drops}
        if stats.sentinel is not None and stats.sentinel.master is not None:
            host, port = stats.sentinel.master
            detail["master"] = f"{host}:{port}"
    return StoreState(kind, up, detail)


def assemble(
    fig: Figures,
    samples: Iterable[RateSample],
    top_rates: Iterable[tuple[str, float]],
    now: float,
) -> dict[str, Any]:
    """The ``/status/data`` document."""
    chart = [[round(s.t, 3), round(s.publish_per_s, 2), round(s.deliver_per_s, 2)] for s in samples]
    latest = chart[-1] if chart else [now, 0.0, 0.0]
    return {
        "now": round(now, 3),
        "broker": {
            "id": fig.broker_id,
            "version": fig.version,
            "started": fig.started,
            "uptime_s": round(max(now - fig.started, 0.0), 1),
            "draining": fig.draining,
            "stats_socket": fig.stats_socket,
            "http_active": fig.http_active,
        },
        "store": asdict(fig.store),
        "totals": {
            "received": dict(fig.received),
            "rejected": fig.rejected,
            "published": fig.published,
            "fanned_out": fig.fanned_out,
            "fanout_dropped": fig.fanout_dropped,
            "delivered": fig.delivered,
            "live_channels": fig.live_channels,
            "channels_with_subscribers": fig.channels_with_subscribers,
            "connections": sum(e.connections for e in fig.edges),
        },
        "rates": {"publish_per_s": latest[1], "deliver_per_s": latest[2]},
        "edges": [asdict(e) for e in fig.edges],
        "top_subscribed": [{"channel": c, "subscribers": n} for c, n in fig.top_subscribed],
        "top_publishing": [{"channel": c, "publish_per_s": round(r, 2)} for c, r in top_rates],
        "chart": {
            "interval_s": SAMPLE_INTERVAL_S,
            "columns": ["t", "publish", "deliver"],
            "samples": chart,
        },
    }


def broker_figures(broker: Broker, now: float) -> Figures:
    """Read a ``Figures`` snapshot off a running broker (attribute reads, no I/O)."""
    from gripcast import __version__

    st = broker.statistics()
    parts = broker.parts
    edges: StatsEncoder = parts.edge_stats
    return Figures(
        broker_id=st.broker_id,
        version=__version__,
        started=st.started,
        draining=broker.draining,
        store=store_state(broker.store.name, st.store, parts.pipeline.store_down),
        received=st.received,
        rejected=st.rejected,
        published=st.published,
        fanned_out=st.fanned_out,
        fanout_dropped=st.fanout_dropped,
        live_channels=st.live_channels,
        http_active=broker.http_active,
        stats_socket=parts.stats is not None,
        edges=edge_rows(edges.edges, now),
        delivered=edges.sent_total,
        top_subscribed=tuple(edges.top_channels(TOP_N)),
        channels_with_subscribers=edges.channels_with_subscribers(),
    )


# -- the two paths ---------------------------------------------------------------------------------


def page_html() -> bytes:
    return resources.files("broker.ops").joinpath("status.html").read_bytes()


def _query_token(target: str) -> str | None:
    _, _, query = target.partition("?")
    values = parse_qs(query).get("token") if query else None
    return values[0] if values else None


def _cookie_token(headers: Iterable[tuple[bytes | str, bytes | str]]) -> str | None:
    for k, v in headers:
        ks = k.decode("latin-1") if isinstance(k, (bytes, bytearray)) else k
        if ks.lower() != "cookie":
            continue
        vs = v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else v
        for part in vs.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value:
                return value
    return None


def _has_authorization(headers: Iterable[tuple[bytes | str, bytes | str]]) -> bool:
    for k, _ in headers:
        ks = k.decode("latin-1") if isinstance(k, (bytes, bytearray)) else k
        if ks.lower() == "authorization":
            return True
    return False


class StatusPage:
    """Answers ``/status`` and ``/status/data``; holds the rate samples (``sample``)."""

    def __init__(
        self,
        auth: PublishAuth,
        figures: Callable[[float], Figures],
        *,
        html: bytes | None = None,
        cache_s: float = CACHE_S,
    ) -> None:
        self.auth = auth
        self.figures = figures
        self.ring = RateRing()
        self.channels = ChannelRates()
        self.cache_s = cache_s
        self._html = html
        self._cached: tuple[float, bytes] | None = None
        self._valid_s = cache_s
        self.requests = 0
        self.refused = 0

    def sample(
        self, now: float, published: int, delivered: int, positions: Mapping[str, tuple[str, int]]
    ) -> None:
        """One per-second sample (the composition root calls it every SAMPLE_INTERVAL_S)."""
        self.ring.add(now, published, delivered)
        self.channels.update(now, positions)

    def data(self, now: float) -> bytes:
        """The JSON document, assembled at most once per ``cache_s``."""
        cached = self._cached
        if cached is not None and 0 <= now - cached[0] < self._valid_s:
            return cached[1]
        fig = self.figures(now)
        doc = assemble(fig, self.ring.samples, self.channels.top(TOP_N), now)
        body = (json.dumps(doc, separators=(",", ":")) + "\n").encode("utf-8")
        self._cached = (now, body)
        # the top-10 is linear in the channels with subscribers (~0.1 us each): with very many,
        # the document is kept longer so pollers never cost more than a few % of a core
        self._valid_s = self.cache_s * max(1.0, fig.channels_with_subscribers / CACHE_CHANNELS)
        return body

    def _denied(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        token: str | None,
        now: float,
    ) -> str | None:
        if not self.auth.enabled:
            return None
        headers = list(headers)
        if _has_authorization(headers):
            return self.auth.check(method, path, headers, now)
        token = token or _cookie_token(headers)
        if token is None:
            return (
                "Authorization required: send 'Authorization: Bearer <JWT>', or open "
                "/status?token=<JWT>."
            )
        return self.auth.check(method, path, [("authorization", "Bearer " + token)], now)

    def answer(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        now: float,
    ) -> Response | None:
        """The answer to a request for one of ``PATHS``; None for any other target."""
        if not is_status_path(target):
            return None
        self.requests += 1
        path = log_target(target)
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        if method not in ("GET", "HEAD"):
            return respond(405, f"Method not allowed: {method}.\n", extra=(("Allow", "GET"),))
        query_token = _query_token(target)
        denied = self._denied(method, path, headers, query_token, now)
        if denied is not None:
            self.refused += 1
            return respond(401, denied + "\n", extra=(("WWW-Authenticate", "Bearer"),))
        if path == "/status/data":
            return _with_body(200, self.data(now), _JSON, _NO_STORE, method)
        if query_token is not None and self.auth.enabled:
            # keep the token in a cookie and out of the address bar (and its history)
            cookie = f"{COOKIE}={query_token}; Path=/status; HttpOnly; SameSite=Strict"
            return respond(
                303,
                "See /status\n",
                extra=(("Location", "/status"), ("Set-Cookie", cookie)) + _NO_STORE,
            )
        if self._html is None:
            self._html = page_html()
        extra = _NO_STORE + (("Content-Security-Policy", _CSP),)
        return _with_body(200, self._html, _HTML, extra, method)


def _with_body(
    status: int, body: bytes, ctype: str, extra: tuple[tuple[str, str], ...], method: str
) -> Response:
    r = respond(status, "", ctype, extra)
    headers = tuple((k, str(len(body))) if k == "Content-Length" else (k, v) for k, v in r.headers)
    return Response(r.status, r.reason, headers, b"" if method == "HEAD" else body)
