"""``Grip-Sig``: the JWT the edge signs for every origin request (reference 1.5).

Claims are exactly ``{"iss": <issuer>, "exp": <now + 3600>}``.  The key string is
``base64:<b64>`` (binary secret), ``file:<path>`` (PEM -> RS256/ES256 by key type, anything
else is a hex-encoded secret) or a plain UTF-8 secret (HS256).  An empty key or issuer means
no header.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Protocol, cast

import jwt

from broker.keys import load_jwt_key

_ShortKeyWarning: type[Warning] | None
try:  # Pushpin's default key "changeme" is short; PyJWT >= 2.10 warns about it on every call
    from jwt.warnings import InsecureKeyLengthWarning as _ShortKeyWarning
except ImportError:  # pragma: no cover (older PyJWT)
    _ShortKeyWarning = None


if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

LIFETIME_S = 3600


class SigningKey(Protocol):
    """What ``Signer`` needs of a key: ``broker.keys.JwtKey`` as ``load_jwt_key(private=True)``
    makes it (an HS256 secret, or an RSA/EC private key from a PEM file)."""

    @property
    def key(self) -> bytes | RSAPrivateKey | EllipticCurvePrivateKey: ...
    @property
    def algorithm(self) -> str: ...


def load_key(spec: str, base_dir: str = ".") -> SigningKey | None:
    """Turn a ``sig_key`` string into a signing key (None for an empty key)."""
    # private=True: a secret or a private key (JwtKey.key is typed ``object`` in broker.keys)
    return cast("SigningKey | None", load_jwt_key(spec, base_dir, setting="sig_key", private=True))


class Signer:
    """Signs Grip-Sig tokens; caches the token for one second (exp stays now + 3600 to the second)."""

    def __init__(self, issuer: str, key: SigningKey | None) -> None:
        self.issuer = issuer
        self.key = key
        self._cached: tuple[float, str] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.issuer) and self.key is not None

    def token(self, now: float | None = None) -> str | None:
        key = self.key
        if key is None or not self.issuer:  # not self.enabled
            return None
        now = time.time() if now is None else now
        if self._cached is not None and int(now) == int(self._cached[0]):
            return self._cached[1]
        claims = {"iss": self.issuer, "exp": int(now) + LIFETIME_S}
        with warnings.catch_warnings():
            if _ShortKeyWarning is not None:
                warnings.simplefilter("ignore", _ShortKeyWarning)
            tok = jwt.encode(claims, key.key, algorithm=key.algorithm)
        self._cached = (now, tok)
        return tok
