"""The routes file reloads by itself (edge.routeswatch; Pushpin watches its routes file): a
running cluster answers a route written into the file within a few seconds, and a bad file
keeps the running routes with an error logged."""

from __future__ import annotations

import os
import socket

import pytest

from tests.differential.harness import GripcastSystem
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _status(port: int, path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            more = c.recv(4096)
            if not more:
                break
            data += more
    return int(data.split(b" ", 2)[1])


def _rewrite(path, text: str) -> None:
    """Replace the file as an editor does (a new inode by rename)."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_routes_file_reloads_and_a_bad_file_is_refused(tmp_path):
    system = GripcastSystem(tmp_path, "*,path_beg=/t/ test\n", {}, {}).start()
    try:
        port, routes = system.client_port, tmp_path / "routes"
        assert _status(port, "/t/") == 200
        assert _status(port, "/u/") == 502  # Route not found

        _rewrite(routes, "*,path_beg=/u/ test\n")
        wait_for(lambda: _status(port, "/u/") == 200, 10, "the new route never answered")
        system.wait_log("routes file changed, reloading")
        assert _status(port, "/t/") == 502

        routes.write_text("*,path_beg=/v/,no_such_option test\n")  # edited in place
        system.wait_log("reload failed, running config kept", timeout=10)
        log = system.log_path.read_text()
        assert "no_such_option" in log.split("reload failed, running config kept", 1)[1]
        assert _status(port, "/u/") == 200  # the running routes stay
        assert _status(port, "/v/") == 502
    finally:
        system.stop()
