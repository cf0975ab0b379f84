"""The edge's links to the brokers: the only edge module that imports zmq.

``BrokerLinks`` is what the edge holds: one ``BrokerLink`` per broker of ``cfg.brokers``
(``Config.broker_endpoints``; one when the list is empty).  Subscriptions go to every broker
(each fans out what it sequenced), the SUB readers of all feed the same tracker (which orders
a channel's messages by seq whichever broker they came from), and a control request goes to
one live broker, then the next when it does not answer (all brokers read the same Redis, so
any of them answers a position or replay).  See docs/cluster.md.

Each ``BrokerLink``:

* SUB connected to ``edge_pub``: heartbeats plus ``wire.topic(channel)`` of live channels.
  SNDHWM=0 (subscriptions are messages and must never be dropped), a large RCVHWM.
* DEALER connected to ``edge_ctl``: hello / position / replay requests (the typed messages of
  ``broker.wire``), correlated by ``rid``, awaited with a timeout and retried; and ``send_nowait`` for fire-and-forget messages (the
  once-a-second ``stats`` report, ``edge.ops.statsreport``; answers to relayed commands),
  dropped rather than ever waiting.
* Relayed commands (``conncheck``, ``refresh``): the SUB takes ``wire.COMMAND_TOPIC`` and, once
  the broker is known to speak our wire version, this edge's presence topic
  (``wire.edge_topic(name)``), by which the broker knows which edges must answer.

ZeroMQ under trio (DESIGN.md "trio and ZeroMQ"): each socket is a ``broker.runtime.zmqtrio``
``ZSocket`` read by one task (drain with NOBLOCK until ``zmq.Again``, one checkpoint per batch,
park on the edge-triggered FD only when ``EVENTS`` says nothing is readable; every send or
(un)subscribe wakes the parked reader).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import trio
import zmq

from _speedups import first_topic, split_batch
from broker import wire
from broker.config import ENDPOINTS, Config
from broker.curve import link_options
from broker.errors import GripcastError, RemoteProtocolError
from broker.runtime.zmqtrio import ZSocket, open_zsocket
from broker.wire import BATCH_TOPIC, SEP

BATCH_AT = len(BATCH_TOPIC)  # where a batch message's frames start

log = logging.getLogger(__name__)

# the requests that get a reply (``wire.REPLY_TYPES``; a ``StatsReport`` goes by send_nowait)
ReplyRequest = wire.HelloRequest | wire.PositionRequest | wire.ReplayRequest

BATCH_MAX = 4096
REQUEST_TIMEOUT_S = 2.0
REQUEST_TRIES = 3


class BrokerUnavailable(GripcastError):
    """The broker did not answer a control request in time."""


class BrokerRefused(RemoteProtocolError):
    """The broker answered a control request with an error reply (``reply``)."""

    def __init__(self, op: str, reply: wire.ErrorReply) -> None:
        super().__init__(f"broker refused {op}: {reply.error}")
        self.reply = reply


@dataclass(slots=True)
class _Slot:
    """One awaited control request: set ``reply`` (typed, or the error it was) then ``event``."""

    event: trio.Event
    expect: type
    reply: wire.Reply | RemoteProtocolError | None = None


@dataclass(frozen=True, slots=True)
class BrokerLinkStatistics:
    frames: int
    batches: int
    heartbeats: int
    broker_id: str | None
    last_heartbeat: float | None
    requests: int
    timeouts: int
    pending: int
    channels: int
    unverified_dropped: int = 0  # frames dropped before the broker's wire version was known
    brokers: int = 1  # (``BrokerLinks``) brokers this edge is linked to
    brokers_up: int = 1  # of which heartbeats arrive
    failovers: int = 0  # requests a broker did not answer that another one then got
    answered: int = 0  # control requests answered (a typed reply)
    refused: int = 0  # control requests refused (an error reply, or a malformed one)
    failed_over_from: int = 0  # (per broker) requests it did not answer, then asked elsewhere


class BrokerLink:
    def __init__(
        self,
        cfg: Config,
        *,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        name: str = "",
        endpoints: tuple[str, str] | None = None,
        index: int = 0,
    ) -> None:
        """Both sockets built from the wiring table (``link_sub``, ``link_ctl`` of
        ``broker.config.WIRING``), with heartbeats and Curve (``broker.curve.link_options``);
        ``name``: this edge's name (its presence topic; "" takes no relayed commands);
        ``endpoints``: the broker's ``(edge_pub, edge_ctl)`` (default: the one broker of
        ``cfg``); ``index``: its place in ``cfg.brokers``."""
        self._ctx = ctx or zmq.Context.instance()
        if endpoints is None:
            endpoints = cfg.broker_endpoints()[0]
        self.endpoints = endpoints
        self.index = index
        self.timeout_s = cfg.broker_link_timeout_s
        options = link_options(cfg)  # one call: both sockets share an ephemeral Curve pair
        self.sub = open_zsocket(self._ctx, ENDPOINTS["link_sub"], cfg, endpoints[0], options)
        self.sub.subscribe(wire.HEARTBEAT_TOPIC)
        self.sub.subscribe(wire.RECOVER_TOPIC)
        self.name = name
        self._present = False  # subscribed to the presence topic
        if name:
            self.sub.subscribe(wire.COMMAND_TOPIC)
        self.ctl = open_zsocket(self._ctx, ENDPOINTS["link_ctl"], cfg, endpoints[1], options)
        self._rids = itertools.count(1)
        self._waiting: dict[int, _Slot] = {}
        self._channels: set[str] = set()
        # their utf-8 names: what this edge takes from a batch message (wire.BATCH_TOPIC,
        # subscribed while it holds a channel)
        self._wanted: set[bytes] = set()
        self.broker_id: str | None = None
        self.stats_ttl = 0  # the broker's heartbeat: its stats socket's connection ttl (0: off)
        # called with (broker_id) on every heartbeat (edge.sync.repair.LinkWatch watches them)
        self.on_heartbeat: Callable[[str], None] | None = None
        # called once when the broker speaks another wire version (the edge then stops)
        self.on_refuse: Callable[[], None] | None = None
        # the broker's wire version was seen equal to ours (hello reply or heartbeat); until
        # then fan-out frames are dropped, never read in a format that may not be ours
        self.wire_ok = False
        self.refused = False
        self._unverified = 0
        self._last_hb: float | None = None
        # when the last batch of channel frames came (a sign of life between heartbeats:
        # edge.sync.repair.LinkWatch.on_activity)
        self.last_data: float | None = None
        self._frames = self._batches = self._hbs = self._requests = self._timeouts = 0
        self._answered = self._refused = self._failed_over = 0

    @property
    def label(self) -> str:
        """``host:port`` of this broker's edge_pub endpoint (the metrics' ``broker`` label)."""
        return self.endpoints[0].removeprefix("tcp://")

    def close(self) -> None:
        self.sub.close()
        self.ctl.close()

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, channel: str) -> None:
        if channel not in self._channels:
            if not self._channels:  # before the channel's: its batches are not missed
                self.sub.subscribe(wire.BATCH_TOPIC)
            self._channels.add(channel)
            self._wanted.add(channel.encode("utf-8"))
            self.sub.subscribe(wire.topic(channel))

    def unsubscribe(self, channel: str) -> None:
        if channel in self._channels:
            self._channels.discard(channel)
            self._wanted.discard(channel.encode("utf-8"))
            self.sub.unsubscribe(wire.topic(channel))
            if not self._channels:
                self.sub.unsubscribe(wire.BATCH_TOPIC)

    # -- control requests ----------------------------------------------------------------------

    async def request(
        self, req: ReplyRequest, *, timeout_s: float = REQUEST_TIMEOUT_S, tries: int = REQUEST_TRIES
    ) -> wire.Reply:
        """Send a control request (``wire.HelloRequest``, ``PositionRequest``,
        ``ReplayRequest``) and await its typed reply (retried); ``BrokerUnavailable`` if none,
        ``RemoteProtocolError`` if the broker refused it (an ``ErrorReply``) or answered with
        a malformed reply."""
        expect = wire.REPLY_TYPES[req.op]
        for attempt in range(tries):
            rid = next(self._rids)
            slot = _Slot(trio.Event(), expect)
            self._waiting[rid] = slot
            self._requests += 1
            try:
                self._send_ctl(wire.encode_request(replace(req, rid=rid)))
                with trio.move_on_after(timeout_s):
                    await slot.event.wait()
            finally:
                del self._waiting[rid]
            reply = slot.reply
            if reply is not None:
                if isinstance(reply, wire.ErrorReply):
                    self._refused += 1
                    raise BrokerRefused(req.op, reply)
                if isinstance(reply, RemoteProtocolError):
                    self._refused += 1
                    raise reply
                self._answered += 1
                return reply
            self._timeouts += 1
            log.warning(
                "broker request timed out op=%s try=%d broker=%s",
                req.op,
                attempt + 1,
                self.endpoints[1],
            )
        raise BrokerUnavailable(f"no answer from the broker at {self.endpoints[1]} to {req.op}")

    def send_nowait(self, msg: wire.StatsReport | wire.CommandAnswer | wire.PresenceReport) -> bool:
        """Send a control message that gets no reply; False (dropped) if it would block."""
        return self.ctl.send_frame(wire.encode_request(msg))

    def _send_ctl(self, frame: bytes) -> None:
        if not self.ctl.send_frame(frame):
            log.warning("broker control queue full: request dropped (will be retried)")

    def _on_ctl_batch(self, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                m = wire.decode_control(frame)
            except RemoteProtocolError as exc:
                log.warning("bad control reply from broker: %s", exc)
                continue
            rid = m.get("rid")
            slot = self._waiting.get(rid) if isinstance(rid, int) else None
            if slot is None or slot.reply is not None:
                continue
            try:
                slot.reply = wire.reply_from_map(m, slot.expect)
            except RemoteProtocolError as exc:
                log.warning("bad control reply from broker: %s", exc)
                slot.reply = exc  # the request fails now rather than after its timeout
            slot.event.set()

    # -- readers -------------------------------------------------------------------------------

    async def _read_loop(
        self, z: ZSocket, handle: Callable[[list[bytes]], Awaitable[None]]
    ) -> None:
        async def counted(frames: list[bytes]) -> None:
            self._batches += 1
            await handle(frames)

        await z.serve(lambda: z.recv_frames(BATCH_MAX), counted)

    async def serve_sub(
        self,
        on_frames: Callable[[list[bytes]], Awaitable[None]],
        on_recover: Callable[[], None] | None = None,
        on_command: Callable[[wire.EdgeCommand], None] | None = None,
    ) -> None:
        """Run the SUB reader: ``await on_frames(frames)`` per batch (channel frames, and the
        heartbeats too, in link order, once handled here: they carry the trailing positions;
        a recover frame calls ``on_recover()``, a relayed command ``on_command(command)``)."""

        async def handle(frames: list[bytes]) -> None:
            self._frames += len(frames)
            if frames and self.wire_ok and first_topic(frames) < 0:
                # the usual batch: channel frames only (no heartbeat, recover or command), on
                # as it is, without a pass over it here
                self.last_data = trio.current_time()
                await on_frames(frames)
                return
            data: list[bytes] = []
            append = data.append
            for f in frames:
                # a channel frame (channel, SEP, map) never starts with SEP: every topic of
                # the broker's own (heartbeat, recover, command, presence) does
                if not f.startswith(SEP):
                    if self.wire_ok:
                        append(f)
                    else:
                        self._unverified += 1
                elif f.startswith(BATCH_TOPIC):
                    if not self.wire_ok:
                        self._unverified += 1
                        continue
                    try:
                        items = split_batch(f, BATCH_AT, self._wanted)
                    except ValueError as exc:  # its frames are lost: repaired as a gap
                        log.warning("bad batch message from the broker: %s", exc)
                        continue
                    self._frames += len(items) - 1
                    data.extend(items)
                elif wire.is_heartbeat(f):
                    self._on_heartbeat(f)
                    if self.wire_ok:  # its counter and trailing positions, in link order
                        append(f)
                elif not self.wire_ok:
                    self._unverified += 1  # a broker not yet known to speak our wire version
                elif wire.is_recover(f):
                    if on_recover is not None:
                        on_recover()
                elif wire.is_command(f):
                    self._on_command(f, on_command)
                else:
                    data.append(f)
            if data:
                self.last_data = trio.current_time()
                await on_frames(data)

        await self._read_loop(self.sub, handle)

    async def serve_ctl(self) -> None:
        async def handle(frames: list[bytes]) -> None:
            self._on_ctl_batch(frames)

        await self._read_loop(self.ctl, handle)

    def _on_command(
        self, frame: bytes, on_command: Callable[[wire.EdgeCommand], None] | None
    ) -> None:
        try:
            command = wire.decode_command(frame)
        except RemoteProtocolError as exc:
            log.warning("bad command from broker: %s", exc.reason)
            return
        if on_command is not None:
            on_command(command)

    def answer(self, cmd: int, found: tuple[str, ...]) -> None:
        """Answer the relayed command ``cmd`` (fire-and-forget; dropped if it would block,
        and the broker then answers ``proxy-request-failed``)."""
        if not self.send_nowait(wire.CommandAnswer(self.name, cmd, found)):
            log.warning("broker control queue full: answer to command %d dropped", cmd)

    def check_wire_version(self, theirs: int) -> bool:
        """Whether the broker's wire version ``theirs`` is ours; if not, log it (an ERROR
        naming both versions, once) and call ``on_refuse``."""
        if theirs == wire.WIRE_VERSION:
            self.wire_ok = True
            if self.name and not self._present:  # from now on the broker waits for our answers
                self._present = True
                self.sub.subscribe(wire.edge_topic(self.name))
            return True
        self.wire_ok = False
        if not self.refused:
            self.refused = True
            log.error(
                "the broker speaks another wire version: %s; stopping",
                wire.version_mismatch(wire.WIRE_VERSION, theirs),
            )
            if self.on_refuse is not None:
                self.on_refuse()
        return False

    def _on_heartbeat(self, frame: bytes) -> None:
        self._hbs += 1
        try:
            hb = wire.decode_heartbeat(frame)
        except RemoteProtocolError as exc:
            log.warning("bad heartbeat: %s", exc)
            return
        if not self.check_wire_version(hb.wire_version):
            return
        self._last_hb = trio.current_time()
        broker_id = hb.broker_id
        if self.broker_id is None:
            log.info("broker link up broker_id=%s", broker_id)
        elif broker_id != self.broker_id:
            log.warning("broker restarted old=%s new=%s", self.broker_id, broker_id)
        self.broker_id = broker_id
        self.stats_ttl = hb.stats_ttl
        if self.on_heartbeat is not None:
            self.on_heartbeat(broker_id)

    def is_up(self, now: float) -> bool:
        """Whether this broker's heartbeats arrive (one within ``broker_link_timeout_s``)."""
        return self._last_hb is not None and now - self._last_hb <= self.timeout_s

    def statistics(self) -> BrokerLinkStatistics:
        return BrokerLinkStatistics(
            frames=self._frames,
            batches=self._batches,
            heartbeats=self._hbs,
            broker_id=self.broker_id,
            last_heartbeat=self._last_hb,
            requests=self._requests,
            timeouts=self._timeouts,
            pending=len(self._waiting),
            channels=len(self._channels),
            unverified_dropped=self._unverified,
            answered=self._answered,
            refused=self._refused,
            failed_over_from=self._failed_over,
        )


