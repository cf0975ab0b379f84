"""What each Pushpin ``pushpin.conf`` key means for gripcast (sans-IO; the file is read by
``gripcast.pushpinini``).

``translate(conf)`` looks every key up in ``RULES``, the one table of what gripcast does with
each key Pushpin 1.36 to 1.41 knows:

* ``map``: the key becomes gripcast settings (``Translation.settings``: Config key -> value);
* ``fixed``: gripcast behaves as Pushpin does with the listed values (Pushpin's defaults); any
  other value is refused, because gripcast cannot honour it;
* ``warn``: the key has no effect in gripcast and ignoring it changes nothing a client,
  origin or publisher sees (paths of Pushpin's helper programs, its log directory, ...): a
  warning names it;
* ``internal``: Pushpin's internal ZeroMQ wiring (``internal.conf``): gripcast wires its
  processes itself; one note lists them;
* ``loader``: read by ``pushpinini.load`` itself (``include``, ``libdir``, ``rundir``,
  ``ipc_prefix``).

A key in no row is refused, as is a key that would change behaviour if ignored, with the file,
line, section and key (``ConfigError`` lists every problem at once).  A setting whose value is
gripcast's default is dropped from ``settings``, so a stock ``pushpin.conf`` gives a stock
Config.  Keys pushpin.conf leaves out take Pushpin's code default where it differs from
gripcast's (``ABSENT``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from broker.errors import ConfigError
from gripcast.pushpinini import DEFAULT_LIBDIR, Entry, PushpinConf, load, parse_ini

__all__ = [
    "ABSENT",
    "DEFAULT_LIBDIR",
    "MAPPED_DEFAULTS",
    "RULES",
    "Entry",
    "Notice",
    "PushpinConf",
    "Rule",
    "Translation",
    "internal_note",
    "load",
    "parse_ini",
    "translate",
]


# -- translation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notice:
    """A warning about one entry (gripcast ignores it, harmlessly, or maps it with a caveat)."""

    entry: Entry
    text: str

    def __str__(self) -> str:
        return f"{self.entry.where}: {self.text}"


@dataclass(slots=True)
class Translation:
    """What a pushpin.conf means for gripcast."""

    conf: PushpinConf
    settings: dict[str, Any] = field(default_factory=dict)  # Config key -> value
    sources: dict[str, Entry] = field(default_factory=dict)  # Config key -> where it came from
    warnings: list[Notice] = field(default_factory=list)
    internal: list[Entry] = field(default_factory=list)  # Pushpin's wiring keys, skipped
    problems: list[str] = field(default_factory=list)

    def set(self, e: Entry, key: str, value: Any) -> None:
        self.settings[key] = value
        self.sources[key] = e

    def warn(self, e: Entry, text: str) -> None:
        self.warnings.append(Notice(e, text))

    def refuse(self, e: Entry, text: str) -> None:
        self.problems.append(f"{e.where}: {text}")


Handler = Callable[[Translation, Entry], None]


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str  # "map" | "fixed" | "warn" | "internal" | "loader"
    handle: Handler | None = None  # map
    allowed: tuple[str, ...] = ()  # fixed: the values gripcast honours (Pushpin's defaults)
    why: str = ""  # fixed: why another value is refused; warn: why it is harmless


# value helpers --------------------------------------------------------------------------------


def _int(t: Translation, e: Entry, lo: int = 0, hi: int = 1 << 31) -> int | None:
    s = t.conf.text(e)
    try:
        v = int(s)
    except ValueError:
        t.refuse(e, f"{s!r} is not an integer")
        return None
    if not lo <= v <= hi:
        t.refuse(e, f"{v} is out of range ({lo} to {hi})")
        return None
    return v


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def _bool(t: Translation, e: Entry) -> bool | None:
    s = t.conf.text(e).lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    t.refuse(e, f"{s!r} is not true or false")
    return None


def _to_int(key: str, lo: int = 0, hi: int = 1 << 31) -> Handler:
    def handle(t: Translation, e: Entry) -> None:
        v = _int(t, e, lo, hi)
        if v is not None:
            t.set(e, key, v)

    return handle


def _to_bool(key: str) -> Handler:
    def handle(t: Translation, e: Entry) -> None:
        v = _bool(t, e)
        if v is not None:
            t.set(e, key, v)

    return handle


def _to_str(key: str) -> Handler:
    def handle(t: Translation, e: Entry) -> None:
        t.set(e, key, t.conf.text(e))

    return handle


def _to_list(key: str) -> Handler:
    def handle(t: Translation, e: Entry) -> None:
        t.set(e, key, t.conf.items(e))

    return handle


def _ms_to_s(key: str) -> Handler:
    def handle(t: Translation, e: Entry) -> None:
        v = _int(t, e)
        if v is not None:
            t.set(e, key, v / 1000)

    return handle


def _seconds(key: str, lo: int = 0) -> Handler:
    def handle(t: Translation, e: Entry) -> None:
        v = _int(t, e, lo)
        if v is not None:
            t.set(e, key, float(v))

    return handle


def split_addr_port(text: str) -> tuple[str, int] | None:
    """Pushpin's ``[addr:]port`` (``[v6]:port`` too); None when it is not one."""
    addr, sep, port = text.rpartition(":")
    if not sep:
        addr, port = "", text
    try:
        p = int(port)
    except ValueError:
        return None
    if not 0 < p <= 65535:
        return None
    return addr.strip("[]"), p


