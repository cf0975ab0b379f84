"""Brokers on their own "hosts" (Linux network namespaces), cut off the network for real and
restored (issue #15).

Each broker ``i`` runs in namespace ``<id>b<i>`` (``ip netns exec``) with two veth pairs to the
root namespace, where Redis, the edges, the origin, the clients and the publishers run:

* the **edge link** (``<id>e<i>``): the broker's XPUB and edge ROUTER (``edge_bind``); the edges
  connect to its namespace address;
* the **service link** (``<id>s<i>``): the HTTP publish API (``http_bind``), the metrics
  listener and the broker's own connections to Redis.  Redis (standalone, Sentinel or Cluster:
  ``bench.redisprocs`` with ``host``) listens on, and announces, the *hub* address: the root
  end of one more veth pair, each broker host routing to it over its service link.

A cut sets the namespace end of a link down: the root end stays up without carrier, so what the
edges (or publishers, or Redis) send is dropped silently, as on a dead cable -- TCP stalls and
retransmits, nothing is reset.  ``link_cut`` cuts the edge link only (the broker keeps taking
publishes and storing them, and fans them out into the void); ``host_cut`` cuts both (the
broker's publishes time out, its Redis connection stalls).  Restoring sets the links up again.

Addresses: ``10.<a>.<b + 2i>.{1,2}/24`` (edge link) and ``10.<a>.<b + 2i + 1>.{1,2}/24``
(service link), ``10.<a>.<b + 2n>.1`` (the hub), ``<a>.<b>`` drawn at random among subnets not in use on this machine (several
runs can coexist).  Needs root and ``ip netns``: ``netns_unavailable()`` says why not.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from bench.chaos import BROKER_KEYS, ChaosCluster, ChaosConfig, Fault, GripProc, _r, write_config
from bench.origin import Origin
from bench.procs import free_port_block, free_ports
from bench.redisprocs import RedisCluster, RedisServer, SentinelGroup, reachable_at

CUT_KINDS = ("link_cut", "host_cut")


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"gcprobe{secrets.token_hex(3)}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns is unavailable: {r.stderr.strip()}"
    r = subprocess.run(
        ["ip", "-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        capture_output=True,
        text=True,
    )
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if r.returncode != 0:
        return f"veth pairs are unavailable: {r.stderr.strip()}"
    return None


def ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _subnets_in_use() -> set[tuple[int, int]]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    used = set()
    for line in out.split():
        if line.count(".") == 3 and "/" in line:
            a, b, c, _ = line.split("/")[0].split(".")
            if a == "10":
                used.add((int(b), int(c)))
    return used


class BrokerHosts:
    """``n`` broker namespaces, each with an edge link and a service link to the root one."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.id = "gc" + secrets.token_hex(3)
        used = _subnets_in_use()
        rng = random.Random()
        for _ in range(100):
            a, b = rng.randrange(100, 250), rng.randrange(0, 250 - 2 * n, 2)
            if not any((a, b + k) in used for k in range(2 * n + 1)):
                break
        else:
            raise RuntimeError("no free 10.x.y.0/24 subnets for the broker hosts")
        self.net = (a, b)
        self.created: list[str] = []
        self.cut_now: dict[int, str] = {}

    def ns(self, i: int) -> str:
        return f"{self.id}b{i}"

    def addr(self, i: int, link: str, end: str) -> str:
        """``link``: "e" (edge) or "s" (service); ``end``: "root" (.1) or "ns" (.2)."""
        a, b = self.net
        return f"10.{a}.{b + 2 * i + (link == 's')}.{1 if end == 'root' else 2}"

    @property
    def hub(self) -> str:
        """The root namespace's address every broker host reaches Redis at (the root end of
        a veth pair to a namespace of its own, so that it has a carrier whatever is cut)."""
        a, b = self.net
        return f"10.{a}.{b + 2 * self.n}.1"

    def exec(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i)]

    def up(self) -> BrokerHosts:
        try:
            ns = f"{self.id}h"
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("link", "add", ns, "type", "veth", "peer", "name", "hub", "netns", ns)
            ip("addr", "add", f"{self.hub}/24", "dev", ns)
            ip("link", "set", ns, "up")
            ip("-n", ns, "link", "set", "dev", "hub", "up")
            for i in range(self.n):
                ns = self.ns(i)
                ip("netns", "add", ns)
                self.created.append(ns)
                ip("-n", ns, "link", "set", "lo", "up")
                for link in ("e", "s"):
                    root_dev = f"{self.id}{link}{i}"  # <= 15 characters
                    ip("link", "add", root_dev, "type", "veth", "peer", "name", link, "netns", ns)
                    ip("addr", "add", f"{self.addr(i, link, 'root')}/24", "dev", root_dev)
                    ip("link", "set", root_dev, "up")
                    ip("-n", ns, "addr", "add", f"{self.addr(i, link, 'ns')}/24", "dev", link)
                    ip("-n", ns, "link", "set", link, "up")
                self._route_hub(i)
        except BaseException:
            self.down()
            raise
        return self

    def cut(self, i: int, kind: str) -> None:
        """Cut broker ``i``'s edge link (``link_cut``) or both links (``host_cut``)."""
        links = ("e",) if kind == "link_cut" else ("e", "s")
        for link in links:
            ip("-n", self.ns(i), "link", "set", link, "down")
        self.cut_now[i] = kind

    def restore(self, i: int) -> None:
        for link in ("e", "s"):
            ip("-n", self.ns(i), "link", "set", link, "up")
        if self.cut_now.pop(i, None) == "host_cut":
            self._route_hub(i)  # gone with the link

    def _route_hub(self, i: int) -> None:
        ip("-n", self.ns(i), "route", "add", f"{self.hub}/32", "via", self.addr(i, "s", "root"))

    def down(self) -> None:
        """Delete the namespaces (their veth pairs go with them).  Only processes started in
        them live there: any left is killed first."""
        for ns in reversed(self.created):
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()


