"""Shared test helpers: free ports, sd_notify readiness, and process cleanup."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago on 127.0.0.1."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class NotifySocket:
    """A unix datagram socket playing systemd's NOTIFY_SOCKET for one child process."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="gc-notify-")
        self.path = os.path.join(self._dir.name, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait_ready(self, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("process did not report READY=1 in time")
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with code {proc.returncode} before READY=1")
            self.sock.settimeout(min(remaining, 0.2))
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            if b"READY=1" in data.split(b"\n"):
                return

    def close(self) -> None:
        self.sock.close()
        self._dir.cleanup()


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM, wait, then SIGKILL: always leaves ``proc`` reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def free_port_block(n: int, low: int = 20000, high: int = 30000) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1 (for ``base + index`` schemes),
    outside the ephemeral range so ``free_ports`` (bind to 0) never hands one of them out."""
    import random

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
