"""``python -m bench capacity``: the unit costs of the capacity model (docs/capacity.md).

Three parts, one run:

``throughput``
    For each store (a Redis Cluster of 3 masters and 3 replicas made with ``redis-cli --cluster
    create``, and a standalone ``redis-server``) and 1, 2 and 3 ``gripcast broker`` processes on
    it: two publisher processes, one POSTing batches over HTTP round-robin to every broker, one
    PUSHing over ZeroMQ connected to every broker (ZeroMQ spreads the messages), each closed-loop
    (at most ``window`` items published and not yet seen on its own SUB, which is connected to
    every broker's edge XPUB and subscribed to its channels).  Measured over ``seconds``: items/s,
    CPU seconds per 1,000 items of the brokers and of the Redis servers (every node, from /proc),
    and Redis commands per item (``INFO commandstats`` deltas over the masters).
``fanout``
    One broker (memory store), ``edges`` = 1, 10, 100 lightweight SUB peers (plain pyzmq SUB
    sockets spread over a few processes, each connected to the broker's edge XPUB and subscribed
    to every channel) standing in for edges; a fixed publish rate over ZeroMQ; the broker's CPU
    microseconds per message at each edge count and the slope (µs per message per extra edge).
``edge``
    A small fan-out run (``bench.scenarios.run_load``: one gripcast edge, idle SSE clients
    connected, then messages to them): the edge's CPU per delivery and RSS per idle connection.
    Then the same number of clients each on a channel of its own, ``edge_msg_rate`` messages a
    second spread over those channels (``edge_msg_batch`` a POST, never two POSTs in flight
    with messages of one channel): every message the edge receives reaches one client, so
    its CPU per message there, less the CPU per delivery of the first run, is ``e_msg`` (the
    edge's cost per message received from the broker, docs/capacity.md).

This machine has 2 cores shared by every process of the run (brokers, Redis nodes, publishers):
items/s cannot grow with brokers here, so the figures to read are the per-CPU-second ones.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench import procs
from bench.redisprocs import RedisCluster, StandaloneRedis, command_calls
from bench.targets import GripcastTarget
from broker import wire

CTX = multiprocessing.get_context("fork")
NOTE = (
    "2-core machine shared by brokers, Redis nodes and load generators: items/s cannot show "
    "scaling with brokers here; read CPU seconds per 1,000 items (per-CPU-second figures)"
)


@dataclass(frozen=True, slots=True)
class CapacityConfig:
    quick: bool = False
    stores: tuple[str, ...] = ("cluster", "standalone")
    brokers: tuple[int, ...] = (1, 2, 3)
    seconds: float = 6.0  # measured publishing per (store, brokers)
    warmup_s: float = 1.5
    channels: int = 64  # per publisher process (spread over the cluster's slots)
    batch: int = 50  # HTTP items per POST; ZeroMQ items sent per turn
    window: int = 2000  # items published and not yet seen, per publisher
    edge_counts: tuple[int, ...] = (1, 10, 100)
    fan_channels: int = 10
    fan_rate: float = 1000.0  # messages per second (all channels)
    fan_seconds: float = 5.0
    fan_rest_s: float = 1.0  # the broker's CPU at rest, measured before each step
    sub_procs: int = 4  # processes holding the SUB peers
    edge_clients: int = 1000  # the edge part: idle SSE clients on one edge
    edge_rate: float = 5.0  # messages per second to them (one channel)
    edge_seconds: float = 6.0
    # the edge part's second run: messages per second over edge_clients channels of one client,
    # POSTed edge_msg_batch at a time (as the many-channels bench: the edge's per-wake-up cost
    # is then shared by a batch, as under load; with a few messages a POST it dominates)
    edge_msg_rate: float = 5000.0
    edge_msg_batch: int = 100
    parts: tuple[str, ...] = ("throughput", "fanout", "edge")


QUICK = CapacityConfig(
    quick=True,
    stores=("cluster",),
    brokers=(1, 2),
    seconds=1.0,
    warmup_s=0.3,
    channels=32,
    window=1000,
    fan_rate=500.0,
    fan_seconds=1.0,
    fan_rest_s=0.3,
    sub_procs=2,
    parts=("throughput", "fanout"),
)


def item(channel: str, ident: str, n: int) -> dict:
    return {"channel": channel, "id": ident, "formats": {"http-stream": {"content": f"item {n}\n"}}}


# --- brokers ---------------------------------------------------------------------------------


def start_broker(store: str, workdir: str) -> GripcastTarget:
    """One ``gripcast broker`` on free ports with ``store``; ready (sd_notify) when returned."""
    os.makedirs(workdir, exist_ok=True)
    t = GripcastTarget(origin_port=9, edges=0, workdir=workdir, stats=False)
    with open(t.config, "a") as f:
        f.write(f'store = "{store}"\n')
    try:
        return t.start_broker_only()
    except BaseException:
        t.stop()
        raise


def stop_all(targets: list[GripcastTarget]) -> None:
    for t in targets:
        t.stop()


# --- publisher processes (throughput) --------------------------------------------------------


def publisher_main(kind, tag, urls, specs, subs, channels, batch, window, counters, stop, pipe):
    """Publish closed-loop until ``stop``; ``counters`` = [sent, received] (shared memory)."""
    import zmq

    from bench.publisher import HttpPublisher

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SNDHWM, 0)  # thousands of subscriptions: none dropped at the HWM
    sub.setsockopt(zmq.LINGER, 0)
    for s in subs:
        sub.connect(s)
    names = [f"{tag}{c}" for c in range(channels)]
    # several items of one step come as one message: the batch topic first (subscriptions
    # reach a broker in order, so the probe below proves it is in place too), as an edge does
    sub.setsockopt(zmq.SUBSCRIBE, wire.BATCH_TOPIC)
    for name in names:
        sub.setsockopt(zmq.SUBSCRIBE, name.encode() + b"\x00")
    own = {name.encode() for name in names}  # a batch holds the other publishers' items too
    push = None
    https: list[HttpPublisher] = []
    error = ""
    try:
        if kind == "zmq":
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 0)
            push.setsockopt(zmq.LINGER, 0)
            for s in specs:
                push.connect(s)
        else:
            https = [HttpPublisher(u, conns=2) for u in urls]
        # subscriptions reach every broker: a SUB's subscriptions reach a broker in order, so
        # once a probe on the last channel comes back from a broker, all of them are in place
        # there; probes through each broker's HTTP API, until every broker's came back
        import re

        probes = [HttpPublisher(u) for u in urls]
        want = set(range(len(probes)))
        seen: set[int] = set()
        # a broker takes its time over thousands of subscriptions on a loaded machine
        deadline = time.monotonic() + 30 + len(names) * len(urls) / 200
        probe = 0
        try:
            while seen != want:
                probe += 1
                for i, h in enumerate(probes):
                    if i not in seen:
                        h.publish([item(names[-1], f"{tag}p{probe}-{i}", 0) | _probe_fmt(i)])
                t_end = time.monotonic() + 0.2
                while sub.poll(max(1, int(1000 * (t_end - time.monotonic())))):
                    for f in wire.channel_frames([sub.recv()], own):
                        m = re.search(rb"probe (\d+)\n", f)
                        if m:
                            seen.add(int(m.group(1)))
                    if time.monotonic() > t_end:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{tag}: probes back from {len(seen)}/{len(want)} brokers")
        finally:
            for h in probes:
                h.close()
        # drain what the probes left (for at most a second: the batch topic also brings the
        # items of a publisher already running, which never stop)
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end and sub.poll(150):
            sub.recv()
        pipe.send(("ready", None))
        n = 0
        turn = 0
        sent = received = 0
        while not stop.is_set():
            if sent - received < window:
                items = []
                for _ in range(batch):
                    n += 1
                    items.append(item(names[n % len(names)], f"{tag}{n}", n))
                if push is not None:
                    for it in items:
                        push.send(b"J" + _dumps(it))
                else:
                    https[turn % len(https)].publish(items)
                    turn += 1
                sent += len(items)
                counters[0] = sent
                timeout = 0
            else:
                timeout = 50
            while sub.poll(timeout):
                received += sum(b"item " in f for f in wire.channel_frames([sub.recv()], own))
                timeout = 0
            counters[1] = received
    except Exception as exc:  # reported to the parent, which fails the run
        error = f"{type(exc).__name__}: {exc}"
    finally:
        for h in https:
            try:
                h.close()
            except Exception:
                pass
        sub.close(0)
        if push is not None:
            push.close(0)
        ctx.term()
    pipe.send(("done", error))


def _probe_fmt(i: int) -> dict:
    return {"formats": {"http-stream": {"content": f"probe {i}\n"}}}


def _dumps(obj: Any) -> bytes:
    import json

    return json.dumps(obj).encode()


class _Proc:
    def __init__(self, target, *args) -> None:
        self.pipe, child = CTX.Pipe()
        self.counters = CTX.Array("q", 2, lock=False)
        self.stop = CTX.Event()
        self.proc = CTX.Process(
            target=target, args=(*args, self.counters, self.stop, child), daemon=True
        )
        self.proc.start()
        self.finished: str | None = None

    def wait(self, kind: str, timeout: float) -> Any:
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"no {kind!r} from a load process in {timeout:.0f}s")
        got, body = self.pipe.recv()
        if got != kind:
            self.finished = body or ""
            raise RuntimeError(f"load process: {got} {body}")
        return body

    def finish(self) -> str:
        """Stop the process (once); its error message, if it reported one."""
        if self.finished is not None:
            return self.finished
        self.stop.set()
        error = ""
        try:
            if self.pipe.poll(10):
                _, error = self.pipe.recv()
        except (EOFError, OSError):
            error = error or "load process ended without a report"
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.finished = error or ""
        return self.finished


def _cpu(pids: list[int]) -> float:
    return sum(procs.cpu_s(p) for p in pids)


def _calls(ports: list[int]) -> dict[str, int]:
    total: dict[str, int] = {}
    for p in ports:
        for k, v in command_calls(p).items():
            total[k] = total.get(k, 0) + v
    return total


def start_brokers(store: str, n: int, workdir: str) -> list[GripcastTarget]:
    """``n`` brokers on ``store``, started at once (threads wait on their readiness)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        futs = [pool.submit(start_broker, store, f"{workdir}/b{i}") for i in range(n)]
    out, errors = [], []
    for f in futs:
        try:
            out.append(f.result())
        except Exception as exc:
            errors.append(exc)
    if errors:
        stop_all(out)
        raise errors[0]
    return out


