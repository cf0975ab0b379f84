"""Configuration types and the wiring table of every gripcast socket.

Precedence: defaults < TOML file (``--config``) < ``GRIPCAST_<KEY>`` environment < CLI flags.
Every key below is in ``deploy/gripcast.toml`` with its default and a comment.

Wiring: ``WIRING`` at the end of this module is the one table of every socket (name, type,
bind or connect, owner, peer, port and address keys, options, Curve role), like Pushpin's
``internal.conf``; the broker and the edges build their sockets from it.  Default ports:
push_in 5560, http_api 5561, sub_in 5562, command 5563, edge_pub 5564, edge_ctl 5565,
client 7999; the ops listeners and the stats socket are off unless configured.

Each ``*_bind`` left empty means ``broker_bind``.  A non-loopback publish or HTTP bind is
refused at start unless Curve (``curve_publishers``) / ``publish_jwt_key`` protects it or
``allow_unauthenticated_publish = true`` says the network is trusted.

``port_offset`` is added to every default port above (client and broker), like Pushpin's.
Ports given explicitly (``--port``, ``client_port = ...``) are used as given.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from broker.errors import ConfigError
from broker.namespaces import Namespace, namespace_from_dict, parse_namespaces

log = logging.getLogger(__name__)

DEFAULT_PORTS = {
    "client_port": 7999,
    "push_in_port": 5560,
    "http_port": 5561,
    "sub_in_port": 5562,
    "command_port": 5563,
    "edge_pub_port": 5564,
    "edge_ctl_port": 5565,
}


def _reload(default: Any, role: str) -> Any:
    """A config field a running process applies on SIGHUP: ``role`` is ``"edge"``,
    ``"broker"`` or ``"both"`` (``reloadable_keys``); every other key needs a restart."""
    return dataclasses.field(default=default, metadata={"reload": role})


@dataclass(frozen=True, slots=True)
class Config:
    # client listener (edges)
    client_addr: str = "0.0.0.0"
    client_port: int | None = None  # None: 7999 + port_offset
    port_offset: int = 0
    # HTTPS listeners of the edges (docs/tls.md): "[addr:]port" each (addr: client_addr),
    # port_offset added; certificates from tls_cert + tls_key (one PEM pair) and/or
    # tls_certs_dir (<host>.crt/.key pairs picked by SNI, default.crt/.key for the rest),
    # read at start and on SIGHUP
    https_port: tuple[str, ...] = ()
    tls_cert: str = _reload("", "edge")
    tls_key: str = _reload("", "edge")
    tls_certs_dir: str = _reload("", "edge")
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
    routes: tuple[str, ...] = _reload((), "edge")
    routes_file: str = _reload("", "edge")
    # Grip-Sig toward origins
    sig_iss: str = _reload("pushpin", "edge")
    sig_key: str = _reload("changeme", "edge")
    # proxy: Pushpin's [proxy] request rules (reference 1.4, 1.9)
    x_forwarded_for: tuple[str, ...] = _reload((), "edge")  # "truncate:N" and/or "append"
    x_forwarded_for_trusted: tuple[str, ...] = _reload((), "edge")
    set_x_forwarded_protocol: str = _reload("proto-only", "edge")  # "true" | "false" | "proto-only"
    accept_x_forwarded_protocol: bool = _reload(False, "edge")
    orig_headers_need_mark: tuple[str, ...] = _reload((), "edge")
    accept_pushpin_route: bool = _reload(False, "edge")
    cdn_loop: str = _reload("", "edge")
    auto_cross_origin: bool = _reload(False, "edge")
    debug: bool = _reload(False, "edge")
    log_from: bool = _reload(False, "edge")
    log_user_agent: bool = _reload(False, "edge")
    access_log: bool = _reload(True, "edge")
    routes_file_watch: bool = True
    # chaining (docs/chaining.md): a request whose Grip-Sig verifies against this key (sig_key
    # syntax) comes from a trusted GRIP proxy in front: Grip-* headers kept, GRIP passed up
    upstream_key: str = _reload("", "edge")
    # TLS toward ssl targets (docs/tls.md): a PEM CA bundle to verify origins against instead of
    # the system CAs ("": the system's, which honours SSL_CERT_FILE / SSL_CERT_DIR)
    origin_ca_file: str = _reload("", "edge")
    # runner
    edges: int = 0  # 0: one per CPU
    # broker history (memory store)
    history_max_items: int = _reload(1000, "broker")
    history_max_age_s: float = _reload(3600.0, "broker")
    # history store: "memory", "redis://[:password@]host[:port][/db]" or, through Redis Sentinel,
    # "redis+sentinel://[:password@]host1[:port1],host2[:port2]/<master-name>[/db]"
    # or, on a Redis Cluster, "redis+cluster://[:password@]host1:port1,host2:port2" (docs/redis.md)
    # (see docs/reliability.md)
    store: str = "memory"
    # Redis stores: acknowledge a publish only once this many replicas confirmed it (Redis WAIT;
    # 0: once the master stored it), else refuse it (503); waiting at most redis_wait_timeout_ms
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 1000
    # broker XPUB send high-water mark per edge (messages; a batch of frames is one message of
    # up to edge_pub_batch_bytes, so this also bounds the queue's bytes); beyond it fan-out
    # drops and the edges repair the gap from history
    edge_pub_sndhwm: int = 10_000
    # the frames of one fan-out step (a publish of many items) go to the edges as one ZeroMQ
    # message of up to this many bytes (wire.BATCH_TOPIC); 0: one message per frame
    edge_pub_batch_bytes: int = 262_144
    # edge SUB receive high-water mark (messages)
    edge_sub_rcvhwm: int = 1_000_000
    # an edge that hears no broker heartbeat for this long calls the link lost, and
    # re-synchronises every channel when it is back
    broker_link_timeout_s: float = 3.0
    # edge limits
    client_buffer_bytes: int = _reload(1 << 20, "edge")
    client_header_bytes: int = _reload(8192, "edge")
    client_maxconn: int = _reload(50000, "edge")
    origin_timeout_s: float = _reload(30.0, "edge")
    # keep-alive connections to origins: an idle one is reused for this long (0: a new
    # connection per request, "Connection: close")
    origin_keepalive_idle_s: float = _reload(30.0, "edge")
    # largest WebSocket message (all fragments) a client or origin may send; beyond: close 1009
    ws_max_message_bytes: int = 1 << 20
    allow_compression: bool = _reload(False, "edge")  # WebSocket permessage-deflate
    # GRIP over HTTP (docs/grip-http.md): re-ask the origin ~1 s after a channel's first
    # subscription on an edge (Pushpin's default; skipped when history resolved the prev-ids)
    update_on_first_subscription: bool = True
    # next links (docs/grip-http.md): fetch links to hosts other than the route's origin (off:
    # refused; on, the edge fetches any URL an origin names: an open proxy for a bad origin)
    next_link_other_hosts: bool = _reload(False, "edge")
    # low-priority next-link fetches and long-poll retries (recover, prev-id gaps, idle links,
    # first subscriptions): at most this many batches of 100 sessions a second (Pushpin's 10)
    next_link_updates_per_s: float = 10.0
    # broker HTTP API auth: "" (off: Authorization ignored), an HS256 secret, "base64:<b64>",
    # or "file:<path>" to a PEM public key (RS256/ES256)
    publish_jwt_key: str = ""
    # hostile input (edge): body limit (413), request-head deadline (408, slowloris)
    client_body_bytes: int = 1 << 20
    client_head_timeout_s: float = 20.0
    # a request body must be complete this long after its head (408: slow bodies); a write to
    # a client that cannot complete this long closes the connection (unread responses)
    client_body_timeout_s: float = 60.0
    client_write_timeout_s: float = 30.0
    # multi-host (docs/multihost.md): ZeroMQ heartbeats drop a silent TCP peer after 3 intervals
    # (0: off); CurveZMQ keys are Z85 text (``gripcast keygen``) or a path to a file holding one
    zmq_heartbeat_s: float = 5.0
    # libzmq's I/O threads under SCHED_BATCH: woken by a send, they do not preempt the sending
    # main thread (broker.runtime.iosched; Linux)
    zmq_io_batch: bool = True
    # each edge pinned to a CPU (edge i on the i-th allowed CPU), its listeners' new
    # connections steered to it by SO_INCOMING_CPU (edge.cpupin); only where every CPU receives
    # its share of the packets (RSS/RPS), so off by default
    edge_cpu_affinity: bool = False
    curve_secret_key: str = ""  # broker's secret key: Curve on for the edge sockets
    curve_public_key: str = ""  # broker's public key (edges and tools use it as server key)
    curve_allowed_clients: tuple[str, ...] = ()  # allowed client public keys, files, or "*"
    curve_client_secret_key: str = ""  # an edge's own secret key (its public key is derived)
    curve_publishers: bool = False  # Curve on the publisher sockets (PULL, SUB, command) too
    # lifecycle and observability (deploy/README.md)
    drain_timeout_s: float = _reload(10.0, "both")  # SIGTERM: longest graceful drain before exiting
    metrics_addr: str = "127.0.0.1"  # /metrics, /health, /ready listeners
    metrics_port: int = 0  # broker's listener; 0: off
    edge_metrics_port: int = 0  # edge i listens on edge_metrics_port + i; 0: off
    stats_spec: str = ""  # Pushpin-style stats ZMQ PUB endpoint (broker binds); "": off
    stats_report_interval_s: float = _reload(
        10.0, "broker"
    )  # how often "report" stats packets go out
    stats_connection_ttl_s: int = 120  # "conn" packets' ttl (Pushpin's stats_connection_ttl)
    # stats socket framing: "tnetstring" ("<type> T<tnetstring>") or "json" ("<type> J<json>")
    stats_format: str = "tnetstring"
    stats_subscription_ttl_s: int = 60  # "sub" packets' ttl (Pushpin's stats_subscription_ttl)
    stats_connection_send: bool = True  # "conn" packets (Pushpin's stats_connection_send)
    # sequencer (Pushpin's message_wait, id_cache_ttl; reference 5.1): an item whose prev-id
    # does not follow waits this long for its predecessor; a repeated (channel, id) within
    # id_cache_ttl_s is dropped
    message_wait_s: float = _reload(5.0, "broker")
    id_cache_ttl_s: float = _reload(60.0, "broker")
    log_level: str = _reload("info", "both")
    # the cluster this process belongs to; ``gripcast run`` sets a fresh one per start so an
    # edge only ever joins its own runner's broker ("": no check, e.g. under systemd)
    cluster_id: str = ""
    # exposure by role (docs/multihost.md): "" means broker_bind.  publish_bind: the ZeroMQ
    # publish inputs (PULL, SUB, command); http_bind: the HTTP API; edge_bind: XPUB and the
    # edge ROUTER.  A non-loopback publish_bind/http_bind needs Curve on the publisher sockets
    # / publish_jwt_key, or allow_unauthenticated_publish = true (refused at start otherwise)
    publish_bind: str = ""
    http_bind: str = ""
    edge_bind: str = ""
    allow_unauthenticated_publish: bool = False
    http_maxconn: int = 1000  # broker HTTP API connections at once; beyond: 503 and close
    # publish JWT claims checked when set (exp is always required)
    publish_jwt_iss: str = ""
    publish_jwt_aud: str = ""
    # rate limits on what makes edges re-ask origins (token buckets; excess refused, counted)
    recover_per_s: float = 1.0  # recover requests, all inputs together (burst: 1 + rate)
    hint_per_channel_per_s: float = 10.0  # published hint actions, per channel
    hint_per_s: float = 100.0  # published hint actions, all channels together
    # payload bytes (content/body) kept per channel history, the newest message always; 0: none
    history_max_bytes: int = 16 << 20
    # the memory store's history of all channels together, estimated as payload + ~600 bytes a
    # message (docs/capacity.md, m_item); past it the oldest messages of the least recently
    # written channels go first (each channel keeps its newest); 0: no bound
    history_max_total_bytes: int = 1 << 30
    # channel API (docs/channel-api.md): an edge whose subscriber counts are older than this
    # (it stopped reporting: dead or cut off) no longer counts; edges report every second
    channel_counts_max_age_s: float = 10.0
    # channel namespaces (docs/channel-api.md, "Namespaces"): the ``[[namespace]]`` tables
    # (history bounds, presence, ZeroMQ publish per channel prefix; longest prefix wins)
    namespaces: tuple[Namespace, ...] = ()
    # several brokers (docs/cluster.md): each "host" or "host:port", port = that broker's
    # edge_pub port (its edge_ctl port is port + 1); [] = the one broker at broker_host
    brokers: tuple[str, ...] = ()
    # how long an edge waits for a missing seq to arrive from another broker before it asks
    # for a replay (only with several brokers; one broker's PUB/SUB keeps order)
    reorder_window_s: float = 0.05
    # an edge resuming a client whose history request fails *for now* (the store failing over,
    # no broker answering) asks again with backoff for this long, holding the client's live
    # messages, then cuts the client off (it resumes with its cursor); never live with a gap
    resume_retry_for_s: float = _reload(15.0, "edge")

    # -- derived ---------------------------------------------------------------------------

    def port(self, name: str) -> int:
        """The effective port for ``name`` (a key of DEFAULT_PORTS), offset applied to defaults."""
        value = getattr(self, name)
        if value is None:
            return DEFAULT_PORTS[name] + self.port_offset
        return int(value)

    def https_listens(self) -> list[tuple[str, int]]:
        """``(addr, port)`` of every HTTPS listener (``https_port``, port_offset applied)."""
        return [
            (addr or self.client_addr, port + self.port_offset)
            for addr, port in (split_listen(v) for v in self.https_port)
        ]

    def bind_addr(self, role: str) -> str:
        """Where the broker binds ``role``: ``publish`` (PULL, SUB, command), ``http`` (the
        HTTP API) or ``edge`` (XPUB, edge ROUTER); the role's key, else ``broker_bind``."""
        return getattr(self, role + "_bind") or self.broker_bind

    def endpoint(self, name: str, *, bind: bool) -> str:
        """A ZeroMQ endpoint for ``push_in``, ``sub_in``, ``command``, ``edge_pub``, ``edge_ctl``."""
        role = "edge" if name in ("edge_pub", "edge_ctl") else "publish"
        host = self.bind_addr(role) if bind else self.broker_host
        if bind and host in ("0.0.0.0", ""):
            host = "*"
        return f"tcp://{host}:{self.port(name + '_port')}"

    def broker_endpoints(self) -> list[tuple[str, str]]:
        """``(edge_pub, edge_ctl)`` ZeroMQ endpoints of every broker an edge connects to
        (``brokers``; [] = the one broker at ``broker_host``)."""
        if not self.brokers:
            return [(self.endpoint("edge_pub", bind=False), self.endpoint("edge_ctl", bind=False))]
        out = []
        for entry in self.brokers:
            host, port = split_broker(entry)
            pub = port if port is not None else self.port("edge_pub_port")
            ctl = port + 1 if port is not None else self.port("edge_ctl_port")
            out.append((f"tcp://{host}:{pub}", f"tcp://{host}:{ctl}"))
        return out

    @property
    def edge_count(self) -> int:
        return self.edges if self.edges > 0 else (os.cpu_count() or 1)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["routes"] = list(self.routes)
        return d


