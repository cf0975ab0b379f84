"""Catching ONE session up on a channel from a client cursor, from the broker's history.

Use (any transport: HTTP stream/response holds, SSE ``Last-Event-ID``, WebSocket subscribe)::

    app.add_session(session, channels)          # register with the hub first, then with
    ok = await app.resume(session, channel, cursor)   # no await in between (see below)

``cursor`` is what the client last saw: a publisher ``id`` or the broker's ``"<epoch>:<seq>"``
(``Envelope.cursor``: the id clients see is the publisher's id when it gave one, else
``epoch:seq``).  ``resume`` delivers every retained message after the cursor to that session
only (through ``Deliverer.deliver(..., only=session)``, so each transport encodes it as usual),
then hands the session over to live delivery with no gap and no duplicate, and returns:

* ``True``: history answered (possibly with nothing to replay: the cursor is the channel's last
  message, or the channel has never had a message);
* ``False``: history cannot answer (cursor unknown or older than what is retained, another
  epoch, broker unreachable).  Nothing was replayed; the caller falls back (Pushpin's way:
  retry the origin request with ``Grip-Last``, fetch the stream's next link, or just go live).
  With ``flush_on_fail=True`` (default) the live messages held meanwhile are delivered before
  returning; with False they are dropped (a response hold that is about to be retried).

Theory of operation
-------------------
``begin(session, channel)`` (called by ``resume`` synchronously, before its first await) opens
a *gate*: ``Deliverer.deliver`` appends the channel's live envelopes for that session to the
gate instead of delivering them.  Hence call ``resume`` right after registering the session on
the channel, with no await in between (or call ``app.begin_resume(session, channel)`` at
registration time and ``await app.resume(...)`` later).

The sans-IO ``Catchup`` then drives the broker's ``replay`` (``broker.wire``): first
``after_id=cursor``; while a page comes back complete but cut short by ``limit``, the next page
``after_seq`` = the last replayed seq (same epoch).  It keeps the session's own per-channel
last seq.  When history is exhausted it compares with the edge tracker's position for the
channel (everything up to it was, or was skipped to be, handed to live sessions; everything
after it will be): while the session is behind it, it replays more (this closes the race where
a message committed before the edge subscribed is neither live nor in the first page).  Then
the gate's envelopes are released in order, dropping those at or below the session's last seq
(duplicates), and the gate closes with no await between the last release and the close.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from broker import wire
from broker.errors import GripcastError, RemoteProtocolError
from edge.tracker import State

log = logging.getLogger(__name__)

MAX_PAGES = 1000  # bound on replay round trips for one catch-up (1,000 x REPLAY_LIMIT items)


@dataclass(frozen=True, slots=True)
class ResumeStatistics:
    resumes: int
    answered: int
    fell_back: int
    replayed: int
    duplicates_dropped: int
    active: int


class Catchup:
    """The sans-IO state of one session catching up on one channel.

    ``request()`` is the next replay request map (None when done); ``on_reply(reply)`` takes
    the broker's reply map and returns the envelopes to deliver to the session (in order);
    ``on_target(epoch, last_seq)`` gives the tracker's live position once history is
    exhausted (it may ask for more); ``accept_live(env)`` says whether a gated live envelope
    is new for this session (and records it).  ``failed`` means history cannot answer.
    """

    def __init__(self, channel: str, cursor: str, limit: int = wire.REPLAY_LIMIT) -> None:
        self.channel = channel
        self.cursor = cursor
        self.limit = limit
        self.epoch: str | None = None
        self.last_seq: int | None = None  # the session's own last seq on the channel
        self.failed = False
        self.skipped = False
        self.done = False
        self.pages = 0
        self._need_more = True

    def request(self) -> dict | None:
        if self.done or self.failed or not self._need_more:
            return None
        if self.last_seq is None:
            return {"op": "replay", "channel": self.channel, "epoch": None, "after_seq": None,
                    "after_id": self.cursor, "limit": self.limit}
        return {"op": "replay", "channel": self.channel, "epoch": self.epoch,
                "after_seq": self.last_seq, "after_id": None, "limit": self.limit}

    def on_reply(self, reply: dict) -> list[wire.Envelope]:
        """Consume one replay reply; the envelopes to deliver, in seq order."""
        self.pages += 1
        epoch = str(reply.get("epoch") or "")
        last = int(reply.get("last_seq") or 0)
        complete = bool(reply.get("complete", False))
        items = sorted((wire.Envelope.from_map(self.channel, m) for m in reply.get("items") or []),
                       key=lambda e: e.seq)
        if self.last_seq is None:
            if not complete:
                if last == 0:
                    # the channel never had a message (or its history restarted empty): the
                    # client cannot have missed anything we know of
                    self.epoch, self.last_seq = epoch, 0
                    self._need_more = False
                    return []
                self.failed = True
                return []
            self.epoch = epoch
            self.last_seq = (items[0].seq - 1) if items else last
        elif epoch != self.epoch or not complete:
            # history restarted (new epoch) or was trimmed under us mid catch-up: what we
            # replayed stands, the lost part is skipped (as the tracker does), go on from there
            self.skipped = True
            self.epoch = epoch
            self.last_seq = (items[0].seq - 1) if items else last
        out = []
        for env in items:
            if env.epoch == self.epoch and env.seq > self.last_seq:
                out.append(env)
                self.last_seq = env.seq
        self._need_more = bool(out) and self.last_seq < last
        return out

    def on_target(self, epoch: str | None, last_seq: int) -> bool:
        """The tracker's live position; True if more must be replayed before going live."""
        if self.failed or epoch is None or epoch != self.epoch or self.last_seq is None:
            return False
        if last_seq > self.last_seq and self.pages < MAX_PAGES:
            self._need_more = True
            return True
        return False

    def accept_live(self, env: wire.Envelope) -> bool:
        """Whether a live envelope held at the gate is new for this session."""
        if self.failed or self.last_seq is None:
            return True
        if env.epoch == self.epoch and env.seq <= self.last_seq:
            return False
        if env.epoch == self.epoch:
            self.last_seq = env.seq
        return True


