"""The broker process's composition root: builds the sockets from the wiring table
(``broker.config.WIRING``), wires the parts and runs their tasks.  No protocol logic here.

``main(cfg)`` runs ``serve_broker(cfg)`` under trio and returns the exit status (logging is
configured by the CLI, ``broker.runtime.logsetup``).  The parts:

* ``broker.ingest.pipeline``: every publish input feeds it (sequencer -> store -> fan-out);
  it also answers the edges (subscription notices, control requests, heartbeats);
* ``broker.ingest.httpapi``: the publish HTTP API; ``broker.ingest.zap``: Curve clients;
* ``broker.runtime.zmqtrio``: the ZeroMQ/trio bridge every socket is read through;
* ``broker.ops``: lifecycle (drain, reload), metrics, the stats socket.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import zmq

from broker import curve, wire
from broker import store as stores
from broker.config import ENDPOINTS, Config
from broker.errors import EXIT_CONFIG, ConfigError
from broker.history import MemoryHistory
from broker.ingest.auth import PublishAuth, load_verify_key
from broker.ingest.httpapi import HttpApi
from broker.ingest.pipeline import BATCH_MAX, BrokerStatistics, Pipeline, PipelineSockets
from broker.ingest.zap import ZapAuthenticator
from broker.namespaces import NamespaceTable
from broker.ops import lifecycle as broker_lifecycle
from broker.ops.stats import StatsEncoder
from broker.ops.status import SAMPLE_INTERVAL_S as STATUS_SAMPLE_S
from broker.ops.status import StatusPage, broker_figures
from broker.runtime.gctune import tune_gc
from broker.runtime.iosched import batch_io_threads
from broker.runtime.procsignals import ignore_late_stop_signals, ignore_stop_signals_for_exit
from broker.runtime.sdnotify import notify
from broker.runtime.ticks import sleep_tick
from broker.runtime.zmqtrio import ZSocket, open_zsocket
from broker.store.memory import MemoryStore, Store

__all__ = ["BATCH_MAX", "GC_THRESHOLD", "Broker", "main", "serve_broker"]

log = logging.getLogger(__name__)

SEQUENCER_POLL_S = 1.0  # Pushpin checks reorder timeouts every second
FANOUT_LINGER_MS = 1000  # on close after a graceful stop: the last messages reach the edges
# ingest allocates several containers per item and history keeps many alive: collecting the
# young generation every 10,000 allocations instead of 700 made the ingest pipeline 1.5x
# faster (bench/RESULTS.md, "Broker ingest"); cycles are still collected, a little later
GC_THRESHOLD = (10_000, 10, 10)
ZMQ_INPUTS = ("push_in", "sub_in", "command")
BROKER_SOCKETS = ("push_in", "sub_in", "command", "edge_pub", "edge_ctl")


class _Bound:
    """What ``Broker.open`` builds: the context, every socket and the parts over them."""

    def __init__(self, broker: Broker) -> None:
        cfg = self.cfg = broker.cfg
        self.ctx = zmq.Context()
        self.sockets: list[ZSocket] = []
        try:
            if cfg.zmq_io_batch:  # before the first send (broker.runtime.iosched)
                batch_io_threads(self.ctx)
            settings = curve.curve_settings(cfg)
            self.zap: ZapAuthenticator | None = None
            if settings.server:  # before any Curve socket can take a handshake (docs/multihost.md)
                zsock = self._open("zap", ENDPOINTS["zap"].address)
                self.zap = ZapAuthenticator(zsock, settings.allowed)
            z = {}
            for name in BROKER_SOCKETS:
                ep = ENDPOINTS[name]
                extra = curve.heartbeat_options(cfg.zmq_heartbeat_s) if ep.heartbeats else {}
                if settings.server and (
                    ep.curve == "server"
                    or (ep.curve == "server-publishers" and settings.publishers)
                ):
                    extra.update(curve.server_options(settings))
                z[name] = self._open(name, cfg.endpoint(name, bind=True), extra)
            # the edges' reports, folded in whether or not the stats socket is on (the status
            # page, broker.ops.status, and the channel API,
            # broker.ops.channelapi, read them); packets go out only with the stats socket
            self.edge_stats = StatsEncoder(
                conn_ttl_s=cfg.stats_connection_ttl_s,
                fmt=cfg.stats_format,
                sub_ttl_s=cfg.stats_subscription_ttl_s,
                conn_send=cfg.stats_connection_send and bool(cfg.stats_spec),
                edge_expire_s=cfg.channel_counts_max_age_s,
            )
            self.stats: StatsEncoder | None = None
            stats_pub = None
            if cfg.stats_spec:  # Pushpin's stats PUB socket (broker.ops.stats)
                stats_pub = self._open("stats", cfg.stats_spec)
                self.stats = self.edge_stats
        except BaseException:
            self.close()
            raise
        self.push_in, self.sub_in, self.command = z["push_in"], z["sub_in"], z["command"]
        self.edge_pub, self.edge_ctl = z["edge_pub"], z["edge_ctl"]
        self.pipeline = Pipeline(
            cfg,
            broker.store,
            PipelineSockets(self.sub_in, self.command, self.edge_pub, stats_pub),
            broker_id=broker.broker_id,
            started=broker.started,
            uris=broker.uris,
            stats=self.stats,
            edge_stats=self.edge_stats,
        )
        self.status = StatusPage(broker.auth, lambda now: broker_figures(broker, now))
        self.http = HttpApi(cfg, self.pipeline, broker.auth, self.status)
        self.listeners: list[trio.SocketListener] = []

    def _open(self, name: str, address: str, extra: dict[str, Any] | None = None) -> ZSocket:
        zsock = open_zsocket(self.ctx, ENDPOINTS[name], self.cfg, address, extra)
        self.sockets.append(zsock)
        return zsock

    def close(self) -> None:
        for z in self.sockets:
            z.close()
        self.sockets.clear()
        self.ctx.term()


class Broker:
    """The broker process's root object: ``open`` binds, ``serve`` runs every task; the
    lifecycle (``broker.ops.lifecycle``) stops it through ``stop_inputs``, ``drain_http``,
    ``flush_sequencer`` and ``set_fanout_linger``."""

    def __init__(self, cfg: Config, store: Store | None = None) -> None:
        self.cfg = cfg
        self.store: Store = store or MemoryStore(
            MemoryHistory(
                max_items=cfg.history_max_items,
                max_age_s=cfg.history_max_age_s,
                max_bytes=cfg.history_max_bytes,
                max_total_bytes=cfg.history_max_total_bytes,
                limits=NamespaceTable(cfg.namespaces),
            )
        )
        self.auth = PublishAuth(
            load_verify_key(cfg.publish_jwt_key), iss=cfg.publish_jwt_iss, aud=cfg.publish_jwt_aud
        )  # off unless configured
        self.broker_id = secrets.token_hex(8)
        self.started = time.time()
        self.uris = {
            "command": cfg.endpoint("command", bind=True),
            "publish-pull": cfg.endpoint("push_in", bind=True),
            "publish-sub": cfg.endpoint("sub_in", bind=True),
        }
        self.draining = False  # /ready answers 503
        self.serving = False
        self._bound: _Bound | None = None
        self._inputs: list[trio.CancelScope] = []

    @property
    def parts(self) -> _Bound:
        if self._bound is None:
            raise RuntimeError("the broker is not open")
        return self._bound

    # -- what ops read ---------------------------------------------------------------------------

    @property
    def pipeline(self) -> Pipeline:
        return self.parts.pipeline

    @property
    def http_active(self) -> int:
        return self._bound.http.active if self._bound is not None else 0

    @property
    def http_refused(self) -> int:
        return self._bound.http.refused if self._bound is not None else 0

    @property
    def stats(self) -> StatsEncoder | None:
        return self._bound.stats if self._bound is not None else None

    @property
    def edge_stats(self) -> StatsEncoder | None:
        """The edges' reports, folded in with or without the stats socket."""
        return self._bound.edge_stats if self._bound is not None else None

    @property
    def zap_denied(self) -> int:
        zap = self._bound.zap if self._bound is not None else None
        return zap.denied if zap is not None else 0

    def statistics(self) -> BrokerStatistics:
        return self.parts.pipeline.statistics()

    # -- what the lifecycle drives ---------------------------------------------------------------

    def stop_inputs(self) -> None:
        """Take no more publishes: the HTTP listeners close, the ZeroMQ inputs stop reading."""
        self.draining = True
        for scope in self._inputs:
            scope.cancel()
        if self._bound is not None:
            self._bound.http.stop_accepting()

    async def drain_http(self) -> None:
        """Return once the HTTP requests already accepted are answered."""
        if self._bound is not None:
            await self._bound.http.wait_idle()

    async def flush_sequencer(self) -> None:
        """Store the items the sequencer still holds back (acknowledged on arrival)."""
        if self._bound is not None:
            await self._bound.pipeline.poll_sequencer(flush=True)

    def set_fanout_linger(self) -> None:
        """Give the fan-out socket a linger on close, so the last messages reach the edges."""
        if self._bound is not None:
            self._bound.edge_pub.linger_ms = FANOUT_LINGER_MS

    def apply_reload(self, cfg: Config) -> None:
        """Install a reloaded config (only the keys ``broker.runtime.reload`` let change)."""
        self.cfg = cfg
        self.store.set_history_limits(cfg.history_max_items, cfg.history_max_age_s)
        if self._bound is not None:
            self._bound.pipeline.cfg = cfg
            self._bound.pipeline.sequencer.configure(cfg.id_cache_ttl_s, cfg.message_wait_s)
            self._bound.http.cfg = cfg

    # -- running ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Bind every socket and the HTTP listener (raises zmq.ZMQError or OSError)."""
        bound = _Bound(self)
        try:
            host = self.cfg.bind_addr("http") or None
            bound.listeners = await trio.open_tcp_listeners(self.cfg.port("http_port"), host=host)
        except BaseException:
            bound.close()
            raise
        self._bound = bound

    async def _input(self, run: Callable[[], Awaitable[object]]) -> None:
        """Run a publish input until it ends or ``stop_inputs``."""
        with trio.CancelScope() as scope:
            self._inputs.append(scope)
            if self.draining:
                scope.cancel()
            await run()

    async def _serve_heartbeat(self) -> None:
        while True:
            await self.parts.pipeline.heartbeat_paced()
            # the broker's periodic tasks wake it together (broker.runtime.ticks)
            await sleep_tick(wire.HEARTBEAT_INTERVAL_S)

    async def _serve_refused_markers(self) -> None:
        while True:
            await sleep_tick(wire.HEARTBEAT_INTERVAL_S)
            await self.parts.pipeline.remark_refused()

    async def _serve_sequencer_timer(self) -> None:
        while True:
            await sleep_tick(SEQUENCER_POLL_S)
            await self.parts.pipeline.poll_sequencer()

    async def _serve_status_sampler(self) -> None:
        """Once a second: the status page's rate samples (and, with the stats socket off,
        forget silent edges, which its report loop does otherwise)."""
        b = self.parts
        while True:
            now = time.time()
            b.status.sample(
                now,
                self.statistics().published,
                b.edge_stats.sent_total,
                b.pipeline.recent_positions(),
            )
            await sleep_tick(STATUS_SAMPLE_S)

    async def serve(
        self, *, task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run every task until cancelled (opening first if needed); sockets closed on exit."""
        if self._bound is None:
            await self.open()
        b = self.parts
        p = b.pipeline
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(b.http.serve, b.listeners)
                await nursery.start(p.relay.serve)  # before the command socket is read
                pull, sub, cmd = b.push_in, b.sub_in, b.command
                inputs = {
                    "pull": lambda: pull.serve(lambda: p.drain_pull(pull), p.handle_pull),
                    "sub": lambda: sub.serve(lambda: p.drain_sub(sub), p.ingest),
                    "command": lambda: cmd.serve(
                        lambda: cmd.recv_batch(BATCH_MAX), p.handle_commands
                    ),
                }
                for name, run in inputs.items():
                    nursery.start_soon(self._input, run, name=f"broker.serve_{name}")
                edge_pub, edge_ctl = b.edge_pub, b.edge_ctl
                nursery.start_soon(
                    edge_pub.serve,
                    lambda: edge_pub.recv_batch(BATCH_MAX),
                    p.handle_subscriptions,
                    name="broker.serve_edge_pub",
                )
                nursery.start_soon(
                    edge_ctl.serve,
                    lambda: edge_ctl.recv_batch(BATCH_MAX),
                    lambda batch: p.handle_control(edge_ctl, batch),
                    name="broker.serve_edge_ctl",
                )
                stats_pub = b.pipeline.sockets.stats
                if stats_pub is not None:  # its subscribers' notices (XPUB)
                    nursery.start_soon(
                        stats_pub.serve,
                        lambda: stats_pub.recv_batch(BATCH_MAX),
                        p.handle_stats_notices,
                        name="broker.serve_stats_notices",
                    )
                nursery.start_soon(self._serve_heartbeat, name="broker.serve_heartbeat")
                nursery.start_soon(self._serve_sequencer_timer, name="broker.serve_sequencer")
                nursery.start_soon(self._serve_refused_markers, name="broker.serve_refused")
                nursery.start_soon(self._serve_status_sampler, name="broker.serve_status")
                nursery.start_soon(p.presence.serve, name="broker.serve_presence")
                if b.zap is not None:
                    nursery.start_soon(b.zap.serve, name="broker.serve_zap")
                store_serve = getattr(self.store, "serve", None)  # Redis Sentinel: +switch-master
                if store_serve is not None:
                    nursery.start_soon(store_serve, name="broker.serve_store")
                await broker_lifecycle.start_ops(self, nursery)
                self.serving = True
                notify(f"READY=1\nSTATUS=broker {self.broker_id} ready")
                log.info(
                    "broker ready broker_id=%s store=%s http=%s:%d push_in=%s sub_in=%s "
                    "command=%s edge_pub=%s edge_ctl=%s",
                    self.broker_id,
                    stores.describe(self.cfg) if self.store.name != "memory" else "memory",
                    self.cfg.bind_addr("http"),
                    self.cfg.port("http_port"),
                    *(self.cfg.endpoint(n, bind=True) for n in BROKER_SOCKETS),
                )
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                for listener in b.listeners:
                    await listener.aclose()
                b.close()
                await self.store.aclose()


# -- process entry -------------------------------------------------------------------------------


async def serve_broker(cfg: Config, reload_config: Callable[[], Config] | None = None) -> None:
    """Run the broker until SIGTERM or SIGINT, then stop cleanly (SIGHUP: reload)."""
    broker = Broker(cfg, store=stores.open_store(cfg))
    await stores.probe(broker.store)
    with trio.open_signal_receiver(*broker_lifecycle.SIGNALS) as signals:
        await broker.open()  # outside the nursery: bind errors propagate as they are
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.serve)
            await broker_lifecycle.BrokerLifecycle(broker, reload_config).run(signals, nursery)


def _run_profiled(*args: Any) -> None:
    """``trio.run(*args)``; with ``GRIPCAST_BROKER_CPROFILE=<prefix>`` in the environment (a
    diagnostic for the bench: Python calls per publish), the whole run under cProfile, saved
    to ``<prefix>.<pid>.prof`` when the broker stops (as the edges' ``GRIPCAST_EDGE_CPROFILE``)."""
    prefix = os.environ.get("GRIPCAST_BROKER_CPROFILE")
    if not prefix:
        trio.run(*args)
        return
    import cProfile

    prof = cProfile.Profile()
    try:
        prof.runcall(trio.run, *args)  # type: ignore[arg-type]
    finally:
        prof.dump_stats(f"{prefix}.{os.getpid()}.prof")


def main(cfg: Config, reload_config: Callable[[], Config] | None = None) -> int:
    """Run the broker process; 0 after a clean stop, 1 if it could not start or crashed."""
    # what start-up made (modules, config, routes) lives as long as the process: out of the
    # collector's walks, as in the edges
    tune_gc(GC_THRESHOLD)
    ignore_late_stop_signals()
    try:
        _run_profiled(serve_broker, cfg, reload_config)
        ignore_stop_signals_for_exit()
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except zmq.ZMQError as exc:
        log.error("broker failed: zmq error=%s", exc)
        return 1
    except OSError as exc:
        log.error("broker failed: %s", exc)
        return 1
    except Exception:
        log.exception("broker crashed")
        return 1
    return 0
