"""The edge's fan-out reader (sans-IO; issue 16): channel frames, position markers and the
heartbeats' trailing positions, in link order.

Trailing positions (``broker.wire`` version 3).  Each broker heartbeat carries the positions
``(channel, epoch, last_seq)`` of the live channels published since the previous one, packed in
the heartbeat frame itself (``wire.decode_marks``), so that an edge that lost the tail of a
burst over PUB/SUB (HWM, a reconnect) notices the gap although nothing more is published on the
channel.  ``edge.sync.link`` hands each heartbeat on in link order, after the frames that came
before it (so a position never overtakes the messages it counts); ``FrameFeeder`` passes its
packed positions to ``Tracker.on_packed_marks``: ``_speedups.held_marks`` checks every entry
in one walk over the bytes and keeps only the channels tracked here and not yet delivered up to
their position (the compiled twin builds nothing for the others: with several edges most
positions are of channels another edge holds), and ``Tracker.on_marks`` treats each kept one as
a marker (a lost tail: a replay).  The positions are sent once: the heartbeat's counter ``n`` (per broker
process) shows a lost heartbeat frame, and with it lost positions; the feeder then asks every
tracked channel's position (``Tracker.resync``), as after a broker restart, so the guarantee
is the one the per-channel markers repeated over two heartbeats gave (wire version 2), at one
frame per heartbeat instead of one or two frames per published channel.

Channel frames are decoded a batch at a time (``_speedups.decode_envelopes``: one call, the
compiled twin reading each frame without a Python call per field); what it does not take as
an envelope of exactly the wire's types (markers, heartbeats, bad frames) is read here.

Position markers (one frame on the channel's topic) remain for the broker's answers to a
subscription and its re-announcements after a store failure.  ``FrameFeeder.feed`` compares a
marker's bytes with the marker of the channel's delivered position (``Tracker.live_position``),
built the way ``broker.wire.encode_marker`` writes it; when they are equal and the channel is
``LIVE`` the marker is skipped: the tracker would only find its target unchanged.  Every other
marker (the edge is behind it: a lost tail; the channel is positioning or replaying; another
epoch) is decoded and goes to the tracker.  A marker frame found current is remembered (a
bounded set, cleared when full): such a marker can no longer tell anything, since the
channel's position only moves forward within its epoch, and the track's epoch only changes
through a broker answer.  (A channel untracked and tracked again is positioned by its
position answer.)

The one difference from deciding every marker in the tracker: after a replay that failed (the
broker down), a marker or trailing position at or below the delivered position no longer
re-asks at once for a gap found by other means; the tracker's periodic ``repair()`` asks then,
as it does for every such gap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

import msgpack

from _speedups import decode_envelopes, first_none
from broker.errors import RemoteProtocolError
from broker.wire import HEARTBEAT_TOPIC, SEP, Envelope, decode_frame, decode_heartbeat
from edge.sync.tracker import Tracker

log = logging.getLogger(__name__)

# a marker's map as the broker writes it (``broker.wire.encode_marker``): fixmap 3, "marker":
# True, "epoch": str, "last_seq": int
MARKER_BODY = b"\x83\xa6marker\xc3"
_K_EPOCH = b"\xa5epoch"
_K_LAST_SEQ = b"\xa8last_seq"
_pack = msgpack.Packer(use_bin_type=True).pack
SEEN_MAX = 32_768  # marker frames remembered as found current
BROKERS_MAX = 256  # broker ids whose heartbeat counter is remembered (cleared when full)


@dataclass(frozen=True, slots=True)
class FeederStatistics:
    frames: int
    markers_current: int  # markers equal to the channel's delivered position: skipped
    markers_decoded: int
    markers_repeated: int = 0  # of markers_current: the same bytes as one found current before
    heartbeats: int = 0  # heartbeat frames read (their trailing positions)
    marks: int = 0  # trailing positions read from heartbeats
    marks_current: int = 0  # of marks: at the channel's delivered position (or not tracked)
    heartbeats_missed: int = 0  # heartbeat frames lost (a gap in a broker's counter)
    resyncs: int = 0  # resyncs asked because heartbeat frames (and their positions) were lost


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
        self._hb_n: dict[str, int] = {}  # broker id -> the counter of its last heartbeat read
        self._heartbeats = self._marks = self._marks_current = 0
        self._hb_missed = self._resyncs = 0

    def feed(self, frames: list[bytes], out: list[Envelope], now: float = 0.0) -> None:
        """Decode fan-out ``frames`` (not heartbeats) into the tracker; deliverables into
        ``out``; ``now`` starts the tracker's reorder windows (several brokers)."""
        tracker = self.tracker
        live_position = tracker.live_position
        on_envelopes = tracker.on_envelopes
        seen = self._seen
        envs: list[Envelope] = []  # envelopes in a row: one tracker call for them all
        self._frames += len(frames)
        # the whole batch's envelopes in one call; None: a marker, a heartbeat, a bad frame
        # (or an envelope of other types), read below
        decoded = decode_envelopes(frames, Envelope)
        if first_none(decoded) < 0:  # every frame an envelope (the usual batch): one call
            on_envelopes(cast("list[Envelope]", decoded), out, now)
            return
        for frame, env in zip(frames, decoded, strict=True):
            if env is not None:
                envs.append(env)
                continue
            i = frame.find(SEP)
            if i == 0:  # a broker topic: only heartbeats reach here (edge.sync.link)
                if frame.startswith(HEARTBEAT_TOPIC):
                    if envs:  # what came before the heartbeat goes first
                        on_envelopes(envs, out, now)
                        envs = []
                    self._heartbeat(frame, out, now)
                continue
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

    def _heartbeat(self, frame: bytes, out: list[Envelope], now: float) -> None:
        """A heartbeat read in link order: check its counter, then its trailing positions."""
        try:
            hb = decode_heartbeat(frame)
        except RemoteProtocolError:
            return  # logged by the link, which read it first
        self._heartbeats += 1
        self._frames -= 1  # counted as a heartbeat, not as a fan-out frame
        if hb.n > 0:
            last = self._hb_n.get(hb.broker_id)
            if last is not None and hb.n != last + 1:
                # heartbeat frames were lost (HWM, a reconnect), and the positions they carried
                # with them: ask every tracked channel's position, as after a broker restart
                self._hb_missed += max(hb.n - last - 1, 1)
                self._resyncs += 1
                log.warning(
                    "heartbeats lost broker_id=%s after=%d got=%d: resync of %d channel(s)",
                    hb.broker_id,
                    last,
                    hb.n,
                    self.tracker.statistics().channels,
                )
                self.tracker.resync()
            elif len(self._hb_n) >= BROKERS_MAX and hb.broker_id not in self._hb_n:
                self._hb_n.clear()
            self._hb_n[hb.broker_id] = hb.n
        if not hb.marks:
            return
        try:
            read, current = self.tracker.on_packed_marks(hb.marks, out, now)
        except RemoteProtocolError as exc:
            log.warning("bad heartbeat positions from broker: %s; resync", exc.reason)
            self._resyncs += 1
            self.tracker.resync()
            return
        self._marks += read
        self._marks_current += current

    def statistics(self) -> FeederStatistics:
        return FeederStatistics(
            self._frames,
            self._current,
            self._decoded,
            self._repeated,
            self._heartbeats,
            self._marks,
            self._marks_current,
            self._hb_missed,
            self._resyncs,
        )
