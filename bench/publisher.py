"""The publisher: numbered messages whose payload carries their send time, over Pushpin's HTTP
publish API (one keep-alive connection, one POST per tick holding every due item) or ZeroMQ
PUSH (``J`` + JSON per item).  It runs in its own process so its CPU is measured apart.

Message ``seq`` of channel ``c`` has publisher id ``str(seq)`` and content ``M<seq> <time>``:
``http-stream`` ``M..\\n`` (stream), ``id: <seq>\\ndata: M..\\n\\n`` (SSE), ``http-response``
body ``M..\\n`` (long-poll), ``ws-message`` ``M..`` (WebSocket).  Probes (``P<k>``)
are the same shapes without a number, with id ``p<k>`` (so an SSE client has a cursor from the
first probe it sees: it resumes with ``Last-Event-ID: p<k>`` if dropped before ``M1``).
"""

from __future__ import annotations

import http.client
import json
import signal
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


def format_item(transport: str, channel: str, seq: int, now: float) -> dict:
    text = f"M{seq} {now:.6f}"
    if transport == "sse":
        formats = {"http-stream": {"content": f"id: {seq}\ndata: {text}\n\n"}}
    elif transport == "longpoll":
        formats = {"http-response": {"body": text + "\n"}}
    elif transport == "ws":
        formats = {"ws-message": {"content": text}}
    else:
        formats = {"http-stream": {"content": text + "\n"}}
    return {"channel": channel, "id": str(seq), "formats": formats}


def probe_item(transport: str, channel: str, k: int) -> dict:
    if transport == "sse":
        formats = {"http-stream": {"content": f"id: p{k}\ndata: P{k}\n\n"}}
    elif transport == "longpoll":
        formats = {"http-response": {"body": f"P{k}\n"}}
    elif transport == "ws":
        formats = {"ws-message": {"content": f"P{k}"}}
    else:
        formats = {"http-stream": {"content": f"P{k}\n"}}
    return {"channel": channel, "id": f"p{k}", "formats": formats}


class HttpPublisher:
    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)

    def publish(self, items: list[dict]) -> None:
        body = json.dumps({"items": items}).encode()
        try:
            self.conn.request("POST", "/publish/", body, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            raise
        if resp.status != 200:
            raise RuntimeError(f"publish answered {resp.status}: {data[:200]!r}")

    def close(self) -> None:
        self.conn.close()


class ZmqPublisher:
    def __init__(self, spec: str) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.connect(spec)
        self.dumps = json.dumps

    def publish(self, items: list[dict]) -> None:
        send = self.sock.send
        for item in items:
            send(b"J" + self.dumps(item).encode())

    def close(self) -> None:
        self.sock.close(linger=5000)
        self.ctx.term()


def open_publisher(kind: str, url: str, spec: str):
    return ZmqPublisher(spec) if kind == "zmq" else HttpPublisher(url)


@dataclass(frozen=True, slots=True)
class PublishPlan:
    kind: str  # http | zmq
    url: str
    spec: str
    transport: str
    channels: int
    rate: float  # messages per second per channel
    duration: float
    start_at: float  # time.time() to start at


def publisher_main(plan: PublishPlan, pipe) -> None:
    """Publish ``rate`` msg/s to every channel for ``duration`` s; send back what was published."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pub = open_publisher(plan.kind, plan.url, plan.spec)
    channels = [f"c{i}" for i in range(plan.channels)]
    total = max(1, int(plan.rate * plan.duration))
    errors, error_text, calls = 0, "", 0
    published = 0  # seq of the last message published (same on every channel)
    while time.time() < plan.start_at:
        time.sleep(min(0.01, max(0.0, plan.start_at - time.time())))
    start = time.time()
    while published < total:
        now = time.time()
        due = min(total, int((now - start) * plan.rate) + 1)
        if due > published:
            # at most 1000 items per POST; a late tick catches up over several calls
            due = min(due, published + max(1, 1000 // len(channels)))
            items = [
                format_item(plan.transport, ch, seq, now)
                for seq in range(published + 1, due + 1)
                for ch in channels
            ]
            try:
                pub.publish(items)
            except Exception as exc:  # a failed publish is reported, not retried: loss shows it
                errors += len(items)
                error_text = repr(exc)[:300]
            calls += 1
            published = due
            if pipe.poll():
                if pipe.recv() == "stop":
                    break
        next_at = start + published / plan.rate
        delay = next_at - time.time()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.time() - start
    pub.close()
    pipe.send(
        {
            "published": {ch: published for ch in channels},
            "per_channel": published,
            "items": published * len(channels),
            "errors": errors,
            "error": error_text,
            "calls": calls,
            "elapsed_s": round(elapsed, 3),
            "rate_achieved": round(published * len(channels) / elapsed, 1) if elapsed > 0 else None,
        }
    )
