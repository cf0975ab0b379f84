"""Pushpin's ``[proxy]`` request rules (sans-IO): what the origin sees of a client's headers.

Reference 1.4 (Pushpin's ``ProxyUtil::manipulateRequestHeaders``), applied per request after
the route is picked and before ``edge.origin.client`` drops hop-by-hop and ``Grip-*`` headers
and adds ``Grip-Sig``.  In Pushpin's order:

1. the route's ``header=`` props (Pushpin applies them first, so the rules below see them);
2. ``orig_headers`` routes: every client header is copied under the ``eb9bf0f5-`` prefix
   (except the names in ``orig_headers_need_mark``, which are copied only when the client
   already sent them marked); on other routes marked headers are removed;
3. ``Pushpin-Route`` removed when ``accept_pushpin_route``; ``CDN-Loop`` gets ``cdn_loop``
   appended;
4. ``X-Forwarded-Proto``/``X-Forwarded-Protocol``: removed when any of
   ``set_x_forwarded_protocol`` (not ``false``) or ``accept_x_forwarded_protocol`` is on; for a
   TLS client (or one whose accepted ``X-Forwarded-Proto`` says https/wss)
   ``X-Forwarded-Proto: https`` (``wss``) is added, and with ``true`` ``X-Forwarded-Protocol``
   as well;
5. ``X-Forwarded-For``: every value taken out, the last N kept (``truncate:N``), the client's
   address appended (``append``), joined with ", " into one header at the end.

Route choice (``pick_route``): with ``accept_pushpin_route`` a ``Pushpin-Route: <id>`` header
selects the route of that id (unless several routes share it), else host and path do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from _speedups import rules_clean

if TYPE_CHECKING:
    from broker.config import Config
    from edge.routes import Route, RouteTable

Headers = list[tuple[bytes, bytes]]
ORIG_PREFIX = b"eb9bf0f5-"


@dataclass(frozen=True, slots=True)
class XffRule:
    """``x_forwarded_for``: keep the last ``truncate`` values (-1: all), then ``append``."""

    truncate: int = -1
    append: bool = False

    @classmethod
    def parse(cls, items: Iterable[str]) -> XffRule:
        truncate, append = -1, False
        for item in items:  # validated by broker.config
            if item == "append":
                append = True
            elif item.startswith("truncate:"):
                truncate = int(item[len("truncate:") :])
        return cls(truncate, append)


@dataclass(frozen=True, slots=True)
class ProxyRules:
    xff: XffRule = XffRule()
    xff_trusted: XffRule = XffRule()
    set_proto: bool = True  # set_x_forwarded_protocol: true | proto-only
    set_protocol: bool = False  # set_x_forwarded_protocol: true
    accept_proto: bool = False
    need_mark: frozenset[bytes] = frozenset()  # lowercase names
    accept_route: bool = False
    cdn_loop: bytes = b""
    aco: bool = False  # auto_cross_origin: every route as if it had ``aco``
    debug: bool = False  # every route as if it had ``debug``

    @classmethod
    def from_config(cls, cfg: Config) -> ProxyRules:
        mode = cfg.set_x_forwarded_protocol
        return cls(
            xff=XffRule.parse(cfg.x_forwarded_for),
            xff_trusted=XffRule.parse(cfg.x_forwarded_for_trusted),
            set_proto=mode in ("true", "proto-only"),
            set_protocol=mode == "true",
            accept_proto=cfg.accept_x_forwarded_protocol,
            need_mark=frozenset(n.lower().encode("latin-1") for n in cfg.orig_headers_need_mark),
            accept_route=cfg.accept_pushpin_route,
            cdn_loop=cfg.cdn_loop.encode("latin-1"),
            aco=cfg.auto_cross_origin,
            debug=cfg.debug,
        )


def _get(headers: Sequence[tuple[bytes, bytes]], lname: bytes) -> bytes | None:
    for k, v in headers:
        if k.lower() == lname:
            return v
    return None


def claims_tls(rules: ProxyRules, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Does an accepted ``X-Forwarded-Proto`` (else ``X-Forwarded-Protocol``) say TLS?"""
    if not rules.accept_proto:
        return False
    v = _get(headers, b"x-forwarded-proto") or _get(headers, b"x-forwarded-protocol")
    return v in (b"https", b"wss")


def pick_route(
    table: RouteTable,
    rules: ProxyRules,
    host: str,
    path: str,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    ws: bool,
    tls: bool,
) -> Route | None:
    """The route for a request: by ``Pushpin-Route`` id when accepted, else host and path."""
    if rules.accept_route:
        rid = _get(headers, b"pushpin-route")
        if rid:
            by_id = table.by_id(rid.decode("latin-1"))
            if by_id is not None:
                return by_id
    return table.match(host, path, ws, tls)


