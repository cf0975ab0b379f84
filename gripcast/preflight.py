"""What ``gripcast run`` checks before it starts anything: routes, certificates, free ports.

A mistake the runner can know about up front (a routes line with no target, a missing routes
file, a port another program holds) ends the start at once with one line per problem, instead
of children that fail and get restarted forever.

Ports are tried with a plain ``bind()`` (``SO_REUSEADDR``, never ``SO_REUSEPORT``): a running
gripcast's edges hold the client port with ``SO_REUSEPORT``, and a socket without that option
cannot join them, so a second cluster is refused instead of silently sharing the port.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from broker.config import Config
from broker.errors import ConfigError

BROKER_PORTS = (
    "push_in_port",
    "http_port",
    "sub_in_port",
    "command_port",
    "edge_pub_port",
    "edge_ctl_port",
)


@dataclass(frozen=True, slots=True)
class PortUse:
    """One TCP port the cluster will listen on."""

    key: str  # the config key (or "demo origin")
    addr: str
    port: int


def planned_ports(cfg: Config, demo_port: int | None) -> list[PortUse]:
    """Every TCP port ``gripcast run`` is about to listen on, in start order."""
    brokers = max(1, len(cfg.brokers))  # ``gripcast run --brokers N``: broker i at + 10 * i
    uses = [
        PortUse(
            f"{key} (broker{i})" if brokers > 1 else key, cfg.broker_bind, cfg.port(key) + 10 * i
        )
        for i in range(brokers)
        for key in BROKER_PORTS
    ]
    uses.append(PortUse("client_port", cfg.client_addr, cfg.port("client_port")))
    for addr, port in cfg.https_listens():
        uses.append(PortUse("https_port", addr, port))
    if cfg.metrics_port:
        for i in range(brokers):
            key = f"metrics_port (broker{i})" if brokers > 1 else "metrics_port"
            uses.append(PortUse(key, cfg.metrics_addr, cfg.metrics_port + 10 * i))
    if cfg.edge_metrics_port:
        for i in range(cfg.edge_count):
            uses.append(
                PortUse(f"edge_metrics_port (edge{i})", cfg.metrics_addr, cfg.edge_metrics_port + i)
            )
    if demo_port is not None:
        uses.append(PortUse("demo origin", "127.0.0.1", demo_port))
    return uses


def _bind_problem(use: PortUse) -> str | None:
    addr = "" if use.addr in ("*", "0.0.0.0", "") else use.addr
    try:
        infos = socket.getaddrinfo(
            addr or None, use.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"{use.key}: cannot resolve {use.addr!r}: {exc.strerror}"
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"port {use.port} is in use (another gripcast or Pushpin?): "
                    f"{use.key} on {use.addr or '*'}"
                )
            return f"{use.key}: cannot listen on {use.addr}:{use.port}: {exc.strerror}"
    return None


def busy_ports(uses: list[PortUse]) -> list[str]:
    """One problem line per port that cannot be listened on; also a port planned twice."""
    problems = []
    seen: dict[int, str] = {}
    for use in uses:
        if use.port in seen:
            problems.append(f"{use.key} and {seen[use.port]} are both port {use.port}")
            continue
        seen[use.port] = use.key
        problem = _bind_problem(use)
        if problem:
            problems.append(problem)
    return problems


def check_routes(cfg: Config) -> None:
    """Parse the routes the edges will load (raises ConfigError naming the line)."""
    from edge.server import load_routes

    load_routes(cfg)


def check_certificates(cfg: Config) -> None:
    """Load the HTTPS certificates the edges will load (raises ConfigError naming each file:
    missing, unreadable, not PEM, key not matching, expired)."""
    if not cfg.https_port:
        return
    from edge.tls import load_certificates

    load_certificates(cfg)


def preflight(cfg: Config, demo_port: int | None) -> None:
    """Raise ConfigError listing every problem found before starting the cluster."""
    problems: list[str] = []
    for check in (check_routes, check_certificates):
        try:
            check(cfg)
        except ConfigError as exc:
            problems.extend(exc.problems)
    from broker.config import several_brokers_problems

    problems.extend(several_brokers_problems(cfg))
    problems.extend(busy_ports(planned_ports(cfg, demo_port)))
    if problems:
        raise ConfigError(problems)
