"""The sequencer's usual item, pure-Python twin (``broker.sequencer.Sequencer.add_many``).

``sequence_run`` walks ``items`` from ``start`` and takes every item the sequencer can take
without its general path: not ``no_seq``, on a channel where nothing waits, a duplicate (counted
and dropped), or new (its id remembered in the young generation of the id cache, then released:
the channel's last id becomes its id).  It stops at the first item it cannot finish:

* ``SLOW``: the general path must take it whole (``Sequencer._add``): a ``no_seq`` item, one on
  a channel with waiting items, or one whose id would fill the young generation (a rotation);
  nothing of that item was done.
* ``WAIT``: its ``prev_id`` is not the channel's last id: its id is remembered (as ``_add``
  does first), and the caller parks it (``Sequencer._add_waiting``).

It returns ``(index, action, released, duplicates, remembered)``: where it stopped
(``len(items)`` with ``DONE``), why, how many items it released into ``out`` and dropped as
duplicates, and whether it remembered any id (the caller moves its newest expiry).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

DONE, SLOW, WAIT = 0, 1, 2


def sequence_run(
    items: list[Any],
    start: int,
    pending: dict[str, Any],
    ids: dict[Any, float],
    ids_old: dict[Any, float],
    gen_max: int,
    last_ids: OrderedDict[str, str],
    last_ids_max: int,
    now: float,
    ttl: float,
    expiry: float,
    out: list[Any],
) -> tuple[int, int, int, int, bool]:
    released = duplicates = 0
    remembered = False
    for i in range(start, len(items)):
        item = items[i]
        channel = item.channel
        item_id = item.id
        if item.no_seq or channel in pending:
            return i, SLOW, released, duplicates, remembered
        if item_id is not None and ttl > 0:
            key = (channel, item_id)  # (the compiled twin's is untracked: atom_pair)
            seen = ids.get(key)
            if seen is None:
                seen = ids_old.get(key)
            if seen is not None and seen > now:
                duplicates += 1
                continue
            if len(ids) >= gen_max:
                return i, SLOW, released, duplicates, remembered
            ids[key] = expiry
            remembered = True
        prev_id = item.prev_id
        if prev_id is not None:
            last = last_ids.get(channel)
            if last is not None and last != prev_id:
                return i, WAIT, released, duplicates, remembered
        if item_id is None:
            last_ids.pop(channel, None)
        else:
            last_ids[channel] = item_id
            last_ids.move_to_end(channel)
            if len(last_ids) > last_ids_max:
                last_ids.popitem(last=False)
        released += 1
        out.append(item)
    return len(items), DONE, released, duplicates, remembered
