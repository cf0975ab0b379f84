"""Pushpin routes files (sans-IO): parsing and matching (reference 1.2).

A line is space-separated *sections*; a section is ``value,prop,prop=val,...``; values may be
double-quoted (only ``\\\\`` and ``\\"`` escapes inside quotes); ``#`` starts a comment.  The
first section is the condition (``*``, an exact host, or empty), the rest are targets.

Matching (Pushpin's ``DomainMap::entry``): if any rule names the request's host exactly, only
those rules are considered, else the ``*`` rules.  Among the rules that match (``proto``,
``ssl``, ``path_beg``) a rule with ``proto`` beats one without, then the longer ``path_beg``,
then a rule with ``ssl``; ties go to the earlier line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from broker.errors import ConfigError

# props Pushpin knows that gripcast refuses, each with the reason given in the error
_REFUSED_COND = {
    "sockjs": "SockJS emulation is not supported by gripcast (use WebSocket or SSE)",
    "sockjs_as_path": "SockJS emulation is not supported by gripcast (use WebSocket or SSE)",
    "auto_cross_origin": "not a route property: use aco on the route, or the "
    "auto_cross_origin config key for every route",
}
_REFUSED_TARGET = {
    "ipc_file_mode": "only applies to zhttp/ targets, which gripcast does not support",
}
_JSONP_PROPS = {
    "jsonp_cb": "callback_param",
    "jsonp_body": "body_param",
    "jsonp_defcb": "default_callback",
    "jsonp_defmethod": "default_method",
}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Jsonp:
    """A route's JSON-P settings (Pushpin's ``jsonp_*`` props; active with ``aco``)."""

    extended: bool = True  # jsonp_mode=extended (default) | basic
    callback_param: str = "callback"  # jsonp_cb
    body_param: str = ""  # jsonp_body ("": the ``_body`` query parameter)
    default_callback: str = ""  # jsonp_defcb
    default_method: str = "GET"  # jsonp_defmethod (basic mode: POST)


TEST_HOST = "test"  # a ``test`` target: Pushpin's built-in test handler (edge.testorigin)


@dataclass(frozen=True, slots=True)
class Target:
    host: str  # TEST_HOST for Pushpin's ``test`` target (see ``is_test``)
    port: int
    ssl: bool = False
    host_header: str | None = None  # host=
    subs: tuple[str, ...] = ()  # sub= (implicit subscriptions)
    over_http: bool = False
    untrusted: bool = False
    insecure: bool = False
    one_event: bool = False  # WebSocket-over-HTTP: one event per request (edge.ws.outbox)
    # TLS to the origin (edge.origin.tls): verify the certificate against the connect host, not
    # host=; a client certificate (PEM paths, relative to the routes file) for mutual TLS
    trust_connect_host: bool = False
    client_cert: str | None = None
    client_key: str | None = None

    @property
    def is_test(self) -> bool:
        return self.port == 0 and self.host == TEST_HOST

    def __str__(self) -> str:
        if self.is_test:
            return TEST_HOST
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Route:
    line: int
    host: str  # "*", an exact host (lowercase), or "" (reachable by id only)
    targets: tuple[Target, ...]
    proto: str | None = None  # "http" | "ws" | None
    ssl: bool | None = None
    path_beg: str = ""
    id: str | None = None
    sig_iss: str | None = None
    sig_key: str | None = None
    prefix: str = ""
    as_host: str | None = None
    path_rem: int = 0
    replace_beg: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    debug: bool = False
    no_grip: bool = False
    aco: bool = False  # auto cross-origin: CORS headers, and JSON-P (``jsonp``)
    jsonp: Jsonp = Jsonp()
    orig_headers: bool = False  # copy the client's headers under the eb9bf0f5- prefix
    session: bool = False  # Pushpin's session detection: needs a state service (none)
    log_level: int | None = None  # Pushpin level (0 error .. 3 debug) of route log lines

    @property
    def name(self) -> str:
        """How logs name the route: its id, else its routes-file line."""
        return self.id if self.id else f"line{self.line}"

    def matches(self, path: str, is_ws: bool, is_tls: bool) -> bool:
        if self.proto is not None and (self.proto == "ws") != is_ws:
            return False
        if self.ssl is not None and self.ssl != is_tls:
            return False
        return path.startswith(self.path_beg)

    def rank(self) -> tuple[int, int, int]:
        return (self.proto is not None, len(self.path_beg), self.ssl is not None)

    def rewrite_path(self, path: str) -> str:
        """Apply ``path_rem`` and ``replace_beg`` to a request path (with query)."""
        if self.replace_beg is not None and path.startswith(self.path_beg):
            path = self.replace_beg + path[len(self.path_beg) :]
        if self.path_rem:
            path = path[self.path_rem :]
            if not path.startswith("/"):
                path = "/" + path
        return path


class RouteTable:
    def __init__(self, routes: list[Route], warnings: list[str] | None = None) -> None:
        self.routes = tuple(routes)
        self.warnings = list(warnings or [])
        self._by_host: dict[str, list[Route]] = {}
        for r in routes:
            self._by_host.setdefault(r.host, []).append(r)

    def __len__(self) -> int:
        return len(self.routes)

    def match(
        self, host: str, path: str, is_ws: bool = False, is_tls: bool = False
    ) -> Route | None:
        candidates = self._by_host.get(strip_port(host).lower())
        if candidates is None:
            candidates = self._by_host.get("*", [])
        best = None
        for r in candidates:
            if r.matches(path, is_ws, is_tls) and (best is None or r.rank() > best.rank()):
                best = r
        return best

    @property
    def has_test_targets(self) -> bool:
        return any(t.is_test for r in self.routes for t in r.targets)

    def bind_test_origin(self, host: str, port: int) -> RouteTable:
        """This table with every ``test`` target pointing at the edge's test origin
        (``edge.testorigin``) at ``host:port``.  As in Pushpin, a test target sees the path
        without the route's ``path_beg`` (its trailing ``/`` kept)."""
        routes = []
        for r in self.routes:
            if not any(t.is_test for t in r.targets):
                routes.append(r)
                continue
            targets = tuple(replace(t, host=host, port=port) if t.is_test else t for t in r.targets)
            changes: dict[str, Any] = {"targets": targets}
            if r.path_beg and not r.path_rem and r.replace_beg is None:
                changes["path_rem"] = len(r.path_beg) - r.path_beg.endswith("/")
            routes.append(replace(r, **changes))
        return RouteTable(routes, self.warnings)

    def by_id(self, route_id: str) -> Route | None:
        """The route with ``id=route_id``; None if none or if several share it (Pushpin: a
        shared id cannot select a route)."""
        found = [r for r in self.routes if r.id == route_id]
        return found[0] if len(found) == 1 else None


