"""Several brokers on one real redis-server (docs/cluster.md), with real processes and clients.

Two brokers share the Redis store; two edges list both (``brokers``); SSE and WebSocket clients
(a few dozen, spread over both edges) hold channel ``c``.  Two publishers, one per broker,
publish over HTTP and record what was acknowledged; broker 1 is killed with SIGKILL while
both publish, then restarted while broker 0 runs.  Every client must get the same sequence:
every acknowledged message exactly once, each publisher's messages in its order (and what was
not acknowledged either everywhere or nowhere, which "the same sequence" implies).  Then the
tail: a message is stored in Redis by a "broker" that never sends it (this test), and broker
1 is killed again: the edges, having lost a broker, resync from broker 0 and deliver it.

Also, cheaply: a second broker on the memory store is refused at start (``gripcast broker``
with ``brokers`` listing two), and an edge listing two brokers refuses one whose hello says it
keeps channels in memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest
import trio
import websockets

from broker.errors import EXIT_CONFIG
from broker.items import parse_http_publish
from gripcast.runner import BROKER_PORT_KEYS
from tests.helpers import free_port_block, free_ports, wait_for
from tests.integration.cluster import (
    Origin,
    Proc,
    StreamClient,
    broker_configs,
    gripcast,
    start_brokers_edges,
    write_config,
)
from tests.integration.wsorigin import WohOriginApp
from tests.redis_server import RedisServer, redis_available

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

BROKER_KEYS = BROKER_PORT_KEYS  # a broker's ports (gripcast.runner's, one list)
# clients per edge and transport: a few dozen in all for CI; GRIPCAST_BROKERS_CLIENTS=100
# (per edge and transport: 400 clients) is the heavier manual mode
SSE_PER_EDGE = WS_PER_EDGE = int(os.environ.get("GRIPCAST_BROKERS_CLIENTS", "6"))


def broker_ports(base: int) -> dict[str, int]:
    return {k: base + i for i, k in enumerate(BROKER_KEYS)}


def sse(req):
    return (
        200,
        {"Content-Type": "text/event-stream", "Grip-Hold": "stream", "Grip-Channel": "c"},
        b":ok\n\n",
    )


class Swarm:
    """SSE and WebSocket clients in one asyncio loop (a thread); ``got[name]``: the payloads
    each received, in order."""

    def __init__(self, sse_urls: list[str], ws_urls: list[str]) -> None:
        self.got: dict[str, list[str]] = {}
        self.errors: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._tasks: list[asyncio.Task] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._run(self._start(sse_urls, ws_urls))

    def _run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self, sse_urls, ws_urls) -> None:
        self._handshakes = asyncio.Semaphore(16)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_connections=len(sse_urls) + 1),
        )
        for i, url in enumerate(sse_urls):
            self._spawn(f"sse{i}", self._sse(f"sse{i}", url))
        for i, url in enumerate(ws_urls):
            self._spawn(f"ws{i}", self._ws(f"ws{i}", url))

    def _spawn(self, name: str, coro) -> None:
        self.got[name] = []
        self._tasks.append(self._loop.create_task(coro))

    async def _sse(self, name: str, url: str) -> None:
        try:
            async with self._http.stream("GET", url) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        self.got[name].append(line[6:])
        except (httpx.HTTPError, OSError) as exc:
            self.errors.append(f"{name}: {exc!r}")
        self.errors.append(f"{name}: stream ended")

    async def _ws(self, name: str, url: str) -> None:
        try:
            async with self._handshakes:  # the origin is a thread of this process: pace it
                ws = await websockets.connect(url, open_timeout=30)
            try:
                async for msg in ws:
                    self.got[name].append(msg if isinstance(msg, str) else msg.decode())
            finally:
                await ws.close()
        except (websockets.WebSocketException, OSError) as exc:
            self.errors.append(f"{name}: {exc!r}")
        self.errors.append(f"{name}: closed")

    def close(self) -> None:
        async def stop() -> None:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._http.aclose()

        try:
            self._run(stop(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()


class Brokers:
    """The cluster of this module: redis, two brokers, two edges, the origins."""

    def __init__(self, tmp) -> None:
        self.redis = RedisServer().start()
        self.origin = Origin({"/sse": sse}).__enter__()
        self.woh = WohOriginApp().__enter__()
        self.url = f"redis://127.0.0.1:{self.redis.port}/0"
        base = free_port_block(16)
        self.ports = [broker_ports(base), broker_ports(base + 10)]
        self.client_ports = free_ports(2)
        routes = [
            f"*,path_beg=/ws 127.0.0.1:{self.woh.port},over_http",
            f"* 127.0.0.1:{self.origin.port}",
        ]
        self.configs = broker_configs(tmp, self.ports, routes, self.url)
        self.metrics_port = free_port_block(2)  # edge i's /metrics on metrics_port + i
        with open(self.configs[0], "a") as fh:  # the edges' config
            fh.write(f"edge_metrics_port = {self.metrics_port}\n")
        self.brokers: list[Proc | None] = [None, None]
        self.edges: list[Proc] = []

    def start(self) -> None:
        """Every process at once (edges retry their brokers until they answer)."""
        brokers, self.edges = start_brokers_edges(self.configs, self.client_ports)
        self.brokers = list(brokers)

    def start_broker(self, i: int, wait: bool = True) -> None:
        self.brokers[i] = p = Proc(gripcast("broker", "--config", self.configs[i]))
        if wait:
            p.wait_ready()

    def kill_broker(self, i: int) -> None:
        p = self.brokers[i]
        assert p is not None
        os.kill(p.proc.pid, signal.SIGKILL)
        p.proc.wait()
        p.notify.close()
        self.brokers[i] = None

    def publish_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]['http_port']}/publish/"

    def close(self) -> None:
        for p in [*reversed(self.edges), *self.brokers]:
            if p is not None:
                p.stop()
        self.woh.__exit__(None, None, None)
        self.origin.__exit__(None, None, None)
        self.redis.close()


@pytest.fixture(scope="module")
def brokers(tmp_path_factory):
    if not redis_available():
        pytest.skip("redis-server not installed")
    b = Brokers(tmp_path_factory.mktemp("brokers"))
    try:
        b.start()
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def swarm(brokers):
    sse_urls, ws_urls = [], []
    for port in brokers.client_ports:
        sse_urls += [f"http://127.0.0.1:{port}/sse"] * SSE_PER_EDGE
        ws_urls += [f"ws://127.0.0.1:{port}/ws?channel=c"] * WS_PER_EDGE
    s = Swarm(sse_urls, ws_urls)
    try:
        # every client subscribed: each has seen a warm-up message
        http = httpx.Client(timeout=5)
        k = 0
        deadline = time.monotonic() + 20
        while not all(s.got.values()):
            assert time.monotonic() < deadline, ({n: len(g) for n, g in s.got.items()}, s.errors)
            k += 1
            publish(http, brokers.publish_url(k % 2), f"w{k}")
            time.sleep(0.05)  # pacing the warm-up only; nothing is asserted on timing
        http.close()
        yield s
    finally:
        s.close()


def item_json(payload: str) -> dict:
    return {
        "channel": "c",
        "formats": {
            "http-stream": {"content": f"data: {payload}\n\n"},
            "ws-message": {"content": payload},
        },
    }


def publish(http: httpx.Client, url: str, payload: str) -> bool:
    """One item on channel ``c``; True when the broker acknowledged it (200)."""
    r = http.post(url, json={"items": [item_json(payload)]})
    return r.status_code == 200


class Publisher:
    """Publishes ``p<n>-<k>`` to one broker's HTTP API in a thread, one at a time; records
    what was acknowledged and what may have been (the request failed after it was sent)."""

    def __init__(self, n: int, url: str) -> None:
        self.n, self.url = n, url
        self.acked: list[str] = []
        self.unknown: list[str] = []
        self.k = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=3) as http:
            while not self.stop.is_set():
                self.k += 1
                payload = f"p{self.n}-{self.k}"
                try:
                    ok = publish(http, self.url, payload)
                except httpx.ConnectError:
                    time.sleep(0.05)  # broker down: nothing was sent; retry later
                    continue
                except httpx.HTTPError:
                    self.unknown.append(payload)
                    continue
                (self.acked if ok else self.unknown).append(payload)
                time.sleep(0.005)

    def __enter__(self) -> Publisher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


def published(s: Swarm, name: str) -> list[str]:
    return [m for m in s.got[name] if m.startswith(("p0-", "p1-"))]


def test_tail_loss_is_repaired_when_a_broker_is_lost(brokers, swarm):
    """A message stored in Redis and never sent (its broker died in between) reaches every
    client once the edges notice a broker is gone: no later publish is needed."""
    tail = "p9-tail"

    async def store_only() -> None:
        from broker.store.redis import open_redis_store

        store = await open_redis_store(brokers.url)
        try:
            # the item as a broker parses a publisher's JSON, appended as a broker appends it
            (item,) = parse_http_publish(json.dumps({"items": [item_json(tail)]}).encode())
            await store.append_batch([item], time.time())
        finally:
            await store.aclose()

    trio.run(store_only)
    brokers.kill_broker(1)
    try:
        wait_for(lambda: all(got[-1:] == [tail] for got in swarm.got.values()), 15)
    except TimeoutError:
        ends = {n: g[-2:] for n, g in swarm.got.items()}
        raise AssertionError(
            f"the tail did not reach every client: {ends} {swarm.errors}"
        ) from None
    assert not swarm.errors, swarm.errors
    brokers.start_broker(1, wait=False)  # for the next test (its publisher waits for it)


def test_kill_and_restart_a_broker_under_publishing(brokers, swarm):
    with Publisher(0, brokers.publish_url(0)) as p0, Publisher(1, brokers.publish_url(1)) as p1:
        wait_for(lambda: len(p0.acked) >= 20 and len(p1.acked) >= 20, 20, "publishing stalled")
        brokers.kill_broker(1)  # under publishing: p1's request in flight may be half-done
        n0 = len(p0.acked)
        wait_for(lambda: len(p0.acked) >= n0 + 15, 20, "broker 0 stopped acknowledging")
        brokers.start_broker(1)  # restarted while broker 0 runs
        n1 = len(p1.acked)
        wait_for(lambda: len(p1.acked) >= n1 + 15, 20, "the restarted broker does not publish")
    acked = set(p0.acked) | set(p1.acked)
    unknown = set(p0.unknown) | set(p1.unknown)

    def complete() -> bool:
        return all(acked <= set(published(swarm, n)) for n in swarm.got)

    wait_for(complete, 20, f"acknowledged messages missing; errors={swarm.errors}")
    # what was not acknowledged may still arrive (stored, then repaired): let it settle
    wait_for(lambda: len({len(published(swarm, n)) for n in swarm.got}) == 1, 10, "clients differ")
    assert not swarm.errors, swarm.errors
    first = published(swarm, next(iter(swarm.got)))
    assert len(first) == len(set(first)), "a message was delivered twice"
    assert set(first) - acked <= unknown, set(first) - acked - unknown
    for p in (p0, p1):
        mine = [m for m in first if m.startswith(f"p{p.n}-")]
        assert [m for m in mine if m in acked] == p.acked, f"publisher {p.n}: out of order"
    for name in swarm.got:
        assert published(swarm, name) == first, f"{name} got another sequence"


def scrape(port: int) -> dict[tuple[str, str], float]:
    """``{(metric name, broker label[/outcome]): value}`` of an edge's per-broker metrics."""
    out = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith("gripcast_edge_broker_") and 'broker="' in line:
            name, rest = line.split("{", 1)
            labels, value = rest.rsplit("} ", 1)
            key = ",".join(v.split('"')[1] for v in labels.split(","))
            out[(name, key)] = float(value)
    return out


