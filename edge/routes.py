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
from dataclasses import dataclass
from typing import Any

from broker.errors import ConfigError

# props Pushpin knows that gripcast accepts but does not act on (yet)
_IGNORED_COND = frozenset(
    [
        "aco",
        "session",
        "sockjs",
        "sockjs_as_path",
        "orig_headers",
        "log_level",
        "jsonp_mode",
        "jsonp_cb",
        "jsonp_body",
        "jsonp_defcb",
        "jsonp_defmethod",
        "auto_cross_origin",
    ]
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_IGNORED_TARGET = frozenset(["one_event", "ipc_file_mode"])


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    ssl: bool = False
    host_header: str | None = None  # host=
    subs: tuple[str, ...] = ()  # sub= (implicit subscriptions)
    over_http: bool = False
    untrusted: bool = False
    insecure: bool = False
    # TLS to the origin (edge.origin.tls): verify the certificate against the connect host, not
    # host=; a client certificate (PEM paths, relative to the routes file) for mutual TLS
    trust_connect_host: bool = False
    client_cert: str | None = None
    client_key: str | None = None

    def __str__(self) -> str:
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

    def by_id(self, route_id: str) -> Route | None:
        for r in self.routes:
            if r.id == route_id:
                return r
        return None


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
    if spec == "test" or spec.startswith(("zhttp/", "zhttpreq/")):
        raise ValueError(f"target {spec!r} is not supported by gripcast")
    if spec.startswith("["):
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
    if not 0 < port < 65536:
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
        elif name in ("over_http", "untrusted", "insecure", "trust_connect_host"):
            kw[name] = _flag(value, name)
        elif name in ("client_cert", "client_key"):
            if not value:
                raise ValueError(f"{name}= needs a file path")
            kw[name] = value
        elif name not in _IGNORED_TARGET:
            raise ValueError(f"unknown target property {name!r}")
    if "client_key" in kw and "client_cert" not in kw:
        raise ValueError("client_key= needs client_cert= (the certificate it belongs to)")
    return Target(host, port, subs=tuple(subs), **kw)


def _parse_route(lineno: int, sections: list[list[tuple[str, str | None]]]) -> Route:
    cond = sections[0]
    host = cond[0][0] if cond[0][1] is None else ""
    props = cond[1:] if cond[0][1] is None else cond
    kw: dict[str, Any] = {}  # Route's keyword arguments, checked by its constructor
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
        elif name in ("debug", "no_grip"):
            kw[name] = _flag(value, name)
        elif name not in _IGNORED_COND:
            raise ValueError(f"unknown condition property {name!r}")
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
        routes.append(route)
    if problems:
        raise ConfigError(problems)
    return RouteTable(routes, warnings)