# client header names the rules below may remove or rewrite (besides ``eb9bf0f5-`` ones)
_RULED = frozenset(
    [
        b"pushpin-route",
        b"cdn-loop",
        b"x-forwarded-proto",
        b"x-forwarded-protocol",
        b"x-forwarded-for",
    ]
)


def apply(
    rules: ProxyRules,
    route: Route,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    tls: bool,
    ws: bool,
    peer: str,
    trusted: bool = False,
) -> Headers:
    """The client's headers with Pushpin's rules applied (see the module docstring)."""
    if not route.headers and not route.orig_headers and not rules.cdn_loop:
        # the usual request: no route header props, no marking, and no client header any
        # rule removes or rewrites: one pass over the names, then only the additions
        if rules_clean(headers, _RULED, ORIG_PREFIX):
            out = list(headers)
            if tls:
                _forwarded_proto(out, rules, ws)
            if (rules.xff_trusted if trusted else rules.xff).append and peer:
                out.append((b"X-Forwarded-For", peer.encode("latin-1")))
            return out
    out = list(headers)
    for name, value in route.headers:
        bname = name.encode("latin-1")
        lname = bname.lower()
        out = [(k, v) for k, v in out if k.lower() != lname]
        if value:
            out.append((bname, value.encode("latin-1")))
    if route.orig_headers and not trusted:
        kept: Headers = []
        marked: Headers = []
        for k, v in out:
            lk = k.lower()
            if lk.startswith(ORIG_PREFIX):
                marked.append((k, v))
                continue
            kept.append((k, v))
            if lk not in rules.need_mark:
                marked.append((ORIG_PREFIX + k, v))
        out = kept + marked
    elif not route.orig_headers:
        out = [(k, v) for k, v in out if not k.lower().startswith(ORIG_PREFIX)]
    if rules.accept_route:
        out = [(k, v) for k, v in out if k.lower() != b"pushpin-route"]
    if rules.cdn_loop:
        loops = [v for k, v in out if k.lower() == b"cdn-loop"]
        out = [(k, v) for k, v in out if k.lower() != b"cdn-loop"]
        out.append((b"CDN-Loop", b", ".join([*loops, rules.cdn_loop])))
    if rules.accept_proto or rules.set_proto or rules.set_protocol:
        out = [
            (k, v)
            for k, v in out
            if k.lower() not in (b"x-forwarded-proto", b"x-forwarded-protocol")
        ]
    if tls:
        _forwarded_proto(out, rules, ws)
    xr = rules.xff_trusted if trusted else rules.xff
    xff = [v for k, v in out if k.lower() == b"x-forwarded-for"]
    if xff or xr.append:
        out = [(k, v) for k, v in out if k.lower() != b"x-forwarded-for"]
        if xr.truncate >= 0:
            xff = xff[max(len(xff) - xr.truncate, 0) :]
        if xr.append and peer:
            xff.append(peer.encode("latin-1"))
        if xff:
            out.append((b"X-Forwarded-For", b", ".join(xff)))
    return out


def logical_peer(rules: ProxyRules, headers: Sequence[tuple[bytes, bytes]], peer: str) -> str:
    """The client address logs report (Pushpin's ``getLogicalAddress``): the first
    ``X-Forwarded-For`` value when the rule does not truncate it all away, else the peer."""
    if rules.xff.truncate != 0:
        first = _get(headers, b"x-forwarded-for")
        if first:
            try:
                return str(ipaddress.ip_address(first.decode("latin-1").strip()))
            except ValueError:
                pass
    return peer


# the outbound deny list an ``untrusted`` target is held to (Pushpin's zurl, as Debian ships
# its /etc/zurl.conf: deny=127.*,10.*,192.168.*,*.local); trusted targets (the default) skip it
_DENY_NETS = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.0.0.0/8", "192.168.0.0/16"))


def denied_destination(name: str, addresses: Iterable[str] = ()) -> bool:
    """Is an ``untrusted`` target at host ``name`` (resolved to ``addresses``) refused?"""
    if name.lower().rstrip(".").endswith(".local"):
        return True
    for a in (name, *addresses):
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or any(ip in n for n in _DENY_NETS):
            return True
    return False


def _forwarded_proto(out: Headers, rules: ProxyRules, ws: bool) -> None:
    """A TLS client's scheme toward the origin (Pushpin's ``set_x_forwarded_proto`` /
    ``set_x_forwarded_protocol``)."""
    if rules.set_proto or rules.set_protocol:
        scheme = b"wss" if ws else b"https"
        if rules.set_proto:
            out.append((b"X-Forwarded-Proto", scheme))
        if rules.set_protocol:
            out.append((b"X-Forwarded-Protocol", scheme))
