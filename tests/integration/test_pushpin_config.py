"""``gripcast run --pushpin-config``: Debian's shipped pushpin.conf and routes, on free ports.

The shipped files are copied to a temporary directory with only what must change for a test
machine: the client port, ``port_offset`` (so the publish ports 5560-5563 + offset are free),
``rundir`` and ``logdir``.  Everything else is Debian's, verbatim.  The same copy runs Pushpin
too when it is installed, and both must give the client the same bytes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench.procs import NotifySocket, stop_group, wait_port
from tests.differential.harness import HttpClient, publish_json
from tests.helpers import free_port_block

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

DEBIAN_CONF = Path("/etc/pushpin/pushpin.conf")
DEBIAN_ROUTES = Path("/etc/pushpin/routes")
PUSHPIN = Path("/usr/bin/pushpin")


def debian_copy(tmp: Path, routes: str | None = None) -> tuple[Path, int, int]:
    """The shipped config in ``tmp`` on free ports: (path, client port, port_offset)."""
    if not DEBIAN_CONF.exists():
        pytest.skip("Debian's pushpin package (its /etc/pushpin/pushpin.conf) is not installed")
    base = free_port_block(7)  # client, then 5560..5565 + offset
    offset = base + 1 - 5560
    text = DEBIAN_CONF.read_text()
    for key, value in (
        ("http_port", str(base)),
        ("port_offset", str(offset)),
        ("rundir", str(tmp / "run")),
        ("logdir", str(tmp / "log")),
        ("ipc_prefix", f"t{os.getpid()}-"),
    ):
        text, n = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
        assert n == 1, key
    conf = tmp / "pushpin.conf"
    conf.write_text(text)
    (tmp / "routes").write_text(DEBIAN_ROUTES.read_text() if routes is None else routes)
    (tmp / "log").mkdir()
    return conf, base, offset


def start_gripcast(conf: Path, log: Path) -> subprocess.Popen:
    notify = NotifySocket()
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, PYTHONUNBUFFERED="1")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gripcast",
                "run",
                "--edges",
                "1",
                "--pushpin-config",
                str(conf),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        notify.wait_ready(proc, 60)
    except BaseException:
        stop_group(proc)
        raise
    finally:
        notify.close()
    return proc


def start_pushpin(conf: Path, client_port: int, publish_url: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(PUSHPIN), "--config", str(conf), "--merge-output"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(conf.parent),
        )
    import time

    try:
        wait_port(client_port, 30, proc)
        for _ in range(300):
            try:
                publish_json(publish_url, {"items": []})
                break
            except OSError:
                time.sleep(0.1)
        # the proxy's hand-off of held requests to the handler joins late ("500 Accept service
        # unavailable." until then): wait until a hold on the test target opens
        deadline = time.monotonic() + 30
        while True:
            with HttpClient(client_port) as c:
                c.send(b"GET /stream HTTP/1.1\r\nHost: warmup\r\n\r\n")
                try:
                    if c.read_until(b"\r\n\r\n", timeout=2).startswith(b"HTTP/1.1 200"):
                        break
                except (TimeoutError, EOFError):
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError("Pushpin's test target never held a stream")
            time.sleep(0.1)
    except BaseException:
        stop_group(proc)
        raise
    return proc


def stream_scenario(client_port: int, publish_url: str) -> tuple:
    """GET / and a /stream hold on the test target, one publish to channel "test"."""
    with HttpClient(client_port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        head, hello = c.response()
        first = (head.status, hello)
    with HttpClient(client_port) as c:
        c.send(b"GET /stream HTTP/1.1\r\nHost: example.com\r\n\r\n")
        c.read_until(b"[stream opened]\n")
        # the hold is registered once the body is out; publish until it arrives (Pushpin
        # subscribes a moment after it answers)
        for _ in range(50):
            publish_json(
                publish_url,
                {"items": [{"channel": "test", "formats": {"http-stream": {"content": "hi\n"}}}]},
            )
            try:
                c.read_until(b"hi\n", timeout=0.2)
                break
            except TimeoutError:
                continue
        head, body = c.response(until=b"hi\n")
    return first, head.status, head.header("Content-Type"), body.split(b"hi\n")[0] + b"hi\n"


def test_debian_config_and_routes_behave_as_pushpin(tmp_path):
    seen = {}
    systems = ["gripcast"] + (["pushpin"] if PUSHPIN.exists() else [])
    for name in systems:
        d = tmp_path / name
        d.mkdir()
        conf, client, offset = debian_copy(d)
        publish_url = f"http://127.0.0.1:{5561 + offset}"
        if name == "gripcast":
            proc = start_gripcast(conf, d / "out.log")
        else:
            proc = start_pushpin(conf, client, publish_url, d / "out.log")
        try:
            seen[name] = stream_scenario(client, publish_url)
        finally:
            stop_group(proc)
    assert seen["gripcast"] == (
        (200, b"Hello from the Pushpin test handler!\n"),
        200,
        "text/plain",
        b"[stream opened]\nhi\n",
    )
    if "pushpin" in seen:
        assert seen["gripcast"] == seen["pushpin"]


def test_debian_config_with_an_origin_route(tmp_path):
    """The shipped pushpin.conf with a routes file of ours: proxying, the publish API on
    5561 + port_offset, the stats socket in Pushpin's rundir (created, as Pushpin does)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"[open]\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Grip-Hold", "stream")
            self.send_header("Grip-Channel", "news")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    origin = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    try:
        conf, client, offset = debian_copy(tmp_path, f"* 127.0.0.1:{origin.server_port}\n")
        proc = start_gripcast(conf, tmp_path / "out.log")
        try:
            assert (tmp_path / "run" / f"t{os.getpid()}-stats").exists()  # the stats ipc socket
            with HttpClient(client) as c:
                c.send(b"GET /feed HTTP/1.1\r\nHost: example.com\r\n\r\n")
                c.read_until(b"[open]\n")
                r = httpx.post(
                    f"http://127.0.0.1:{5561 + offset}/publish/",
                    json={
                        "items": [
                            {"channel": "news", "formats": {"http-stream": {"content": "x\n"}}}
                        ]
                    },
                )
                assert r.status_code == 200
                _, body = c.response(until=b"x\n")
                assert body == b"[open]\nx\n"
            log = (tmp_path / "out.log").read_text()
            assert "[runner] condure_bin: ignored" in log  # warnings name each key
            assert "ERROR" not in log
        finally:
            stop_group(proc)
    finally:
        origin.shutdown()
        origin.server_close()