def strip_port(host: str) -> str:
    """``example.com:80`` -> ``example.com``; ``[::1]:80`` -> ``::1``."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end != -1 else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def tokenize(line: str) -> list[list[tuple[str, str | None]]]:
    """Split one line into sections of ``(name, value-or-None)`` props; ValueError if bad."""
    sections: list[list[tuple[str, str | None]]] = []
    props: list[tuple[str, str | None]] = []
    buf: list[str] = []
    key: str | None = None
    pending = False  # something (even an empty quoted string) was read for the current prop
    in_quote = False
    i = 0

    def end_prop() -> None:
        nonlocal buf, key, pending
        if pending or buf or key is not None:
            text = "".join(buf)
            props.append((key, text) if key is not None else (text, None))
        buf, key, pending = [], None, False

    while i < len(line):
        c = line[i]
        if in_quote:
            if c == "\\":
                if i + 1 >= len(line) or line[i + 1] not in '\\"':
                    raise ValueError('bad escape in quoted value (only \\\\ and \\" allowed)')
                buf.append(line[i + 1])
                i += 1
            elif c == '"':
                in_quote = False
            else:
                buf.append(c)
        elif c == '"':
            in_quote, pending = True, True
        elif c == "#":
            break
        elif c in " \t":
            end_prop()
            if props:
                sections.append(props)
                props = []
        elif c == ",":
            pending = True
            end_prop()
        elif c == "=" and key is None:
            key, buf, pending = "".join(buf), [], True
        else:
            buf.append(c)
        i += 1
    if in_quote:
        raise ValueError("unterminated quote")
    end_prop()
    if props:
        sections.append(props)
    return sections


def _flag(value: str | None, prop: str) -> bool:
    if value is None or value in ("yes", "true", "1", ""):
        return True
    if value in ("no", "false", "0"):
        return False
    raise ValueError(f"{prop} must be yes or no, not {value!r}")


def _parse_target(props: list[tuple[str, str | None]]) -> Target:
    spec = props[0][0] if props[0][1] is None else f"{props[0][0]}={props[0][1]}"
    if spec.startswith(("zhttp/", "zhttpreq/")):
        raise ValueError(
            f"target {spec!r}: origins reached over ZeroMQ (zhttp) are not supported by gripcast"
        )
    if spec == TEST_HOST:
        host, port_s = TEST_HOST, "0"
    elif spec.startswith("["):
        end = spec.find("]:")
        if end == -1:
            raise ValueError(f"bad target {spec!r} (expected [v6]:port)")
        host, port_s = spec[1:end], spec[end + 2 :]
    else:
        host, sep, port_s = spec.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad target {spec!r} (expected host:port)")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"bad target port in {spec!r}") from None
    if not 0 < port < 65536 and host != TEST_HOST:
        raise ValueError(f"bad target port in {spec!r}")
    kw: dict[str, Any] = {}  # Target's keyword arguments, checked by its constructor
    subs = []
    for name, value in props[1:]:
        if name == "ssl":
            kw["ssl"] = _flag(value, name)
        elif name == "host":
            kw["host_header"] = value or None
        elif name == "sub":
            if not value:
                raise ValueError("sub= needs a channel name")
            subs.append(value)
        elif name in ("over_http", "untrusted", "insecure", "one_event", "trust_connect_host"):
            kw[name] = _flag(value, name)
        elif name in ("client_cert", "client_key"):
            if not value:
                raise ValueError(f"{name}= needs a file path")
            kw[name] = value
        elif name in _REFUSED_TARGET:
            raise ValueError(f"target property {name!r} is not supported: {_REFUSED_TARGET[name]}")
        else:
            raise ValueError(f"unknown target property {name!r}")
    if "client_key" in kw and "client_cert" not in kw:
        raise ValueError("client_key= needs client_cert= (the certificate it belongs to)")
    return Target(host, port, subs=tuple(subs), **kw)


def _parse_route(lineno: int, sections: list[list[tuple[str, str | None]]]) -> Route:
    cond = sections[0]
    host = cond[0][0] if cond[0][1] is None else ""
    props = cond[1:] if cond[0][1] is None else cond
    kw: dict[str, Any] = {}  # Route's keyword arguments, checked by its constructor
    jsonp: dict[str, Any] = {}  # Jsonp's
    headers = []
    for name, value in props:
        if name == "proto":
            if value not in ("http", "ws"):
                raise ValueError(f"proto must be http or ws, not {value!r}")
            kw["proto"] = value
        elif name == "ssl":
            kw["ssl"] = _flag(value, name)
        elif name == "path_beg":
            if not value:
                raise ValueError("path_beg cannot be empty")
            kw["path_beg"] = value
        elif name in ("id", "sig_iss", "sig_key", "prefix", "as_host", "replace_beg"):
            kw[name] = value or ""
        elif name == "path_rem":
            try:
                kw["path_rem"] = int(value or "")
            except ValueError:
                raise ValueError(f"path_rem must be an integer, not {value!r}") from None
        elif name == "header":
            hname, sep, hval = (value or "").partition(":")
            if not sep or not hname.strip():
                raise ValueError(f"header must be Name:value, not {value!r}")
            if not _TOKEN.fullmatch(hname.strip()) or _CTL.search(hval):
                raise ValueError(
                    f"header name must be an HTTP token and its value printable, not {value!r}"
                )
            headers.append((hname.strip(), hval.strip()))
        elif name in ("debug", "no_grip", "aco", "orig_headers", "session"):
            kw[name] = _flag(value, name)
        elif name == "log_level":
            if value is None or not value.strip().lstrip("-").isdigit():
                raise ValueError(
                    f"log_level must be an integer (0 error .. 3 debug), not {value!r}"
                )
            kw["log_level"] = int(value)
        elif name == "jsonp_mode":
            if value not in ("basic", "extended"):
                raise ValueError(f"jsonp_mode must be basic or extended, not {value!r}")
            jsonp["extended"] = value == "extended"
        elif name in _JSONP_PROPS:
            jsonp[_JSONP_PROPS[name]] = value or ""
        elif name in _REFUSED_COND:
            raise ValueError(f"{name!r} is not supported: {_REFUSED_COND[name]}")
        else:
            raise ValueError(f"unknown condition property {name!r}")
    if jsonp:
        if "default_method" not in jsonp:  # Pushpin: POST in basic mode, GET in extended
            jsonp["default_method"] = "GET" if jsonp.get("extended", True) else "POST"
        if not jsonp.get("callback_param", "callback"):
            jsonp["callback_param"] = "callback"
        if not _TOKEN.fullmatch(jsonp["default_method"]):
            raise ValueError(
                f"jsonp_defmethod must be an HTTP method, not {jsonp['default_method']!r}"
            )
        kw["jsonp"] = Jsonp(**jsonp)
    if len(sections) < 2:
        raise ValueError("no targets")
    targets = tuple(_parse_target(s) for s in sections[1:])
    return Route(lineno, host.lower(), targets, headers=tuple(headers), **kw)


def parse_routes(lines: Iterable[str]) -> RouteTable:
    """Parse routes-file lines (an iterable of str).  ConfigError lists every bad line."""
    routes: list[Route] = []
    problems: list[str] = []
    warnings: list[str] = []
    seen: set[tuple[str, str | None, bool | None, str]] = set()
    for lineno, line in enumerate(lines, 1):
        try:
            sections = tokenize(line.rstrip("\r\n"))
            if not sections:
                continue
            route = _parse_route(lineno, sections)
        except ValueError as exc:
            problems.append(f"routes line {lineno}: {exc}")
            continue
        key = (route.host, route.proto, route.ssl, route.path_beg)
        if key in seen:
            warnings.append(f"routes line {lineno}: duplicate condition skipped")
            continue
        seen.add(key)
        if route.session:
            warnings.append(
                f"routes line {lineno}: session has no effect: session detection needs "
                "Pushpin's external state service (handler state_spec), which gripcast does "
                "not have; Pushpin without a state_spec ignores it the same way"
            )
        routes.append(route)
    if problems:
        raise ConfigError(problems)
    return RouteTable(routes, warnings)
