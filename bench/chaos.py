"""``python -m bench chaos``: several brokers on a highly available Redis under random faults,
with loss accounting (issue #15).

The cluster: a Redis Sentinel group (master, replica, three sentinels) or a Redis Cluster (three
masters, three replicas) -- ``--redis sentinel|cluster`` --, ``--brokers`` brokers sharing it
(``redis_wait_replicas = 1``: a publish is acknowledged once a replica has it), two edges
listing every broker, the bench origin (``bench.origin``, cursor resume on).  Clients, SSE and
WebSocket, each on one channel and one edge, resume by cursor whenever they are cut (SSE
``Last-Event-ID``; WebSocket ``?prev=<id>``, which the origin turns into a ``subscribe`` with
``prev-id``), and some are cut on purpose (churn).  Publishers POST one item at a time to a
random broker's HTTP API, each item with its own ``id`` (``p<n>-<k>``, also its payload and SSE
event id), and record what was acknowledged (200); a failed publish is retried with the same
id on other brokers (the cross-broker de-duplication must keep it single) before it is given up
(not acknowledged).  ``--publisher command`` publishes through the brokers' command sockets
instead (acknowledged by the success reply), ``--publisher zmq`` through one ZeroMQ PUSH
connected to every broker, whose items are never acknowledged (``PUBLISHERS``).

Faults, drawn from ``--seed`` (the plan is replayable; the timing of real processes is not):
``broker_kill`` (SIGKILL a broker, restart it), ``edge_kill`` (SIGKILL an edge: its clients
resume on the other edge; the edge is restarted), ``redis_failover`` (SIGKILL the Redis master
-- Sentinel's, or one Cluster shard's -- wait for the replica's promotion, then bring the old
one back as a replica) and ``link_cut``: with ``link_cut="netns"`` (``--link-cut netns``, the
default where network namespaces can be made) a real cut, each broker on a host of its own
(``bench.netcut``): its links set down for a few seconds, the edge link only and the whole host
in turn; with ``"stop"`` a stand-in, the broker SIGSTOPped then SIGCONT.  Either way the edges
call the broker lost after ``broker_link_timeout_s``.  The first faults cover every kind once,
the rest are random.

At the end, publishing stops, every client catches up, and each channel's history is read from
the brokers' channel API (``/channels/<ch>/items``): the canonical order.  For every client, what
it received must be a contiguous run of that order (from its first message to the channel's
last if it is still connected): no gap (a loss), no repeat (a duplicate), nothing outside it.
An acknowledged item missing from history is lost for everyone who was subscribed.  What was
not acknowledged is either in history (then delivered like the rest) or delivered to nobody.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.origin import Origin
from bench.procs import NotifySocket, free_port_block, free_ports
from bench.redisprocs import RedisCluster, SentinelGroup
from gripcast.runner import BROKER_PORT_KEYS

FAULT_KINDS = ("broker_kill", "edge_kill", "redis_failover", "link_cut")
# how publishers reach the brokers (``--publisher``), and what counts as acknowledged:
# * http: POST /publish/ to a random broker; 200 is the acknowledgement (retried elsewhere,
#   same id, on a failure);
# * command: the command socket's ZRPC ``publish`` (a DEALER per broker) to a random broker;
#   its success reply is sent once the item is stored, so it acknowledges like HTTP's 200;
# * zmq: one ZeroMQ PUSH connected to every broker's PULL port (ZeroMQ spreads the items over
#   the brokers it is connected to, ZMQ_IMMEDIATE: never queued for a broker that is down).
#   PUSH has no acknowledgement, so every item sent is recorded as sent and *not
#   acknowledged*: the run then checks that each is delivered everywhere or nowhere (in
#   history and at every client subscribed, or at none), never that it arrived.
PUBLISHERS = ("http", "command", "zmq")
BROKER_KEYS = BROKER_PORT_KEYS  # a broker's ports (gripcast.runner's, one list)
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    seed: int = 1
    duration_s: float = 180.0
    redis: str = "sentinel"  # or "cluster"
    brokers: int = 3
    edges: int = 2
    sse_clients: int = 150
    ws_clients: int = 150
    channels: int = 8
    publishers: int = 4
    publish_rate: float = 40.0  # items per second, all publishers together
    churn_per_s: float = 2.0  # clients cut on purpose per second (they resume)
    fault_every_s: float = 10.0  # a fault starts this long after the last one recovered
    settle_s: float = 30.0  # longest wait for clients to catch up at the end
    publisher: str = "http"  # "http", "zmq" (PUSH to every broker) or "command" (PUBLISHERS)

    @staticmethod
    def quick(seed: int = 1, redis: str = "sentinel", publisher: str = "http") -> ChaosConfig:
        return ChaosConfig(
            seed=seed,
            duration_s=16.0,
            redis=redis,
            publisher=publisher,
            brokers=2,
            sse_clients=30,
            ws_clients=30,
            channels=4,
            publishers=2,
            publish_rate=30.0,
            churn_per_s=1.0,
            fault_every_s=1.5,
            settle_s=20.0,
        )


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float  # earliest start, seconds after publishing began
    kind: str
    target: int  # broker or edge index (redis: which master, for a cluster)
    hold_s: float  # down (or stopped) this long before the restart


def fault_plan(cfg: ChaosConfig) -> list[Fault]:
    """The faults of a run, from its seed alone: every kind once first (shuffled), then random
    kinds; each ``fault_every_s`` after the previous one was planned (a fault that runs late
    pushes the next ones)."""
    rng = random.Random(f"faults-{cfg.seed}")
    kinds = list(FAULT_KINDS)
    rng.shuffle(kinds)
    plan: list[Fault] = []
    t = min(2.0, cfg.fault_every_s)
    while t < cfg.duration_s - 1.0:
        kind = kinds.pop(0) if kinds else rng.choice(FAULT_KINDS)
        n = cfg.edges if kind == "edge_kill" else cfg.brokers if kind != "redis_failover" else 3
        hold = rng.uniform(2.0, 4.0) if kind == "link_cut" else rng.uniform(0.5, 2.0)
        plan.append(Fault(round(t, 2), kind, rng.randrange(n), round(hold, 2)))
        t += cfg.fault_every_s + rng.uniform(0.0, cfg.fault_every_s / 2)
    return plan


# -- processes --------------------------------------------------------------------------------


class GripProc:
    """One gripcast broker or edge: its own process group, readiness by sd_notify, a log file."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> GripProc:
        notify = NotifySocket()
        env = dict(os.environ, NOTIFY_SOCKET=notify.path, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                cwd=str(REPO),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            notify.wait_ready(self.proc, timeout)
        except BaseException:
            self.kill()
            raise
        finally:
            notify.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_config(path: Path, ports: dict, extra: dict) -> str:
    lines = ['client_addr = "127.0.0.1"', 'broker_bind = "127.0.0.1"']
    lines += [f"{k} = {v}" for k, v in ports.items()]
    for k, v in extra.items():
        lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


class ChaosCluster:
    """Redis (HA), brokers, edges and the origin of one chaos run."""

    def __init__(self, cfg: ChaosConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.dir = workdir
        self.redis: SentinelGroup | RedisCluster
        if cfg.redis == "sentinel":
            self.redis = SentinelGroup(replicas=1, sentinels=3)
        elif cfg.redis == "cluster":
            self.redis = RedisCluster()
        else:
            raise ValueError(f"--redis: sentinel or cluster, not {cfg.redis!r}")
        self.origin = Origin(resume=True)
        base = free_port_block(10 * cfg.brokers + 6)
        self.broker_ports = [
            {k: base + 10 * i + j for j, k in enumerate(BROKER_KEYS)} for i in range(cfg.brokers)
        ]
        self.edge_ports = free_ports(cfg.edges)
        self.brokers: list[GripProc] = []
        self.edges: list[GripProc] = []
        self.redis_lock = threading.Lock()

    def start(self) -> ChaosCluster:
        self.redis.start()
        self.origin.start()
        listed = [f"127.0.0.1:{p['edge_pub_port']}" for p in self.broker_ports]
        common = {
            "routes": [
                f"*,path_beg=/ws/ 127.0.0.1:{self.origin.port},over_http",
                f"* 127.0.0.1:{self.origin.port}",
            ],
            "store": self.redis.url(),
            "brokers": listed,
            "redis_wait_replicas": 1,
            "broker_link_timeout_s": 1.5,
            "drain_timeout_s": 0.0,
            "history_max_items": 100000,
            "log_level": "warning",
        }
        configs = [
            write_config(self.dir / f"broker{i}.toml", p, common)
            for i, p in enumerate(self.broker_ports)
        ]
        py = [sys.executable, "-m", "gripcast"]
        self.brokers = [
            GripProc([*py, "broker", "--config", c], self.dir / f"broker{i}.log")
            for i, c in enumerate(configs)
        ]
        self.edges = [
            GripProc(
                [*py, "edge", "--index", str(i), "--config", configs[0]]
                + ["--port", f"127.0.0.1:{port}"],
                self.dir / f"edge{i}.log",
            )
            for i, port in enumerate(self.edge_ports)
        ]
        for p in [*self.brokers, *self.edges]:
            p.start()
        return self

    def publish_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.broker_ports[i]['http_port']}/publish/"

    def items_url(self, i: int, channel: str) -> str:
        return f"http://127.0.0.1:{self.broker_ports[i]['http_port']}/channels/{channel}/items"

    def pids(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name, procs in (("broker", self.brokers), ("edge", self.edges)):
            for i, p in enumerate(procs):
                out[f"{name}{i}"] = p.proc.pid if p.alive() and p.proc else None
        return out

    # -- faults (blocking: run in a thread) ----------------------------------------------------

    def inject(self, f: Fault, log) -> dict:
        t0 = time.monotonic()
        detail = ""
        if f.kind == "broker_kill":
            b = self.brokers[f.target]
            b.kill()
            log(f"broker{f.target} killed (SIGKILL)")
            time.sleep(f.hold_s)  # the fault's planned length: the broker stays down
            b.start()
            detail = f"broker{f.target} down {f.hold_s}s, restarted"
        elif f.kind == "edge_kill":
            e = self.edges[f.target]
            e.kill()
            log(f"edge{f.target} killed (SIGKILL)")
            time.sleep(f.hold_s)  # the fault's planned length: the edge stays down
            e.start()
            detail = f"edge{f.target} down {f.hold_s}s, restarted"
        elif f.kind == "link_cut":
            b = self.brokers[f.target]
            b.signal(signal.SIGSTOP)
            log(f"broker{f.target} cut (SIGSTOP)")
            time.sleep(f.hold_s)  # the fault's planned length: the broker stays cut off
            b.signal(signal.SIGCONT)
            detail = f"broker{f.target} stopped {f.hold_s}s (SIGSTOP/SIGCONT)"
        elif f.kind == "redis_failover":
            with self.redis_lock:
                detail = self._failover(f, log)
        else:
            raise ValueError(f.kind)
        return {"kind": f.kind, "target": f.target, "detail": detail, "took_s": _r(t0)}

    def _failover(self, f: Fault, log) -> str:
        r = self.redis
        if isinstance(r, SentinelGroup):
            old = r.kill_master()
            log(f"redis master :{old.port} killed (SIGKILL)")
            t = time.monotonic()
            new = r.wait_failover(old.port)
            promoted = _r(t)
            r.rejoin(old)
            r.wait_agreed(new)
            return f"sentinel master :{old.port} -> :{new} in {promoted}s, old one rejoined"
        masters = r.master_ports()
        dead = masters[f.target % len(masters)]
        r.kill(dead)
        log(f"redis cluster master :{dead} killed (SIGKILL)")
        t = time.monotonic()
        new = r.wait_failover(dead)
        promoted = _r(t)
        r.restart(dead)
        return f"cluster master :{dead} -> :{new} in {promoted}s, old one rejoined"

    def close(self) -> None:
        for p in [*self.edges, *self.brokers]:
            p.stop()
        self.origin.stop()
        self.redis.close()


def _r(t0: float) -> float:
    return round(time.monotonic() - t0, 2)


# -- clients and publishers (asyncio, this process) -------------------------------------------


@dataclass(slots=True)
class ChaosClient:
    name: str
    kind: str  # "sse" or "ws"
    channel: str
    edge: int
    got: list[str] = field(default_factory=list)
    cuts: int = 0  # connections lost (fault or churn) and resumed
    churned: int = 0
    errors: list[str] = field(default_factory=list)
    # every (re)connection: (seconds into the run, messages received before it, edge, cursor)
    sessions: list[tuple[float, int, int, str | None]] = field(default_factory=list)
    task: asyncio.Task | None = None
    conn: object = None  # the live stream/websocket, for churn


@dataclass(slots=True)
class PubRecord:
    acked: list[tuple[str, str]] = field(default_factory=list)  # (channel, id)
    acked_s: list[float] = field(default_factory=list)  # when each was acknowledged (run s)
    unacked: list[tuple[str, str]] = field(default_factory=list)
    attempts: int = 0
    refused: int = 0  # 503 answers
    retried_ok: int = 0  # acknowledged on a retry


class ZmqPublisher:
    """A publisher's ZeroMQ sockets (``PUBLISHERS``): one PUSH connected to every broker's
    PULL port, and a DEALER per broker for the command socket's ``publish``."""

    REPLY_TIMEOUT_S = 3.0

    def __init__(self, cluster: ChaosCluster) -> None:
        import zmq
        import zmq.asyncio

        self.zmq = zmq
        self.ctx = zmq.asyncio.Context()
        self.cluster = cluster
        self.pusher = self.ctx.socket(zmq.PUSH)
        self.pusher.setsockopt(zmq.LINGER, 0)
        self.pusher.setsockopt(zmq.IMMEDIATE, 1)  # only brokers connected now take items
        for ports in cluster.broker_ports:
            self.pusher.connect(f"tcp://127.0.0.1:{ports['push_in_port']}")
        self.dealers: dict[int, object] = {}
        self._rids = 0

    async def push(self, item: dict, rec: PubRecord) -> bool:
        """Send ``item`` on the PUSH socket (``J`` + JSON); whether it left (False: no broker
        connected, after a few tries).  Never acknowledged: PUSH has no answer."""
        frame = b"J" + json.dumps(item).encode()
        for attempt in range(4):
            rec.attempts += 1
            try:
                await self.pusher.send(frame, flags=self.zmq.NOBLOCK)
                return True
            except self.zmq.Again:
                await asyncio.sleep(0.2 * (attempt + 1))
        return False

    def _dealer(self, broker: int):
        sock = self.dealers.get(broker)
        if sock is None:
            zmq = self.zmq
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            port = self.cluster.broker_ports[broker]["command_port"]
            sock.connect(f"tcp://127.0.0.1:{port}")
            self.dealers[broker] = sock
        return sock

    async def command(self, broker: int, item: dict, rec: PubRecord) -> tuple[bool, bool | None]:
        """The command socket's ``publish`` of ``item`` on ``broker``: ``(acknowledged,
        sent)``, sent None when the answer never came (it may have been stored)."""
        from broker.ingest import tnetstring

        sock = self._dealer(broker)
        self._rids += 1
        rid = str(self._rids).encode()
        fmt = item["formats"]
        body = {
            b"channel": item["channel"].encode(),
            b"id": item["id"].encode(),
            b"formats": {
                b"http-stream": {b"content": fmt["http-stream"]["content"].encode()},
                b"ws-message": {b"content": fmt["ws-message"]["content"].encode()},
            },
        }
        req = {b"id": rid, b"method": b"publish", b"args": {b"items": [body]}}
        try:
            await sock.send_multipart([b"", tnetstring.dumps(req)], flags=self.zmq.NOBLOCK)
        except self.zmq.Again:
            return False, False  # not connected to that broker: nothing sent
        deadline = time.monotonic() + self.REPLY_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                frames = await asyncio.wait_for(sock.recv_multipart(), left)
            except TimeoutError:
                break
            reply = tnetstring.loads(frames[-1])
            if reply.get(b"id") != rid:
                continue  # a late answer to an earlier request that timed out
            if reply.get(b"success"):
                return True, True
            rec.refused += reply.get(b"condition") == b"store-unavailable"
            return False, True
        return False, None

    def close(self) -> None:
        self.pusher.close()
        for sock in self.dealers.values():
            sock.close()  # type: ignore[attr-defined]
        self.ctx.term()


class Run:
    def __init__(self, cfg: ChaosConfig, cluster: ChaosCluster, log) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.log = log
        self.rng = random.Random(f"clients-{cfg.seed}")
        self.channels = [f"chaos{i}" for i in range(cfg.channels)]
        self.clients: list[ChaosClient] = []
        self.pubs: list[PubRecord] = []
        self.stop_publishing = asyncio.Event()
        self.stop_all = False
        self.edge_down: set[int] = set()
        self.timeline: list[dict] = []
        self.t0 = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    # -- clients ------------------------------------------------------------------------------

    def pick_edge(self, c: ChaosClient) -> int:
        up = [i for i in range(self.cfg.edges) if i not in self.edge_down]
        if c.edge in up:
            return c.edge
        return self.rng.choice(up) if up else c.edge

    async def client_loop(self, c: ChaosClient, http) -> None:
        import httpx
        import websockets

        while not self.stop_all:
            edge = self.pick_edge(c)
            c.edge = edge
            port = self.cluster.edge_ports[edge]
            cursor = c.got[-1] if c.got else None
            c.sessions.append((self.now(), len(c.got), edge, cursor))
            try:
                if c.kind == "sse":
                    headers = {"Last-Event-ID": cursor} if cursor else {}
                    url = f"http://127.0.0.1:{port}/sse/{c.channel}"
                    async with http.stream("GET", url, headers=headers) as r:
                        if r.status_code != 200:
                            raise OSError(f"status {r.status_code}")
                        c.conn = r
                        async for line in r.aiter_lines():
                            if line.startswith("data: "):
                                c.got.append(line[6:])
                else:
                    url = f"ws://127.0.0.1:{port}/ws/{c.channel}"
                    if cursor:
                        url += f"?prev={cursor}"
                    async with websockets.connect(url, open_timeout=10, ping_interval=None) as ws:
                        c.conn = ws
                        async for msg in ws:
                            text = msg if isinstance(msg, str) else msg.decode()
                            if text.startswith("c:"):
                                c.errors.append(f"{self.now()} control {text}")
                                continue
                            c.got.append(text)
            except (httpx.HTTPError, websockets.WebSocketException, OSError) as exc:
                if not self.stop_all and len(c.errors) < 20:
                    c.errors.append(f"{self.now()} {type(exc).__name__}")
            finally:
                c.conn = None
            if self.stop_all:
                return
            c.cuts += 1
            await asyncio.sleep(self.rng.uniform(0.05, 0.5))  # reconnect backoff

    async def cut(self, c: ChaosClient) -> None:
        conn = c.conn
        if conn is None:
            return
        c.churned += 1
        if hasattr(conn, "aclose"):
            await conn.aclose()  # httpx response: the stream ends
        else:
            await conn.close()  # type: ignore[attr-defined]

    async def churn(self) -> None:
        if self.cfg.churn_per_s <= 0:
            return
        while not self.stop_publishing.is_set():
            await asyncio.sleep(self.rng.expovariate(self.cfg.churn_per_s))
            c = self.rng.choice(self.clients)
            try:
                await self.cut(c)
            except Exception as exc:  # a cut of a stream already ending: nothing to do
                c.errors.append(f"{self.now()} churn {type(exc).__name__}")

    # -- publishers ---------------------------------------------------------------------------

    async def publisher(self, n: int, http) -> None:

        rec = PubRecord()
        self.pubs.append(rec)
        rng = random.Random(f"pub-{self.cfg.seed}-{n}")
        interval = self.cfg.publishers / self.cfg.publish_rate
        zpub = ZmqPublisher(self.cluster) if self.cfg.publisher != "http" else None
        try:
            await self._publish_loop(n, http, rec, rng, interval, zpub)
        finally:
            if zpub is not None:
                zpub.close()

    async def _publish_loop(
        self,
        n: int,
        http,
        rec: PubRecord,
        rng: random.Random,
        interval: float,
        zpub: ZmqPublisher | None,
    ) -> None:
        import httpx

        k = 0
        next_at = time.monotonic()
        while not self.stop_publishing.is_set():
            next_at += interval
            k += 1
            channel = rng.choice(self.channels)
            pid = f"p{n}-{k}"
            item = {
                "channel": channel,
                "id": pid,
                "formats": {
                    "http-stream": {"content": f"id: {pid}\ndata: {pid}\n\n"},
                    "ws-message": {"content": pid},
                },
            }
            ok = False
            sent = False
            if self.cfg.publisher == "zmq":
                assert zpub is not None
                sent = await zpub.push(item, rec)
            for attempt in range(4 if self.cfg.publisher != "zmq" else 0):
                broker = rng.randrange(self.cfg.brokers)
                rec.attempts += 1
                if self.cfg.publisher == "command":
                    assert zpub is not None
                    done, answered = await zpub.command(broker, item, rec)
                    sent = sent or answered is not False
                    if done:
                        ok = True
                        rec.retried_ok += attempt > 0
                        break
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                url = self.cluster.publish_url(broker)
                try:
                    r = await http.post(url, json={"items": [item]})
                    sent = True
                    if r.status_code == 200:
                        ok = True
                        rec.retried_ok += attempt > 0
                        break
                    rec.refused += r.status_code == 503
                except httpx.ConnectError:
                    pass  # nothing sent
                except httpx.HTTPError:
                    sent = True  # sent; the answer never came
                await asyncio.sleep(0.2 * (attempt + 1))
            if ok:
                rec.acked.append((channel, pid))
                rec.acked_s.append(self.now())
            elif sent:
                rec.unacked.append((channel, pid))
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()

    # -- faults -------------------------------------------------------------------------------

    async def faults(self, plan: list[Fault]) -> None:
        for f in plan:
            delay = self.t0 + f.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - self.t0 > self.cfg.duration_s:
                break  # the run's time is up: no new fault
            start = self.now()
            self.log(f"[{start:6.1f}s] fault {f.kind} target={f.target} hold={f.hold_s}s")
            if f.kind == "edge_kill":
                self.edge_down.add(f.target)
            try:
                entry = await asyncio.to_thread(self.cluster.inject, f, self.log)
            except Exception as exc:
                entry = {"kind": f.kind, "target": f.target, "error": repr(exc)}
                self.log(f"  fault failed: {exc!r}")
            finally:
                self.edge_down.discard(f.target) if f.kind == "edge_kill" else None
            entry["at_s"] = start
            self.timeline.append(entry)
            self.log(f"[{self.now():6.1f}s]   recovered: {entry.get('detail', '')}")

    # -- the run ------------------------------------------------------------------------------

    async def main(self, plan: list[Fault]) -> dict:
        import httpx

        cfg = self.cfg
        n = cfg.sse_clients + cfg.ws_clients
        limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
        timeout = httpx.Timeout(None, connect=5.0)
        async with (
            httpx.AsyncClient(timeout=timeout, limits=limits) as sse_http,
            httpx.AsyncClient(timeout=httpx.Timeout(5.0), limits=limits) as pub_http,
        ):
            for i in range(n):
                kind = "sse" if i < cfg.sse_clients else "ws"
                c = ChaosClient(
                    f"{kind}{i}",
                    kind,
                    self.channels[i % cfg.channels],
                    self.rng.randrange(cfg.edges),
                )
                self.clients.append(c)
            for c in self.clients:
                c.task = asyncio.create_task(self.client_loop(c, sse_http))
            # every client subscribed before any fault: warm-up items until each saw one
            await self.warm_up(pub_http)
            self.t0 = time.monotonic()
            self.log(f"{n} clients subscribed; publishing for {cfg.duration_s:.0f}s")
            pubs = [asyncio.create_task(self.publisher(k, pub_http)) for k in range(cfg.publishers)]
            faults = asyncio.create_task(self.faults(plan))
            churn = asyncio.create_task(self.churn())
            await asyncio.sleep(cfg.duration_s)
            await faults  # a fault in progress finishes (its restart included)
            self.stop_publishing.set()
            await asyncio.gather(*pubs, churn)
            published_s = self.now()
            self.log(f"[{published_s:6.1f}s] publishing stopped; clients catching up")
            history = await self.settle(pub_http)
            self.stop_all = True
            for c in self.clients:
                assert c.task is not None
                c.task.cancel()
            await asyncio.gather(*(c.task for c in self.clients if c.task), return_exceptions=True)
        return self.account(history)

    async def warm_up(self, http) -> None:
        deadline = time.monotonic() + 60
        k = 0
        while not all(c.got for c in self.clients):
            if time.monotonic() > deadline:
                missing = [c.name for c in self.clients if not c.got]
                raise TimeoutError(f"clients never subscribed: {missing[:10]}")
            k += 1
            for ch in self.channels:
                item = {
                    "channel": ch,
                    "id": f"w-{ch}-{k}",
                    "formats": {
                        "http-stream": {"content": f"id: w-{ch}-{k}\ndata: w-{ch}-{k}\n\n"},
                        "ws-message": {"content": f"w-{ch}-{k}"},
                    },
                }
                url = self.cluster.publish_url(k % self.cfg.brokers)
                await http.post(url, json={"items": [item]})
            await asyncio.sleep(0.2)  # pacing the warm-up items only

    async def read_history(self, http, channel: str) -> list[str] | None:
        for b in range(self.cfg.brokers):
            out: list[str] = []
            after = None
            try:
                while True:
                    params = {"limit": "1000", **({"after": after} if after else {})}
                    r = await http.get(self.cluster.items_url(b, channel), params=params)
                    if r.status_code != 200:
                        raise OSError(r.status_code)
                    body = r.json()
                    out += [it.get("publisher_id", it["id"]) for it in body["items"]]
                    if not body.get("more"):
                        break
                    after = body["next"]
                return out
            except (OSError, ValueError, KeyError) as exc:
                self.log(f"history of {channel} from broker{b}: {exc!r}")
            except Exception as exc:  # httpx errors: try the next broker
                self.log(f"history of {channel} from broker{b}: {exc!r}")
        return None

    async def settle(self, http) -> dict[str, list[str]]:
        """Wait until every client has its channel's last item (or ``settle_s`` passed)."""
        deadline = time.monotonic() + self.cfg.settle_s
        history: dict[str, list[str]] = {}
        while True:
            for ch in self.channels:
                h = await self.read_history(http, ch)
                if h is not None:
                    history[ch] = h
            done = all(
                c.got and history.get(c.channel) and c.got[-1] == history[c.channel][-1]
                for c in self.clients
            )
            if done or time.monotonic() > deadline:
                return history
            await asyncio.sleep(0.5)  # polling the clients' progress

    @staticmethod
    def context(c: ChaosClient, window: list[str], k: int) -> dict:
        """Where a client's loss sits: the messages around it and its (re)connections near."""
        got_at = {m: i for i, m in enumerate(c.got)}
        before = next((got_at[m] for m in reversed(window[:k]) if m in got_at), -1)
        return {
            "client": c.name,
            "missing": window[k],
            "history_around": window[max(0, k - 3) : k + 4],
            "got_around": c.got[max(0, before - 2) : before + 4],
            "sessions_near": [s for s in c.sessions if before - 3 <= s[1] <= before + 4],
        }

    def account(self, history: dict[str, list[str]]) -> dict:
        acked = {pid: ch for p in self.pubs for ch, pid in p.acked}
        unacked = {pid: ch for p in self.pubs for ch, pid in p.unacked}
        published = sum(p.attempts for p in self.pubs)
        lost = dup = foreign = unacked_partial = 0
        lost_examples: list[str] = []
        lost_context: list[dict] = []
        dup_examples: list[str] = []
        in_history: set[str] = set()
        pos: dict[str, dict[str, int]] = {}
        for ch, h in history.items():
            in_history.update(h)
            pos[ch] = {pid: i for i, pid in enumerate(h)}
        store_lost = [pid for pid, ch in acked.items() if pid not in in_history]
        delivered = 0
        for c in self.clients:
            got = c.got
            delivered += sum(1 for m in got if m.startswith("p"))
            seen: set[str] = set()
            for m in got:
                if m in seen:
                    dup += 1
                    if len(dup_examples) < 10:
                        dup_examples.append(f"{c.name}:{m}")
                seen.add(m)
            p = pos.get(c.channel, {})
            idx = [p[m] for m in got if m in p]
            foreign += sum(1 for m in got if m not in p)
            if not idx:
                continue
            h = history[c.channel]
            first = idx[0]
            window = h[first:]  # still connected at the end: up to the channel's last item
            for k, m in enumerate(window):
                if m not in seen:
                    if m in acked:
                        lost += 1
                        if len(lost_examples) < 10:
                            lost_examples.append(f"{c.name}:{m}")
                            lost_context.append(self.context(c, window, k))
                    else:
                        unacked_partial += 1
            # acknowledged items lost by the store, for a client subscribed at the time: its
            # neighbours in publishing order are not known, so count them once per client
            # on that channel
            lost += sum(1 for pid in store_lost if acked[pid] == c.channel)
            if [m for m in got if m in p] != [m for m in window if m in seen]:
                # order: what it got must be in history order
                lost_examples.append(f"{c.name}: out of history order")
        delivered_unacked = {m for c in self.clients for m in c.got if m in unacked}
        phantom = sorted(m for m in delivered_unacked if m not in in_history)
        clients_ok = sum(1 for c in self.clients if c.got)
        order_errors = sum(1 for e in lost_examples if "order" in e)
        ok = (
            lost == 0
            and dup == 0
            and not phantom
            and unacked_partial == 0
            and order_errors == 0
            and foreign == 0
            and len(history) == len(self.channels)
        )
        # publishing went on after the faults: acknowledged once the last one had recovered
        faults_end = max(
            (e["at_s"] + e.get("took_s", 0.0) for e in self.timeline if "error" not in e),
            default=0.0,
        )
        acked_after = sum(1 for p in self.pubs for t in p.acked_s if t > faults_end)
        kinds: dict[str, int] = {}
        for k in FAULT_KINDS:
            kinds[k] = sum(1 for e in self.timeline if e["kind"] == k and "error" not in e)
        return {
            "ok": ok,
            "published": published,
            "items": len(acked) + len(unacked),
            "acknowledged": len(acked),
            "acknowledged_after_faults": acked_after,
            "not_acknowledged": len(unacked),
            # of those, stored (and so delivered to every client subscribed): a ZeroMQ PUSH
            # item that is not was refused or dropped with its broker, reaching no one
            "not_acknowledged_stored": sum(1 for pid in unacked if pid in in_history),
            "retried_ok": sum(p.retried_ok for p in self.pubs),
            "refused_503": sum(p.refused for p in self.pubs),
            "delivered": delivered,
            "lost": lost,
            "lost_in_store": len(store_lost),
            "duplicated": dup,
            "unacked_partial": unacked_partial,
            "unacked_delivered_not_stored": len(phantom),
            "outside_history": foreign,
            "order_errors": order_errors,
            "history_items": {ch: len(h) for ch, h in history.items()},
            "clients": len(self.clients),
            "clients_received": clients_ok,
            "client_cuts": sum(c.cuts for c in self.clients),
            "churned": sum(c.churned for c in self.clients),
            "faults": kinds,
            "timeline": self.timeline,
            "examples": {
                "lost": lost_examples[:10],
                "lost_context": lost_context,
                "duplicated": dup_examples,
                "phantom": phantom[:10],
                "client_errors": [e for c in self.clients for e in c.errors][:20],
            },
        }


def run_on(cluster: ChaosCluster, cfg: ChaosConfig, plan: list[Fault], log=print) -> dict:
    """Clients, publishers and ``plan``'s faults on a running ``cluster`` (``cfg``'s brokers and
    edges must be the cluster's); the accounting.  The fault tests run several on one cluster."""
    return asyncio.run(Run(cfg, cluster, log).main(plan))


def make_cluster(cfg: ChaosConfig, workdir: Path, link_cut: str = "stop") -> ChaosCluster:
    """The cluster of a run: ``link_cut`` ``"netns"`` puts each broker on a host of its own
    (``bench.netcut``) and cuts its links for real; ``"stop"`` SIGSTOPs it."""
    if link_cut == "netns" and cfg.publisher != "http":
        raise ValueError(
            f"link_cut netns needs the http publisher: --publisher {cfg.publisher} reaches the "
            "brokers' ZeroMQ ports on loopback, which a broker on a host of its own does not bind"
        )
    if link_cut == "netns":
        from bench.netcut import NetcutCluster

        return NetcutCluster(cfg, workdir, alternate=True)
    if link_cut != "stop":
        raise ValueError(f"link_cut: netns or stop, not {link_cut!r}")
    return ChaosCluster(cfg, workdir)


def run_chaos(cfg: ChaosConfig, log=print, link_cut: str = "stop") -> dict:
    """One chaos run: start everything, run, account, stop everything."""
    plan = fault_plan(cfg)
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as d:
        cluster = make_cluster(cfg, Path(d), link_cut)
        t0 = time.monotonic()
        try:
            cluster.start()
            log(
                f"chaos seed={cfg.seed}: {cfg.brokers} brokers, {cfg.edges} edges, redis "
                f"{cfg.redis} ({cluster.redis.url()}), link cuts {link_cut}; started in {_r(t0)}s; "
                f"{len(plan)} faults planned"
            )
            result = run_on(cluster, cfg, plan, log)
        except BaseException:
            for name in [f"broker{i}" for i in range(cfg.brokers)] + [
                f"edge{i}" for i in range(cfg.edges)
            ]:
                try:
                    tail = (Path(d) / f"{name}.log").read_text(errors="replace")[-1500:]
                except OSError:
                    tail = ""
                if tail.strip():
                    log(f"--- {name} log tail ---\n{tail}")
            raise
        finally:
            cluster.close()
    result["config"] = asdict(cfg)
    result["link_cut"] = link_cut
    result["plan"] = [asdict(f) for f in plan]
    result["wall_s"] = _r(t0)
    return result


def print_result(r: dict, console) -> None:
    from rich.table import Table

    pub = r["config"].get("publisher", "http")
    t = Table(title=f"chaos (seed {r['config']['seed']}, redis {r['config']['redis']}, {pub})")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k in (
        "published",
        "items",
        "acknowledged",
        "acknowledged_after_faults",
        "not_acknowledged",
        "not_acknowledged_stored",
        "retried_ok",
        "refused_503",
        "delivered",
        "lost",
        "lost_in_store",
        "duplicated",
        "unacked_partial",
        "unacked_delivered_not_stored",
        "outside_history",
        "order_errors",
        "clients",
        "client_cuts",
        "churned",
    ):
        t.add_row(k, f"{r[k]:,}")
    console.print(t)
    ft = Table(title="faults")
    for col in ("at_s", "kind", "detail", "took_s"):
        ft.add_column(col)
    for e in r["timeline"]:
        ft.add_row(
            f"{e['at_s']:.1f}",
            e["kind"],
            e.get("detail") or e.get("error", ""),
            f"{e.get('took_s', 0):.1f}",
        )
    console.print(ft)
    console.print(
        "faults: "
        + ", ".join(f"{k} {v}" for k, v in r["faults"].items())
        + "  ->  "
        + ("[green]OK[/green]" if r["ok"] else "[red]FAILED[/red]")
    )
    ex = {k: v for k, v in r["examples"].items() if v}
    if ex:
        console.print(ex)
