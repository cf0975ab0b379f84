"""A heartbeat's trailing positions, kept for the channels this edge holds (issue 16).

``held_marks(data, tracks, live)`` reads ``broker.wire.encode_marks``'s packed array of
``[channel, epoch, last_seq]`` exactly as ``broker.wire.decode_marks`` does (any bad entry, or
bytes that are not one such array, raise ``RemoteProtocolError``: the edge then resyncs) and
returns ``(count, selected)``: ``count`` the positions read, ``selected`` those, in order, as
``(channel, epoch, last_seq)`` tuples, whose channel is a key of ``tracks`` and whose track is
not already delivered up to them.  A track (``edge.sync.tracker._Track``: attributes
``state``, ``epoch``, ``last_seq``) is delivered up to a position when ``state is live``, its
epoch is the position's and ``last_seq >= `` the position's.

The compiled twin (``_marks_c``) walks the msgpack bytes once, checking every entry, and
builds no Python object for a position it does not return: an ASCII channel of up to 64 bytes
is looked up in ``tracks`` through a reused probe ``str`` (others through a new one), and a
held track's three attributes are read at their slot offsets when they are plain
``__slots__``; this twin decodes them all (``decode_marks``) and filters.  Both return equal results and raise on the same inputs
(tests/speedups/test_marks.py).
"""

from __future__ import annotations

from typing import Any

# the contract, read at call time (``broker.wire`` imports ``_speedups``)
from broker import wire as _wire


def held_marks(
    data: bytes, tracks: dict[str, Any], live: object
) -> tuple[int, list[tuple[str, str, int]]]:
    marks = _wire.decode_marks(data)
    out: list[tuple[str, str, int]] = []
    for m in marks:
        t = tracks.get(m[0])
        if t is None or (t.state is live and m[1] == t.epoch and m[2] <= t.last_seq):
            continue
        out.append(m)
    return len(marks), out
