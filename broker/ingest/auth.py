"""Optional JWT auth for the broker's HTTP publish API (sans-IO).

Pushpin's API has no auth (it relies on the loopback bind) and ignores ``Authorization``; so
does gripcast unless ``publish_jwt_key`` is set.  Then every request except ``GET /`` must carry
``Authorization: Bearer <JWT>`` signed with that key, as gripcontrol/pubcontrol send it when
given ``control_iss`` and ``key`` (claims ``{"iss": ..., "exp": now + 3600}``, HS256).

Key syntax (``publish_jwt_key``): ``""`` off; ``base64:<b64>`` a binary HS256 secret;
``file:<path>`` a PEM *public* key (RSA -> RS256, EC -> ES256) or, when the file is not PEM, a
hex-encoded HS256 secret; anything else: the UTF-8 HS256 secret itself.  ``exp`` is required
(a token without one would stay valid for ever once leaked; gripcontrol/pubcontrol always set
it) and checked; ``iss`` and ``aud`` are checked when ``publish_jwt_iss`` / ``publish_jwt_aud``
are set.  The config refuses ``publish_jwt_key`` equal to ``sig_key``: a ``Grip-Sig`` token the
edges send to origins would otherwise be a valid publish token.

``check(headers, now)`` returns None when the request may proceed, else the one-line reason
the API answers with ``401``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import jwt

from broker.keys import JwtKey, load_jwt_key

if TYPE_CHECKING:
    from broker.keys import PublicKey

LEEWAY_S = 30


VerifyKey = JwtKey


def load_verify_key(spec: str, base_dir: str = ".") -> JwtKey[PublicKey] | None:
    return load_jwt_key(spec, base_dir, setting="publish_jwt_key", private=False)


class PublishAuth:
    def __init__(self, key: JwtKey[PublicKey] | None, iss: str = "", aud: str = "") -> None:
        self.key = key
        self.iss = iss or None
        self.aud = aud or None

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def check(
        self, method: str, path: str, headers: Iterable[tuple[bytes | str, bytes | str]], now: float
    ) -> str | None:
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
            jwt.decode(
                token.strip(),
                self.key.key,
                algorithms=[self.key.algorithm],
                options={
                    "verify_aud": self.aud is not None,
                    "verify_iat": False,
                    "require": ["exp"],
                },
                issuer=self.iss,
                audience=self.aud,
                leeway=LEEWAY_S,
            )
        except jwt.MissingRequiredClaimError as exc:
            return f"Invalid token: the {exc.claim!r} claim is required."
        except jwt.InvalidIssuerError:
            return "Invalid token: wrong issuer (iss)."
        except jwt.InvalidAudienceError:
            return "Invalid token: wrong audience (aud)."
        except jwt.ExpiredSignatureError:
            return "Invalid token: expired."
        except jwt.InvalidAlgorithmError:
            return f"Invalid token: algorithm must be {self.key.algorithm}."
        except jwt.InvalidSignatureError:
            return "Invalid token: signature verification failed."
        except jwt.InvalidTokenError as exc:
            return f"Invalid token: {exc}."
        return None
