"""Grip-Sig signing (reference 1.5)."""

from __future__ import annotations

import base64

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broker.errors import ConfigError
from edge.origin.sig import Signer, load_key

NOW = 1_700_000_000


# "changeme" is Pushpin's default key, short on purpose: PyJWT warns on HMAC keys under 32 bytes
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_plain_key_hs256_exact_claims():
    signer = Signer("pushpin", load_key("changeme"))
    tok = signer.token(now=NOW)
    assert jwt.get_unverified_header(tok) == {"typ": "JWT", "alg": "HS256"}
    claims = jwt.decode(tok, b"changeme", algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"iss": "pushpin", "exp": NOW + 3600}


def test_base64_key():
    secret = b"\x00\x01binary\xff" * 4  # 36 bytes: PyJWT warns on HMAC keys under 32
    key = load_key("base64:" + base64.b64encode(secret).decode())
    tok = Signer("me", key).token(now=NOW)
    assert (
        jwt.decode(tok, secret, algorithms=["HS256"], options={"verify_exp": False})["iss"] == "me"
    )


def test_file_keys(tmp_path):
    (tmp_path / "hex").write_text("6b6579\n")
    assert load_key("file:hex", str(tmp_path)).key == b"key"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for name, k, alg in (("ec.pem", ec_key, "ES256"), ("rsa.pem", rsa_key, "RS256")):
        pem = k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (tmp_path / name).write_bytes(pem)
        key = load_key(f"file:{name}", str(tmp_path))
        assert key.algorithm == alg
        tok = Signer("iss", key).token(now=NOW)
        claims = jwt.decode(tok, k.public_key(), algorithms=[alg], options={"verify_exp": False})
        assert claims == {"iss": "iss", "exp": NOW + 3600}


@pytest.mark.parametrize("spec", ["base64:***", "file:/nonexistent/key"])
def test_bad_keys(spec):
    with pytest.raises(ConfigError):
        load_key(spec)


def test_empty_key_or_issuer_means_no_header():
    assert load_key("") is None
    assert Signer("pushpin", None).token(now=NOW) is None
    assert Signer("", load_key("k")).token(now=NOW) is None