def throughput_step(
    cfg: CapacityConfig, store_kind: str, redis, brokers: list[GripcastTarget], tag: str
) -> dict:
    nbrokers = len(brokers)
    loads: list[_Proc] = []
    row: dict[str, Any] = {"store": store_kind, "brokers": nbrokers}
    try:
        urls = [b.publish_url for b in brokers]
        specs = [b.push_spec for b in brokers]
        subs = [b.edge_pub_spec for b in brokers]
        for kind in ("http", "zmq"):
            loads.append(
                _Proc(
                    publisher_main,
                    kind,
                    f"{tag}{kind[0]}",
                    urls,
                    specs,
                    subs,
                    cfg.channels,
                    cfg.batch,
                    cfg.window,
                )
            )
        for lp in loads:
            lp.wait("ready", 60 + cfg.channels * nbrokers / 200)
        time.sleep(cfg.warmup_s)  # the load runs; steady state before measuring
        masters = redis.master_ports() if isinstance(redis, RedisCluster) else redis.ports()
        bpids = [p for b in brokers for p in b.pids()]
        rpids = redis.pids()
        mpids = redis.pids_of(masters)
        calls0 = _calls(masters)
        b0, r0, m0 = _cpu(bpids), _cpu(rpids), _cpu(mpids)
        got0 = [(lp.counters[0], lp.counters[1]) for lp in loads]
        t0 = time.monotonic()
        time.sleep(cfg.seconds)
        got1 = [(lp.counters[0], lp.counters[1]) for lp in loads]
        b1, r1, m1 = _cpu(bpids), _cpu(rpids), _cpu(mpids)
        wall = time.monotonic() - t0
        calls1 = _calls(masters)
        errors = [e for e in (lp.finish() for lp in loads) if e]
        loads = []
        if errors:
            raise RuntimeError("; ".join(errors))
        items = sum(g1[1] - g0[1] for g0, g1 in zip(got0, got1))
        by_kind = {
            kind: round((g1[1] - g0[1]) / wall, 1)
            for kind, g0, g1 in zip(("http", "zmq"), got0, got1)
        }
        calls = {k: v - calls0.get(k, 0) for k, v in calls1.items() if v - calls0.get(k, 0)}
        for k in ("info", "replconf", "cluster", "ping", "command"):
            calls.pop(k, None)  # the bench's and the replication's, not the store's
        ncalls = sum(calls.values())  # commands run inside scripts count too
        scripts = calls.get("evalsha", 0) + calls.get("eval", 0) + calls.get("fcall", 0)
        per_k = 1000 / items if items else 0.0
        row.update(
            {
                "items": items,
                "wall_s": round(wall, 3),
                "items_per_s": round(items / wall, 1),
                "items_per_s_by_publisher": by_kind,
                "broker_cpu_s": round(b1 - b0, 3),
                "redis_cpu_s": round(r1 - r0, 3),
                "redis_master_cpu_s": round(m1 - m0, 3),
                "broker_cpu_s_per_1k": round((b1 - b0) * per_k, 4),
                "redis_cpu_s_per_1k": round((r1 - r0) * per_k, 4),
                "redis_master_cpu_s_per_1k": round((m1 - m0) * per_k, 4),
                "items_per_broker_cpu_s": round(items / (b1 - b0), 1) if b1 > b0 else None,
                "redis_commands_per_item": round(ncalls / items, 3) if items else None,
                "redis_scripts_per_item": round(scripts / items, 4) if items else None,
                "redis_commands": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
                "redis_nodes": len(rpids),
                "redis_masters": len(masters),
                "ok": items > 0,
            }
        )
    except Exception as exc:
        row["ok"] = False
        row["error"] = f"{type(exc).__name__}: {exc}"
        if brokers:
            row["broker_log_tail"] = brokers[0].log_tail(20)
    finally:
        for lp in loads:
            lp.finish()
    return row


