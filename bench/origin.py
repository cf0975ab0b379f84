"""The bench's own origin: a small asyncio HTTP/1.1 server that answers every request with GRIP.

Paths (``<ch>`` is the channel):

* ``/stream/<ch>``  ``Grip-Hold: stream``, ``text/plain``; with ``resume`` on, a
  ``?last=<id>`` query (HTTP streaming has no cursor header) becomes ``prev-id=<id>``
* ``/sse/<ch>``     ``Grip-Hold: stream``, ``text/event-stream``; with ``resume`` on, a
  ``Last-Event-ID: <id>`` request header becomes ``Grip-Channel: <ch>; prev-id=<id>``
* ``/lp/<ch>``      ``Grip-Hold: response`` (long-poll), timeout 30 s, body ``T`` on timeout
* ``/ws/<ch>``      WebSocket-over-HTTP (the target's route has ``over_http``): the ``OPEN``
  event is accepted with ``Sec-WebSocket-Extensions: grip`` and a ``c:`` subscribe control
  message for ``<ch>`` (with ``prev-id`` from a ``?prev=<id>`` query: resume after it); any later event gets an empty 200 (a ``CLOSE`` is echoed)

It keeps connections alive, parses only the request line and the one header it needs, and runs
in its own process so its CPU is measured apart from the target's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket

from bench.procs import raise_nofile

_HEAD = {
    b"stream": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nGrip-Hold: stream\r\n",
        b"[open]\n",
    ),
    b"sse": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Grip-Hold: stream\r\n",
        b":open\n\n",
    ),
    b"lp": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nGrip-Hold: response\r\n"
        b"Grip-Timeout: 30\r\n",
        b"T\n",
    ),
}
_404 = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nnot found\n"
)


_WOH_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/websocket-events\r\n"
    b"Sec-WebSocket-Extensions: grip\r\n"
)


def respond_woh(channel: bytes, body: bytes, prev: bytes = b"") -> bytes:
    """A WebSocket-over-HTTP answer to the events in ``body`` (pure); ``prev`` (the request's
    ``?prev=<id>``) resumes the subscription after that id (gripcast's ``prev-id``)."""
    if body.startswith(b"OPEN"):
        msg = b'c:{"type": "subscribe", "channel": "%s"}' % channel
        if prev:
            msg = msg[:-1] + b', "prev-id": "%s"}' % prev
        out = b"OPEN\r\nTEXT %x\r\n%s\r\n" % (len(msg), msg)
    elif b"CLOSE" in body:
        out = b"CLOSE\r\n"
    else:
        out = b""
    return b"%sContent-Length: %d\r\n\r\n%s" % (_WOH_HEAD, len(out), out)


def keep_alive_header(kind: bytes, seconds: int) -> bytes:
    """``Grip-Keep-Alive`` for a held stream: an SSE comment, or an empty line (none when 0)."""
    if not seconds or kind not in (b"sse", b"stream"):
        return b""
    data = b":ka\\n\\n" if kind == b"sse" else b"\\n"
    return b"Grip-Keep-Alive: %s; format=cstring; timeout=%d\r\n" % (data, seconds)


def respond(
    path: bytes,
    last_event_id: bytes | None,
    resume: bool,
    body: bytes = b"",
    keep_alive: int = 0,
) -> bytes:
    """The whole response for one request (pure: bytes in, bytes out)."""
    target, _, query = path.partition(b"?")
    parts = target.split(b"/")
    if len(parts) == 3 and parts[1] == b"ws" and parts[2]:
        prev = query[5:].split(b"&", 1)[0] if query.startswith(b"prev=") else b""
        return respond_woh(parts[2], body, prev)
    if len(parts) != 3 or parts[1] not in _HEAD or not parts[2]:
        return _404
    head, body = _HEAD[parts[1]]
    channel = parts[2]
    if resume and parts[1] == b"stream" and query.startswith(b"last="):
        last_event_id = query[5:].split(b"&", 1)[0]
    if resume and last_event_id and parts[1] in (b"sse", b"stream"):
        grip_channel = b"Grip-Channel: " + channel + b"; prev-id=" + last_event_id + b"\r\n"
    else:
        grip_channel = b"Grip-Channel: " + channel + b"\r\n"
    head += keep_alive_header(parts[1], keep_alive)
    return b"%s%sContent-Length: %d\r\n\r\n%s" % (head, grip_channel, len(body), body)


class _OriginProtocol(asyncio.Protocol):
    __slots__ = ("transport", "buf", "resume", "counter", "keep_alive")

    def __init__(self, resume: bool, counter: list, keep_alive: int = 0) -> None:
        self.buf = b""
        self.resume = resume
        self.counter = counter
        self.keep_alive = keep_alive

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self.transport.close()
                return
            head = self.buf[:end]
            rest = self.buf[end + 4 :]
            lines = head.split(b"\r\n")
            clen = 0
            last_id = None
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    clen = int(v.strip() or 0)
                elif k == b"last-event-id":
                    last_id = v.strip()
            if len(rest) < clen:
                return  # wait for the body (proxies send none for GET)
            body, self.buf = rest[:clen], rest[clen:]
            try:
                path = lines[0].split(b" ")[1]
            except IndexError:
                self.transport.close()
                return
            self.counter[0] += 1
            self.transport.write(respond(path, last_id, self.resume, body, self.keep_alive))


async def _serve(sock: socket.socket, resume: bool, ready, keep_alive: int = 0) -> None:
    loop = asyncio.get_running_loop()
    counter = [0]
    server = await loop.create_server(
        lambda: _OriginProtocol(resume, counter, keep_alive), sock=sock, backlog=4096
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    ready.send(("ready", os.getpid()))
    async with server:
        await stop.wait()


def _main(sock: socket.socket, resume: bool, ready, keep_alive: int = 0) -> None:
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    asyncio.run(_serve(sock, resume, ready, keep_alive))


class Origin:
    """The origin in a child process, listening on a port bound before it starts."""

    def __init__(self, resume: bool = False, keep_alive: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        self._ready = parent
        self.proc = ctx.Process(
            target=_main,
            args=(self.sock, resume, child, keep_alive),
            name="bench-origin",
            daemon=True,
        )

    def start(self) -> Origin:
        self.proc.start()
        if not self._ready.poll(10):
            raise TimeoutError("origin did not start")
        self._ready.recv()
        self.sock.close()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
