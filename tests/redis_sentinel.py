"""A Redis Sentinel deployment of real processes for integration tests: a master, replicas and
sentinels (``redis-server --sentinel``) on 127.0.0.1, ports chosen at run time.

    with SentinelGroup(replicas=1, sentinels=3) as g:   # replication up, sentinels agreed
        url = g.url()                                   # redis+sentinel://.../gcmaster/0
        g.kill_master()                                 # SIGKILL the current master
        g.wait_failover(old)                            # a replica promoted, all sentinels agree
        g.rejoin(killed)                                # back, as a replica of the new master

Readiness is polled (``INFO replication``, ``SENTINEL master``), never a fixed sleep; every
wait is bounded; every process is stopped by its own PID (``RedisServer.stop``).
The failure detection is fast for tests: ``down-after-milliseconds`` 500, ``failover-timeout``
2000 (override with ``down_after_ms`` / ``failover_timeout_ms``).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import hiredis

from tests.helpers import free_ports
from tests.redis_server import RedisServer

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


class SentinelGroup:
    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        *,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
        master_name: str = MASTER_NAME,
    ) -> None:
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        # no 5 s wait before a full sync (Redis 7's repl-diskless-sync-delay default)
        fast = ("--repl-diskless-sync-delay", "0")
        self.servers: list[RedisServer] = [RedisServer(None, *fast)]
        self.servers += [RedisServer(None, *fast) for _ in range(replicas)]
        self.sentinels: list[RedisServer] = [RedisServer() for _ in range(sentinels)]
        self.quorum = sentinels // 2 + 1
        self.master_port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> SentinelGroup:
        try:
            master = self.servers[0].start()
            self.master_port = master.port
            for r in self.servers[1:]:
                r.extra_args += ["--replicaof", "127.0.0.1", str(master.port)]
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
            f"sentinel known-sentinel {self.master_name} 127.0.0.1 {o.port} {_myid(i)}"
            for i, o in enumerate(self.sentinels)
            if o is not s
        ]
        known += [
            f"sentinel known-replica {self.master_name} 127.0.0.1 {r.port}"
            for r in self.servers
            if r.port != self.master_port
        ]
        conf = os.path.join(s._dir.name, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(
                "\n".join(
                    [
                        f"sentinel myid {_myid(me)}",
                        f"sentinel monitor {self.master_name} 127.0.0.1 {self.master_port} "
                        f"{self.quorum}",
                        f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                        f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                        f"sentinel parallel-syncs {self.master_name} 1",
                        *known,
                        "",
                    ]
                )
            )
        # RedisServer's argv: redis-server --port P ...; a config file must come first
        s.extra_args = ["--sentinel"]
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
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
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
        server.extra_args += ["--replicaof", "127.0.0.1", str(self.master_port)]
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
