"""The access log (edge.accesslog) on a running cluster: a WebSocket session's line when it
ends (``mode=ws``, status 101, every byte written to the client), and a held stream's byte
count including what the delivery path wrote (published content, the end of the stream)."""

from __future__ import annotations

import re
import socket

import pytest

from tests.differential.harness import GripcastSystem
from tests.integration.wsraw import client_frame, raw_ws, read_frame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LINE = re.compile(
    r"gripcast\.access: (?P<method>\S+) (?P<path>\S+) route=(?P<route>\S+) "
    r"status=(?P<status>\S+) bytes=(?P<bytes>\d+) duration_ms=(?P<ms>[\d.]+) mode=(?P<mode>\S+)"
)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    s = GripcastSystem(tmp_path_factory.mktemp("accesslog"), "*,path_beg=/t/ test\n", {}, {})
    s.start()
    yield s
    s.stop()


def _line(system, path: str) -> dict:
    system.wait_log(f" {path} route=")
    lines = [m for m in LINE.finditer(system.log_path.read_text()) if m["path"] == path]
    assert len(lines) == 1, lines
    return lines[0].groupdict()


def test_websocket_session_line(system):
    heads: list[bytes] = []
    s = raw_ws(system.client_port, "/t/ws?channel=al-ws", head_out=heads)
    try:
        s.sendall(client_frame(1, b"x"))
        assert read_frame(s) == (1, b"x")
        s.sendall(client_frame(8, (1000).to_bytes(2, "big") + b"bye"))
        assert read_frame(s) == (8, (1000).to_bytes(2, "big") + b"bye")
    finally:
        s.close()
    line = _line(system, "/t/ws?channel=al-ws")
    assert (line["method"], line["route"], line["status"], line["mode"]) == (
        "GET",
        "line1",
        "101",
        "ws",
    )
    # the 101's head, the echo (2 + 1), the close (2 + 2 + 3)
    assert int(line["bytes"]) == len(heads[0]) + 3 + 7


def _read_to_close(c: socket.socket) -> bytes:
    out = b""
    while True:
        more = c.recv(65536)
        if not more:
            return out
        out += more


def test_stream_counts_delivered_bytes(system):
    with socket.create_connection(("127.0.0.1", system.client_port), timeout=10) as c:
        c.sendall(b"GET /t/stream?channel=al-st HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while b"[stream opened]\n" not in got:
            got += c.recv(65536)
        system.publish("al-st", {"http-stream": {"content": "published\n"}})
        while b"published\n" not in got:
            got += c.recv(65536)
        system.publish("al-st", {"http-stream": {"action": "close"}})
        got += _read_to_close(c)
    assert got.endswith(b"0\r\n\r\n")
    line = _line(system, "/t/stream?channel=al-st")
    assert (line["status"], line["mode"]) == ("200", "stream")
    assert int(line["bytes"]) == len(got)
