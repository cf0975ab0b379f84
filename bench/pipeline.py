"""The broker's ingest pipeline without sockets: parse -> ``Sequencer.add_many`` ->
``MemoryStore.append_batch`` -> ``wire.encode_envelopes``, in batches of about 1,000 items, as
the broker's PULL task runs it.  It tells the pipeline's own cost (items per CPU second, and
microseconds per item in each stage) apart from ZeroMQ, trio and the load generator.

    .venv/bin/python -m bench.pipeline [J|tnet|M|B100 ...] [--items N] [--reps R]

Inputs: ``J`` (J + JSON per item), ``tnet`` (a bare tnetstring per item), ``M`` (M + one msgpack
item), ``B100`` (B + a msgpack array of 100 items).  Times are CPU time of this process
(``time.process_time``), best of ``--reps``, with the broker's GC thresholds.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import msgpack
import trio

from broker import wire
from broker.history import MemoryHistory
from broker.ingest import tnetstring
from broker.ingest.pipeline import BATCH_MAX
from broker.items import parse_pull_frame
from broker.sequencer import Sequencer
from broker.server import GC_THRESHOLD
from broker.store.memory import MemoryStore

INPUTS = ("J", "tnet", "M", "B100")


def frames_for(name: str, n: int) -> tuple[list[bytes], int]:
    payloads = [
        {"channel": "bench", "id": f"i{k}", "formats": {"http-stream": {"content": f"item {k}\n"}}}
        for k in range(n)
    ]
    if name == "J":
        return [b"J" + json.dumps(p).encode() for p in payloads], 1
    if name == "tnet":
        return [tnetstring.dumps(p) for p in payloads], 1
    if name == "M":
        return [b"M" + msgpack.packb(p) for p in payloads], 1
    if name == "B100":
        return [b"B" + msgpack.packb(payloads[i : i + 100]) for i in range(0, n, 100)], 100
    raise ValueError(name)


def run_once(frames: list[bytes], per_frame: int, n: int) -> tuple[float, dict[str, float]]:
    seq = Sequencer()
    store = MemoryStore(MemoryHistory(max_items=n))
    stage = dict(parse=0.0, sequence=0.0, store=0.0, encode=0.0)
    step = max(1, BATCH_MAX // per_frame)

    async def main() -> float:
        clock = time.process_time
        t0 = clock()
        for i in range(0, len(frames), step):
            a = clock()
            items: list = []
            for f in frames[i : i + step]:
                items += parse_pull_frame(f)[0]
            b = clock()
            released = seq.add_many(items, trio.current_time())
            c = clock()
            envs = await store.append_batch(released, time.time())
            d = clock()
            wire.encode_envelopes(envs)
            e = clock()
            stage["parse"] += b - a
            stage["sequence"] += c - b
            stage["store"] += d - c
            stage["encode"] += e - d
        return clock() - t0

    elapsed = trio.run(main)
    return n / elapsed, {k: round(v / n * 1e6, 2) for k, v in stage.items()}


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("inputs", nargs="*", help=f"any of {', '.join(INPUTS)} (default: all)")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    bad = [i for i in args.inputs if i not in INPUTS]
    if bad:
        p.error(f"unknown input {bad[0]!r}: choose from {', '.join(INPUTS)}")
    gc.set_threshold(*GC_THRESHOLD)
    for name in args.inputs or INPUTS:
        frames, per_frame = frames_for(name, args.items)
        rate, stages = max(
            (run_once(frames, per_frame, args.items) for _ in range(args.reps)), key=lambda r: r[0]
        )
        print(f"{name:5s} {rate:10,.0f} items per CPU second   us/item {stages}")


if __name__ == "__main__":
    main()
