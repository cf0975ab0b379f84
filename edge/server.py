"""The edge process: composition root (``main(cfg, index)``).

Wires the listener, the broker link, the hub, the tracker, the deliverer and the timers, and
runs them under one trio nursery until SIGTERM/SIGINT.  No protocol logic lives here.
"""

from __future__ import annotations

import logging
import os
import socket as stdsocket
from collections.abc import Callable, Coroutine, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
import zmq

from _speedups import http_chunk
from broker import wire
from broker.config import Config
from broker.errors import EXIT_CONFIG, ConfigError, GripcastError, RemoteProtocolError
from broker.runtime.iosched import batch_io_threads
from broker.runtime.logsetup import configure_logging
from broker.runtime.procsignals import ignore_late_stop_signals, ignore_stop_signals_for_exit
from broker.runtime.rawsock import stdlib_socket
from broker.runtime.sdnotify import notify
from broker.runtime.ticks import TickGate, sleep_tick
from edge import cpupin, fastpath, opener, routeswatch, testorigin
from edge.grip.cache import InstructCache
from edge.grip.holds import HoldRegistry
from edge.grip.session import ResponseSession, StreamSession
from edge.http1 import responses
from edge.http1.connection import Connection
from edge.opener import Gate, Opener, run_task
from edge.ops import lifecycle, presence, statsreport
from edge.ops import metrics as edge_metrics
from edge.origin.client import OriginClient
from edge.origin.sig import Signer, load_key
from edge.origin.tls import load_origin_tls
from edge.parking import Parker
from edge.proxyrules import ProxyRules
from edge.readtimer import Wait
from edge.routes import Route, RouteTable, parse_routes
from edge.sessionstate import Session
from edge.sync.deliver import Deliverer
from edge.sync.hub import Hub
from edge.sync.link import BrokerLink, BrokerLinks, BrokerRefused, BrokerUnavailable
from edge.sync.markers import FrameFeeder
from edge.sync.repair import LinkLost, LinkWatches, Resync, tell_epoch_change
from edge.sync.resume import Resumer
from edge.sync.tracker import (
    EpochChanged,
    GapSkipped,
    RequestPosition,
    RequestReplay,
    State,
    Tracker,
)
from edge.timers import TimerWheel
from edge.tls import Certificates, load_certificates
from edge.tlsconn import TlsConn, TlsServer
from edge.upstream import Upstream
from edge.ws import commands as ws_commands
from edge.ws.session import WsSession
from edge.ws.timers import WsTimers

log = logging.getLogger(__name__)

