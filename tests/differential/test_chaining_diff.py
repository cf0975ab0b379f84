"""Chaining (``upstream_key``), the same from Pushpin and gripcast: a request whose
``Grip-Sig`` verifies against ``upstream_key`` keeps its ``Grip-*`` headers (none added) and
gets the origin's GRIP instructions passed through untouched; a wrongly signed one is an
ordinary client (its ``Grip-*`` headers dropped, the hold acted on)."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.differential.harness import HttpClient, OriginResponse, same_as_pushpin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

UPSTREAM_KEY = "upstream-shared-secret-0123456789abcdef"


def _token(key: str) -> str:
    return jwt.encode({"iss": "front", "exp": int(time.time()) + 3600}, key, algorithm="HS256")


def _hold(ch: str) -> OriginResponse:
    return OriginResponse(
        200,
        [("Content-Type", "text/plain"), ("Grip-Hold", "stream"), ("Grip-Channel", ch)],
        b"start\n",
    )


def test_trusted_upstream_gets_grip_passed_through(each_system, origin, uniq):
    ch = uniq("up")
    origin.respond("/up", _hold(ch))
    token = _token(UPSTREAM_KEY)
    seen = {}
    for system in each_system(
        routes=f"* 127.0.0.1:{origin.port}\n", proxy={"upstream_key": UPSTREAM_KEY}
    ):
        with HttpClient(system.client_port) as c:
            c.send(
                f"GET /up HTTP/1.1\r\nHost: example.com\r\nGrip-Sig: {token}\r\n"
                "Grip-Last: x; last-id=1\r\nGrip-Feature: status\r\n\r\n".encode()
            )
            head, body = c.response()
        (req,) = origin.take()
        seen[system.name] = (
            head.comparable(),
            body,
            req.comparable(keep=["grip-sig", "grip-last", "grip-feature"]),
        )
    assert seen["gripcast"] == (
        (
            200,
            "OK",
            (("content-type", "text/plain"), ("grip-channel", ch), ("grip-hold", "stream")),
        ),
        b"start\n",
        (
            "GET",
            "/up",
            (("grip-feature", "status"), ("grip-last", "x; last-id=1"), ("grip-sig", token)),
            b"",
        ),
    )
    same_as_pushpin(seen)


def test_wrongly_signed_upstream_is_an_ordinary_client(each_system, origin, uniq):
    ch = uniq("notup")
    origin.respond("/notup", _hold(ch))
    token = _token("some-other-key-0123456789abcdef-xyz")
    seen = {}
    for system in each_system(
        routes=f"* 127.0.0.1:{origin.port}\n", proxy={"upstream_key": UPSTREAM_KEY}
    ):
        with HttpClient(system.client_port) as c:
            c.send(
                f"GET /notup HTTP/1.1\r\nHost: example.com\r\nGrip-Sig: {token}\r\n"
                "Grip-Last: x; last-id=1\r\n\r\n".encode()
            )
            c.read_until(b"start\n")
            system.publish(ch, {"http-stream": {"content": "held\n"}})
            head, body = c.response(until=b"held\n")
        (req,) = origin.take()
        sig = req.header("Grip-Sig")
        seen[system.name] = (
            head.comparable(),
            body,
            req.comparable(keep=["grip-last"]),
            sig != token,
        )
    assert seen["gripcast"] == (
        (200, "OK", (("content-type", "text/plain"),)),
        b"start\nheld\n",
        ("GET", "/notup", (), b""),
        True,
    )
    same_as_pushpin(seen)
