"""Pushpin's publish sequencer, sans-IO (reference section 5.1, ``PP:src/handler/sequencer.cpp``).

Theory of operation
-------------------

For each item, in order:

1. **Dedupe.** An item with an ``id`` whose ``(channel, id)`` was seen within
   ``id_cache_ttl_s`` is dropped (publisher retries are idempotent).  The id is remembered
   even if the item is later dropped by step 3.  The remembered ids live in two generations
   (dicts of ``(channel, id)`` -> expiry): new ids go into the young one; it turns old after
   ``id_cache_ttl_s``, or once it holds half of ``id_cache_max``, and the old one is dropped
   whole when all of it has expired or when the young one turns old again.  A lookup checks
   the expiry, so an id counts as seen exactly within ``id_cache_ttl_s`` while the cache is
   under its bound; past the bound, at least the ``id_cache_max / 2`` most recent ids are
   kept.  (A queue of expiries with one eviction per new id cost ~1 us an item at 60,000
   items/s in cache misses; bench/RESULTS.md, fourteenth session.)  Each key is an
   ``atom_pair``: untracked by the cyclic collector in the compiled twin, so the cache's dicts
   stay untracked and a full collection never walks them (seventeenth session).
2. **No-seq bypass.** ``no_seq`` items are released at once and leave the remembered last id
   of the channel alone.
3. **Reorder.** Per channel we remember the ``id`` of the last released item (an item without
   ``id`` forgets it).  An item whose ``prev_id`` differs from a remembered last id waits,
   keyed by its ``prev_id``, for its predecessor: when an item is released, the waiting item
   whose ``prev_id`` is that item's ``id`` is released right after it, and so on down the
   chain.  At most ``pending_max`` items wait per channel, and one per ``prev_id``; extra items
   are dropped (and counted).  A waiting item is released anyway ``message_wait_s`` after it
   arrived (``poll``).
   With no remembered id (new channel, or after ``recover``), anything is released at once.

Unlike Pushpin, which remembers last ids only for channels with local subscribers, every channel
is sequenced: the broker keeps history for all of them.  The last-id memory is an LRU of
``last_ids_max`` channels.

Every method takes ``now`` (monotonic seconds, never decreasing) and returns the items released
by that call, in release order.  ``next_deadline()`` says when ``poll`` has work to do.

Several brokers on one Redis (``broker.store.redis``, shared sequencing): the store attaches
itself (``RedisStore.attach_sequencer``), turns the reorder step off here (``last_ids_max = 0``:
the channel's last id is the one in Redis, whichever broker stored it) and hands back the items
Redis held for their predecessor (``defer``); ``poll`` offers them again (the store decides when
their ``message_wait_s`` is over), ``take_deferred`` gives the store those whose predecessor it
just stored.  ``recover`` calls the ``on_recover`` hooks.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from _speedups import atom_pair, sequence_run
from _speedups._sequence_py import SLOW, WAIT
from broker.items import Item


@dataclass(frozen=True, slots=True)
class SequencerStatistics:
    pending: int
    channels_pending: int
    ids_cached: int
    last_ids: int
    released: int
    dropped_duplicate: int
    dropped_conflict: int
    dropped_overflow: int
    timed_out: int


class _Pending:
    __slots__ = ("time", "item")

    def __init__(self, time: float, item: Item) -> None:
        self.time = time
        self.item = item


class Sequencer:
    def __init__(
        self,
        *,
        id_cache_ttl_s: float = 60.0,
        message_wait_s: float = 5.0,
        pending_max: int = 100,
        last_ids_max: int = 1_000_000,
        id_cache_max: int = 1_000_000,
    ) -> None:
        self.id_cache_ttl_s = id_cache_ttl_s
        self.message_wait_s = message_wait_s
        self.pending_max = pending_max
        self.last_ids_max = last_ids_max
        self._last_ids: OrderedDict[str, str] = OrderedDict()
        # (channel, id) -> expiry, in two generations (module docstring, step 1): the young
        # one turns old at ``_rotate_at`` or at ``_gen_max`` ids; the old one is all expired
        # at ``_old_until``
        self._ids: dict[tuple[str, str], float] = {}
        self._ids_old: dict[tuple[str, str], float] = {}
        self._gen_max = max(1, id_cache_max // 2)
        self._rotate_at = float("-inf")
        self._new_until = float("-inf")  # the latest expiry in the young generation
        self._old_until = float("-inf")
        # channel -> prev_id -> waiting item; the deque holds waits in arrival order (lazily
        # cleaned: an entry is stale when the item is no longer the one waiting on that key)
        self._pending: dict[str, dict[str, _Pending]] = {}
        self._pending_by_time: deque[tuple[str, str, _Pending]] = deque()
        self._pending_count = 0
        self._released = 0
        self._dropped_duplicate = 0
        self._dropped_conflict = 0
        self._dropped_overflow = 0
        self._timed_out = 0
        self.clock = float("-inf")  # the latest ``now`` given to ``poll``
        self.on_recover: list[Callable[[], None]] = []
        self._deferred: list[Item] = []  # held by the store for their prev-id: offered again

    # -- public -------------------------------------------------------------------------------

    def configure(self, id_cache_ttl_s: float, message_wait_s: float) -> None:
        """Apply reloaded settings (``id_cache_ttl_s``, ``message_wait_s``): ids already cached
        keep their expiry; waiting items are released by the new wait on the next ``poll``."""
        self.id_cache_ttl_s = id_cache_ttl_s
        self.message_wait_s = message_wait_s

    def add(self, item: Item, now: float) -> list[Item]:
        """Offer one item; return the items released (possibly none, possibly a chain)."""
        out: list[Item] = []
        self._add(item, now, out)
        return out

    def add_many(self, items: list[Item], now: float) -> list[Item]:
        """``add`` for each item, in order.  The usual item (not ``no_seq``, nothing waiting on
        its channel, its ``prev_id`` absent or the channel's last id, no rotation of the id
        cache due) is taken by ``_speedups.sequence_run`` (one compiled loop over the run of
        such items) with the same effect as ``_add``; it stops at any other item, which goes
        the general way here."""
        out: list[Item] = []
        if not items:
            return out
        self._expire_ids(now)  # ``now`` is the same for the whole batch: once is enough
        ttl = self.id_cache_ttl_s
        expiry = now + ttl
        i, n = 0, len(items)
        while i < n:
            i, action, released, duplicates, remembered = sequence_run(
                items,
                i,
                self._pending,
                self._ids,  # read again each time: the general path may rotate the cache
                self._ids_old,
                self._gen_max,
                self._last_ids,
                self.last_ids_max,
                now,
                ttl,
                expiry,
                out,
            )
            self._released += released
            self._dropped_duplicate += duplicates
            if remembered and expiry > self._new_until:
                self._new_until = expiry
            if action == SLOW:
                self._add(items[i], now, out)
                i += 1
            elif action == WAIT:
                item = items[i]
                assert item.prev_id is not None  # (WAIT: it differs from the last id)
                self._add_waiting(item, item.prev_id, now)
                i += 1
        return out

    def poll(self, now: float) -> list[Item]:
        """Release the items that waited ``message_wait_s`` or more (and what they unblock)."""
        out: list[Item] = []
        self.clock = max(self.clock, now)
        if self._deferred:
            out, self._deferred = self._deferred, []
        threshold = now - self.message_wait_s
        q = self._pending_by_time
        while q and q[0][2].time <= threshold:
            channel, prev_id, p = q.popleft()
            waiting = self._pending.get(channel)
            if waiting is None or waiting.get(prev_id) is not p:
                continue  # stale: released by its predecessor already
            self._unpend(channel, prev_id)
            self._timed_out += 1
            self._send(p.item, out)
        self._expire_ids(now)
        return out

    def next_deadline(self) -> float | None:
        """When the oldest waiting item times out (None if nothing waits); ``-inf`` when
        deferred items are to be offered again."""
        if self._deferred:
            return float("-inf")
        q = self._pending_by_time
        while q:
            channel, prev_id, p = q[0]
            waiting = self._pending.get(channel)
            if waiting is not None and waiting.get(prev_id) is p:
                return p.time + self.message_wait_s
            q.popleft()
        return None

    def recover(self) -> None:
        """Forget every remembered last id (Pushpin's ``recover`` command)."""
        self._last_ids.clear()
        for hook in self.on_recover:
            hook()

    def defer(self, items: list[Item]) -> list[Item]:
        """Offer ``items`` (already past dedupe and release) again at the next ``poll``; as for
        waiting items, at most ``pending_max`` per channel and one per ``prev_id`` (the others
        are dropped, counted, and returned)."""
        per_channel: dict[str, int] = {}
        waiting: set[tuple[str, str | None]] = set()
        for item in self._deferred:
            per_channel[item.channel] = per_channel.get(item.channel, 0) + 1
            waiting.add((item.channel, item.prev_id))
        dropped: list[Item] = []
        for item in items:
            key = (item.channel, item.prev_id)
            if key in waiting:
                self._dropped_conflict += 1
                dropped.append(item)
            elif per_channel.get(item.channel, 0) >= self.pending_max:
                self._dropped_overflow += 1
                dropped.append(item)
            else:
                waiting.add(key)
                per_channel[item.channel] = per_channel.get(item.channel, 0) + 1
                self._deferred.append(item)
        return dropped

    def deferred_count(self) -> int:
        return len(self._deferred)

    def take_deferred(self, stored: list[tuple[str, str | None]]) -> list[Item]:
        """The deferred items whose ``prev_id`` is one of the ``(channel, id)`` just stored
        (and, down the chain, those waiting on them), removed from the deferred list."""
        wanted = set(stored)
        taken: list[Item] = []
        rest: list[Item] = []
        for item in self._deferred:
            if (item.channel, item.prev_id) in wanted:
                taken.append(item)
                if item.id is not None:
                    wanted.add((item.channel, item.id))
            else:
                rest.append(item)
        self._deferred = rest
        return taken

    def forget_ids(self, items: list[Item]) -> None:
        """Drop these items' ids from the dedupe cache (their batch could not be stored, so a
        publisher retry must not be taken for a duplicate)."""
        for item in items:
            if item.id is not None:
                key = (item.channel, item.id)
                self._ids.pop(key, None)
                self._ids_old.pop(key, None)

    def last_id(self, channel: str) -> str | None:
        return self._last_ids.get(channel)

    def statistics(self) -> SequencerStatistics:
        return SequencerStatistics(
            pending=self._pending_count + len(self._deferred),  # held here or (deferred) in Redis
            channels_pending=len(self._pending),
            ids_cached=len(self._ids) + len(self._ids_old),  # expired ones until dropped
            last_ids=len(self._last_ids),
            released=self._released,
            dropped_duplicate=self._dropped_duplicate,
            dropped_conflict=self._dropped_conflict,
            dropped_overflow=self._dropped_overflow,
            timed_out=self._timed_out,
        )

    # -- internals ----------------------------------------------------------------------------

    def _add(self, item: Item, now: float, out: list[Item]) -> None:
        self._expire_ids(now)
        if item.id is not None and self.id_cache_ttl_s > 0:
            key = atom_pair(item.channel, item.id)
            seen = self._ids.get(key)
            if seen is None:
                seen = self._ids_old.get(key)
            if seen is not None and seen > now:
                self._dropped_duplicate += 1
                return
            if len(self._ids) >= self._gen_max:
                self._rotate(now)
            expiry = now + self.id_cache_ttl_s
            self._ids[key] = expiry
            if expiry > self._new_until:
                self._new_until = expiry
        if item.no_seq:
            self._released += 1
            out.append(item)
            return
        last = self._last_ids.get(item.channel)
        if last is not None and item.prev_id is not None and last != item.prev_id:
            self._add_waiting(item, item.prev_id, now)
            return
        self._send(item, out)

    def _add_waiting(self, item: Item, prev_id: str, now: float) -> None:
        """Park ``item`` (its ``prev_id`` is not the channel's last id) or drop it."""
        waiting = self._pending.setdefault(item.channel, {})
        if prev_id in waiting:
            self._dropped_conflict += 1
        elif len(waiting) >= self.pending_max:
            self._dropped_overflow += 1
        else:
            p = _Pending(now, item)
            waiting[prev_id] = p
            self._pending_by_time.append((item.channel, prev_id, p))
            self._pending_count += 1
        if not waiting:
            del self._pending[item.channel]

    def _send(self, item: Item, out: list[Item]) -> None:
        channel = item.channel
        while True:
            self._remember(channel, item.id)
            self._released += 1
            out.append(item)
            waiting = self._pending.get(channel)
            if waiting is None or item.id is None or item.id not in waiting:
                return
            item = self._unpend(channel, item.id).item

    def _unpend(self, channel: str, prev_id: str) -> _Pending:
        waiting = self._pending[channel]
        p = waiting.pop(prev_id)
        self._pending_count -= 1
        if not waiting:
            del self._pending[channel]
        return p

    def _remember(self, channel: str, item_id: str | None) -> None:
        if item_id is None:
            self._last_ids.pop(channel, None)
            return
        self._last_ids[channel] = item_id
        self._last_ids.move_to_end(channel)
        if len(self._last_ids) > self.last_ids_max:
            self._last_ids.popitem(last=False)

    def _expire_ids(self, now: float) -> None:
        if now >= self._old_until and self._ids_old:
            self._ids_old = {}
        if now >= self._rotate_at:
            self._rotate(now)

    def _rotate(self, now: float) -> None:
        """The young generation turns old; the old one is dropped (the bound, or expired)."""
        self._ids_old = self._ids if now < self._new_until else {}
        self._old_until = self._new_until
        self._ids = {}
        self._new_until = float("-inf")
        self._rotate_at = now + self.id_cache_ttl_s
