"""Redis processes for the benches, ``python -m bench chaos`` and the tests (one implementation):
a standalone ``redis-server`` (``RedisServer``; ``StandaloneRedis`` for benches), a Sentinel
group (a master, replicas and three sentinels: ``SentinelGroup``) and a Redis Cluster (3 masters,
3 replicas made with ``redis-cli --cluster create``: ``RedisCluster``), on ports chosen at run
time, each process stopped by its own PID.

    with SentinelGroup(replicas=1, sentinels=3) as g:   # replication up, sentinels agreed
        g.url(); old = g.kill_master(); g.wait_failover(old.port); g.rejoin(old)
    with RedisCluster() as c:          # slots covered, every replica connected and in sync
        c.url(); port = c.master_ports()[0]; c.kill(port); c.wait_failover(port); c.restart(port)
        c.pids(), c.ports()            # every node, for CPU and INFO commandstats
    with StandaloneRedis() as r:
        r.url()                        # redis://127.0.0.1:p/0

Readiness is polled (``PING``, ``INFO replication``, ``SENTINEL master``, ``CLUSTER INFO``),
never a fixed sleep; every wait is bounded.  Sentinel failure detection is fast
(``down-after-milliseconds`` 500, ``failover-timeout`` 2000); ``cluster-node-timeout`` is
1000 ms.  Port blocks come from ``bench.procs.free_port_block`` (reserved across processes).
``tests/redis_server.py``, ``tests/redis_cluster.py`` and ``tests/redis_sentinel.py`` re-export
from here (bench never imports tests).  Nothing is persisted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import hiredis

from bench.procs import free_port_block, free_ports, stop_process

REDIS_SERVER = (
    os.environ.get("GRIPCAST_REDIS_SERVER")
    or shutil.which("redis-server")
    or "/usr/bin/redis-server"
)


def redis_available() -> bool:
    return os.path.exists(REDIS_SERVER) and os.access(REDIS_SERVER, os.X_OK)


def ping(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if a Redis server answers PING on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(64)
                if not chunk:
                    return False
                data += chunk
            return data == b"+PONG\r\n"
    except OSError:
        return False


class RedisServer:
    def __init__(self, port: int | None = None, *extra_args: str) -> None:
        self.port = port
        self.extra_args = list(extra_args)
        self.config_file: str | None = None  # a config file to start with (e.g. a sentinel's)
        self.proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="gc-redis-")
        self.logfile = os.path.join(self._dir.name, "redis.log")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start (on ``self.port``, or a free port) and wait until PING answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        attempts = 1 if self.port is not None else 3
        for attempt in range(attempts):
            port = self.port if self.port is not None else free_ports(1)[0]
            try:
                self._spawn(port, timeout)
                self.port = port
                return self
            except _BindFailed:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self, port: int, timeout: float) -> None:
        argv = [
            REDIS_SERVER,
            *([self.config_file] if self.config_file else []),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--logfile",
            self.logfile,
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        delay = 0.002
        while not ping(port):
            if self.proc.poll() is not None:
                log = self.log_tail()
                self.proc = None
                if "Address already in use" in log:
                    raise _BindFailed(log)
                raise RuntimeError(f"redis-server exited before answering PING:\n{log}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server did not answer PING within {timeout}s")
            time.sleep(delay)  # polling for readiness, with backoff
            delay = min(delay * 2, 0.05)

    def kill(self) -> None:
        """SIGKILL the server (a crash) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) the server and reap it."""
        if self.proc is not None:
            stop_process(self.proc)

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _BindFailed(RuntimeError):
    pass


MASTER_NAME = "gcmaster"


def command(port: int, *args: Any, timeout: float = 2.0) -> Any:
    """Run one Redis command on ``127.0.0.1:port`` on a fresh connection; the decoded reply
    (an error reply is returned as ``hiredis.ReplyError``)."""
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


def _myid(i: int) -> str:
    return f"{i + 1:040x}"


def _pairs(reply: list) -> dict[str, str]:
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply) - 1, 2)}


def wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            if pred():
                return
        except (OSError, ConnectionError, UnicodeDecodeError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(delay)  # polling a readiness condition, with backoff
        delay = min(delay * 2, 0.1)


def reachable_at(host: str) -> list[str]:
    """Extra redis-server arguments to also listen on ``host`` (an address of this machine that
    other network namespaces reach, bench.netcut), without protected mode (no password)."""
    if host == "127.0.0.1":
        return []
    return ["--bind", "127.0.0.1", host, "--protected-mode", "no"]


class SentinelGroup:
    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        *,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
        master_name: str = MASTER_NAME,
        host: str = "127.0.0.1",
    ) -> None:
        """``host``: the address the servers and sentinels are known by (and also listen on);
        another than 127.0.0.1 for brokers in other network namespaces."""
        self.master_name = master_name
        self.host = host
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        # no 5 s wait before a full sync (Redis 7's repl-diskless-sync-delay default)
        fast = ("--repl-diskless-sync-delay", "0", *reachable_at(host))
        self.servers: list[RedisServer] = [RedisServer(None, *fast)]
        self.servers += [RedisServer(None, *fast) for _ in range(replicas)]
        self.sentinels: list[RedisServer] = [
            RedisServer(None, *reachable_at(host)) for _ in range(sentinels)
        ]
        self.quorum = sentinels // 2 + 1
        self.master_port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> SentinelGroup:
        try:
            master = self.servers[0].start()
            self.master_port = master.port
            for r in self.servers[1:]:
                r.extra_args += ["--replicaof", self.host, str(master.port)]
                r.start()
            wait(
                lambda: (
                    int(info(master.port).get("connected_slaves", "0")) == len(self.servers) - 1
                    and all(info(r.port)["master_link_status"] == "up" for r in self.servers[1:])
                ),
                timeout,
                "replicas never synchronised",
            )
            for s in self.sentinels:  # ports first: each sentinel's config lists the others
                s.port = s.port or free_ports(1)[0]
            for s in self.sentinels:
                self._start_sentinel(s)
            self.wait_agreed(master.port, timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _start_sentinel(self, s: RedisServer) -> None:
        # known ids, replicas and peers in the config: no wait for discovery (hello every 2 s)
        me = self.sentinels.index(s)
        known = [
            f"sentinel known-sentinel {self.master_name} {self.host} {o.port} {_myid(i)}"
            for i, o in enumerate(self.sentinels)
            if o is not s
        ]
        known += [
            f"sentinel known-replica {self.master_name} {self.host} {r.port}"
            for r in self.servers
            if r.port != self.master_port
        ]
        conf = os.path.join(s._dir.name, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(
                "\n".join(
                    [
                        f"sentinel myid {_myid(me)}",
                        f"sentinel monitor {self.master_name} {self.host} {self.master_port} "
                        f"{self.quorum}",
                        f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                        f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                        f"sentinel parallel-syncs {self.master_name} 1",
                        *known,
                        *(
                            [f"sentinel announce-ip {self.host}"]
                            if self.host != "127.0.0.1"
                            else []
                        ),
                        "",
                    ]
                )
            )
        # RedisServer's argv: redis-server --port P ...; a config file must come first
        s.extra_args = ["--sentinel", *reachable_at(self.host)]
        s.config_file = conf
        s.start()

    def wait_agreed(self, master_port: int, timeout: float = 30.0) -> None:
        """Every live sentinel names ``master_port``, knows every live replica and the others."""
        live_sentinels = [s for s in self.sentinels if s.proc is not None and s.proc.poll() is None]
        live_replicas = [
            r
            for r in self.servers
            if r.port != master_port and r.proc is not None and r.proc.poll() is None
        ]

        def agreed() -> bool:
            for s in live_sentinels:
                m = _pairs(command(s.port, "SENTINEL", "master", self.master_name))
                if int(m["port"]) != master_port or "s_down" in m["flags"]:
                    return False
                if int(m["num-other-sentinels"]) < len(live_sentinels) - 1:
                    return False
                slaves = [
                    _pairs(x) for x in command(s.port, "SENTINEL", "replicas", self.master_name)
                ]
                ok = {int(x["port"]) for x in slaves if "s_down" not in x["flags"]}
                if not {r.port for r in live_replicas} <= ok:
                    return False
            return True

        wait(agreed, timeout, f"sentinels never agreed on master 127.0.0.1:{master_port}")

    def url(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        hosts = ",".join(f"{self.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{auth}{hosts}/{self.master_name}/{db}"

    def master(self) -> RedisServer:
        return next(s for s in self.servers if s.port == self.master_port)

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master (reaped); return it."""
        m = self.master()
        m.kill()
        return m

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until a replica is master, every live sentinel names it; its port."""

        def promoted() -> bool:
            for r in self.servers:
                if r.port == old_port or r.proc is None or r.proc.poll() is not None:
                    continue
                if info(r.port).get("role") == "master":
                    names = {
                        int(
                            command(
                                s.port, "SENTINEL", "get-master-addr-by-name", self.master_name
                            )[1]
                        )
                        for s in self.sentinels
                        if s.proc is not None and s.proc.poll() is None
                    }
                    if names == {r.port}:
                        self.master_port = r.port
                        return True
            return False

        wait(promoted, timeout, f"no replica was promoted after 127.0.0.1:{old_port} failed")
        assert self.master_port is not None
        return self.master_port

    def rejoin(self, server: RedisServer, timeout: float = 20.0) -> None:
        """Restart a killed server (same port, empty) as a replica of the current master and
        wait until it is in sync (the sentinels alone would notice it only at their next
        10-second INFO round; a restarted master must never come back as a master)."""
        server.extra_args = [a for a in server.extra_args]
        if "--replicaof" in server.extra_args:
            i = server.extra_args.index("--replicaof")
            del server.extra_args[i : i + 3]
        server.extra_args += ["--replicaof", self.host, str(self.master_port)]
        server.start()
        wait(
            lambda: info(server.port).get("master_link_status") == "up",
            timeout,
            f"127.0.0.1:{server.port} never synchronised with the new master",
        )

    def close(self) -> None:
        for s in self.sentinels + self.servers:
            s.close()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
NODE_TIMEOUT_MS = 1000


def cli_available() -> bool:
    return os.path.exists(REDIS_CLI) and os.access(REDIS_CLI, os.X_OK)


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


def create_cluster(
    ports: list[int], replicas_per_master: int, timeout: float = 30.0, host: str = "127.0.0.1"
) -> None:
    """``redis-cli --cluster create`` over the running nodes on ``ports``."""
    argv = [REDIS_CLI, "--cluster", "create", *[f"{host}:{p}" for p in sorted(ports)]]
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
    def __init__(self, masters: int = 3, replicas_per_master: int = 1, host: str = "127.0.0.1"):
        """``host``: the address the nodes announce (and also listen on); another than
        127.0.0.1 for brokers in other network namespaces."""
        self.host = host
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
                announce = ["--cluster-announce-ip", self.host] if self.host != "127.0.0.1" else []
                srv = RedisServer(
                    base + i, *cluster_node_args(base, n, i), *reachable_at(self.host), *announce
                )
                srv.start()
                self.nodes[base + i] = srv
            create_cluster(list(self.nodes), self.replicas_per_master, timeout, self.host)
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
        return "redis+cluster://" + ",".join(f"{self.host}:{p}" for p in ports[:n])

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

    def ports(self) -> list[int]:
        return sorted(self.nodes)

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes.values() if n.proc is not None]

    def pids_of(self, ports: list[int]) -> list[int]:
        return [n.proc.pid for p, n in self.nodes.items() if p in ports and n.proc is not None]

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


class StandaloneRedis:
    """One ``redis-server`` for benches, with the cluster's ``url/ports/pids`` interface."""

    def __init__(self) -> None:
        self.node = RedisServer(free_port_block(1))

    def start(self) -> StandaloneRedis:
        self.node.start()
        return self

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.node.port}/0"

    def ports(self) -> list[int]:
        assert self.node.port is not None
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
