"""Host and port in Redis URLs (``redis+sentinel://``, ``redis+cluster://``): ``host``,
``host:port``, ``[v6]`` or ``[v6]:port``.  Sans-IO."""

from __future__ import annotations

from urllib.parse import unquote

from broker.errors import ConfigError


def hostport(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str, default_port: int, role: str) -> tuple[str, int]:
    """``(host, port)`` from ``text``; ValueError naming what is wrong (``role``: "a sentinel",
    "a node", for the message)."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            raise ValueError(f"bad address {text!r} (an IPv6 address goes in [brackets])")
    if not host:
        raise ValueError(f"{role} address has no host ({text!r})")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text!r}")
        port = int(port_text)
    return host, port


def split_hosts_url(
    url: str, scheme: str, label: str, default_port: int, role: str, what: str = "host:port"
) -> tuple[list[tuple[str, int]], str | None, str, str, list[str]]:
    """The parts common to ``<scheme>://[:password@]host[:port],...[/path][?query]`` URLs:
    ``(hosts, password, path, query, problems)``; ``label`` names the URL in messages ("Sentinel
    URL"), ``role`` each address ("a sentinel"), ``what`` the list when it is empty.  Raises
    ConfigError when the scheme is wrong (nothing else can be read then)."""
    prefix = scheme + "://"
    if not url.startswith(prefix):
        raise ConfigError([f"store: a {label} must start with {prefix} (got {url!r})"])
    rest, _, query = url[len(prefix) :].partition("?")
    netloc, _, path = rest.partition("/")
    problems: list[str] = []
    password: str | None = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        _, _, pw = userinfo.partition(":")
        password = unquote(pw) if pw else None
    hosts: list[tuple[str, int]] = []
    if not netloc:
        problems.append(f"store: {label} lists no {what} ({url!r})")
    else:
        for part in netloc.split(","):
            try:
                hosts.append(parse_hostport(part, default_port, role))
            except ValueError as exc:
                problems.append(f"store: {label}: {exc}")
    return hosts, password, path, query, problems