_FIELDS = {f.name: f for f in fields(Config)}


def reloadable_keys(role: str) -> frozenset[str]:
    """The keys process ``role`` (``"edge"`` or ``"broker"``) applies on SIGHUP."""
    return frozenset(f.name for f in fields(Config) if f.metadata.get("reload") in (role, "both"))


_INT_OR_NONE = {name for name in DEFAULT_PORTS}
_COMMA_LISTS = frozenset(
    ["brokers", "x_forwarded_for", "x_forwarded_for_trusted", "orig_headers_need_mark"]
)
_LISTEN_LISTS = {"https_port"}  # "[addr:]port" items: an int, "a,b" (Pushpin) or a list


def split_listen(value: str) -> tuple[str, int]:
    """``"[addr:]port"`` -> ``(addr or "", port)``; ``ValueError`` when it is not."""
    addr, _, port = value.strip().rpartition(":")
    n = int(port)
    if not 0 < n <= 65535:
        raise ValueError(f"port {n} out of range")
    return addr.strip("[]"), n


def split_broker(entry: str) -> tuple[str, int | None]:
    """A ``brokers`` entry -> ``(host, edge_pub port or None)``: ``"host"``, ``"host:port"``,
    ``"[v6]"`` or ``"[v6]:port"`` (IPv6 hosts keep their brackets, as ZeroMQ wants them);
    ``ValueError`` when it is not one of those."""
    text = entry.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 2:
            raise ValueError("an IPv6 host is written [addr] or [addr]:port")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("an IPv6 host is written [addr] or [addr]:port")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
        if ":" in port_text_:
            raise ValueError("an IPv6 host is written [addr] or [addr]:port")
    if not host or any(c.isspace() or c in "/@" for c in host):
        raise ValueError("not a host name or address")
    if port_text is None:
        return host, None
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65534:  # edge_ctl is port + 1
        raise ValueError(f"port {port} out of range (1-65534: edge_ctl is port + 1)")
    return host, port


