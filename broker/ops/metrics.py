"""Prometheus metrics of the broker: a custom collector over ``Broker.statistics()``.

The publish path counts in plain ints (``Broker`` counters, ``IntHistogram`` for the store
latency); this collector turns them into metric families only when ``/metrics`` is scraped.
Each process has its own ``CollectorRegistry`` (no global default registry, no process
metrics of other processes).  Metric names are listed in deploy/README.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from broker.history import HistoryStatistics
from broker.runtime.taskcount import TrioTaskCollector
from broker.store.redis import RedisStoreStatistics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from broker.server import Broker

P = "gripcast_broker_"


class BrokerCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        b = self.broker
        st = b.statistics()
        yield InfoMetricFamily(
            P + "build",
            "Broker identity.",
            value={"broker_id": st.broker_id, "store": b.store.name},
        )
        c = CounterMetricFamily(
            P + "publishes_received",
            "Publish requests/messages received, by input.",
            labels=["input"],
        )
        for name, n in sorted(st.received.items()):
            c.add_metric([name], n)
        yield c
        yield CounterMetricFamily(
            P + "publishes_rejected", "Publishes rejected as invalid.", value=st.rejected
        )
        yield CounterMetricFamily(
            P + "messages_stored",
            "Messages sequenced and stored (acknowledged publishes).",
            value=st.published,
        )
        yield CounterMetricFamily(
            P + "messages_fanned_out",
            "Messages sent to edges (channel live on at least one edge).",
            value=st.fanned_out,
        )
        yield CounterMetricFamily(
            P + "fanout_dropped",
            "Fan-out sends dropped at the high-water mark (edges repair the gap).",
            value=st.fanout_dropped,
        )
        yield CounterMetricFamily(
            P + "store_failures", "Messages lost because the store failed.", value=st.store_failures
        )
        yield CounterMetricFamily(
            P + "control_requests",
            "Edge control messages (hello, position, replay, stats reports).",
            value=st.control_requests,
        )
        yield CounterMetricFamily(
            P + "position_markers", "Position markers sent on subscribe.", value=st.markers
        )
        yield GaugeMetricFamily(
            P + "live_channels",
            "Channels with at least one subscribed edge.",
            value=st.live_channels,
        )
        seq = st.sequencer
        # sequencing in Redis (several brokers): the store drops duplicates and times out holds
        rs = st.store if isinstance(st.store, RedisStoreStatistics) else None
        yield GaugeMetricFamily(
            P + "sequencer_pending", "Items waiting for their prev-id.", value=seq.pending
        )
        d = CounterMetricFamily(
            P + "sequencer_dropped", "Items the sequencer dropped, by reason.", labels=["reason"]
        )
        d.add_metric(["duplicate"], seq.dropped_duplicate + (rs.dropped_duplicate if rs else 0))
        d.add_metric(["conflict"], seq.dropped_conflict)
        d.add_metric(["overflow"], seq.dropped_overflow)
        yield d
        yield CounterMetricFamily(
            P + "sequencer_timed_out",
            "Items released after waiting for a missing prev-id.",
            value=seq.timed_out + (rs.timed_out if rs else 0),
        )
        store = st.store  # each store kind has its own statistics record
        if isinstance(store, HistoryStatistics):
            yield GaugeMetricFamily(
                P + "history_channels", "Channels with history.", value=store.channels
            )
            yield GaugeMetricFamily(
                P + "history_retained", "Messages retained in history.", value=store.retained
            )
            yield GaugeMetricFamily(
                P + "history_payload_bytes",
                "Payload bytes retained in history, all channels.",
                value=store.payload_bytes,
            )
            yield CounterMetricFamily(
                P + "history_trimmed",
                "Messages dropped to keep the history within history_max_total_bytes.",
                value=store.trimmed,
            )
        elif isinstance(store, RedisStoreStatistics):
            yield CounterMetricFamily(
                P + "history_replays", "Replay requests the store served.", value=store.replays
            )
            yield CounterMetricFamily(
                P + "store_seq_regressions",
                "Channels moved to a new epoch: their seq in Redis went below one this broker "
                "saw (acknowledged writes lost in a failover; docs/redis.md).",
                value=store.seq_regressions,
            )
        yield b.pipeline.store_latency.family(
            P + "store_latency_seconds", "Time to store one publish batch."
        )
        yield GaugeMetricFamily(
            P + "draining", "1 while the broker shuts down.", value=1 if b.draining else 0
        )
        yield CounterMetricFamily(
            P + "curve_handshakes_refused",
            "CurveZMQ handshakes refused by ZAP (key not allowed).",
            value=b.zap_denied,
        )
        rl = b.pipeline.limiter.statistics()
        r = CounterMetricFamily(
            P + "rate_limited",
            "recover requests and hint actions refused by the rate limits.",
            labels=["kind"],
        )
        r.add_metric(["recover"], rl.recover_refused)
        r.add_metric(["hint"], rl.hint_refused)
        yield r
        yield CounterMetricFamily(
            P + "http_connections_refused",
            "HTTP API connections refused at http_maxconn (503).",
            value=b.http_refused,
        )
        yield GaugeMetricFamily(
            P + "http_connections", "HTTP API connections being served.", value=b.http_active
        )
        stats = b.stats
        if stats is not None:
            yield GaugeMetricFamily(
                P + "edges_reporting",
                "Edges that sent a stats report recently.",
                value=len(stats.edges),
            )
            yield CounterMetricFamily(
                P + "stats_edge_reports",
                "Edge stats reports received (subscriber counts, stats socket events).",
                value=stats.reports,
            )
            yield CounterMetricFamily(
                P + "stats_edge_reports_bad",
                "Edge stats reports refused as invalid.",
                value=stats.bad_reports,
            )
            listeners = b.pipeline.stats_listeners
            yield GaugeMetricFamily(
                P + "stats_message_listeners",
                "1 while some stats socket subscription can receive message packets.",
                value=1 if listeners.messages else 0,
            )
            yield CounterMetricFamily(
                P + "stats_message_packets_skipped",
                "Published messages whose stats message packets were not built: no "
                "subscription could receive them.",
                value=listeners.skipped,
            )
        # namespaces and presence (broker.namespaces, broker.ops.presence)
        p = b.pipeline
        yield CounterMetricFamily(
            P + "publishes_refused_zmq",
            "ZeroMQ-published items refused by a namespace's publish_zmq = false.",
            value=p.namespaces.zmq_refused,
        )
        if p.presence.enabled:
            ps = p.presence.table.statistics()
            yield GaugeMetricFamily(
                P + "presence_users", "(channel, user) pairs present.", value=ps.users
            )
            yield GaugeMetricFamily(
                P + "presence_edges", "Edges reporting presence now.", value=ps.edges
            )
            e = CounterMetricFamily(
                P + "presence_events", "Presence events, by type.", labels=["type"]
            )
            e.add_metric(["join"], ps.joins)
            e.add_metric(["leave"], ps.leaves)
            yield e


def broker_registry(broker: Broker) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(BrokerCollector(broker))
    reg.register(TrioTaskCollector(P))
    return reg


def broker_ready(broker: Broker) -> str | None:
    """None when the broker should receive traffic, else why not."""
    if broker.draining:
        return "draining"
    if not broker.serving:
        return "starting"
    return None
