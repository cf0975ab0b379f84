"""The publisher: numbered messages whose payload carries their send time, over Pushpin's HTTP
publish API (one POST per tick holding every due item, on plain sockets) or ZeroMQ
PUSH (``J`` + JSON per item).  It runs in its own process so its CPU is measured apart.

Message ``seq`` of channel ``c`` has publisher id ``str(seq)`` and content ``M<seq> <time>``:
``http-stream`` ``M..\\n`` (stream), ``id: <seq>\\ndata: M..\\n\\n`` (SSE), ``http-response``
body ``M..\\n`` (long-poll), ``ws-message`` ``M..`` (WebSocket).  Probes (``P<k>``)
are the same shapes without a number, with id ``p<k>`` (so an SSE client has a cursor from the
first probe it sees: it resumes with ``Last-Event-ID: p<k>`` if dropped before ``M1``).
"""

from __future__ import annotations

import json
import signal
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools


def format_item(transport: str, channel: str, seq: int, now: float, pad: str = "") -> dict:
    """Message ``seq``: ``M<seq> <now>``, then ``pad`` (a space and filler, for large
    messages; the client's parser reads the number and the time only)."""
    text = f"M{seq} {now:.6f}{pad}"
    if transport == "sse":
        formats = {"http-stream": {"content": f"id: {seq}\ndata: {text}\n\n"}}
    elif transport == "longpoll":
        formats = {"http-response": {"body": text + "\n"}}
    elif transport == "ws":
        formats = {"ws-message": {"content": text}}
    else:
        formats = {"http-stream": {"content": text + "\n"}}
    return {"channel": channel, "id": str(seq), "formats": formats}


# format_item's JSON text made by one string format (the publisher's per-item cost: a dict tree
# and json.dumps were ~10 us an item, a third of a core at 30,000 items/s); fields: channel,
# seq, seq, seq, time, pad (JSON-safe: letters, digits, spaces)
_ITEM_JSON = {
    "sse": '{"channel":"%s","id":"%d","formats":{"http-stream":{"content":'
    '"id: %d\\ndata: M%d %.6f%s\\n\\n"}}}',
    "longpoll": '{"channel":"%s","id":"%d","formats":{"http-response":{"body":"M%d %.6f%s\\n"}}}',
    "ws": '{"channel":"%s","id":"%d","formats":{"ws-message":{"content":"M%d %.6f%s"}}}',
    "stream": '{"channel":"%s","id":"%d","formats":{"http-stream":{"content":"M%d %.6f%s\\n"}}}',
}


def item_json(transport: str, channel: str, seq: int, now: float, pad: str = "") -> str:
    """``format_item(...)`` as JSON text, without building it (the same value once parsed)."""
    tmpl = _ITEM_JSON.get(transport, _ITEM_JSON["stream"])
    if transport == "sse":
        return tmpl % (channel, seq, seq, seq, now, pad)
    return tmpl % (channel, seq, seq, now, pad)


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


class _Answer:
    """httptools callbacks: one HTTP answer, read whole."""

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.done = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True
        if self.parser is not None:  # (read here: llhttp resets it once the message is done)
            self.keep_alive = self.parser.should_keep_alive()