def run_throughput(cfg: CapacityConfig, progress=None) -> list[dict]:
    rows = []
    for store in cfg.stores:
        redis = RedisCluster() if store == "cluster" else StandaloneRedis()
        workdir = tempfile.mkdtemp(prefix="bench-capacity-")
        brokers: list[GripcastTarget] = []
        try:
            with redis:
                # the most brokers asked for, started once; a step uses the first n of them
                # (on channels of its own), the others idle
                brokers = start_brokers(redis.url(), max(cfg.brokers), workdir)
                for n in cfg.brokers:
                    tag = f"{store[0]}{n}{time.time_ns() % 100000}"
                    rows.append(throughput_step(cfg, store, redis, brokers[:n], tag))
                    if progress:
                        progress(rows[-1])
        finally:
            stop_all(brokers)
            shutil.rmtree(workdir, ignore_errors=True)
    return rows


# --- SUB peers (fan-out) ---------------------------------------------------------------------


def peers_main(spec, nsocks, channels, counters, stop, pipe):
    """``nsocks`` SUB sockets on ``spec``, each subscribed to every channel.  counters[0]:
    sockets that have seen every channel (probes); counters[1]: item frames received."""
    import zmq

    ctx = zmq.Context()
    socks = []
    for _ in range(nsocks):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(spec)
        s.setsockopt(zmq.SUBSCRIBE, wire.BATCH_TOPIC)  # before the channels, as an edge does
        for c in channels:
            s.setsockopt(zmq.SUBSCRIBE, c.encode() + b"\x00")
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    seen: list[set[bytes]] = [set() for _ in socks]
    own = {c.encode() for c in channels}
    index = {s: i for i, s in enumerate(socks)}
    ready = 0
    received = 0
    pipe.send(("ready", None))
    try:
        while not stop.is_set():
            for s, _ in poller.poll(50):
                i = index[s]
                while True:
                    try:
                        msg = s.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    for frame in wire.channel_frames([msg], own):
                        if b"item " in frame:
                            received += 1
                        elif len(seen[i]) < len(channels):
                            seen[i].add(frame.split(b"\x00", 1)[0])
                            if len(seen[i]) == len(channels):
                                ready += 1
            counters[0] = ready
            counters[1] = received
    finally:
        for s in socks:
            s.close(0)
        ctx.term()
    pipe.send(("done", ""))


