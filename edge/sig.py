"""``Grip-Sig``: the JWT the edge signs for every origin request (reference 1.5).

Claims are exactly ``{"iss": <issuer>, "exp": <now + 3600>}``.  The key string is
``base64:<b64>`` (binary secret), ``file:<path>`` (PEM -> RS256/ES256 by key type, anything
else is a hex-encoded secret) or a plain UTF-8 secret (HS256).  An empty key or issuer means
no header.
"""
from __future__ import annotations

import base64
import binascii
import os
import time
import warnings
from dataclasses import dataclass

import jwt

try:  # Pushpin's default key "changeme" is short; PyJWT >= 2.10 warns about it on every call
    from jwt.warnings import InsecureKeyLengthWarning as _ShortKeyWarning
except ImportError:  # pragma: no cover (older PyJWT)
    _ShortKeyWarning = None

from broker.errors import ConfigError

LIFETIME_S = 3600


@dataclass(frozen=True, slots=True)
class SigningKey:
    key: bytes | str
    algorithm: str  # HS256 | RS256 | ES256


def load_key(spec: str, base_dir: str = ".") -> SigningKey | None:
    """Turn a ``sig_key`` string into a SigningKey (None for an empty key)."""
    if not spec:
        return None
    if spec.startswith("base64:"):
        try:
            return SigningKey(base64.b64decode(spec[7:], validate=True), "HS256")
        except (binascii.Error, ValueError) as exc:
            raise ConfigError([f"sig_key: bad base64 ({exc})"]) from exc
    if spec.startswith("file:"):
        path = os.path.join(base_dir, spec[5:])
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ConfigError([f"sig_key: cannot read {path}: {exc.strerror}"]) from exc
        if data.lstrip().startswith(b"-----BEGIN"):
            return SigningKey(data.decode("ascii"), _pem_algorithm(data))
        try:
            return SigningKey(bytes.fromhex(data.decode("ascii").strip()), "HS256")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError([f"sig_key: {path} is neither PEM nor hex"]) from exc
    return SigningKey(spec.encode("utf-8"), "HS256")


def _pem_algorithm(pem: bytes) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError([f"sig_key: cannot load PEM private key ({exc})"]) from exc
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    raise ConfigError(["sig_key: PEM key must be RSA or EC"])


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
