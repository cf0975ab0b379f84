"""The broker process: composition root, and the only module of ``broker`` that touches sockets.

``main(cfg)`` runs ``serve_broker(cfg)`` under trio and returns the exit status.  The broker
binds (see the wiring table in ``broker.config``)::

    push_in   PULL    publishers' PUSH: one frame per item (J/T/bare tnetstring, M msgpack)
                      or per batch (B + msgpack array; broker.items)
    sub_in    SUB     publishers' PUB/XPUB: [channel, item]; subscribed to the live channels
    command   ROUTER  publishers' REQ/DEALER: get-zmq-uris, publish, recover (tnetstring ZRPC)
    edge_pub  XPUB    edges' SUB: fan-out frames, position markers, heartbeats
    edge_ctl  ROUTER  edges' DEALER: hello, position, replay (msgpack)
    http_api  HTTP    POST /publish, POST /recover, GET / (Pushpin's publish API)

Every input feeds the same pipeline, one batch at a time and under one lock so that seq order
is release order: parse -> ``Sequencer`` (dedupe, reorder) -> ``Store.append_batch`` (seq,
epoch, history) -> fan-out of the envelopes whose channel is live on ``edge_pub``.

ZeroMQ under trio (DESIGN.md, "trio and ZeroMQ"): sockets are drained with NOBLOCK until
``zmq.Again``, a reader parks on ``trio.lowlevel.wait_readable(FD)`` only after ``EVENTS``
says nothing is readable, and every send on a socket pokes that socket's parked reader, since
the send can consume the edge-triggered FD's edge.
"""
from __future__ import annotations

import gc
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Sequence

import httptools
import trio
import zmq

from _speedups import fan_out
from broker import control, curve, wire
from broker.ingest import commands
from broker.ingest import httpapi
from broker import store as stores
from broker.ops import lifecycle as broker_lifecycle
from broker.ingest.auth import PublishAuth, load_verify_key
from broker.config import Config
from broker.histogram import IntHistogram
from broker.ops.stats import StatsEncoder
from broker.errors import (EXIT_CONFIG, ConfigError, PublishError, RateLimited, RemoteProtocolError,
                           StoreUnavailable)
from broker.runtime.procsignals import ignore_late_stop_signals, ignore_stop_signals_for_exit
from broker.ratelimit import ActionLimiter
from broker.history import MemoryHistory
from broker.items import Item, parse_pull_frame, parse_sub_item
from broker.runtime.sdnotify import notify
from broker.sequencer import Sequencer, SequencerStatistics
from broker.store.memory import MemoryStore, Store

log = logging.getLogger(__name__)

BATCH_MAX = 1000  # messages drained from one socket before processing them
PULL_CHUNK = 32  # PULL frames received per step while filling a batch (B frames hold many items)
PUBLISH_IN_HWM = 101_000  # Pushpin's DEFAULT_HWM for its publish inputs
SEQUENCER_POLL_S = 1.0  # Pushpin checks reorder timeouts every second
HTTP_REQUEST_TIMEOUT_S = 30.0
HTTP_READ_BYTES = 65536
REJECT_LOG_PER_S = 10
ZMQ_MAX_MSG_BYTES = 16 << 20  # largest ZeroMQ frame any peer may send the broker
# ingest allocates several containers per item and history keeps many alive: collecting the
# young generation every 10,000 allocations instead of 700 made the ingest pipeline 1.5x
# faster (bench/RESULTS.md, "Broker ingest"); cycles are still collected, a little later
GC_THRESHOLD = (10_000, 10, 10)
HTTP_LINGER_S = 1.0  # draining unread request bytes after an early error answer


# -- ZeroMQ under trio ---------------------------------------------------------------------------


