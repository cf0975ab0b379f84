"""The HTTP publish API's answer to bodies that are not valid JSON text, from Pushpin and
gripcast: invalid UTF-8 (a UTF-8-encoded surrogate, a stray byte) and broken JSON get the same
status and body, and nothing is published."""

from __future__ import annotations

import socket

import pytest

from tests.differential.harness import same_as_pushpin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_ITEM = b'{"items":[{"channel":"diff-bad","formats":{"http-stream":{"content":"x%sy"}}}]}'

BODIES = {
    "utf8-surrogate": _ITEM % b"\xed\xa0\x80",
    "stray-byte": _ITEM % b"\xff",
    "broken-json": b'{"items":[',
}


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    """One POST on a plain socket, the body byte for byte; the status and body answered."""
    host, port = url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /publish/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def test_bodies_that_are_not_json_text(each_system, origin):
    seen = {}
    for system in each_system(routes=f"* 127.0.0.1:{origin.port}\n"):
        seen[system.name] = {name: _post(system.publish_url, b) for name, b in BODIES.items()}
    assert seen["gripcast"] == {name: (400, b"Body is not valid JSON.\n") for name in BODIES}
    same_as_pushpin(seen)
