"""Per-channel sequencing and bounded history, in memory (sans-IO).

Each channel has an ``epoch`` (``secrets.token_hex(8)``, created with the channel's history: a
new epoch means "history before this is gone"), a ``last_seq`` (1, 2, 3, ... per epoch; 0 before
the first message), the ``last_id`` (publisher id of the last message, or None) and a ring of
the most recent ``Envelope``s bounded by count (``max_items``), by payload bytes
(``max_bytes``, the content/body bytes of the envelopes' formats, ``broker.items.item_bytes``;
the newest message is always kept) and by age (``max_age_s``, checked when the channel is
written or read).  With channel namespaces (``limits``, a ``broker.namespaces.NamespaceTable``)
``max_items`` and ``max_age_s`` are the defaults of channels in no namespace: each channel takes
its own bounds when it is created (and again on ``set_limits``).  At most ``max_channels`` channels are kept; the least recently *written* one
is evicted (its next use starts a new epoch).

All channels together are held to ``max_total_bytes`` (``history_max_total_bytes``; 0: no
bound), estimated as the payload bytes plus ``MESSAGE_OVERHEAD_BYTES`` a message (what a
retained message costs the broker beyond its payload, ``python -m bench.histmem``).  Past it,
the oldest messages of the least recently written channels are dropped (each channel keeps
its newest one, and its position: a cursor at or after the dropped messages still resumes),
down to 90% of the bound; a replay that needed them is incomplete, as after the age bound.

``replay`` semantics (the contract of ``broker.wire``'s ``replay``):

* The cursor is ``after_id`` when given and resolvable: a publisher id still in the ring, or an
  ``"<epoch>:<seq>"`` cursor of the current epoch.  Otherwise ``after_seq`` within ``epoch``
  (``epoch`` None means the current one; ``after_seq`` None means 0).
* ``complete`` is True when the returned items start right after the cursor (nothing between
  the cursor and the first item is missing).  Then ``items`` are the messages after the cursor,
  at most ``limit``; when ``limit`` cut them short, ``items[-1].seq < last_seq`` and the caller
  asks again from there.
* ``complete`` is False when history cannot cover the gap: unknown id, another epoch, a
  cursor older than the oldest retained message, or a cursor beyond ``last_seq``.  ``items``
  then holds the oldest retained messages (at most ``limit``) and the caller falls back.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple

from _speedups import HistoryChannel, payload_bytes, retain
from _speedups import append_many as _append_many
from broker.items import Item
from broker.namespaces import NamespaceTable
from broker.wire import REPLAY_LIMIT, Envelope


class Position(NamedTuple):
    epoch: str
    last_seq: int
    last_id: str | None


class Replay(NamedTuple):
    epoch: str
    last_seq: int
    complete: bool
    items: list[Envelope]


# what a retained message costs the broker beyond its payload bytes (bench.histmem measures
# 565 B without a publisher id, 661 B with one)
MESSAGE_OVERHEAD_BYTES = 600
TRIM_TO = 0.9  # past max_total_bytes, trim down to this share of it


@dataclass(frozen=True, slots=True)
class HistoryStatistics:
    channels: int
    retained: int
    appended: int
    evicted_channels: int
    expired: int
    trimmed: int = 0  # messages dropped to keep all channels within max_total_bytes
    payload_bytes: int = 0  # payload bytes retained, all channels


# a channel's state (its numbers are C fields in the compiled twin)
_Channel = HistoryChannel


class MemoryHistory:
    def __init__(
        self,
        *,
        max_items: int = 1000,
        max_age_s: float = 3600.0,
        max_channels: int = 100_000,
        max_bytes: int = 0,
        max_total_bytes: int = 0,
        new_epoch: Callable[[], str] = lambda: secrets.token_hex(8),
        limits: NamespaceTable | None = None,
    ) -> None:
        if max_items < 1 or max_channels < 1 or max_age_s <= 0 or max_total_bytes < 0:
            raise ValueError("history bounds must be positive")
        self.max_items = max_items
        self.max_age_s = max_age_s
        self.max_channels = max_channels
        self.max_bytes = max_bytes if max_bytes > 0 else float("inf")  # 0: no byte budget
        # all channels together (0: no bound); see the module docstring
        self.max_total_bytes = max_total_bytes if max_total_bytes > 0 else float("inf")
        self._new_epoch = new_epoch
        self.limits = limits if limits else None  # per-prefix bounds (broker.namespaces)
        self._channels: OrderedDict[str, _Channel] = OrderedDict()
        self._retained = 0
        self._appended = 0
        self._evicted = 0
        self._expired = 0
        self._payload = 0  # payload bytes retained, all channels
        self._trimmed = 0

    # -- writes -------------------------------------------------------------------------------

    def append(self, item: Item, now: float) -> Envelope:
        """Sequence ``item`` on its channel and retain it; ``now`` (wall seconds) becomes ``ts``."""
        ch = self._channel(item.channel)
        self._channels.move_to_end(item.channel)
        ch.last_seq += 1
        ch.last_id = item.id
        env = Envelope(
            channel=ch.name,
            seq=ch.last_seq,
            epoch=ch.epoch,
            formats=item.formats,
            id=item.id,
            prev_id=item.prev_id,
            meta=item.meta,
            ts=now,
        )
        ch.ring.append(env)
        retain(env)  # kept for a while, never in a cycle: out of the collector's walks
        if item.id is not None:
            ch.ids[item.id] = env.seq
        n = payload_bytes(env.formats)
        ch.bytes += n
        self._payload += n
        self._retained += 1
        self._appended += 1
        while len(ch.ring) > ch.max_items or (ch.bytes > self.max_bytes and len(ch.ring) > 1):
            self._payload -= ch.drop_oldest()
            self._retained -= 1
        self._expire(ch, now)
        self._check_total()
        return env

    def append_many(self, items: Sequence[Item], now: float) -> list[Envelope]:
        """``append`` for each item, in order (the same effect, with the per-item work inlined
        in ``_speedups.append_many``: one batch is one ``now``, so a channel's age bound is
        checked on its first item)."""
        return _append_many(self, items, now, Envelope)

    # -- reads --------------------------------------------------------------------------------

    def position(self, channel: str) -> Position:
        ch = self._channel(channel)
        return Position(ch.epoch, ch.last_seq, ch.last_id)

    def replay(
        self,
        channel: str,
        epoch: str | None = None,
        after_seq: int | None = None,
        after_id: str | None = None,
        limit: int | None = REPLAY_LIMIT,
        now: float | None = None,
    ) -> Replay:
        ch = self._channel(channel)
        if now is not None:
            self._expire(ch, now)
        limit = REPLAY_LIMIT if limit is None else max(0, min(int(limit), REPLAY_LIMIT))
        start = self._resolve(ch, epoch, after_seq, after_id)
        first = ch.ring[0].seq if ch.ring else ch.last_seq + 1
        if start is None or start + 1 < first:
            return Replay(ch.epoch, ch.last_seq, False, list(islice(ch.ring, 0, limit)))
        skip = start + 1 - first
        return Replay(ch.epoch, ch.last_seq, True, list(islice(ch.ring, skip, skip + limit)))

    def statistics(self) -> HistoryStatistics:
        return HistoryStatistics(
            channels=len(self._channels),
            retained=self._retained,
            appended=self._appended,
            evicted_channels=self._evicted,
            expired=self._expired,
            trimmed=self._trimmed,
            payload_bytes=self._payload,
        )

    # -- internals ----------------------------------------------------------------------------

    def set_limits(self, max_items: int, max_age_s: float) -> None:
        """New global bounds (a reload): every channel takes its bounds again."""
        self.max_items = max_items
        self.max_age_s = max_age_s
        for name, ch in self._channels.items():
            ch.max_items, ch.max_age_s = self._limits(name)

    def _limits(self, name: str) -> tuple[int, float]:
        if self.limits is None:
            return self.max_items, self.max_age_s
        return self.limits.history_limits(name, self.max_items, self.max_age_s)

    def _channel(self, name: str) -> _Channel:
        ch = self._channels.get(name)
        if ch is None:
            ch = _Channel(name, self._new_epoch(), *self._limits(name))
            self._channels[name] = ch
            while len(self._channels) > self.max_channels:
                _, old = self._channels.popitem(last=False)
                self._retained -= len(old.ring)
                self._payload -= old.bytes
                self._evicted += 1
        return ch

    def _expire(self, ch: _Channel, now: float) -> None:
        horizon = now - ch.max_age_s
        ring = ch.ring
        while ring and ring[0].ts < horizon:
            self._payload -= ch.drop_oldest()
            self._retained -= 1
            self._expired += 1

    @property
    def trimmed(self) -> int:
        """Messages dropped so far to keep within ``max_total_bytes`` (the store logs them)."""
        return self._trimmed

    def estimated_bytes(self) -> int:
        """What the retained history costs, estimated: payload plus a fixed cost a message."""
        return self._payload + self._retained * MESSAGE_OVERHEAD_BYTES

    def _check_total(self) -> None:
        if self.estimated_bytes() > self.max_total_bytes:
            self._trim()

    def _trim(self) -> None:
        """Drop the oldest messages of the least recently written channels (each keeps its
        newest) until the estimate is at ``TRIM_TO`` of ``max_total_bytes``."""
        target = self.max_total_bytes * TRIM_TO
        before = self._retained
        payload, retained = self._payload, self._retained
        for ch in self._channels.values():  # least recently written first
            ring = ch.ring
            if len(ring) > 1:
                ids = ch.ids
                kept = ch.bytes
                while len(ring) > 1 and payload + retained * MESSAGE_OVERHEAD_BYTES > target:
                    old = ring.popleft()  # _Channel.drop_oldest, inlined
                    n = payload_bytes(old.formats)
                    kept -= n
                    payload -= n
                    retained -= 1
                    if old.id is not None and ids.get(old.id) == old.seq:
                        del ids[old.id]
                ch.bytes = kept
            if payload + retained * MESSAGE_OVERHEAD_BYTES <= target:
                break
        self._payload, self._retained = payload, retained
        self._trimmed += before - retained

    @staticmethod
    def _resolve(
        ch: _Channel, epoch: str | None, after_seq: int | None, after_id: str | None
    ) -> int | None:
        """The seq the caller has seen up to, or None when the cursor cannot be placed."""
        if after_id:
            seq = ch.ids.get(after_id)
            if seq is not None:
                return seq
            if after_id == ch.last_id:
                return ch.last_seq
            ep, sep, tail = after_id.rpartition(":")
            if sep and ep == ch.epoch and tail.isdigit() and int(tail) <= ch.last_seq:
                return int(tail)
            if after_seq is None:
                return None
        if epoch is not None and epoch != ch.epoch:
            return None
        seq = 0 if after_seq is None else int(after_seq)
        if not 0 <= seq <= ch.last_seq:
            return None
        return seq
