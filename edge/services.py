"""What the parts of an edge need from the edge process, typed: one ``Protocol`` per consumer.

The edge process has one root object, ``edge.server.Edge``, created in one place
(``edge.server.serve``, inside the edge's nursery, so that nothing in it is optional).  Every
attribute it has is declared in its ``__init__``; no module attaches attributes to it or probes
it with ``getattr``.  The modules that serve clients do not import ``edge.server`` (it imports
them): each declares here what it reads, and ``Edge`` implements all of these protocols.  Unit
tests pass small fakes that implement only the protocol of the module under test.

Attribute reads on these objects are plain attribute accesses (no properties): the connection
and delivery paths read them per request or per message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable

    import trio

    from broker.config import Config
    from edge.grip.cache import InstructCache
    from edge.grip.holds import HoldRegistry
    from edge.grip.session import ResponseSession, StreamSession
    from edge.ops.connstats import ConnStats
    from edge.origin.client import OriginClient
    from edge.parking import Parker
    from edge.proxyrules import ProxyRules
    from edge.routes import Route, RouteTable
    from edge.sessionstate import Session
    from edge.sync.deliver import Deliverer
    from edge.sync.hub import Hub
    from edge.sync.link import BrokerLinks
    from edge.sync.resume import Resumer
    from edge.sync.tracker import Tracker
    from edge.upstream import Upstream
    from edge.ws.session import WsSession
    from edge.ws.timers import WsTimers


class OriginServices(Protocol):
    """What talking to a route's origin needs (``edge.ws.over_http``, ``edge.ws.proxy``)."""

    cfg: Config
    nursery: trio.Nursery
    origin_client: OriginClient  # the edge's origin connection pool, read timer, header memo
    proxy_errors: int  # requests answered 502 (origin failures)
    upstream: Upstream  # upstream_key: is a request from a trusted GRIP proxy in front?

    def sign(self, route: Route) -> str | None: ...


class SessionServices(Protocol):
    """What a held session needs: the hub, the delivery path, and catch-up from history
    (``edge.ws.session.WsSession``, ``edge.grip.holds``)."""

    nursery: trio.Nursery
    hub: Hub[Session]
    deliverer: Deliverer
    ws_timers: WsTimers

    def add_session(self, session: Session, channels: list[str]) -> None: ...

    def remove_session(self, session: Session) -> None: ...

    async def resume(
        self, session: Session, channel: str, cursor: str, *, flush_on_fail: bool = True
    ) -> bool: ...

    async def wait_positioned(self, channels: list[str], timeout_s: float = ...) -> None: ...

    def positioned(self, channels: Iterable[str]) -> bool: ...


class ConnectionServices(OriginServices, SessionServices, Protocol):
    """What a client connection needs (``edge.http1.connection``, ``edge.grip.holds``, ``edge.ws.session``)."""

    routes: RouteTable
    rules: ProxyRules  # Pushpin's [proxy] request rules (edge.proxyrules)
    requests: int  # HTTP requests received
    ws_opened: int  # WebSocket sessions opened
    holds: HoldRegistry
    instruct_cache: InstructCache  # parsed instructs shared by held sessions
    resumer: Resumer
    stats: ConnStats
    parker: Parker  # idle plain stream holds without a task (edge.parking)
    websockets: dict[str, WsSession]  # open WebSocket sessions by connection id

    def begin_resume(self, session: Session, channel: str) -> None: ...

    def schedule_timeout(self, session: ResponseSession) -> None: ...

    def schedule_keepalive(self, session: StreamSession) -> None: ...


class ResumeServices(Protocol):
    """What catching a session up from broker history needs (``edge.sync.resume``)."""

    link: BrokerLinks
    tracker: Tracker
    deliverer: Deliverer

    async def wait_positioned(self, channels: list[str], timeout_s: float = ...) -> None: ...
