"""WebSocket frames (RFC 6455 section 5): parse and build (pure-Python twin of ``_wsframe_c``).

``ws_frame(opcode, payload, fin=True, mask_key=None)`` builds one frame: unmasked (server to
client) when ``mask_key`` is None, else masked with that 4-byte key (client to server).

``ws_parse(data, masked, max_payload)`` parses every complete frame at the start of ``data``
and returns ``(frames, consumed, error)``: ``frames`` is a list of ``(fin, opcode, payload)``
(payload unmasked), ``consumed`` the bytes they used, ``error`` 0 or the close code to fail the
connection with: 1002 (reserved bits or opcode, a control frame that is fragmented or longer
than 125 bytes, a 64-bit length with the top bit set, a mask bit other than ``masked``) or 1009
(a payload longer than ``max_payload``, reported as soon as the header is in).  Parsing stops at
the first error; frames before it are returned.  An incomplete frame is left unconsumed.

``ws_mask(data, key)`` XORs ``data`` with the repeated 4-byte ``key``.
"""

from __future__ import annotations

_BAD_OPCODES = frozenset([3, 4, 5, 6, 7, 11, 12, 13, 14, 15])


def ws_mask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    if len(key) != 4:
        raise ValueError("mask key must be 4 bytes")
    reps = key * (n // 4 + 1)
    return (int.from_bytes(data, "little") ^ int.from_bytes(reps[:n], "little")).to_bytes(
        n, "little"
    )


def ws_frame(opcode: int, payload: bytes, fin: bool = True, mask_key: bytes | None = None) -> bytes:
    if not 0 <= opcode <= 15:
        raise ValueError("opcode must be 0..15")
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask_key is not None else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = bytes((b0, mbit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, mbit | 127)) + n.to_bytes(8, "big")
    if mask_key is None:
        return head + bytes(payload)
    if len(mask_key) != 4:
        raise ValueError("mask key must be 4 bytes")
    return head + mask_key + ws_mask(bytes(payload), mask_key)


def ws_parse(
    data: bytes | bytearray, masked: bool, max_payload: int
) -> tuple[list[tuple[bool, int, bytes]], int, int]:
    frames: list[tuple[bool, int, bytes]] = []
    pos = 0
    size = len(data)
    while size - pos >= 2:
        b0 = data[pos]
        b1 = data[pos + 1]
        fin = bool(b0 & 0x80)
        opcode = b0 & 0x0F
        if b0 & 0x70 or opcode in _BAD_OPCODES:
            return frames, pos, 1002
        has_mask = bool(b1 & 0x80)
        if has_mask != bool(masked):
            return frames, pos, 1002
        n = b1 & 0x7F
        at = pos + 2
        if opcode >= 8 and (n > 125 or not fin):
            return frames, pos, 1002
        if n == 126:
            if size - at < 2:
                break
            n = (data[at] << 8) | data[at + 1]
            at += 2
        elif n == 127:
            if size - at < 8:
                break
            if data[at] & 0x80:
                return frames, pos, 1002
            n = int.from_bytes(bytes(data[at : at + 8]), "big")
            at += 8
        if n > max_payload:
            return frames, pos, 1009
        if has_mask:
            if size - at < 4:
                break
            key = bytes(data[at : at + 4])
            at += 4
        if size - at < n:
            break
        payload = bytes(data[at : at + n])
        if has_mask:
            payload = ws_mask(payload, key)
        frames.append((fin, opcode, payload))
        pos = at + n
    return frames, pos, 0
