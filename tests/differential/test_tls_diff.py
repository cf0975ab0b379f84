"""HTTPS clients, gripcast against Pushpin (issue 14, client side): the same routes, one
certificate (a CA made at test time), clients with verification on.

Pushpin listens for HTTPS on its runner's ``https_ports`` with ``runner/certs/default_<port>``
beside its config (condure reads the identity when a handshake asks for it, so the pair is
written once the system is up); gripcast on ``https_port`` with ``tls_cert``/``tls_key``.
Each system gets its own HTTPS port (the pool keeps both running at once)."""

from __future__ import annotations

import shutil
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.differential.harness import HttpClient, OriginResponse, System, same_as_pushpin
from tests.helpers import free_ports
from tests.tlscerts import make_ca

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class TlsClient(HttpClient):
    """The harness's raw client, over TLS (verified against ``ctx``'s CA)."""

    def __init__(self, port: int, ctx: ssl.SSLContext, timeout: float = 10.0) -> None:
        super().__init__(port, timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")


@dataclass
class Tls:
    ca_dir: Path
    cert: str
    key: str
    ports: dict[str, int] = field(default_factory=dict)  # system name -> its HTTPS port

    def client_ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_dir / "ca.crt"))

    def settings(self) -> dict:
        """each_system's arguments, with HTTPS ports of this test's own (the pool keeps the
        systems of earlier configurations running, on their ports)."""
        g, p = free_ports(2)
        self.ports = {"gripcast": g, "pushpin": p}
        return {
            "runner": {"https_ports": f"127.0.0.1:{self.ports['pushpin']}"},
            "gripcast": {
                "https_port": [f"127.0.0.1:{self.ports['gripcast']}"],
                "tls_cert": self.cert,
                "tls_key": self.key,
            },
        }

    def port_of(self, system: System) -> int:
        if system.name == "pushpin":
            certs = system.dir / "runner" / "certs"  # type: ignore[attr-defined]
            port = self.ports["pushpin"]
            if not (certs / f"default_{port}.crt").exists():
                certs.mkdir(parents=True, exist_ok=True)
                shutil.copy(self.cert, certs / f"default_{port}.crt")
                shutil.copy(self.key, certs / f"default_{port}.key")
        return self.ports[system.name]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    d = tmp_path_factory.mktemp("tlsdiff")
    ca = make_ca(d)
    pair = ca.issue(d, "server", ["localhost", "127.0.0.1"])
    return Tls(d, pair.cert, pair.key)


def test_passthrough_over_https_sets_x_forwarded_proto(each_system, origin, tls):
    origin.respond("/plain", OriginResponse(200, [("Content-Type", "text/plain")], b"hi\n"))
    seen = {}
    for system in each_system(routes=f"* 127.0.0.1:{origin.port}\n", **tls.settings()):
        with TlsClient(tls.port_of(system), tls.client_ctx()) as c:
            c.send(
                b"GET /plain HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-Proto: ftp\r\n"
                b"X-Forwarded-Protocol: gopher\r\n\r\n"
            )
            head, body = c.response()
        (req,) = origin.take()
        # and over plain HTTP beside it: the client's claims are dropped, none added
        with HttpClient(system.client_port) as c:
            c.send(b"GET /plain HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-Proto: https\r\n\r\n")
            c.response()
        (plain,) = origin.take()
        seen[system.name] = (head.comparable(), body, req.comparable(), plain.comparable())
    assert seen["gripcast"] == (
        (200, "OK", (("content-type", "text/plain"),)),
        b"hi\n",
        ("GET", "/plain", (("x-forwarded-proto", "https"),), b""),
        ("GET", "/plain", (), b""),
    )
    same_as_pushpin(seen)


def test_ssl_route_condition(each_system, origin, tls):
    origin.respond("/which", OriginResponse(200, [("Content-Type", "text/plain")], b"ok\n"))
    routes = (
        f"*,ssl=yes 127.0.0.1:{origin.port},host=tls.example\n"
        f"*,ssl=no 127.0.0.1:{origin.port},host=plain.example\n"
    )
    seen = {}
    for system in each_system(routes=routes, **tls.settings()):
        hosts = []
        with TlsClient(tls.port_of(system), tls.client_ctx()) as c:
            c.send(b"GET /which HTTP/1.1\r\nHost: example.com\r\n\r\n")
            c.response()
        with HttpClient(system.client_port) as c:
            c.send(b"GET /which HTTP/1.1\r\nHost: example.com\r\n\r\n")
            c.response()
        for req in origin.take():
            hosts.append(req.header("Host"))
        seen[system.name] = hosts
    assert seen["gripcast"] == ["tls.example", "plain.example"]
    same_as_pushpin(seen)


def test_stream_over_https(each_system, origin, uniq, tls):
    ch = uniq("tls")
    origin.respond(
        "/stream",
        OriginResponse(
            200,
            [("Content-Type", "text/plain"), ("Grip-Hold", "stream"), ("Grip-Channel", ch)],
            b"start\n",
        ),
    )
    seen = {}
    for system in each_system(routes=f"* 127.0.0.1:{origin.port}\n", **tls.settings()):
        _wait_accept_ready(system, tls)
        with TlsClient(tls.port_of(system), tls.client_ctx()) as c:
            c.send(b"GET /stream HTTP/1.1\r\nHost: example.com\r\n\r\n")
            c.read_until(b"start\n")
            system.publish(ch, {"http-stream": {"content": "one\n"}})
            c.read_until(b"one\n")
            system.publish(ch, {"http-stream": {"action": "close"}})
            head, body = c.response()
            alpn = c.sock.selected_alpn_protocol()  # type: ignore[attr-defined]
        seen[system.name] = (head.comparable(), body, alpn)
    assert seen["gripcast"][:2] == ((200, "OK", (("content-type", "text/plain"),)), b"start\none\n")
    assert seen["gripcast"][2] in (None, "http/1.1")
    if "pushpin" in seen:  # ALPN is offered by gripcast only when the client asks
        assert seen["pushpin"][:2] == seen["gripcast"][:2]


def _wait_accept_ready(system: System, tls: Tls, timeout: float = 15.0) -> None:
    """A freshly started Pushpin can answer a hold ``500 Accept service unavailable`` until
    its proxy-handler link is up: ask (a hold on a channel of its own) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        with TlsClient(tls.port_of(system), tls.client_ctx()) as c:
            c.send(b"GET /stream HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
            data = c.read_until(b"\r\n\r\n")
        if data.startswith(b"HTTP/1.1 200"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{system.name} did not hold: {data!r}")
        time.sleep(0.2)


def test_not_tls_on_the_https_port_is_closed_unanswered(each_system, origin, tls):
    seen = {}
    for system in each_system(routes=f"* 127.0.0.1:{origin.port}\n", **tls.settings()):
        got = b""
        with socket.create_connection(("127.0.0.1", tls.port_of(system)), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            try:
                while chunk := s.recv(4096):
                    got += chunk
            except ConnectionResetError:  # closed with the request unread
                pass
        seen[system.name] = b"HTTP/" in got  # answered in plaintext?
    assert seen["gripcast"] is False
    same_as_pushpin(seen)
