"""The edge process: composition root (``main(cfg, index)``).

Wires the listener, the broker link, the hub, the tracker, the deliverer and the timers, and
runs them under one trio nursery until SIGTERM/SIGINT.  No protocol logic lives here.
"""
from __future__ import annotations

import logging
import os
import signal
import socket as stdsocket
import sys
from dataclasses import dataclass

import trio

from _speedups import http_chunk
from broker import wire
from broker.config import Config
from broker.errors import ConfigError, GripcastError, RemoteProtocolError
from broker.sdnotify import notify
from edge import responses
from edge.brokerlink import BrokerLink, BrokerUnavailable
from edge.deliver import Deliverer
from edge.httpserver import Connection
from edge.hub import Hub
from edge.routes import RouteTable, parse_routes
from edge.sig import Signer, load_key
from edge.timers import TimerWheel
from edge.tracker import EpochChanged, GapSkipped, RequestPosition, RequestReplay, State, Tracker

log = logging.getLogger(__name__)

TICK_S = 1.0
# A new hold waits (at most this long) until its channels' positions are known, so that
# everything published after the client got the response head is delivered to it.
POSITION_WAIT_S = 2.0
LISTEN_BACKLOG = 4096


@dataclass(frozen=True, slots=True)
class EdgeStatistics:
    index: int
    connections: int
    requests: int
    proxy_errors: int
    rejected: int


def load_routes(cfg: Config) -> RouteTable:
    lines = list(cfg.routes)
    if cfg.routes_file:
        try:
            with open(cfg.routes_file, encoding="utf-8") as fh:
                lines.extend(fh.read().splitlines())
        except OSError as exc:
            raise ConfigError([f"routes_file: cannot read {cfg.routes_file}: {exc.strerror}"]) from exc
    table = parse_routes(lines)
    for w in table.warnings:
        log.warning("%s", w)
    return table


