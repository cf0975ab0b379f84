"""Publish rate with and without channel API load (docs/channel-api.md).

    .venv/bin/python -m bench.channelapi_load [--seconds 8] [--store redis://127.0.0.1:6379/0] [--status]

Starts one broker (no edges), fills a channel with 1,000 retained messages, then runs two
phases of ``--seconds`` each: HTTP publishers alone (``--publishers`` threads, one item per
request, as fast as answered), then the same with ``--rate`` channel API requests a second in
flight (history pages of 100 items, channel state, the live-channel listing, in turn).  Prints
per phase: publishes/s, the broker's CPU seconds per publish (from /proc), and the API
requests' rate and p50/p99 latency (made from ``--api-procs`` processes of their own), and the
broker CPU per API request (its CPU beyond what the publishes took alone).  ``--status`` adds
the status page's ``/status/data`` to the requests' rotation.  Last, the publish path's own cost:
broker CPU per publish alone, and under the API load net of the API's own CPU (measured in the
"API alone" phase), with publishes per broker CPU second: the figures the machine's noise moves
least.  One run each; the machine's noise applies.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.procs import NotifySocket, cpu_s, free_ports

HISTORY_ITEMS = 1000


def start_broker(store: str) -> tuple[subprocess.Popen, NotifySocket, int, str]:
    ports = free_ports(5)
    keys = ("push_in_port", "http_port", "sub_in_port", "command_port", "edge_pub_port")
    cfg = dict(zip(keys, ports))
    tmp = tempfile.mkdtemp(prefix="gc-chapi-")
    lines = [f"{k} = {v}" for k, v in cfg.items()]
    lines += [f"edge_ctl_port = {free_ports(1)[0]}", f'store = "{store}"', 'log_level = "warning"']
    path = Path(tmp) / "gripcast.toml"
    path.write_text("\n".join(lines) + "\n")
    notify = NotifySocket()
    import os

    env = dict(os.environ, NOTIFY_SOCKET=notify.path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gripcast", "broker", "--config", str(path)], env=env
    )
    notify.wait_ready(proc, 30)
    return proc, notify, cfg["http_port"], tmp


def item(channel: str, text: str) -> dict:
    return {"channel": channel, "formats": {"http-stream": {"content": text}}}


def publishers(base: str, n: int, seconds: float) -> int:
    if n == 0:
        time.sleep(seconds)
        return 0
    done = [0] * n
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        with httpx.Client(timeout=10) as c:
            while time.monotonic() < stop:
                r = c.post(base + "/publish/", json={"items": [item(f"pub{i}", "x\n")]})
                r.raise_for_status()
                done[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


PATHS = ["/channels/hist/items?limit=100", "/channels/hist", "/channels?limit=100"]


def api_load(base: str, rate: float, seconds: float, out: Any, paths: list[str] = PATHS) -> None:
    """In its own process (the publishers' GIL stays theirs): ``rate`` requests a second for
    ``seconds``; puts the latencies on ``out``."""
    lat: list[float] = []
    stop = time.monotonic() + seconds
    with httpx.Client(timeout=10) as c:
        i = 0
        nxt = time.monotonic()
        while time.monotonic() < stop:
            t0 = time.monotonic()
            r = c.get(base + paths[i % len(paths)])
            r.raise_for_status()
            lat.append(time.monotonic() - t0)
            i += 1
            nxt += 1 / rate
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    out.put(lat)


def phase(
    proc: subprocess.Popen, base: str, args: argparse.Namespace, rate: float, api_only: bool = False
) -> dict:
    lat: list[float] = []
    procs = []
    results: Any = multiprocessing.Queue()
    if rate:
        per = rate / args.api_procs
        procs = [
            multiprocessing.Process(
                target=api_load,
                args=(base, per, args.seconds + 1.0, results, args.paths),
                daemon=True,
            )
            for _ in range(args.api_procs)
        ]
        for p in procs:
            p.start()
        time.sleep(0.5)  # the API load runs before and after the measured publishes
    cpu0 = cpu_s(proc.pid)
    t0 = time.monotonic()
    n = publishers(base, args.publishers if not api_only else 0, args.seconds)
    wall = time.monotonic() - t0
    cpu = cpu_s(proc.pid) - cpu0
    for _ in procs:
        lat.extend(results.get(timeout=60))
    for p in procs:
        p.join(10)
    out = {"publishes_per_s": n / wall, "broker_cpu_us_per_publish": cpu / max(n, 1) * 1e6}
    if api_only:
        out = {"broker_cpu_s_per_s": cpu / wall}
    out["_publishes"], out["_cpu_s"], out["_wall"] = n, cpu, wall
    if lat:
        lat.sort()
        span = args.seconds + 1.0
        out["_api"] = len(lat) * wall / span  # the requests made during the measured window
        out["api_per_s"] = len(lat) / span
        out["api_p50_ms"] = statistics.median(lat) * 1000
        out["api_p99_ms"] = lat[int(len(lat) * 0.99) - 1] * 1000
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--rate", type=float, default=100.0, help="API requests per second")
    ap.add_argument("--api-procs", type=int, default=2, help="processes making API requests")
    ap.add_argument("--store", default="memory")
    ap.add_argument("--status", action="store_true", help="also GET /status/data in turn")
    args = ap.parse_args()
    args.paths = PATHS + (["/status/data"] if args.status else [])
    proc, notify, port, _ = start_broker(args.store)
    base = f"http://127.0.0.1:{port}"
    try:
        httpx.post(
            base + "/publish/",
            json={"items": [item("hist", f"message {i}\n") for i in range(HISTORY_ITEMS)]},
        ).raise_for_status()
        alone = loaded = None
        for name, rate in (("publish alone", 0.0), (f"with {args.rate:g} API req/s", args.rate)):
            res = phase(proc, base, args, rate)
            if alone is None:
                alone = res
            else:
                loaded = res
            # the broker CPU per API request
            if res is loaded and res.get("_api") and "_publishes" in res:
                per_pub = alone["_cpu_s"] / max(alone["_publishes"], 1)
                extra = res["_cpu_s"] - res["_publishes"] * per_pub
                res["broker_cpu_us_per_api_request"] = extra / res["_api"] * 1e6
            shown = {k: v for k, v in res.items() if not k.startswith("_")}
            print(f"{name:24s} " + "  ".join(f"{k}={v:.1f}" for k, v in shown.items()))
        res = phase(proc, base, args, args.rate, api_only=True)
        res["broker_cpu_us_per_api_request"] = res["broker_cpu_s_per_s"] / res["api_per_s"] * 1e6
        shown = {k: v for k, v in res.items() if not k.startswith("_")}
        print(f"{'API alone':24s} " + "  ".join(f"{k}={v:.3f}" for k, v in shown.items()))
        assert alone is not None and loaded is not None
        per_alone = alone["_cpu_s"] / max(alone["_publishes"], 1)
        api_cpu = res["broker_cpu_s_per_s"] * loaded["_wall"]  # the API's own, at the same rate
        net = (loaded["_cpu_s"] - api_cpu) / max(loaded["_publishes"], 1)
        print(
            f"{'publish path':24s} broker_cpu_us_per_publish alone={per_alone * 1e6:.1f} "
            f"under_api_load_net={net * 1e6:.1f}  publishes_per_broker_cpu_s "
            f"alone={1 / per_alone:.0f} under_api_load_net={1 / max(net, 1e-9):.0f}"
        )
    finally:
        proc.terminate()
        proc.wait(10)
        notify.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
