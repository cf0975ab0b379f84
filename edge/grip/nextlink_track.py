"""Publisher-id reliability of one held HTTP session: Pushpin's prev-id check (sans-IO).

Theory of operation
-------------------
When the origin holds a session with ``Grip-Channel: ch; prev-id=<id>``, Pushpin keeps, per
channel, the id of the last item the session got (``Instruct::Channel::prevId``) and compares
every published item's ``prev-id`` with it (``httpsession.cpp`` ``processPublishQueue``):

* equal: the item is delivered and its ``id`` becomes the session's last id (an item without
  ``id`` ends the check on that channel, as Pushpin's null prevId does);
* different: a **gap**.  The item is not delivered, the session asks for a low-priority update
  (a stream fetches its next link with ``Grip-Last: ch; last-id=<last id>``, a long-poll
  re-requests the origin), and from then on, until the update's answer is in, a stream *holds*
  what is published to it (Pushpin's queue in ``WaitingToUpdate``/``Proxying``, at most
  ``QUEUE_MAX`` items, later ones dropped); a long-poll drops it (it will be re-requested).

The update's answer (a next link's instruct) brings new prev-ids: ``after_update(ids)`` takes
them and returns the held items still worth delivering: items at the head of the queue for a
channel the session no longer has, or whose ``prev-id`` does not follow the new last id, are
dropped (the next link's body covered them), the rest go out through the same check (so a gap
further on asks for another update).

gripcast's broker history comes first (``edge.sync.resume``); this check is the fallback.
A channel is checked *strictly* (Pushpin's rule, an item without ``prev-id`` is a gap too)
when history did not hold the origin's prev-id, and *leniently* (only an item that names a
different ``prev-id`` is a gap) when history held it: then the broker's sequence already says
what follows what, and an item the publisher sent without ``prev-id`` is the next one.
A prev-id in the broker's ``<epoch>:<seq>`` form is never checked (it is no publisher id).

``Verdict`` is what the delivery path does with one item (``edge.sync.deliver``).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.wire import Envelope

QUEUE_MAX = 100  # Pushpin's PUBLISH_QUEUE_MAX


class Verdict(enum.Enum):
    DELIVER = "deliver"
    HELD = "held"  # queued until the update's answer (``after_update``)
    GAP = "gap"  # not delivered; the session must update (``PrevIds.gap`` is set)
    DROP = "drop"  # not delivered (queue full, or a long-poll waiting for its retry)


class PrevIds:
    """The prev-id state of one session (``StreamSession.track`` / ``ResponseSession.track``)."""

    __slots__ = ("ids", "strict", "held", "queue", "gap", "dropped", "gaps")

    def __init__(
        self, ids: Mapping[str, str | None], strict: Collection[str] = (), *, queue: bool = True
    ) -> None:
        self.ids: dict[str, str | None] = dict(ids)  # channel -> last id (None: not checked)
        self.strict = set(strict)  # channels checked with Pushpin's strict rule
        self.held: list[Envelope] | None = None  # not None: an update is pending
        self.queue = queue  # a stream holds items during an update; a long-poll drops them
        self.gap = False  # a gap was seen and the update has not started yet
        self.dropped = 0
        self.gaps = 0

    @property
    def idle(self) -> bool:
        """Nothing to check and no update pending: the session can go without a tracker."""
        return self.held is None and not any(v is not None for v in self.ids.values())

    def admit(self, env: Envelope) -> Verdict:
        """What to do with ``env`` (an item of one of the session's channels)."""
        held = self.held
        if held is not None:
            if self.queue and len(held) < QUEUE_MAX:
                held.append(env)
                return Verdict.HELD
            self.dropped += 1
            return Verdict.DROP
        ch = env.channel
        last = self.ids.get(ch)
        if last is None:
            return Verdict.DELIVER
        prev = env.prev_id
        if prev != last and (prev is not None or ch in self.strict):
            self.held = []
            self.gap = True
            self.gaps += 1
            return Verdict.GAP
        self.ids[ch] = env.id
        return Verdict.DELIVER

    def begin_update(self) -> None:
        """An update is pending (a gap, recover, idle window, ...): hold what comes meanwhile."""
        if self.held is None:
            self.held = []

    def after_update(
        self, ids: Mapping[str, str | None], channels: Collection[str]
    ) -> list[Envelope]:
        """The update's instruct is in: its prev-ids (``ids``, for the channels that carry one;
        ``channels``: all the session's channels now) replace the session's, every one checked
        strictly (they are the origin's word); returns the held items to deliver (through
        ``admit`` again), Pushpin's non-following head dropped."""
        held, self.held = self.held or [], None
        self.gap = False
        self.ids = {ch: self.ids.get(ch) for ch in channels if ch in self.ids}
        for ch, v in ids.items():
            self.ids[ch] = v
            if v is not None:
                self.strict.add(ch)
        i = 0
        while i < len(held):
            env = held[i]
            if env.channel not in channels:
                i += 1
                continue
            last = self.ids.get(env.channel)
            if last is not None and env.prev_id != last:
                i += 1
                continue
            break
        self.dropped += i
        return held[i:]

    def cancel_update(self) -> list[Envelope]:
        """The update did not happen (no next link): the held items, to deliver as they are."""
        held, self.held = self.held or [], None
        self.gap = False
        return held

    def grip_last(self) -> dict[str, str]:
        """What the update request tells the origin: ``Grip-Last`` per checked channel."""
        return {ch: v for ch, v in self.ids.items() if v is not None}
