"""Rate limits on what makes edges ask origins again: ``recover`` and published ``hint``s (sans-IO).

A ``recover`` (HTTP ``POST /recover``, the command socket's ``recover``) makes every edge
re-request every held session from its origin; a published ``hint`` action makes every
session held on that channel do the same.  A publisher that floods either turns the cluster
into an amplifier against the origins, so both go through token buckets here, whatever input
they came by:

* ``recover``: one global bucket (``recover_per_s``, burst ``1 + rate``);
* ``hint``: one bucket per channel (``hint_per_channel_per_s``) and one for all channels
  together (``hint_per_s``), each with burst ``1 + rate``.  A hint the buckets refuse is
  dropped: the hint before it already made the sessions ask, so nothing is lost but the
  redundant request (the excess is coalesced into the one already sent).

Refusals are counted (``statistics()``: the broker's ``rate_limited_total{kind}`` metric).
Time comes from the caller (``now``, monotonic seconds).  The per-channel table is bounded:
full buckets are forgotten when it grows past ``MAX_CHANNELS``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from _speedups import first_hint
from broker.items import Item

MAX_CHANNELS = 100_000


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = 1.0 + rate if burst is None else burst
        self.tokens = self.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def peek(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= 1.0

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


@dataclass(frozen=True, slots=True)
class RateLimitStatistics:
    recover_refused: int
    hint_refused: int
    channels_tracked: int


def has_hint(item: Item) -> bool:
    """True when a format of ``item`` (a normalised Item) is a ``hint`` action."""
    return any(isinstance(f, dict) and f.get("action") == "hint" for f in item.formats.values())


def without_hints(item: Item) -> Item | None:
    """``item`` with its hint formats removed, or None when nothing else is left."""
    formats = {
        name: f
        for name, f in item.formats.items()
        if not (isinstance(f, dict) and f.get("action") == "hint")
    }
    return dataclasses.replace(item, formats=formats) if formats else None


class ActionLimiter:
    def __init__(
        self, recover_per_s: float, hint_per_channel_per_s: float, hint_per_s: float, now: float
    ) -> None:
        self.hint_per_channel_per_s = hint_per_channel_per_s
        self._recover = TokenBucket(recover_per_s, now)
        self._hints = TokenBucket(hint_per_s, now)
        self._channels: dict[str, TokenBucket] = {}
        self.recover_refused = 0
        self.hint_refused = 0

    def allow_recover(self, now: float) -> bool:
        if self._recover.take(now):
            return True
        self.recover_refused += 1
        return False

    def allow_hint(self, channel: str, now: float) -> bool:
        bucket = self._channels.get(channel)
        if bucket is None:
            if len(self._channels) >= MAX_CHANNELS:
                self._forget_full(now)
            bucket = self._channels[channel] = TokenBucket(self.hint_per_channel_per_s, now)
        if bucket.peek(now) and self._hints.take(now):
            bucket.take(now)
            return True
        self.hint_refused += 1
        return False

    def filter(self, items: Sequence[Item], now: float) -> tuple[list[Item], list[Item]]:
        """Split ``items`` into (admitted, refused), in order.  An item whose hint the buckets
        refuse is admitted without its hint formats when it has others (a ``send`` for
        another transport), else refused."""
        start = first_hint(items)  # (compiled: a batch usually has no hint at all)
        if start < 0:
            return list(items), []
        kept: list[Item] = list(items[:start])
        refused: list[Item] = []
        item: Item | None
        for item in items[start:]:
            if has_hint(item) and not self.allow_hint(item.channel, now):
                refused.append(item)
                item = without_hints(item)
                if item is None:
                    continue
            kept.append(item)
        return kept, refused

    def _forget_full(self, now: float) -> None:
        for channel in [c for c, b in self._channels.items() if b.full(now)]:
            del self._channels[channel]
        if len(self._channels) >= MAX_CHANNELS:  # all busy: start over (bounded memory first)
            self._channels.clear()

    def statistics(self) -> RateLimitStatistics:
        return RateLimitStatistics(self.recover_refused, self.hint_refused, len(self._channels))
