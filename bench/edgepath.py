"""The edge's fan-out reader alone (sans-IO, no sockets): CPU per delivered message of
``FrameFeeder.feed`` + the tracker for one edge holding half of ``--channels`` channels (one
client each), with messages published round the channels at ``--rate`` msgs/s, read in batches
of ``--batch`` frames, and the broker's trailing positions as this tree's wire sends them
(version 2: a marker frame per channel of this edge published in the last two heartbeats;
version 3: one heartbeat frame per second with the positions of every channel published since
the last one).  Every frame read here is also a ZeroMQ receive on the real edge (not counted).

    .venv/bin/python -m bench.edgepath [--channels 10000] [--rate 3000] [--seconds 10]
    PYTHONPATH=<other tree> .venv/bin/python <other tree>/bench/edgepath.py   # to compare
"""

from __future__ import annotations

import argparse
import gc
import time

from broker import wire
from broker.wire import Envelope
from edge.sync.markers import FrameFeeder
from edge.sync.tracker import Tracker

ap = argparse.ArgumentParser()
ap.add_argument("--channels", type=int, default=10000)
ap.add_argument("--rate", type=int, default=3000)
ap.add_argument("--seconds", type=int, default=10)
ap.add_argument("--batch", type=int, default=20)
a = ap.parse_args()
EPOCH = "0123456789abcdef"
chans = [f"user-{i}" for i in range(a.channels)]
mine = set(chans[::2])
t = Tracker()
for ch in mine:
    t.track(ch)
    t.on_position(ch, EPOCH, 0, [])
t.take_actions()
f = FrameFeeder(t)
seq = dict.fromkeys(chans, 0)
v3 = hasattr(wire, "encode_marks")
# the stream this edge receives, second by second (built before timing)
stream: list[list[bytes]] = []
k = 0
prev_round: dict[str, int] = {}
for s in range(a.seconds):
    frames = []
    this_round: dict[str, int] = {}
    for _ in range(a.rate):
        ch = chans[k % a.channels]
        k += 1
        seq[ch] += 1
        this_round[ch] = seq[ch]
        if ch in mine:
            frames.append(
                wire.encode_envelope(
                    Envelope(
                        ch,
                        seq[ch],
                        EPOCH,
                        {"http-stream": {"content": f"data: {k}\n\n"}},
                        None,
                        None,
                        {},
                        1.7e9,
                    )
                )
            )
    if v3:
        marks = [(ch, EPOCH, q) for ch, q in this_round.items()]
        frames.append(wire.encode_heartbeat("b", 1.0, 2.0, n=s + 1, marks=wire.encode_marks(marks)))
    else:
        frames.append(wire.encode_heartbeat("b", 1.0, 2.0))
        both = {**prev_round, **this_round}
        frames += [wire.encode_marker(ch, EPOCH, q) for ch, q in both.items() if ch in mine]
    prev_round = this_round
    stream.append(frames)
# the link passes heartbeats on only in version 3 (edge.sync.link)
nframes = sum(len(x) for x in stream)
gc.collect()
gc.freeze()
out: list[Envelope] = []
delivered = 0
t0 = time.process_time()
for frames in stream:
    if not v3:
        frames = [x for x in frames if not wire.is_heartbeat(x)]
    for i in range(0, len(frames), a.batch):
        f.feed(frames[i : i + a.batch], out)
        delivered += len(out)
        out.clear()
cpu = time.process_time() - t0
assert not t.take_actions(), "nothing may be lost here"
print(
    f"wire {wire.WIRE_VERSION}: {a.channels} channels, this edge {len(mine)}, {a.rate} msg/s x {a.seconds} s: "
    f"{nframes:,} frames read ({nframes / max(delivered, 1):.2f} per delivery), {delivered:,} delivered, "
    f"{cpu / delivered * 1e6:.2f} us CPU per delivery (feeder + tracker)"
)
# the heartbeats alone, read again through fresh feeders (their counters start over): every
# position is now at or below the delivered one, the steady state of the run above
hbs = [x for frames in stream for x in frames if wire.is_heartbeat(x)] if v3 else []
if hbs:
    reps = 5
    t1 = time.process_time()
    for _ in range(reps):
        f2 = FrameFeeder(t)
        for x in hbs:
            f2.feed([x], out)
    hb_cpu = (time.process_time() - t1) / (reps * len(hbs))
    assert not out and not t.take_actions(), "nothing may change here"
    print(
        f"  heartbeats: {len(hbs)} x {reps} read again, {a.rate} positions each: "
        f"{hb_cpu * 1e6:.0f} us CPU per heartbeat ({hb_cpu / a.rate * 1e9:.0f} ns per position)"
    )