TICK_S = 1.0  # link-repair checks
# keep-alives and hold timeouts: a quarter-second wheel, so that Grip-Keep-Alive's timeout=1
# sends about one keep-alive a second as Pushpin does (with a 1 s wheel it was one every ~2 s)
TIMER_TICK_S = 0.25
# with nothing in that wheel, one tick a second (the origin pool's idle sweep, channel lingers)
IDLE_TIMER_TICK_S = 1.0
# A new hold waits (at most this long) until its channels' positions are known, so that
# everything published after the client got the response head is delivered to it.
POSITION_WAIT_S = 2.0
# a newly subscribed channel's position request waits this long (and up to a ReadTimer tick)
# for the broker's marker on subscribe, which nearly always comes first (within a
# millisecond or two): it is then never sent (no task, no round trip for edge or broker)
POSITION_ASK_AFTER_S = 0.1
LISTEN_BACKLOG = 4096
REFUSE_LINGER = 256  # refused connections (503) drained at once; beyond, closed at once


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening socket of the edge: plain HTTP, or HTTPS (``tls``) on ``port``."""

    sock: trio.socket.SocketType
    addr: str
    port: int
    tls: bool


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
            raise ConfigError(
                [f"routes_file: cannot read {cfg.routes_file}: {exc.strerror}"]
            ) from exc
    table = parse_routes(lines)
    for w in table.warnings:
        log.warning("%s", w)
    return table


def load_upstream(cfg: Config) -> Upstream:
    """The ``upstream_key`` verifier (relative ``file:`` paths as for ``sig_key``)."""
    return Upstream.load(cfg.upstream_key, os.path.dirname(cfg.routes_file) or ".")


Signers = tuple[Signer, dict[int, Signer]]  # the default signer, and per route line


def load_signers(cfg: Config, routes: RouteTable) -> Signers:
    """The Grip-Sig signers of ``cfg`` and ``routes``; raises ConfigError (a bad key)."""
    base = os.path.dirname(cfg.routes_file) if cfg.routes_file else "."
    default_signer = Signer(cfg.sig_iss, load_key(cfg.sig_key, base))
    signers = {}
    for r in routes.routes:
        if r.sig_iss is not None or r.sig_key is not None:
            key = load_key(r.sig_key if r.sig_key is not None else cfg.sig_key, base)
            signers[r.line] = Signer(r.sig_iss if r.sig_iss is not None else cfg.sig_iss, key)
    return default_signer, signers


class Edge:
    """Everything one edge process shares between its connections (the edge's root object).

    Created once per process by ``serve``, inside the edge's nursery: every attribute is
    declared here, none is optional, and nothing is attached later.  The modules it runs see it
    through the protocols of ``edge.services``.
    """

    def __init__(
        self,
        cfg: Config,
        index: int,
        routes: RouteTable,
        link: BrokerLinks,
        nursery: trio.Nursery,
        signers: Signers,
        test_origin: tuple[str, int] = ("127.0.0.1", 9),
        certs: Certificates | None = None,
    ) -> None:
        self.cfg = cfg
        self.test_origin = test_origin  # where ``test`` targets go (edge.testorigin)
        self.rules = ProxyRules.from_config(cfg)  # Pushpin's [proxy] request rules
        # HTTPS listeners' certificates and counters (edge.tlsconn); None: no HTTPS
        self.tls = TlsServer(certs) if certs is not None else None
        # the plain-HTTP listeners' connections, and parked ones woken, until they park
        # again, end or need a task (edge.opener): its task starts with the edge's
        self.opener = Opener((), self._opened, nursery.start_soon)
        self.index = index
        self.routes = routes
        self.link = link
        self.nursery = nursery
        self.hub: Hub[Session] = Hub()
        # several brokers: a gap may be a message still in flight from another broker
        several = len(link.links) > 1
        self.tracker = Tracker(reorder_window_s=cfg.reorder_window_s if several else 0.0)
        self.feeder = FrameFeeder(self.tracker)  # fan-out frames in (edge.sync.markers)
        self._reorder_wake = trio.Event()  # set when the tracker has a reorder deadline
        self.verified: set[str] = set()  # broker_ids whose hello was answered and checked
        self._verifying: set[str] = set()  # broker_ids whose hello is being asked
        self.wheel: TimerWheel[StreamSession | ResponseSession] = TimerWheel(TIMER_TICK_S)
        # serve_timers' ticks: TIMER_TICK_S while the wheel holds anything, else one a second
        self.timer_ticks = TickGate(TIMER_TICK_S, IDLE_TIMER_TICK_S, lambda: len(self.wheel) > 0)
        self.deliverer = Deliverer(self.hub, cfg.client_buffer_bytes, nursery.start_soon)
        self.ws_timers = WsTimers(self.deliverer)  # its task is started by ``serve``
        # origin connection pool, read timer (its task is started by ``serve``), header memo
        self.origin_client = OriginClient(cfg.origin_keepalive_idle_s)
        self._default_signer: Signer
        self.upstream: Upstream
        self._signers: dict[int, Signer]
        self.set_routes(cfg, routes, signers)
        self.connections = self.requests = self.proxy_errors = self.rejected = 0
        self.ws_opened = 0  # WebSocket sessions opened
        self._refusing = 0  # connections being refused right now (``_refuse``)
        self.sockets: set[trio.socket.SocketType] = set()  # open client sockets (edge.lifecycle
        # closes idle ones on drain)
        self.draining = False
        self.exit_code = 0  # EXIT_CONFIG when the edge stops itself for a configuration problem
        self._pos_waiters: dict[str, Gate] = {}  # trio tasks and the opener's alike
        self._pos_deadlines: dict[str, Wait] = {}  # the driven waiters' (wait_positioned)
        self._pos_asks: dict[str, Wait] = {}  # new channels' position requests, if no marker
        self.linkwatch = LinkWatches(
            len(link.links), cfg.broker_link_timeout_s, trio.current_time()
        )
        self._pos_failed: set[str] = set()  # position requests to retry (edge.sync.repair)
        self.resumer = Resumer(self, cfg.resume_retry_for_s)
        # HTTP holds: recover, first-subscription retries, the next-link update limiter
        self.holds = HoldRegistry(cfg.next_link_updates_per_s)
        self.instruct_cache = InstructCache()  # parsed instructs and stream heads (edge.grip.cache)
        self.stats = statsreport.open_conn_stats(index)  # Pushpin stats socket (edge.connstats)
        self.websockets: dict[str, WsSession] = {}  # by connection id (conncheck, refresh)
        # idle plain stream holds without a task (edge.parking); its task is started by ``serve``
        self.parker = Parker(
            partial(self._serve_connection, None, None, None),
            self.opener.start_soon,
            self._abandoned,
        )

    def set_routes(self, cfg: Config, routes: RouteTable, signers: Signers | None = None) -> None:
        """Install ``cfg`` and ``routes`` (startup and SIGHUP reload); raises ConfigError.

        On reload (no ``signers``) the TLS certificates are read again too: new connections
        get them, open ones keep theirs; a bad certificate fails the reload (nothing changes)."""
        certs = None
        if signers is None:
            signers = load_signers(cfg, routes)
            if self.tls is not None:
                certs = load_certificates(cfg)
        if routes.has_test_targets:
            routes = routes.bind_test_origin(*self.test_origin)
        origin_tls = load_origin_tls(cfg, routes)  # before anything changes: it may raise
        upstream = load_upstream(cfg)
        self.cfg, self.routes = cfg, routes
        self.rules = ProxyRules.from_config(cfg)
        if self.tls is not None and certs is not None:
            self.tls.install(certs)
            log.info("TLS certificates reloaded files=%s", ",".join(certs.files))
        self._default_signer, self._signers = signers
        self.origin_client.pool.set_idle_s(cfg.origin_keepalive_idle_s)
        origin_tls.carry_counts(self.origin_client.tls)  # counters survive a reload
        self.origin_client.tls = origin_tls  # TLS toward ssl targets (edge.origin.tls)
        self.upstream = upstream  # upstream_key (edge.upstream: chaining)
        if hasattr(self, "resumer"):  # not yet at startup (__init__ passes the key)
            self.resumer.retry_for_s = cfg.resume_retry_for_s

    # -- used by connections -------------------------------------------------------------------

    def sign(self, route: Route) -> str | None:
        if route.no_grip:
            return None
        return self._signers.get(route.line, self._default_signer).token()

    def add_session(self, session: Session, channels: list[str]) -> None:
        actions = self.hub.add(session, channels, trio.current_time())
        if not actions:  # channels held here already: nothing new for the tracker to act on
            return
        for action in actions:
            self.link.subscribe(action.channel)
            self.tracker.track(action.channel)
            self.holds.first_subscribed(action.channel, trio.current_time())
        self._run_tracker_actions()

    def begin_resume(self, session: Session, channel: str) -> None:
        """Hold ``channel``'s live messages for ``session`` until ``resume`` releases them."""
        self.resumer.begin(session, channel)

    async def resume(
        self, session: Session, channel: str, cursor: str, *, flush_on_fail: bool = True
    ) -> bool:
        """Catch ``session`` up on ``channel`` after ``cursor`` from broker history (edge.resume)."""
        return await self.resumer.resume(session, channel, cursor, flush_on_fail=flush_on_fail)

    def on_recover(self) -> None:
        """The broker relayed a ``recover``: response holds re-ask the origin, streams with a
        next link fetch it (Pushpin's recover command)."""
        n = self.holds.recover(trio.current_time())
        log.info("recover: %d held sessions asked to update (rate-limited)", n)

    def on_command(self, command: wire.EdgeCommand, link: BrokerLink | None = None) -> None:
        """A ``conncheck`` or ``refresh`` relayed by a broker: do it, answer what was found
        (to the broker that relayed it)."""
        found = ws_commands.answer(command, self.stats, self.websockets, self.hub)
        log.debug("command op=%s cmd=%d found=%d", command.op, command.cmd, len(found))
        (link or self.link.primary).answer(command.cmd, found)

    async def wait_positioned(
        self, channels: list[str], timeout_s: float = POSITION_WAIT_S
    ) -> None:
        """Return once every channel's position is known (or after ``timeout_s``).

        A hold's baseline is the channel's position when the hold starts: waiting for it before
        the response head goes out means a message published after the client saw the head is
        always after the baseline, so it is delivered (live or by replay), never skipped.
        """
        state = self.tracker.state
        if not any(state(ch) is State.POSITION for ch in channels):
            return  # the usual case: no cancel scope, no checkpoint
        if opener.driving():
            # a new connection the opener runs (edge.opener): the gates park it there, and the
            # edge's coarse timer bounds the wait (a cancel scope would give it a task); at
            # the deadline the channel's gate opens for everyone waiting on it, and the next
            # waiter starts a new one
            for ch in channels:
                if state(ch) is State.POSITION:
                    gate = self._pos_gate(ch)
                    if ch not in self._pos_deadlines:
                        late = partial(self._position_late, ch, gate)
                        self._pos_deadlines[ch] = self.origin_client.timer.call_after(
                            timeout_s, late
                        )
                    await gate.wait()
            return
        with trio.move_on_after(timeout_s):
            for ch in channels:
                if state(ch) is State.POSITION:
                    await self._pos_gate(ch).wait()

    def _pos_gate(self, channel: str) -> Gate:
        """The gate ``channel``'s position waiters wait on (set when the position comes)."""
        gate = self._pos_waiters.get(channel)
        if gate is None:
            gate = self._pos_waiters[channel] = Gate()
        return gate

    def _position_late(self, channel: str, gate: Gate) -> None:
        """No position for ``channel`` within the wait: its waiters go on (as at a timeout)."""
        self._pos_deadlines.pop(channel, None)
        if self._pos_waiters.get(channel) is gate:
            del self._pos_waiters[channel]
        gate.set()

    def positioned(self, channels: Iterable[str]) -> bool:
        """True when ``wait_positioned(channels)`` would return at once (the usual case: the
        caller then skips that coroutine)."""
        state = self.tracker.state
        for ch in channels:
            if state(ch) is State.POSITION:
                return False
        return True

    def remove_session(self, session: Session) -> None:
        self.hub.remove(session, trio.current_time())

    def schedule_keepalive(self, session: StreamSession) -> None:
        ka = session.hold.keep_alive
        if ka is not None and not session.done:
            self.wheel.schedule(session, trio.current_time() + ka.timeout_s)
            self.timer_ticks.wake()  # serve_timers leaves its slow tick

    def schedule_timeout(self, session: ResponseSession) -> None:
        self.wheel.schedule(session, session.deadline)
        self.timer_ticks.wake()

    # -- broker side ---------------------------------------------------------------------------

    async def on_frames(self, frames: list[bytes]) -> None:
        out: list[wire.Envelope] = []
        now = trio.current_time()  # one clock read per batch (it is all "now" to a client)
        self.feeder.feed(frames, out, now)
        self._run_tracker_actions()
        if out:
            await self.deliverer.deliver(out, now)

    def _run_tracker_actions(self) -> None:
        if self._pos_waiters:
            for ch in [c for c in self._pos_waiters if self.tracker.state(c) is not State.POSITION]:
                self._pos_waiters.pop(ch).set()
                w = self._pos_deadlines.pop(ch, None)
                if w is not None:
                    w.done()
        if self._pos_asks:
            for ch in [c for c in self._pos_asks if self.tracker.state(c) is not State.POSITION]:
                self._pos_asks.pop(ch).done()  # the marker came: no request
        if self.tracker.reorder_window_s and self.tracker.next_deadline() is not None:
            self._reorder_wake.set()
        for a in self.tracker.take_actions():
            if isinstance(a, RequestPosition):
                timer = self.origin_client.timer
                if a.subscribed and self.tracker.state(a.channel) is not State.POSITION:
                    continue  # (positioned already)
                if a.subscribed and timer.serving and a.channel not in self._pos_asks:
                    # the broker's marker on subscribe usually answers first (then no
                    # request at all); if not, ask after POSITION_ASK_AFTER_S
                    self._pos_asks[a.channel] = timer.call_after(
                        POSITION_ASK_AFTER_S, partial(self._ask_position_late, a.channel)
                    )
                else:
                    self.nursery.start_soon(self._ask_position, a.channel)
            elif isinstance(a, RequestReplay):
                self.nursery.start_soon(self._ask_replay, a)
            elif isinstance(a, EpochChanged):
                n = tell_epoch_change(self.hub.sessions(a.channel), a.channel)
                log.warning(
                    "channel history lost (epoch changed) channel=%s old=%s new=%s "
                    "streams_closed=%d responses_answered=%d told=%d",
                    a.channel,
                    a.old,
                    a.new,
                    n.streams_closed,
                    n.responses_answered,
                    n.hooked,
                )
            elif isinstance(a, GapSkipped):
                # outside the history window: as for an epoch change, never continue silently
                n = tell_epoch_change(self.hub.sessions(a.channel), a.channel)
                log.warning(
                    "messages lost (older than history) channel=%s seq=%d..%d "
                    "streams_closed=%d responses_answered=%d told=%d",
                    a.channel,
                    a.first_seq,
                    a.last_seq,
                    n.streams_closed,
                    n.responses_answered,
                    n.hooked,
                )

    def _ask_position_late(self, channel: str) -> None:
        """No marker brought a new channel's position in time: ask for it."""
        self._pos_asks.pop(channel, None)
        if self.tracker.state(channel) is State.POSITION:
            self.nursery.start_soon(self._ask_position, channel)

    async def _ask_position(self, channel: str) -> None:
        try:
            r = await self.link.request(wire.PositionRequest(channel))
        except (BrokerUnavailable, RemoteProtocolError) as exc:
            log.warning("position request failed channel=%s: %s", channel, exc)
            self._pos_failed.add(channel)  # retried by serve_link_repair
            return  # the broker's marker on subscribe may still set the position
        out: list[wire.Envelope] = []
        assert isinstance(r, wire.PositionReply)
        self.tracker.on_position(channel, r.epoch, r.last_seq, out, trio.current_time())
        await self._after_tracker(out)

    async def _ask_replay(self, req: RequestReplay) -> None:
        out: list[wire.Envelope] = []
        try:
            r = await self.link.request(
                wire.ReplayRequest(req.channel, epoch=req.epoch, after_seq=req.after_seq)
            )
            assert isinstance(r, wire.ReplayReply)
            self.tracker.on_replay(req, r.epoch, r.last_seq, list(r.items), r.complete, out)
        except (BrokerUnavailable, RemoteProtocolError) as exc:
            log.warning(
                "replay failed channel=%s after_seq=%d: %s", req.channel, req.after_seq, exc
            )
            self.tracker.on_replay_failed(req, out)
        await self._after_tracker(out)

    def on_heartbeat(self, index: int, broker_id: str) -> None:
        """Broker ``index``'s heartbeat (or hello): re-synchronise every channel after its
        restart or loss."""
        for a in self.linkwatch.on_heartbeat(index, broker_id, trio.current_time()):
            if isinstance(a, Resync):
                if self.tracker.statistics().channels:
                    log.warning(
                        "broker link resync reason=%r broker=%s broker_id=%s channels=%d",
                        a.reason,
                        self.link.links[index].endpoints[1],
                        a.broker_id,
                        self.tracker.statistics().channels,
                    )
                self.tracker.resync()
        if (
            broker_id not in self.verified
            and broker_id not in self._verifying
            and len(self.link.links) > 1
        ):
            # a broker this edge has not said hello to (it was down when the edge started,
            # or it restarted): check it as at start (store, cluster, wire version)
            self._verifying.add(broker_id)
            self.nursery.start_soon(self._verify, self.link.links[index], broker_id)
        self._run_tracker_actions()

    async def _verify(self, link: BrokerLink, broker_id: str) -> None:
        """Check a broker's hello (``_hello_one``); unanswered, its next heartbeat asks again."""
        try:
            if not await _hello_one(self, link, several=True):
                self.nursery.cancel_scope.cancel()  # logged by _hello_one; exit_code set
        finally:
            self._verifying.discard(broker_id)

    async def serve_link_repair(self) -> None:
        """Watch the broker links (edge.sync.repair) and retry unanswered repairs, every tick."""
        while True:
            await sleep_tick(TICK_S)
            now = trio.current_time()
            for link in self.link.links:
                if link.last_data is not None:
                    self.linkwatch.on_activity(link.index, link.last_data)
            for index, a in self.linkwatch.tick(now):
                if isinstance(a, LinkLost):
                    endpoint = self.link.links[index].endpoints[1]
                    if self.linkwatch.up:
                        # tail repair: what the lost broker stored but never sent is in the
                        # store; the positions (asked of a live broker) show it
                        log.warning(
                            "broker lost: no heartbeat for %.1fs broker=%s; resync from the "
                            "%d live broker(s)",
                            a.silent_s,
                            endpoint,
                            self.linkwatch.up_count(),
                        )
                        self.tracker.resync()
                    else:
                        log.warning(
                            "broker link lost: no heartbeat for %.1fs broker=%s (connections "
                            "stay held; channels resync when it is back)",
                            a.silent_s,
                            endpoint,
                        )
            if self.linkwatch.up:
                failed, self._pos_failed = self._pos_failed, set()
                for ch in failed:
                    if self.tracker.wants_position(ch):
                        self.nursery.start_soon(self._ask_position, ch)
                self.tracker.repair(now)
                self._run_tracker_actions()

    async def serve_reorder(self) -> None:
        """With several brokers: ask the replays whose reorder window passed (edge.sync.tracker)."""
        tracker = self.tracker
        if tracker.reorder_window_s <= 0:
            return
        while True:
            at = tracker.next_deadline()
            if at is None:
                self._reorder_wake = trio.Event()
                await self._reorder_wake.wait()
                continue
            await trio.sleep_until(at)
            tracker.expire(trio.current_time())
            self._run_tracker_actions()

    async def _after_tracker(self, out: list[wire.Envelope]) -> None:
        self._run_tracker_actions()
        if out:
            await self.deliverer.deliver(out, trio.current_time())

    # -- timers --------------------------------------------------------------------------------

    async def serve_timers(self) -> None:
        """Keep-alives, long-poll timeouts, the origin pool's sweep and channel lingers: every
        ``TIMER_TICK_S`` while the wheel holds anything, else every ``IDLE_TIMER_TICK_S``
        (woken early when something is scheduled), on the process's shared tick grid
        (``broker.runtime.ticks``: the edge's periodic tasks wake it together)."""
        while True:
            await self.timer_ticks.wait()
            now = trio.current_time()
            self.origin_client.pool.sweep(now)
            for action in self.hub.expire(now):
                if not self.hub.is_live(action.channel):
                    self.link.unsubscribe(action.channel)
                    self.tracker.untrack(action.channel)
            writes = []
            for s in self.wheel.pop_due(now):
                if isinstance(s, ResponseSession):
                    s.timeout()
                    continue
                if s.state:  # closing or ended
                    continue
                ka = s.hold.keep_alive
                assert ka is not None  # only sessions with a keep-alive are scheduled
                if ka.mode == "idle" and now - s.last_out < ka.timeout_s - 0.5:
                    self.wheel.schedule(s, s.last_out + ka.timeout_s)
                    continue
                writes.append((s, [http_chunk_for(s, ka.data)]))
                self.wheel.schedule(s, now + ka.timeout_s)
            if writes:
                self.stats.activity(None, len(writes))  # Pushpin counts keep-alives as activity
                await self.deliverer.write_many(writes, now)

    # -- clients -------------------------------------------------------------------------------

    async def serve_clients(self, listeners: list[Listener]) -> None:
        """Accept until cancelled (the drain).  Plain-HTTP listeners are the opener's
        (``edge.opener``, a task of the edge's nursery, as connection tasks are: it goes on
        driving the connections it holds, and only stops accepting here); HTTPS listeners
        have an accept loop each (many accepts per wakeup; TCP_NODELAY is inherited from the
        listener, ``edge.fastpath``)."""
        plain = [stdlib_socket(lst.sock) for lst in listeners if not lst.tls]
        opener = None
        if plain and None not in plain:
            opener = self.opener
            opener.listen(plain)
        try:
            async with trio.open_nursery() as nursery:
                for lst in listeners:
                    if lst.tls:
                        nursery.start_soon(
                            fastpath.accept_loop, lst.sock, self._accepted_tls(lst.port)
                        )
                    elif opener is None:  # pragma: no cover - a trio without stdlib sockets
                        nursery.start_soon(fastpath.accept_loop, lst.sock, self._accepted)
                await trio.sleep_forever()
        finally:
            if opener is not None:
                opener.stop_accepting()

    def _accepted_tls(
        self, port: int
    ) -> Callable[[trio.socket.SocketType, fastpath.PeerAddress | None], None]:
        def accepted(sock: trio.socket.SocketType, addr: fastpath.PeerAddress | None) -> None:
            tls = self.tls
            assert tls is not None  # HTTPS listeners exist only with certificates
            if self.connections >= self.cfg.client_maxconn:
                self.rejected += 1  # the handshake, then the same 503 as over HTTP
                self.nursery.start_soon(self._refuse_tls, tls, sock, addr, port)
                return
            self.nursery.start_soon(
                partial(
                    tls.serve_connection,
                    sock,
                    addr,
                    port,
                    self._serve_connection,
                    handshake_timeout_s=self.cfg.client_head_timeout_s,
                ),
                name="client-tls",  # a constant: trio would format one per connection
            )

        return accepted

    def _accepted(self, sock: trio.socket.SocketType, addr: fastpath.PeerAddress | None) -> None:
        coro = self._opened(sock, addr)
        if coro is not None:
            # a constant task name: trio would format one string per connection
            self.nursery.start_soon(run_task, coro, name="client")

    def _opened(
        self, sock: trio.socket.SocketType, addr: fastpath.PeerAddress | None
    ) -> Coroutine[Any, Any, bool] | None:
        """A new plain-HTTP connection: the coroutine that serves it (``edge.opener`` runs
        it), or None when it is refused (503, in a task of its own)."""
        if self.connections >= self.cfg.client_maxconn:
            self.rejected += 1
            self.nursery.start_soon(self._refuse, sock)
            return None
        return self._serve_connection(sock, addr)

    async def _refuse(self, sock: trio.socket.SocketType) -> None:
        """503, then a short lingering close (at most REFUSE_LINGER at once): closing with the
        client's request unread would reset the connection and lose the answer."""
        refusing = self._refusing
        self._refusing = refusing + 1
        try:
            with sock:
                with trio.move_on_after(1.0 if refusing < REFUSE_LINGER else 0.05):
                    try:
                        await sock.send(responses.error(503, "Too many connections."))
                        sock.shutdown(stdsocket.SHUT_WR)
                        while await sock.recv(65536):
                            pass
                    except OSError:
                        pass
        finally:
            self._refusing -= 1

    async def _refuse_tls(
        self,
        tls: TlsServer,
        sock: trio.socket.SocketType,
        addr: fastpath.PeerAddress | None,
        port: int,
    ) -> None:
        """Over HTTPS: the handshake (within the head timeout, counted as any), then the 503
        and the lingering close as ``_refuse``."""
        refusing = self._refusing
        self._refusing = refusing + 1
        try:
            with sock:
                conn = await tls.handshake(sock, addr, port, self.cfg.client_head_timeout_s)
                if conn is None:
                    return
                with trio.move_on_after(1.0 if refusing < REFUSE_LINGER else 0.05):
                    try:
                        conn.queue(responses.error(503, "Too many connections."))
                        await conn.flush()
                        sock.shutdown(stdsocket.SHUT_WR)
                        while await sock.recv(65536):
                            pass
                    except OSError:
                        pass
        finally:
            self._refusing -= 1

    async def _serve_connection(
        self,
        sock: trio.socket.SocketType | None,
        addr: fastpath.PeerAddress | None,
        tls: TlsConn | None = None,
        conn: Connection | None = None,
    ) -> bool:
        """A connection's task; with ``conn`` (and no ``sock``), a parked connection woken
        (``edge.parking``): its task again, until it ends or parks once more (True)."""
        resumed = conn is not None
        if conn is None:
            assert sock is not None
            self.connections += 1
            self.sockets.add(sock)
            self.stats.opened(sock, str(addr[0]) if addr else "", trio.current_time())
            conn = Connection(self, sock, addr, tls)
        else:
            sock, addr = conn.sock, conn.addr
        parked = False
        try:
            try:
                parked = await conn.serve()
            finally:
                # trio's close() wakes tasks parked on this fd (a deliverer writer); the stdlib
                # close that ``with sock:`` does would leave them registered on a reusable fd
                if not parked:
                    sock.close()
        except Exception:  # a bug in one connection must not take the edge down
            log.exception("connection handler failed addr=%s", addr)
        finally:
            if not parked:
                self._closed(sock)
                if resumed and conn.crypt is not None and self.tls is not None:
                    self.tls.closed()  # (a TLS connection that had parked: its count)
        return parked

    def _closed(self, sock: trio.socket.SocketType) -> None:
        self.connections -= 1
        self.sockets.discard(sock)
        self.stats.closed(sock, trio.current_time())

    def _abandoned(self, conn: Connection) -> None:
        """A parked connection closed because the edge stops (``edge.parking``)."""
        self._closed(conn.sock)
        if conn.crypt is not None and self.tls is not None:
            self.tls.closed()

    def statistics(self) -> EdgeStatistics:
        return EdgeStatistics(
            self.index, self.connections, self.requests, self.proxy_errors, self.rejected
        )


def http_chunk_for(session: StreamSession, data: bytes) -> bytes:
    return http_chunk(data) if session.chunked else data


async def open_listener(host: str, port: int) -> trio.socket.SocketType:
    family = stdsocket.AF_INET6 if ":" in host else stdsocket.AF_INET
    sock = trio.socket.socket(family, stdsocket.SOCK_STREAM)
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
    fastpath.set_listener_options(sock)
    await sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    return sock


async def open_listeners(cfg: Config) -> list[Listener]:
    """The plain HTTP listener and every HTTPS one (``https_port``), all with SO_REUSEPORT."""
    wanted = [(cfg.client_addr, cfg.port("client_port"), False)]
    wanted += [(addr, port, True) for addr, port in cfg.https_listens()]
    out: list[Listener] = []
    try:
        for addr, port, tls in wanted:
            out.append(Listener(await open_listener(addr, port), addr, port, tls))
    except BaseException:
        for lst in out:
            lst.sock.close()
        raise
    return out


async def serve(
    cfg: Config, index: int, routes: RouteTable, reload_config: Callable[[], Config] | None = None
) -> int:
    link = BrokerLinks(cfg, name=statsreport.edge_name(index))
    if cfg.zmq_io_batch:  # the links' context (broker.runtime.iosched)
        batch_io_threads(zmq.Context.instance())
    signers = load_signers(cfg, routes)  # here: a ConfigError inside the nursery is grouped
    load_origin_tls(cfg, routes)  # (the same: a bad CA file or client certificate)
    certs = load_certificates(cfg) if cfg.https_port else None  # ConfigError: exit 78
    exit_code = 0
    try:
        listeners = await open_listeners(cfg)
        if cfg.edge_cpu_affinity:  # this edge on its CPU, its new connections steered to it
            cpupin.pin(index, [lst.sock for lst in listeners])
        # Pushpin's ``test`` target: served on a loopback port of this edge's own
        test_listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        test_port = test_listeners[0].socket.getsockname()[1]
        with ExitStack() as stack, trio.open_signal_receiver(*lifecycle.SIGNALS) as signals:
            for lst in listeners:
                stack.enter_context(lst.sock)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(testorigin.serve, test_listeners)
                edge = Edge(
                    cfg,
                    index,
                    routes,
                    link,
                    nursery,
                    signers,
                    test_origin=("127.0.0.1", test_port),
                    certs=certs,
                )
                link.on_heartbeat = edge.on_heartbeat

                def refuse() -> None:  # the broker speaks another wire version (logged)
                    edge.exit_code = EXIT_CONFIG
                    nursery.cancel_scope.cancel()

                link.on_refuse = refuse
                life = lifecycle.EdgeLifecycle(
                    edge,
                    [lst.sock for lst in listeners],
                    reload_config=reload_config,
                    load_routes=load_routes,
                    serve=partial(edge.serve_clients, listeners),
                )
                await edge_metrics.start(edge, nursery)
                nursery.start_soon(link.serve, edge.on_frames, edge.on_recover, edge.on_command)
                nursery.start_soon(edge.serve_reorder)
                nursery.start_soon(edge.serve_timers)
                nursery.start_soon(edge.opener.serve, name="opener")
                nursery.start_soon(edge.parker.serve)
                nursery.start_soon(edge.holds.serve_updates)
                nursery.start_soon(edge.ws_timers.serve)
                nursery.start_soon(edge.origin_client.timer.serve)
                if edge.tls is not None:  # the TLS handshakes' deadlines (edge.tlsconn)
                    nursery.start_soon(edge.tls.sweep)
                nursery.start_soon(edge.serve_link_repair)
                nursery.start_soon(statsreport.serve_stats, edge)
                nursery.start_soon(presence.serve_presence, edge)  # broker.ops.presence
                if cfg.routes_file_watch:
                    nursery.start_soon(
                        routeswatch.serve_watch, lambda: edge.cfg.routes_file, life.reload
                    )
                # the hello gate: a broker of another wire version or cluster stops this edge
                # before it serves a client (no answer in time: serve, heartbeats check later)
                if not await _hello(edge, link):
                    nursery.cancel_scope.cancel()
                    return edge.exit_code
                nursery.start_soon(life.serve_clients)
                log.info(
                    "edge ready index=%d listen=%s routes=%d",
                    index,
                    " ".join(
                        f"{'https' if lst.tls else 'http'}://{lst.addr}:{lst.port}"
                        for lst in listeners
                    ),
                    len(routes),
                )
                notify("READY=1\nSTATUS=serving")
                await life.run(signals, nursery)  # SIGHUP: reload; SIGTERM/SIGINT: drain
            edge.origin_client.close()
            exit_code = edge.exit_code
    finally:
        link.close()
    return exit_code


async def _hello(edge: Edge, links: BrokerLinks) -> bool:
    """Say hello to every broker (at once); False (``edge.exit_code`` set) when this edge
    must stop: any broker refusing it, of another cluster, or (with several brokers) one
    that does not keep channels in a shared store."""
    verdicts: list[bool] = []

    async def one(link: BrokerLink) -> None:
        verdicts.append(await _hello_one(edge, link, several=len(links.links) > 1))

    async with trio.open_nursery() as nursery:
        for link in links.links:
            nursery.start_soon(one, link)
    return all(verdicts)


async def _hello_one(edge: Edge, link: BrokerLink, *, several: bool) -> bool:
    where = link.endpoints[1]
    try:
        r = await link.request(wire.HelloRequest(wire.WIRE_VERSION), tries=1)
    except BrokerRefused as exc:
        # the broker refuses edges of another wire version (its reason names both versions)
        log.error(
            "the broker at %s refused this edge (edge wire version %d): %s; stopping",
            where,
            wire.WIRE_VERSION,
            exc.reason,
        )
        edge.exit_code = EXIT_CONFIG
        return False
    except GripcastError as exc:
        log.warning("broker did not answer hello: %s", exc)
        return True
    assert isinstance(r, wire.HelloReply)
    edge.verified.add(r.broker_id)
    log.info("broker hello broker=%s broker_id=%s wire=%d", where, r.broker_id, r.wire_version)
    if not link.check_wire_version(r.wire_version):
        return False
    theirs = r.cluster_id
    if edge.cfg.cluster_id and theirs != edge.cfg.cluster_id:
        # another cluster's broker on our broker ports (a second ``gripcast run``): joining
        # it would deliver that cluster's messages to our clients, so stop instead
        log.error(
            "the broker at %s belongs to another cluster (cluster_id %r, ours %r); stopping",
            where,
            theirs or "-",
            edge.cfg.cluster_id,
        )
        edge.exit_code = EXIT_CONFIG
        return False
    if several and not r.shared_store:
        # each broker would sequence the channel on its own: two seq 1s, two histories
        log.error(
            "the broker at %s keeps channels in its own memory store, but this edge lists %d "
            "brokers (brokers = ...): several brokers need a shared Redis store "
            '(store = "redis://..."); stopping',
            where,
            len(edge.link.links),
        )
        edge.exit_code = EXIT_CONFIG
        return False
    if link.on_heartbeat is not None and r.broker_id:
        link.on_heartbeat(r.broker_id)  # same identity check as a heartbeat
    return True


def main(cfg: Config, index: int = 0, reload_config: Callable[[], Config] | None = None) -> int:
    """Run one edge process until SIGTERM/SIGINT; returns the exit code."""
    configure_logging(cfg.log_level, f"edge{index}")  # no-op when the CLI configured it
    try:
        routes = load_routes(cfg)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    if not routes.routes:
        log.warning("no routes configured: every request will get 502 Route not found")
    fastpath.tune_gc()
    ignore_late_stop_signals()
    try:
        code: int = _run(serve, cfg, index, routes, reload_config)
        ignore_stop_signals_for_exit()
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("edge failed to start index=%d: %s", index, exc)
        return 1
    return code


def _run(*args: object) -> int:
    """``trio.run(*args)``, with two diagnostics for the bench (``bench.connrate``), off
    unless their variable is in the environment:

    * ``GRIPCAST_EDGE_CPROFILE=<prefix>``: the whole run under cProfile, saved to
      ``<prefix>.<pid>.prof`` when the edge stops (Python calls per connection);
    * ``GRIPCAST_EDGE_GCSTATS=<prefix>``: collections and CPU seconds spent in them, per
      generation, written to ``<prefix>.<pid>`` when the edge stops."""
    gcstats = os.environ.get("GRIPCAST_EDGE_GCSTATS")
    if gcstats:
        import gc
        import time

        acc = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
        began = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                began[0] = time.process_time()
            else:
                a = acc[info["generation"]]
                a[0] += 1
                a[1] += time.process_time() - began[0]

        gc.callbacks.append(on_gc)
        try:
            return _run_profiled(*args)
        finally:
            gc.callbacks.remove(on_gc)
            with open(f"{gcstats}.{os.getpid()}", "w") as fh:
                fh.write(repr(acc) + "\n")
    return _run_profiled(*args)


def _run_profiled(*args: object) -> int:
    prefix = os.environ.get("GRIPCAST_EDGE_CPROFILE")
    if not prefix:
        return int(trio.run(*args))  # type: ignore[arg-type]
    import cProfile

    prof = cProfile.Profile()
    try:
        return int(prof.runcall(trio.run, *args))  # type: ignore[arg-type]
    finally:
        prof.dump_stats(f"{prefix}.{os.getpid()}.prof")
