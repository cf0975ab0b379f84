"""The broker's live status page (``/status``, ``/status/data``) against a real cluster: a
broker with ``publish_jwt_key`` and the stats socket off, two edges, streaming clients on both,
publishes; then the figures, the auth, and the page in headless Chromium.  One cluster for the
whole module."""

from __future__ import annotations

import json
import os
import time

import httpx
import jwt
import pytest
from gripcontrol import create_grip_channel_header
from websockets.sync.client import connect

from tests.helpers import MISSING, stop_process
from tests.integration.cluster import Cluster, Origin, StreamClient
from tests.integration.test_chat_browser import CHROMIUM, Cdp, start_chromium

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

KEY = "status-secret-of-at-least-32-bytes!!"
# edge -> channel -> streaming clients
CLIENTS = {0: {"news": 3}, 1: {"news": 2, "chat": 1}}
PUBLISHES = 20


def token(**claims) -> str:
    return jwt.encode({"exp": int(time.time()) + 3600, **claims}, KEY)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {token()}"}


def publish(url: str, channel: str, n: int) -> None:
    items = [
        {"channel": channel, "formats": {"http-stream": {"content": f"{channel} {i}\n"}}}
        for i in range(n)
    ]
    r = httpx.post(url + "/publish/", json={"items": items}, headers=auth())
    assert r.status_code == 200, r.text


