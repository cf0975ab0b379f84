"""``Grip-Sig``: the JWT the edge signs for every origin request (reference 1.5).

Claims are exactly ``{"iss": <issuer>, "exp": <now + 3600>}``.  The key string is
``base64:<b64>`` (binary secret), ``file:<path>`` (PEM -> RS256/ES256 by key type, anything
else is a hex-encoded secret) or a plain UTF-8 secret (HS256).  An empty key or issuer means
no header.
"""
from __future__ import annotations

import time
import warnings

import jwt

try:  # Pushpin's default key "changeme" is short; PyJWT >= 2.10 warns about it on every call
    from jwt.warnings import InsecureKeyLengthWarning as _ShortKeyWarning
except ImportError:  # pragma: no cover (older PyJWT)
    _ShortKeyWarning = None

from broker.keys import JwtKey, load_jwt_key

LIFETIME_S = 3600


SigningKey = JwtKey


def load_key(spec: str, base_dir: str = ".") -> JwtKey | None:
    """Turn a ``sig_key`` string into a signing key (None for an empty key)."""
    return load_jwt_key(spec, base_dir, setting="sig_key", private=True)


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
        if not self.enabled:
            return None
        now = time.time() if now is None else now
        if self._cached is not None and int(now) == int(self._cached[0]):
            return self._cached[1]
        claims = {"iss": self.issuer, "exp": int(now) + LIFETIME_S}
        with warnings.catch_warnings():
            if _ShortKeyWarning is not None:
                warnings.simplefilter("ignore", _ShortKeyWarning)
            tok = jwt.encode(claims, self.key.key, algorithm=self.key.algorithm)
        self._cached = (now, tok)
        return tok