def _validate_brokers(cfg: Config) -> list[str]:
    """``brokers`` and ``reorder_window_s``."""
    problems = []
    seen: set[tuple[str, int | None]] = set()
    for entry in cfg.brokers:
        try:
            key = split_broker(entry)
        except ValueError as exc:
            problems.append(f'brokers: {entry!r} is not "host" or "host:port" ({exc})')
            continue
        if key in seen:
            problems.append(f"brokers: {entry!r} is listed twice")
        seen.add(key)
    if not 0 <= cfg.reorder_window_s <= 10:
        problems.append("reorder_window_s: must be 0 to 10 seconds")
    if not 0.1 <= cfg.resume_retry_for_s <= 600:
        problems.append("resume_retry_for_s: must be 0.1 to 600 seconds")
    return problems


def several_brokers_problems(cfg: Config) -> list[str]:
    """Why a broker (or ``gripcast run``) must not start as one of several brokers with this
    config: several brokers share their channels' state in Redis, never in memory."""
    if len(cfg.brokers) > 1 and cfg.store == "memory":
        return [
            f'brokers: {len(cfg.brokers)} brokers are listed but store = "memory": several '
            'brokers need a shared Redis store (store = "redis://..." or '
            '"redis+sentinel://..."); the memory store keeps each channel in one broker'
        ]
    return []


