"""Start real gripcast processes on 127.0.0.1 (ports chosen at run time) for integration tests."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from tests.helpers import NotifySocket, free_ports, stop_process

PORT_KEYS = (
    "client_port",
    "push_in_port",
    "http_port",
    "sub_in_port",
    "command_port",
    "edge_pub_port",
    "edge_ctl_port",
)


def write_config(path, ports: dict, routes: list[str], **extra) -> str:
    lines = ['client_addr = "127.0.0.1"']
    lines += [f"{k} = {v}" for k, v in ports.items()]
    lines.append("routes = [" + ", ".join(f'"{r}"' for r in routes) + "]")
    for k, v in extra.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {str(v).lower()}")
        else:
            lines.append(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"')
    path.write_text("\n".join(lines) + "\n")
    return str(path)


class Proc:
    """One gripcast child: started with its own NOTIFY_SOCKET, waited on, always stopped."""

    def __init__(self, argv: list[str], env: dict | None = None) -> None:
        self.notify = NotifySocket()
        full_env = dict(os.environ, NOTIFY_SOCKET=self.notify.path, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        self.proc = subprocess.Popen(argv, env=full_env)

    def wait_ready(self, timeout: float = 30.0) -> Proc:
        self.notify.wait_ready(self.proc, timeout)
        return self

    def stop(self) -> int | None:
        try:
            return stop_process(self.proc)
        finally:
            self.notify.close()


def gripcast(*args: str) -> list[str]:
    return [sys.executable, "-m", "gripcast", *args]


def broker_configs(tmp, ports: list[dict], routes: list[str], store: str) -> list[str]:
    """One config file per broker (``tmp/broker<i>.toml`` on ``ports[i]``), each listing every
    broker's ``edge_pub_port``, on ``store``, with quick broker-link failure detection."""
    common = dict(
        store=store,
        brokers=[f"127.0.0.1:{p['edge_pub_port']}" for p in ports],
        broker_link_timeout_s=1.5,
        drain_timeout_s=0.0,
        log_level="warning",
    )
    return [write_config(tmp / f"broker{i}.toml", p, routes, **common) for i, p in enumerate(ports)]


def start_brokers_edges(configs: list[str], edge_ports: list[int]) -> tuple[list[Proc], list[Proc]]:
    """A broker per config and an edge per port (edge ``i`` on ``configs[0]``), all started at
    once (edges retry their brokers until they answer), then each waited on; (brokers, edges).
    If one never gets ready, all are stopped."""
    brokers = [Proc(gripcast("broker", "--config", c)) for c in configs]
    edges = [
        Proc(
            gripcast(
                "edge", "--index", str(i), "--config", configs[0], "--port", f"127.0.0.1:{port}"
            )
        )
        for i, port in enumerate(edge_ports)
    ]
    try:
        for p in [*brokers, *edges]:
            p.wait_ready()
    except BaseException:
        for p in [*reversed(edges), *brokers]:
            p.stop()
        raise
    return brokers, edges


