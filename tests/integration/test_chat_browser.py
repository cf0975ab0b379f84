"""The chat demo in a real browser: ``gripcast run --demo`` (two edges), two headless Chromium
pages in the same room, one sends, the other sees it.  Chromium is driven over the Chrome
DevTools protocol with the ``websockets`` library (no browser automation framework)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time

import pytest
from websockets.sync.client import connect

from tests.helpers import MISSING, free_ports, stop_process
from tests.integration.cluster import PORT_KEYS, Proc, gripcast, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Cdp:
    """A minimal DevTools client: one browser connection, pages attached in flat mode."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 10.0,
    ) -> dict:
        mid = next(self.ids)
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("id") == mid:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open_page(self, url: str) -> str:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        return self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]

    def eval(self, session: str, expr: str):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session)
        return r["result"].get("value")

    def wait_eval(self, session: str, expr: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(session, expr)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"never true: {expr}")
            time.sleep(0.05)


def start_chromium(tmp_path):
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError("chromium did not start its DevTools endpoint")
        time.sleep(0.05)
    port, path = port_file.read_text().splitlines()[:2]
    return proc, f"ws://127.0.0.1:{port}{path}"


@pytest.mark.skipif(
    CHROMIUM is None, reason=MISSING + "chromium is not installed (scripts/test installs it)"
)
def test_chat_demo_two_browser_pages(tmp_path):
    ports = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS))))
    demo_port = free_ports(1)[0]
    cfg = write_config(tmp_path / "run.toml", ports, [])
    runner = Proc(
        gripcast("run", "--demo", "--edges", "2", "--config", cfg, "--demo-port", str(demo_port))
    )
    browser = None
    try:
        runner.wait_ready(timeout=60)
        browser, devtools = start_chromium(tmp_path)
        with connect(devtools, max_size=None) as ws:
            cdp = Cdp(ws)
            url = f"http://127.0.0.1:{ports['client_port']}/chat?room=r1"
            a, b = cdp.open_page(url), cdp.open_page(url)
            for page in (a, b):
                cdp.wait_eval(page, "document.body && document.body.dataset.ready === '1'")
            cdp.eval(
                a,
                "document.getElementById('nick').value = 'ann';"
                "document.getElementById('t').value = 'hello from page A';"
                "document.getElementById('f').requestSubmit(); true",
            )
            for page in (b, a):
                text = cdp.wait_eval(
                    page,
                    "(() => { const t = document.getElementById('log')"
                    ".textContent; return t.includes('hello from page A')"
                    " && t; })()",
                )
                assert "ann: hello from page A" in text
    finally:
        if browser is not None:
            stop_process(browser)
        code = runner.stop()
    assert code == 0