class Edge:
    """Everything one edge process shares between its connections."""

    def __init__(self, cfg: Config, index: int, routes: RouteTable) -> None:
        self.cfg = cfg
        self.index = index
        self.routes = routes
        self.hub = Hub()
        self.tracker = Tracker()
        self.wheel = TimerWheel(TICK_S)
        self.link: BrokerLink | None = None
        self.deliverer: Deliverer | None = None
        self.nursery: trio.Nursery | None = None
        base = os.path.dirname(cfg.routes_file) if cfg.routes_file else "."
        self._default_signer = Signer(cfg.sig_iss, load_key(cfg.sig_key, base))
        self._signers = {}
        for r in routes.routes:
            if r.sig_iss is not None or r.sig_key is not None:
                key = load_key(r.sig_key if r.sig_key is not None else cfg.sig_key, base)
                self._signers[r.line] = Signer(r.sig_iss if r.sig_iss is not None else cfg.sig_iss, key)
        self.connections = self.requests = self.proxy_errors = self.rejected = 0
        self._pos_waiters: dict[str, trio.Event] = {}

    # -- used by connections -------------------------------------------------------------------

    def sign(self, route) -> str | None:
        if route.no_grip:
            return None
        return self._signers.get(route.line, self._default_signer).token()

    def add_session(self, session, channels: list[str]) -> None:
        for action in self.hub.add(session, channels, trio.current_time()):
            self.link.subscribe(action.channel)
            self.tracker.track(action.channel)
        self._run_tracker_actions()

    async def wait_positioned(self, channels: list[str], timeout_s: float = POSITION_WAIT_S) -> None:
        """Return once every channel's position is known (or after ``timeout_s``).

        A hold's baseline is the channel's position when the hold starts: waiting for it before
        the response head goes out means a message published after the client saw the head is
        always after the baseline, so it is delivered (live or by replay), never skipped.
        """
        with trio.move_on_after(timeout_s):
            for ch in channels:
                if self.tracker.state(ch) is State.POSITION:
                    await self._pos_waiters.setdefault(ch, trio.Event()).wait()

    def remove_session(self, session) -> None:
        self.hub.remove(session, trio.current_time())

    def schedule_keepalive(self, session) -> None:
        ka = session.hold.keep_alive
        if ka is not None and not session.done:
            self.wheel.schedule(session, trio.current_time() + ka.timeout_s)

    def schedule_timeout(self, session) -> None:
        self.wheel.schedule(session, session.deadline)

    # -- broker side ---------------------------------------------------------------------------

    async def on_frames(self, frames: list[bytes]) -> None:
        out: list = []
        tracker = self.tracker
        for frame in frames:
            try:
                msg = wire.decode_frame(frame)
            except RemoteProtocolError as exc:
                log.warning("bad frame from broker: %s", exc.reason)
                continue
            if isinstance(msg, wire.Envelope):
                tracker.on_envelope(msg, out)
            else:
                tracker.on_marker(msg, out)
        self._run_tracker_actions()
        if out:
            await self.deliverer.deliver(out, trio.current_time())

    def _run_tracker_actions(self) -> None:
        if self._pos_waiters:
            for ch in [c for c in self._pos_waiters if self.tracker.state(c) is not State.POSITION]:
                self._pos_waiters.pop(ch).set()
        for a in self.tracker.take_actions():
            if isinstance(a, RequestPosition):
                self.nursery.start_soon(self._ask_position, a.channel)
            elif isinstance(a, RequestReplay):
                self.nursery.start_soon(self._ask_replay, a)
            elif isinstance(a, EpochChanged):
                log.warning("channel epoch changed channel=%s old=%s new=%s", a.channel, a.old, a.new)
            elif isinstance(a, GapSkipped):
                log.warning("messages lost channel=%s seq=%d..%d", a.channel, a.first_seq, a.last_seq)

    async def _ask_position(self, channel: str) -> None:
        try:
            r = await self.link.request({"op": "position", "channel": channel})
        except (BrokerUnavailable, RemoteProtocolError) as exc:
            log.warning("position request failed channel=%s: %s", channel, exc)
            return  # the broker's marker on subscribe still sets the position
        out: list = []
        self.tracker.on_position(channel, str(r.get("epoch") or ""), int(r.get("last_seq") or 0), out)
        await self._after_tracker(out)

    async def _ask_replay(self, req: RequestReplay) -> None:
        out: list = []
        try:
            r = await self.link.request({"op": "replay", "channel": req.channel, "epoch": req.epoch,
                                         "after_seq": req.after_seq, "after_id": None,
                                         "limit": wire.REPLAY_LIMIT})
            items = [wire.Envelope.from_map(req.channel, m) for m in r.get("items") or []]
            self.tracker.on_replay(req, str(r.get("epoch") or ""), int(r.get("last_seq") or 0),
                                   items, bool(r.get("complete", True)), out)
        except (BrokerUnavailable, RemoteProtocolError) as exc:
            log.warning("replay failed channel=%s after_seq=%d: %s", req.channel, req.after_seq, exc)
            self.tracker.on_replay_failed(req, out)
        await self._after_tracker(out)

    async def _after_tracker(self, out: list) -> None:
        self._run_tracker_actions()
        if out:
            await self.deliverer.deliver(out, trio.current_time())

    # -- timers --------------------------------------------------------------------------------

    async def serve_timers(self) -> None:
        while True:
            await trio.sleep(TICK_S)
            now = trio.current_time()
            for action in self.hub.expire(now):
                if not self.hub.is_live(action.channel):
                    self.link.unsubscribe(action.channel)
                    self.tracker.untrack(action.channel)
            writes = []
            for s in self.wheel.pop_due(now):
                if s.kind == "response":
                    if s.result is None and not s.done:
                        s.respond(responses.timeout(s.hold, keep_alive=s.keep_alive))
                    continue
                if s.done or s.closing:
                    continue
                ka = s.hold.keep_alive
                if ka.mode == "idle" and now - s.last_out < ka.timeout_s - 0.5:
                    self.wheel.schedule(s, s.last_out + ka.timeout_s)
                    continue
                writes.append((s, [http_chunk_for(s, ka.data)]))
                self.wheel.schedule(s, now + ka.timeout_s)
            if writes:
                await self.deliverer.write_many(writes, now)

    # -- clients -------------------------------------------------------------------------------

    async def serve_clients(self, listener) -> None:
        while True:
            sock, addr = await listener.accept()
            if self.connections >= self.cfg.client_maxconn:
                self.rejected += 1
                self.nursery.start_soon(self._refuse, sock)
                continue
            try:
                sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
            except OSError:
                pass
            self.nursery.start_soon(self._serve_connection, sock, addr)

    async def _refuse(self, sock) -> None:
        with sock:
            with trio.move_on_after(5):
                try:
                    await sock.send(responses.error(503, "Too many connections."))
                except OSError:
                    pass

    async def _serve_connection(self, sock, addr) -> None:
        self.connections += 1
        try:
            with sock:
                await Connection(self, sock, addr).serve()
        except Exception:  # a bug in one connection must not take the edge down
            log.exception("connection handler failed addr=%s", addr)
        finally:
            self.connections -= 1

    def statistics(self) -> EdgeStatistics:
        return EdgeStatistics(self.index, self.connections, self.requests, self.proxy_errors,
                              self.rejected)


