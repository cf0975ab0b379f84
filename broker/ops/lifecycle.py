"""The broker's lifecycle: signals, graceful stop (SIGTERM/SIGINT) and reload (SIGHUP).

Stop, within ``drain_timeout_s``:

1. ``draining`` is set (``/ready`` answers 503) and ``STOPPING=1`` goes to systemd.
2. No more publishes are taken: the HTTP listeners stop accepting and close, and the ZeroMQ
   publish inputs (PULL, SUB, command) stop reading.  A PUSH/PUB publisher gets no
   acknowledgement in any case; a command-socket publish is answered only after it was
   stored; an HTTP publish is answered 200 only after it was stored.
3. HTTP requests already accepted are finished (read, stored, answered) until the time is up;
   what is left then is cut without an answer, so a publisher never sees "Published" for an
   item that was not stored.
4. Items the sequencer still holds back (waiting for a ``prev-id``) were acknowledged on
   arrival (Pushpin's behaviour), so they are released and stored now, in order.
5. The edge-facing sockets keep running until then (edges can still replay), and the fan-out
   socket gets a short linger on close so the last messages reach the edges.

Reload (SIGHUP): the config is loaded again (same file, environment and flags) and the keys in
``broker.runtime.reload.BROKER_RELOADABLE`` applied; a bad config is logged and the running one kept.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import trio

from broker.config import Config
from broker.errors import ConfigError
from broker.ops.stats import StatsEncoder
from broker.runtime.reload import BROKER_RELOADABLE, plan_reload
from broker.runtime.sdnotify import notify
from broker.runtime.ticks import sleep_tick

if TYPE_CHECKING:
    from broker.server import Broker

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class BrokerLifecycle:
    def __init__(self, broker: Broker, reload_config: Callable[[], Config] | None = None) -> None:
        self.broker = broker
        self.reload_config = reload_config

    async def run(self, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.reload()
                continue
            log.info(
                "broker stopping signal=%s drain_timeout_s=%s",
                signal.Signals(signum).name,
                self.broker.cfg.drain_timeout_s,
            )
            await self.drain()
            nursery.cancel_scope.cancel()
            return

    async def drain(self) -> None:
        b = self.broker
        notify("STOPPING=1\nSTATUS=draining")
        started = trio.current_time()
        b.stop_inputs()
        with trio.move_on_after(b.cfg.drain_timeout_s) as scope:
            await b.drain_http()
        # items the sequencer holds back were acknowledged: store them now
        with trio.move_on_after(max(b.cfg.drain_timeout_s, 1.0)):
            await b.flush_sequencer()
        b.set_fanout_linger()
        st = b.statistics()
        log.info(
            "broker drained seconds=%.2f stored=%d http_cut=%d%s",
            trio.current_time() - started,
            st.published,
            b.http_active,
            " (drain_timeout_s reached)" if scope.cancelled_caught else "",
        )

    def reload(self) -> bool:
        b = self.broker
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = self.reload_config() if self.reload_config is not None else b.cfg
        except ConfigError as exc:
            log.error("reload failed, running config kept: %s", exc)
            notify("READY=1\nSTATUS=serving (last reload failed)")
            return False
        plan = plan_reload(b.cfg, new, BROKER_RELOADABLE)
        b.apply_reload(plan.config)
        logging.getLogger().setLevel(plan.config.log_level.upper())
        if plan.needs_restart:
            log.warning(
                "reload: changed keys that need a restart (not applied): %s",
                ", ".join(plan.needs_restart),
            )
        log.info("broker reloaded changed=%s", ",".join(plan.applied) or "-")
        notify("READY=1\nSTATUS=serving")
        return True


async def start_ops(broker: Broker, nursery: trio.Nursery) -> None:
    """Start the metrics/health listener (``metrics_port``) and the stats socket
    (``stats_spec``) when configured; bind errors stop the broker from starting."""
    cfg = broker.cfg
    if cfg.metrics_port:
        from broker.ops.metrics import broker_ready, broker_registry
        from broker.runtime.opshttp import serve_ops

        await nursery.start(
            serve_ops,
            cfg.metrics_addr,
            cfg.metrics_port,
            broker_registry(broker),
            lambda: broker_ready(broker),
        )
    if broker.stats is not None and cfg.stats_spec:
        nursery.start_soon(_serve_stats_reports, broker, broker.stats, name="broker.stats_reports")
        log.info("stats socket ready spec=%s", cfg.stats_spec)
    if broker.edge_stats is not None:  # counts (channel API, status): a dead edge's drop out
        nursery.start_soon(
            _serve_count_expiry, broker, broker.edge_stats, name="broker.count_expiry"
        )


async def _serve_stats_reports(broker: Broker, stats: StatsEncoder) -> None:
    while True:
        await sleep_tick(broker.cfg.stats_report_interval_s)  # with the broker's other timers
        broker.pipeline.emit_stats(stats.report(time.time()))


COUNT_EXPIRY_INTERVAL_S = 1.0


async def _serve_count_expiry(broker: Broker, stats: StatsEncoder) -> None:
    """Forget edges silent for ``channel_counts_max_age_s`` (checked every second, with or
    without the stats socket; with it, the ``sub`` packets that changes go out)."""
    while True:
        await sleep_tick(COUNT_EXPIRY_INTERVAL_S)
        broker.pipeline.emit_stats(stats.expire(time.time()))