def parse_tcp_spec(spec: str) -> tuple[str, int] | None:
    """``tcp://host:port`` -> (host, port), ``*`` as ``0.0.0.0``; None for anything else."""
    if not spec.startswith("tcp://"):
        return None
    hp = split_addr_port(spec[len("tcp://") :])
    if hp is None or not hp[0]:
        return None
    host, port = hp
    return ("0.0.0.0" if host == "*" else host), port


# handlers ------------------------------------------------------------------------------------


def _http_port(t: Translation, e: Entry) -> None:
    values = t.conf.items(e)
    if not values:
        t.refuse(e, "no client port given (Pushpin refuses this too)")
        return
    if len(values) > 1:
        t.refuse(
            e,
            f"{len(values)} listeners ({', '.join(values)}): gripcast's edges listen on one "
            "[addr:]port; keep one (or put a load balancer in front)",
        )
        return
    hp = split_addr_port(values[0])
    if hp is None:
        t.refuse(e, f"{values[0]!r} is not [addr:]port")
        return
    addr, port = hp
    if addr:
        t.set(e, "client_addr", addr)
    t.set(e, "client_port", port)


def _https_ports(t: Translation, e: Entry) -> None:
    """Pushpin's HTTPS listeners, with its certificates directory (``<config dir>/runner/certs``:
    ``<host>.crt``/``.key`` by SNI, ``default_<port>`` / ``default`` for the rest)."""
    values = t.conf.items(e)
    if not values:
        return
    for v in values:
        if split_addr_port(v) is None:
            t.refuse(e, f"{v!r} is not [addr:]port")
            return
    t.set(e, "https_port", tuple(values))
    t.set(e, "tls_certs_dir", posixpath.normpath(posixpath.join(t.conf.directory, "runner/certs")))


def _no_listeners(kind: str) -> Handler:
    def handle(t: Translation, e: Entry) -> None:
        if t.conf.items(e):
            t.refuse(
                e,
                f"gripcast's edges have no {kind} listener: remove it (or terminate it in front of gripcast)",
            )

    return handle


_PUSHPIN_LEVELS = {0: "error", 1: "warning", 2: "info"}


