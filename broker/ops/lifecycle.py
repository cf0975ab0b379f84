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
``broker.ops.reload.BROKER_RELOADABLE`` applied; a bad config is logged and the running one kept.
"""
from __future__ import annotations

import errno
import logging
import signal
import time
from typing import Callable

import trio

from broker.config import Config
from broker.errors import ConfigError, StoreUnavailable
from broker.ops.reload import BROKER_RELOADABLE, plan_reload
from broker.runtime.sdnotify import notify

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
INPUT_TASKS = ("_serve_pull", "_serve_sub", "_serve_command")
FANOUT_LINGER_MS = 1000
POLL_S = 0.02
_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


def wrap(broker, task):
    """``task`` as the broker's nursery should run it: publish inputs become stoppable."""
    if getattr(task, "__name__", "") not in INPUT_TASKS:
        return task

    async def run_input() -> None:
        with trio.CancelScope() as scope:
            broker.input_scopes.append(scope)
            if broker.draining:
                scope.cancel()
            await task()

    run_input.__name__ = task.__name__
    return run_input


async def serve_http(broker, listeners, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Accept publish API connections until the drain stops it; handlers run in their own
    nursery, which the drain lets finish."""
    async with trio.open_nursery() as handlers:
        refusing = 0

        async def handle(stream) -> None:
            nonlocal refusing
            if broker.http_active >= broker.cfg.http_maxconn:
                # over the cap: a short 503 (bounded too: past another cap's worth, just close)
                broker.http_refused += 1
                if refusing >= broker.cfg.http_maxconn:
                    await _close(stream)
                    return
                refusing += 1
                try:
                    await _refuse(stream)
                finally:
                    refusing -= 1
                return
            broker.http_active += 1
            try:
                await broker.serve_http_connection(stream)
            finally:
                broker.http_active -= 1

        with trio.CancelScope() as scope:
            broker.input_scopes.append(scope)
            try:
                async with trio.open_nursery() as accepters:
                    for listener in listeners:
                        accepters.start_soon(_accept_loop, listener, handlers, handle)
                    task_status.started()
            finally:
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await listener.aclose()


_TOO_MANY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
             b"Connection: close\r\nContent-Length: 22\r\n\r\nToo many connections.\n")
REFUSE_TIMEOUT_S = 1.0


async def _refuse(stream) -> None:
    """Answer 503, then read briefly what the client sent: closing with unread input would
    reset the connection and could lose the answer."""
    try:
        with trio.move_on_after(REFUSE_TIMEOUT_S):
            await stream.send_all(_TOO_MANY)
            await stream.send_eof()
            drained = 0
            while drained < 65536 and (data := await stream.receive_some(16384)):
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    await _close(stream)


async def _close(stream) -> None:
    with trio.move_on_after(REFUSE_TIMEOUT_S):
        try:
            await stream.aclose()
        except OSError:
            pass


async def _accept_loop(listener, handlers: trio.Nursery, handle) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno in _ACCEPT_RETRY:
                log.error("publish API accept failed (%s); retrying", exc)
                await trio.sleep(0.1)
                continue
            raise
        handlers.start_soon(handle, stream)


class BrokerLifecycle:
    def __init__(self, broker, reload_config: Callable[[], Config] | None = None) -> None:
        self.broker = broker
        self.reload_config = reload_config

    async def run(self, signals, nursery: trio.Nursery) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.reload()
                continue
            log.info("broker stopping signal=%s drain_timeout_s=%s",
                     signal.Signals(signum).name, self.broker.cfg.drain_timeout_s)
            await self.drain()
            nursery.cancel_scope.cancel()
            return

    async def drain(self) -> None:
        b = self.broker
        b.draining = True
        notify("STOPPING=1\nSTATUS=draining")
        started = trio.current_time()
        for scope in b.input_scopes:
            scope.cancel()
        with trio.move_on_after(b.cfg.drain_timeout_s) as scope:
            while b.http_active:
                await trio.sleep(POLL_S)
        # items the sequencer holds back were acknowledged: store them now
        with trio.move_on_after(max(b.cfg.drain_timeout_s, 1.0)):
            async with b._lock:
                released = b.sequencer.poll(trio.current_time() + 3600.0)
                if released:
                    log.info("storing %d items held by the sequencer before exit", len(released))
                    try:
                        await b._commit(released)
                    except StoreUnavailable:
                        pass  # logged by _commit
        edge_pub = getattr(b, "edge_pub", None)
        if edge_pub is not None:
            edge_pub.linger_ms = FANOUT_LINGER_MS
        st = b.statistics()
        log.info("broker drained seconds=%.2f stored=%d http_cut=%d%s",
                 trio.current_time() - started, st.published, b.http_active,
                 " (drain_timeout_s reached)" if scope.cancelled_caught else "")

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
        history = getattr(b.store, "history", None)
        if history is not None:
            history.max_items = plan.config.history_max_items
            history.max_age_s = plan.config.history_max_age_s
        b.cfg = plan.config
        logging.getLogger().setLevel(plan.config.log_level.upper())
        if plan.needs_restart:
            log.warning("reload: changed keys that need a restart (not applied): %s",
                        ", ".join(plan.needs_restart))
        log.info("broker reloaded changed=%s", ",".join(plan.applied) or "-")
        notify("READY=1\nSTATUS=serving")
        return True


async def start_ops(broker, nursery: trio.Nursery) -> None:
    """Start the metrics/health listener (``metrics_port``) and the stats socket
    (``stats_spec``) when configured; bind errors stop the broker from starting."""
    cfg = broker.cfg
    if cfg.metrics_port:
        from broker.ops.metrics import broker_ready, broker_registry
        from broker.ops.opshttp import serve_ops

        await nursery.start(serve_ops, cfg.metrics_addr, cfg.metrics_port,
                            broker_registry(broker), lambda: broker_ready(broker))
    if broker.stats is not None:
        nursery.start_soon(_serve_stats_reports, broker, name="broker.stats_reports")
        log.info("stats socket ready spec=%s", cfg.stats_spec)


async def _serve_stats_reports(broker) -> None:
    while True:
        await trio.sleep(broker.cfg.stats_report_interval_s)
        broker._emit_stats(broker.stats.report(time.time()))