def http_chunk_for(session, data: bytes) -> bytes:
    return http_chunk(data) if session.chunked else data


async def open_listener(host: str, port: int):
    family = stdsocket.AF_INET6 if ":" in host else stdsocket.AF_INET
    sock = trio.socket.socket(family, stdsocket.SOCK_STREAM)
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
    await sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    return sock


async def serve(cfg: Config, index: int, routes: RouteTable) -> None:
    edge = Edge(cfg, index, routes)
    link = BrokerLink(cfg.endpoint("edge_pub", bind=False), cfg.endpoint("edge_ctl", bind=False))
    edge.link = link
    listen = (cfg.client_addr, cfg.port("client_port"))
    try:
        listener = await open_listener(*listen)
        with listener, trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                edge.nursery = nursery
                edge.deliverer = Deliverer(edge.hub, cfg.client_buffer_bytes, nursery.start_soon)
                nursery.start_soon(link.serve_ctl)
                nursery.start_soon(link.serve_sub, edge.on_frames)
                nursery.start_soon(edge.serve_timers)
                nursery.start_soon(edge.serve_clients, listener)
                nursery.start_soon(_hello, link)
                notify("READY=1\nSTATUS=serving")
                log.info("edge ready index=%d listen=%s:%d routes=%d", index, listen[0], listen[1],
                         len(routes))
                async for signum in signals:
                    log.info("edge stopping index=%d signal=%s", index, signal.Signals(signum).name)
                    notify("STOPPING=1")
                    nursery.cancel_scope.cancel()
                    break
    finally:
        link.close()


async def _hello(link: BrokerLink) -> None:
    try:
        r = await link.request({"op": "hello"}, tries=1)
        log.info("broker hello broker_id=%s", r.get("broker_id"))
    except GripcastError as exc:
        log.warning("broker did not answer hello: %s", exc)


def main(cfg: Config, index: int = 0) -> int:
    """Run one edge process until SIGTERM/SIGINT; returns the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=cfg.log_level.upper(),
                            format=f"%(asctime)s edge[{index}] %(levelname)s %(name)s: %(message)s")
    try:
        routes = load_routes(cfg)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if not routes.routes:
        log.warning("no routes configured: every request will get 502 Route not found")
    try:
        trio.run(serve, cfg, index, routes)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("edge failed to start index=%d: %s", index, exc)
        return 1
    return 0
