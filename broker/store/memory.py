"""The history store interface the broker's server talks to, and its in-memory implementation.

``Store`` is async so that a networked backend (Redis: seq, epoch and history surviving a broker
restart) can implement it with round trips; the memory store answers without awaiting.  The
server calls ``append_batch`` once per ingest batch, in release order, under one lock, so a
backend may pipeline a whole batch.  Semantics of ``position`` and ``replay`` are those of
``broker.history``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from broker.history import MemoryHistory, Position, Replay
from broker.items import Item
from broker.wire import Envelope

log = logging.getLogger(__name__)
TRIM_LOG_S = 60.0  # at most one warning a minute while the history is trimmed


class Store(Protocol):
    name: str

    async def append_batch(self, items: Sequence[Item], now: float) -> list[Envelope]:
        """Sequence and retain ``items`` (in order); return their envelopes."""
        ...

    async def position(self, channel: str) -> Position: ...

    async def replay(
        self,
        channel: str,
        epoch: str | None,
        after_seq: int | None,
        after_id: str | None,
        limit: int | None,
        now: float,
    ) -> Replay: ...

    def statistics(self) -> Any: ...

    def set_history_limits(self, max_items: int, max_age_s: float) -> None:
        """Apply reloaded history bounds (``history_max_items``, ``history_max_age_s``)."""

    async def aclose(self) -> None: ...


class MemoryStore:
    """``Store`` over ``MemoryHistory``: nothing survives a restart (new epochs after one)."""

    name = "memory"

    def __init__(self, history: MemoryHistory) -> None:
        self.history = history
        self._trim_logged = float("-inf")  # ``now`` of the last trim warning
        self._trim_reported = 0  # history.trimmed at that warning

    async def append_batch(self, items: Sequence[Item], now: float) -> list[Envelope]:
        history = self.history
        trimmed = history.trimmed
        envelopes = history.append_many(items, now)
        if history.trimmed != trimmed and not now - self._trim_logged < TRIM_LOG_S:
            self._log_trim(now)
        return envelopes

    def _log_trim(self, now: float) -> None:
        h = self.history
        log.warning(
            "history over history_max_total_bytes=%d (estimated): %d oldest messages of the "
            "least recently written channels dropped since the last warning (%d in all); "
            "docs/capacity.md sizes the history",
            h.max_total_bytes,
            h.trimmed - self._trim_reported,
            h.trimmed,
        )
        self._trim_logged = now
        self._trim_reported = h.trimmed

    def set_history_limits(self, max_items: int, max_age_s: float) -> None:
        self.history.set_limits(max_items, max_age_s)

    async def position(self, channel: str) -> Position:
        return self.history.position(channel)

    async def replay(
        self,
        channel: str,
        epoch: str | None,
        after_seq: int | None,
        after_id: str | None,
        limit: int | None,
        now: float,
    ) -> Replay:
        return self.history.replay(channel, epoch, after_seq, after_id, limit, now=now)

    def statistics(self) -> Any:
        return self.history.statistics()

    async def aclose(self) -> None:
        return None
