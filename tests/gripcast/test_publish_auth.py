"""gripcast publish's credentials, checked against gripcontrol's own parser (no sockets)."""

from __future__ import annotations

import argparse

import jwt
import pytest
from gripcontrol import parse_grip_uri

from gripcast.cli import build_parser
from gripcast.publish import auth_header, decode_key, parse_grip_url, target_from_args

URLS = [
    "http://localhost:5561",
    "http://localhost:5561/",
    "http://localhost:5561/?iss=realm&key=secret",
    "http://localhost:5561/path/?iss=realm&key=base64:c2VjcmV0Kys%2B&other=1",
    "https://api.example.com/realm/123?key=base64:AAEC%2F%2B8%3D&iss=123",
    "http://h:1/?key=k+ey",
]


@pytest.mark.parametrize("url", URLS)
def test_parse_grip_url_as_gripcontrol(url: str):
    ours = parse_grip_url(url)
    theirs = parse_grip_uri(url)
    assert ours.control_uri == theirs["control_uri"]
    assert ours.iss == theirs.get("control_iss")
    key = theirs.get("key")
    assert ours.key == (key.encode() if isinstance(key, str) else key)


def test_auth_header_is_gripcontrols_jwt():
    key = b"a secret of thirty-two bytes ..."
    header = auth_header("realm", key, now=1_000_000.0)
    assert header is not None and header.startswith("Bearer ")
    claims = jwt.decode(header[7:], key, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"iss": "realm", "exp": 1_000_000 + 3600}
    assert auth_header(None, b"tok", now=0) == "Bearer tok"  # key alone: a bearer token
    assert auth_header("realm", None, now=0) is None


def test_decode_key():
    assert decode_key("base64:AAEC") == b"\x00\x01\x02"
    assert decode_key("plain") == b"plain"
    with pytest.raises(ValueError):
        decode_key("base64:!!")


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["publish", *argv, "ch", "hi"])


def test_flags_override_grip_url():
    env = {"GRIP_URL": "http://h:5561/?iss=a&key=base64:AAEC"}
    t = target_from_args(_args(), env)
    assert (t.control_uri, t.iss, t.key) == ("http://h:5561", "a", b"\x00\x01\x02")
    t = target_from_args(_args("--iss", "b", "--key", "k"), env)
    assert (t.control_uri, t.iss, t.key) == ("http://h:5561", "b", b"k")
    t = target_from_args(_args("--url", "http://x:1", "--key", "k"), env)
    assert (t.control_uri, t.iss, t.key) == ("http://x:1", None, b"k")
    t = target_from_args(_args("--port-offset", "3"), {})
    assert (t.control_uri, t.iss, t.key) == ("http://127.0.0.1:5564", None, None)