class NetcutCluster(ChaosCluster):
    """A chaos cluster (``bench.chaos``: ``run_on`` drives it) whose brokers are on their own
    hosts (``BrokerHosts``); Redis (``cfg.redis``: ``standalone``, ``sentinel`` or ``cluster``,
    known by the hub address), edges, origin, clients and publishers in the root namespace.
    Faults: ``link_cut`` / ``host_cut`` (``BrokerHosts.cut``, restored after ``hold_s``), the
    others as in ``ChaosCluster``.  ``alternate``: ``link_cut`` faults are an edge-link cut and
    a whole-host cut in turn (``bench.chaos``'s plans draw ``link_cut`` only).

    ``zmq_heartbeat_s`` (ZMTP heartbeats) drops a silent broker link after three intervals: a
    cut longer than that loses what was in flight for good, and only history repairs it."""

    def __init__(
        self,
        cfg: ChaosConfig,
        workdir: Path,
        zmq_heartbeat_s: float = 0.5,
        alternate: bool = False,
        broker_link_timeout_s: float = 1.5,
    ) -> None:
        self.cfg = cfg
        self.dir = workdir
        self.hosts = BrokerHosts(cfg.brokers)
        self.redis: RedisServer | SentinelGroup | RedisCluster  # type: ignore[assignment]
        hub = self.hosts.hub
        if cfg.redis == "standalone":
            self.redis = RedisServer(None, *reachable_at(hub))
        elif cfg.redis == "sentinel":
            self.redis = SentinelGroup(replicas=1, sentinels=3, host=hub)
        elif cfg.redis == "cluster":
            self.redis = RedisCluster(host=hub)
        else:
            raise ValueError(f"redis: standalone, sentinel or cluster, not {cfg.redis!r}")
        self.alternate = alternate
        self.link_cuts = 0
        self.origin = Origin(resume=True)
        base = free_port_block(10 * cfg.brokers + 6)
        self.broker_ports = [
            {k: base + 10 * i + j for j, k in enumerate(BROKER_KEYS)} for i in range(cfg.brokers)
        ]
        self.edge_ports = free_ports(cfg.edges)
        self.metrics_ports = free_ports(cfg.brokers)
        self.brokers: list[GripProc] = []
        self.edges: list[GripProc] = []
        self.redis_lock = threading.Lock()
        self.zmq_heartbeat_s = zmq_heartbeat_s
        self.broker_link_timeout_s = broker_link_timeout_s

    def start(self) -> NetcutCluster:
        self.hosts.up()
        self.redis.start()
        if isinstance(self.redis, RedisServer):
            store = f"redis://{self.hosts.hub}:{self.redis.port}"
        else:
            store = self.redis.url()
        self.origin.start()
        listed = [
            f"{self.hosts.addr(i, 'e', 'ns')}:{p['edge_pub_port']}"
            for i, p in enumerate(self.broker_ports)
        ]
        common = {
            "routes": [
                f"*,path_beg=/ws/ 127.0.0.1:{self.origin.port},over_http",
                f"* 127.0.0.1:{self.origin.port}",
            ],
            "store": store,
            "brokers": listed,
            "redis_wait_replicas": 0 if isinstance(self.redis, RedisServer) else 1,
            "broker_link_timeout_s": self.broker_link_timeout_s,
            "zmq_heartbeat_s": self.zmq_heartbeat_s,
            "drain_timeout_s": 0.0,
            "history_max_items": 100000,
            "log_level": "warning",
        }
        py = [sys.executable, "-m", "gripcast"]
        for i, ports in enumerate(self.broker_ports):
            own = {
                **common,
                "edge_bind": self.hosts.addr(i, "e", "ns"),
                "http_bind": self.hosts.addr(i, "s", "ns"),
                "allow_unauthenticated_publish": True,  # a test network
                "metrics_addr": self.hosts.addr(i, "s", "ns"),
                "metrics_port": self.metrics_ports[i],
            }
            cfg_path = write_config(self.dir / f"broker{i}.toml", ports, own)
            self.brokers.append(
                GripProc(
                    [*self.hosts.exec(i), *py, "broker", "--config", cfg_path],
                    self.dir / f"broker{i}.log",
                )
            )
        edge_cfg = write_config(self.dir / "edge.toml", self.broker_ports[0], common)
        self.edges = [
            GripProc(
                [*py, "edge", "--index", str(i), "--config", edge_cfg]
                + ["--port", f"127.0.0.1:{port}"],
                self.dir / f"edge{i}.log",
            )
            for i, port in enumerate(self.edge_ports)
        ]
        # all at once (the edges retry their brokers until they answer), each waited on
        procs = [*self.brokers, *self.edges]
        failed: list[BaseException] = []

        def start_one(p: GripProc) -> None:
            try:
                p.start()
            except BaseException as exc:
                failed.append(exc)

        threads = [threading.Thread(target=start_one, args=(p,)) for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failed:
            raise failed[0]
        return self

    def publish_url(self, i: int) -> str:
        port = self.broker_ports[i]["http_port"]
        return f"http://{self.hosts.addr(i, 's', 'ns')}:{port}/publish/"

    def items_url(self, i: int, channel: str) -> str:
        port = self.broker_ports[i]["http_port"]
        return f"http://{self.hosts.addr(i, 's', 'ns')}:{port}/channels/{channel}/items"

    def inject(self, f: Fault, log) -> dict:
        if f.kind not in CUT_KINDS:
            return super().inject(f, log)
        if f.kind == "link_cut" and self.alternate:
            self.link_cuts += 1
            if self.link_cuts % 2 == 0:
                f = replace(f, kind="host_cut")
        t0 = time.monotonic()
        what = "from the edges" if f.kind == "link_cut" else "from everything"
        before = self.broker_metric(f.target, "gripcast_broker_messages_stored")
        markers = self.broker_metric(f.target, "gripcast_broker_position_markers")
        self.hosts.cut(f.target, f.kind)
        log(f"broker{f.target} cut off {what} ({f.kind})")
        time.sleep(f.hold_s)  # the fault's planned length: the broker stays cut off
        # cut off the edges only, it still answers: what it stored meanwhile went into the void
        during = None
        if f.kind == "link_cut":
            during = self.broker_metric(f.target, "gripcast_broker_messages_stored")
        self.hosts.restore(f.target)
        restored = time.monotonic()
        detail = f"broker{f.target} cut off {what} {f.hold_s}s, restored"
        if before is not None and during is not None:
            detail += f"; it stored {during - before:.0f} messages meanwhile"
        # the edges take the broker back: their SUBs reconnect and subscribe again, and the
        # broker answers each subscription with a position marker
        resubscribed = None
        while markers is not None and time.monotonic() - restored < 15.0:
            now = self.broker_metric(f.target, "gripcast_broker_position_markers")
            if now is not None and now > markers:
                resubscribed = _r(restored)
                detail += f"; edges subscribed again {resubscribed}s after"
                break
            time.sleep(0.1)  # polling the broker's counter
        kind = "link_cut" if self.alternate else f.kind  # (the plan's name, for its counts)
        entry = {"kind": kind, "target": f.target, "detail": detail, "took_s": _r(t0)}
        entry["resubscribed_s"] = resubscribed
        if before is not None and during is not None:
            entry["stored_while_cut"] = during - before
        return entry

    def broker_metric(self, i: int, name: str) -> float | None:
        """A counter from broker ``i``'s /metrics (over its service link); None when it does
        not answer within a second (cut off)."""
        import httpx

        url = f"http://{self.hosts.addr(i, 's', 'ns')}:{self.metrics_ports[i]}/metrics"
        try:
            text = httpx.get(url, timeout=1.0).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith((name + " ", name + "_total ")):
                return float(line.split()[-1])
        return None

    def log_text(self, name: str) -> str:
        """A broker's or edge's log (``broker0``, ``edge1``)."""
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        for i in list(self.hosts.cut_now):
            try:
                self.hosts.restore(i)  # a clean stop (SIGTERM) of what it runs
            except RuntimeError:
                pass
        for p in [*self.edges, *self.brokers]:
            p.stop()
        self.origin.stop()
        self.redis.close()
        self.hosts.down()
