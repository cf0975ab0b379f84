"""TLS toward origins, the same from Pushpin (its zurl) and gripcast: an ``ssl,insecure``
target is proxied (the request the origin gets over TLS is the same), a streamed GRIP hold over
TLS works, and an origin certificate no system CA vouches for is a ``502`` with Pushpin's body.

The origin is the harness's ``RecordingOrigin`` with TLS on every accepted connection, its
certificate issued at test time by a test CA that neither system trusts."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import pytest

from tests.differential.harness import (
    HttpClient,
    OriginResponse,
    RecordingOrigin,
    same_as_pushpin,
)
from tests.edge.test_origin_tls import Pki, server_context

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class TlsRecordingOrigin(RecordingOrigin):
    """``RecordingOrigin`` speaking TLS (a failed handshake just closes that connection)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx  # before the accept thread starts
        super().__init__()

    def _serve(self, conn):
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except OSError:
            self._conns.discard(conn)
            conn.close()
            return
        self._conns.add(tls)
        super()._serve(tls)


@pytest.fixture(scope="module")
def tls_origin():
    with tempfile.TemporaryDirectory() as d:
        pki = Pki(Path(d))
        cert, key = pki.issue("localhost", dns=["localhost"], ips=["127.0.0.1"])
        with TlsRecordingOrigin(server_context(cert, key)) as origin:
            yield origin


def _routes(port: int) -> str:
    # /v: verification on (the system CAs: the test CA is not among them); the rest insecure
    return f"*,path_beg=/v 127.0.0.1:{port},ssl\n* 127.0.0.1:{port},ssl,insecure\n"


def test_insecure_tls_target_is_proxied_alike(each_system, tls_origin, uniq):
    path = "/" + uniq("tls")
    tls_origin.respond(path, OriginResponse(200, [("Content-Type", "text/plain")], b"secret\n"))
    seen = {}
    for system in each_system(routes=_routes(tls_origin.port)):
        tls_origin.take()
        with HttpClient(system.client_port) as c:
            c.send(f"GET {path}?a=1 HTTP/1.1\r\nHost: example.com\r\nX-A: b\r\n\r\n".encode())
            head, body = c.response()
        (req,) = tls_origin.take()
        seen[system.name] = (head.comparable(), body, req.comparable())
    assert seen["gripcast"] == (
        (200, "OK", (("content-type", "text/plain"),)),
        b"secret\n",
        ("GET", f"{path}?a=1", (("x-a", "b"),), b""),
    )
    same_as_pushpin(seen)


def test_stream_hold_from_a_tls_origin(each_system, tls_origin, uniq):
    ch = uniq("tls-s")
    path = "/" + uniq("tls-stream")
    tls_origin.respond(
        path,
        OriginResponse(
            200,
            [("Content-Type", "text/plain"), ("Grip-Hold", "stream"), ("Grip-Channel", ch)],
            b"start\n",
        ),
    )
    seen = {}
    for system in each_system(routes=_routes(tls_origin.port)):
        with HttpClient(system.client_port) as c:
            c.send(f"GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
            c.read_until(b"start\n")
            system.publish(ch, {"http-stream": {"content": "over tls\n"}})
            head, body = c.response(until=b"over tls\n")
        seen[system.name] = (head.comparable(), body)
    assert seen["gripcast"] == (
        (200, "OK", (("content-type", "text/plain"),)),
        b"start\nover tls\n",
    )
    same_as_pushpin(seen)


def test_unverifiable_origin_certificate_is_502(each_system, tls_origin, uniq):
    path = "/v/" + uniq("verify")
    tls_origin.respond(path, OriginResponse(200, [], b"must not be seen\n"))
    seen = {}
    for system in each_system(routes=_routes(tls_origin.port)):
        tls_origin.take()
        with HttpClient(system.client_port) as c:
            c.send(f"GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
            head, body = c.response()
        seen[system.name] = (head.status, body, tls_origin.take())
    assert seen["gripcast"] == (502, b"Error while proxying to origin.\n", [])
    same_as_pushpin(seen)