class Cluster:
    """A broker plus edges, each a real process, sharing one config file."""

    def __init__(
        self, tmp_path, routes: list[str], edges: int = 1, separate_ports: bool = False, **extra
    ):
        # a short graceful drain, so that stopping (SIGTERM) a cluster with stalled clients
        # stays well inside stop_process's wait; drain tests set their own
        extra.setdefault("drain_timeout_s", 2.0)
        ports = free_ports(len(PORT_KEYS) + edges)
        self.ports = dict(zip(PORT_KEYS, ports))
        self.edge_ports = (
            [self.ports["client_port"]] * edges if not separate_ports else ports[len(PORT_KEYS) :]
        )
        self.config = write_config(tmp_path / "gripcast.toml", self.ports, routes, **extra)
        self.procs: list[Proc] = []
        self.edges = edges

    def start(self) -> Cluster:
        try:
            self.broker = Proc(gripcast("broker", "--config", self.config)).wait_ready()
            self.procs.append(self.broker)
            self.edge_procs = []
            for i in range(self.edges):
                p = Proc(
                    gripcast(
                        "edge",
                        "--index",
                        str(i),
                        "--config",
                        self.config,
                        "--port",
                        f"127.0.0.1:{self.edge_ports[i]}",
                    )
                )
                self.procs.append(p)
                self.edge_procs.append(p)
            for p in self.edge_procs:  # the edges start side by side (a few seconds each)
                p.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def url(self, path: str, edge: int = 0) -> str:
        return f"http://127.0.0.1:{self.edge_ports[edge]}{path}"

    @property
    def publish_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http_port']}"

    @property
    def command_uri(self) -> str:
        return f"tcp://127.0.0.1:{self.ports['command_port']}"

    def stop(self) -> list:
        return [p.stop() for p in reversed(self.procs)]

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Origin:
    """A scripted origin app in a thread: ``routes`` maps a path to a handler(request) -> (status, headers, body)."""

    def __init__(self, routes: dict) -> None:
        handlers = routes
        self.requests: list = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                requests.append((self.command, self.path, dict(self.headers), body))
                fn = handlers.get(self.path.split("?")[0])
                if fn is None:
                    status, headers, out = 404, {"Content-Type": "text/plain"}, b"no such path\n"
                else:
                    status, headers, out = fn(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Origin:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class StreamClient:
    """An httpx streaming GET read in a thread; ``read_until(text)`` waits with a timeout."""

    def __init__(self, url: str, headers: dict | None = None) -> None:
        self.chunks: queue.Queue[bytes | None] = queue.Queue()
        self.data = b""
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self._opened = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
        self._thread = threading.Thread(target=self._run, args=(url, headers or {}), daemon=True)
        self._thread.start()

    def _run(self, url, headers):
        try:
            with self._client.stream("GET", url, headers=headers) as resp:
                self._sock = resp.extensions["network_stream"].get_extra_info("socket")
                self.status, self.headers = resp.status_code, resp.headers
                self._opened.set()
                for chunk in resp.iter_raw():
                    self.chunks.put(chunk)
        except (httpx.HTTPError, OSError, RuntimeError) as exc:
            self.error = exc
        finally:
            self._opened.set()
            self.chunks.put(None)

    def wait_open(self, timeout: float = 10.0) -> StreamClient:
        if not self._opened.wait(timeout):
            raise TimeoutError("stream did not open")
        return self

    def read_until(self, text: bytes, timeout: float = 10.0) -> bytes:
        import time

        deadline = time.monotonic() + timeout
        while text not in self.data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"did not see {text!r}; got {self.data!r}")
            try:
                chunk = self.chunks.get(timeout=remaining)
            except queue.Empty:
                continue
            if chunk is None:
                raise EOFError(f"stream ended before {text!r}; got {self.data!r}")
            self.data += chunk
        return self.data

    def read_for(self, seconds: float) -> bytes:
        """Read whatever arrives within ``seconds`` (for "nothing more came" checks, made after
        a positive signal that it would have come by then)."""
        import time

        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                chunk = self.chunks.get(timeout=remaining)
            except queue.Empty:
                break
            if chunk is None:
                self.chunks.put(None)  # keep the end visible to later reads
                break
            self.data += chunk
        return self.data

    @property
    def ended(self) -> bool:
        """The response ended (the server closed it, or it failed)."""
        return not self._thread.is_alive()

    def read_to_end(self, timeout: float = 10.0) -> bytes:
        self._thread.join(timeout)
        while True:
            try:
                chunk = self.chunks.get_nowait()
            except queue.Empty:
                break
            if chunk is None:
                break
            self.data += chunk
        return self.data

    def close(self) -> None:
        """Leave: shut the socket down (the reader thread sees the end and closes the
        response), then close the client."""
        import socket

        sock = getattr(self, "_sock", None)
        if sock is not None and self._thread.is_alive():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)
        self._client.close()
