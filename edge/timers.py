"""Coarse timer buckets (sans-IO): many deadlines, one periodic tick.

Keep-alives and hold timeouts of thousands of connections do not get one trio sleep each:
``schedule(item, when)`` drops the item into the bucket of ``resolution_s`` seconds that holds
``when``, and one task calls ``pop_due(now)`` every tick.  Cancelling is lazy: the owner of an
item re-checks its own state when the item comes due (an item may be scheduled again).
"""

from __future__ import annotations

import heapq
import math
from typing import Generic, TypeVar

T = TypeVar("T")


class TimerWheel(Generic[T]):
    def __init__(self, resolution_s: float = 1.0) -> None:
        self.resolution_s = resolution_s
        self._buckets: dict[int, list[T]] = {}
        self._keys: list[int] = []
        self._count = 0

    def schedule(self, item: T, when: float) -> None:
        key = math.ceil(when / self.resolution_s)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = []
            heapq.heappush(self._keys, key)
        bucket.append(item)
        self._count += 1

    def pop_due(self, now: float) -> list[T]:
        """Every item whose bucket ends at or before ``now``."""
        limit = math.floor(now / self.resolution_s)
        due: list[T] = []
        keys = self._keys
        while keys and keys[0] <= limit:
            due.extend(self._buckets.pop(heapq.heappop(keys)))
        self._count -= len(due)
        return due

    def next_due(self) -> float | None:
        """When the earliest bucket ends (its items are due then), or None when empty."""
        return self._keys[0] * self.resolution_s if self._keys else None

    def __len__(self) -> int:
        return self._count
