"""Append throughput of the Redis store: standalone vs Redis Cluster (docs/redis.md).

    python -m bench.redis_store                      # spawns a standalone redis-server and a
                                                     # 3-master 3-replica cluster, runs both
    python -m bench.redis_store --url redis://h:6379/0 --url redis+cluster://h:7000

For each store: ``--seconds`` of back-to-back ``append_batch`` calls (batches of ``--batch``
items spread over ``--channels`` channels, ``--tasks`` stores appending at once, each like one
broker), then items/s, the bench process's CPU seconds per 1000 items, and the Redis servers'
CPU seconds per 1000 items (``INFO cpu`` deltas summed over the masters).  Sequencing in Redis
is on (ids, as a broker does) unless ``--no-shared``.  On a shared machine the figures are noisy: compare the CPU
columns rather than items/s.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time
from typing import Any

import trio

from broker.items import Item
from broker.sequencer import Sequencer
from broker.store.cluster import is_cluster_url, parse_cluster_url
from broker.store.clusterclient import RedisClusterClient
from broker.store.redis import RedisStore
from broker.store.redisclient import RedisClient, parse_redis_url


def _client(url: str) -> RedisClient | RedisClusterClient:
    if is_cluster_url(url):
        return RedisClusterClient(parse_cluster_url(url), timeout_s=10.0)
    host, port, db, password = parse_redis_url(url)
    return RedisClient(host, port, db, password=password, timeout_s=10.0)


async def _server_cpu(url: str) -> float:
    """used_cpu_sys + used_cpu_user summed over the masters (seconds)."""
    if is_cluster_url(url):
        probe = RedisClusterClient(parse_cluster_url(url), timeout_s=10.0)
        await probe.refresh(force=True)
        nodes = probe.masters()
        await probe.aclose()
    else:
        host, port, _, _ = parse_redis_url(url)
        nodes = [(host, port)]
    total = 0.0
    for host, port in nodes:
        async with RedisClient(host, port, timeout_s=10.0) as c:
            text = (await c.execute("INFO", "cpu")).decode()
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        total += float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])
    return total


async def run(
    url: str, seconds: float, batch: int, channels: int, tasks: int, shared: bool = True
) -> dict[str, Any]:
    n = itertools.count()
    prefix = f"bench{time.time_ns()}:"
    appended = 0
    cpu0 = await _server_cpu(url)
    t_cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = trio.current_time() + seconds

    async def worker(w: int) -> None:
        nonlocal appended
        client = _client(url)
        if shared:
            store = RedisStore(client, key_prefix=prefix, id_cache_ttl_s=60.0, check_prev_id=True)
            store.attach_sequencer(Sequencer())
        else:
            store = RedisStore(client, key_prefix=prefix)
        try:
            while trio.current_time() < deadline:
                items = []
                for _ in range(batch):
                    k = next(n)
                    items.append(
                        Item(
                            f"ch{k % channels}",
                            {"http-stream": {"action": "send", "content": b"x" * 100}},
                            id=f"{w}-{k}",
                        )
                    )
                appended += len(await store.append_batch(items, time.time()))
        finally:
            await client.aclose()

    async with trio.open_nursery() as nursery:
        for w in range(tasks):
            nursery.start_soon(worker, w)
    wall = time.perf_counter() - t0
    bench_cpu = time.process_time() - t_cpu0
    server_cpu = await _server_cpu(url) - cpu0
    return {
        "url": url,
        "items": appended,
        "items_per_s": appended / wall,
        "bench_cpu_s_per_1k": 1000 * bench_cpu / max(appended, 1),
        "redis_cpu_s_per_1k": 1000 * server_cpu / max(appended, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.redis_store", description=__doc__)
    ap.add_argument("--url", action="append", default=[], help="a store URL (repeatable)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--channels", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=3, help="stores appending at once")
    ap.add_argument(
        "--no-shared", action="store_true", help="without sequencing in Redis (ids, prev-id)"
    )
    args = ap.parse_args(argv)
    with contextlib.ExitStack() as stack:
        urls = list(args.url)
        if not urls:
            from bench.redisprocs import RedisCluster, StandaloneRedis

            srv = stack.enter_context(StandaloneRedis())
            cluster = stack.enter_context(RedisCluster())
            urls = [srv.url(), cluster.url()]
        print(
            f"{'store':<60} {'items':>8} {'items/s':>9} {'bench cpu ms/1k':>16} {'redis cpu ms/1k':>16}"
        )
        for url in urls:
            r = trio.run(
                run, url, args.seconds, args.batch, args.channels, args.tasks, not args.no_shared
            )
            print(
                f"{r['url']:<60} {r['items']:>8} {r['items_per_s']:>9.0f} "
                f"{1000 * r['bench_cpu_s_per_1k']:>16.1f} {1000 * r['redis_cpu_s_per_1k']:>16.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
