"""Catching ONE session up on a channel from a client cursor, from the broker's history.

Use (any transport: HTTP stream/response holds, SSE ``Last-Event-ID``, WebSocket subscribe)::

    app.add_session(session, channels)          # register with the hub first, then with
    ok = await app.resume(session, channel, cursor)   # no await in between (see below)

``cursor`` is what the client last saw: a publisher ``id`` or the broker's ``"<epoch>:<seq>"``
(``Envelope.cursor``: the id clients see is the publisher's id when it gave one, else
``epoch:seq``).  ``resume`` delivers every retained message after the cursor to that session
only (through ``Deliverer.deliver(..., only=session)``, so each transport encodes it as usual,
and a stream's replay is paced by its socket), then hands the session over to live delivery
with no gap and no duplicate, and returns:

* ``True``: history answered (possibly with nothing to replay: the cursor is the channel's last
  message, or the channel has never had a message);
* ``False``: history cannot answer (cursor unknown or older than what is retained, another
  epoch).  Nothing was replayed; the caller falls back (Pushpin's way:
  retry the origin request with ``Grip-Last``, fetch the stream's next link, or just go live).
  With ``flush_on_fail=True`` (default) the live messages held meanwhile are delivered before
  returning; with False they are dropped (a response hold that is about to be retried).
  A history request that fails only *for now* (the broker's store failing over answers "store
  unavailable", or no broker answers) is not a miss: it is asked again with backoff for up to
  ``resume_retry_for_s`` (config, default 15 s), the live messages staying held; past that the session is cut off (its
  client resumes with its cursor) and ``False`` returned: never live with a gap.

A stream hold must know whether history answers *before* its response head (Pushpin answers
502 when a prev-id cannot be resolved and there is no next link), but can only be paced by its
socket *after* the head.  So a resume is two calls on a ``Resume``: ``probe()`` asks for the
first page (nothing is delivered), ``finish()`` delivers it and the rest (``Resumer.open``;
``Resumer.resume`` is both at once).

Theory of operation
-------------------
``begin(session, channel)`` (called by ``open``/``resume`` synchronously, before their first
await) opens a *gate*: ``Deliverer.deliver`` appends the channel's live envelopes for that
session to the gate instead of delivering them.  Hence call ``resume`` right after registering
the session on the channel, with no await in between (or call ``app.begin_resume(session,
channel)`` at registration time and ``await app.resume(...)`` later).

The *hand-over point* is the edge tracker's position ``T`` for the channel: the tracker hands
live sessions every message up to ``T`` and will hand them every message after it, in order,
exactly once; the tracker updates ``T`` and offers the message to the gate in the same
synchronous step.  So at any synchronous point, the gate holds every live message after the
point where it was opened, up to ``T``, and nothing after ``T``.  The sans-IO ``Catchup``
keeps the session's own last seq ``S`` on the channel and, at each synchronous point,
``plan(backlog, T)`` says what to do:

* gated messages that follow ``S`` (the first one is ``S + 1``): deliver them (those at or
  below ``S`` are duplicates and dropped);
* ``S < T`` and the gate does not reach down to ``S + 1``: replay ``after_seq = S`` from
  history.  Replayed items after ``T`` are *not* delivered: they reach the session live
  (through the gate), which is what keeps a replay reply that overtook the PUB/SUB link from
  delivering a message the tracker will deliver again;
* ``S > T`` (the client's cursor came from an edge that was ahead of this one): wait for the
  tracker to reach ``S``, the live copies of what the client already has are dropped at the
  gate meanwhile;
* ``S == T`` and nothing held: close the gate, in the same synchronous step.

The gate is bounded (``GATE_LIMIT`` envelopes; a slow client's paced replay can take long):
when it overflows it drops what it holds and stops collecting; the next synchronous point
reopens it at ``T`` and the catch-up fetches the dropped messages from history again.  Nothing
is ever lost silently: if history no longer covers what the session needs (trimmed under a
client too slow to catch up, or an epoch change), the session is told as for a lost history
(``edge.sync.repair.tell_epoch_change``: a stream is closed so its client resumes, a WebSocket
gets an event); if the hand-over cannot complete (broker unreachable mid catch-up, the tracker
not reaching the client's cursor within ``HANDOVER_WAIT_S``, ``MAX_PAGES``), the session is cut
off with the reason logged and its client resumes with its cursor.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from broker import wire
from broker.errors import GripcastError, RemoteProtocolError
from edge.sync.link import BrokerRefused, BrokerUnavailable
from edge.sync.repair import tell_epoch_change
from edge.sync.tracker import Position, State

if TYPE_CHECKING:
    from edge.services import ResumeServices
    from edge.sessionstate import Session

log = logging.getLogger(__name__)

MAX_PAGES = 1000  # bound on replay round trips for one catch-up (1,000 x REPLAY_LIMIT items)
GATE_LIMIT = wire.REPLAY_LIMIT  # live envelopes held per gate (one history page refills them)
HANDOVER_WAIT_S = 5.0  # the tracker catching up with a client cursor ahead of this edge
HANDOVER_POLL_S = 0.005
# A history request the broker could not answer *for now* (its store is failing over: it
# answers "store unavailable"; or no broker answered in time) is asked again, with backoff,
# for up to RETRY_FOR_S; the session's live messages stay held at the gate meanwhile.  Only a
# cursor history does not hold is a resume failure: going live on a transient error would skip
# what was published after the cursor.  Past the bound the session is cut off (its client
# resumes with its cursor), never handed over with a gap.  The edge's ``resume_retry_for_s``
# config key sets it (``Resumer.retry_for_s``; applied on SIGHUP); this is its default.
RETRY_FOR_S = 15.0
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0
STORE_UNAVAILABLE = "store unavailable"  # the broker's ErrorReply (broker.ingest.pipeline)


def transient(exc: BaseException) -> bool:
    """Whether a failed history request may succeed if asked again (store/broker down)."""
    if isinstance(exc, BrokerUnavailable):
        return True
    return isinstance(exc, BrokerRefused) and exc.reply.error == STORE_UNAVAILABLE


@dataclass(frozen=True, slots=True)
class ResumeStatistics:
    resumes: int
    answered: int
    fell_back: int
    replayed: int
    duplicates_dropped: int
    active: int
    gate_overflows: int = 0
    cut_off: int = 0
    retries: int = 0  # history requests asked again after a transient failure


class Step(enum.Enum):
    DELIVER = "deliver"  # hand the returned envelopes to the session
    REPLAY = "replay"  # fetch ``request()`` pages from history
    WAIT = "wait"  # the tracker is behind the session: wait for live delivery to reach it
    DONE = "done"  # close the gate now (in the same synchronous step)
    CUT = "cut"  # the hand-over cannot complete without a gap


class Catchup:
    """The sans-IO state of one session catching up on one channel.

    ``request()`` is the next ``wire.ReplayRequest`` (None when none is due);
    ``on_reply(reply, live)`` takes the broker's ``wire.ReplayReply`` and the tracker's position
    ``(epoch, last_seq)`` when it is handled, and returns the envelopes to deliver to the
    session (in order; none after the position); ``plan(backlog, live)`` is the next step of
    the hand-over (module docstring); ``accept_live(env)`` says whether a gated live envelope
    is new for this session (and records it).  ``failed`` means history cannot answer;
    ``skipped`` that history lost part of what the session needed (trimmed or a new epoch
    during the catch-up).
    """

    def __init__(self, channel: str, cursor: str, limit: int = wire.REPLAY_LIMIT) -> None:
        self.channel = channel
        self.cursor = cursor
        self.limit = limit
        self.epoch: str | None = None
        self.last_seq: int | None = None  # the session's own last seq on the channel
        self.failed = False
        self.empty = False  # the channel has no history at all: nothing known, no conflict
        self.skipped = False
        self.done = False
        self.pages = 0
        self.duplicates = 0
        self._need_more = True

    def request(self) -> wire.ReplayRequest | None:
        if self.done or self.failed or not self._need_more:
            return None
        if self.last_seq is None:
            return wire.ReplayRequest(self.channel, after_id=self.cursor, limit=self.limit)
        return wire.ReplayRequest(
            self.channel, epoch=self.epoch, after_seq=self.last_seq, limit=self.limit
        )

    def on_reply(
        self, reply: wire.ReplayReply, live: Position | None = None
    ) -> list[wire.Envelope]:
        """Consume one replay reply; the envelopes to deliver, in seq order.

        ``live`` is the tracker's ``(epoch, last_seq)`` now (None or an unknown epoch: no
        bound): items after it are left to live delivery, which will bring them to the session.
        """
        self.pages += 1
        epoch = reply.epoch
        last = reply.last_seq
        complete = reply.complete
        items = sorted(reply.items, key=lambda e: e.seq)
        if self.last_seq is None:
            if not complete:
                if last == 0:
                    # the channel never had a message (or its history restarted empty): the
                    # client cannot have missed anything we know of
                    self.epoch, self.last_seq = epoch, 0
                    self.empty = True
                    self._need_more = False
                    return []
                self.failed = True
                return []
            self.epoch = epoch
            self.last_seq = (items[0].seq - 1) if items else last
        elif epoch != self.epoch or not complete:
            # history restarted (new epoch) or was trimmed under us mid catch-up: what we
            # replayed stands, the lost part is skipped (as the tracker does; the caller tells
            # the session, ``skipped``), go on from there
            self.skipped = True
            self.epoch = epoch
            self.last_seq = (items[0].seq - 1) if items else last
        upto = last
        if live is not None and live[0] is not None and live[0] == self.epoch:
            upto = min(upto, live[1])  # the hand-over point: after it, live delivery
        out = []
        for env in items:
            if env.epoch == self.epoch and self.last_seq < env.seq <= upto:
                out.append(env)
                self.last_seq = env.seq
        self._need_more = bool(out) and self.last_seq < upto
        return out

    def plan(
        self, backlog: list[wire.Envelope], live: Position | None
    ) -> tuple[Step, list[wire.Envelope]]:
        """The next hand-over step at a synchronous point: ``(step, envelopes to deliver)``.

        ``backlog`` is what the gate held so far, in order (consumed: what is delivered or
        dropped as a duplicate is removed); ``live`` the tracker's ``(epoch, last_seq)`` now
        (None: the channel is not tracked).
        """
        if self.failed or self.last_seq is None:
            envs = list(backlog)
            backlog.clear()
            return (Step.DELIVER, envs) if envs else (Step.DONE, [])
        epoch, upto = live if live is not None else (None, 0)
        if epoch is None or epoch != self.epoch:
            # no hand-over point in our epoch (tracker not positioned, or the channel's epoch
            # changed: the tracker tells the session): hand over what is held, deduplicated
            envs = [e for e in backlog if self.accept_live(e)]
            self.duplicates += len(backlog) - len(envs)
            backlog.clear()
            return (Step.DELIVER, envs) if envs else (Step.DONE, [])
        k = 0
        while (
            k < len(backlog) and backlog[k].epoch == self.epoch and backlog[k].seq <= self.last_seq
        ):
            k += 1
        if k:
            self.duplicates += k
            del backlog[:k]
        if backlog and (backlog[0].epoch != self.epoch or backlog[0].seq == self.last_seq + 1):
            envs = [e for e in backlog if self.accept_live(e)]
            backlog.clear()
            return Step.DELIVER, envs
        if backlog or self.last_seq < upto:
            if self.pages >= MAX_PAGES:
                return Step.CUT, []
            self._need_more = True
            return Step.REPLAY, []
        if self.last_seq == upto:
            self.done = True
            return Step.DONE, []
        return Step.WAIT, []

    def accept_live(self, env: wire.Envelope) -> bool:
        """Whether a live envelope held at the gate is new for this session."""
        if self.failed or self.last_seq is None:
            return True
        if env.epoch == self.epoch and env.seq <= self.last_seq:
            return False
        if env.epoch == self.epoch:
            self.last_seq = env.seq
        return True


class _Gate(list[wire.Envelope]):
    """The live envelopes held for one (session, channel), bounded (module docstring)."""

    __slots__ = ("overflowed",)

    def __init__(self) -> None:
        super().__init__()
        self.overflowed = False

    def append(self, env: wire.Envelope) -> None:  # called by Deliverer.deliver
        if self.overflowed:
            return
        if len(self) >= GATE_LIMIT:
            self.clear()
            self.overflowed = True
            return
        list.append(self, env)


class Resumer:
    """Drives ``Catchup`` against the broker link for an edge (``app``: the deliverer's
    ``gate`` dict is filled here; ``edge.services.ResumeServices``)."""

    def __init__(self, app: ResumeServices, retry_for_s: float = RETRY_FOR_S) -> None:
        self.app = app
        self.retry_for_s = retry_for_s  # config ``resume_retry_for_s`` (module docstring)
        self._resumes = self._answered = self._fell_back = 0
        self._replayed = self._dups = self._overflows = self._cut = 0
        self._retries = 0

    @property
    def gate(self) -> dict[tuple[Session, str], _Gate]:
        return self.app.deliverer.gate

    def begin(self, session: Session, channel: str) -> None:
        """Start holding ``channel``'s live messages for ``session`` (idempotent)."""
        if (session, channel) not in self.gate:
            self.gate[(session, channel)] = _Gate()

    def abort(self, session: Session, channel: str) -> list[wire.Envelope]:
        """Close the gate without delivering; returns what it held."""
        return self.gate.pop((session, channel), [])

    def open(self, session: Session, channel: str, cursor: str) -> Resume:
        """A catch-up to ``probe()`` then ``finish()``; opens the gate now."""
        self.begin(session, channel)
        self._resumes += 1
        return Resume(self, session, Catchup(channel, cursor))

    async def resume(
        self, session: Session, channel: str, cursor: str, *, flush_on_fail: bool = True
    ) -> bool:
        """Catch ``session`` up on ``channel`` after ``cursor``; see the module docstring."""
        r = self.open(session, channel, cursor)
        await r.probe()
        return await r.finish(flush_on_fail=flush_on_fail)

    def statistics(self) -> ResumeStatistics:
        return ResumeStatistics(
            self._resumes,
            self._answered,
            self._fell_back,
            self._replayed,
            self._dups,
            len(self.gate),
            self._overflows,
            self._cut,
            self._retries,
        )