def test_per_broker_link_metrics(brokers, swarm):
    """After the tests above (broker 1 killed twice, restarted), every edge's /metrics shows
    each broker by ``host:port``: both up again, heartbeats arriving, broker 1's losses and
    reconnects counted, and the position/replay requests each broker answered."""
    labels = [f"127.0.0.1:{p['edge_pub_port']}" for p in brokers.ports]
    for i in range(len(brokers.edges)):
        port = brokers.metrics_port + i
        wait_for(
            lambda port=port: all(
                scrape(port).get(("gripcast_edge_broker_up", b)) == 1 for b in labels
            ),
            15,
            "a broker is not up on the edge's metrics",
        )
        m = scrape(port)
        for b in labels:
            assert m[("gripcast_edge_broker_heartbeats_total", b)] > 0
            assert 0 <= m[("gripcast_edge_broker_heartbeat_age_seconds", b)] < 5
            for outcome in ("answered", "refused", "timeout"):
                assert ("gripcast_edge_broker_requests_total", f"{b},{outcome}") in m
            assert ("gripcast_edge_broker_failovers_total", b) in m
        zero, one = labels
        assert m[("gripcast_edge_broker_link_losses_total", one)] >= 1  # killed, twice
        assert m[("gripcast_edge_broker_reconnects_total", one)] >= 1
        assert m[("gripcast_edge_broker_link_losses_total", zero)] == 0
        answered = sum(m[("gripcast_edge_broker_requests_total", f"{b},answered")] for b in labels)
        assert answered >= 2  # hellos at least, and the tail repair's positions


