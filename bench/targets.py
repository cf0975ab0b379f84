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
from bench.procs import NotifySocket, descendants, free_ports, proc_name, stop_group, wait_port

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
    lines.append("history_max_items = 100000")
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
        write_gripcast_config(
            self.config, self.ports, origin_port, edges, log_level, self.stats_spec, tls_spec
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

    def edge_pids(self) -> list[int]:
        return [p for p in self.pids() if proc_name(p).startswith("edge")]

    def kill_edge(self, index: int = 0) -> int | None:
        """SIGKILL one edge process (``gripcast run`` restarts it); return its pid."""
        for pid in self.pids():
            if proc_name(pid) == f"edge{index}":
                os.kill(pid, signal.SIGKILL)
                return pid
        return None


PUSHPIN_CONF = """\
[global]
include={{libdir}}/internal.conf
rundir={rundir}
ipc_prefix=bench-{tag}-
port_offset=0
stats_connection_ttl={stats_ttl}

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port={client_port}
{https_line}
logdir={logdir}
log_level={log_level}
client_buffer_size=8192
client_maxconn=50000
condure_bin=condure
mongrel2_bin=mongrel2
m2sh_bin=m2sh
zurl_bin=zurl

[proxy]
# outbound requests go through zurl (Debian's 1.36); run our own instance on our rundir
zurl_out_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in
zurl_out_stream_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in-stream
zurl_in_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-out
routesfile={routes}
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
x_forwarded_for=
x_forwarded_for_trusted=
orig_headers_need_mark=
accept_pushpin_route=false
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key=changeme
upstream_key=
updates_check=off
organization_name=

[handler]
push_in_spec=tcp://127.0.0.1:{push_port}
push_in_sub_specs=tcp://127.0.0.1:{sub_port}
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port={http_port}
push_in_http_max_headers_size=10000
push_in_http_max_body_size=10000000
stats_spec={stats_spec}
command_spec=tcp://127.0.0.1:{command_port}
message_rate=1000000
message_hwm=1000000
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval={stats_interval}
stats_format=tnetstring
"""


def pushpin_config(
    *, log_level: str = "warning", stats: bool = True, https_port: int = 0, **ports
) -> str:
    """The generated pushpin.conf (pure): ``ports`` fills rundir, logdir, tag, routes and the
    ports; logging and stats as gripcast gets them (``write_gripcast_config``); with
    ``https_port`` an HTTPS listener too."""
    if https_port:
        # Pushpin's --port replaces every listener (HTTPS too): with TLS the HTTP port is given
        # here instead, with its address
        ports["client_port"] = f"127.0.0.1:{ports['client_port']}"
    return PUSHPIN_CONF.format(
        **ports,
        https_line=f"https_ports=127.0.0.1:{https_port}" if https_port else "",
        log_level=PUSHPIN_LOG_LEVELS[log_level],
        # "": the handler binds no stats socket (the proxy's internal stats to the handler
        # cannot be turned off)
        stats_spec="ipc://{rundir}/{ipc_prefix}stats" if stats else "",
        stats_interval=STATS_REPORT_INTERVAL_S,
        stats_ttl=STATS_CONNECTION_TTL_S,
    )


class PushpinTarget(Target):
    """Debian's ``pushpin`` (condure + zurl + pushpin-proxy + pushpin-handler) on its own free ports."""

    name = "pushpin"

    def __init__(
        self,
        origin_port: int,
        workdir: str,
        log_level: str = "warning",
        stats: bool = True,
        tls: bool = False,
    ) -> None:
        client, push, http, sub, command = free_ports(5)
        self.dir = Path(workdir)
        self.https_port = 0
        if tls:
            self.https_port = free_ports(1)[0]
            # Pushpin 1.36's runner: <config dir>/runner/certs, default_<port> per HTTPS port
            certs = self.dir / "runner" / "certs"
            certs.mkdir(parents=True, exist_ok=True)
            write_self_signed(certs, f"default_{self.https_port}")
        (self.dir / "run").mkdir(exist_ok=True)
        (self.dir / "log").mkdir(exist_ok=True)
        routes = self.dir / "routes"
        routes.write_text(
            f"*,path_beg=/ws/ 127.0.0.1:{origin_port},over_http\n* 127.0.0.1:{origin_port}\n"
        )
        self.config = self.dir / "pushpin.conf"
        self.config.write_text(
            pushpin_config(
                rundir=self.dir / "run",
                logdir=self.dir / "log",
                tag=os.getpid(),
                client_port=client,
                https_port=self.https_port,
                routes=routes,
                push_port=push,
                sub_port=sub,
                http_port=http,
                command_port=command,
                log_level=log_level,
                stats=stats,
            )
        )
        self.client_port = client
        self.publish_url = f"http://127.0.0.1:{http}"
        self.push_spec = f"tcp://127.0.0.1:{push}"
        self.log_path = str(self.dir / "pushpin.log")

    def start(self) -> PushpinTarget:
        self._log = open(self.log_path, "ab")
        port_flag = [] if self.https_port else ["--port", f"127.0.0.1:{self.client_port}"]
        self.proc = subprocess.Popen(
            ["pushpin", "--config", str(self.config), *port_flag, "--merge-output"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_port(self.client_port, 30, self.proc)
            if self.https_port:
                wait_port(self.https_port, 30, self.proc)
            wait_port(int(self.publish_url.rsplit(":", 1)[1]), 30, self.proc)
            # the handler binds its publish port before the proxy is wired to it: ask both once
            _wait_http_ok(self.publish_url + "/publish/", 30, self.proc)
            # zurl's PUB -> proxy's SUB link joins late: the first proxied request can be lost
            wait_proxied(self.client_port, 30, self.proc)
        except BaseException:
            self.stop()
            raise
        return self


def _wait_http_ok(url: str, timeout: float, proc: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    body = b'{"items": []}'
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"target exited with code {proc.returncode}")
        try:
            req = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=2) as resp:
                resp.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout:.0f}s") from None
            time.sleep(0.1)


def wait_proxied(port: int, timeout: float, proc: subprocess.Popen) -> None:
    """Wait until a request through the proxy reaches the origin and gets its stream head back."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"target exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                s.sendall(b"GET /stream/_warmup HTTP/1.1\r\nHost: bench\r\n\r\n")
                if s.recv(4096).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no proxied request succeeded in {timeout:.0f}s")
        time.sleep(0.1)


def make_target(
    kind: str,
    origin_port: int,
    edges: int,
    workdir: str,
    log_level: str = "warning",
    stats: bool = True,
    tls: bool = False,
) -> Target:
    sub = tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir)
    if kind == "gripcast":
        return GripcastTarget(origin_port, edges, sub, log_level=log_level, stats=stats, tls=tls)
    if kind == "pushpin":
        return PushpinTarget(origin_port, sub, log_level=log_level, stats=stats, tls=tls)
    raise ValueError(kind)


def warm_up(target: Target, clients: int = 100, timeout: float = 30.0) -> dict:
    """The same warm-up on every target, after it is ready: one request through the proxy to
    the origin (Pushpin needs it anyway: its first proxied request can be lost), then
    ``clients`` HTTP-stream connections on channel ``_warmup`` that each receive one published
    message, then closed.  Returns what it did (for the JSON)."""
    import json
    import socket
    import urllib.request

    t0 = time.monotonic()
    wait_proxied(target.client_port, timeout, target.proc)
    socks = []
    got = 0
    try:
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", target.client_port), timeout=5)
            s.sendall(b"GET /stream/_warmup HTTP/1.1\r\nHost: bench\r\n\r\n")
            socks.append(s)
        for s in socks:
            head = b""
            while b"[open]" not in head:  # the response head and the origin's first line
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
        deadline = time.monotonic() + timeout
        pending = list(socks)
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
                else:
                    still.append(s)
            pending = still
    finally:
        for s in socks:
            s.close()
    return {"clients": clients, "received": got, "s": round(time.monotonic() - t0, 3)}