class HttpPublisher:
    """POSTs to ``/publish/`` over ``conns`` connections: with more than one, a POST goes out
    on the next connection before the answers of the others were read (up to ``conns`` in
    flight), so the publisher is not held to one round trip per POST on a busy machine.  A
    POST's answer is read before its connection is used again, and at ``close``.

    Plain sockets and a request head built once, the answer parsed with httptools: both
    targets' publish APIs close every connection after its answer, and ``http.client`` (a
    name lookup, a connection object, its header parser, a POST) cost ~2.5 us of the
    publisher's CPU an item at 100 items a POST, as much as a client reading its delivery; the
    load generator should not take the cores the targets are measured on.  A connection the
    answer keeps alive is used again."""

    def __init__(self, url: str, conns: int = 1) -> None:
        u = urlsplit(url)
        host, port = u.hostname or "127.0.0.1", u.port or 80
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self._family, self._kind, self._proto, self._addr = family, kind, proto, addr
        self._head = (
            f"POST /publish/ HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        n = max(1, conns)
        self.socks: list[socket.socket | None] = [None] * n
        self.pending = [False] * n
        self.next = 0

    def _sock(self, i: int) -> socket.socket:
        s = self.socks[i]
        if s is None:
            s = socket.socket(self._family, self._kind, self._proto)
            s.settimeout(10)
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.connect(self._addr)
            except OSError:
                s.close()
                raise
            self.socks[i] = s
        return s

    def _drop(self, i: int) -> None:
        s = self.socks[i]
        self.socks[i] = None
        if s is not None:
            s.close()

    def _finish(self, i: int) -> None:
        """Read the answer of the POST in flight on connection ``i``."""
        self.pending[i] = False
        s = self.socks[i]
        answer = _Answer()
        parser = answer.parser = httptools.HttpResponseParser(answer)
        try:
            if s is None:
                raise ConnectionError("no connection")
            while not answer.done:
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("the target closed before its answer was complete")
                parser.feed_data(data)
        except (OSError, httptools.HttpParserError):
            self._drop(i)
            raise
        if not answer.keep_alive:
            self._drop(i)
        status = parser.get_status_code()
        if status != 200:
            raise RuntimeError(f"publish answered {status}: {b''.join(answer.body)[:200]!r}")

    def publish(self, items: list[dict]) -> None:
        self.publish_body(json.dumps({"items": items}).encode())

    def publish_json(self, items: list[str]) -> None:
        """Items already JSON text (``item_json``)."""
        self.publish_body(('{"items":[' + ",".join(items) + "]}").encode())

    def publish_body(self, body: bytes) -> None:
        i = self.next
        self.next = (i + 1) % len(self.socks)
        if self.pending[i]:
            self._finish(i)  # an error here belongs to an earlier POST: still reported
        try:
            self._sock(i).sendall(self._head + b"%d\r\n\r\n" % len(body) + body)
        except OSError:
            self._drop(i)
            raise
        self.pending[i] = True
        if len(self.socks) == 1:
            self._finish(i)

    def close(self) -> None:
        try:
            for i, busy in enumerate(self.pending):
                if busy:
                    self._finish(i)
        finally:
            for i in range(len(self.socks)):
                self._drop(i)


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

    def publish_json(self, items: list[str]) -> None:
        """Items already JSON text (``item_json``): one ``J`` frame each."""
        send = self.sock.send
        for item in items:
            send(("J" + item).encode())

    def close(self) -> None:
        self.sock.close(linger=5000)
        self.ctx.term()


def open_publisher(kind: str, url: str, spec: str, conns: int = 1):
    return ZmqPublisher(spec) if kind == "zmq" else HttpPublisher(url, conns)


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
    base: int = 0  # the first message of each channel has seq base + 1
    batch: int = 0  # items per POST / per burst of ZeroMQ frames (0: every item due, <= 1000)
    conns: int = 1  # HTTP: POSTs in flight (keep-alive connections)
    payload_bytes: int = 0  # pad each message's text to about this many bytes


def padding(payload_bytes: int) -> str:
    """The filler that makes a message text about ``payload_bytes`` long (none when 0)."""
    n = payload_bytes - 20  # ``M<seq> <time>`` is about 20 characters
    return " " + "x" * (n - 1) if n > 1 else ""


# an HTTP POST stays under the broker's 1,000,000-byte request limit (broker.ingest.httpapi)
# and Pushpin's (10,000,000 here): large messages go fewer to a POST
POST_BYTES_MAX = 900_000
ITEM_OVERHEAD_BYTES = 200  # channel, id, format keys and the JSON around an item


def items_per_post(batch: int, payload_bytes: int) -> int:
    """Most items one HTTP POST carries: ``batch`` (0: 1,000), fewer when large payloads
    would pass ``POST_BYTES_MAX``."""
    fit = POST_BYTES_MAX // (max(payload_bytes, 0) + ITEM_OVERHEAD_BYTES)
    return max(1, min(batch if batch > 0 else 1000, fit))


def plan_total(plan: PublishPlan) -> int:
    """How many items the plan publishes: ``rate x duration`` per channel (at least one)."""
    return max(1, int(plan.rate * plan.duration)) * plan.channels


def item_of(k: int, channels: int, base: int) -> tuple[str, int]:
    """The ``k``-th item (from 0) of a plan: its channel and seq.  Items go round the
    channels, so publishes are spread evenly over them in time."""
    return f"c{k % channels}", base + k // channels + 1


def published_counts(sent: int, channels: int) -> dict[str, int]:
    """Messages each channel got when the first ``sent`` items went out."""
    q, r = divmod(sent, channels)
    return {f"c{i}": q + (1 if i < r else 0) for i in range(channels)}


def publisher_main(plan: PublishPlan, pipe) -> None:
    """Publish ``rate`` msg/s to every channel for ``duration`` s (``rate x channels`` items/s in
    all, round the channels); send back what was published.  With ``batch`` B each HTTP POST
    (ZeroMQ: each burst of B frames) carries B items and goes out when its last item is due."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pub = open_publisher(plan.kind, plan.url, plan.spec, plan.conns)
    total = plan_total(plan)
    per_s = plan.rate * plan.channels  # items per second
    # ZeroMQ too: ``batch`` frames sent back to back when the last is due (one wake-up of the
    # publisher and of the target's reader per batch, as with an HTTP POST of that many)
    chunk = plan.batch if plan.batch > 0 else 0
    pad = padding(plan.payload_bytes)
    per_post = items_per_post(chunk, plan.payload_bytes) if plan.kind == "http" else 1000
    errors, error_text, calls = 0, "", 0
    sent = 0
    while time.time() < plan.start_at:
        time.sleep(min(0.01, max(0.0, plan.start_at - time.time())))
    start = time.time()
    while sent < total:
        now = time.time()
        due = min(total, int((now - start) * per_s) + 1)
        if chunk and due < total:
            due = sent + (due - sent) // chunk * chunk  # whole batches only
        if due > sent:
            # a late tick catches up over several calls
            end = min(due, sent + per_post)
            tr, nch, base = plan.transport, plan.channels, plan.base
            items = [
                item_json(tr, f"c{k % nch}", base + k // nch + 1, now, pad)
                for k in range(sent, end)
            ]
            try:
                pub.publish_json(items)
            except Exception as exc:  # a failed publish is reported, not retried: loss shows it
                errors += len(items)
                error_text = repr(exc)[:300]
            calls += 1
            sent = end
            if pipe.poll():
                if pipe.recv() == "stop":
                    break
            if sent < due:
                continue
        next_k = min(total, sent + (chunk or 1)) - 1  # the item whose due time we wait for
        delay = start + next_k / per_s - time.time()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.time() - start
    try:
        pub.close()  # reads the answers still in flight
    except Exception as exc:
        errors += 1
        error_text = repr(exc)[:300]
    counts = published_counts(sent, plan.channels)
    pipe.send(
        {
            "published": counts,
            "base": plan.base,
            "per_channel": max(counts.values()),
            "items": sent,
            "errors": errors,
            "error": error_text,
            "calls": calls,
            "items_per_call": round(sent / calls, 1) if calls else None,
            "elapsed_s": round(elapsed, 3),
            "offered_per_s": round(per_s, 1),
            "rate_achieved": round(sent / elapsed, 1) if elapsed > 0 else None,
            # how long after its schedule the last item went out: the publisher's own limit
            "lag_s": round(elapsed - (total - 1) / per_s, 3),
            "cpu_s": round(time.process_time(), 3),  # the publisher process's own CPU
        }
    )
