"""Configuration types and the wiring table of every gripcast socket.

Precedence: defaults < TOML file (``--config``) < ``GRIPCAST_<KEY>`` environment < CLI flags.
Every key below is in ``deploy/gripcast.toml`` with its default and a comment.

Wiring (the one place every endpoint is listed, like Pushpin's ``internal.conf``)::

  name            socket   bind/connect  peer                         default
  push_in         PULL     bind (broker) publishers' PUSH               tcp://127.0.0.1:5560
  http_api        HTTP     bind (broker) publishers (POST /publish)     127.0.0.1:5561
  sub_in          SUB      bind (broker) publishers' PUB/XPUB           tcp://127.0.0.1:5562
  command         ROUTER   bind (broker) publishers' REQ/DEALER         tcp://127.0.0.1:5563
  edge_pub        XPUB     bind (broker) edges' SUB (one per edge)      tcp://127.0.0.1:5564
  edge_ctl        ROUTER   bind (broker) edges' DEALER (one per edge)   tcp://127.0.0.1:5565
  client          TCP      bind (edges, SO_REUSEPORT)  clients          0.0.0.0:7999

``port_offset`` is added to every default port above (client and broker), like Pushpin's.
Ports given explicitly (``--port``, ``client_port = ...``) are used as given.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from typing import Any, Mapping

from broker.errors import ConfigError

DEFAULT_PORTS = {
    "client_port": 7999,
    "push_in_port": 5560,
    "http_port": 5561,
    "sub_in_port": 5562,
    "command_port": 5563,
    "edge_pub_port": 5564,
    "edge_ctl_port": 5565,
}


@dataclass(frozen=True, slots=True)
class Config:
    # client listener (edges)
    client_addr: str = "0.0.0.0"
    client_port: int | None = None  # None: 7999 + port_offset
    port_offset: int = 0
    # broker addresses: where the broker binds, and where edges and tools reach it
    broker_bind: str = "127.0.0.1"
    broker_host: str = "127.0.0.1"
    push_in_port: int | None = None
    http_port: int | None = None
    sub_in_port: int | None = None
    command_port: int | None = None
    edge_pub_port: int | None = None
    edge_ctl_port: int | None = None
    # routes: Pushpin routes-file lines; a routes file is read too when given
    routes: tuple[str, ...] = ()
    routes_file: str = ""
    # Grip-Sig toward origins
    sig_iss: str = "pushpin"
    sig_key: str = "changeme"
    # runner
    edges: int = 0  # 0: one per CPU
    # broker history (memory store)
    history_max_items: int = 1000
    history_max_age_s: float = 3600.0
    # history store: "memory" or "redis://[:password@]host[:port][/db]" (see docs/reliability.md)
    store: str = "memory"
    # broker XPUB send high-water mark per edge (messages); beyond it fan-out drops and the
    # edges repair the gap from history
    edge_pub_sndhwm: int = 100_000
    # edge SUB receive high-water mark (messages)
    edge_sub_rcvhwm: int = 1_000_000
    # an edge that hears no broker heartbeat for this long calls the link lost, and
    # re-synchronises every channel when it is back
    broker_link_timeout_s: float = 3.0
    # edge limits
    client_buffer_bytes: int = 1 << 20
    client_header_bytes: int = 8192
    client_maxconn: int = 50000
    origin_timeout_s: float = 30.0
    # keep-alive connections to origins: an idle one is reused for this long (0: a new
    # connection per request, "Connection: close")
    origin_keepalive_idle_s: float = 30.0
    # largest WebSocket message (all fragments) a client or origin may send; beyond: close 1009
    ws_max_message_bytes: int = 1 << 20
    # GRIP over HTTP (docs/grip-http.md): re-ask the origin ~1 s after a channel's first
    # subscription on an edge (Pushpin's default; skipped when history resolved the prev-ids)
    update_on_first_subscription: bool = True
    # broker HTTP API auth: "" (off: Authorization ignored), an HS256 secret, "base64:<b64>",
    # or "file:<path>" to a PEM public key (RS256/ES256)
    publish_jwt_key: str = ""
    # hostile input (edge): body limit (413), request-head deadline (408, slowloris)
    client_body_bytes: int = 1 << 20
    client_head_timeout_s: float = 20.0
    # multi-host (docs/multihost.md): ZeroMQ heartbeats drop a silent TCP peer after 3 intervals
    # (0: off); CurveZMQ keys are Z85 text (``gripcast keygen``) or a path to a file holding one
    zmq_heartbeat_s: float = 5.0
    curve_secret_key: str = ""  # broker's secret key: Curve on for the edge sockets
    curve_public_key: str = ""  # broker's public key (edges and tools use it as server key)
    curve_allowed_clients: tuple[str, ...] = ()  # allowed client public keys, files, or "*"
    curve_client_secret_key: str = ""  # an edge's own secret key (its public key is derived)
    curve_publishers: bool = False  # Curve on the publisher sockets (PULL, SUB, command) too
    # lifecycle and observability (deploy/README.md)
    drain_timeout_s: float = 10.0  # SIGTERM: longest graceful drain before exiting
    metrics_addr: str = "127.0.0.1"  # /metrics, /health, /ready listeners
    metrics_port: int = 0  # broker's listener; 0: off
    edge_metrics_port: int = 0  # edge i listens on edge_metrics_port + i; 0: off
    stats_spec: str = ""  # Pushpin-style stats ZMQ PUB endpoint (broker binds); "": off
    stats_report_interval_s: float = 10.0  # how often "report" stats packets go out
    stats_connection_ttl_s: int = 120  # "conn" packets' ttl (Pushpin's stats_connection_ttl)
    log_level: str = "info"
    # payload bytes (content/body) kept per channel history, the newest message always; 0: none
    history_max_bytes: int = 16 << 20

    # -- derived ---------------------------------------------------------------------------

    def port(self, name: str) -> int:
        """The effective port for ``name`` (a key of DEFAULT_PORTS), offset applied to defaults."""
        value = getattr(self, name)
        if value is None:
            return DEFAULT_PORTS[name] + self.port_offset
        return int(value)

    def endpoint(self, name: str, *, bind: bool) -> str:
        """A ZeroMQ endpoint for ``push_in``, ``sub_in``, ``command``, ``edge_pub``, ``edge_ctl``."""
        host = self.broker_bind if bind else self.broker_host
        if bind and host in ("0.0.0.0", ""):
            host = "*"
        return f"tcp://{host}:{self.port(name + '_port')}"

    @property
    def edge_count(self) -> int:
        return self.edges if self.edges > 0 else (os.cpu_count() or 1)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["routes"] = list(self.routes)
        return d


_FIELDS = {f.name: f for f in fields(Config)}
_INT_OR_NONE = {name for name in DEFAULT_PORTS}


def _coerce(name: str, value: Any, problems: list[str]) -> Any:
    f = _FIELDS[name]
    t = f.type
    try:
        if name in _INT_OR_NONE:
            if value is None or value == "":
                return None
            v = int(value)
            if not 0 <= v <= 65535:
                raise ValueError("port out of range")
            return v
        if t == "int":
            if isinstance(value, bool):
                raise ValueError("not an integer")
            return int(value)
        if t == "float":
            return float(value)
        if t == "bool":
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0",
                                                            "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                raise ValueError("not a boolean")
            return value
        if t == "str":
            if not isinstance(value, str):
                raise ValueError("not a string")
            return value
        if t == "tuple[str, ...]":
            if isinstance(value, str):
                return tuple(line for line in value.split("\n") if line.strip())
            return tuple(str(v) for v in value)
    except (TypeError, ValueError) as exc:
        problems.append(f"{name}: invalid value {value!r} ({exc})")
        return f.default
    return value


def load_config(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a Config from defaults < TOML file < environment < overrides, validating all of it."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError([f"cannot read config file {path}: {exc.strerror}"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config file {path}: {exc}"]) from exc
        # sections ([broker], [edge], ...) are for readability: their keys are merged flat
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        for key, value in flat.items():
            if key not in _FIELDS:
                problems.append(f"{path}: unknown key {key!r}")
                continue
            values[key] = _coerce(key, value, problems)
    env = os.environ if env is None else env
    for key in _FIELDS:
        envname = "GRIPCAST_" + key.upper()
        if envname in env:
            values[key] = _coerce(key, env[envname], problems)
    for key, value in (overrides or {}).items():
        if value is None and key not in _INT_OR_NONE:
            continue
        if key not in _FIELDS:
            problems.append(f"unknown setting {key!r}")
            continue
        values[key] = _coerce(key, value, problems)
    cfg = Config(**values)
    problems.extend(validate(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def validate(cfg: Config) -> list[str]:
    problems = []
    if cfg.port_offset < 0 or cfg.port_offset > 60000:
        problems.append(f"port_offset: {cfg.port_offset} out of range")
    for name in DEFAULT_PORTS:
        if not 0 <= cfg.port(name) <= 65535:
            problems.append(f"{name}: {cfg.port(name)} out of range (port_offset too large?)")
    if cfg.history_max_items < 1:
        problems.append("history_max_items: must be at least 1")
    if cfg.history_max_age_s <= 0:
        problems.append("history_max_age_s: must be positive")
    if cfg.publish_jwt_key:
        from broker.auth import load_verify_key

        try:
            load_verify_key(cfg.publish_jwt_key)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if cfg.store != "memory" and not cfg.store.startswith("redis://"):
        problems.append(f"store: {cfg.store!r} is not 'memory' or a redis://host:port/db URL")
    elif cfg.store.startswith("redis://"):
        try:
            from broker.redisclient import parse_redis_url

            parse_redis_url(cfg.store)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if cfg.edge_pub_sndhwm < 0:
        problems.append("edge_pub_sndhwm: must be 0 (no limit) or more")
    if cfg.edge_sub_rcvhwm < 0:
        problems.append("edge_sub_rcvhwm: must be 0 (no limit) or more")
    if cfg.broker_link_timeout_s <= 0:
        problems.append("broker_link_timeout_s: must be positive")
    if cfg.client_buffer_bytes < 1024:
        problems.append("client_buffer_bytes: must be at least 1024")
    if cfg.client_header_bytes < 1024:
        problems.append("client_header_bytes: must be at least 1024")
    if cfg.client_maxconn < 1:
        problems.append("client_maxconn: must be at least 1")
    if cfg.ws_max_message_bytes < 125:
        problems.append("ws_max_message_bytes: must be at least 125")
    if cfg.edges < 0:
        problems.append("edges: must be 0 (one per CPU) or more")
    problems.extend(_validate_ops(cfg))
    problems.extend(_validate_multihost(cfg))
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        problems.append(f"log_level: {cfg.log_level!r} is not debug, info, warning or error")
    if cfg.history_max_bytes < 0:
        problems.append("history_max_bytes: must be 0 (no byte budget) or more")
    return problems


def _validate_ops(cfg: Config) -> list[str]:
    """Lifecycle and observability keys."""
    problems = []
    if cfg.drain_timeout_s < 0:
        problems.append("drain_timeout_s: must be 0 or more")
    if cfg.origin_keepalive_idle_s < 0:
        problems.append("origin_keepalive_idle_s: must be 0 or more")
    for name in ("metrics_port", "edge_metrics_port"):
        if not 0 <= getattr(cfg, name) <= 65535:
            problems.append(f"{name}: {getattr(cfg, name)} out of range (0: off)")
    if cfg.stats_spec and not cfg.stats_spec.startswith(("tcp://", "ipc://")):
        problems.append(f"stats_spec: {cfg.stats_spec!r} is not a tcp:// or ipc:// endpoint")
    if cfg.stats_report_interval_s <= 0:
        problems.append("stats_report_interval_s: must be positive")
    if not 1 <= cfg.stats_connection_ttl_s <= 86400:
        problems.append("stats_connection_ttl_s: must be 1 to 86400 seconds")
    return problems


def _validate_multihost(cfg: Config) -> list[str]:
    """Hostile-input limits, heartbeats and CurveZMQ keys (broker.curve checks the keys)."""
    problems = []
    if cfg.client_body_bytes < 0:
        problems.append("client_body_bytes: must be 0 or more")
    if cfg.client_head_timeout_s <= 0:
        problems.append("client_head_timeout_s: must be positive")
    if cfg.zmq_heartbeat_s < 0:
        problems.append("zmq_heartbeat_s: must be 0 (off) or more")
    from broker.curve import validate_curve

    problems.extend(validate_curve(cfg))
    return problems


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Rebuild a Config handed to a child process (``Config.to_dict`` output)."""
    d = dict(d)
    d["routes"] = tuple(d.get("routes", ()))
    if "curve_allowed_clients" in d:
        d["curve_allowed_clients"] = tuple(d["curve_allowed_clients"])
    return Config(**d)
