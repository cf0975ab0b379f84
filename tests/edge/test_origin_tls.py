"""TLS toward origins (edge.origin.tls, edge.origin.client, edge.ws.proxy): real sockets on
127.0.0.1, no sleeps.  The security rule first: a target with ``ssl`` is never spoken to in
plaintext, whatever path (HTTP, WebSocket-over-HTTP, WebSocket-to-WebSocket) reaches it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from broker.config import Config
from edge.origin.client import OriginClient
from edge.routes import Route, Target
from edge.ws.proxy import WsOrigin

pytestmark = pytest.mark.timeout(10)


class _WsApp:
    proxy_errors = 0

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config(origin_timeout_s=5.0)
        self.origin_client = OriginClient()

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
