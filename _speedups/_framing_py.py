"""HTTP/1.1 chunked framing (pure-Python twin of ``_framing_c``)."""

from __future__ import annotations


def http_chunk(data: bytes) -> bytes:
    """Frame ``data`` as one HTTP/1.1 chunk.  Empty data gives b"" (never the last-chunk marker)."""
    n = len(data)
    if not n:
        return b""
    return b"%X\r\n%b\r\n" % (n, data)


def http_chunks(parts: list[bytes]) -> bytes:
    """Frame each non-empty part as its own chunk and join them."""
    return b"".join([b"%X\r\n%b\r\n" % (len(p), p) for p in parts if p])