def _log_level(t: Translation, e: Entry) -> None:
    level: str | None = None
    for part in t.conf.items(e):
        name, sep, num = part.rpartition(":")
        try:
            n = int(num)
        except ValueError:
            t.refuse(e, f"{part!r}: a log level is a number (0 error .. 3 debug)")
            return
        if sep:
            t.warn(e, f"per-service level {part!r} has no gripcast process to apply to: ignored")
            continue
        level = _PUSHPIN_LEVELS.get(n, "debug")
    if level is not None:
        t.set(e, "log_level", level)


def _client_maxconn(t: Translation, e: Entry) -> None:
    v = _int(t, e, 1)
    if v is None:
        return
    t.set(e, "client_maxconn", v)
    if v != 50000:
        t.warn(
            e, "gripcast's client_maxconn applies to each edge process (Pushpin's, to the whole)"
        )


def _routesfile(t: Translation, e: Entry) -> None:
    path = t.conf.text(e)
    if path:
        t.set(e, "routes_file", posixpath.normpath(posixpath.join(t.conf.directory, path)))


def _sig_key(t: Translation, e: Entry) -> None:
    key = t.conf.text(e)
    if key.startswith("file:") and not key[5:].startswith("/"):
        key = "file:" + posixpath.normpath(posixpath.join(t.conf.directory, key[5:]))
    t.set(e, "sig_key", key)


def _upstream_key(t: Translation, e: Entry) -> None:
    key = t.conf.text(e)
    if key.startswith("file:") and not key[5:].startswith("/"):
        key = "file:" + posixpath.normpath(posixpath.join(t.conf.directory, key[5:]))
    if key:
        t.set(e, "upstream_key", key)


def _x_forwarded_protocol(t: Translation, e: Entry) -> None:
    v = t.conf.text(e)
    if v not in ("true", "false", "proto-only", ""):
        t.refuse(e, f"{v!r} is not true, false or proto-only")
        return
    t.set(e, "set_x_forwarded_protocol", v or "false")


_PUBLISH_KEYS = {"push_in_spec": "push_in_port", "command_spec": "command_port"}


def _publish_spec(port_key: str) -> Handler:
    def handle(t: Translation, e: Entry) -> None:
        spec = t.conf.text(e)
        hp = parse_tcp_spec(spec)
        if hp is None:
            t.refuse(e, f"{spec!r}: gripcast binds its publish inputs on tcp://host:port only")
            return
        host, port = hp
        t.set(e, port_key, port)
        _publish_host(t, e, host)

    return handle


def _publish_host(t: Translation, e: Entry, host: str) -> None:
    prev = t.settings.get("publish_bind", "127.0.0.1")
    if "publish_bind" in t.settings and prev != host:
        other = t.sources["publish_bind"]
        t.refuse(
            e,
            f"host {host!r} differs from {prev!r} ({other.name}, line {other.line}): gripcast "
            "binds the ZeroMQ publish inputs (PULL, SUB, command) on one address",
        )
        return
    t.set(e, "publish_bind", host)


def _push_in_sub_specs(t: Translation, e: Entry) -> None:
    raw = e.value if isinstance(e.value, tuple) else (e.value,)
    specs = [v.strip() for v in raw if v.strip()]  # resolved once, by _publish_spec
    if not specs:
        return
    if len(specs) > 1:
        t.refuse(e, f"{len(specs)} SUB specs: gripcast binds one SUB publish input")
        return
    _publish_spec("sub_in_port")(t, Entry(e.file, e.line, e.section, e.key, specs[0]))


def _push_in_http_addr(t: Translation, e: Entry) -> None:
    addr = t.conf.text(e)
    if addr:
        t.set(e, "http_bind", addr)


def _push_in_http_port(t: Translation, e: Entry) -> None:
    v = _int(t, e, 1, 65535)
    if v is not None:
        port = v + t.conf.port_offset  # Pushpin's Settings::adjustedPort
        if port > 65535:
            t.refuse(e, f"{v} + port_offset {t.conf.port_offset} is beyond 65535")
            return
        t.set(e, "http_port", port)


