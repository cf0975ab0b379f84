"""Chaining: is a request from a trusted GRIP proxy in front (``upstream_key``)?

Pushpin's rule (reference 1.4-1.6, ``checkTrustedClient``): with an ``upstream_key``
configured, a request whose ``Grip-Sig`` verifies against it (the signature and ``exp`` in the
future; the issuer is not checked) comes from a GRIP proxy in front of this one (Pushpin,
Fastly Fanout, another gripcast).  Such a *trusted* request:

* keeps its ``Grip-*`` headers toward the origin (the proxy in front's ``Grip-Sig``,
  ``Grip-Feature``, ``Grip-Last``...), and gets no ``Grip-Sig``/``Grip-Feature`` of ours;
* gets the origin's answer passed through untouched, GRIP headers and all: the proxy in front
  acts on the instructions (holds, channels), not us;
* may carry WebSocket-over-HTTP events (``application/websocket-events``) to an ``over_http``
  target, which an ordinary client may not (403);
* on a WebSocket-to-WebSocket route, the origin's ``grip`` extension is relayed to the proxy
  in front instead of being acted on.

A missing, invalid or expired ``Grip-Sig`` is an ordinary client (its ``Grip-*`` headers are
dropped as always).  The key syntax is ``sig_key``'s (``broker.keys``): a secret (HS256) or
``file:`` a PEM *public* key (RS256/ES256).  ``trusted`` takes ``now``; ``trusted_now`` reads
the clock.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

import jwt

from broker.keys import JwtKey, load_jwt_key

if TYPE_CHECKING:
    from broker.keys import PublicKey

MEMO_MAX = 1024  # verified tokens remembered (a proxy in front re-signs about once a second)

try:  # a short HS256 secret (Pushpin's "changeme") makes PyJWT >= 2.10 warn on every call
    from jwt.warnings import InsecureKeyLengthWarning as _ShortKey
except ImportError:  # pragma: no cover (older PyJWT)
    _ShortKey = None  # type: ignore[assignment,misc]


class Upstream:
    """The edge's ``upstream_key`` (``Edge.upstream``, replaced on SIGHUP)."""

    __slots__ = ("key", "_memo")

    def __init__(self, key: JwtKey[PublicKey] | None = None) -> None:
        self.key = key
        self._memo: dict[bytes, int] = {}  # token -> its exp (verified)

    @classmethod
    def load(cls, spec: str, base_dir: str = ".") -> Upstream:
        """From an ``upstream_key`` string; ``ConfigError`` naming ``upstream_key``."""
        return cls(load_jwt_key(spec, base_dir, setting="upstream_key", private=False))

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def trusted_now(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """``trusted`` at the wall-clock time (``exp`` is seconds since the epoch)."""
        return self.key is not None and self.trusted(headers, time.time())

    def trusted(self, headers: Iterable[tuple[bytes, bytes]], now: float) -> bool:
        """True if ``headers`` carry a ``Grip-Sig`` that verifies against the key now."""
        if self.key is None:
            return False
        token = next((v for k, v in headers if k.lower() == b"grip-sig"), None)
        if not token:
            return False
        exp = self._memo.get(token)
        if exp is not None:
            return now < exp
        exp = self._verify(token, now)
        if exp is None:
            return False
        if len(self._memo) >= MEMO_MAX:
            self._memo.clear()
        self._memo[token] = exp
        return True

    def _verify(self, token: bytes, now: float) -> int | None:
        key = self.key
        assert key is not None
        try:
            with warnings.catch_warnings():
                if _ShortKey is not None:
                    warnings.simplefilter("ignore", _ShortKey)
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],
                    options={"require": ["exp"], "verify_exp": False, "verify_aud": False},
                )
        except jwt.PyJWTError:
            return None
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or now >= exp:
            return None
        return int(exp)