def wait_data(url: str, until, timeout: float = 15.0) -> dict:
    """Poll /status/data until ``until(doc)`` holds; the last document otherwise (asserted)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(url + "/status/data", headers=auth())
        assert r.status_code == 200, r.text
        doc = r.json()
        if until(doc):
            return doc
        assert time.monotonic() < deadline, json.dumps(doc, indent=1)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    def hold(req):
        channel = req.path.rsplit("/", 1)[-1]
        headers = {
            "Content-Type": "text/plain",
            "Grip-Hold": "stream",
            "Grip-Channel": create_grip_channel_header(channel),
        }
        return 200, headers, b"[open]\n"

    tmp = tmp_path_factory.mktemp("status")
    with Origin({"/s/news": hold, "/s/chat": hold}) as origin:
        c = Cluster(
            tmp,
            [f"* 127.0.0.1:{origin.port}"],
            edges=2,
            separate_ports=True,
            publish_jwt_key=KEY,
            log_level="debug",
        )
        # the processes' stderr (their logs) to a file the auth test reads
        c.log = tmp / "processes.log"
        with open(c.log, "wb") as log:
            saved = os.dup(2)
            os.dup2(log.fileno(), 2)
            try:
                c.start()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        clients = []
        try:
            for edge, channels in CLIENTS.items():
                for channel, n in channels.items():
                    for _ in range(n):
                        clients.append(StreamClient(c.url(f"/s/{channel}", edge)).wait_open())
            for cl in clients:
                cl.read_until(b"[open]\n")
            yield c
        finally:
            for cl in clients:
                cl.close()
            c.stop()


def test_status_data_figures(cluster):
    url = cluster.publish_url
    # every client subscribed, as the edges reported it
    wait_data(
        url,
        lambda d: (
            {t["channel"]: t["subscribers"] for t in d["top_subscribed"]} == {"news": 5, "chat": 1}
        ),
    )
    before = wait_data(url, lambda d: True)["totals"]
    publish(url, "chat", 1)
    # news: in batches over more than two of the broker's one-second samples, so that its
    # publish rate shows (a channel's first sample only sets its base)
    seen_rate = []
    for _ in range(4):
        publish(url, "news", PUBLISHES // 4)
        seen_rate += wait_data(url, lambda d: True, timeout=0)["top_publishing"]
        time.sleep(0.7)
    if not any(t["channel"] == "news" for t in seen_rate):
        seen_rate = wait_data(url, lambda d: d["top_publishing"], timeout=3)["top_publishing"]
    rate = next(t["publish_per_s"] for t in seen_rate if t["channel"] == "news")
    assert 0 < rate <= PUBLISHES
    want_delivered = before["delivered"] + PUBLISHES * 5 + 1
    doc = wait_data(
        url,
        lambda d: (
            d["totals"]["delivered"] >= want_delivered
            and any(s[1] > 0 for s in d["chart"]["samples"])
            and any(s[2] > 0 for s in d["chart"]["samples"])
        ),
    )
    tot = doc["totals"]
    assert tot["published"] == before["published"] + PUBLISHES + 1
    assert tot["delivered"] == want_delivered  # exactly: nothing else was published
    assert tot["connections"] == 6
    # five publish requests, and none of the many status polls, counted as received
    assert tot["received"]["http"] == before["received"]["http"] + 5
    edges = {e["addr"]: e for e in doc["edges"]}
    assert set(edges) == {f"127.0.0.1:{p}" for p in cluster.edge_ports}
    by_port = [edges[f"127.0.0.1:{p}"] for p in cluster.edge_ports]
    assert [e["connections"] for e in by_port] == [3, 3]
    for e in by_port:
        assert e["version"] and e["report_age_s"] < 5 and e["lagging"] == 0
    assert doc["broker"]["stats_socket"] is False  # reports flow with the stats socket off
    assert doc["store"]["kind"] == "memory" and doc["store"]["up"] is True
    # the publish rate and the delivery rate, both seen in the chart's samples, about once a
    # second (the rates themselves: tests/broker/test_status.py)
    samples = doc["chart"]["samples"]
    assert max(s[1] for s in samples) > 0 and max(s[2] for s in samples) > 0
    gaps = [b[0] - a[0] for a, b in zip(samples, samples[1:])]
    assert gaps and all(0.9 < g < 5 for g in gaps), gaps


def test_status_auth(cluster):
    url = cluster.publish_url
    for path in ("/status", "/status/data"):
        r = httpx.get(url + path)
        assert r.status_code == 401 and "Authorization required" in r.text
        r = httpx.get(url + path + "?token=" + jwt.encode({"exp": 2**31}, "x" * 40))
        assert r.status_code == 401 and "Invalid token" in r.text
        r = httpx.get(url + path, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
    t = token()
    r = httpx.get(url + "/status/data?token=" + t)
    assert r.status_code == 200 and r.json()["broker"]["id"]
    r = httpx.get(url + "/status?token=" + t, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/status"
    with httpx.Client(
        base_url=url, follow_redirects=True
    ) as client:  # the browser's way: the cookie, then polls
        r = client.get("/status?token=" + t)  # follows the redirect with the cookie
        assert r.status_code == 200 and "<svg" in r.text
        assert client.get("/status/data").status_code == 200
    # the broker logged the requests (log_level debug) but never the token
    deadline = time.monotonic() + 5
    while "path=/status/data code=200" not in (log := cluster.log.read_text()):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.05)
    assert "path=/status code=303" in log
    assert t not in log and "token=" not in log


@pytest.mark.skipif(
    CHROMIUM is None, reason=MISSING + "chromium is not installed (scripts/test installs it)"
)
def test_status_page_in_chromium(cluster, tmp_path):
    url = cluster.publish_url
    browser, devtools = start_chromium(tmp_path)
    try:
        with connect(devtools, max_size=None) as ws:
            cdp = EventsCdp(ws)
            page = cdp.open_page("about:blank")
            cdp.call("Runtime.enable", session=page)
            cdp.call("Log.enable", session=page)
            cdp.call("Page.enable", session=page)
            cdp.call("Page.navigate", {"url": f"{url}/status?token={token()}"}, page)
            # the page moved to /status (cookie set) and shows the edges with live figures
            cdp.wait_eval(page, "location.pathname === '/status'")
            cdp.wait_eval(
                page,
                "document.querySelectorAll('#edges tbody tr[data-edge]').length === 2"
                " && document.getElementById('total-connections').textContent === '6'",
            )
            cells = cdp.eval(
                page,
                "[...document.querySelectorAll('#edges td.connections')].map(td => td.textContent)",
            )
            assert cells == ["3", "3"]
            top = cdp.eval(page, "document.querySelector('#top-subscribed tbody').innerText")
            assert "news\t5" in top and "chat\t1" in top
            publish(url, "news", 5)
            # the chart: both lines drawn through several points, the publish line off zero
            d = cdp.wait_eval(
                page,
                "(() => { const d = document.getElementById('chart-publish').getAttribute('d');"
                " const ys = [...d.matchAll(/[ML]([0-9.]+) ([0-9.]+)/g)].map(m => +m[2]);"
                " return ys.length >= 3 && ys.some(y => y < 169.5) && d; })()",
            )
            assert d.startswith("M")
            assert cdp.eval(page, "document.getElementById('chart-deliver').getAttribute('d')")
            assert cdp.eval(page, "document.getElementById('store').textContent") == "memory up"
            assert cdp.eval(page, "document.getElementById('updated').className") == "muted"
        assert cdp.errors == [], cdp.errors
    finally:
        stop_process(browser)


class EventsCdp(Cdp):
    """``Cdp`` that keeps the JS errors the page reports (exceptions, console.error, and the
    browser's own error log entries, such as a failed request or a CSP violation)."""

    def __init__(self, ws) -> None:
        super().__init__(ws)
        self.errors: list[str] = []

    def call(self, method, params=None, session=None, timeout=10.0):
        mid = next(self.ids)
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            self._event(reply)
            if reply.get("id") == mid:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _event(self, m: dict) -> None:
        method, p = m.get("method"), m.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(p.get("exceptionDetails", {}))[:500])
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append(json.dumps(p.get("args", []))[:500])
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.errors.append(json.dumps(p["entry"])[:500])
