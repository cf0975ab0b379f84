"""broker.auth: optional JWT auth of the publish API (table-driven)."""
from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broker.auth import PublishAuth, load_verify_key
from broker.errors import ConfigError

SECRET = "a-long-enough-test-secret-of-32-bytes!"


def bearer(token):
    return [(b"Authorization", f"Bearer {token}".encode())]


def test_off_accepts_and_ignores_authorization():
    auth = PublishAuth(load_verify_key(""))
    assert not auth.enabled
    assert auth.check("POST", "/publish", bearer("garbage"), time.time()) is None


@pytest.mark.parametrize("headers, reason", [
    ([], "Authorization required"),
    ([(b"Authorization", b"Basic dXNlcjpwYXNz")], "must be a Bearer JWT"),
    (bearer(jwt.encode({"iss": "x"}, "wrong-secret-wrong-secret-wrong-secret")),
     "signature verification failed"),
    (bearer(jwt.encode({"iss": "x", "exp": int(time.time()) - 600}, SECRET)), "expired"),
    (bearer("not.a.jwt"), "Invalid token"),
    (bearer(jwt.encode({"iss": "x"}, SECRET)), None),
    (bearer(jwt.encode({"iss": "x", "exp": int(time.time()) + 3600}, SECRET)), None),
])
def test_hs256(headers, reason):
    got = PublishAuth(load_verify_key(SECRET)).check("POST", "/publish", headers, time.time())
    assert (got is None) if reason is None else (reason in got)


def test_banner_needs_no_token():
    assert PublishAuth(load_verify_key(SECRET)).check("GET", "/", [], time.time()) is None


@pytest.mark.parametrize("make, alg", [
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
])
def test_public_key_file(tmp_path, make, alg):
    priv = make()
    pem = priv.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(pem)
    auth = PublishAuth(load_verify_key(f"file:{tmp_path / 'pub.pem'}"))
    assert auth.key.algorithm == alg
    good = jwt.encode({"iss": "me"}, priv, algorithm=alg)
    assert auth.check("POST", "/publish", bearer(good), time.time()) is None
    hs = jwt.encode({"iss": "me"}, SECRET, algorithm="HS256")
    assert "algorithm" in auth.check("POST", "/publish", bearer(hs), time.time())


def test_bad_key_specs():
    with pytest.raises(ConfigError):
        load_verify_key("base64:!!!")
    with pytest.raises(ConfigError):
        load_verify_key("file:/nonexistent/key.pem")