def _stats_spec(t: Translation, e: Entry) -> None:
    spec = t.conf.text(e)
    if spec and not spec.startswith(("tcp://", "ipc://")):
        t.refuse(e, f"{spec!r} is not a tcp:// or ipc:// endpoint")
        return
    t.set(e, "stats_spec", spec)


def _stats_format(t: Translation, e: Entry) -> None:
    v = t.conf.text(e)
    if v not in ("tnetstring", "json", ""):
        t.refuse(e, f"{v!r} is not tnetstring or json")
        return
    t.set(e, "stats_format", v or "tnetstring")


def _stats_report_interval(t: Translation, e: Entry) -> None:
    v = _int(t, e, 0)
    if v is None:
        return
    if v == 0:
        t.refuse(e, "0 (no report packets) is not supported: gripcast always sends reports")
        return
    t.set(e, "stats_report_interval_s", float(v))


def _prometheus(port_key: str, who: str) -> Handler:
    def handle(t: Translation, e: Entry) -> None:
        v = t.conf.text(e)
        if not v:
            return
        if v.startswith("ipc://"):
            t.refuse(e, "gripcast's metrics listen on TCP only ([addr:]port)")
            return
        hp = split_addr_port(v)
        if hp is None:
            t.refuse(e, f"{v!r} is not [addr:]port")
            return
        addr, port = hp
        if addr:
            prev = t.settings.get("metrics_addr")
            if prev is not None and prev != addr:
                t.refuse(e, f"address {addr!r} differs from {prev!r}: gripcast's metrics use one")
                return
            t.set(e, "metrics_addr", addr)
        t.set(e, port_key, port)
        t.warn(
            e,
            f"Prometheus metrics of the {who} on port {port}: gripcast's metric names differ from "
            "Pushpin's (gripcast_broker_*, gripcast_edge_*: deploy/README.md)",
        )

    return handle


def _prometheus_prefix(t: Translation, e: Entry) -> None:
    if t.conf.text(e):
        t.warn(
            e,
            "gripcast's metric names have no configurable prefix (gripcast_broker_*, gripcast_edge_*)",
        )


def _rate(default: int, what: str) -> Handler:
    def handle(t: Translation, e: Entry) -> None:
        v = _int(t, e, -1)
        if v is None:
            return
        if 0 <= v < default:
            t.refuse(
                e,
                f"{v}: gripcast has no publish rate limiter ({what}); a limit below Pushpin's "
                f"example {default} would throttle, remove the key to deliver unthrottled",
            )
            return
        t.warn(e, f"ignored: gripcast delivers without Pushpin's publish rate limiter ({what})")

    return handle


def _push_in_sub_connect(t: Translation, e: Entry) -> None:
    if _bool(t, e):
        t.refuse(e, "gripcast's SUB publish input binds; it cannot connect to publishers")


def _services(t: Translation, e: Entry) -> None:
    names = set(t.conf.items(e))
    if names and not names & {"pushpin-proxy", "pushpin-handler"}:
        t.refuse(
            e, "no pushpin-proxy or pushpin-handler: gripcast would start both; remove the key"
        )
        return
    t.warn(e, "ignored: gripcast starts its own broker and edges (gripcast run)")


# the table -----------------------------------------------------------------------------------


def _warn(why: str) -> Rule:
    return Rule("warn", why=why)


def _fixed(allowed: Iterable[str], why: str) -> Rule:
    return Rule("fixed", allowed=tuple(allowed), why=why)


def _map(handle: Handler) -> Rule:
    return Rule("map", handle)


_LOADER = Rule("loader")
_INTERNAL = Rule("internal")