def _listen_list(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError("not [addr:]port")
        parts = [item] if isinstance(item, int) else [p for p in item.split(",") if p.strip()]
        for part in parts:
            text = str(part).strip()
            split_listen(text)
            out.append(text)
    return tuple(out)


def _coerce(name: str, value: Any, problems: list[str]) -> Any:
    f = _FIELDS[name]
    t = f.type
    try:
        if name == "namespaces":
            return parse_namespaces(value, problems)
        if name in _LISTEN_LISTS:
            return _listen_list(value)
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
            if isinstance(value, str) and value.lower() in (
                "1",
                "true",
                "yes",
                "on",
                "0",
                "false",
                "no",
                "off",
            ):
                return value.lower() in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                raise ValueError("not a boolean")
            return value
        if t == "str":
            if name == "set_x_forwarded_protocol" and isinstance(value, bool):
                return "true" if value else "false"  # Pushpin's INI value, read as TOML
            if not isinstance(value, str):
                raise ValueError("not a string")
            return value
        if t == "tuple[str, ...]":
            if isinstance(value, str) and name in _COMMA_LISTS:  # Pushpin's comma lists
                return tuple(v.strip() for v in value.split(",") if v.strip())
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
    *,
    file_values: Mapping[str, Any] | None = None,
    file_label: str = "",
) -> Config:
    """Build a Config from defaults < TOML file < environment < overrides, validating all of it.

    ``file_values`` (named ``file_label`` in errors) take the TOML file's place: the settings
    ``gripcast.pushpinconf`` read from a Pushpin config."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in (file_values or {}).items():
        if key not in _FIELDS:
            problems.append(f"{file_label}: {key!r} is not a setting of this gripcast")
            continue
        values[key] = _coerce(key, value, problems)
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
        if "namespace" in flat:  # [[namespace]] tables: the key "namespaces"
            flat["namespaces"] = flat.pop("namespace")
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
    for warning in config_warnings(cfg):
        log.warning("%s", warning)
    return cfg


def validate(cfg: Config) -> list[str]:
    problems = []
    if cfg.port_offset < 0 or cfg.port_offset > 60000:
        problems.append(f"port_offset: {cfg.port_offset} out of range")
    for name in DEFAULT_PORTS:
        if not 0 <= cfg.port(name) <= 65535:
            problems.append(f"{name}: {cfg.port(name)} out of range (port_offset too large?)")
    problems.extend(_validate_tls(cfg))
    if cfg.history_max_items < 1:
        problems.append("history_max_items: must be at least 1")
    if cfg.history_max_age_s <= 0:
        problems.append("history_max_age_s: must be positive")
    if cfg.publish_jwt_key:
        from broker.ingest.auth import load_verify_key

        try:
            load_verify_key(cfg.publish_jwt_key)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if cfg.store != "memory" and not cfg.store.startswith(
        ("redis://", "redis+sentinel://", "redis+cluster://")
    ):
        problems.append(
            f"store: {cfg.store!r} is not 'memory', a redis://host:port/db URL, a "
            "redis+sentinel://host:port,host:port/<master-name>/db URL or a "
            "redis+cluster://host:port,host:port URL"
        )
    elif cfg.store != "memory":
        try:
            from broker.store import parse_store_url

            parse_store_url(cfg.store)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if cfg.redis_wait_replicas < 0:
        problems.append("redis_wait_replicas: must be 0 (no WAIT) or more")
    if not 1 <= cfg.redis_wait_timeout_ms <= 60_000:
        problems.append("redis_wait_timeout_ms: must be between 1 and 60000")
    if cfg.redis_wait_replicas and cfg.store == "memory":
        problems.append("redis_wait_replicas: needs a Redis store (store = redis://...)")
    if cfg.edge_pub_sndhwm < 0:
        problems.append("edge_pub_sndhwm: must be 0 (no limit) or more")
    if cfg.edge_pub_batch_bytes != 0 and not 1024 <= cfg.edge_pub_batch_bytes <= 64 << 20:
        problems.append("edge_pub_batch_bytes: must be 0 (no batches) or 1024 to 67108864")
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
    problems.extend(_validate_exposure(cfg))
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        problems.append(f"log_level: {cfg.log_level!r} is not debug, info, warning or error")
    if cfg.history_max_bytes < 0:
        problems.append("history_max_bytes: must be 0 (no byte budget) or more")
    if cfg.history_max_total_bytes != 0 and cfg.history_max_total_bytes < 1 << 20:
        problems.append("history_max_total_bytes: must be 0 (no bound) or at least 1 MiB")
    if not 6 <= cfg.channel_counts_max_age_s <= 3600:  # edges resend all counts after 5 s
        problems.append("channel_counts_max_age_s: must be 6 to 3600 seconds")
    problems.extend(_validate_proxy_rules(cfg))
    problems.extend(_validate_brokers(cfg))
    return problems


def _validate_proxy_rules(cfg: Config) -> list[str]:
    """Pushpin's [proxy] request rules (reference 1.4)."""
    problems = []
    for key in ("x_forwarded_for", "x_forwarded_for_trusted"):
        for item in getattr(cfg, key):
            n = item[len("truncate:") :] if item.startswith("truncate:") else None
            if item != "append" and not (n is not None and n.isdigit()):
                problems.append(f"{key}: {item!r} is not 'truncate:N' (N >= 0) or 'append'")
    if cfg.set_x_forwarded_protocol not in ("true", "false", "proto-only"):
        problems.append(
            f"set_x_forwarded_protocol: {cfg.set_x_forwarded_protocol!r} is not true, false "
            "or proto-only"
        )
    import re

    for name in cfg.orig_headers_need_mark:
        if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
            problems.append(f"orig_headers_need_mark: {name!r} is not a header name")
    if any(c in cfg.cdn_loop for c in "\r\n\0"):
        problems.append("cdn_loop: must not hold CR, LF or NUL")
    return problems


