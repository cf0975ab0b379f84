"""The systems under test: a gripcast cluster (``gripcast run``) or Debian's Pushpin, each
started with its own config on free ports, in its own process group, and stopped by PID.

A target exposes the same things to a scenario: ``client_port``, ``publish_url`` (HTTP API),
``push_spec`` (ZeroMQ PUSH endpoint), ``pids()`` (every server process, for RSS and CPU), and
``start()``/``stop()``.  gripcast also has ``kill_edge()`` for the churn scenario.

With ``tls`` (``--tls``) a target also listens for HTTPS on ``https_port`` with a certificate
made for the run (``bench.certs``): gripcast with ``https_port``/``tls_cert``/``tls_key``,
Pushpin with its runner's ``https_ports`` and ``runner/certs/default_<port>.crt`` beside its config
(the name Pushpin's runner gives condure as the port's default certificate).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.certs import write_self_signed
from bench.procs import (
    NotifySocket,
    descendants,
    free_port_block,
    free_ports,
    proc_name,
    stop_group,
)
from bench.pushpin import PushpinLaunch, conf_text, poll_until, port_sections

GRIPCAST_PORT_KEYS = (
    "client_port",
    "push_in_port",
    "http_port",
    "sub_in_port",
    "command_port",
    "edge_pub_port",
    "edge_ctl_port",
)
REPO = Path(__file__).resolve().parent.parent


class Target:
    name = "?"
    proc: subprocess.Popen | None = None
    client_port: int
    https_port: int = 0  # with tls: the HTTPS listener
    publish_url: str
    push_spec: str

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except (OSError, AttributeError):
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# the same logging on both targets: gripcast's level name -> Pushpin's log_level number
PUSHPIN_LOG_LEVELS = {"error": 0, "warning": 1, "info": 2, "debug": 3}
STATS_REPORT_INTERVAL_S = 10  # both targets' "report" stats packets (Pushpin's default)
STATS_CONNECTION_TTL_S = 120


def write_gripcast_config(
    path: Path,
    ports: dict,
    origin_port: int,
    edges: int,
    log_level: str = "warning",
    stats_spec: str = "",
    tls: tuple[int, str, str] | None = None,
    metrics: tuple[int, int] | None = None,
    history_max_items: int = 100000,
) -> None:
    lines = ['client_addr = "127.0.0.1"', 'broker_bind = "127.0.0.1"']
    if tls is not None:
        port, cert, key = tls
        lines += [
            f'https_port = ["127.0.0.1:{port}"]',
            f'tls_cert = "{cert}"',
            f'tls_key = "{key}"',
        ]
    lines += [f"{k} = {v}" for k, v in ports.items()]
    lines.append(
        f'routes = ["*,path_beg=/ws/ 127.0.0.1:{origin_port},over_http", '
        f'"* 127.0.0.1:{origin_port}"]'
    )
    lines.append(f"edges = {edges}")
    lines.append(f'log_level = "{log_level}"')
    if stats_spec:  # Pushpin-style stats PUB, as Pushpin's handler has it
        lines.append(f'stats_spec = "{stats_spec}"')
        lines.append(f"stats_report_interval_s = {STATS_REPORT_INTERVAL_S}")
        lines.append(f"stats_connection_ttl_s = {STATS_CONNECTION_TTL_S}")
    lines.append(f"history_max_items = {history_max_items}")
    if metrics is not None:  # /metrics of the broker and of edge i (edge port + i)
        lines.append(f"metrics_port = {metrics[0]}")
        lines.append(f"edge_metrics_port = {metrics[1]}")
    path.write_text("\n".join(lines) + "\n")


class GripcastTarget(Target):
    """``python -m gripcast run --edges E --config <generated>``, readiness via sd_notify."""

    name = "gripcast"

    def __init__(
        self,
        origin_port: int,
        edges: int,
        workdir: str,
        env: dict | None = None,
        log_level: str = "warning",
        stats: bool = True,
        tls: bool = False,
        history_max_items: int = 100000,
    ) -> None:
        self.ports = dict(zip(GRIPCAST_PORT_KEYS, free_ports(len(GRIPCAST_PORT_KEYS))))
        self.edges = edges
        self.dir = Path(workdir)
        self.config = self.dir / "gripcast.toml"
        self.stats_spec = f"ipc://{self.dir}/stats" if stats else ""
        tls_spec = None
        if tls:
            self.https_port = free_ports(1)[0]
            cert, key = write_self_signed(self.dir, "server")
            tls_spec = (self.https_port, cert, key)
        # the ops listeners (/metrics): the soak reads every process's trio task count there
        self.metrics_ports = (free_ports(1)[0], free_port_block(edges))
        write_gripcast_config(
            self.config,
            self.ports,
            origin_port,
            edges,
            log_level,
            self.stats_spec,
            tls_spec,
            self.metrics_ports,
            history_max_items,
        )
        self.log_path = str(self.dir / "gripcast.log")
        self.client_port = self.ports["client_port"]
        self.publish_url = f"http://127.0.0.1:{self.ports['http_port']}"
        self.push_spec = f"tcp://127.0.0.1:{self.ports['push_in_port']}"
        self.edge_pub_spec = f"tcp://127.0.0.1:{self.ports['edge_pub_port']}"
        self.env = env or {}

    def _spawn(self, argv: list[str], timeout: float) -> subprocess.Popen:
        notify = NotifySocket()
        env = dict(os.environ, NOTIFY_SOCKET=notify.path, PYTHONUNBUFFERED="1", **self.env)
        self._log = open(self.log_path, "ab")
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=str(REPO),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            notify.wait_ready(proc, timeout)
        except BaseException:
            stop_group(proc)
            raise
        finally:
            notify.close()
        return proc

    def start(self) -> GripcastTarget:
        self.proc = self._spawn(
            [
                sys.executable,
                "-m",
                "gripcast",
                "run",
                "--edges",
                str(self.edges),
                "--config",
                str(self.config),
            ],
            timeout=60,
        )
        return self

    def start_broker_only(self) -> GripcastTarget:
        self.proc = self._spawn(
            [sys.executable, "-m", "gripcast", "broker", "--config", str(self.config)], timeout=30
        )
        return self

    def task_counts(self) -> dict[str, int]:
        """Every process's trio task count by process name (``broker``, ``edge0``, ...), read
        from its ``/metrics`` (``gripcast_*_trio_tasks``); a process that does not answer is
        left out."""
        import urllib.request

        out: dict[str, int] = {}
        broker_port, edge_port = self.metrics_ports
        where = [("broker", broker_port, "gripcast_broker_trio_tasks")] + [
            (f"edge{i}", edge_port + i, "gripcast_edge_trio_tasks") for i in range(self.edges)
        ]
        for name, port, metric in where:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith(metric + " "):
                    out[name] = int(float(line.split()[1]))
        return out

    def edge_pids(self) -> list[int]:
        return [p for p in self.pids() if proc_name(p).startswith("edge")]

    def kill_edge(self, index: int = 0) -> int | None:
        """SIGKILL one edge process (``gripcast run`` restarts it); return its pid."""
        for pid in self.pids():
            if proc_name(pid) == f"edge{index}":
                os.kill(pid, signal.SIGKILL)
                return pid
        return None


# the bench's Pushpin settings over the shared pushpin.conf (bench.pushpin): mongrel2's binaries
# named, larger publish bodies, no publish rate limit; logging and stats as gripcast gets them.
# ``message_rate`` 0 turns the handler's rate limiter off (its ``setRate`` takes a rate <= 0 as
# none). Any positive rate, however high, keeps it on in batch mode: a 25-ms timer that each new
# publish re-arms, so a channel published to more often than every ~25 ms got nothing until its
# publisher paused (bench/RESULTS.md, ninth session). Until then the bench used 1,000,000.
PUSHPIN_BENCH_OVERRIDES: dict[str, dict[str, object]] = {
    "runner": {"mongrel2_bin": "mongrel2", "m2sh_bin": "m2sh"},
    "handler": {
        "push_in_http_max_body_size": 10000000,
        "message_rate": 0,
        "message_hwm": 1000000,
        "stats_report_interval": STATS_REPORT_INTERVAL_S,
    },
    "global": {"stats_connection_ttl": STATS_CONNECTION_TTL_S},
}


def _bench_overrides(log_level: str, stats: bool) -> dict[str, dict[str, object]]:
    out = {k: dict(v) for k, v in PUSHPIN_BENCH_OVERRIDES.items()}
    out["runner"]["log_level"] = PUSHPIN_LOG_LEVELS[log_level]
    # "": the handler binds no stats socket (the proxy's internal stats to the handler cannot
    # be turned off)
    out["handler"]["stats_spec"] = "ipc://{rundir}/{ipc_prefix}stats" if stats else ""
    return out


def pushpin_config(
    *, log_level: str = "warning", stats: bool = True, https_port: int = 0, **ports
) -> str:
    """The generated pushpin.conf (pure): ``ports`` fills rundir, logdir, tag, routes and the
    ports; logging and stats as gripcast gets them (``write_gripcast_config``); with
    ``https_port`` an HTTPS listener too."""
    tag = ports.pop("tag")
    sections = port_sections(ipc_prefix=f"bench-{tag}-", https_port=https_port, **ports)
    for section, values in _bench_overrides(log_level, stats).items():
        sections.setdefault(section, {}).update(values)
    return conf_text(sections)


def _bench_proxied(port: int) -> bool:
    """One request through the proxy reached the bench origin and got its stream head back."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        s.sendall(b"GET /stream/_warmup HTTP/1.1\r\nHost: bench\r\n\r\n")
        return s.recv(4096).startswith(b"HTTP/1.1 200")


