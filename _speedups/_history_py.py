"""The broker's in-memory history: a channel's state and the batch append (pure-Python twin of
``_history_c``).

``HistoryChannel(name, epoch, max_items, max_age_s)``: one channel of
``broker.history.MemoryHistory``: ``name``, ``epoch``, ``last_seq`` (0 before the first
message), ``last_id``, ``ring`` (a deque of the retained envelopes, oldest first), ``ids``
(publisher id -> seq, for ids still in the ring), ``bytes`` (payload bytes of the ring,
``payload_bytes``), ``max_items`` and ``max_age_s`` (its bounds).  ``drop_oldest()`` drops the
oldest retained envelope and returns its payload bytes.  The compiled twin holds the numbers as
C fields, so the append loop reads and writes them without a dictionary or a Python integer.

``append_many(history, items, now, envelope)``: ``MemoryHistory.append_many``'s loop.  For each
item, in order: its channel (``history._channels.get``, else ``history._channel(name)``, which
creates it; moved to the end of ``history._channels`` once per run of one channel), the next
seq, an ``envelope`` instance (``make_envelope``: ``channel`` is the channel's own name string,
``ts`` is ``now``) appended to the ring and retained (``retain``), its id remembered, then the
oldest envelopes dropped while the ring is over ``max_items`` or over ``history.max_bytes``
(always keeping the newest), and on each channel's first item of the batch the age bound
checked (``history._expire(ch, now)`` when the oldest is older than ``now - max_age_s``).
Afterwards ``history._retained``, ``history._payload`` and ``history._appended`` are updated
and ``history._check_total()`` is called.  Returns the envelopes, in item order.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from _speedups._fanout_py import make_envelope, retain
from _speedups._items_py import payload_bytes


class HistoryChannel:
    __slots__ = (
        "name",
        "epoch",
        "last_seq",
        "last_id",
        "ring",
        "ids",
        "bytes",
        "max_items",
        "max_age_s",
    )

    def __init__(self, name: str, epoch: str, max_items: int, max_age_s: float) -> None:
        # the channel's name as first written: every envelope it retains holds this one string
        # (a publish decodes the name afresh for each item; ~55 bytes a retained message)
        self.name = name
        self.epoch = epoch
        self.max_items = max_items  # this channel's bounds (its namespace's, else the globals)
        self.max_age_s = max_age_s
        self.last_seq = 0
        self.last_id: str | None = None
        self.ring: deque[Any] = deque()
        self.ids: dict[str, int] = {}  # publisher id -> seq, for ids still in the ring
        self.bytes = 0  # payload bytes of the ring (broker.items.item_bytes)

    def drop_oldest(self) -> int:
        """Drop the oldest retained message; its payload bytes."""
        env = self.ring.popleft()
        n = payload_bytes(env.formats)
        self.bytes -= n
        if env.id is not None and self.ids.get(env.id) == env.seq:
            del self.ids[env.id]
        return n


def append_many(history: Any, items: Any, now: float, envelope: type) -> list[Any]:
    out: list[Any] = []
    add = out.append
    channels = history._channels
    move_to_end = channels.move_to_end
    get = channels.get
    max_bytes = history.max_bytes
    cur_name = None
    ch: HistoryChannel  # bound on the first item (its name differs from None)
    ring: deque[Any] = deque()
    ids: dict[str, int] = {}
    max_items = 0
    first = False
    expired_checked: set[str] = set()
    retained = 0
    payload = 0
    for item in items:
        name = item.channel
        if name != cur_name:  # a run of one channel: looked up and moved to the end once
            # (the channel written last is never the one evicted)
            found = get(name)
            ch = found if found is not None else history._channel(name)
            move_to_end(name)
            cur_name = name
            ring = ch.ring
            ids = ch.ids
            max_items = ch.max_items
            first = name not in expired_checked
        seq = ch.last_seq + 1
        ch.last_seq = seq
        item_id = item.id
        ch.last_id = item_id
        env: Any = make_envelope(
            envelope, ch.name, seq, ch.epoch, item.formats, item_id, item.prev_id, item.meta, now
        )
        ring.append(env)
        retain(env)
        if item_id is not None:
            ids[item_id] = seq
        retained += 1
        n = payload_bytes(item.formats)  # (env.formats is item.formats)
        ch.bytes += n
        payload += n
        while len(ring) > max_items or (ch.bytes > max_bytes and len(ring) > 1):
            old = ring.popleft()  # drop_oldest, inlined
            n = payload_bytes(old.formats)
            ch.bytes -= n
            payload -= n
            if old.id is not None and ids.get(old.id) == old.seq:
                del ids[old.id]
            retained -= 1
        if first:
            first = False
            expired_checked.add(name)
            if ring[0].ts < now - ch.max_age_s:  # (MemoryHistory._expire's test, inlined)
                history._expire(ch, now)
        add(env)
    history._retained += retained
    history._payload += payload
    history._appended += len(out)
    history._check_total()
    return out