class ZSocket:
    """A non-blocking ZeroMQ socket with one trio reader task (see the module docstring)."""

    def __init__(self, sock: zmq.Socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.fd: int = sock.getsockopt(zmq.FD)
        self._parked: trio.CancelScope | None = None
        self.send_dropped = 0
        self.linger_ms = 0  # on close; the graceful stop gives the fan-out socket some

    def recv_batch(self, limit: int = BATCH_MAX) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        recv = self.sock.recv_multipart
        try:
            while len(out) < limit:
                out.append(recv(zmq.NOBLOCK))
        except zmq.Again:
            pass
        return out

    def send(self, frames: Sequence[bytes]) -> bool:
        """Send without blocking; False (and counted) if the socket would block."""
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.send_dropped += 1
            return False

    def send_frame(self, frame: bytes) -> bool:
        try:
            self.sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.send_dropped += 1
            return False

    def poke(self) -> None:
        """Wake this socket's parked reader so it re-checks EVENTS (after a send or setsockopt)."""
        if self._parked is not None:
            self._parked.cancel()

    async def wait_readable(self) -> None:
        while not self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            with trio.CancelScope() as scope:
                self._parked = scope
                try:
                    await trio.lowlevel.wait_readable(self.fd)
                finally:
                    self._parked = None

    def close(self) -> None:
        try:
            trio.lowlevel.notify_closing(self.fd)
        except RuntimeError:  # outside trio
            pass
        self.sock.close(linger=self.linger_ms)


# -- the broker ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerStatistics:
    broker_id: str
    started: float
    live_channels: int
    received: dict
    rejected: int
    published: int
    fanned_out: int
    fanout_dropped: int
    markers: int
    trailing_markers: int
    control_requests: int
    store_failures: int
    sequencer: SequencerStatistics
    store: Any


class Broker:
    """Wires the sequencer, the store and the sockets; ``serve`` runs every task."""

    def __init__(self, cfg: Config, store: Store | None = None) -> None:
        self.cfg = cfg
        self.store: Store = store or MemoryStore(
            MemoryHistory(max_items=cfg.history_max_items, max_age_s=cfg.history_max_age_s)
        )
        self.sequencer = Sequencer()
        self.auth = PublishAuth(load_verify_key(cfg.publish_jwt_key), iss=cfg.publish_jwt_iss,
                                aud=cfg.publish_jwt_aud)  # off unless configured
        # recover and hint, whatever input they come by (broker.ratelimit)
        self.limiter = ActionLimiter(cfg.recover_per_s, cfg.hint_per_channel_per_s,
                                     cfg.hint_per_s, time.monotonic())
        self.http_refused = 0  # HTTP API connections refused at http_maxconn
        self.broker_id = secrets.token_hex(8)
        self.started = time.time()
        self.live: set[str] = set()
        self.uris = {
            "command": cfg.endpoint("command", bind=True),
            "publish-pull": cfg.endpoint("push_in", bind=True),
            "publish-sub": cfg.endpoint("sub_in", bind=True),
        }
        self._ctx: zmq.Context | None = None
        self._sockets: list[ZSocket] = []
        self._lock: trio.Lock | None = None
        self._listeners: list[trio.SocketListener] = []
        self._received = {"pull": 0, "sub": 0, "http": 0, "command": 0}
        self._rejected = 0
        self._published = 0
        self._fanned_out = 0
        self._markers = 0
        self._control_requests = 0
        self._store_failures = 0
        # lifecycle and metrics (broker.lifecycle, broker.metrics)
        self.store_latency = IntHistogram()
        self.draining = False
        self.serving = False
        self.input_scopes: list[trio.CancelScope] = []
        self.http_active = 0
        self.stats: StatsEncoder | None = None  # with stats_spec
        self.stats_pub: ZSocket | None = None
        self._store_down = False  # the last store write failed (logged once, then rate-limited)
        self._store_logged = 0.0
        # channel -> (epoch, last_seq) published since the last heartbeat, and the round before:
        # the heartbeat re-sends their position markers so an edge that lost the tail of a
        # burst on PUB/SUB (HWM) notices the gap even when nothing more is published
        self._recent: dict[str, tuple[str, int]] = {}
        self._recent_prev: dict[str, tuple[str, int]] = {}
        self._trailing_markers = 0

    # -- sockets --------------------------------------------------------------------------------

    def bind(self) -> None:
        """Create and bind every ZeroMQ socket (raises zmq.ZMQError, e.g. address in use)."""
        self._ctx = zmq.Context()
        try:
            self._bind_zap()  # before any Curve socket can take a handshake (docs/multihost.md)
            self.push_in = self._socket(zmq.PULL, "push_in", {zmq.RCVHWM: PUBLISH_IN_HWM})
            self.sub_in = self._socket(
                zmq.SUB, "sub_in", {zmq.RCVHWM: PUBLISH_IN_HWM, zmq.SNDHWM: 0}
            )
            self.command = self._socket(zmq.ROUTER, "command", {})
            self.edge_pub = self._socket(
                zmq.XPUB,
                "edge_pub",
                {zmq.XPUB_VERBOSE: 1, zmq.RCVHWM: 0, zmq.SNDHWM: self.cfg.edge_pub_sndhwm},
            )
            self.edge_ctl = self._socket(zmq.ROUTER, "edge_ctl", {})
            if self.cfg.stats_spec:  # Pushpin's stats PUB socket (broker.stats)
                sock = self._ctx.socket(zmq.PUB)
                sock.setsockopt(zmq.LINGER, 0)
                self.stats_pub = ZSocket(sock, "stats")
                self._sockets.append(self.stats_pub)
                sock.bind(self.cfg.stats_spec)
                self.stats = StatsEncoder(conn_ttl_s=self.cfg.stats_connection_ttl_s)
        except BaseException:
            self.close()
            raise

    def _socket(self, kind: int, name: str, opts: dict) -> ZSocket:
        assert self._ctx is not None
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for opt, value in opts.items():
            sock.setsockopt(opt, value)
        _set_options(sock, curve.heartbeat_options(self.cfg.zmq_heartbeat_s))
        sock.setsockopt(zmq.MAXMSGSIZE, ZMQ_MAX_MSG_BYTES)  # a bigger frame drops its sender
        if name in self.curve.server_sockets():
            _set_options(sock, curve.server_options(self.curve))
        z = ZSocket(sock, name)
        self._sockets.append(z)
        sock.bind(self.cfg.endpoint(name, bind=True))
        return z

    def _bind_zap(self) -> None:
        self.curve = curve.curve_settings(self.cfg)
        self.zap: ZSocket | None = None
        self._zap_denied = 0
        self._zap_logged: dict[tuple[str, str], float] = {}
        if self.curve.server:
            sock = self._ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            self.zap = ZSocket(sock, "zap")
            self._sockets.append(self.zap)
            sock.bind(curve.ZAP_ENDPOINT)

    async def _serve_zap(self) -> None:
        """Answer libzmq's ZAP requests: which Curve client keys may connect."""
        z = self.zap
        if z is None:
            return
        while True:
            await z.wait_readable()
            for frames in z.recv_batch():
                try:
                    i = frames.index(b"")
                except ValueError:
                    continue
                d = curve.zap_reply(frames[i + 1:], self.curve.allowed)
                if not d.allowed:
                    self._zap_denied += 1
                    now = time.monotonic()  # refused peers retry often: log each once a minute
                    if now - self._zap_logged.get((d.address, d.client_key), -1e9) >= 60:
                        if len(self._zap_logged) > 1000:
                            self._zap_logged.clear()
                        self._zap_logged[(d.address, d.client_key)] = now
                        log.warning("curve handshake refused address=%s mechanism=%s "
                                    "client_key=%s refused_total=%d", d.address, d.mechanism,
                                    d.client_key, self._zap_denied)
                else:
                    log.debug("curve client accepted address=%s client_key=%s", d.address,
                              d.client_key)
                z.send(frames[: i + 1] + d.reply)
            await trio.lowlevel.checkpoint()

    def close(self) -> None:
        for z in self._sockets:
            z.close()
        self._sockets.clear()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- the pipeline -----------------------------------------------------------------------------

    async def publish(self, items: Sequence[Item], *, strict: bool = False) -> None:
        """Sequence, retain and fan out ``items`` (one batch).

        Hint actions over the rate limits (``broker.ratelimit``) are dropped, counted and
        logged; with ``strict`` (inputs that can answer) ``RateLimited`` is raised instead and
        nothing is published.

        Raises ``StoreUnavailable`` when the store cannot take the batch (logged and counted
        here; the released items are lost and their ids forgotten by the dedupe cache, so the
        HTTP API answers 503 and the publisher may retry).
        """
        assert self._lock is not None
        items, refused = self.limiter.filter(items, time.monotonic())
        if refused:
            reason = (f"too many hint actions for channel {refused[0].channel!r} "
                      f"(hint_per_channel_per_s={self.cfg.hint_per_channel_per_s:g}, "
                      f"hint_per_s={self.cfg.hint_per_s:g})")
            if strict:
                raise RateLimited(reason.capitalize() + "; retry later.")
            self._reject("rate-limit", f"{len(refused)} hint(s) dropped: {reason}")
        if not items:
            return
        async with self._lock:
            released = self.sequencer.add_many(list(items), trio.current_time())
            await self._commit(released)

    async def _ingest(self, items: Sequence[Item]) -> None:
        """``publish`` for inputs that cannot answer (PULL, SUB, commands)."""
        try:
            await self.publish(items)
        except StoreUnavailable:
            pass  # logged by _commit

    async def _poll_sequencer(self) -> None:
        assert self._lock is not None
        async with self._lock:
            released = self.sequencer.poll(trio.current_time())
            for item in released:
                log.debug("sequencer released after wait channel=%s id=%s", item.channel, item.id)
            try:
                await self._commit(released)
            except StoreUnavailable:
                pass  # logged by _commit

    async def _commit(self, released: list[Item]) -> None:
        if not released:
            return
        t0 = time.perf_counter()
        try:
            envelopes = await self.store.append_batch(released, time.time())
            self.store_latency.observe(time.perf_counter() - t0)
        except StoreUnavailable as exc:
            self.sequencer.forget_ids(released)
            self._store_failures += len(released)
            now = time.monotonic()
            if not self._store_down:
                self._store_down = True
                self._store_logged = now
                log.error("store unavailable: publishes refused until it answers items=%d "
                          "error=%s", len(released), exc)
            elif now - self._store_logged >= 1.0:
                self._store_logged = now
                log.warning("store still unavailable: items refused items=%d total_refused=%d "
                            "error=%s", len(released), self._store_failures, exc)
            raise
        if self._store_down:
            self._store_down = False
            log.warning("store available again: publishing resumed total_refused=%d",
                        self._store_failures)
        self._published += len(envelopes)
        live = self.live
        if log.isEnabledFor(logging.DEBUG):
            for env in envelopes:
                log.debug(
                    "publish channel=%s seq=%d id=%s live=%s",
                    env.channel, env.seq, env.id, env.channel in live,
                )
        # remember each channel's position for the trailing markers, then encode and send the
        # frames of the live channels in one loop (_speedups' fan_out: no Python object per frame)
        sent, blocked = fan_out(self.edge_pub.sock, envelopes, live, self._recent)
        self.edge_pub.send_dropped += blocked
        self._fanned_out += sent
        if sent:
            self.edge_pub.poke()
        if self.stats is not None:
            self.stats.received(len(envelopes))
            self._emit_stats(self.stats.messages(envelopes, live))

    def _emit_stats(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.stats_pub.send_frame(frame)

    def recover(self, source: str) -> bool:
        """Pushpin's recover: forget remembered last ids and tell every edge (``wire``'s
        ``RECOVER_TOPIC``) to update its held sessions.  False (nothing done) when over
        ``recover_per_s``: each recover makes every held session ask its origin again."""
        if not self.limiter.allow_recover(time.monotonic()):
            self._reject(source, f"recover refused: over recover_per_s="
                                 f"{self.cfg.recover_per_s:g}")
            return False
        log.info("recover request source=%s: forgetting remembered last ids", source)
        self.sequencer.recover()
        if self.edge_pub.send_frame(wire.encode_recover(time.time())):
            self.edge_pub.poke()
        return True

    def _reject(self, source: str, reason: str) -> None:
        self._rejected += 1
        # a publisher sending garbage in a loop must not flood the log: at most
        # REJECT_LOG_PER_S lines a second, then how many were not shown
        now = time.monotonic()
        if now - getattr(self, "_reject_window", 0.0) >= 1.0:
            skipped = getattr(self, "_reject_skipped", 0)
            if skipped:
                log.warning("rejected publish: %d more not logged", skipped)
            self._reject_window, self._reject_logged, self._reject_skipped = now, 0, 0
        if self._reject_logged < REJECT_LOG_PER_S:
            self._reject_logged += 1
            log.warning("rejected publish source=%s reason=%r", source, reason)
        else:
            self._reject_skipped += 1

    # -- tasks ------------------------------------------------------------------------------------

    async def _serve_pull(self) -> None:
        z = self.push_in
        while True:
            await z.wait_readable()
            items: list[Item] = []
            # drain until a batch's worth of items: a B frame (broker.items) carries many
            while len(items) < BATCH_MAX:
                batch = z.recv_batch(PULL_CHUNK)
                self._received["pull"] += len(batch)
                for frames in batch:
                    if len(frames) != 1:
                        self._reject("pull", "received message with parts != 1")
                        continue
                    parsed, errors = parse_pull_frame(frames[0])
                    items += parsed
                    for reason in errors:
                        self._reject("pull", reason)
                if len(batch) < PULL_CHUNK:
                    break
            if len(items) > BATCH_MAX:  # one big B frame: keep batches (and fan-out bursts) bounded
                for i in range(0, len(items), BATCH_MAX):
                    await self._ingest(items[i:i + BATCH_MAX])
            elif items:
                await self._ingest(items)
            else:
                await trio.lowlevel.checkpoint()

    async def _serve_sub(self) -> None:
        z = self.sub_in
        while True:
            await z.wait_readable()
            items: list[Item] = []
            for frames in z.recv_batch():
                self._received["sub"] += 1
                if len(frames) != 2:
                    self._reject("sub", "received message with parts != 2")
                    continue
                try:
                    items.append(parse_sub_item(frames[0], frames[1]))
                except PublishError as exc:
                    self._reject("sub", exc.reason)
            if items:
                await self._ingest(items)
            else:
                await trio.lowlevel.checkpoint()

    async def _serve_command(self) -> None:
        z = self.command
        while True:
            await z.wait_readable()
            items: list[Item] = []
            acks: list[tuple[list[bytes], commands.CommandResult]] = []
            for frames in z.recv_batch():
                self._received["command"] += 1
                try:
                    prefix, payload = commands.split_envelope(frames)
                except RemoteProtocolError as exc:
                    self._reject("command", exc.reason)
                    continue
                result = commands.handle_command(payload, self.uris)
                if result.error:
                    self._reject("command", f"method={result.method or '?'} {result.error}")
                if result.recover and not self.recover("command"):
                    result = commands.rate_limited(result, "recover refused: over "
                                                   f"recover_per_s={self.cfg.recover_per_s:g}")
                items.extend(result.items)
                if result.reply is not None:
                    if result.items:
                        acks.append((prefix, result))  # acknowledged once stored
                    else:
                        z.send(prefix + [result.reply])
            if items:
                try:
                    await self.publish(items)
                    stored = True
                except StoreUnavailable:
                    stored = False  # logged by _commit
                for prefix, result in acks:
                    reply = result.reply if stored else result.failed_reply
                    if reply is not None:
                        z.send(prefix + [reply])
            else:
                await trio.lowlevel.checkpoint()

    async def _serve_edge_pub(self) -> None:
        """Track live channels from XPUB notices; answer each subscribe with a marker."""
        z = self.edge_pub
        assert self._lock is not None
        while True:
            await z.wait_readable()
            batch = z.recv_batch()
            async with self._lock:
                for frames in batch:
                    notice = wire.subscription_notice(frames[0]) if frames else None
                    if notice is None:
                        continue
                    subscribed, channel = notice
                    if subscribed:
                        await self._subscribed(channel)
                    elif channel in self.live:
                        self.live.discard(channel)
                        self.sub_in.sock.setsockopt(zmq.UNSUBSCRIBE, channel.encode("utf-8"))
                        self.sub_in.poke()
                        log.debug("channel dead channel=%s", channel)

    async def _subscribed(self, channel: str) -> None:
        if channel not in self.live:
            self.live.add(channel)
            self.sub_in.sock.setsockopt(zmq.SUBSCRIBE, channel.encode("utf-8"))
            self.sub_in.poke()
            log.debug("channel live channel=%s", channel)
        try:
            pos = await self.store.position(channel)
        except StoreUnavailable as exc:
            log.error("store unavailable, no marker channel=%s error=%s", channel, exc)
            return
        if self.edge_pub.send_frame(wire.encode_marker(channel, pos.epoch, pos.last_seq)):
            self._markers += 1

    async def _serve_edge_ctl(self) -> None:
        z = self.edge_ctl
        while True:
            await z.wait_readable()
            for frames in z.recv_batch():
                if len(frames) < 2:
                    continue
                self._control_requests += 1
                reply = await self._control(frames[-1])
                if reply is not None:  # None: a fire-and-forget "stats" report
                    z.send(frames[:-1] + [reply])
            await trio.lowlevel.checkpoint()

    async def _control(self, payload: bytes) -> bytes | None:
        try:
            req = control.parse_control(payload)
        except control.ControlError as exc:
            log.warning("bad control request reason=%r", exc.reason)
            return control.error_reply(exc.rid, exc.reason)
        if req.op == "hello":
            return control.hello_reply(req.rid, self.broker_id, self.started, self.cfg.cluster_id)
        if req.op == "stats":  # an edge's connections and counts (broker.stats)
            if self.stats is not None:
                try:
                    self._emit_stats(self.stats.edge_report(req.stats, time.time()))
                except RemoteProtocolError as exc:
                    log.warning("bad stats report from an edge: %s", exc.reason)
            return None
        try:
            if req.op == "position":
                pos = await self.store.position(req.channel)
                return control.position_reply(req.rid, req.channel, pos)
            rep = await self.store.replay(
                req.channel, req.epoch, req.after_seq, req.after_id, req.limit, time.time()
            )
        except StoreUnavailable as exc:
            log.error("store unavailable op=%s channel=%s error=%s", req.op, req.channel, exc)
            return control.error_reply(req.rid, "store unavailable")
        return control.replay_reply(req.rid, req.channel, rep)

    async def _serve_heartbeat(self) -> None:
        while True:
            self.edge_pub.send_frame(wire.encode_heartbeat(
                self.broker_id, self.started, time.time(),
                stats_ttl=self.stats.conn_ttl if self.stats is not None else 0))
            self._send_trailing_markers()
            self.edge_pub.poke()
            await trio.sleep(wire.HEARTBEAT_INTERVAL_S)

    def _send_trailing_markers(self) -> None:
        """Re-send the position of channels published in the last two heartbeat rounds."""
        rounds = {**self._recent_prev, **self._recent}
        self._recent_prev, self._recent = self._recent, {}
        live = self.live
        send = self.edge_pub.send_frame
        for channel, (epoch, last_seq) in rounds.items():
            if channel in live and send(wire.encode_marker(channel, epoch, last_seq)):
                self._trailing_markers += 1

    async def _serve_sequencer_timer(self) -> None:
        while True:
            await trio.sleep(SEQUENCER_POLL_S)
            await self._poll_sequencer()

    # -- HTTP API ---------------------------------------------------------------------------------

    async def serve_http_connection(self, stream: trio.SocketStream) -> None:
        """One request, one response, then close (Pushpin's SimpleHttpServer)."""
        try:
            with trio.move_on_after(HTTP_REQUEST_TIMEOUT_S):
                await self._http_exchange(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:  # a bug must not take the API down; log it with the traceback
            log.exception("http api: unexpected error")
        finally:
            with trio.move_on_after(1):
                await stream.aclose()

    async def _http_exchange(self, stream: trio.SocketStream) -> None:
        req = _HttpRequest()
        parser = httptools.HttpRequestParser(req)
        head = bytearray()
        while not req.headers_done:
            data = await stream.receive_some(HTTP_READ_BYTES)
            if not data:
                return
            head += data
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                req.complete = True  # no upgrades here: answer the request as it stands
            except httptools.HttpParserError:
                await _answer_early(stream, httpapi.bad_header().to_bytes())
                return
            if not req.headers_done and len(head) >= httpapi.MAX_HEADER_BYTES:
                await _answer_early(stream, httpapi.header_too_large().to_bytes())
                return
        end = head.find(b"\r\n\r\n")
        if (end + 4 if end >= 0 else len(head)) > httpapi.MAX_HEADER_BYTES:
            await _answer_early(stream, httpapi.header_too_large().to_bytes())
            return
        method = parser.get_method().decode("latin-1")
        version = parser.get_http_version()
        check = httpapi.check_head(method, req.headers)
        if check.response is not None:
            await _answer_early(stream, check.response.to_bytes(version))
            return
        if check.expect_continue and not req.complete:
            await stream.send_all(f"HTTP/{version} 100 Continue\r\n\r\n".encode())
        while not req.complete:
            data = await stream.receive_some(HTTP_READ_BYTES)
            if not data:
                return
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                await _answer_early(stream, httpapi.bad_header().to_bytes(version))
                return
        self._received["http"] += 1
        body = b"".join(req.body)
        denied = self.auth.check(method, req.url.decode("latin-1"), req.headers, time.time())
        if denied is not None:
            self._reject("http", f"unauthorized: {denied}")
            await stream.send_all(httpapi.respond(
                401, denied + "\n", extra=(("WWW-Authenticate", "Bearer"),)).to_bytes(version))
            return
        result = httpapi.handle_request(method, req.url.decode("latin-1"), req.headers, body)
        if result.error:
            self._reject("http", result.error)
        response = result.response
        if result.items:
            try:
                await self.publish(result.items, strict=True)
            except StoreUnavailable:
                response = httpapi.respond(503, "Store unavailable.\n")
            except RateLimited as exc:
                self._reject("http", exc.reason)
                response = httpapi.respond(429, exc.reason + "\n", extra=(("Retry-After", "1"),))
        if result.recover and not self.recover("http"):
            response = httpapi.respond(
                429, f"Too many recover requests (recover_per_s={self.cfg.recover_per_s:g}); "
                "retry later.\n", extra=(("Retry-After", "1"),))
        log.debug(
            "http api method=%s path=%s code=%d items=%d",
            method, req.url.decode("latin-1"), response.status, len(result.items),
        )
        await stream.send_all(response.to_bytes(version))

    # -- running ----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Bind every socket and the HTTP listener (raises zmq.ZMQError or OSError)."""
        self._lock = trio.Lock()
        self.bind()
        try:
            host = self.cfg.bind_addr("http") or None
            self._listeners = await trio.open_tcp_listeners(self.cfg.port("http_port"), host=host)
        except BaseException:
            self.close()
            raise

    async def serve(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run every task until cancelled (opening first if needed); sockets closed on exit."""
        if self._lock is None:
            await self.open()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(broker_lifecycle.serve_http, self, self._listeners)
                for task in (
                    self._serve_pull,
                    self._serve_sub,
                    self._serve_command,
                    self._serve_edge_pub,
                    self._serve_edge_ctl,
                    self._serve_heartbeat,
                    self._serve_sequencer_timer,
                    self._serve_zap,
                ):
                    nursery.start_soon(broker_lifecycle.wrap(self, task),
                                       name=f"broker.{task.__name__.lstrip('_')}")
                await broker_lifecycle.start_ops(self, nursery)
                self.serving = True
                notify(f"READY=1\nSTATUS=broker {self.broker_id} ready")
                log.info(
                    "broker ready broker_id=%s store=%s http=%s:%d push_in=%s sub_in=%s "
                    "command=%s edge_pub=%s edge_ctl=%s",
                    self.broker_id, stores.describe(self.cfg) if self.store.name != "memory"
                    else "memory", self.cfg.bind_addr("http"),
                    self.cfg.port("http_port"),
                    *(self.cfg.endpoint(n, bind=True)
                      for n in ("push_in", "sub_in", "command", "edge_pub", "edge_ctl")),
                )
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                for listener in self._listeners:
                    await listener.aclose()
                self.close()
                await self.store.aclose()

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            broker_id=self.broker_id,
            started=self.started,
            live_channels=len(self.live),
            received=dict(self._received),
            rejected=self._rejected,
            published=self._published,
            fanned_out=self._fanned_out,
            fanout_dropped=self.edge_pub.send_dropped if hasattr(self, "edge_pub") else 0,
            markers=self._markers,
            trailing_markers=self._trailing_markers,
            control_requests=self._control_requests,
            store_failures=self._store_failures,
            sequencer=self.sequencer.statistics(),
            store=self.store.statistics(),
        )


def _set_options(sock: zmq.Socket, options: dict) -> None:
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)


async def _answer_early(stream: trio.SocketStream, response: bytes) -> None:
    """Answer before the request was read in full, then drain what the client still sends
    (briefly), so that closing with unread input does not reset the connection and lose the
    answer."""
    await stream.send_all(response)
    with trio.move_on_after(HTTP_LINGER_S):
        await stream.send_eof()
        drained = 0
        while drained < httpapi.MAX_BODY_BYTES:
            data = await stream.receive_some(HTTP_READ_BYTES)
            if not data:
                break
            drained += len(data)


class _HttpRequest:
    """httptools callbacks for one request."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


# -- process entry -------------------------------------------------------------------------------


async def serve_broker(cfg: Config, reload_config=None) -> None:
    """Run the broker until SIGTERM or SIGINT, then stop cleanly (SIGHUP: reload)."""
    broker = Broker(cfg, store=stores.open_store(cfg))
    await stores.probe(broker.store)
    with trio.open_signal_receiver(*broker_lifecycle.SIGNALS) as signals:
        await broker.open()  # outside the nursery: bind errors propagate as they are
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.serve)
            await broker_lifecycle.BrokerLifecycle(broker, reload_config).run(signals, nursery)


def _configure_logging(level: str) -> None:
    """Log to stderr at ``level`` unless the caller (the CLI) configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


def main(cfg: Config, reload_config=None) -> int:
    """Run the broker process; 0 after a clean stop, 1 if it could not start or crashed."""
    _configure_logging(cfg.log_level)
    gc.set_threshold(*GC_THRESHOLD)
    ignore_late_stop_signals()
    try:
        trio.run(serve_broker, cfg, reload_config)
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