RULES: dict[tuple[str, str], Rule] = {
    # [global]
    ("global", "include"): _LOADER,
    ("global", "libdir"): _LOADER,
    ("global", "rundir"): _LOADER,
    ("global", "ipc_prefix"): _LOADER,
    ("global", "port_offset"): _map(_to_int("port_offset", 0, 60000)),
    ("global", "stats_connection_ttl"): _map(_to_int("stats_connection_ttl_s", 1, 86400)),
    ("global", "stats_connection_send"): _map(_to_bool("stats_connection_send")),
    # [runner]
    ("runner", "rundir"): _LOADER,
    ("runner", "services"): _map(_services),
    ("runner", "http_port"): _map(_http_port),
    ("runner", "https_ports"): _map(_https_ports),
    ("runner", "local_ports"): _map(_no_listeners("unix socket")),
    ("runner", "logdir"): _warn("gripcast logs to standard error (journald under systemd)"),
    ("runner", "log_level"): _map(_log_level),
    ("runner", "client_buffer_size"): _map(_to_int("client_header_bytes", 1024)),
    ("runner", "client_maxconn"): _map(_client_maxconn),
    ("runner", "allow_compression"): _map(_to_bool("allow_compression")),
    ("runner", "condure_bin"): _warn("gripcast runs no condure (its edges accept clients)"),
    ("runner", "mongrel2_bin"): _warn("gripcast runs no mongrel2"),
    ("runner", "m2sh_bin"): _warn("gripcast runs no mongrel2"),
    ("runner", "zurl_bin"): _warn("gripcast runs no zurl (its edges call origins)"),
    # [proxy]
    ("proxy", "routesfile"): _map(_routesfile),
    ("proxy", "debug"): _map(_to_bool("debug")),
    ("proxy", "auto_cross_origin"): _map(_to_bool("auto_cross_origin")),
    ("proxy", "accept_x_forwarded_protocol"): _map(_to_bool("accept_x_forwarded_protocol")),
    ("proxy", "set_x_forwarded_protocol"): _map(_x_forwarded_protocol),
    ("proxy", "x_forwarded_for"): _map(_to_list("x_forwarded_for")),
    ("proxy", "x_forwarded_for_trusted"): _map(_to_list("x_forwarded_for_trusted")),
    ("proxy", "orig_headers_need_mark"): _map(_to_list("orig_headers_need_mark")),
    ("proxy", "accept_pushpin_route"): _map(_to_bool("accept_pushpin_route")),
    ("proxy", "cdn_loop"): _map(_to_str("cdn_loop")),
    ("proxy", "log_from"): _map(_to_bool("log_from")),
    ("proxy", "log_user_agent"): _map(_to_bool("log_user_agent")),
    ("proxy", "sig_iss"): _map(_to_str("sig_iss")),
    ("proxy", "sig_key"): _map(_sig_key),
    ("proxy", "upstream_key"): _map(_upstream_key),
    ("proxy", "sockjs_url"): _warn("gripcast has no SockJS (a route asking for it is refused)"),
    ("proxy", "updates_check"): _warn("gripcast never contacts a server to check for updates"),
    ("proxy", "organization_name"): _warn("only sent with Pushpin's update checks"),
    ("proxy", "max_open_requests"): _fixed(
        ("", "-1"), "gripcast does not cap open origin requests; remove the key"
    ),
    ("proxy", "workers"): _warn("gripcast scales with edge processes (edges = N) instead"),
    ("proxy", "ipc_file_mode"): _warn("applies to Pushpin's internal sockets only"),
    ("proxy", "prometheus_port"): _map(
        _prometheus("edge_metrics_port", "edges (edge i: port + i)")
    ),
    ("proxy", "prometheus_prefix"): _map(_prometheus_prefix),
    ("proxy", "stats_report_interval"): _warn(
        "Pushpin's proxy-to-handler reports; gripcast's edges report every second"
    ),
    ("proxy", "stats_connections_max_ttl"): _warn(
        "Pushpin's proxy-to-handler conn-max packets have no gripcast counterpart"
    ),
    # [handler]
    ("handler", "push_in_spec"): _map(_publish_spec("push_in_port")),
    ("handler", "push_in_sub_specs"): _map(_push_in_sub_specs),
    ("handler", "push_in_sub_spec"): _map(_push_in_sub_specs),
    ("handler", "push_in_sub_connect"): _map(_push_in_sub_connect),
    ("handler", "push_in_http_addr"): _map(_push_in_http_addr),
    ("handler", "push_in_http_port"): _map(_push_in_http_port),
    ("handler", "push_in_http_max_headers_size"): _fixed(
        ("10000",), "gripcast's publish API takes headers of up to 10000 bytes (Pushpin's default)"
    ),
    ("handler", "push_in_max_headers_size"): _fixed(
        ("10000",), "gripcast's publish API takes headers of up to 10000 bytes (Pushpin's default)"
    ),
    ("handler", "push_in_http_max_body_size"): _fixed(
        ("1000000",),
        "gripcast's publish API takes bodies of up to 1000000 bytes (Pushpin's default)",
    ),
    ("handler", "push_in_max_body_size"): _fixed(
        ("1000000",),
        "gripcast's publish API takes bodies of up to 1000000 bytes (Pushpin's default)",
    ),
    ("handler", "command_spec"): _map(_publish_spec("command_port")),
    ("handler", "stats_spec"): _map(_stats_spec),
    ("handler", "stats_format"): _map(_stats_format),
    ("handler", "stats_report_interval"): _map(_stats_report_interval),
    ("handler", "stats_subscription_ttl"): _map(_to_int("stats_subscription_ttl_s", 1, 86400)),
    ("handler", "prometheus_port"): _map(_prometheus("metrics_port", "broker")),
    ("handler", "prometheus_prefix"): _map(_prometheus_prefix),
    ("handler", "message_wait"): _map(_ms_to_s("message_wait_s")),
    ("handler", "id_cache_ttl"): _map(_seconds("id_cache_ttl_s")),
    ("handler", "message_rate"): _map(_rate(2500, "messages per second")),
    ("handler", "message_hwm"): _map(_rate(25000, "rate-limited messages queued")),
    ("handler", "message_block_size"): _fixed(
        ("",), "gripcast reports no block counts in stats; remove the key"
    ),
    ("handler", "connection_subscription_max"): _fixed(
        ("20",), "gripcast subscribes a connection to at most 20 channels (Pushpin's default)"
    ),
    ("handler", "subscription_linger"): _fixed(
        ("60",), "gripcast's response-mode stats subscriptions linger 60 s (Pushpin's default)"
    ),
    ("handler", "update_on_first_subscription"): _map(_to_bool("update_on_first_subscription")),
    ("handler", "ipc_file_mode"): _fixed(
        ("",), "gripcast's stats ipc socket keeps the process umask's mode; remove the key"
    ),
    ("handler", "share_all"): _fixed(("", "false"), "gripcast has no share_all mode"),
    ("handler", "state_spec"): _fixed(("",), "gripcast keeps no Pushpin session state socket"),
}

