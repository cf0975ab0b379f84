"""JWT key strings, one syntax for every setting that takes one (sans-IO apart from reading a file).

Used by ``sig_key`` (and route ``sig_key=``: the edge signs ``Grip-Sig`` with a secret or a
PEM *private* key) and by ``publish_jwt_key`` (the broker verifies publishers' tokens with a
secret or a PEM *public* key).  Pushpin's syntax (reference 1.5):

* ``""``: no key;
* ``base64:<b64>``: a binary HS256 secret;
* ``file:<path>`` (relative to ``base_dir``): a PEM key (RSA -> RS256, EC -> ES256) when the
  file starts with ``-----BEGIN``, otherwise a hex-encoded HS256 secret;
* anything else: the UTF-8 HS256 secret itself.

Problems are ``ConfigError``s that name the setting.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias, TypeVar, overload

from broker.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    # what ``key`` holds: a secret, or the PEM key loaded for signing / for verifying
    PrivateKey: TypeAlias = bytes | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    PublicKey: TypeAlias = bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_K = TypeVar("_K")


@dataclass(frozen=True, slots=True)
class JwtKey(Generic[_K]):
    key: _K  # bytes secret, or a loaded cryptography key object
    algorithm: str  # HS256 | RS256 | ES256


@overload
def load_jwt_key(
    spec: str, base_dir: str = ".", *, setting: str, private: Literal[True]
) -> JwtKey[PrivateKey] | None: ...
@overload
def load_jwt_key(
    spec: str, base_dir: str = ".", *, setting: str, private: Literal[False]
) -> JwtKey[PublicKey] | None: ...


def load_jwt_key(
    spec: str, base_dir: str = ".", *, setting: str, private: bool
) -> JwtKey[Any] | None:
    """Parse ``spec``; a PEM key is loaded as a private (signing) or public (verifying) key."""
    if not spec:
        return None
    if spec.startswith("base64:"):
        try:
            return _secret(base64.b64decode(spec[7:], validate=True), setting, "base64:")
        except (binascii.Error, ValueError) as exc:
            raise ConfigError([f"{setting}: bad base64 ({exc})"]) from exc
    if spec.startswith("file:"):
        path = os.path.join(base_dir, spec[5:])
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ConfigError([f"{setting}: cannot read {path}: {exc.strerror}"]) from exc
        except ValueError as exc:  # a NUL in the path
            raise ConfigError([f"{setting}: cannot read {path!r}: {exc}"]) from exc
        if data.lstrip().startswith(b"-----BEGIN"):
            return _pem(data, setting, private)
        try:
            secret = bytes.fromhex(data.decode("ascii").strip())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{setting}: {path} is neither PEM nor hex"]) from exc
        return _secret(secret, setting, path)
    try:
        return JwtKey(spec.encode("utf-8"), "HS256")
    except UnicodeEncodeError as exc:  # an environment value that was not UTF-8
        raise ConfigError([f"{setting}: not valid UTF-8 text"]) from exc


def _secret(secret: bytes, setting: str, where: str) -> JwtKey[bytes]:
    """An HS256 key; an empty one would make every token signed with "" valid: refused."""
    if not secret:
        raise ConfigError(
            [
                f"{setting}: {where} gives an empty key (an empty HMAC key signs "
                "tokens anyone can make)"
            ]
        )
    return JwtKey(secret, "HS256")


def _pem(pem: bytes, setting: str, private: bool) -> JwtKey[Any]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import (
        load_pem_private_key,
        load_pem_public_key,
    )

    kind = "private" if private else "public"
    try:
        key = load_pem_private_key(pem, password=None) if private else load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError([f"{setting}: cannot load PEM {kind} key ({exc})"]) from exc
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return JwtKey(key, "ES256")
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return JwtKey(key, "RS256")
    raise ConfigError([f"{setting}: PEM key must be RSA or EC"])