class PushpinTarget(Target):
    """Debian's ``pushpin`` (condure + zurl + pushpin-proxy + pushpin-handler) on its own free
    ports, started by the shared launcher (``bench.pushpin.PushpinLaunch``)."""

    name = "pushpin"

    def __init__(
        self,
        origin_port: int,
        workdir: str,
        log_level: str = "warning",
        stats: bool = True,
        tls: bool = False,
    ) -> None:
        self.dir = Path(workdir)
        self.launch = PushpinLaunch(
            self.dir,
            f"*,path_beg=/ws/ 127.0.0.1:{origin_port},over_http\n* 127.0.0.1:{origin_port}\n",
            _bench_overrides(log_level, stats),
            ipc_prefix=f"bench-{os.getpid()}-",
            https=tls,
        )
        self.https_port = self.launch.https_port
        if tls:
            # Pushpin 1.36's runner: <config dir>/runner/certs, default_<port> per HTTPS port
            certs = self.dir / "runner" / "certs"
            certs.mkdir(parents=True, exist_ok=True)
            write_self_signed(certs, f"default_{self.https_port}")
        self.config = self.launch.config
        self.client_port = self.launch.client_port
        self.publish_url = self.launch.publish_url
        self.push_spec = self.launch.push_spec
        self.log_path = str(self.dir / "pushpin.log")

    def start(self) -> PushpinTarget:
        # the ports, the publish API (the handler binds its publish port before the proxy is
        # wired to it), then one proxied request (zurl's PUB -> proxy's SUB link joins late:
        # the first proxied request can be lost)
        self.proc = self.launch.start(
            Path(self.log_path),
            port_flag=True,
            wait_ports=True,
            publish_request_timeout=2.0,
            proxied=_bench_proxied,
            who="target",
        )
        return self


