"""Shared test helpers: free ports, sd_notify readiness, and process cleanup."""

from __future__ import annotations

import time

from bench.procs import (  # one copy of each, shared with the bench
    NotifySocket,
    free_port_block,
    free_ports,
    stop_process,
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


def wait_for(pred, timeout: float = 10.0, what: str = "condition not met") -> None:
    """Poll ``pred()`` until it is true; TimeoutError(``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)
