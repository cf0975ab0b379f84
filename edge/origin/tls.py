"""TLS toward origins: one ``ssl.SSLContext`` per TLS profile, handshakes through trio's
``SSLStream`` (never a hand-written layer).

A route target with ``ssl`` is reached over TLS, for HTTP requests, WebSocket-over-HTTP
POSTs and WebSocket-to-WebSocket handshakes alike (``edge.origin.client.connect_first``
is the one place that connects).  What a target's TLS looks like:

* **verification** on by default: the chain against the system CAs (OpenSSL's default paths,
  which honour ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), or against ``origin_ca_file`` alone when
  that config key is set; the host name is checked.  ``insecure`` turns both checks off.
* **the name** (SNI and the name checked in the certificate): the target's ``host=`` (its port
  dropped) when given, else the target's host; ``trust_connect_host`` makes it the target's host
  even with ``host=`` (the origin's certificate names the host connected to, while ``Host``
  names another).  Pushpin's zurl has the same two rules.
* **a client certificate** (``client_cert=``, optionally ``client_key=``; PEM paths, relative
  to the routes file's directory) for mutual TLS.
* TLS 1.2 or later, ALPN ``http/1.1``; ``https_compatible`` streams: an origin that closes
  without ``close_notify`` ends the stream like a plain EOF (framing still says whether the
  response was cut).

``OriginTls`` is built from the config and the routes at start and on SIGHUP (``load``): every
context the routes need is made then, so a missing or unreadable CA file or client
certificate is a ``ConfigError`` naming the routes line, never a failure per request.  It
counts handshakes and failures (``statistics()``).
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

import trio

from broker.config import Config
from broker.errors import ConfigError, RemoteProtocolError
from edge.origin.pool import Stream as OriginStream
from edge.routes import RouteTable, Target, strip_port

__all__ = ["OriginStream", "OriginTls", "TlsHandshakeError", "TlsProfile", "server_name"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsProfile:
    """What makes two targets' TLS contexts differ."""

    insecure: bool = False
    client_cert: str | None = None  # absolute paths
    client_key: str | None = None


@dataclass(frozen=True, slots=True)
class OriginTlsStatistics:
    contexts: int
    handshakes: int
    failures: int  # every failed handshake, verification failures included
    verify_failures: int  # the origin's certificate did not verify (chain or name)


class TlsHandshakeError(RemoteProtocolError):
    """The TLS handshake with an origin failed (``reason`` says why, for the log and the
    502); ``edge.origin.client.connect_first`` moves on to the next target."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=502)


def server_name(target: Target) -> str:
    """The SNI name and the name the certificate must carry (see the module docstring)."""
    if target.host_header and not target.trust_connect_host:
        return strip_port(target.host_header)
    return target.host


def load_origin_tls(cfg: Config, routes: RouteTable) -> OriginTls:
    """The edge's ``OriginTls`` for ``cfg`` and ``routes`` (start and SIGHUP); ConfigError.
    Relative ``client_cert=`` paths are read from the routes file's directory (as keys)."""
    base = os.path.dirname(cfg.routes_file) if cfg.routes_file else "."
    return OriginTls.load(cfg.origin_ca_file, routes, base)


class OriginTls:
    """The TLS contexts of one edge (``Edge.origin_client.tls``), per ``TlsProfile``."""

    __slots__ = ("ca_file", "base_dir", "_contexts", "handshakes", "failures", "verify_failures")

    def __init__(self, ca_file: str = "", base_dir: str = ".") -> None:
        self.ca_file = ca_file
        self.base_dir = base_dir
        self._contexts: dict[TlsProfile, ssl.SSLContext] = {}
        self.handshakes = 0
        self.failures = 0
        self.verify_failures = 0

    def carry_counts(self, old: OriginTls | None) -> None:
        """Keep counting from ``old``'s figures (a SIGHUP builds a new ``OriginTls``)."""
        if old is not None:
            self.handshakes = old.handshakes
            self.failures = old.failures
            self.verify_failures = old.verify_failures

    @classmethod
    def load(cls, ca_file: str, routes: RouteTable, base_dir: str = ".") -> OriginTls:
        """Every context ``routes`` need; ``ConfigError`` listing each problem."""
        tls = cls(ca_file, base_dir)
        problems: list[str] = []
        if ca_file and not os.access(ca_file, os.R_OK):
            raise ConfigError([f"origin_ca_file: cannot read {ca_file}"])
        for route in routes.routes:
            for target in route.targets:
                if not target.ssl:
                    continue
                try:
                    tls.context(target)
                except ConfigError as exc:
                    problems.extend(f"routes line {route.line}: {p}" for p in exc.problems)
        if problems:
            raise ConfigError(list(dict.fromkeys(problems)))
        return tls

    def profile(self, target: Target) -> TlsProfile:
        def path(p: str | None) -> str | None:
            return None if p is None else os.path.join(self.base_dir, p)

        return TlsProfile(target.insecure, path(target.client_cert), path(target.client_key))

    def context(self, target: Target) -> ssl.SSLContext:
        prof = self.profile(target)
        ctx = self._contexts.get(prof)
        if ctx is None:
            ctx = self._contexts[prof] = self._make(prof)
        return ctx

    def _make(self, prof: TlsProfile) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"origin_ca_file: cannot load {self.ca_file}: {exc}"]) from exc
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        if prof.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if prof.client_cert is not None:
            try:
                ctx.load_cert_chain(prof.client_cert, prof.client_key)
            except (OSError, ssl.SSLError) as exc:
                what = prof.client_cert + (f" / {prof.client_key}" if prof.client_key else "")
                raise ConfigError(
                    [f"client_cert: cannot load {what}: {getattr(exc, 'strerror', None) or exc}"]
                ) from exc
        return ctx

    async def wrap(
        self, stream: trio.SocketStream, target: Target
    ) -> trio.SSLStream[trio.SocketStream]:
        """The TLS handshake over a connected ``stream`` (the caller bounds it in time and
        closes ``stream`` on failure); ``TlsHandshakeError`` with the reason."""
        ssl_stream = trio.SSLStream(
            stream, self.context(target), server_hostname=server_name(target), https_compatible=True
        )
        try:
            await ssl_stream.do_handshake()
        except trio.BrokenResourceError as exc:
            self.failures += 1
            if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                self.verify_failures += 1
            raise TlsHandshakeError(
                f"TLS handshake failed: {_reason(exc.__cause__ or exc)}"
            ) from exc
        self.handshakes += 1
        return ssl_stream

    def statistics(self) -> OriginTlsStatistics:
        return OriginTlsStatistics(
            len(self._contexts), self.handshakes, self.failures, self.verify_failures
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or "connection closed"
    return str(exc) or type(exc).__name__
