"""broker.ingest.auth: optional JWT auth of the publish API (table-driven)."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broker.errors import ConfigError
from broker.ingest.auth import PublishAuth, load_verify_key

SECRET = "a-long-enough-test-secret-of-32-bytes!"


def bearer(token):
    return [(b"Authorization", f"Bearer {token}".encode())]


def test_off_accepts_and_ignores_authorization():
    auth = PublishAuth(load_verify_key(""))
    assert not auth.enabled
    assert auth.check("POST", "/publish", bearer("garbage"), time.time()) is None


@pytest.mark.parametrize(
    "headers, reason",
    [
        ([], "Authorization required"),
        ([(b"Authorization", b"Basic dXNlcjpwYXNz")], "must be a Bearer JWT"),
        (
            bearer(jwt.encode({"iss": "x"}, "wrong-secret-wrong-secret-wrong-secret")),
            "signature verification failed",
        ),
        (bearer(jwt.encode({"iss": "x", "exp": int(time.time()) - 600}, SECRET)), "expired"),
        (bearer("not.a.jwt"), "Invalid token"),
        # a token without exp would stay valid for ever once leaked: refused
        (bearer(jwt.encode({"iss": "x"}, SECRET)), "'exp' claim is required"),
        (bearer(jwt.encode({"iss": "x", "exp": int(time.time()) + 3600}, SECRET)), None),
    ],
)
def test_hs256(headers, reason):
    got = PublishAuth(load_verify_key(SECRET)).check("POST", "/publish", headers, time.time())
    assert (got is None) if reason is None else (reason in got)


def test_banner_needs_no_token():
    assert PublishAuth(load_verify_key(SECRET)).check("GET", "/", [], time.time()) is None


@pytest.mark.parametrize(
    "make, alg",
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ],
)
def test_public_key_file(tmp_path, make, alg):
    priv = make()
    pem = priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    auth = PublishAuth(load_verify_key(f"file:{tmp_path / 'pub.pem'}"))
    assert auth.key.algorithm == alg
    good = jwt.encode({"iss": "me", "exp": int(time.time()) + 60}, priv, algorithm=alg)
    assert auth.check("POST", "/publish", bearer(good), time.time()) is None
    hs = jwt.encode({"iss": "me", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert "algorithm" in auth.check("POST", "/publish", bearer(hs), time.time())


def test_bad_key_specs():
    with pytest.raises(ConfigError):
        load_verify_key("base64:!!!")
    with pytest.raises(ConfigError):
        load_verify_key("file:/nonexistent/key.pem")


def test_pubcontrol_token_is_accepted():
    """pubcontrol (and gripcontrol through it) adds exp = now + 3600 to the claim it is given."""
    from pubcontrol.utilities import _gen_auth_jwt_header

    header = _gen_auth_jwt_header({"iss": "publisher"}, SECRET.encode())
    auth = PublishAuth(load_verify_key(SECRET), iss="publisher")
    assert (
        auth.check("POST", "/publish", [(b"Authorization", header.encode())], time.time()) is None
    )


@pytest.mark.parametrize(
    "claims, reason",
    [
        ({"iss": "publisher", "aud": "gripcast"}, None),
        ({"iss": "someone-else", "aud": "gripcast"}, "wrong issuer"),
        ({"aud": "gripcast"}, "'iss' claim is required"),
        ({"iss": "publisher", "aud": "other"}, "wrong audience"),
        ({"iss": "publisher"}, "'aud' claim is required"),
    ],
)
def test_iss_and_aud_checked_when_configured(claims, reason):
    auth = PublishAuth(load_verify_key(SECRET), iss="publisher", aud="gripcast")
    token = jwt.encode({**claims, "exp": int(time.time()) + 60}, SECRET)
    got = auth.check("POST", "/publish", bearer(token), time.time())
    assert (got is None) if reason is None else (reason in got)


def test_grip_sig_token_is_not_a_publish_token_by_config():
    """publish_jwt_key equal to sig_key is refused: the edges send Grip-Sig tokens signed with
    sig_key (and an exp) to every origin, which could replay them as publish tokens."""
    from broker.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides={"publish_jwt_key": SECRET, "sig_key": SECRET})
    assert any(p.startswith("publish_jwt_key: equals sig_key") for p in info.value.problems)
    with pytest.raises(ConfigError):  # the same bytes spelled differently
        import base64

        load_config(
            env={},
            overrides={
                "publish_jwt_key": "base64:" + base64.b64encode(SECRET.encode()).decode(),
                "sig_key": SECRET,
            },
        )
    load_config(env={}, overrides={"publish_jwt_key": SECRET, "sig_key": SECRET + "2"})


@pytest.mark.parametrize("spec", ["base64:", "file:{empty}", "file:{blank}"])
def test_empty_key_is_a_config_error(tmp_path, spec):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "blank").write_bytes(b"  \n")
    spec = spec.format(empty=tmp_path / "empty", blank=tmp_path / "blank")
    with pytest.raises(ConfigError) as info:
        load_verify_key(spec)
    assert "empty key" in info.value.problems[0]
    from edge.origin.sig import load_key

    with pytest.raises(ConfigError):  # sig_key too (the edge signs with it; same parser)
        load_key(spec)