def wait_proxied(port: int, timeout: float, proc: subprocess.Popen) -> None:
    """Wait until a request through the proxy reaches the origin and gets its stream head back."""
    poll_until(
        lambda: _bench_proxied(port), timeout, proc, "no proxied request succeeded", "target"
    )


def make_target(
    kind: str,
    origin_port: int,
    edges: int,
    workdir: str,
    log_level: str = "warning",
    stats: bool = True,
    tls: bool = False,
    history_max_items: int = 100000,
    env: dict | None = None,
) -> Target:
    """``env``: more environment for gripcast's processes (``GRIPCAST_<KEY>`` settings)."""
    sub = tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir)
    if kind == "gripcast":
        return GripcastTarget(
            origin_port,
            edges,
            sub,
            env=env,
            log_level=log_level,
            stats=stats,
            tls=tls,
            history_max_items=history_max_items,
        )
    if kind == "pushpin":
        return PushpinTarget(origin_port, sub, log_level=log_level, stats=stats, tls=tls)
    raise ValueError(kind)


def warm_up(target: Target, clients: int = 100, timeout: float = 30.0) -> dict:
    """The same warm-up on every target, after it is ready: one request through the proxy to
    the origin (Pushpin needs it anyway: its first proxied request can be lost), then
    ``clients`` HTTP-stream connections on channel ``_warmup`` that each receive one published
    message, then closed (a stream the target ends is opened again, counted as
    ``reopened``).  Returns what it did (for the JSON)."""
    import json
    import socket
    import urllib.request

    t0 = time.monotonic()
    wait_proxied(target.client_port, timeout, target.proc)
    socks: list[socket.socket] = []
    got = reopened = 0
    request = b"GET /stream/_warmup HTTP/1.1\r\nHost: bench\r\n\r\n"

    def read_head(s: socket.socket) -> bool:
        """The response head and the origin's first line; False when the target closed."""
        head = b""
        while b"[open]" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return False
            head += chunk
        return True

    def reopen() -> socket.socket:
        # a stream the target ended (a loaded Pushpin was seen to close one of 100): the
        # client connects again, as any client would
        nonlocal reopened
        reopened += 1
        if reopened > clients:
            raise RuntimeError(f"warm-up: the target closed {reopened} streams of {clients}")
        s = socket.create_connection(("127.0.0.1", target.client_port), timeout=5)
        socks.append(s)
        s.sendall(request)
        return s

    try:
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", target.client_port), timeout=5)
            s.sendall(request)
            socks.append(s)
        pending = []
        for s in list(socks):
            while not read_head(s):
                s = reopen()
            pending.append(s)
        deadline = time.monotonic() + timeout
        k = 0
        while pending and time.monotonic() < deadline:
            k += 1  # publish until every connection saw a message (subscriptions land late)
            body = json.dumps(
                {"items": [{"channel": "_warmup", "formats": {"http-stream": {"content": "W\n"}}}]}
            ).encode()
            req = urllib.request.Request(
                target.publish_url + "/publish/",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
            still = []
            for s in pending:
                s.settimeout(0.3 if s is pending[0] else 0.02)
                try:
                    data = s.recv(4096)
                except TimeoutError:
                    still.append(s)
                    continue
                if b"W" in data:
                    got += 1
                elif not data:
                    s = reopen()
                    s.settimeout(5)
                    if read_head(s):
                        still.append(s)
                else:
                    still.append(s)
            pending = still
    finally:
        for s in socks:
            s.close()
    return {
        "clients": clients,
        "received": got,
        "reopened": reopened,
        "s": round(time.monotonic() - t0, 3),
    }
