"""The operations listener of each process: ``/metrics``, ``/health`` and ``/ready``.

One small HTTP/1.1 listener per process (broker: ``metrics_port``; edge i:
``edge_metrics_port + i``), off when the port is 0.  One request per connection, answered
with ``Connection: close``:

* ``GET /metrics``: Prometheus text exposition of the process's own registry;
* ``GET /health``: 200 while the process runs (its trio loop answers);
* ``GET /ready``: 200 when it should receive traffic, else 503 with the reason (edge: the
  broker link is up and it is not draining; broker: its sockets are bound and it is not
  draining).

``answer(method, path, ...)`` is the sans-IO part; ``serve_ops`` runs it on trio, in the
process's own loop, so collectors read ``statistics()`` without locks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from broker.runtime import http1

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8192
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64  # at once; a scraper or probe needs one: beyond, closed unanswered

ReadyFn = Callable[[], "str | None"]  # None: ready; else the reason it is not


def _response(
    status: int, reason: str, body: bytes, ctype: str = "text/plain; charset=utf-8"
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def answer(method: str, path: str, registry: CollectorRegistry, ready: ReadyFn) -> bytes:
    """The whole response to one request."""
    path = path.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response(405, "Method Not Allowed", b"Method not allowed.\n")
    if path == "/metrics":
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(registry)
        out = _response(200, "OK", body, CONTENT_TYPE_LATEST)
    elif path == "/health":
        out = _response(200, "OK", b"ok\n")
    elif path == "/ready":
        why = ready()
        out = (
            _response(200, "OK", b"ready\n")
            if why is None
            else _response(503, "Service Unavailable", f"not ready: {why}\n".encode())
        )
    else:
        out = _response(404, "Not Found", b"Not found: try /metrics, /health or /ready.\n")
    if method == "HEAD":
        out = out[: out.index(b"\r\n\r\n") + 4]
    return out


async def _serve_one(
    stream: trio.SocketStream, registry: CollectorRegistry, ready: ReadyFn
) -> None:
    try:
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            reader = http1.RequestReader(stream, MAX_HEAD_BYTES, read_bytes=4096)
            try:
                head = await reader.read_head()
            except http1.BadRequest:
                await stream.send_all(_response(400, "Bad Request", b"Bad request.\n"))
                return
            except http1.HeadTooLarge:
                await stream.send_all(
                    _response(
                        431, "Request Header Fields Too Large", b"Request header too large.\n"
                    )
                )
                return
            if head is None:
                return
            await stream.send_all(answer(head.method, head.url, registry, ready))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    except Exception:  # a bug here must not take the process down
        log.exception("ops listener: unexpected error")
    finally:
        with trio.move_on_after(1):
            await stream.aclose()


async def serve_ops(
    host: str,
    port: int,
    registry: CollectorRegistry,
    ready: ReadyFn,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics, /health, /ready on ``host:port`` until cancelled."""
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    log.info("ops listener ready addr=%s:%d paths=/metrics,/health,/ready", host, port)

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_one(stream, registry, ready)

    await trio.serve_listeners(capped(handler, MAX_CONNECTIONS), listeners, task_status=task_status)


def capped(
    handler: Callable[[trio.SocketStream], Awaitable[None]], limit: int
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """``handler`` serving at most ``limit`` connections at once; the others are closed at
    once (connections that send nothing would otherwise each hold a task for
    REQUEST_TIMEOUT_S)."""
    active = 0

    async def run(stream: trio.SocketStream) -> None:
        nonlocal active
        if active >= limit:
            with trio.move_on_after(1):
                await stream.aclose()
            return
        active += 1
        try:
            await handler(stream)
        finally:
            active -= 1

    return run