# Pushpin's internal wiring (internal.conf, 1.36 to 1.41): meaningless to gripcast
_INTERNAL_KEYS = {
    "proxy": (
        "condure_in_specs condure_in_stream_specs condure_out_specs condure_client_in_specs "
        "condure_client_out_specs condure_client_out_stream_specs connmgr_in_specs "
        "connmgr_in_stream_specs connmgr_out_specs connmgr_client_in_specs "
        "connmgr_client_out_specs connmgr_client_out_stream_specs m2a_in_specs "
        "m2a_in_stream_specs m2a_out_specs zurl_out_specs zurl_out_stream_specs zurl_in_specs "
        "handler_inspect_spec handler_accept_spec handler_retry_in_spec "
        "handler_ws_control_in_spec handler_ws_control_out_spec handler_ws_control_init_specs "
        "handler_ws_control_stream_specs stats_spec command_spec intreq_in_specs "
        "intreq_in_stream_specs intreq_out_specs"
    ),
    "handler": (
        "proxy_inspect_spec proxy_inspect_specs proxy_accept_spec proxy_accept_specs "
        "proxy_retry_out_spec proxy_retry_out_specs proxy_ws_control_in_spec "
        "proxy_ws_control_out_spec proxy_ws_control_init_specs proxy_ws_control_stream_specs "
        "proxy_stats_spec proxy_stats_specs proxy_command_spec proxy_intreq_in_specs "
        "proxy_intreq_out_specs proxy_intreq_out_stream_specs m2a_in_stream_specs "
        "m2a_out_specs condure_out_specs condure_in_stream_specs"
    ),
}
for _section, _keys in _INTERNAL_KEYS.items():
    for _key in _keys.split():
        RULES.setdefault((_section, _key), _INTERNAL)


