"""Broker memory per retained message (memory store): ``m_item`` of docs/capacity.md.

Messages spread round ``--channels`` channels are parsed as the publish API parses them (HTTP
bodies of 100 items) and appended to a ``MemoryHistory`` that never evicts; the process's
resident memory (VmRSS) before and after, over the count, is what each retained message costs,
allocator overhead included.  Run with and without publisher ids, and with the payload sizes
your messages have: the payload bytes add to the figure one for one.

    .venv/bin/python -m bench.histmem [--messages 500000] [--channels 10000] [--payload 0]
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import time
from typing import Any

from broker.history import MemoryHistory
from broker.items import parse_http_publish

BATCH = 100


def rss_bytes() -> int:
    """This process's resident memory (VmRSS, /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def body(start: int, channels: list[str], payload: int, ids: bool) -> bytes:
    """One publish body: items ``start`` .. ``start + BATCH - 1``, each on the next channel."""
    items: list[dict[str, Any]] = []
    pad = "x" * payload
    for k in range(start, start + BATCH):
        item: dict[str, Any] = {
            "channel": channels[k % len(channels)],
            "formats": {"http-stream": {"content": f"{pad}{k}\n"}},
        }
        if ids:
            item["id"] = f"msg-{k}"
        items.append(item)
    return json.dumps({"items": items}).encode()


def measure(messages: int, channels: int, payload: int, ids: bool) -> float:
    """RSS bytes per retained message (``messages`` rounded down to whole bodies)."""
    names = [f"user-{i}" for i in range(channels)]
    history = MemoryHistory(max_items=messages + 1, max_channels=channels + 1)
    n = messages // BATCH * BATCH
    gc.collect()
    before = rss_bytes()
    for start in range(0, n, BATCH):
        history.append_many(parse_http_publish(body(start, names, payload, ids)), time.time())
    gc.collect()
    after = rss_bytes()
    assert history.statistics().retained == n
    return (after - before) / n


def measure_apart(messages: int, channels: int, payload: int, ids: bool) -> float:
    """``measure`` in a process of its own (forked): memory freed by an earlier measurement
    stays in this process's allocator and would make a later one read low."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(measure, (messages, channels, payload, ids))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=500_000)
    ap.add_argument("--channels", type=int, default=10_000)
    ap.add_argument(
        "--payload", type=int, default=0, help="padding bytes added to each message's content"
    )
    a = ap.parse_args(argv)
    if a.messages < BATCH or a.channels < 1 or a.payload < 0:
        ap.error(f"--messages at least {BATCH}, --channels at least 1, --payload 0 or more")
    for ids in (True, False):
        per = measure_apart(a.messages, a.channels, a.payload, ids)
        print(
            f"{a.messages:,} messages over {a.channels:,} channels, content ~{a.payload + 7} B, "
            f"{'with' if ids else 'without'} publisher ids: "
            f"RSS per retained message {per:,.0f} B"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
