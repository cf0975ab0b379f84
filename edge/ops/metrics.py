"""Prometheus metrics of one edge: a custom collector over the ``statistics()`` of its parts.

The delivery hot path only bumps plain ints (``Deliverer``, ``Tracker``, ``Hub``) and the
publish-to-delivery ``IntHistogram`` (observed once per message with the number of receiving
sessions as weight, the envelope's ``ts`` being the broker's receive time); this collector
reads them when ``/metrics`` is scraped.  Each edge process has its own registry and its own
listener (``edge_metrics_port + index``).  Metric names are listed in deploy/README.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.runtime.taskcount import TrioTaskCollector

if TYPE_CHECKING:
    import trio
    from prometheus_client.metrics_core import Metric

    from edge.origin.tls import OriginTlsStatistics
    from edge.server import Edge
    from edge.sessionstate import Session
    from edge.sync.hub import Hub
    from edge.tlsconn import TlsStatistics

P = "gripcast_edge_"


def session_kinds(hub: Hub[Session]) -> Counter[str]:
    """Held sessions by kind ("stream", "response", "ws", ...)."""
    return Counter(hub.kind_totals())


def link_down_reason(edge: Edge, now: float) -> str | None:
    """None when the broker link is up (a heartbeat was heard recently)."""
    st = edge.link.statistics()
    if st.last_heartbeat is None:
        return "broker link not up yet (no heartbeat)"
    timeout = edge.cfg.broker_link_timeout_s
    if now - st.last_heartbeat > timeout:
        return f"broker link down (no heartbeat for {now - st.last_heartbeat:.1f}s)"
    return None


class EdgeCollector(Collector):
    def __init__(self, edge: Edge, now: Callable[[], float]) -> None:
        self.edge = edge
        self._now = now  # the trio clock (heartbeat times are on it)

    def collect(self) -> Iterator[Metric]:
        e = self.edge
        st = e.statistics()
        kinds = session_kinds(e.hub)
        ws = kinds.get("ws", 0)
        g = GaugeMetricFamily(
            P + "connections", "Open client connections, by transport.", labels=["transport"]
        )
        g.add_metric(["http"], max(st.connections - ws, 0))
        g.add_metric(["ws"], ws)
        yield g
        g = GaugeMetricFamily(P + "held_sessions", "Held sessions, by mode.", labels=["mode"])
        for mode in sorted(set(kinds) | {"stream", "response", "ws"}):
            g.add_metric([mode], kinds.get(mode, 0))
        yield g
        yield CounterMetricFamily(P + "requests", "HTTP requests received.", value=st.requests)
        yield CounterMetricFamily(
            P + "proxy_errors", "Requests answered 502 (origin failures).", value=st.proxy_errors
        )
        yield CounterMetricFamily(
            P + "connections_refused",
            "Connections refused with 503 (client_maxconn).",
            value=st.rejected,
        )
        hub = e.hub.statistics()
        yield GaugeMetricFamily(
            P + "channels", "Channels with local subscribers.", value=hub.channels
        )
        yield GaugeMetricFamily(
            P + "subscriptions", "Session-channel subscriptions.", value=hub.subscriptions
        )
        d = e.deliverer.statistics()
        yield CounterMetricFamily(
            P + "messages_received",
            "Broker messages handed to the delivery path.",
            value=d.messages,
        )
        lat = e.deliverer.latency
        yield CounterMetricFamily(
            P + "deliveries",
            "Messages handed to client sessions (message x session).",
            value=lat.count if lat is not None else d.deliveries,
        )
        yield CounterMetricFamily(
            P + "writes",
            "Socket writes of the delivery path (a batch's messages to "
            "one connection are joined into one write).",
            value=d.deliveries,
        )
        yield CounterMetricFamily(
            P + "bytes_sent", "Bytes written to clients by the delivery path.", value=d.bytes_sent
        )
        yield CounterMetricFamily(
            P + "slow_consumer_disconnects",
            "Connections dropped because their buffer overflowed.",
            value=d.overflows,
        )
        yield CounterMetricFamily(
            P + "backlogged",
            "Times a connection's socket was full and got a writer task.",
            value=d.backlogged,
        )
        yield CounterMetricFamily(
            P + "send_errors", "Client sockets that failed on send.", value=d.send_errors
        )
        yield GaugeMetricFamily(
            P + "lagging_connections",
            "Connections with unsent bytes queued right now.",
            value=d.lagging,
        )
        yield GaugeMetricFamily(
            P + "max_connection_backlog_bytes",
            "Largest unsent backlog of one connection (bytes).",
            value=d.max_buffered_bytes,
        )
        yield GaugeMetricFamily(
            P + "max_connection_lag_seconds",
            "Longest time one connection has been behind.",
            value=d.max_lag_s,
        )
        if lat is not None:
            yield lat.family(
                P + "delivery_latency_seconds", "Broker receive to client write, per delivery."
            )
        t = e.tracker.statistics()
        yield CounterMetricFamily(
            P + "duplicates_dropped", "Broker messages dropped as duplicates.", value=t.duplicates
        )
        yield CounterMetricFamily(
            P + "gaps", "Sequence gaps detected on the broker link.", value=t.gaps
        )
        yield CounterMetricFamily(
            P + "replays", "Replay requests sent to the broker (gap repair).", value=t.replays
        )
        yield CounterMetricFamily(
            P + "gaps_repaired",
            "Gaps closed from broker history.",
            value=max(t.gaps - t.skipped, 0),
        )
        yield CounterMetricFamily(
            P + "gaps_skipped", "Gaps given up on (history did not cover them).", value=t.skipped
        )
        yield CounterMetricFamily(
            P + "epoch_changes", "Channels whose broker history was reset.", value=t.epoch_changes
        )
        yield CounterMetricFamily(
            P + "seq_regressions",
            "Position answers below what this edge delivered in the same epoch (taken as epoch "
            "changes: acknowledged writes lost in a Redis failover; docs/redis.md).",
            value=t.seq_regressions,
        )
        yield GaugeMetricFamily(
            P + "channels_positioning",
            "Channels subscribed but whose position the broker has not told yet.",
            value=t.positioning,
        )
        r = e.resumer.statistics()
        for name, value in (
            ("resumes", r.resumes),
            ("answered", r.answered),
            ("fell_back", r.fell_back),
            ("replayed", r.replayed),
            ("gate_overflows", r.gate_overflows),
            ("cut_off", r.cut_off),
            ("retries", r.retries),
        ):
            yield CounterMetricFamily(
                P + "client_resume_" + name, f"Client cursor resumes: {name}.", value=value
            )
        ls = e.link.statistics()
        yield CounterMetricFamily(
            P + "broker_frames", "Frames received from the broker.", value=ls.frames
        )
        yield CounterMetricFamily(
            P + "broker_request_timeouts",
            "Control requests the broker did not answer in time.",
            value=ls.timeouts,
        )
        yield GaugeMetricFamily(
            P + "broker_link_up",
            "1 when broker heartbeats arrive.",
            value=0 if link_down_reason(e, self._now()) else 1,
        )
        yield from broker_link_metrics(e, self._now())
        yield GaugeMetricFamily(
            P + "draining", "1 while the edge drains for shutdown.", value=1 if e.draining else 0
        )
        pk = e.parker.statistics()  # idle streams/WebSockets without a task (edge.parking)
        yield GaugeMetricFamily(
            P + "parked_connections",
            "Idle held HTTP streams and WebSockets waiting without a task of their own.",
            value=pk.parked,
        )
        yield CounterMetricFamily(
            P + "parks", "Times a held stream or WebSocket parked.", value=pk.parks
        )
        driven, donated = e.opener.statistics()  # connections without a task (edge.opener)
        yield CounterMetricFamily(
            P + "opened_without_task",
            "New plain-HTTP connections the opener started without a task of their own.",
            value=driven,
        )
        yield CounterMetricFamily(
            P + "opener_donations",
            "Connections and woken parked ones that needed a trio task (the opener gave its own).",
            value=donated,
        )
        if e.tls is not None:
            yield from tls_metrics(e.tls.statistics())
        yield from origin_tls_metrics(e.origin_client.tls.statistics())


def broker_link_metrics(e: Edge, now: float) -> Iterator[Metric]:
    """Per configured broker (label ``broker="host:port"``, its edge_pub endpoint): link up,
    heartbeats and the age of the last one, losses (no heartbeat for broker_link_timeout_s),
    reconnects (heartbeats back after a loss, or from a restarted broker), restarts seen, and
    the control requests it answered, refused, left unanswered, or failed over to another."""
    links = e.link.links
    watches = e.linkwatch.statistics()
    names = ["broker"]
    up = GaugeMetricFamily(P + "broker_up", "1 when this broker's heartbeats arrive.", labels=names)
    age = GaugeMetricFamily(
        P + "broker_heartbeat_age_seconds",
        "Seconds since this broker's last heartbeat (absent: none yet).",
        labels=names,
    )
    beats = CounterMetricFamily(P + "broker_heartbeats", "Heartbeats received.", labels=names)
    lost = CounterMetricFamily(
        P + "broker_link_losses",
        "Times no heartbeat came from this broker for broker_link_timeout_s.",
        labels=names,
    )
    back = CounterMetricFamily(
        P + "broker_reconnects",
        "Heartbeats back after a loss, or from a restarted broker.",
        labels=names,
    )
    restarts = CounterMetricFamily(
        P + "broker_restarts", "A new broker_id seen on this link.", labels=names
    )
    reqs = CounterMetricFamily(
        P + "broker_requests",
        "Control requests (position, replay, hello) to this broker, by outcome.",
        labels=["broker", "outcome"],
    )
    failed = CounterMetricFamily(
        P + "broker_failovers",
        "Requests this broker did not answer that were then asked of another broker.",
        labels=names,
    )
    for link, w in zip(links, watches):
        st = link.statistics()
        label = [link.label]
        up.add_metric(label, 1 if link.is_up(now) else 0)
        if st.last_heartbeat is not None:
            age.add_metric(label, max(0.0, now - st.last_heartbeat))
        beats.add_metric(label, st.heartbeats)
        lost.add_metric(label, w.losses)
        back.add_metric(label, max(0, w.resyncs - 1))  # the first is the link coming up
        restarts.add_metric(label, w.restarts)
        reqs.add_metric([link.label, "answered"], st.answered)
        reqs.add_metric([link.label, "refused"], st.refused)
        reqs.add_metric([link.label, "timeout"], st.timeouts)
        failed.add_metric(label, st.failed_over_from)
    yield from (up, age, beats, lost, back, restarts, reqs, failed)


def tls_metrics(t: TlsStatistics) -> Iterator[Metric]:
    """HTTPS listeners (edge.tlsconn): handshakes, failures and open TLS connections."""
    yield CounterMetricFamily(
        P + "tls_handshakes", "TLS handshakes completed on HTTPS listeners.", value=t.handshakes
    )
    yield CounterMetricFamily(
        P + "tls_handshakes_resumed", "TLS handshakes that resumed a session.", value=t.resumed
    )
    yield CounterMetricFamily(
        P + "tls_handshake_failures",
        "TLS handshakes that failed (not TLS, refused, broken or timed out).",
        value=t.failures,
    )
    yield CounterMetricFamily(
        P + "tls_handshake_timeouts",
        "TLS handshakes not complete within client_head_timeout_s.",
        value=t.timeouts,
    )
    yield GaugeMetricFamily(P + "tls_connections", "Open TLS client connections.", value=t.active)
    yield CounterMetricFamily(
        P + "tls_certificate_reloads", "Certificate sets loaded on SIGHUP.", value=t.reloads
    )


def origin_tls_metrics(t: OriginTlsStatistics) -> Iterator[Metric]:
    """TLS toward ssl route targets (edge.origin.tls)."""
    yield CounterMetricFamily(
        P + "origin_tls_handshakes", "TLS handshakes completed with origins.", value=t.handshakes
    )
    yield CounterMetricFamily(
        P + "origin_tls_handshake_failures",
        "TLS handshakes with origins that failed (verification failures included).",
        value=t.failures,
    )
    yield CounterMetricFamily(
        P + "origin_tls_verify_failures",
        "TLS handshakes with origins whose certificate did not verify (chain or name).",
        value=t.verify_failures,
    )


def edge_registry(edge: Edge, now: Callable[[], float]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EdgeCollector(edge, now))
    reg.register(TrioTaskCollector(P))
    return reg


def edge_ready(edge: Edge, now: float) -> str | None:
    """None when the edge should receive traffic, else why not."""
    if edge.draining:
        return "draining"
    return link_down_reason(edge, now)


async def start(edge: Edge, nursery: trio.Nursery) -> None:
    """Install the latency histogram and, if ``edge_metrics_port`` is set, start the ops
    listener on ``edge_metrics_port + index`` (a bind error stops the edge from starting)."""
    import trio

    from broker.histogram import IntHistogram
    from broker.runtime.opshttp import serve_ops

    if edge.deliverer.latency is None:
        edge.deliverer.latency = IntHistogram()
    cfg = edge.cfg
    if not cfg.edge_metrics_port:
        return
    now = trio.current_time
    registry = edge_registry(edge, now)
    await nursery.start(
        serve_ops,
        cfg.metrics_addr,
        cfg.edge_metrics_port + edge.index,
        registry,
        lambda: edge_ready(edge, now()),
    )
