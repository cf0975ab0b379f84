"""The access log: one line per HTTP request on the ``gripcast.access`` logger.

``GET /path route=<id or lineN> status=200 bytes=123 duration_ms=4.1 mode=passthrough``,
then ``from=<address>`` with ``log_from`` (the logical client address: Pushpin's rule, the
first ``X-Forwarded-For`` value unless ``x_forwarded_for`` truncates it all) and ``ua="..."``
with ``log_user_agent``.  ``mode`` is how the request was answered: ``passthrough``,
``response`` / ``stream`` (GRIP holds), ``instruct`` (GRIP without a hold), ``error`` (no
route, refused, origin failure), ``ws`` (a WebSocket session: its line is written when it
ends, ``status=101`` when it opened, the duration is the session's).  ``bytes`` is every byte
written to the client for the request: what the connection task wrote plus what the delivery
path wrote to a held stream or a WebSocket session (published content, keep-alives, the end of
a stream; one integer add per delivery, ``StreamSession.sent`` / ``WsSession.sent``).

Logged at INFO, or at the route's ``log_level`` (Pushpin's 0 error, 1 warning, 2 info,
3 debug); ``access_log = false`` turns it off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from edge.proxyrules import logical_peer

if TYPE_CHECKING:
    from broker.config import Config
    from edge.proxyrules import ProxyRules
    from edge.routes import Route

log = logging.getLogger("gripcast.access")

PUSHPIN_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


def route_level(route: Route | None, default: int = logging.INFO) -> int:
    """The Python level of a route's log lines (its ``log_level``, else ``default``)."""
    if route is None or route.log_level is None:
        return default
    return PUSHPIN_LEVELS.get(min(max(route.log_level, 0), 3), default)


@dataclass(frozen=True, slots=True)
class Begin:
    at: float  # trio time the request started
    sent: int  # the connection's byte count then


NO_BEGIN = Begin(0.0, 0)  # what a request keeps when the access log is off (never read)


class _Req(Protocol):
    method: bytes
    headers: list[tuple[bytes, bytes]]


class _Conn(Protocol):
    @property
    def addr(self) -> tuple[str, int] | tuple[str, int, int, int] | None: ...

    @property
    def sent(self) -> int: ...

    @property
    def status(self) -> int: ...


def format_line(
    method: bytes,
    path: bytes,
    route: Route | None,
    status: int,
    nbytes: int,
    duration_s: float,
    mode: str,
    *,
    from_addr: str | None = None,
    user_agent: str | None = None,
) -> str:
    parts = [
        method.decode("latin-1"),
        path.decode("latin-1"),
        f"route={route.name if route is not None else '-'}",
        f"status={status or '-'}",
        f"bytes={nbytes}",
        f"duration_ms={duration_s * 1000:.1f}",
        f"mode={mode or '-'}",
    ]
    if from_addr is not None:
        parts.append(f"from={from_addr or '-'}")
    if user_agent:
        parts.append(f'ua="{user_agent}"')
    return " ".join(parts)


def log_request(
    cfg: Config,
    rules: ProxyRules,
    req: _Req,
    route: Route | None,
    path: bytes,
    conn: _Conn,
    begin: Begin,
    mode: str,
) -> None:
    if not cfg.access_log:
        return
    level = route_level(route)
    if not log.isEnabledFor(level):
        return
    from_addr = None
    if cfg.log_from:
        peer = str(conn.addr[0]) if conn.addr else ""
        from_addr = logical_peer(rules, req.headers, peer)
    ua = None
    if cfg.log_user_agent:
        raw = next((v for k, v in req.headers if k.lower() == b"user-agent"), b"")
        ua = raw.decode("latin-1").replace('"', "'") or None
    log.log(
        level,
        "%s",
        format_line(
            req.method,
            path,
            route,
            conn.status,
            conn.sent - begin.sent,
            trio.current_time() - begin.at,
            mode,
            from_addr=from_addr,
            user_agent=ua,
        ),
    )
