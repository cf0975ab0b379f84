"""Three hosts in network namespaces: the broker (and the origin) on one, an edge on each of the
two others, joined by a bridge in a fourth "switch" namespace.  Edges reach the broker over TCP
(``edge_bind = "0.0.0.0"``, ``broker_host`` = the broker host's address) with CurveZMQ and
ZeroMQ heartbeats on.  One edge host is cut off the network (its switch port down) and restored:
its clients, which stay connected to their edge, get every message published meanwhile (the
edge repairs the gap from broker history), in order and once; the other edge host's clients
get every message on time throughout.

Needs root and ``ip netns`` (CI runs as root); skipped otherwise, with the reason.
"""

from __future__ import annotations

import os
import queue
import secrets
import subprocess
import sys
import threading
import time

import pytest
import zmq

from bench.netcut import netns_unavailable
from tests.helpers import skip_missing
from tests.integration.cluster import Proc, gripcast

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NET = "10.77.0"
BROKER_IP = f"{NET}.1"
HEARTBEAT_S = 0.5  # a silent peer is dropped after 1.5 s


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Net:
    """Namespaces ``<id>b`` (broker), ``<id>e1``, ``<id>e2`` (edges), ``<id>sw`` (a bridge)."""

    def __init__(self) -> None:
        self.id = "gc" + secrets.token_hex(3)
        self.sw = self.id + "sw"
        self.hosts = {
            "b": (self.id + "b", f"{NET}.1"),
            "e1": (self.id + "e1", f"{NET}.2"),
            "e2": (self.id + "e2", f"{NET}.3"),
        }
        self.created: list[str] = []

    def ns(self, host: str) -> str:
        return self.hosts[host][0]

    def port(self, host: str) -> str:
        return self.id + host  # the host's port on the switch (<= 15 chars)

    def up(self) -> None:
        for name in [self.sw] + [ns for ns, _ in self.hosts.values()]:
            ip("netns", "add", name)
            self.created.append(name)
        ip("-n", self.sw, "link", "add", "br0", "type", "bridge")
        ip("-n", self.sw, "link", "set", "br0", "up")
        for host, (ns, addr) in self.hosts.items():
            ip(
                "-n",
                self.sw,
                "link",
                "add",
                self.port(host),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            ip("-n", self.sw, "link", "set", self.port(host), "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, host: str, down: bool) -> None:
        ip("-n", self.sw, "link", "set", self.port(host), "down" if down else "up")

    def exec(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def down(self) -> None:
        for name in reversed(self.created):
            r = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in r.stdout.split():  # only processes this test started live in them
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


class Lines:
    """A helper process (tests/integration/nshelper.py) whose stdout lines are collected."""

    def __init__(self, argv: list[str], stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        )
        self.q: queue.Queue[tuple[float, str]] = queue.Queue()
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.q.put((time.monotonic(), line.rstrip("\n")))

    def poll(self) -> list[tuple[float, str]]:
        while True:
            try:
                self.lines.append(self.q.get_nowait())
            except queue.Empty:
                return self.lines

    def wait_for(self, text: str, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            for t, line in self.poll():
                if line == text:
                    return t
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r}; got {[line for _, line in self.lines]!r}")
            try:
                self.lines.append(self.q.get(timeout=0.1))
            except queue.Empty:
                pass

    def texts(self) -> list[str]:
        return [line for _, line in self.poll()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def toml(path, **values) -> str:
    lines = []
    for k, v in values.items():
        if isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        elif isinstance(v, list):
            lines.append(f"{k} = [" + ", ".join(f'"{x}"' for x in v) + "]")
        else:
            lines.append(f"{k} = {v}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def metric(net: Net, host: str, name: str) -> float:
    """A counter from the edge's /metrics (edge index 1 or 2: port 9100 + index)."""
    url = f"http://127.0.0.1:{9100 + int(host[1])}/metrics"
    out = subprocess.run(
        net.exec(host) + [sys.executable, "-m", "tests.integration.nshelper", "get", url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=20,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in {url}: {out[:500]}")


def test_edges_on_other_hosts_and_a_host_cut_off(tmp_path):
    reason = netns_unavailable()
    if reason:
        skip_missing(reason)
    bpub, bsec = (k.decode() for k in zmq.curve_keypair())
    edge_keys = {h: tuple(k.decode() for k in zmq.curve_keypair()) for h in ("e1", "e2")}
    net = Net()
    procs: list[Proc] = []
    helpers: list[Lines] = []
    try:
        net.up()
        # the secure recipe (docs/multihost.md): edge sockets on the network with Curve,
        # publish inputs and the HTTP API on loopback (the publishers run on the broker host)
        broker_cfg = toml(
            tmp_path / "broker.toml",
            edge_bind="0.0.0.0",
            zmq_heartbeat_s=HEARTBEAT_S,
            curve_secret_key=bsec,
            curve_allowed_clients=[edge_keys["e1"][0], edge_keys["e2"][0]],
        )
        origin = Proc(
            net.exec("b")
            + gripcast(
                "demo-origin",
                "--listen",
                f"{BROKER_IP}:8090",
                "--publish-url",
                "http://127.0.0.1:5561",
            )
        )
        origin.wait_ready()
        procs.append(origin)
        procs.append(Proc(net.exec("b") + gripcast("broker", "--config", broker_cfg)).wait_ready())
        for h in ("e1", "e2"):
            cfg = toml(
                tmp_path / f"{h}.toml",
                broker_host=BROKER_IP,
                routes=[f"* {BROKER_IP}:8090"],
                zmq_heartbeat_s=HEARTBEAT_S,
                curve_public_key=bpub,
                curve_client_secret_key=edge_keys[h][1],
                edge_metrics_port=9100,
            )
            procs.append(
                Proc(net.exec(h) + gripcast("edge", "--index", h[1], "--config", cfg)).wait_ready()
            )

        helper = [sys.executable, "-m", "tests.integration.nshelper"]
        clients = {}
        for h in ("e1", "e2"):
            for n in range(2):  # two clients on each edge host, on its local edge
                c = Lines(net.exec(h) + helper + ["stream", "http://127.0.0.1:7999/stream"])
                helpers.append(c)
                clients[(h, n)] = c
        for c in clients.values():
            c.wait_for("line [stream open]", timeout=20)  # the origin is up and reachable too
        pub = Lines(
            net.exec("b") + helper + ["publish", "http://127.0.0.1:5561", "test"], stdin=True
        )
        helpers.append(pub)
        sent = 0

        def publish(text: str) -> float:
            nonlocal sent
            sent += 1
            pub.proc.stdin.write(text + "\n")
            pub.proc.stdin.flush()
            return pub.wait_for(f"ok {sent}")

        for i in range(1, 4):
            publish(f"m{i}")
        for c in clients.values():
            c.wait_for("line m3")

        # cut e2 off; keep publishing for longer than the heartbeat timeout (and the edge's
        # broker link timeout), so the broker drops e2's connection and what it missed is gone
        # from the wire: only history can bring it back
        net.cut("e2", down=True)
        cut_at = time.monotonic()
        lag = []
        i = 4
        while time.monotonic() - cut_at < 4.5 or i <= 12:
            t = publish(f"m{i}")
            for n in range(2):
                lag.append(clients[("e1", n)].wait_for(f"line m{i}", timeout=5) - t)
            i += 1
            time.sleep(0.2)
        last_cut = i - 1
        for n in range(2):
            assert "line m4" not in clients[("e2", n)].texts(), "the cut did not cut"

        net.cut("e2", down=False)
        for n in range(2):  # everything missed arrives without a new publish (gap repair)
            clients[("e2", n)].wait_for(f"line m{last_cut}", timeout=20)
        publish(f"m{last_cut + 1}")
        final = f"m{last_cut + 1}"
        for c in clients.values():
            c.wait_for(f"line {final}")

        want = [f"line m{k}" for k in range(1, last_cut + 2)]
        for key, c in clients.items():
            got = [t for t in c.texts() if t.startswith("line m")]
            assert got == want, (key, got)  # all, in order, once
            assert c.texts().count("open 200") == 1 and "closed" not in c.texts(), key
        # the other edge host's clients were never disturbed: each message within a second
        assert max(lag) < 1.0, lag
        # and the cut edge's catch-up came from broker history (its link was dropped by the
        # heartbeats, so nothing was left to retransmit), not from TCP
        assert metric(net, "e2", "gripcast_edge_gaps_repaired") >= 1
        assert metric(net, "e1", "gripcast_edge_gaps") == 0
        for p in procs:
            assert p.proc.poll() is None, "a process died"
    finally:
        for h in helpers:
            h.stop()
        for p in reversed(procs):
            p.stop()
        net.down()
