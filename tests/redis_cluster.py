"""A Redis Cluster of real processes for integration tests: 3 masters and 3 replicas on
127.0.0.1 made with ``redis-cli --cluster create``, ports chosen at run time.

    with RedisCluster() as c:                 # slots covered, every replica in sync
        url = c.url()                          # redis+cluster://127.0.0.1:p1,...
        port = c.master_of_slot(1234)
        c.kill(port)                           # SIGKILL a node
        c.wait_failover(port)                  # its replica promoted, cluster_state ok
        c.restart(port)                        # back (it rejoins as a replica)

Readiness is polled (``CLUSTER INFO``, ``CLUSTER SLOTS``, ``INFO replication``), never a fixed
sleep; every wait is bounded; every process is stopped by its own PID (``RedisServer.stop``).
``cluster-node-timeout`` is 1000 ms so a failover takes a couple of seconds.  Each node's data
port and cluster bus port come from one block of free ports (``cluster-port``, so the bus does
not land on port + 10000).  The startup (node arguments, ``redis-cli --cluster create``, readiness) is
bench/redisprocs.py's, shared with the benches.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.redisprocs import (
    NODE_TIMEOUT_MS,
    REDIS_CLI,
    cluster_info,
    cluster_node_args,
    cluster_ready,
    command,
    create_cluster,
)
from tests.helpers import free_port_block
from tests.redis_server import RedisServer

__all__ = ["NODE_TIMEOUT_MS", "RedisCluster", "cli_available", "cluster_info"]


def cli_available() -> bool:
    return os.path.exists(REDIS_CLI) and os.access(REDIS_CLI, os.X_OK)


class RedisCluster:
    def __init__(self, masters: int = 3, replicas_per_master: int = 1) -> None:
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.nodes: dict[int, RedisServer] = {}
        self._first_slot: dict[int, int] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> RedisCluster:
        n = self.masters * (1 + self.replicas_per_master)
        base = free_port_block(2 * n)
        try:
            for i in range(n):
                srv = RedisServer(base + i, *cluster_node_args(base, n, i))
                srv.start()
                self.nodes[base + i] = srv
            create_cluster(list(self.nodes), self.replicas_per_master, timeout)
            self.wait_ready(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every running node says cluster_state:ok, all slots covered, and every master has
        its replicas connected and in sync."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            ok = self._ready()
            if ok is True:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis cluster not ready: {ok}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _ready(self) -> bool | str:
        running = [p for p, s in self.nodes.items() if s.proc is not None and s.proc.poll() is None]
        return cluster_ready(running, self.masters, self.replicas_per_master)

    def close(self) -> None:
        for srv in self.nodes.values():
            srv.close()

    def __enter__(self) -> RedisCluster:
        if not self.nodes:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- topology -------------------------------------------------------------------------------

    def url(self, n: int = 3) -> str:
        ports = sorted(p for p, s in self.nodes.items() if s.proc and s.proc.poll() is None)
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:n])

    def any_port(self) -> int:
        for p, s in self.nodes.items():
            if s.proc is not None and s.proc.poll() is None:
                return p
        raise RuntimeError("no node running")

    def slots(self) -> list[tuple[int, int, int, list[int]]]:
        """``[(first, last, master_port, [replica ports])]``."""
        reply = command(self.any_port(), "CLUSTER", "SLOTS")
        return [(e[0], e[1], e[2][1], [r[1] for r in e[3:]]) for e in reply]

    def master_of_slot(self, slot: int) -> int:
        for first, last, master, _ in self.slots():
            if first <= slot <= last:
                return master
        raise KeyError(slot)

    def master_ports(self) -> list[int]:
        return sorted({m for _, _, m, _ in self.slots()})

    def node_id(self, port: int) -> str:
        return command(port, "CLUSTER", "MYID").decode()

    def run(self, port: int, *args: Any) -> Any:
        return command(port, *args)

    # -- faults ---------------------------------------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (a crash)."""
        for first, _, master, _ in self.slots():
            if master == port:
                self._first_slot[port] = first
        self.nodes[port].kill()

    def wait_failover(self, dead: int, timeout: float = 20.0) -> int:
        """Wait until a replica of the killed master ``dead`` serves its slots and every
        running node says cluster_state:ok; return the new master's port."""
        slot = self._first_slot[dead]
        deadline = time.monotonic() + timeout
        while True:
            try:
                new = self.master_of_slot(slot)
                if new != dead and self._ready_states():
                    return new
            except (OSError, ConnectionError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica took over from {dead}")
            time.sleep(0.02)

    def _ready_states(self) -> bool:
        for port, srv in self.nodes.items():
            if srv.proc is not None and srv.proc.poll() is None:
                if cluster_info(port).get("cluster_state") != "ok":
                    return False
        return True

    def restart(self, port: int, timeout: float = 30.0) -> None:
        """Start a killed node again (same port and nodes.conf: it rejoins as a replica)."""
        self.nodes[port].start()
        self.wait_ready(timeout)