def _validate_ops(cfg: Config) -> list[str]:
    """Lifecycle and observability keys."""
    problems = []
    if cfg.drain_timeout_s < 0:
        problems.append("drain_timeout_s: must be 0 or more")
    if cfg.origin_keepalive_idle_s < 0:
        problems.append("origin_keepalive_idle_s: must be 0 or more")
    if cfg.origin_ca_file and not os.path.isfile(cfg.origin_ca_file):
        problems.append(f"origin_ca_file: {cfg.origin_ca_file} is not a readable file")
    if cfg.upstream_key:
        from broker.keys import load_jwt_key

        try:
            base = os.path.dirname(cfg.routes_file) if cfg.routes_file else "."  # as the edge
            load_jwt_key(cfg.upstream_key, base, setting="upstream_key", private=False)
        except ConfigError as exc:
            problems.extend(exc.problems)
    for name in ("metrics_port", "edge_metrics_port"):
        if not 0 <= getattr(cfg, name) <= 65535:
            problems.append(f"{name}: {getattr(cfg, name)} out of range (0: off)")
    if cfg.stats_spec and not cfg.stats_spec.startswith(("tcp://", "ipc://")):
        problems.append(f"stats_spec: {cfg.stats_spec!r} is not a tcp:// or ipc:// endpoint")
    if cfg.stats_report_interval_s <= 0:
        problems.append("stats_report_interval_s: must be positive")
    if not 1 <= cfg.stats_connection_ttl_s <= 86400:
        problems.append("stats_connection_ttl_s: must be 1 to 86400 seconds")
    if cfg.stats_format not in ("tnetstring", "json"):
        problems.append(f"stats_format: {cfg.stats_format!r} is not 'tnetstring' or 'json'")
    if not 1 <= cfg.stats_subscription_ttl_s <= 86400:
        problems.append("stats_subscription_ttl_s: must be 1 to 86400 seconds")
    if not 0 <= cfg.message_wait_s <= 3600:
        problems.append("message_wait_s: must be 0 to 3600 seconds")
    if not 0 <= cfg.id_cache_ttl_s <= 86400:
        problems.append("id_cache_ttl_s: must be 0 (no de-duplication) to 86400 seconds")
    return problems