class BrokerLinks:
    """One ``BrokerLink`` per broker (module docstring): what the edge holds as ``edge.link``.

    Callbacks are per broker: ``on_heartbeat(index, broker_id)`` (each broker is watched on
    its own: one going silent is that broker lost, not the link), ``on_refuse()`` (any broker
    of another wire version stops the edge), and ``serve``'s ``on_command(command, link)``
    (a relayed command is answered to the broker that relayed it).
    """

    def __init__(
        self, cfg: Config, *, ctx: zmq.Context[zmq.Socket[bytes]] | None = None, name: str = ""
    ) -> None:
        self.links: list[BrokerLink] = []
        try:
            for i, eps in enumerate(cfg.broker_endpoints()):
                self.links.append(BrokerLink(cfg, ctx=ctx, name=name, endpoints=eps, index=i))
        except BaseException:
            self.close()
            raise
        self.name = name
        self._next = 0  # round-robin start among live brokers
        self._failovers = 0
        self.on_heartbeat: Callable[[int, str], None] | None = None
        self.on_refuse: Callable[[], None] | None = None
        for link in self.links:
            link.on_heartbeat = self._heartbeat_of(link.index)
            link.on_refuse = self._refuse

    def _heartbeat_of(self, index: int) -> Callable[[str], None]:
        def heard(broker_id: str) -> None:
            if self.on_heartbeat is not None:
                self.on_heartbeat(index, broker_id)

        return heard

    def _refuse(self) -> None:
        if self.on_refuse is not None:
            self.on_refuse()

    def close(self) -> None:
        for link in self.links:
            link.close()

    @property
    def refused(self) -> bool:
        return any(link.refused for link in self.links)

    # -- subscriptions: every broker -----------------------------------------------------------

    def subscribe(self, channel: str) -> None:
        for link in self.links:
            link.subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
        for link in self.links:
            link.unsubscribe(channel)

    # -- control: one live broker --------------------------------------------------------------

    def up(self, now: float | None = None) -> list[BrokerLink]:
        """The brokers whose heartbeats arrive."""
        t = trio.current_time() if now is None else now
        return [link for link in self.links if link.is_up(t)]

    def candidates(self, now: float | None = None) -> list[BrokerLink]:
        """Every broker in the order a request tries them: live ones first (round-robin, so
        repairs spread over the brokers), then the others (maybe up but not heard from yet)."""
        links = self.links
        if len(links) == 1:
            return links
        t = trio.current_time() if now is None else now
        start = self._next
        self._next = (start + 1) % len(links)
        ordered = links[start:] + links[:start]
        return [x for x in ordered if x.is_up(t)] + [x for x in ordered if not x.is_up(t)]

    @property
    def primary(self) -> BrokerLink:
        """The broker stats reports go to: the first live one (else the first)."""
        up = self.up()
        return up[0] if up else self.links[0]

    async def request(
        self, req: ReplyRequest, *, timeout_s: float = REQUEST_TIMEOUT_S, tries: int = REQUEST_TRIES
    ) -> wire.Reply:
        """``BrokerLink.request`` on one broker, the next one when it does not answer;
        ``tries`` rounds over all of them.  A refusal (``BrokerRefused``) is final: every
        broker reads the same store and would answer the same."""
        links = self.links
        if len(links) == 1:
            return await links[0].request(req, timeout_s=timeout_s, tries=tries)
        for _ in range(tries):
            for n, link in enumerate(self.candidates()):
                try:
                    reply = await link.request(req, timeout_s=timeout_s, tries=1)
                except BrokerUnavailable:
                    link._failed_over += 1
                    continue
                if n:
                    self._failovers += 1
                return reply
        raise BrokerUnavailable(f"no broker answered {req.op} ({len(links)} tried)")

    def send_nowait(self, msg: wire.StatsReport | wire.CommandAnswer | wire.PresenceReport) -> bool:
        """To the primary (stats reports); presence reports go to every live broker, each
        by its own link (``edge.ops.presence.serve_presence``: ``up()``)."""
        return self.primary.send_nowait(msg)

    @property
    def broker_id(self) -> str | None:
        return self.primary.broker_id

    @property
    def stats_ttl(self) -> int:
        return self.primary.stats_ttl

    # -- readers -------------------------------------------------------------------------------

    async def serve(
        self,
        on_frames: Callable[[list[bytes]], Awaitable[None]],
        on_recover: Callable[[], None] | None = None,
        on_command: Callable[[wire.EdgeCommand, BrokerLink], None] | None = None,
    ) -> None:
        """Run every broker's SUB and DEALER readers (``BrokerLink.serve_sub``)."""
        async with trio.open_nursery() as nursery:
            for link in self.links:
                nursery.start_soon(link.serve_ctl)
                cmd = None if on_command is None else _bind_command(on_command, link)
                nursery.start_soon(link.serve_sub, on_frames, on_recover, cmd)

    def statistics(self) -> BrokerLinkStatistics:
        """The links' counters summed; ``broker_id`` and ``last_heartbeat``: the primary's and
        the latest of all (the edge is "linked" while any broker is heard)."""
        sts = [link.statistics() for link in self.links]
        beats = [s.last_heartbeat for s in sts if s.last_heartbeat is not None]
        return BrokerLinkStatistics(
            frames=sum(s.frames for s in sts),
            batches=sum(s.batches for s in sts),
            heartbeats=sum(s.heartbeats for s in sts),
            broker_id=self.broker_id,
            last_heartbeat=max(beats) if beats else None,
            requests=sum(s.requests for s in sts),
            timeouts=sum(s.timeouts for s in sts),
            pending=sum(s.pending for s in sts),
            channels=sts[0].channels,
            unverified_dropped=sum(s.unverified_dropped for s in sts),
            brokers=len(sts),
            brokers_up=len(self.up()),
            failovers=self._failovers,
            answered=sum(s.answered for s in sts),
            refused=sum(s.refused for s in sts),
            failed_over_from=sum(s.failed_over_from for s in sts),
        )


def _bind_command(
    on_command: Callable[[wire.EdgeCommand, BrokerLink], None], link: BrokerLink
) -> Callable[[wire.EdgeCommand], None]:
    return lambda command: on_command(command, link)
