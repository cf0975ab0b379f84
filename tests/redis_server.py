"""Start a real ``redis-server`` on 127.0.0.1 (port chosen at run time) for integration tests.

    with RedisServer() as srv:          # started, PING answered
        ... srv.port ...
        srv.kill()                      # SIGKILL, reaped
        srv.start()                     # again, on the same port (no persistence: empty)

Readiness is ``PING`` answering ``+PONG`` (polled on a fresh connection), never a fixed sleep.
The server is stopped by its own PID.  Nothing is persisted (``--save "" --appendonly no``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from tests.helpers import free_ports, stop_process

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
