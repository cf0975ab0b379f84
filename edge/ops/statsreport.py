"""Sends the edge's stats reports to the broker: the I/O side of ``edge.ops.connstats``.

One task per edge: about once a second (sooner when ``ConnStats`` has ``BATCH_EVENTS`` events
waiting, and ``ACTIVITY_DELAY_S`` after the first request or other activity), if the broker's
heartbeat says it wants reports (its stats socket is on, or its status page,
``broker.ops.status``) and the link is up, take the next report, with ``status_fields``, and
send it with ``BrokerLink.send_nowait`` (never waits: a report that would block is dropped
and the next one lists every subscription again).  Client connections only
touch ``ConnStats`` (a dict entry at accept and at close); the delivery counter is read here.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from broker.runtime.ticks import next_tick
from edge.ops.connstats import ACTIVITY_DELAY_S, FLUSH_INTERVAL_S, ConnStats
from gripcast import __version__

if TYPE_CHECKING:
    from edge.server import Edge
    from edge.sessionstate import Session
    from edge.sync.hub import Hub

log = logging.getLogger(__name__)


def edge_name(index: int) -> str:
    """The edge's name in stats packets (``from``) and connection ids."""
    return f"gripcast-edge{index}_{os.getpid()}"


def open_conn_stats(index: int) -> ConnStats:
    return ConnStats(edge_name(index))


def sent_total(edge: Edge) -> int:
    """Messages handed to client sessions so far (the delivery path's own counter)."""
    d = edge.deliverer
    lat = d.latency
    return lat.count if lat is not None else d.statistics().deliveries


async def serve_stats(edge: Edge) -> None:
    stats: ConnStats = edge.stats
    hub = edge.hub

    def modes(channel: str) -> dict[str, int]:
        return hub.kinds(channel)  # kept by the hub: O(1), not a pass over the sessions

    while True:
        wake = trio.Event()
        stats.on_full = wake.set
        stats.on_activity = wake.set
        if stats.activity_pending:  # came while the last report was being made
            wake.set()
        # at the next whole FLUSH_INTERVAL_S of the shared tick grid (broker.runtime.ticks),
        # with the edge's other timers, or on activity
        with trio.move_on_at(next_tick(FLUSH_INTERVAL_S)):
            await wake.wait()
        stats.on_full = stats.on_activity = None
        if wake.is_set() and stats.activity_pending:
            await trio.sleep(ACTIVITY_DELAY_S)  # batch activity as Pushpin does (100 ms)
        try:
            _report(edge, stats, hub, modes)
        except Exception:  # statistics must never take the edge (and its clients) down
            log.exception("stats report failed")
            stats.report_lost()


def _report(
    edge: Edge, stats: ConnStats, hub: Hub[Session], modes: Callable[[str], dict[str, int]]
) -> None:
    """Take and send one report (if the broker's stats socket is on and the link is up)."""
    link = edge.link
    stats.enable(link.stats_ttl)
    if not stats.enabled:
        hub.changed = None
        stats.take(trio.current_time(), sent_total(edge), (), modes)  # keeps counts fresh
        return
    if not edge.linkwatch.up:
        return  # events wait (bounded); the report after the silence is a full one
    now = trio.current_time()
    changed, hub.changed = hub.changed, set()
    if stats.needs_full(now, link.broker_id) or changed is None:
        channels: Collection[str] = (
            hub.live_channels()
        )  # (counts are diffed, so listing all is safe)
    else:
        channels = changed
    msg = stats.take(now, sent_total(edge), channels, modes)
    if msg is not None:
        msg = replace(msg, **status_fields(edge))
    if msg is not None and not link.send_nowait(msg):
        stats.report_lost()


def status_fields(edge: Edge) -> dict[str, Any]:
    """What the broker's status page shows of this edge besides its counts: the release, the
    clients' address and the slow consumers right now (``Deliverer.lag``: one pass over the
    connections that are behind, once a second)."""
    d = edge.deliverer.statistics()
    cfg = edge.cfg
    host = cfg.client_addr
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return {
        "version": __version__,
        "addr": f"{host}:{cfg.port('client_port')}",
        "lagging": d.lagging,
        "max_lag_s": round(d.max_lag_s, 3),
    }