class Resumer:
    """Drives ``Catchup`` against the broker link for an edge (``app``).

    ``app`` provides ``link`` (``BrokerLink``), ``tracker``, ``deliverer`` (whose ``gate``
    dict this fills) and ``wait_positioned(channels)``.
    """

    def __init__(self, app) -> None:
        self.app = app
        self._resumes = self._answered = self._fell_back = 0
        self._replayed = self._dups = 0

    @property
    def gate(self) -> dict:
        return self.app.deliverer.gate

    def begin(self, session, channel: str) -> None:
        """Start holding ``channel``'s live messages for ``session`` (idempotent)."""
        self.gate.setdefault((session, channel), [])

    def abort(self, session, channel: str) -> list:
        """Close the gate without delivering; returns what it held."""
        return self.gate.pop((session, channel), [])

    async def resume(self, session, channel: str, cursor: str, *,
                     flush_on_fail: bool = True) -> bool:
        """Catch ``session`` up on ``channel`` after ``cursor``; see the module docstring."""
        self.begin(session, channel)
        self._resumes += 1
        app = self.app
        c = Catchup(channel, cursor)
        ok = False
        try:
            ok = await self._run(session, c)
        except (GripcastError, RemoteProtocolError) as exc:
            log.warning("resume failed channel=%s cursor=%s: %s", channel, cursor, exc)
            c.failed = True
        except BaseException:
            self.abort(session, channel)
            raise
        if ok:
            self._answered += 1
        else:
            self._fell_back += 1
            c.failed = True
            if not flush_on_fail:
                self.abort(session, channel)
                return False
        # release the gate: in order, duplicates dropped; close it with no await after the
        # last check so no live message slips between the gate and live delivery
        while True:
            held = self.gate.get((session, channel))
            if not held:
                self.gate.pop((session, channel), None)
                break
            self.gate[(session, channel)] = []
            fresh = []
            for env in held:
                if c.accept_live(env):
                    fresh.append(env)
                else:
                    self._dups += 1
            if fresh and not _gone(session):
                await app.deliverer.deliver(fresh, trio.current_time(), only=session)
        return ok

    async def _run(self, session, c: Catchup) -> bool:
        app = self.app
        positioned = False
        while True:
            req = c.request()
            while req is not None:
                reply = await app.link.request(req)
                envs = c.on_reply(reply)
                if c.failed:
                    return False
                if envs and not _gone(session):
                    self._replayed += len(envs)
                    await app.deliverer.deliver(envs, trio.current_time(), only=session)
                req = c.request()
            if _gone(session):
                return True
            if not positioned:
                await app.wait_positioned([c.channel])
                positioned = True
            if app.tracker.state(c.channel) in (None, State.POSITION):
                return True
            epoch, last = app.tracker.position(c.channel)
            if not c.on_target(epoch, last):
                return True

    def statistics(self) -> ResumeStatistics:
        return ResumeStatistics(self._resumes, self._answered, self._fell_back, self._replayed,
                                self._dups, len(self.gate))


def _gone(session) -> bool:
    return bool(getattr(session, "done", False))