class _Fan:
    """One broker (memory store) and its SUB peers, added step by step (1, then 10, then 100)."""

    def __init__(self, cfg: CapacityConfig) -> None:
        import zmq

        self.cfg = cfg
        self.workdir = tempfile.mkdtemp(prefix="bench-capacity-fan-")
        self.channels = [f"f{c}" for c in range(cfg.fan_channels)]
        self.peers: list[_Proc] = []
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDHWM, 0)
        self.push.setsockopt(zmq.LINGER, 0)
        self.broker: GripcastTarget | None = None
        self.edges = 0
        self.n = 0

    def start(self) -> None:
        self.broker = start_broker("memory", self.workdir)
        self.push.connect(self.broker.push_spec)

    def grow(self, edges: int) -> None:
        """Add SUB peers up to ``edges``; return once every one has seen every channel."""
        assert self.broker is not None
        add = edges - self.edges
        nproc = max(1, min(self.cfg.sub_procs, add // 10 or 1))
        shares = [add // nproc + (1 if i < add % nproc else 0) for i in range(nproc)]
        new = [_Proc(peers_main, self.broker.edge_pub_spec, k, self.channels) for k in shares]
        self.peers += new
        for p in new:
            p.wait("ready", 30)
        self.edges = edges
        deadline = time.monotonic() + 30
        while sum(p.counters[0] for p in self.peers) < edges:
            for c in self.channels:  # probes: until every SUB peer saw every channel
                probe = {"channel": c, "formats": {"http-stream": {"content": "p\n"}}}
                self.push.send(b"J" + _dumps(probe))
            time.sleep(0.05)
            if time.monotonic() > deadline:
                got = sum(p.counters[0] for p in self.peers)
                raise TimeoutError(f"{got}/{edges} SUB peers subscribed")

    def received(self) -> int:
        return sum(p.counters[1] for p in self.peers)

    def step(self) -> dict:
        assert self.broker is not None
        cfg, edges = self.cfg, self.edges
        bpids = self.broker.pids()
        time.sleep(0.2)  # the probes' deliveries done
        # the broker's CPU at rest (timers, heartbeats), taken off the publishing figure
        i0, t_i = _cpu(bpids), time.monotonic()
        time.sleep(cfg.fan_rest_s)
        idle_per_s = (_cpu(bpids) - i0) / (time.monotonic() - t_i)
        rx0 = self.received()
        c0 = _cpu(bpids)
        t0 = time.monotonic()
        interval = 0.01
        sent = 0
        while True:
            now = time.monotonic() - t0
            if now >= cfg.fan_seconds:
                break
            due = int(cfg.fan_rate * min(cfg.fan_seconds, now + interval))
            while sent < due:
                self.n += 1
                k = self.n
                it = item(self.channels[k % len(self.channels)], f"e{k}", k)
                self.push.send(b"J" + _dumps(it))
                sent += 1
            time.sleep(interval - (time.monotonic() - t0) % interval)
        expected = sent * edges
        last, t_last = -1, time.monotonic()
        rx = 0
        while True:  # stragglers: until every delivery arrived (or none for a second)
            rx = self.received() - rx0
            if rx >= expected or time.monotonic() - t_last > 1.0:
                break
            if rx != last:
                last, t_last = rx, time.monotonic()
            time.sleep(0.02)
        wall = time.monotonic() - t0
        raw = _cpu(bpids) - c0
        cpu = max(0.0, raw - idle_per_s * wall)
        row: dict[str, Any] = {
            "edges": edges,
            "messages": sent,
            "rate": round(sent / cfg.fan_seconds, 1),
            "deliveries_expected": expected,
            "deliveries": rx,
            "wall_s": round(wall, 3),
            "broker_cpu_s_raw": round(raw, 3),
            "broker_idle_cpu_per_s": round(idle_per_s, 4),
            "broker_cpu_s": round(cpu, 3),
            "broker_us_per_msg": round(1e6 * cpu / sent, 2) if sent else None,
            "broker_us_per_delivery": round(1e6 * cpu / expected, 3) if expected else None,
            "ok": rx == expected,
        }
        if rx != expected:
            row["error"] = f"SUB peers received {rx} of {expected} deliveries"
        return row

    def close(self) -> None:
        for p in self.peers:
            p.finish()
        self.push.close(0)
        self.ctx.term()
        if self.broker is not None:
            self.broker.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def slope(rows: list[dict]) -> dict:
    """Least-squares µs per message per extra edge over the rows, and the slope of each
    segment between consecutive edge counts (flat: the last segment's within 2x of the first's)."""
    pts = [(r["edges"], r["broker_us_per_msg"]) for r in rows if r.get("broker_us_per_msg")]
    if len(pts) < 2:
        return {"us_per_msg_per_edge": None, "segments": [], "flat": None}
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    fit = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    segs = [
        {
            "from": a[0],
            "to": b[0],
            "us_per_msg_per_edge": round((b[1] - a[1]) / (b[0] - a[0]), 3),
        }
        for a, b in zip(pts, pts[1:])
    ]
    # flat: an edge added among many costs no more than one added among few (the last
    # segment's slope at most twice the first's, or 1 µs: CPU ticks are 10 ms, so a small first
    # segment is mostly noise)
    first, last = segs[0]["us_per_msg_per_edge"], segs[-1]["us_per_msg_per_edge"]
    return {
        "us_per_msg_per_edge": round(fit, 3),
        "intercept_us_per_msg": round(my - fit * mx, 2),
        "segments": segs,
        "flat": bool(last <= 2 * max(first, 1.0)),
    }


def run_fanout(cfg: CapacityConfig, progress=None) -> dict:
    rows: list[dict] = []
    fan = _Fan(cfg)
    try:
        fan.start()
        for e in cfg.edge_counts:
            try:
                fan.grow(e)
                rows.append(fan.step())
            except Exception as exc:
                rows.append({"edges": e, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
                break
            if progress:
                progress(rows[-1])
    finally:
        fan.close()
    return {"rows": rows, "slope": slope(rows)}


# --- edge unit costs -------------------------------------------------------------------------


def run_edge(cfg: CapacityConfig) -> dict:
    """Edge CPU per delivery and RSS per idle connection from one small fan-out run."""
    from bench.scenarios import LoadConfig, run_load

    lc = LoadConfig(
        scenario="fanout",
        transport="sse",
        clients=cfg.edge_clients,
        channels=1,
        rate=cfg.edge_rate,
        duration=cfg.edge_seconds,
        edges=1,
        publisher="http",
        procs=2,
        concurrency=64,
        warmup=20,
        stats=False,
    )
    r = run_load("gripcast", lc)
    out: dict[str, Any] = {"clients": cfg.edge_clients, "ok": bool(r.get("ok"))}
    if not r.get("ok"):
        out["error"] = r.get("error")
        return out
    received = r["deliveries"]["received"]
    edge_cpu = _edge_cpu(r)
    mem = {p["name"]: p for p in r["memory"]["by_process"]}
    edge_mem = [p for n, p in mem.items() if n.startswith("edge")]
    per_delivery = round(1e6 * edge_cpu / received, 2) if received else None
    out.update(
        {
            "deliveries": received,
            "edge_cpu_s": round(edge_cpu, 3),
            "edge_us_per_delivery": per_delivery,
            "edge_kib_per_conn": edge_mem[0]["per_conn_kib"] if edge_mem else None,
            "all_kib_per_conn": r["memory"]["per_conn_kib"],
            "lost": _lost(r),
        }
    )
    # every client on a channel of its own: each message the edge receives reaches one client
    rm = run_load(
        "gripcast",
        replace(
            lc,
            scenario="channels",
            channels=cfg.edge_clients,
            rate=cfg.edge_msg_rate / cfg.edge_clients,
            batch=cfg.edge_msg_batch,
            publish_conns=max(1, min(4, cfg.edge_clients // max(1, cfg.edge_msg_batch))),
        ),
    )
    if not rm.get("ok"):
        out["ok"] = False
        out["error"] = f"one client a channel: {rm.get('error')}"
        return out
    messages = rm["deliveries"]["received"]
    msg_cpu = _edge_cpu(rm)
    per_msg = round(1e6 * msg_cpu / messages, 2) if messages else None
    out["per_channel"] = {
        "channels": cfg.edge_clients,
        "messages": messages,
        "edge_cpu_s": round(msg_cpu, 3),
        "edge_us_per_msg_delivered": per_msg,
        "lost": _lost(rm),
    }
    out["edge_us_per_msg"] = (
        round(max(0.0, per_msg - per_delivery), 2)
        if per_msg is not None and per_delivery is not None
        else None
    )
    return out


def _edge_cpu(r: dict) -> float:
    return float(sum(p["cpu_s"] for p in r["cpu"]["publish_phase"] if p["name"].startswith("edge")))


def _lost(r: dict) -> Any:
    return r.get("loss", {}).get("lost") if isinstance(r.get("loss"), dict) else None


# --- the whole run ---------------------------------------------------------------------------


def run_capacity(cfg: CapacityConfig, progress=None) -> dict:
    procs.raise_nofile()
    t0 = time.monotonic()
    out: dict[str, Any] = {"config": asdict(cfg), "note": NOTE}
    took: dict[str, float] = {}
    for part, fn in (
        ("throughput", lambda: run_throughput(cfg, progress)),
        ("fanout", lambda: run_fanout(cfg, progress)),
        ("edge", lambda: run_edge(cfg)),
    ):
        if part in cfg.parts:
            t_part = time.monotonic()
            out[part] = fn()
            took[part] = round(time.monotonic() - t_part, 1)
    out["part_s"] = took
    out["unit_costs"] = unit_costs(out)
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    oks = [r.get("ok") for r in out.get("throughput", [])]
    oks += [r.get("ok") for r in out.get("fanout", {}).get("rows", [])]
    if "edge" in out:
        oks.append(out["edge"].get("ok"))
    out["ok"] = all(oks)
    return out


def unit_costs(out: dict) -> dict:
    """The model's inputs (docs/capacity.md) from this run's figures."""
    u: dict[str, Any] = {}
    rows = [r for r in out.get("throughput", []) if r.get("ok")]
    for store in ("cluster", "standalone"):
        mine = [r for r in rows if r["store"] == store]
        if not mine:
            continue
        items = sum(r["items"] for r in mine)
        u[store] = {
            "broker_cpu_us_per_item": round(1e6 * sum(r["broker_cpu_s"] for r in mine) / items, 1),
            "redis_cpu_us_per_item": round(1e6 * sum(r["redis_cpu_s"] for r in mine) / items, 1),
            "redis_master_cpu_us_per_item": round(
                1e6 * sum(r.get("redis_master_cpu_s", 0.0) for r in mine) / items, 1
            ),
            "redis_scripts_per_item": round(
                sum(r.get("redis_scripts_per_item", 0.0) * r["items"] for r in mine) / items, 4
            ),
            "redis_commands_per_item": round(
                sum(r["redis_commands_per_item"] * r["items"] for r in mine) / items, 3
            ),
        }
    fan = out.get("fanout", {})
    if fan.get("slope", {}).get("us_per_msg_per_edge") is not None:
        u["broker_us_per_msg_per_edge"] = fan["slope"]["us_per_msg_per_edge"]
        u["broker_us_per_msg_base"] = fan["slope"]["intercept_us_per_msg"]
    edge = out.get("edge", {})
    if edge.get("ok"):
        u["edge_us_per_delivery"] = edge["edge_us_per_delivery"]
        u["edge_kib_per_idle_conn"] = edge["edge_kib_per_conn"]
        if edge.get("edge_us_per_msg") is not None:
            u["edge_us_per_msg"] = edge["edge_us_per_msg"]
    return u


def config_for(quick: bool, **overrides: Any) -> CapacityConfig:
    base = QUICK if quick else CapacityConfig()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def print_report(out: dict, console) -> None:
    from rich.table import Table

    console.print(f"[bold]note:[/bold] {out['note']}")
    if out.get("throughput"):
        t = Table(title="publish throughput: brokers on one Redis (HTTP batches + ZeroMQ)")
        for col in (
            "store",
            "brokers",
            "items/s",
            "http/s",
            "zmq/s",
            "broker cpu s/1k",
            "redis cpu s/1k (masters)",
            "items/broker cpu s",
            "redis cmds/item",
            "scripts/item",
        ):
            t.add_column(col, justify="right")
        for r in out["throughput"]:
            if not r.get("ok"):
                t.add_row(
                    r["store"], str(r["brokers"]), f"[red]failed: {r.get('error')}[/red]"[:80]
                )
                continue
            by = r["items_per_s_by_publisher"]
            t.add_row(
                r["store"],
                str(r["brokers"]),
                f"{r['items_per_s']:,.0f}",
                f"{by['http']:,.0f}",
                f"{by['zmq']:,.0f}",
                f"{r['broker_cpu_s_per_1k']:.3f}",
                f"{r['redis_cpu_s_per_1k']:.3f} ({r['redis_master_cpu_s_per_1k']:.3f})",
                f"{r['items_per_broker_cpu_s'] or 0:,.0f}",
                f"{r['redis_commands_per_item']}",
                f"{r['redis_scripts_per_item']}",
            )
        console.print(t)
    fan = out.get("fanout")
    if fan:
        t = Table(title="broker CPU per message with N edges subscribed (SUB peers)")
        for col in ("edges", "msgs/s", "deliveries", "broker µs/msg", "broker µs/delivery"):
            t.add_column(col, justify="right")
        for r in fan["rows"]:
            if not r.get("ok") and "messages" not in r:
                t.add_row(str(r["edges"]), f"[red]{r.get('error')}[/red]")
                continue
            t.add_row(
                str(r["edges"]),
                f"{r['rate']:,.0f}",
                f"{r['deliveries']:,}/{r['deliveries_expected']:,}",
                f"{r['broker_us_per_msg']}",
                f"{r['broker_us_per_delivery']}",
            )
        console.print(t)
        s = fan["slope"]
        segs = ", ".join(
            f"{g['from']}->{g['to']}: {g['us_per_msg_per_edge']}" for g in s["segments"]
        )
        console.print(
            f"slope: {s['us_per_msg_per_edge']} µs per message per extra edge "
            f"(segments {segs}); flat: {s['flat']}"
        )
    edge = out.get("edge")
    if edge:
        if edge.get("ok"):
            console.print(
                f"edge: {edge['edge_us_per_delivery']} µs CPU per delivery, "
                f"{edge['edge_kib_per_conn']} KiB RSS per idle SSE connection "
                f"({edge['clients']:,} clients, {edge['deliveries']:,} deliveries)"
            )
            pc = edge.get("per_channel") or {}
            if pc:
                console.print(
                    f"edge, one client a channel ({pc['channels']:,} channels, "
                    f"{pc['messages']:,} messages): {pc['edge_us_per_msg_delivered']} µs CPU per "
                    f"message delivered; per message received less a delivery (e_msg): "
                    f"{edge.get('edge_us_per_msg')} µs"
                )
        else:
            console.print(f"[red]edge part failed: {edge.get('error')}[/red]")
    console.print(f"unit costs: {out['unit_costs']}")
