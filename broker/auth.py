"""Optional JWT auth for the broker's HTTP publish API (sans-IO).

Pushpin's API has no auth (it relies on the loopback bind) and ignores ``Authorization``; so
does gripcast unless ``publish_jwt_key`` is set.  Then every request except ``GET /`` must carry
``Authorization: Bearer <JWT>`` signed with that key, as gripcontrol/pubcontrol send it when
given ``control_iss`` and ``key`` (claims ``{"iss": ..., "exp": now + 3600}``, HS256).

Key syntax (``publish_jwt_key``): ``""`` off; ``base64:<b64>`` a binary HS256 secret;
``file:<path>`` a PEM *public* key (RSA -> RS256, EC -> ES256) or, when the file is not PEM, a
hex-encoded HS256 secret; anything else: the UTF-8 HS256 secret itself.  ``exp`` is checked
when present (expired -> refused); ``iss`` is not (as Pushpin's ``Grip-Sig`` check).

``check(headers, now)`` returns None when the request may proceed, else the one-line reason
the API answers with ``401``.
"""
from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

import jwt

from broker.errors import ConfigError

LEEWAY_S = 30


@dataclass(frozen=True, slots=True)
class VerifyKey:
    key: object
    algorithm: str  # HS256 | RS256 | ES256


def load_verify_key(spec: str, base_dir: str = ".") -> VerifyKey | None:
    if not spec:
        return None
    if spec.startswith("base64:"):
        try:
            return VerifyKey(base64.b64decode(spec[7:], validate=True), "HS256")
        except (binascii.Error, ValueError) as exc:
            raise ConfigError([f"publish_jwt_key: bad base64 ({exc})"]) from exc
    if spec.startswith("file:"):
        path = os.path.join(base_dir, spec[5:])
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ConfigError([f"publish_jwt_key: cannot read {path}: {exc.strerror}"]) from exc
        if data.lstrip().startswith(b"-----BEGIN"):
            return _pem_public(data)
        try:
            return VerifyKey(bytes.fromhex(data.decode("ascii").strip()), "HS256")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError([f"publish_jwt_key: {path} is neither PEM nor hex"]) from exc
    return VerifyKey(spec.encode("utf-8"), "HS256")


def _pem_public(pem: bytes) -> VerifyKey:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError([f"publish_jwt_key: cannot load PEM public key ({exc})"]) from exc
    if isinstance(key, ec.EllipticCurvePublicKey):
        return VerifyKey(key, "ES256")
    if isinstance(key, rsa.RSAPublicKey):
        return VerifyKey(key, "RS256")
    raise ConfigError(["publish_jwt_key: PEM key must be RSA or EC"])


class PublishAuth:
    def __init__(self, key: VerifyKey | None) -> None:
        self.key = key

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def check(self, method: str, path: str, headers, now: float) -> str | None:
        """None if allowed, else the reason for a 401."""
        if self.key is None:
            return None
        p = path.split("?", 1)[0]
        if p in ("", "/") and method.upper() == "GET":
            return None
        values = []
        for k, v in headers:
            ks = k.decode("latin-1") if isinstance(k, (bytes, bytearray)) else k
            if ks.lower() == "authorization":
                values.append(v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else v)
        if not values:
            return "Authorization required: send 'Authorization: Bearer <JWT>'."
        scheme, _, token = values[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Authorization must be a Bearer JWT."
        try:
            jwt.decode(token.strip(), self.key.key, algorithms=[self.key.algorithm],
                       options={"verify_aud": False, "verify_iat": False},
                       leeway=LEEWAY_S)
        except jwt.ExpiredSignatureError:
            return "Invalid token: expired."
        except jwt.InvalidAlgorithmError:
            return f"Invalid token: algorithm must be {self.key.algorithm}."
        except jwt.InvalidSignatureError:
            return "Invalid token: signature verification failed."
        except jwt.InvalidTokenError as exc:
            return f"Invalid token: {exc}."
        return None
