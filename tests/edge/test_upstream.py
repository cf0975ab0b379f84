"""edge.upstream: which requests come from a trusted GRIP proxy in front (``upstream_key``)."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import ConfigError
from edge.origin.client import OriginClient
from edge.origin.sig import Signer, load_key
from edge.routes import parse_routes
from edge.upstream import Upstream

NOW = 1_800_000_000.0


def sig_headers(token: str | bytes) -> list[tuple[bytes, bytes]]:
    tok = token.encode() if isinstance(token, str) else token
    return [(b"Host", b"h"), (b"grip-sig", tok)]


def test_a_token_signed_with_the_key_by_any_issuer_is_trusted_until_it_expires():
    up = Upstream.load("s3cret-upstream-key-of-32-bytes!")
    token = Signer("pushpin", load_key("s3cret-upstream-key-of-32-bytes!")).token(NOW)
    assert token is not None
    assert up.trusted(sig_headers(token), NOW)
    assert up.trusted(sig_headers(token), NOW + 3599)  # (remembered: same answer)
    assert not up.trusted(sig_headers(token), NOW + 3600)  # expired
    other = jwt.encode(
        {"iss": "someone-else", "exp": int(NOW) + 60}, b"s3cret-upstream-key-of-32-bytes!"
    )
    assert up.trusted(sig_headers(other), NOW)


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode({"iss": "pushpin", "exp": int(NOW) + 60}, b"another-key-another-key-another!!"),
        jwt.encode({"iss": "pushpin"}, b"s3cret-upstream-key-of-32-bytes!"),  # no exp
        jwt.encode({"iss": "pushpin", "exp": int(NOW) - 1}, b"s3cret-upstream-key-of-32-bytes!"),
        "not-a-jwt",
        "",
    ],
)
def test_invalid_expired_or_missing_signatures_are_ordinary_clients(token):
    up = Upstream.load("s3cret-upstream-key-of-32-bytes!")
    assert not up.trusted(sig_headers(token), NOW)
    assert not up.trusted([(b"Host", b"h")], NOW)


def test_no_upstream_key_trusts_nobody():
    token = Signer("pushpin", load_key("changeme")).token(NOW)
    assert not Upstream.load("").trusted(sig_headers(token), NOW)


def test_pem_public_key_verifies_es256(tmp_path):
    priv = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "up.key").write_bytes(
        priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "up.pub").write_bytes(
        priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    up = Upstream.load("file:up.pub", str(tmp_path))
    token = Signer("front", load_key("file:up.key", str(tmp_path))).token(NOW)
    assert up.key is not None and up.key.algorithm == "ES256"
    assert up.trusted(sig_headers(token), NOW)


def test_bad_key_is_a_config_error_naming_upstream_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        Upstream.load("file:missing.pem", str(tmp_path))
    assert err.value.problems[0].startswith("upstream_key: cannot read")


def test_trusted_request_keeps_grip_headers_and_gets_none_of_ours():
    route = parse_routes(["* o:80"]).routes[0]
    headers = [(b"Host", b"h"), (b"Grip-Sig", b"front-token"), (b"Grip-Feature", b"status")]
    client = OriginClient()
    trusted = client.build_request(
        route, route.targets[0], b"GET", b"/", headers, b"", sig="ours", trusted=True
    )
    assert b"Grip-Sig: front-token\r\n" in trusted and b"ours" not in trusted
    assert trusted.count(b"Grip-Feature") == 1 and b"Grip-Feature: status\r\n" in trusted
    plain = client.build_request(route, route.targets[0], b"GET", b"/", headers, b"", sig="ours")
    assert b"front-token" not in plain and b"Grip-Sig: ours\r\n" in plain