class Resume:
    """One session catching up on one channel: the I/O around its ``Catchup``."""

    def __init__(self, resumer: Resumer, session: Session, c: Catchup) -> None:
        self.resumer = resumer
        self.app = resumer.app
        self.session = session
        self.c = c
        self.key = (session, c.channel)
        self._first: list[wire.Envelope] = []  # the probed first page, delivered by finish()
        self._told = False
        self.unavailable: str | None = None  # history could not be asked (reason): not a miss

    @property
    def ok(self) -> bool:
        return not self.c.failed

    @property
    def found(self) -> bool:
        """History held the cursor (not merely an empty channel): what followed it is known."""
        return not self.c.failed and not self.c.empty

    @property
    def epoch(self) -> str | None:
        """The channel's epoch, once probed."""
        return self.c.epoch

    def _live(self) -> Position | None:
        return self.app.tracker.position(self.c.channel)

    async def _page(self, req: wire.ReplayRequest | None) -> list[wire.Envelope]:
        app, c = self.app, self.c
        assert req is not None
        reply = await self._request(req)
        assert isinstance(reply, wire.ReplayReply)
        if app.tracker.state(c.channel) is State.POSITION:
            await self._positioned()  # the hand-over point must be known
        return c.on_reply(reply, self._live())

    async def _positioned(self) -> None:
        """Wait for the tracker's position on the channel (``retry_for_s`` at most: its
        position request is retried while the store fails over): handing over without it
        could close the gate before messages the tracker will count as already delivered."""
        app, ch = self.app, self.c.channel
        bound = self.resumer.retry_for_s
        deadline = trio.current_time() + bound
        while app.tracker.state(ch) is State.POSITION:
            if self.session.gone() or trio.current_time() >= deadline:
                raise BrokerUnavailable(f"channel position unknown after {bound:g}s")
            await app.wait_positioned([ch])
            await trio.sleep(0)  # a checkpoint even if the wait returned at once

    async def _request(self, req: wire.ReplayRequest) -> wire.Reply:
        """``link.request``, asked again while the failure is transient (``retry_for_s``)."""
        deadline = trio.current_time() + self.resumer.retry_for_s
        delay = RETRY_FIRST_S
        while True:
            try:
                return await self.app.link.request(req)
            except (GripcastError, RemoteProtocolError) as exc:
                if not transient(exc) or self.session.gone():
                    raise
                now = trio.current_time()
                if now + delay > deadline:
                    raise
                self.resumer._retries += 1
                log.info(
                    "resume waits for history conn=%s channel=%s (retry in %.2fs): %s",
                    self.session.id,
                    self.c.channel,
                    delay,
                    exc,
                )
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def probe(self) -> bool:
        """Ask history for the first page (nothing is delivered yet); whether it answers.

        False also when history could not be asked (``unavailable``): ``finish`` then cuts the
        session off rather than going live with a gap."""
        c = self.c
        try:
            self._first = await self._page(c.request())
        except (GripcastError, RemoteProtocolError) as exc:
            log.warning("resume failed channel=%s cursor=%s: %s", c.channel, c.cursor, exc)
            c.failed = True
            if transient(exc):
                self.unavailable = str(exc)
        return not c.failed

    async def finish(self, *, flush_on_fail: bool = True) -> bool:
        """Deliver the replay, then hand over to live delivery; returns ``ok``."""
        r, c, s = self.resumer, self.c, self.session
        if self.unavailable is not None:
            # what followed the cursor is unknown, not missing: never go live past it
            r._fell_back += 1
            r.abort(s, c.channel)
            self._cut(f"history unavailable: {self.unavailable}")
            return False
        if c.failed:
            r._fell_back += 1
            if not flush_on_fail:
                r.abort(s, c.channel)
                return False
        else:
            r._answered += 1
        try:
            await self._deliver(self._first)
            self._first = []
            await self._handover()
        except (GripcastError, RemoteProtocolError) as exc:
            self._cut(f"broker unavailable during catch-up: {exc}")
        finally:
            r.gate.pop(self.key, None)
            r._dups += c.duplicates
            c.duplicates = 0
        return not c.failed

    async def _deliver(self, envs: list[wire.Envelope], replayed: bool = True) -> None:
        if envs and not self.session.gone():
            if replayed:
                self.resumer._replayed += len(envs)
            await self.app.deliverer.deliver(envs, trio.current_time(), only=self.session)

    async def _handover(self) -> None:
        r, c, s, gate = self.resumer, self.c, self.session, self.resumer.gate
        backlog: list[wire.Envelope] = []
        wait_until = None
        while not s.gone():
            if c.skipped and not self._told:
                self._tell()
                continue
            # -- one synchronous step: gate, tracker position, plan (and the close) ----------
            g = gate.get(self.key)
            if g is None:
                return
            if g.overflowed or len(backlog) + len(g) > GATE_LIMIT:
                r._overflows += 1
                log.debug(
                    "resume gate overflow conn=%s channel=%s: refetching from history",
                    s.id,
                    c.channel,
                )
                g.clear()
                g.overflowed = False
                backlog.clear()
            else:
                backlog.extend(g)
                g.clear()
            step, envs = c.plan(backlog, self._live())
            if step is Step.DONE:
                gate.pop(self.key, None)
                return
            # -- end of the synchronous step ----------------------------------------------------
            if step is not Step.WAIT:
                wait_until = None
            if step is Step.DELIVER:
                await self._deliver(envs, replayed=False)
            elif step is Step.REPLAY:
                req = c.request()
                while req is not None and not s.gone():
                    await self._deliver(await self._page(req))
                    req = c.request()
            elif step is Step.WAIT:
                now = trio.current_time()
                if wait_until is None:
                    wait_until = now + HANDOVER_WAIT_S
                elif now >= wait_until:
                    self._cut(
                        f"live delivery did not reach the client's cursor "
                        f"(seq {c.last_seq}) in {HANDOVER_WAIT_S:.0f}s"
                    )
                    return
                await trio.sleep(HANDOVER_POLL_S)
            else:
                self._cut(f"catch-up did not complete in {MAX_PAGES} history pages")
                return

    def _tell(self) -> None:
        """History lost part of what the session needed: never continue silently."""
        self._told = True
        s, ch = self.session, self.c.channel
        log.warning("resume skipped messages lost from history conn=%s channel=%s", s.id, ch)
        tell_epoch_change([s], ch)

    def _cut(self, reason: str) -> None:
        s = self.session
        self.resumer._cut += 1
        log.info(
            "resume cut off conn=%s channel=%s: %s (it resumes with its cursor)",
            s.id,
            self.c.channel,
            reason,
        )
        s.cut_off(reason)
