"""The broker's per-message path with many channels, without the network (issue 16).

HTTP publish bodies of 100 items spread round ``--channels`` live channels -> the publish API's
parse (``handle_request``) -> ``Pipeline.publish`` (rate limits, sequencer, memory store,
fan-out on a real ZeroMQ XPUB, a Pushpin-style ``message`` stats packet per message on a PUB)
-> a heartbeat with its trailing markers every ``--rate`` items (one second's worth).  A SUB on
each socket takes every frame.  Prints CPU microseconds per item of this process in each stage
(``time.process_time``: less moved by other work on the machine than wall time).

    .venv/bin/python -m bench.msgpath [--channels 10000] [--rate 2500] [--items 50000]
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import trio
import zmq

from broker.config import Config
from broker.history import MemoryHistory
from broker.ingest.httpapi import handle_request
from broker.ingest.pipeline import Pipeline, PipelineSockets
from broker.ops.stats import StatsEncoder
from broker.runtime.zmqtrio import ZSocket
from broker.store.memory import MemoryStore


def _drain(s: zmq.Socket[bytes]) -> int:
    n = 0
    while True:
        try:
            s.recv(zmq.NOBLOCK)
            n += 1
        except zmq.Again:
            return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", type=int, default=10_000)
    ap.add_argument("--rate", type=int, default=2_500, help="items per heartbeat (default 2,500)")
    ap.add_argument("--items", type=int, default=50_000)
    a = ap.parse_args()
    ctx = zmq.Context()
    xpub, stats_pub = ctx.socket(zmq.XPUB), ctx.socket(zmq.PUB)
    sub, stats_sub = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    for s in (xpub, stats_pub):
        s.setsockopt(zmq.SNDHWM, 0)
    xpub.bind("inproc://msgpath-edge")
    stats_pub.bind("inproc://msgpath-stats")
    for s, addr in ((sub, "inproc://msgpath-edge"), (stats_sub, "inproc://msgpath-stats")):
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(addr)
        s.setsockopt(zmq.SUBSCRIBE, b"")
    xpub.recv()  # the subscription notice
    chans = [f"user-{i}" for i in range(a.channels)]
    enc = StatsEncoder()
    enc.edge_report({"edge": "e0", "full": True, "subs": [["stream", c, 1] for c in chans]}, 0.0)
    p = Pipeline(
        Config(),
        MemoryStore(MemoryHistory(max_items=100)),
        PipelineSockets(None, None, ZSocket(xpub, "edge_pub"), ZSocket(stats_pub, "stats")),  # type: ignore[arg-type]
        broker_id="bench",
        started=time.time(),
        uris={},
        stats=enc,
    )
    p.live.update(chans)
    bodies = []
    for b in range(a.items // 100):
        items = [
            {
                "channel": chans[k % a.channels],
                "id": f"i{k}",
                "formats": {"http-stream": {"content": f"data: {k}\n\n"}},
            }
            for k in range(b * 100, b * 100 + 100)
        ]
        bodies.append(json.dumps({"items": items}).encode())
    headers = [("Content-Type", "application/json")]
    stages = {"parse": 0.0, "publish": 0.0, "heartbeat": 0.0}
    n = len(bodies) * 100

    async def run() -> None:
        clock = time.process_time
        done = 0
        for body in bodies:
            t0 = clock()
            r = handle_request("POST", "/publish", headers, body)
            t1 = clock()
            await p.publish(r.items, strict=True)
            stages["parse"] += t1 - t0
            stages["publish"] += clock() - t1
            done += len(r.items)
            if done % a.rate == 0:
                t0 = clock()
                p.heartbeat()
                stages["heartbeat"] += clock() - t0
                _drain(sub)
                _drain(stats_sub)

    gc.freeze()
    trio.run(run)
    total = sum(stages.values())
    st = p.statistics()
    print(
        f"channels={a.channels} items={n} heartbeat every {a.rate} items: "
        f"{n / total:,.0f} items per CPU s; us per item: "
        + " ".join(f"{k} {v / n * 1e6:.2f}" for k, v in stages.items())
        + f" (total {total / n * 1e6:.2f}); fanned out {st.fanned_out}, "
        f"trailing markers {st.trailing_markers}"
    )
    for s in (xpub, stats_pub, sub, stats_sub):
        s.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    main()
