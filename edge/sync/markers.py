"""Repeated position markers, recognised without decoding them again (sans-IO; issue 16).

The broker re-sends a channel's position marker in the two heartbeats after the channel was
published (``broker.ingest.pipeline``: the second one in case the first was lost with the tail it
marks).  With many channels these markers outnumber the messages, and most of the second ones
repeat, byte for byte, a marker this edge has just handled.  ``MarkerMemo`` remembers the markers
handled in the last two heartbeat intervals (keyed by their frame bytes: channel, epoch and
``last_seq`` together), so a repeat costs a dictionary lookup instead of a msgpack decode, and the
tracker is not called when it would do nothing: the channel's delivered position is exactly the
marker's (so no gap can follow from it).  Any other repeat (the tracker is behind it, replaying,
or positioning the channel anew) still goes to the tracker, with the ``Marker`` kept from the
first time.  Memory is bounded by the markers of two intervals, not by the channels.

Skipping a repeat changes nothing the tracker would have done, with one exception: after a
replay that failed (the broker down), a repeated marker no longer asks again at once when the
delivered position is exactly the marker's and the gap came from elsewhere; the tracker's
periodic ``repair()`` asks then, as it does for every such gap.

``feed_frames`` is the edge's fan-out reader (``edge.server``): frames in, deliverable envelopes
out, through the memo and the tracker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from broker.errors import RemoteProtocolError
from broker.wire import HEARTBEAT_INTERVAL_S, SEP, Envelope, Marker, decode_frame
from edge.sync.tracker import State, Tracker

log = logging.getLogger(__name__)

# a marker's map as the broker writes it (``broker.wire.encode_marker``): fixmap 3, "marker": True
MARKER_BODY = b"\x83\xa6marker\xc3"


@dataclass(frozen=True, slots=True)
class MarkerMemoStatistics:
    remembered: int  # markers held (the last two intervals)
    repeats: int  # markers recognised as repeats since the start


class MarkerMemo:
    def __init__(self, interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._cur: dict[bytes, Marker] = {}
        self._prev: dict[bytes, Marker] = {}
        self._rotate_at: float | None = None
        self.repeats = 0  # markers recognised as repeats (not decoded again)

    def rotate(self, now: float) -> None:
        """Forget markers older than two intervals (call once per batch of frames)."""
        if self._rotate_at is None:
            self._rotate_at = now + self.interval_s
        elif now >= self._rotate_at:
            self._prev, self._cur = self._cur, {}
            self._rotate_at = now + self.interval_s

    def seen(self, frame: bytes) -> Marker | None:
        """The ``Marker`` of ``frame`` if it repeats one remembered, else None (also for any
        frame that is not a marker: only a marker's first bytes are looked at)."""
        i = frame.find(SEP)
        if i <= 0 or not frame.startswith(MARKER_BODY, i + 1):
            return None
        m = self._cur.get(frame)
        if m is None:
            m = self._prev.get(frame)
            if m is None:
                return None
            self._cur[frame] = m
        self.repeats += 1
        return m

    def remember(self, frame: bytes, marker: Marker) -> None:
        self._cur[frame] = marker

    def forget_all(self) -> None:
        self._cur.clear()
        self._prev.clear()

    def statistics(self) -> MarkerMemoStatistics:
        return MarkerMemoStatistics(len(self._cur) + len(self._prev), self.repeats)


def feed_frames(
    frames: list[bytes], tracker: Tracker, memo: MarkerMemo, now: float, out: list[Envelope]
) -> None:
    """Decode fan-out ``frames`` (not heartbeats) into ``tracker``; deliverables into ``out``."""
    memo.rotate(now)
    for frame in frames:
        mark = memo.seen(frame)
        if mark is not None:  # a repeat: nothing to do when the channel is exactly there
            if tracker.state(mark.channel) is not State.LIVE or tracker.position(mark.channel) != (
                mark.epoch,
                mark.last_seq,
            ):
                tracker.on_marker(mark, out)
            continue
        try:
            msg = decode_frame(frame)
        except RemoteProtocolError as exc:
            log.warning("bad frame from broker: %s", exc.reason)
            continue
        if isinstance(msg, Envelope):
            tracker.on_envelope(msg, out)
        else:
            tracker.on_marker(msg, out)
            memo.remember(frame, msg)