def test_memory_store_refused_with_several_brokers(tmp_path):
    """A broker whose config lists several brokers refuses the memory store at start; an edge
    listing several refuses a broker whose hello says it keeps channels in memory, whatever
    that broker's config says, even when the broker was not up for the edge's first hello
    (the edge checks it at its first heartbeat).  All three processes start at once."""
    ports = broker_ports(free_port_block(6))
    routes = ["* 127.0.0.1:9"]
    two = ["127.0.0.1:5564", "127.0.0.1:5574"]
    refused_cfg = write_config(tmp_path / "r.toml", broker_ports(1), routes, brokers=two)
    bcfg = write_config(tmp_path / "b.toml", ports, routes, drain_timeout_s=0.0)
    # the same broker under two names: two brokers to the edge
    listed = [f"127.0.0.1:{ports['edge_pub_port']}", f"localhost:{ports['edge_pub_port']}"]
    ecfg = write_config(tmp_path / "e.toml", ports, routes, brokers=listed)
    port = free_ports(1)[0]
    refused = subprocess.Popen(gripcast("broker", "--config", refused_cfg), stderr=subprocess.PIPE)
    broker = Proc(gripcast("broker", "--config", bcfg))
    edge = subprocess.Popen(
        gripcast("edge", "--config", ecfg, "--port", f"127.0.0.1:{port}"),
        stderr=subprocess.PIPE,
    )
    try:
        _, err = refused.communicate(timeout=30)
        assert refused.returncode == EXIT_CONFIG, err
        assert b"several brokers need a shared Redis store" in err, err
        _, err = edge.communicate(timeout=30)
        assert edge.returncode == EXIT_CONFIG, err
        assert b"keeps channels in its own memory store" in err, err
    finally:
        for p in (refused, edge):
            if p.poll() is None:
                p.kill()
                p.wait()
        broker.stop()


