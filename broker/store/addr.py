"""Host and port in Redis URLs (``redis+sentinel://``, ``redis+cluster://``): ``host``,
``host:port``, ``[v6]`` or ``[v6]:port``.  Sans-IO."""

from __future__ import annotations


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
