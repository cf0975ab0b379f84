"""TLS toward origins (edge.origin.tls, edge.origin.client, edge.ws.proxy): real sockets on
127.0.0.1, no sleeps.  The security rule first: a target with ``ssl`` is never spoken to in
plaintext, whatever path (HTTP, WebSocket-over-HTTP, WebSocket-to-WebSocket) reaches it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from broker.config import Config
from broker.errors import ConfigError
from edge.origin.client import OriginClient, OriginError, open_origin
from edge.origin.tls import OriginTls
from edge.routes import Route, Target, parse_routes
from edge.upstream import Upstream
from edge.ws.proxy import WsOrigin
from tests.tlscerts import make_ca

pytestmark = pytest.mark.timeout(10)


class _WsApp:
    proxy_errors = 0

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config(origin_timeout_s=5.0)
        self.origin_client = OriginClient()
        self.upstream = Upstream()

    def sign(self, route):
        return None


def test_websocket_to_websocket_ssl_target_never_gets_plaintext():
    """A WS->WS route whose target has ``ssl``, with a plaintext listener behind it: the
    handshake must never reach it in the clear (built directly: the routes file may refuse or
    accept such a line, this is the last line of defence)."""

    async def main():
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        got: list[bytes] = []

        async def origin(stream):
            with trio.move_on_after(2):
                while data := await stream.receive_some(4096):
                    got.append(data)

        route = Route(1, "*", (Target("127.0.0.1", port, ssl=True),), debug=True)
        app = _WsApp(Config(origin_timeout_s=1.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, origin, listeners)
            side = WsOrigin(app, route, [(b"Host", b"h")], b"/ws")
            opened = await side.open()
            await side.aclose()
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert opened.reject is not None and b"502" in opened.reject.split(b"\r\n", 1)[0]
        assert not any(b"GET /ws" in d or b"Sec-WebSocket-Key" in d for d in got), got

    trio.run(main)


# -- certificates made at test time ------------------------------------------------------------


class Pki:
    """A CA and certificates it issues, written as PEM files under ``dir``
    (``tests.tlscerts``)."""

    def __init__(self, dir, name: str = "Test CA") -> None:
        self.dir = dir
        self._ca = make_ca(dir, name, f"{name.replace(' ', '_')}.crt")
        self.ca_file = self._ca.cert_path

    def issue(self, name: str, dns=(), ips=(), client: bool = False) -> tuple[str, str]:
        """(cert path, key path) for ``name``, with ``dns`` and ``ips`` as subject alt names."""
        pair = self._ca.issue(self.dir, name, [*dns, *ips], cn=name, client=client)
        return pair.cert, pair.key


def server_context(cert: str, key: str, client_ca: str | None = None, sni_seen=None):
    """A TLS server context for ``cert``; with ``client_ca``, a client certificate is
    required (mutual TLS); ``sni_seen`` (a list) collects the SNI names clients sent."""
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if sni_seen is not None:

        def cb(sock, name, _ctx):
            sni_seen.append(name)

        ctx.sni_callback = cb
    return ctx


# -- an HTTPS origin in the test ---------------------------------------------------------------

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


class TlsOrigin:
    """An HTTP/1.1 origin over TLS (trio's SSLStream, server side): answers every request with
    ``RESPONSE`` on a keep-alive connection; counts connections and records request heads."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.port = 0
        self.connections = 0
        self.heads: list[bytes] = []
        self.errors: list[str] = []

    async def handle(self, stream) -> None:
        self.connections += 1
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                self.heads.append(head)
                await stream.send_all(RESPONSE)
        except trio.BrokenResourceError as exc:
            self.errors.append(str(exc.__cause__ or exc))

    async def start(self, nursery) -> None:
        listeners = await nursery.start(
            lambda task_status: trio.serve_ssl_over_tcp(
                self.handle,
                0,
                self.ctx,
                host="127.0.0.1",
                https_compatible=True,
                task_status=task_status,
            )
        )
        self.port = listeners[0].transport_listener.socket.getsockname()[1]


def tls_client(tmp_path, line: str, ca_file: str = "") -> tuple[OriginClient, Route]:
    routes = parse_routes([line])
    client = OriginClient(tls=OriginTls.load(ca_file, routes, str(tmp_path)))
    return client, routes.routes[0]


def run_origin_test(ctx, main) -> None:
    """Start a TlsOrigin with ``ctx``, run ``main(origin, nursery)``, stop everything."""

    async def wrapper():
        origin = TlsOrigin(ctx)
        async with trio.open_nursery() as nursery:
            await origin.start(nursery)
            await main(origin, nursery)
            nursery.cancel_scope.cancel()

    trio.run(wrapper)


async def get(client: OriginClient, route: Route, timeout_s: float = 5.0) -> bytes:
    """One GET through ``client`` (its read timer running meanwhile): ``b"<status> <body>"``;
    an OriginError is raised as itself (not in an exception group)."""
    out: list[bytes | OriginError] = []

    async def request() -> None:
        try:
            resp = await open_origin(
                client,
                route,
                b"GET",
                b"/x",
                [(b"Host", b"client.example")],
                b"",
                sig=None,
                timeout_s=timeout_s,
            )
        except OriginError as exc:
            out.append(exc)
            return
        try:
            out.append(b"%d " % resp.status + await resp.read_body(1 << 20))
        finally:
            await resp.aclose()

    async with trio.open_nursery() as n:
        n.start_soon(client.timer.serve)
        await trio.testing.wait_all_tasks_blocked()
        await request()
        n.cancel_scope.cancel()
    if isinstance(out[0], OriginError):
        raise out[0]
    return out[0]


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


def test_https_origin_verified_against_the_ca_with_sni_from_the_target(tmp_path, pki):
    cert, key = pki.issue("localhost", dns=["localhost"])
    sni: list[str] = []

    async def main(origin, nursery):
        client, route = tls_client(
            tmp_path, f"*,proto=http localhost:{origin.port},ssl", pki.ca_file
        )
        assert await get(client, route) == b"200 hello"
        assert sni == ["localhost"]
        assert client.tls.statistics().handshakes == 1
        assert origin.heads[0].startswith(b"GET /x HTTP/1.1\r\nHost: client.example\r\n")
        client.close()

    run_origin_test(server_context(cert, key, sni_seen=sni), main)


def test_wrong_ca_is_a_clean_origin_error_naming_the_reason(tmp_path, pki, caplog):
    cert, key = pki.issue("localhost", dns=["localhost"])
    other = Pki(tmp_path, "Other CA")

    async def main(origin, nursery):
        client, route = tls_client(
            tmp_path, f"*,proto=http localhost:{origin.port},ssl", other.ca_file
        )
        with pytest.raises(OriginError) as err:
            await get(client, route)
        assert "certificate verify failed" in err.value.reason, err.value.reason
        assert err.value.status == 502
        assert client.tls.statistics().failures == 1
        assert origin.heads == []  # nothing was sent in the clear or otherwise
        logged = [r.getMessage() for r in caplog.records if r.name == "edge.origin.client"]
        assert any("certificate verify failed" in m for m in logged), logged

    run_origin_test(server_context(cert, key), main)


def test_name_mismatch_fails_and_host_option_picks_the_name(tmp_path, pki):
    cert, key = pki.issue("origin.example", dns=["origin.example"])
    sni: list[str] = []

    async def main(origin, nursery):
        client, route = tls_client(tmp_path, f"* 127.0.0.1:{origin.port},ssl", pki.ca_file)
        with pytest.raises(OriginError) as err:
            await get(client, route)
        assert "certificate verify failed" in err.value.reason
        client, route = tls_client(
            tmp_path, f"* 127.0.0.1:{origin.port},ssl,host=origin.example:443", pki.ca_file
        )
        assert await get(client, route) == b"200 hello"
        assert sni == [None, "origin.example"]  # an IP address is never sent as SNI
        assert b"\r\nHost: origin.example:443\r\n" in origin.heads[-1] + b"\r\n"
        client.close()
        # trust_connect_host: the name is the connect host again (127.0.0.1: no IP SAN: fails)
        client, route = tls_client(
            tmp_path,
            f"* 127.0.0.1:{origin.port},ssl,host=origin.example,trust_connect_host",
            pki.ca_file,
        )
        with pytest.raises(OriginError):
            await get(client, route)

    run_origin_test(server_context(cert, key, sni_seen=sni), main)


def test_insecure_skips_verification(tmp_path, pki):
    cert, key = pki.issue("elsewhere", dns=["elsewhere.example"])

    async def main(origin, nursery):
        client, route = tls_client(tmp_path, f"* 127.0.0.1:{origin.port},ssl,insecure")
        assert await get(client, route) == b"200 hello"
        client.close()

    run_origin_test(server_context(cert, key), main)


def test_mutual_tls_with_client_cert_and_key(tmp_path, pki):
    cert, key = pki.issue("localhost", dns=["localhost"])
    ccert, ckey = pki.issue("gripcast-edge", client=True)

    async def main(origin, nursery):
        client, route = tls_client(tmp_path, f"* localhost:{origin.port},ssl", pki.ca_file)
        with pytest.raises(OriginError):  # the origin wants a client certificate
            await get(client, route)
        assert origin.heads == []
        client, route = tls_client(
            tmp_path,
            f"* localhost:{origin.port},ssl,client_cert=gripcast-edge.crt,"
            "client_key=gripcast-edge.key",  # relative to the routes file's directory
            pki.ca_file,
        )
        assert await get(client, route) == b"200 hello"
        client.close()

    run_origin_test(server_context(cert, key, client_ca=pki.ca_file), main)


def test_tls_origin_connections_are_kept_alive_and_reused(tmp_path, pki):
    cert, key = pki.issue("localhost", dns=["localhost"])

    async def main(origin, nursery):
        client, route = tls_client(tmp_path, f"* localhost:{origin.port},ssl", pki.ca_file)
        for _ in range(3):
            assert await get(client, route) == b"200 hello"
        assert origin.connections == 1 and len(origin.heads) == 3
        assert client.tls.statistics().handshakes == 1
        # the same host:port without ssl never gets the parked TLS connection
        assert client.pool_key(route.targets[0]) != client.pool_key(
            Target("localhost", origin.port)
        )
        client.close()

    run_origin_test(server_context(cert, key), main)


def test_unreadable_client_cert_is_a_config_error_naming_the_line(tmp_path):
    routes = parse_routes(["* other:80", "o.example o:443,ssl,client_cert=missing.crt"])
    with pytest.raises(ConfigError) as err:
        OriginTls.load("", routes, str(tmp_path))
    assert err.value.problems[0].startswith("routes line 2: client_cert: cannot load ")


def test_client_key_alone_is_refused():
    with pytest.raises(ConfigError) as err:
        parse_routes(["* o:443,ssl,client_key=k.pem"])
    assert "client_key= needs client_cert=" in err.value.problems[0]
