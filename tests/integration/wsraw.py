"""A raw WebSocket client for integration tests that look at single frames (pong payloads,
close frames, extensions) or misbehave on purpose: the handshake, masked frames out, frames in."""

from __future__ import annotations

import base64
import os
import socket
import time

from _speedups import ws_frame


def raw_ws(
    port,
    path,
    rcvbuf=None,
    headers: dict | None = None,
    head_out: list | None = None,
    key: str | None = None,
):
    """A client socket past the handshake (``head_out`` gets the 101's head when given)."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        s.connect(("127.0.0.1", port))
        key = key or base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        s.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
        )
        head = b""
        deadline = time.monotonic() + 10  # the whole head, not each byte
        while b"\r\n\r\n" not in head:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete handshake answer in 10 s: {head!r}")
            s.settimeout(left)
            byte = s.recv(1)
            if not byte:
                raise EOFError(f"closed during the handshake: {head!r}")
            head += byte
        s.settimeout(10)
        assert head.startswith(b"HTTP/1.1 101"), head
        if head_out is not None:
            head_out.append(head)
    except BaseException:
        s.close()  # a refused handshake must not leak the socket into a later test
        raise
    return s


def client_frame(op: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    frame = bytearray(ws_frame(op, payload, fin, os.urandom(4)))
    if rsv1:
        frame[0] |= 0x40
    return bytes(frame)


def _read_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("connection closed mid-frame")
        out += chunk
    return out


def read_frame_full(s: socket.socket) -> tuple[int, bool, bool, bytes]:
    """One frame from the server: ``(opcode, fin, rsv1, payload)`` (unmasked)."""
    b0, b1 = _read_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(_read_exact(s, 2), "big")
    elif n == 127:
        n = int.from_bytes(_read_exact(s, 8), "big")
    assert not b1 & 0x80, "server frames are not masked"
    return b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40), _read_exact(s, n)


def read_frame(s: socket.socket) -> tuple[int, bytes]:
    """One frame from the server: ``(opcode, payload)``."""
    op, _, _, payload = read_frame_full(s)
    return op, payload
