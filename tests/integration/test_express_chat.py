"""A real Express chat on ``@fanoutio/serve-grip`` 2.0 / ``@fanoutio/grip`` 4.3 behind gripcast over
WebSocket-over-HTTP (issue 13 item 2): OPEN/CLOSE counted by the app, ``c:`` subscribe,
``ws-message`` publishes, an echo to the sender only.

The app is ``tests/node/chat.mjs``; its npm packages are installed (``npm ci``, from the
committed lock file) into ``tests/node/node_modules`` (ignored by git) the first time.  Without
node/npm, or when npm cannot reach its registry, the test is skipped as a missing component (a
failure under ``GRIPCAST_REQUIRE_ALL=1``)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
import websockets

from tests.helpers import free_ports, skip_missing, stop_process
from tests.integration.cluster import Cluster
from tests.integration.wsraw import client_frame, raw_ws, read_frame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
_NO_NETWORK = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ENETUNREACH", "network")
_install_lock = threading.Lock()


def node_modules() -> Path:
    """``tests/node/node_modules`` with the lock file's packages (installed once)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_missing("node and npm (Debian packages nodejs, npm)")
    mods = NODE_DIR / "node_modules"
    # one install at a time, in this process (threads) and across processes (scripts/test runs
    # both twin passes side by side)
    with _install_lock, open(NODE_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (mods / "@fanoutio" / "serve-grip" / "package.json").exists():
            r = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if r.returncode != 0:
                if any(s in r.stderr for s in _NO_NETWORK):
                    skip_missing("the npm registry (npm ci found no network): " + r.stderr[-200:])
                raise RuntimeError(f"npm ci failed: {r.stderr[-2000:]}")
    return mods


class NodeApp:
    """``node chat.mjs``: started, waited on until it prints its port, always stopped."""

    def __init__(self, grip_url: str, port: int, room: str = "room") -> None:
        node_modules()
        env = dict(os.environ, GRIP_URL=grip_url, PORT=str(port), ROOM=room)
        self.proc = subprocess.Popen(
            ["node", str(NODE_DIR / "chat.mjs")],
            cwd=NODE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = self._readline(20.0)
            if not line.startswith("listening "):
                raise RuntimeError(f"chat app did not start: {line!r}")
            self.port = int(line.split()[1])
        except BaseException:
            stop_process(self.proc)
            raise

    def _readline(self, timeout: float) -> str:
        out: list[str] = []
        t = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not out:
            raise TimeoutError("chat app printed nothing")
        return out[0]

    def stats(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json()

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def chat(tmp_path):
    node_modules()  # before anything starts: a skip leaves nothing running
    (app_port,) = free_ports(1)
    cluster = Cluster(tmp_path, routes=[f"* 127.0.0.1:{app_port},over_http"])
    app = NodeApp(cluster.publish_url, app_port)
    try:
        with cluster:
            yield app, cluster
    finally:
        app.stop()


async def recv(ws, timeout=5.0):
    return await asyncio.wait_for(ws.recv(), timeout)


def test_express_chat_sees_close_before_the_close_handshake_completes(chat):
    app, cluster = chat
    url = f"ws://127.0.0.1:{cluster.edge_ports[0]}/chat"

    async def main():
        async with websockets.connect(url) as a, websockets.connect(url) as b:
            await a.send("hello from a")
            # the echo to the sender only, and the ws-message publish to the room (either first)
            assert {await recv(a), await recv(a)} == {"ack:hello from a", "hello from a"}
            assert await recv(b) == "hello from a"
            assert (await asyncio.to_thread(app.stats))["opens"] == 2
            await a.close(1000)  # returns once the close handshake completed
            closes_at_handshake = (await asyncio.to_thread(app.stats))["closes"]
            await b.send("still here")  # another client's full round trip through the app
            assert {await recv(b), await recv(b)} == {"ack:still here", "still here"}
            stats = await asyncio.to_thread(app.stats)
            return closes_at_handshake, stats, a.protocol.close_rcvd

    closes_at_handshake, stats, rcvd = asyncio.run(main())
    assert closes_at_handshake == 1, "the app must see CLOSE before the client's close completes"
    assert stats == {"opens": 2, "closes": 1, "messages": 2}
    assert rcvd is not None and rcvd.code == 1000  # grip closes with code 0: sent as 1000


def test_express_chat_ping_goes_through_the_app(chat):
    """Issue 13 item 5: the client's ping reaches the app as a ``PING`` event, and the pong the
    client gets is the app's ``PONG`` event, not the edge's echo of the ping's payload.  grip
    answers a ``PING`` only while it reads the events after it (``recv``), so the ping goes
    with a message, in one write (one request)."""
    app, cluster = chat
    s = raw_ws(cluster.edge_ports[0], "/chat")
    try:
        s.sendall(client_frame(0x9, b"p1") + client_frame(0x1, b"after ping"))
        got = sorted(read_frame(s) for _ in range(3))
        # the app's empty PONG (an edge's own pong would say "p1"), its echo, the publish
        assert got == [(0x1, b"ack:after ping"), (0x1, b"after ping"), (0xA, b"")]
    finally:
        s.close()
    assert app.stats()["messages"] == 1
