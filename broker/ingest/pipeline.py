"""The broker's ingest pipeline: every input feeds it, one batch at a time.

parse -> ``Sequencer`` (dedupe, reorder) -> ``Store.append_batch`` (seq, epoch, history) ->
fan-out of the envelopes whose channel is live on ``edge_pub``, all under one lock so that
seq order is release order.  Work is batched: each input's reader drains its socket until it
would block (``broker.runtime.zmqtrio``), the pipeline processes the batch, writes the store
once and sends the batch.

``Pipeline`` also keeps what the fan-out needs: the live channels (from the XPUB's
subscription notices, each answered with a position marker), the heartbeat with the
trailing positions (``wire`` version 3: the live channels published since the last heartbeat,
packed into the heartbeat frame itself), and the edges' control requests (hello, position,
replay, stats).
The commands the edges answer (``conncheck``, ``refresh``) go through its ``relay``
(``broker.ingest.relay``), which also gets the edges' presence notices and answers.
The sockets are handed in, built by the composition root (``broker.server``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from _speedups import fan_out, send_frames
from broker import control, wire
from broker.config import Config
from broker.errors import PublishError, RateLimited, RemoteProtocolError, StoreUnavailable
from broker.histogram import IntHistogram
from broker.ingest import commands
from broker.ingest.relay import EdgeRelay
from broker.items import Item, parse_pull_frames, parse_sub_item
from broker.namespaces import NamespaceTable, refused_command_reply, zmq_refusal
from broker.ops.channelapi import ChannelApi
from broker.ops.presenceapi import PresenceService
from broker.ops.stats import StatsEncoder, StatsListeners
from broker.ratelimit import ActionLimiter
from broker.runtime.zmqtrio import ZSocket
from broker.sequencer import Sequencer, SequencerStatistics
from broker.store.memory import Store
from broker.wire import Envelope

log = logging.getLogger(__name__)

BATCH_MAX = 1000  # messages drained from one socket before processing them
HEARTBEAT_CHUNK = 512  # positions a heartbeat frame from the broker's loop (heartbeat_paced)
PULL_CHUNK = 32  # PULL frames received per step while filling a batch (B frames hold many items)
REJECT_LOG_PER_S = 10


@dataclass(frozen=True, slots=True)
class BrokerStatistics:
    broker_id: str
    started: float
    live_channels: int
    received: dict[str, int]
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


@dataclass(frozen=True, slots=True)
class PipelineSockets:
    """The sockets the pipeline sends on or subscribes (built from ``broker.config.WIRING``)."""

    sub_in: ZSocket
    command: ZSocket
    edge_pub: ZSocket
    stats: ZSocket | None  # with stats_spec


class Pipeline:
    """Sequence, retain and fan out; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        sockets: PipelineSockets,
        *,
        broker_id: str,
        started: float,
        uris: dict[str, str],
        stats: StatsEncoder | None,
        edge_stats: StatsEncoder | None = None,
    ) -> None:
        self.cfg = cfg
        # several frames of a fan-out step as one message (wire version 4), unless turned off
        self._batch = wire.BATCH_TOPIC if cfg.edge_pub_batch_bytes else None
        self.store = store
        self.sockets = sockets
        self.broker_id = broker_id
        self.started = started
        self.uris = uris
        self.stats = stats
        # the edges' reports: folded in even with the stats socket off (the status page reads
        # them, broker.ops.status); the same encoder as ``stats`` when that is on
        self.edge_stats = stats if stats is not None else edge_stats
        # who subscribes to the stats socket (an XPUB): message packets only for them
        self.stats_listeners = StatsListeners(stats.fmt if stats is not None else "tnetstring")
        self.sequencer = Sequencer(
            id_cache_ttl_s=cfg.id_cache_ttl_s, message_wait_s=cfg.message_wait_s
        )
        attach = getattr(store, "attach_sequencer", None)
        if attach is not None:  # several brokers on one Redis: sequencing in Redis (RedisStore)
            attach(self.sequencer, self.poll_sequencer)
        # recover and hint, whatever input they come by (broker.ratelimit)
        self.limiter = ActionLimiter(
            cfg.recover_per_s, cfg.hint_per_channel_per_s, cfg.hint_per_s, time.monotonic()
        )
        self.store_latency = IntHistogram()
        self.live: set[str] = set()
        self.lock = trio.Lock()
        self.relay = EdgeRelay(sockets.edge_pub, sockets.command)  # conncheck, refresh
        self.namespaces = NamespaceTable(cfg.namespaces)  # publish_zmq (broker.namespaces)
        self.presence = PresenceService(self.namespaces, self.publish)  # broker.ops.presenceapi
        self._received = {"pull": 0, "sub": 0, "http": 0, "command": 0}
        self._rejected = 0
        self._published = 0
        self._fanned_out = 0
        self._markers = 0
        self._control_requests = 0
        self._store_failures = 0
        self._store_down = False  # the last store write failed (logged once, then rate-limited)
        self._store_logged = 0.0
        self._reject_window = 0.0
        self._reject_logged = 0
        self._reject_skipped = 0
        # channel -> (epoch, last_seq) published since the last heartbeat (and the round before,
        # for the status page): the heartbeat carries their positions so an edge that lost the
        # tail of a burst on PUB/SUB (HWM) notices the gap even when nothing more is published
        self._recent: dict[str, tuple[str, int]] = {}
        # live channels whose subscription marker could not be sent (the store was down): the
        # first publish on one after the store answers is preceded by the marker of the
        # position just before it, so an edge still positioning that channel delivers it
        # (instead of positioning past it when its own retried request is answered)
        self._unmarked: set[str] = set()
        # channels with a refused write (StoreUnavailable): it may still be in the store (a
        # WAIT that no replica confirmed), then nothing announces its seq unless something is
        # published after it; once the store answers, their (confirmed) position is sent as a
        # marker so edges repair those items from history (remark_refused)
        self._refused: set[str] = set()
        self._recent_prev: dict[str, tuple[str, int]] = {}
        self._trailing_markers = 0
        self._heartbeats = 0  # heartbeat frames sent: their counter ``n``
        self.channels = ChannelApi(self)  # history, channel state, live channels

    # -- publishing -------------------------------------------------------------------------------

    async def publish(
        self, items: Sequence[Item], *, strict: bool = False
    ) -> list[tuple[Item, Envelope]]:
        """Sequence, retain and fan out ``items`` (one batch).

        Hint actions over the rate limits (``broker.ratelimit``) are dropped, counted and
        logged; with ``strict`` (inputs that can answer) ``RateLimited`` is raised instead and
        nothing is published.

        Raises ``StoreUnavailable`` when the store cannot take the batch (logged and counted
        here; the released items are lost and their ids forgotten by the dedupe cache, so the
        HTTP API answers 503 and the publisher may retry).

        Returns the items stored by this call with their envelopes (the ids the HTTP API
        answers with under ``Accept: application/json``).
        """
        items, refused = self.limiter.filter(items, time.monotonic())
        if refused:
            reason = (
                f"too many hint actions for channel {refused[0].channel!r} "
                f"(hint_per_channel_per_s={self.cfg.hint_per_channel_per_s:g}, "
                f"hint_per_s={self.cfg.hint_per_s:g})"
            )
            if strict:
                raise RateLimited(reason.capitalize() + "; retry later.")
            self.reject("rate-limit", f"{len(refused)} hint(s) dropped: {reason}")
        if not items:
            return []
        lock = self.lock
        if lock.locked():
            await lock.acquire()
        else:
            # the usual case (a memory store never holds it across an await): taken without
            # trio's checkpoint, a scheduling round per publish at one item a POST
            lock.acquire_nowait()
        try:
            released = self.sequencer.add_many(list(items), trio.current_time())
            return list(zip(released, await self._commit(released)))
        finally:
            lock.release()

    async def ingest(self, items: Sequence[Item]) -> None:
        """``publish`` for inputs that cannot answer (PULL, SUB)."""
        if self.namespaces.zmq_closed:
            items = self._zmq_allowed(items, "zmq")
        try:
            await self.publish(items)
        except StoreUnavailable:
            pass  # logged by _commit

    async def poll_sequencer(self, *, flush: bool = False) -> None:
        """Release (and store) what the sequencer held back past its wait; ``flush``: all of
        it (a graceful stop: those items were acknowledged on arrival, Pushpin's behaviour)."""
        async with self.lock:
            released = self.sequencer.poll(trio.current_time() + (3600.0 if flush else 0.0))
            if flush and released:
                log.info("storing %d items held by the sequencer before exit", len(released))
            for item in released:
                log.debug("sequencer released after wait channel=%s id=%s", item.channel, item.id)
            try:
                await self._commit(released)
            except StoreUnavailable:
                pass  # logged by _commit

    async def _commit(self, released: list[Item]) -> list[Envelope]:
        if not released:
            return []
        t0 = time.perf_counter()
        try:
            envelopes = await self.store.append_batch(released, time.time())
            self.store_latency.observe(time.perf_counter() - t0)
        except StoreUnavailable as exc:
            self.sequencer.forget_ids(released)
            self._refused.update(item.channel for item in released)
            self._store_failures += len(released)
            now = time.monotonic()
            if not self._store_down:
                self._store_down = True
                self._store_logged = now
                log.error(
                    "store unavailable: publishes refused until it answers items=%d error=%s",
                    len(released),
                    exc,
                )
            elif now - self._store_logged >= 1.0:
                self._store_logged = now
                log.warning(
                    "store still unavailable: items refused items=%d total_refused=%d error=%s",
                    len(released),
                    self._store_failures,
                    exc,
                )
            raise
        if self._store_down:
            self._store_down = False
            log.warning(
                "store available again: publishing resumed total_refused=%d", self._store_failures
            )
        self._published += len(envelopes)
        live = self.live
        if log.isEnabledFor(logging.DEBUG):
            for env in envelopes:
                log.debug(
                    "publish channel=%s seq=%d id=%s live=%s",
                    env.channel,
                    env.seq,
                    env.id,
                    env.channel in live,
                )
        # remember each channel's position for the trailing markers, then encode and send the
        # frames of the live channels in one loop (_speedups' fan_out: no Python object per
        # frame), several as one batch message (wire version 4)
        edge_pub = self.sockets.edge_pub
        if self._unmarked:
            self._mark_before(envelopes)
        sent, blocked = fan_out(
            edge_pub.sock, envelopes, live, self._recent, self._batch, self.cfg.edge_pub_batch_bytes
        )
        edge_pub.send_dropped += blocked
        self._fanned_out += sent
        if sent:
            edge_pub.poke()
        if self.stats is not None and self.sockets.stats is not None:
            self.stats.received(len(envelopes))
            if self._stats_heard():
                self.emit_stats(self.stats.messages(envelopes, live))
            else:
                self.stats_listeners.skipped += len(envelopes)
        return envelopes

    def _stats_heard(self) -> bool:
        """Some stats subscription can match a message packet.  When none is known the
        socket's pending notices are read first (no wait), so a subscriber is heard as soon as
        a PUB would have heard it, not only at the notice task's next turn."""
        listeners = self.stats_listeners
        if listeners.messages:
            return True
        z = self.sockets.stats
        if z is not None and z.readable():
            listeners.notices(z.recv_batch(BATCH_MAX))
            z.poke()  # more than a batch: the notice task reads the rest
        return listeners.messages

    async def handle_stats_notices(self, batch: list[list[bytes]]) -> None:
        """The stats socket's subscription notices (``StatsListeners``)."""
        self.stats_listeners.notices(batch)

    def _mark_before(self, envelopes: list[Envelope]) -> None:
        """Send the marker ``(epoch, seq - 1)`` of each unmarked channel's first envelope."""
        for env in envelopes:
            if env.channel in self._unmarked:
                self._unmarked.discard(env.channel)
                if env.channel in self.live and self.sockets.edge_pub.send_frame(
                    wire.encode_marker(env.channel, env.epoch, env.seq - 1)
                ):
                    self._markers += 1

    def emit_stats(self, frames: list[bytes]) -> None:
        """Send stats packets, one ZeroMQ message each, in one call (``send_frames``)."""
        stats = self.sockets.stats
        if stats is not None and frames:
            _, blocked = send_frames(stats.sock, frames)
            stats.send_dropped += blocked
            stats.poke()

    def recover(self, source: str) -> bool:
        """Pushpin's recover: forget remembered last ids and tell every edge (``wire``'s
        ``RECOVER_TOPIC``) to update its held sessions.  False (nothing done) when over
        ``recover_per_s``: each recover makes every held session ask its origin again."""
        if not self.limiter.allow_recover(time.monotonic()):
            self.reject(source, f"recover refused: over recover_per_s={self.cfg.recover_per_s:g}")
            return False
        log.info("recover request source=%s: forgetting remembered last ids", source)
        self.sequencer.recover()
        self.sockets.edge_pub.send_frame(wire.encode_recover(time.time()))
        return True

    def _zmq_allowed(self, items: Sequence[Item], source: str) -> list[Item]:
        """``items`` without those of namespaces with ``publish_zmq = false`` (refused: logged
        and counted)."""
        allowed, refused = self.namespaces.split_zmq(items)
        for item in refused:
            self.reject(source, zmq_refusal(item.channel, self.namespaces.match(item.channel)))
        return allowed

    def received(self, source: str, n: int = 1) -> None:
        self._received[source] += n

    def reject(self, source: str, reason: str) -> None:
        self._rejected += 1
        # a publisher sending garbage in a loop must not flood the log: at most
        # REJECT_LOG_PER_S lines a second, then how many were not shown
        now = time.monotonic()
        if now - self._reject_window >= 1.0:
            if self._reject_skipped:
                log.warning("rejected publish: %d more not logged", self._reject_skipped)
            self._reject_window, self._reject_logged, self._reject_skipped = now, 0, 0
        if self._reject_logged < REJECT_LOG_PER_S:
            self._reject_logged += 1
            log.warning("rejected publish source=%s reason=%r", source, reason)
        else:
            self._reject_skipped += 1

    # -- the publish inputs (each: drain, then handle, on its ZSocket's read loop) ----------------

    def drain_pull(self, z: ZSocket) -> list[Item]:
        """Items of the PULL frames ready now, up to a batch's worth (a B frame, broker.items,
        carries many)."""
        items: list[Item] = []
        while len(items) < BATCH_MAX:
            # one frame a message, read in one compiled call (3-4x cheaper than multipart)
            frames, multipart = z.recv_single(PULL_CHUNK)
            self._received["pull"] += len(frames) + multipart
            for _ in range(multipart):
                self.reject("pull", "received message with parts != 1")
            parsed, errors = parse_pull_frames(frames)
            items += parsed
            for reason in errors:
                self.reject("pull", reason)
            if len(frames) + multipart < PULL_CHUNK:
                break
        return items

    async def handle_pull(self, items: list[Item]) -> None:
        if len(items) > BATCH_MAX:  # one big B frame: keep batches (and fan-out bursts) bounded
            for i in range(0, len(items), BATCH_MAX):
                await self.ingest(items[i : i + BATCH_MAX])
        else:
            await self.ingest(items)

    def drain_sub(self, z: ZSocket) -> list[Item]:
        items: list[Item] = []
        for frames in z.recv_batch(BATCH_MAX):
            self._received["sub"] += 1
            if len(frames) != 2:
                self.reject("sub", "received message with parts != 2")
                continue
            try:
                items.append(parse_sub_item(frames[0], frames[1]))
            except PublishError as exc:
                self.reject("sub", exc.reason)
        return items

    async def handle_commands(self, batch: list[list[bytes]]) -> None:
        z = self.sockets.command
        items: list[Item] = []
        acks: list[tuple[list[bytes], commands.CommandResult]] = []
        for frames in batch:
            self._received["command"] += 1
            try:
                prefix, payload = commands.split_envelope(frames)
            except RemoteProtocolError as exc:
                self.reject("command", exc.reason)
                continue
            result = commands.handle_command(payload, self.uris)
            if result.error:
                self.reject("command", f"method={result.method or '?'} {result.error}")
            if result.recover and not self.recover("command"):
                result = commands.rate_limited(
                    result, f"recover refused: over recover_per_s={self.cfg.recover_per_s:g}"
                )
            if result.relay is not None:  # answered by the edges
                self.relay.submit(prefix, result)
                continue
            if result.presence is not None:  # who is on a channel (broker.ops.presence)
                value = self.presence.command(result.presence)
                z.send(prefix + [commands.presence_reply(result.rid, result.presence, value)])
                continue
            if result.query is not None:  # the channel API (broker.ops.channelapi)
                value = await self.channels.command(result.query)
                z.send(prefix + [commands.query_reply(result.rid, value)])
                continue
            if result.items and self.namespaces.zmq_closed:
                if len(self._zmq_allowed(result.items, "command")) < len(result.items):
                    reply = refused_command_reply(result.failed_reply, "publish_zmq = false")
                    if reply is not None:
                        z.send(prefix + [reply])
                    continue
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

    # -- the edges: live channels, control requests, heartbeats ----------------------------------

    async def handle_subscriptions(self, batch: list[list[bytes]]) -> None:
        """Track live channels from XPUB notices; answer each subscribe with a marker."""
        sub_in = self.sockets.sub_in
        async with self.lock:
            for frames in batch:
                if not frames:
                    continue
                notice = wire.subscription_notice(frames[0])
                if notice is None:
                    edge = wire.edge_notice(frames[0])  # an edge came or went
                    if edge is not None:
                        self.relay.on_notice(*edge)
                    continue
                subscribed, channel = notice
                if subscribed:
                    await self._subscribed(channel)
                elif channel in self.live:
                    self.live.discard(channel)
                    self._unmarked.discard(channel)
                    sub_in.unsubscribe(channel.encode("utf-8"))
                    log.debug("channel dead channel=%s", channel)

    async def _subscribed(self, channel: str) -> None:
        if channel not in self.live:
            self.live.add(channel)
            self.sockets.sub_in.subscribe(channel.encode("utf-8"))
            log.debug("channel live channel=%s", channel)
        try:
            pos = await self.store.position(channel)
        except StoreUnavailable as exc:
            log.error("store unavailable, no marker channel=%s error=%s", channel, exc)
            self._unmarked.add(channel)
            return
        self._unmarked.discard(channel)
        if self.sockets.edge_pub.send_frame(wire.encode_marker(channel, pos.epoch, pos.last_seq)):
            self._markers += 1

    async def handle_control(self, z: ZSocket, batch: list[list[bytes]]) -> None:
        for frames in batch:
            if len(frames) < 2:
                continue
            self._control_requests += 1
            reply = await self._control(frames[-1])
            if reply is not None:  # None: a fire-and-forget "stats" report
                z.send(frames[:-1] + [reply])

    async def _control(self, payload: bytes) -> bytes | None:
        try:
            req = control.parse_control(payload)
        except control.ControlError as exc:
            log.warning("bad control request reason=%r", exc.reason)
            return control.error_reply(exc.rid, exc.reason)
        if req.op == "hello":
            return control.hello_reply(
                req.rid,
                self.broker_id,
                self.started,
                self.cfg.cluster_id,
                shared_store=self.cfg.store != "memory",
            )
        if req.op == "stats":  # an edge's connections and counts (broker.ops.stats)
            if self.edge_stats is not None and req.stats is not None:  # always set for "stats"
                try:
                    self.emit_stats(self.edge_stats.edge_report(req.stats, time.time()))
                except RemoteProtocolError as exc:
                    log.warning("bad stats report from an edge: %s", exc.reason)
            return None
        if req.op == "presence":  # an edge's presence report (broker.ops.presenceapi)
            assert isinstance(req.request, wire.PresenceReport)
            self.presence.on_report(req.request)
            return None
        if req.op == "answer":  # an edge's answer to a relayed command
            assert isinstance(req.request, wire.CommandAnswer)
            self.relay.on_answer(req.request)
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

    async def remark_refused(self) -> None:
        """Send the position marker of each live channel that had a refused write, once the
        store answers (a confirmed read), so edges fetch what the refused write stored."""
        while self._refused:
            channel = next(iter(self._refused))
            if channel not in self.live:
                self._refused.discard(channel)
                continue
            try:
                pos = await self.store.position(channel)
            except StoreUnavailable:
                return  # the next round tries again
            self._refused.discard(channel)
            if self.sockets.edge_pub.send_frame(
                wire.encode_marker(channel, pos.epoch, pos.last_seq)
            ):
                self._markers += 1

    def heartbeat(self) -> None:
        """Send a heartbeat carrying the positions of the live channels published since the
        last one (``wire.MARKS_PER_HEARTBEAT`` at most per frame: more go in several heartbeat
        frames, back to back, each with the next counter ``n``)."""
        for _ in self._heartbeat_frames(wire.MARKS_PER_HEARTBEAT):
            pass

    async def heartbeat_paced(self, per: int = HEARTBEAT_CHUNK) -> None:
        """``heartbeat`` for the broker's loop: ``per`` positions a frame, with a checkpoint
        between frames, so that publishes go on between them (with 10,000 channels published
        a second, building and sending every position in one step held the loop ~6 ms each
        second).  Nothing changes for the edges: every frame is a heartbeat with the next
        counter, and the positions were all taken at the start (publishes sent meanwhile are
        after them on the link, so no position overtakes the messages it counts)."""
        for i, _ in enumerate(self._heartbeat_frames(min(per, wire.MARKS_PER_HEARTBEAT))):
            if i:
                await trio.lowlevel.checkpoint()

    def _heartbeat_frames(self, per: int) -> Iterator[None]:
        """Send the heartbeat frames one by one (a step each: see ``heartbeat_paced``)."""
        recent = self._recent
        self._recent_prev, self._recent = recent, {}
        live = self.live
        ttl = self.edge_stats.conn_ttl if self.edge_stats is not None else 0
        now = time.time()
        edge_pub = self.sockets.edge_pub
        items = iter(recent.items())
        first = True
        while True:
            chunk: list[tuple[str, str, int]] = []
            add = chunk.append
            for ch, pos in items:
                if ch in live:
                    add((ch, pos[0], pos[1]))
                    if len(chunk) == per:
                        break
            if not chunk and not first:
                return
            first = False
            self._heartbeats += 1
            frame = wire.encode_heartbeat(
                self.broker_id,
                self.started,
                now,
                stats_ttl=ttl,
                n=self._heartbeats,
                marks=wire.encode_marks(chunk) if chunk else b"",
            )
            _, blocked = send_frames(edge_pub.sock, [frame])
            edge_pub.send_dropped += blocked
            edge_pub.poke()
            self._trailing_markers += len(chunk)
            yield None
            if len(chunk) < per:
                return

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            broker_id=self.broker_id,
            started=self.started,
            live_channels=len(self.live),
            received=dict(self._received),
            rejected=self._rejected,
            published=self._published,
            fanned_out=self._fanned_out,
            fanout_dropped=self.sockets.edge_pub.send_dropped,
            markers=self._markers,
            trailing_markers=self._trailing_markers,
            control_requests=self._control_requests,
            store_failures=self._store_failures,
            sequencer=self.sequencer.statistics(),
            store=self.store.statistics(),
        )

    def recent_positions(self) -> dict[str, tuple[str, int]]:
        """``channel -> (epoch, last_seq)`` of the channels published in the last two heartbeat
        rounds (what the trailing markers re-send; the status page's per-channel rates)."""
        return {**self._recent_prev, **self._recent}

    @property
    def store_down(self) -> bool:
        """The last store write failed (until one succeeds)."""
        return self._store_down