def hold_r(req):
    return (
        200,
        {"Content-Type": "text/plain", "Grip-Hold": "stream", "Grip-Channel": "r"},
        b"[open]\n",
    )


def test_run_brokers_n_starts_brokers_ten_ports_apart_and_edges_on_all(tmp_path):
    """``gripcast run --brokers 2``: refused on the memory store before anything starts; on
    Redis, broker 1 listens on the broker ports + 10, and a message published through either
    broker reaches a client of the (one) edge."""
    from tests.integration.test_runner import Runner

    if not redis_available():
        pytest.skip("redis-server not installed")
    base = free_port_block(16)
    ports = broker_ports(base)
    ports["client_port"] = free_ports(1)[0]
    with Origin({"/s": hold_r}) as origin, RedisServer() as redis:
        routes = [f"* 127.0.0.1:{origin.port}"]
        mem = write_config(tmp_path / "m.toml", ports, routes)
        r = Runner("--config", mem, "--edges", "1", "--brokers", "2")
        try:
            assert r.wait_exit(30) == EXIT_CONFIG
            assert "several brokers need a shared Redis store" in r.text, r.text
            assert "started broker" not in r.text
        finally:
            r.close()
        cfg = write_config(
            tmp_path / "g.toml", ports, routes, store=f"redis://127.0.0.1:{redis.port}/0"
        )
        r = Runner("--config", cfg, "--edges", "1", "--brokers", "2")
        try:
            r.wait_line(r"gripcast is ready: 2 brokers, 1 edge")
            assert f":{base + 11}/publish/" in r.text  # broker 1: http_port + 10
            client = StreamClient(f"http://127.0.0.1:{ports['client_port']}/s").wait_open()
            try:
                client.read_until(b"[open]\n")
                with httpx.Client(timeout=5) as http:
                    for i, http_port in enumerate((base + 1, base + 11)):
                        item = {"channel": "r", "formats": {"http-stream": {"content": f"b{i}\n"}}}
                        url = f"http://127.0.0.1:{http_port}/publish/"
                        assert http.post(url, json={"items": [item]}).status_code == 200
                client.read_until(b"b0\nb1\n")
            finally:
                client.close()
            os.killpg(r.proc.pid, signal.SIGINT)
            assert r.wait_exit(30) == 0
            assert "broker0 stopped" in r.text and "broker1 stopped" in r.text, r.text
        finally:
            r.close()
