"""Shared test helpers: free ports, sd_notify readiness, and process cleanup."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

from bench.procs import (  # one copy of each, shared with the bench
    NotifySocket,
    free_ports,
    reserve_port,
)

__all__ = [
    "MISSING",
    "NotifySocket",
    "free_port_block",
    "free_ports",
    "skip_missing",
    "stop_process",
    "wait_for",
]

# The prefix of every skip reason that means "a component this machine lacks" (redis-server,
# chromium, network namespaces, systemd-analyze, the compiled twins).  With
# GRIPCAST_REQUIRE_ALL=1 (scripts/test sets it) tests/conftest.py turns such a skip into a
# failure: the test command installs what the tests need, or fails saying what is missing.
MISSING = "missing component: "


def skip_missing(what: str) -> None:
    """Skip this test because ``what`` is not on this machine (a failure under
    GRIPCAST_REQUIRE_ALL=1)."""
    import pytest

    pytest.skip(MISSING + what)


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


def free_port_block(n: int, low: int = 10000, high: int = 21000) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1 (for ``base + index`` schemes),
    below ``free_ports``' range and the ephemeral range, each reserved across processes as
    ``free_ports`` does (``bench.procs.reserve_port``)."""
    import random

    for _ in range(200):
        base = random.randrange(low, high - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        if all(reserve_port(p) for p in range(base, base + n)):
            return base
    raise RuntimeError("no free port block")


def wait_for(pred, timeout: float = 10.0, what: str = "condition not met") -> None:
    """Poll ``pred()`` until it is true; TimeoutError(``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)
