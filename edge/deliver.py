"""The delivery hot path: tracked broker messages -> bytes on client sockets.

Per batch (DESIGN.md "Measured facts"): each message is encoded once per transport (one
``http_chunk`` for every chunked HTTP stream, the raw content for HTTP/1.0 streams, one
response per long-poll hold); each stream session's pending bytes for the batch are joined and
written with ONE non-blocking ``send()`` per connection, all in one ``send_batch`` call per
~1,000 sockets, with a checkpoint between slices.  A connection that would block keeps the
rest in its own bounded buffer and gets a writer task; one whose buffer passes
``buffer_limit`` is dropped (the client resumes with its cursor) and counted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from _speedups import http_chunk, send_batch
from edge import responses

log = logging.getLogger(__name__)

SLICE = 1000
WRITE_CHUNK = 256 * 1024
_LAST_CHUNK = b"0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class DeliveryStatistics:
    messages: int
    deliveries: int
    bytes_sent: int
    backlogged: int
    overflows: int
    send_errors: int
    writers: int


def _content(fmt: dict) -> bytes:
    c = fmt.get("content")
    if c is None:
        return b""
    return c.encode("utf-8") if isinstance(c, str) else bytes(c)


class Deliverer:
    def __init__(self, hub, buffer_limit: int, spawn) -> None:
        self.hub = hub
        self.buffer_limit = buffer_limit
        self._spawn = spawn  # spawn(async_fn, *args): start a task in the server's nursery
        self._messages = self._deliveries = self._bytes = 0
        self._backlogged = self._overflows = self._errors = self._writers = 0

    async def deliver(self, envs: list, now: float) -> None:
        """Hand a batch of in-order envelopes to every subscribed session."""
        pending: dict = {}
        for env in envs:
            members = self.hub.sessions(env.channel)
            self._messages += 1
            if not members:
                continue
            formats = env.formats
            stream = formats.get("http-stream")
            resp = formats.get("http-response")
            chunk = raw = None
            for s in members:
                if s.kind == "stream":
                    if stream is None or s.closing or s.done:
                        continue
                    action = stream.get("action", "send")
                    if action == "send":
                        if raw is None:
                            raw = _content(stream)
                            chunk = http_chunk(raw)
                        if not raw:
                            continue
                        data = chunk if s.chunked else raw
                    elif action == "close":
                        s.closing = True
                        data = _LAST_CHUNK if s.chunked else b""
                    else:
                        continue  # "hint": no next link to fetch
                    parts = pending.get(s)
                    if parts is None:
                        pending[s] = [data]
                    else:
                        parts.append(data)
                elif resp is not None and s.result is None:
                    if resp.get("action", "send") == "send":
                        try:
                            s.respond(responses.published(s.hold, resp, keep_alive=s.keep_alive))
                            self._deliveries += 1
                        except (TypeError, ValueError) as exc:
                            log.warning("bad http-response format channel=%s seq=%s: %s",
                                        env.channel, env.seq, exc)
        if pending:
            await self.write_many(list(pending.items()), now)

    async def write_many(self, items: list, now: float) -> None:
        """Write ``[(session, [bytes, ...]), ...]``: one send per connection."""
        for start in range(0, len(items), SLICE):
            if start:
                await trio.lowlevel.checkpoint()
            fds: list[int] = []
            datas: list[bytes] = []
            targets: list = []
            for s, parts in items[start:start + SLICE]:
                if s.dead or s.done:
                    continue  # checked here, after any checkpoint: the fd may be gone
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                if s.writing or s.buf:
                    self._buffer(s, data)
                elif not data:
                    if s.closing:
                        s.finish()
                else:
                    fds.append(s.fd)
                    datas.append(data)
                    targets.append(s)
            if not fds:
                continue
            results = send_batch(fds, datas)
            for s, data, n in zip(targets, datas, results):
                if n == len(data):
                    self._deliveries += 1
                    self._bytes += n
                    s.last_out = now
                    if s.closing:
                        s.finish()
                elif n >= 0:
                    self._bytes += n
                    if n:
                        s.last_out = now
                    self._buffer(s, data[n:])
                else:
                    self._errors += 1
                    s.kill(f"send failed errno={-n}")

    def _buffer(self, s, data: bytes) -> None:
        s.buf += data
        if len(s.buf) > self.buffer_limit:
            self._overflows += 1
            log.info("slow client dropped conn=%s buffered=%d limit=%d",
                     s.id, len(s.buf), self.buffer_limit)
            s.buf.clear()
            s.kill("buffer overflow")
            return
        if not s.writing:
            s.writing = True
            self._backlogged += 1
            self._spawn(self.drain, s)

    async def drain(self, s) -> None:
        """Writer task: flush one session's backlog as the socket accepts it."""
        self._writers += 1
        try:
            while s.buf and not s.dead:
                try:
                    await trio.lowlevel.wait_writable(s.sock)
                except (trio.ClosedResourceError, OSError):
                    s.kill("closed")
                    return
                if s.dead:
                    return
                n = send_batch([s.fd], [bytes(s.buf[:WRITE_CHUNK])])[0]
                if n < 0:
                    self._errors += 1
                    s.kill(f"send failed errno={-n}")
                    return
                if n:
                    del s.buf[:n]
                    self._bytes += n
                    s.last_out = trio.current_time()
        finally:
            self._writers -= 1
            s.writing = False
        if s.closing and not s.buf and not s.dead:
            s.finish()

    def statistics(self) -> DeliveryStatistics:
        return DeliveryStatistics(
            messages=self._messages, deliveries=self._deliveries, bytes_sent=self._bytes,
            backlogged=self._backlogged, overflows=self._overflows, send_errors=self._errors,
            writers=self._writers,
        )