def _validate_multihost(cfg: Config) -> list[str]:
    """Hostile-input limits, heartbeats and CurveZMQ keys (broker.curve checks the keys)."""
    problems = []
    if cfg.client_body_bytes < 0:
        problems.append("client_body_bytes: must be 0 or more")
    if cfg.client_head_timeout_s <= 0:
        problems.append("client_head_timeout_s: must be positive")
    for key in ("client_body_timeout_s", "client_write_timeout_s"):
        if getattr(cfg, key) <= 0:
            problems.append(f"{key}: must be positive")
    if cfg.zmq_heartbeat_s < 0:
        problems.append("zmq_heartbeat_s: must be 0 (off) or more")
    from broker.curve import validate_curve

    problems.extend(validate_curve(cfg))
    return problems


def is_loopback(host: str) -> bool:
    """True for an address only this host can reach ("" and wildcards are not)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _bind_key(cfg: Config, role: str) -> str:
    key = role + "_bind"
    return key if getattr(cfg, key) else f"broker_bind (the default of {key})"


def _validate_exposure(cfg: Config) -> list[str]:
    """Bind addresses, the publish-input auth rule, JWT claims and the rate limits."""
    problems = []
    for role in ("publish", "http", "edge"):
        addr = getattr(cfg, role + "_bind")
        if addr and any(c in addr for c in "/ \t"):
            problems.append(f"{role}_bind: {addr!r} is not a host address")
    if not cfg.allow_unauthenticated_publish:
        addr = cfg.bind_addr("publish")
        if not is_loopback(addr) and not (cfg.curve_secret_key and cfg.curve_publishers):
            problems.append(
                f"{_bind_key(cfg, 'publish')}: {addr!r} is not loopback and the ZeroMQ publish "
                "inputs (PULL, SUB, command) have no Curve: set curve_secret_key and "
                "curve_publishers = true, bind publish_bind to 127.0.0.1, or set "
                "allow_unauthenticated_publish = true"
            )
        addr = cfg.bind_addr("http")
        if not is_loopback(addr) and not cfg.publish_jwt_key:
            problems.append(
                f"{_bind_key(cfg, 'http')}: {addr!r} is not loopback and the HTTP publish API "
                "has no auth: set publish_jwt_key, bind http_bind to 127.0.0.1, or set "
                "allow_unauthenticated_publish = true"
            )
    if cfg.http_maxconn < 1:
        problems.append("http_maxconn: must be at least 1")
    for name in (
        "recover_per_s",
        "hint_per_channel_per_s",
        "hint_per_s",
        "next_link_updates_per_s",
    ):
        if not getattr(cfg, name) > 0:
            problems.append(f"{name}: must be positive")
    if cfg.publish_jwt_key and cfg.sig_key:
        from broker.keys import load_jwt_key

        try:
            pub = load_jwt_key(cfg.publish_jwt_key, setting="publish_jwt_key", private=False)
            base = os.path.dirname(cfg.routes_file) if cfg.routes_file else "."  # as the edge
            sig = load_jwt_key(cfg.sig_key, base, setting="sig_key", private=True)
        except ConfigError:
            pass  # reported by the checks of each key
        else:
            if (
                pub is not None
                and sig is not None
                and pub.algorithm == "HS256"
                and pub.key == sig.key
            ):
                problems.append(
                    "publish_jwt_key: equals sig_key, so a Grip-Sig token sent to "
                    "origins would be accepted as a publish token: use another key"
                )
    return problems


def _validate_tls(cfg: Config) -> list[str]:
    """HTTPS ports in range, and certificates named for them (the files are checked by
    ``edge.tls.load_certificates`` when an edge starts, and by ``gripcast run`` first)."""
    problems = []
    for addr, port in cfg.https_listens():
        if port > 65535:
            problems.append(f"https_port: {port} out of range (port_offset too large?)")
        if port == cfg.port("client_port") and addr == cfg.client_addr:
            problems.append(f"https_port: {port} is also the client_port")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        problems.append("tls_cert and tls_key: set both (a PEM certificate chain and its key)")
    if cfg.https_port and not (cfg.tls_cert or cfg.tls_certs_dir):
        problems.append("https_port: set tls_cert and tls_key, or tls_certs_dir")
    return problems


def config_warnings(cfg: Config) -> list[str]:
    """Settings that work but are unsafe: logged as WARNING when the config is loaded."""
    warnings = []
    if cfg.sig_key == "changeme" and not is_loopback(cfg.client_addr):
        warnings.append(
            f"sig_key: the default 'changeme' with client_addr {cfg.client_addr!r} (not "
            "loopback): anyone can forge Grip-Sig toward origins; set a secret sig_key"
        )
    return warnings


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Rebuild a Config handed to a child process (``Config.to_dict`` output)."""
    d = dict(d)
    d["routes"] = tuple(d.get("routes", ()))
    for key in ("curve_allowed_clients", "https_port", *_COMMA_LISTS):
        if key in d:
            d[key] = tuple(d[key])
    if "namespaces" in d:
        d["namespaces"] = tuple(namespace_from_dict(n) for n in d["namespaces"])
    return Config(**d)


