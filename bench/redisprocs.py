"""Redis processes for benches (and the tests' cluster helper): a standalone ``redis-server``
and a Redis Cluster (3 masters, 3 replicas by default) made with ``redis-cli --cluster create``,
on ports chosen at run time, stopped by their own PIDs.

    with RedisCluster() as c:          # slots covered, every replica connected and in sync
        c.url()                        # redis+cluster://127.0.0.1:p1,...
        c.pids(), c.ports()            # every node, for CPU and INFO commandstats
    with StandaloneRedis() as r:
        r.url()                        # redis://127.0.0.1:p/0

Readiness is polled (``PING``, ``CLUSTER INFO``, ``INFO replication``), never a fixed sleep.
Nothing is persisted.  ``tests/redis_cluster.py`` builds its cluster with ``start_cluster_nodes``
and ``cluster_ready`` from here (one implementation of the startup; the tests add faults).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import hiredis

REDIS_SERVER = (
    os.environ.get("GRIPCAST_REDIS_SERVER")
    or shutil.which("redis-server")
    or "/usr/bin/redis-server"
)
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
NODE_TIMEOUT_MS = 1000


def free_port_block(n: int, low: int = 20000, high: int = 30000) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1, outside the ephemeral range."""
    for _ in range(200):
        base = random.randrange(low, high - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def command(port: int, *args: Any, timeout: float = 2.0) -> Any:
    """One Redis command on ``127.0.0.1:port`` on a fresh connection; its decoded reply."""
    reader = hiredis.Reader()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(hiredis.pack_command(tuple(args)))
        while True:
            reply = reader.gets()
            if reply is not False:
                return reply
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"127.0.0.1:{port} closed the connection")
            reader.feed(chunk)


def info(port: int, section: str = "replication") -> dict[str, str]:
    text = command(port, "INFO", section).decode()
    return dict(
        line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#")
    )


def cluster_info(port: int) -> dict[str, str]:
    text = command(port, "CLUSTER", "INFO").decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def command_calls(port: int) -> dict[str, int]:
    """``INFO commandstats``: calls per command (``cmdstat_evalsha`` -> ``evalsha``)."""
    out = {}
    for key, value in info(port, "commandstats").items():
        if key.startswith("cmdstat_"):
            fields = dict(kv.split("=", 1) for kv in value.split(","))
            out[key[len("cmdstat_") :]] = int(fields["calls"])
    return out


def server_cpu_s(port: int) -> float:
    """``used_cpu_sys + used_cpu_user`` of the server on ``port`` (all its threads)."""
    f = info(port, "cpu")
    return float(f["used_cpu_sys"]) + float(f["used_cpu_user"])


def _ping(port: int) -> bool:
    try:
        return command(port, "PING", timeout=0.5) == b"PONG"
    except (OSError, ConnectionError):
        return False


def poll(pred: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``pred()`` (backing off to 0.1 s) until true; TimeoutError(what + last answer)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        ok = pred()
        if ok is True:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {ok}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class RedisNode:
    """One ``redis-server`` on 127.0.0.1:``port`` (extra arguments appended), no persistence."""

    def __init__(self, port: int, *extra_args: str) -> None:
        self.port = port
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="bench-redis-")
        self.logfile = os.path.join(self._dir.name, "redis.log")

    def start(self, timeout: float = 20.0) -> RedisNode:
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", self._dir.name, "--logfile", self.logfile]
        argv += ["--daemonize", "no", *self.extra_args]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        proc = self.proc

        def up() -> bool | str:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited before answering PING:\n{self.log_tail()}")
            return _ping(self.port) or "no PONG"

        try:
            poll(up, timeout, f"redis-server on {self.port}")
        except BaseException:
            self.close()
            raise
        return self

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._dir.cleanup()


class StandaloneRedis:
    def __init__(self) -> None:
        self.node = RedisNode(free_port_block(1))

    def start(self) -> StandaloneRedis:
        self.node.start()
        return self

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.node.port}/0"

    def ports(self) -> list[int]:
        return [self.node.port]

    def pids(self) -> list[int]:
        return [self.node.proc.pid] if self.node.proc else []

    def pids_of(self, ports: list[int]) -> list[int]:
        return self.pids()

    def close(self) -> None:
        self.node.close()

    def __enter__(self) -> StandaloneRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def cluster_node_args(base: int, n: int, i: int) -> list[str]:
    """Arguments of node ``i`` of ``n`` in a cluster on ports ``base..``: data port ``base + i``,
    its bus port ``base + n + i`` (not port + 10000, which may be taken)."""
    return [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        str(NODE_TIMEOUT_MS),
        "--cluster-port",
        str(base + n + i),
        "--cluster-replica-validity-factor",
        "0",  # a replica may always be promoted (tests kill masters on purpose)
        "--repl-diskless-sync-delay",
        "0",  # a replica's first full sync starts at once (the default waits 5 s for others)
    ]


def create_cluster(ports: list[int], replicas_per_master: int, timeout: float = 30.0) -> None:
    """``redis-cli --cluster create`` over the running nodes on ``ports``."""
    argv = [REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{p}" for p in sorted(ports)]]
    argv += ["--cluster-replicas", str(replicas_per_master), "--cluster-yes"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")


def cluster_ready(ports: list[int], masters: int, replicas_per_master: int) -> bool | str:
    """True when every node on ``ports`` says cluster_state:ok with all slots covered, there are
    ``masters`` masters each with its replicas connected, and every replica's link is up;
    else what is not ready yet."""
    seen = 0
    for port in ports:
        try:
            ci = cluster_info(port)
            if ci.get("cluster_state") != "ok" or ci.get("cluster_slots_ok") != "16384":
                return f"{port}: {ci.get('cluster_state')} slots_ok={ci.get('cluster_slots_ok')}"
            rep = info(port)
        except (OSError, ConnectionError) as exc:
            return f"{port}: {exc}"
        if rep.get("role") == "master":
            seen += 1
            if int(rep.get("connected_slaves", "0")) < replicas_per_master:
                return f"{port}: replicas not connected"
        elif rep.get("master_link_status") != "up":
            return f"{port}: replica link {rep.get('master_link_status')}"
    if seen < masters:
        return f"{seen} masters"
    return True


class RedisCluster:
    """``masters`` masters with ``replicas_per_master`` replicas each, all on 127.0.0.1."""

    def __init__(self, masters: int = 3, replicas_per_master: int = 1) -> None:
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.nodes: dict[int, RedisNode] = {}

    def start(self, timeout: float = 30.0) -> RedisCluster:
        n = self.masters * (1 + self.replicas_per_master)
        base = free_port_block(2 * n)
        try:
            for i in range(n):
                self.nodes[base + i] = RedisNode(base + i, *cluster_node_args(base, n, i)).start()
            create_cluster(list(self.nodes), self.replicas_per_master, timeout)
            poll(
                lambda: cluster_ready(list(self.nodes), self.masters, self.replicas_per_master),
                timeout,
                "redis cluster not ready",
            )
        except BaseException:
            self.close()
            raise
        return self

    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in sorted(self.nodes)[:3])

    def ports(self) -> list[int]:
        return sorted(self.nodes)

    def master_ports(self) -> list[int]:
        return sorted(p for p in self.nodes if info(p).get("role") == "master")

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes.values() if n.proc is not None]

    def pids_of(self, ports: list[int]) -> list[int]:
        return [n.proc.pid for p, n in self.nodes.items() if p in ports and n.proc is not None]

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
