"""An edge's lifecycle: signals, graceful drain (SIGTERM/SIGINT) and reload (SIGHUP).

Drain, within ``drain_timeout_s`` (then whatever is left is cut):

1. ``draining`` is set (``/ready`` answers 503), ``STOPPING=1`` goes to systemd, the accept
   loop stops and the listening socket closes, so new connections go to the other edges
   sharing the port (SO_REUSEPORT) or, on another host, to the load balancer's next target.
2. Every held session is ended so that its client reconnects elsewhere and resumes from its
   cursor (``Session.end_for_shutdown``): an HTTP stream gets its final chunk (exactly like a
   published ``close``; the client sees a complete response), a long-poll gets its timeout
   response, and a WebSocket is closed 1012 "service restart".  Sessions that appear
   meanwhile (an origin answered a request that was in flight) are ended the same way.
3. Once no session is held, the read side of every remaining client socket is shut down:
   idle keep-alive connections close at once; a request in flight is still answered, then
   its connection closes.
4. When no connection is left (or the time is up) every task is cancelled and the process
   exits 0.

Reload (SIGHUP): the config is loaded again (same file, environment and flags), the routes
file re-read, and the reloadable keys (``broker.runtime.reload.EDGE_RELOADABLE``) applied without
touching any connection; a bad config or routes file is logged and the running one kept.
"""

from __future__ import annotations

import logging
import signal
import socket as stdsocket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from broker.config import Config
from broker.errors import ConfigError
from broker.runtime.reload import EDGE_RELOADABLE, plan_reload
from broker.runtime.sdnotify import notify

if TYPE_CHECKING:
    from edge.grip.session import StreamSession
    from edge.routes import RouteTable
    from edge.server import Edge
    from edge.sessionstate import Session

log = logging.getLogger(__name__)

POLL_S = 0.05
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def end_session(session: Session) -> tuple[StreamSession, list[bytes]] | None:
    """Ask one held session to end for shutdown (``Session.end_for_shutdown``).

    Returns ``(session, [bytes])`` for a stream session (to write through the deliverer, so
    it is ordered after anything buffered), else None.  Idempotent.
    """
    return session.end_for_shutdown()


class EdgeLifecycle:
    def __init__(
        self,
        edge: Edge,
        listeners: list[trio.socket.SocketType],
        *,
        reload_config: Callable[[], Config] | None,
        load_routes: Callable[[Config], RouteTable],
        serve: Callable[[], Awaitable[None]],
    ) -> None:
        self.edge = edge
        self.listeners = listeners  # HTTP and HTTPS (edge.server.open_listeners)
        self._serve = serve  # the accept loops of every listener
        self.reload_config = reload_config
        self.load_routes = load_routes
        self._accept_scope = trio.CancelScope()
        self.reloads = self.reload_failures = 0

    async def serve_clients(self) -> None:
        """The edge's accept loop, stoppable by the drain."""
        with self._accept_scope:
            await self._serve()

    async def run(self, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
        """Handle signals until a stop signal has drained the edge; then cancel ``nursery``."""
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.reload()
                continue
            log.info(
                "edge stopping index=%d signal=%s drain_timeout_s=%s",
                self.edge.index,
                signal.Signals(signum).name,
                self.edge.cfg.drain_timeout_s,
            )
            await self.drain()
            nursery.cancel_scope.cancel()
            return

    # -- drain ---------------------------------------------------------------------------------

    async def drain(self) -> None:
        edge = self.edge
        edge.draining = True
        notify("STOPPING=1\nSTATUS=draining")
        started = trio.current_time()
        self._accept_scope.cancel()
        for listener in self.listeners:
            listener.close()
        ended: set[int] = set()  # id() of sessions asked to end
        shut: set[trio.socket.SocketType] = set()
        with trio.move_on_after(edge.cfg.drain_timeout_s) as scope:
            while True:
                sessions = edge.hub.all_sessions()
                writes = []
                for s in sessions:
                    if id(s) not in ended:
                        ended.add(id(s))
                        w = end_session(s)
                        if w is not None:
                            writes.append(w)
                if writes:
                    await edge.deliverer.write_many(writes, trio.current_time())
                if not sessions:
                    for sock in list(edge.sockets):
                        if sock not in shut:
                            shut.add(sock)
                            _shutdown_read(sock)
                    if edge.connections == 0:
                        break
                await trio.sleep(POLL_S)
        left = edge.connections
        log.info(
            "edge drained index=%d seconds=%.2f sessions_ended=%d connections_cut=%d%s",
            edge.index,
            trio.current_time() - started,
            len(ended),
            left,
            " (drain_timeout_s reached)" if scope.cancelled_caught else "",
        )

    # -- reload --------------------------------------------------------------------------------

    def reload(self) -> bool:
        edge = self.edge
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            if self.reload_config is None:
                new = edge.cfg
            else:
                new = self.reload_config()
            plan = plan_reload(edge.cfg, new, EDGE_RELOADABLE)
            routes = self.load_routes(plan.config)
            edge.set_routes(plan.config, routes)
        except ConfigError as exc:
            self.reload_failures += 1
            log.error("reload failed, running config kept: %s", exc)
            notify("READY=1\nSTATUS=serving (last reload failed)")
            return False
        edge.deliverer.buffer_limit = plan.config.client_buffer_bytes
        logging.getLogger().setLevel(plan.config.log_level.upper())
        self.reloads += 1
        if plan.needs_restart:
            log.warning(
                "reload: changed keys that need a restart (not applied): %s",
                ", ".join(plan.needs_restart),
            )
        log.info(
            "edge reloaded index=%d routes=%d changed=%s",
            edge.index,
            len(routes),
            ",".join(plan.applied) or "-",
        )
        notify("READY=1\nSTATUS=serving")
        return True


def _shutdown_read(sock: trio.socket.SocketType) -> None:
    try:
        sock.shutdown(stdsocket.SHUT_RD)
    except OSError:
        pass