# Keys Pushpin's code reads with a default other than gripcast's: when pushpin.conf does not
# set them, gripcast takes Pushpin's code default (the shipped pushpin.conf sets all three)
ABSENT: dict[tuple[str, str], tuple[str, Any]] = {
    ("proxy", "sig_key"): ("sig_key", ""),  # no key: requests to origins are not signed
    ("proxy", "set_x_forwarded_protocol"): ("set_x_forwarded_protocol", "false"),
    ("handler", "id_cache_ttl"): ("id_cache_ttl_s", 0.0),  # no de-duplication
}

# The defaults of the gripcast keys the [proxy] and [runner] rows map one to one: Pushpin's
# (so a value equal to it needs no setting)
MAPPED_DEFAULTS: dict[str, Any] = {
    "x_forwarded_for": (),
    "x_forwarded_for_trusted": (),
    "set_x_forwarded_protocol": "proto-only",
    "accept_x_forwarded_protocol": False,
    "orig_headers_need_mark": (),
    "accept_pushpin_route": False,
    "cdn_loop": "",
    "auto_cross_origin": False,
    "debug": False,
    "log_from": False,
    "log_user_agent": False,
    "allow_compression": False,
}


def translate(conf: PushpinConf, defaults: dict[str, Any] | None = None) -> Translation:
    """Apply ``RULES`` to every entry; ``ConfigError`` lists every refusal.  ``defaults``
    (Config key -> gripcast default) drops settings that equal them."""
    t = Translation(conf)
    order = sorted(conf.entries.values(), key=lambda e: (e.file != conf.path, e.file, e.line))
    for e in order:
        rule = RULES.get((e.section, e.key))
        if rule is None:
            t.refuse(e, "not a Pushpin setting gripcast knows (Pushpin 1.36 to 1.41): remove it")
        elif rule.kind == "map":
            assert rule.handle is not None
            rule.handle(t, e)
        elif rule.kind == "fixed":
            if t.conf.text(e) not in rule.allowed:
                t.refuse(e, f"{t.conf.text(e)!r}: {rule.why}")
        elif rule.kind == "warn":
            t.warn(e, f"ignored: {rule.why}")
        elif rule.kind == "internal":
            t.internal.append(e)
    for (section, key), (gkey, value) in ABSENT.items():
        if (section, key) not in conf.entries:
            t.settings[gkey] = value
    if t.problems:
        raise ConfigError(t.problems)
    if defaults is not None:
        for key in [k for k, v in t.settings.items() if k in defaults and defaults[k] == v]:
            del t.settings[key]
            t.sources.pop(key, None)
    return t


def internal_note(t: Translation) -> str | None:
    """One line naming the internal wiring keys skipped (None when there are none)."""
    if t.conf.include_missing:
        return f"{t.conf.include} (Pushpin's internal wiring) is not installed: nothing to skip"
    if not t.internal:
        return None
    files = sorted({e.file for e in t.internal})
    return (
        f"{len(t.internal)} keys of Pushpin's internal wiring ({', '.join(files)}) are not used: "
        "gripcast wires its processes itself"
    )