# -- the wiring table ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One socket of the cluster (a row of ``WIRING``).

    ``kind`` is a zmq socket type name (``"PULL"``) or ``"HTTP"``/``"TCP"`` for listeners;
    ``bind``: the owning process binds (else connects); ``port_key``: the config key of its
    port (or of its whole endpoint, ``stats_spec``); ``bind_key``: the config key of its
    address; ``options``: zmq options by name, a ``str`` value naming the config key that
    holds it; ``heartbeats``: ZMTP heartbeats (``zmq_heartbeat_s``); ``curve``: ``"server"``
    (Curve with ``curve_secret_key``), ``"server-publishers"`` (also needs
    ``curve_publishers``), ``"client"`` (with ``curve_public_key``) or ``""``."""

    name: str
    kind: str
    bind: bool
    owner: str  # "broker", "edge"
    peer: str
    port_key: str
    bind_key: str = ""
    options: tuple[tuple[str, int | str], ...] = ()
    heartbeats: bool = False
    curve: str = ""
    address: str = ""  # a fixed address (inproc)

    def options_for(self, cfg: Config) -> dict[str, Any]:
        return {k: (getattr(cfg, v) if isinstance(v, str) else v) for k, v in self.options}


PUBLISH_IN_HWM = 101_000  # Pushpin's DEFAULT_HWM for its publish inputs
ZMQ_MAX_MSG_BYTES = 16 << 20  # largest ZeroMQ frame any peer may send the broker (drops it)

WIRING: tuple[Endpoint, ...] = (
    Endpoint(
        "push_in",
        "PULL",
        True,
        "broker",
        "publishers' PUSH",
        "push_in_port",
        "publish_bind",
        (("RCVHWM", PUBLISH_IN_HWM), ("MAXMSGSIZE", ZMQ_MAX_MSG_BYTES)),
        heartbeats=True,
        curve="server-publishers",
    ),
    Endpoint(
        "http_api", "HTTP", True, "broker", "publishers (POST /publish)", "http_port", "http_bind"
    ),
    Endpoint(
        "sub_in",
        "SUB",
        True,
        "broker",
        "publishers' PUB/XPUB",
        "sub_in_port",
        "publish_bind",
        (("RCVHWM", PUBLISH_IN_HWM), ("SNDHWM", 0), ("MAXMSGSIZE", ZMQ_MAX_MSG_BYTES)),
        heartbeats=True,
        curve="server-publishers",
    ),
    Endpoint(
        "command",
        "ROUTER",
        True,
        "broker",
        "publishers' REQ/DEALER",
        "command_port",
        "publish_bind",
        (("MAXMSGSIZE", ZMQ_MAX_MSG_BYTES),),
        heartbeats=True,
        curve="server-publishers",
    ),
    # subscriptions are messages: RCVHWM=0 here and SNDHWM=0 on the edges' SUB, or they are
    # lost in a burst; a full SNDHWM drops fan-out (edges repair the gap from history)
    Endpoint(
        "edge_pub",
        "XPUB",
        True,
        "broker",
        "edges' SUB (one per edge)",
        "edge_pub_port",
        "edge_bind",
        (
            ("XPUB_VERBOSE", 1),
            ("RCVHWM", 0),
            ("SNDHWM", "edge_pub_sndhwm"),
            ("MAXMSGSIZE", ZMQ_MAX_MSG_BYTES),
        ),
        heartbeats=True,
        curve="server",
    ),
    Endpoint(
        "edge_ctl",
        "ROUTER",
        True,
        "broker",
        "edges' DEALER (one per edge)",
        "edge_ctl_port",
        "edge_bind",
        (("MAXMSGSIZE", ZMQ_MAX_MSG_BYTES),),
        heartbeats=True,
        curve="server",
    ),
    # an XPUB (its consumers see a PUB): its subscription notices say whether anyone listens
    # (broker.ops.stats.StatsListeners); RCVHWM=0: no notice lost
    Endpoint(
        "stats",
        "XPUB",
        True,
        "broker",
        "stats consumers (Pushpin's stats socket)",
        "stats_spec",
        options=(("RCVHWM", 0),),
    ),
    Endpoint(
        "zap",
        "ROUTER",
        True,
        "broker",
        "libzmq's ZAP requests (Curve handshakes)",
        "",
        address="inproc://zeromq.zap.01",
    ),
    Endpoint(
        "broker_ops",
        "HTTP",
        True,
        "broker",
        "/metrics /health /ready",
        "metrics_port",
        "metrics_addr",
    ),
    Endpoint(
        "link_sub",
        "SUB",
        False,
        "edge",
        "broker's edge_pub",
        "edge_pub_port",
        "broker_host",
        (("SNDHWM", 0), ("RCVHWM", "edge_sub_rcvhwm")),
        heartbeats=True,
        curve="client",
    ),
    Endpoint(
        "link_ctl",
        "DEALER",
        False,
        "edge",
        "broker's edge_ctl",
        "edge_ctl_port",
        "broker_host",
        heartbeats=True,
        curve="client",
    ),
    Endpoint(
        "client",
        "TCP",
        True,
        "edge",
        "clients (SO_REUSEPORT, all edges)",
        "client_port",
        "client_addr",
    ),
    Endpoint(
        "edge_ops",
        "HTTP",
        True,
        "edge",
        "/metrics /health /ready (edge i: port + i)",
        "edge_metrics_port",
        "metrics_addr",
    ),
)
ENDPOINTS: dict[str, Endpoint] = {ep.name: ep for ep in WIRING}
