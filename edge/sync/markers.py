"""The edge's fan-out reader, with position markers checked without decoding them (sans-IO;
issue 16).

The broker re-sends a channel's position marker in the two heartbeats after the channel was
published (``broker.ingest.pipeline``: so that an edge that lost the tail of a burst notices).
With many channels these markers outnumber the messages, and nearly all of them tell an edge
what it already has: the channel's delivered position.  ``FrameFeeder.feed`` compares a marker's
bytes with the marker of the channel's delivered position (``Tracker.position``), built the way
``broker.wire.encode_marker`` writes it; when they are equal and the channel is ``LIVE`` the
marker is skipped: the tracker would only find its target unchanged.  Every other marker (the
edge is behind it: a lost tail; the channel is positioning or replaying; another epoch) is
decoded and goes to the tracker as before, so a lost tail is still found by the first marker
that reaches the edge.

A marker frame found current is remembered (a bounded set, cleared when full): the broker's
second round sends the same bytes when the channel was not published in between, and those
are skipped by one set lookup.  Such a marker can no longer tell anything: the channel's
position only moves forward within its epoch (the marker's ``last_seq`` is at most the
delivered position), and the track's epoch only changes through a broker answer, which makes
the remembered epoch the older one.  (A channel untracked and tracked again is positioned by
its position answer.)

The one difference: after a replay that failed (the broker down), a marker equal to the
delivered position no longer re-asks at once for a gap found by other means; the tracker's
periodic ``repair()`` asks then, as it does for every such gap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgpack

from broker.errors import RemoteProtocolError
from broker.wire import SEP, Envelope, decode_frame
from edge.sync.tracker import Tracker

log = logging.getLogger(__name__)

# a marker's map as the broker writes it (``broker.wire.encode_marker``): fixmap 3, "marker":
# True, "epoch": str, "last_seq": int
MARKER_BODY = b"\x83\xa6marker\xc3"
_K_EPOCH = b"\xa5epoch"
_K_LAST_SEQ = b"\xa8last_seq"
_pack = msgpack.Packer(use_bin_type=True).pack
SEEN_MAX = 32_768  # marker frames remembered as found current


@dataclass(frozen=True, slots=True)
class FeederStatistics:
    frames: int
    markers_current: int  # markers equal to the channel's delivered position: skipped
    markers_decoded: int
    markers_repeated: int = 0  # of markers_current: the same bytes as one found current before


class FrameFeeder:
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._frames = 0
        self._current = 0
        self._decoded = 0
        self._repeated = 0
        # marker frames found current (bounded: cleared when full): the broker's second round
        # repeats the first one's bytes when nothing was published in between
        self._seen: set[bytes] = set()

    def feed(self, frames: list[bytes], out: list[Envelope], now: float = 0.0) -> None:
        """Decode fan-out ``frames`` (not heartbeats) into the tracker; deliverables into
        ``out``; ``now`` starts the tracker's reorder windows (several brokers)."""
        tracker = self.tracker
        live_position = tracker.live_position
        on_envelopes = tracker.on_envelopes
        seen = self._seen
        envs: list[Envelope] = []  # envelopes in a row: one tracker call for them all
        self._frames += len(frames)
        for frame in frames:
            i = frame.find(SEP)
            if i > 0 and frame.startswith(MARKER_BODY, i + 1):
                if frame in seen:
                    self._current += 1
                    self._repeated += 1
                    continue
                if envs:  # the envelopes before the marker first: they move the position
                    on_envelopes(envs, out, now)
                    envs = []
                try:
                    channel = frame[:i].decode("utf-8")
                except UnicodeDecodeError:
                    channel = ""  # decode_frame reports it
                pos = live_position(channel) if channel else None
                if pos is not None:
                    tail = b"".join(
                        (MARKER_BODY, _K_EPOCH, _pack(pos[0]), _K_LAST_SEQ, _pack(pos[1]))
                    )
                    # the channel (up to the first separator) is this one: the rest decides
                    if len(frame) == i + 1 + len(tail) and frame.endswith(tail):
                        self._current += 1
                        if len(seen) >= SEEN_MAX:
                            seen.clear()
                        seen.add(frame)
                        continue
                self._decoded += 1
            try:
                msg = decode_frame(frame)
            except RemoteProtocolError as exc:
                log.warning("bad frame from broker: %s", exc.reason)
                continue
            if isinstance(msg, Envelope):
                envs.append(msg)
            else:
                if envs:  # what came before the marker goes first
                    on_envelopes(envs, out, now)
                    envs = []
                tracker.on_marker(msg, out, now)
        if envs:
            on_envelopes(envs, out, now)

    def statistics(self) -> FeederStatistics:
        return FeederStatistics(self._frames, self._current, self._decoded, self._repeated)
