"""The ``conncheck`` and ``refresh`` commands (reference 6.2) against Pushpin and gripcast: the
same replies on the command socket, and the WebSocket-over-HTTP origin the same requests.

A raw WebSocket client (fixed ``Sec-WebSocket-Key``) connects through a WebSocket-over-HTTP
route; the origin subscribes it to a channel; a published message read by the client proves the
subscription is in place.  The connection id (a fresh UUID on both systems) is replaced by
``CID`` in what is compared."""

from __future__ import annotations

import json
import time

import pytest
import tnetstring
import zmq

from tests.differential.harness import OriginRequest, OriginResponse, open_ws, same_as_pushpin
from tests.differential.test_ws_diff import KEY, WOH, encode, events, woh_requests
from tests.integration.wsraw import client_frame, read_frame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def command(spec: str, method: str, args: dict | None = None) -> dict:
    """One request on the command socket, as Pushpin's tools/command.py sends it (REQ)."""
    s = zmq.Context.instance().socket(zmq.REQ)
    s.linger = 0
    try:
        s.connect(spec)
        req: dict = {b"id": b"c1", b"method": method.encode()}
        if args is not None:
            req[b"args"] = args
        s.send(tnetstring.dumps(req))
        assert s.poll(10_000), f"no answer to {method}"
        return tnetstring.loads(s.recv())
    finally:
        s.close()


def conncheck_until(spec: str, ids: list[bytes], want: list[bytes], timeout: float = 10.0) -> dict:
    """conncheck until its value is ``want`` (a closed connection leaves a little later)."""
    deadline = time.monotonic() + timeout
    while True:
        rep = command(spec, "conncheck", {b"ids": ids})
        if rep.get(b"value") == want or time.monotonic() > deadline:
            return rep
        time.sleep(0.05)


def first_published(system, s, ch: str) -> tuple[int, bytes]:
    """Publish until the client gets the message (Pushpin subscribes the connection a moment
    after the client saw the 101): the first frame it reads."""
    deadline = time.monotonic() + 10
    while True:
        system.publish(ch, {"ws-message": {"content": "hi"}})
        s.settimeout(0.5)
        try:
            return read_frame(s)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
        finally:
            s.settimeout(10)


def anonymous(reply: dict, cid: bytes) -> dict:
    """``reply`` with the connection id ``cid`` shown as ``CID``."""
    value = reply.get(b"value")
    if isinstance(value, list):
        return {**reply, b"value": [b"CID" if v == cid else v for v in value]}
    return reply


def test_conncheck_and_refresh(each_system, origin, uniq):
    path = "/" + uniq("cmds")
    ch = uniq("cmds-ch")

    def app(req: OriginRequest) -> OriginResponse:
        evs = events(req.body)
        headers = [("Content-Type", WOH)]
        if evs and evs[0][0] == "OPEN":
            sub = b"c:" + json.dumps({"type": "subscribe", "channel": ch}).encode()
            headers.append(("Sec-WebSocket-Extensions", 'grip; message-prefix=""'))
            return OriginResponse(200, headers, encode([("OPEN", None), ("TEXT", sub)]))
        if any(e[0] == "CLOSE" for e in evs):
            return OriginResponse(200, headers, encode([("CLOSE", b"\x03\xe8")]))
        return OriginResponse(200, headers, b"")

    origin.respond(path, app)
    seen = {}
    for system in each_system(routes=f"* 127.0.0.1:{origin.port},over_http\n"):
        spec = system.command_spec
        s = open_ws(system, origin, path, key=KEY)
        try:
            cid = origin.wait_requests(1)[0].header("Connection-Id") or ""
            bcid = cid.encode()
            frames = [first_published(system, s, ch)]  # subscribed now

            replies = [
                command(spec, "conncheck", {b"ids": [bcid, b"no-such-id"]}),
                command(spec, "conncheck", {b"ids": []}),
                command(spec, "conncheck", {}),
                command(spec, "conncheck", {b"ids": [bcid, 5]}),
                command(spec, "refresh", {}),
                command(spec, "refresh", {b"cid": 5}),
                command(spec, "refresh", {b"cid": b"no-such-id"}),
                command(spec, "refresh", {b"cid": bcid}),
            ]
            origin.wait_requests(2)  # the refresh request
            replies.append(command(spec, "refresh", {b"channel": ch.encode()}))
            origin.wait_requests(3)
            replies.append(command(spec, "refresh", {b"channel": b"no-such-channel"}))
            s.sendall(client_frame(8, b"\x03\xe8"))
            frames.append(read_frame(s))  # the origin's close answer
            origin.wait_requests(4)
            replies.append(conncheck_until(spec, [bcid], []))
            replies.append(command(spec, "refresh", {b"cid": bcid}))
        finally:
            s.close()
        reqs = origin.take()
        seen[system.name] = (
            frames,
            [anonymous(r, bcid) for r in replies],
            [events(r.body) for r in reqs],
            woh_requests(reqs),
            {r.header("Connection-Id") == cid for r in reqs},
        )
    ok = {b"id": b"c1", b"success": True, b"value": None}

    def failed(condition: bytes) -> dict:
        return {b"id": b"c1", b"success": False, b"condition": condition}

    assert seen["gripcast"][:3] == (
        [(1, b"hi"), (8, b"\x03\xe8")],
        [
            {**ok, b"value": [b"CID"]},
            {**ok, b"value": []},
            failed(b"bad-request"),
            failed(b"bad-request"),
            failed(b"bad-request"),
            failed(b"bad-request"),
            failed(b"item-not-found"),
            ok,
            ok,
            ok,
            {**ok, b"value": []},
            failed(b"item-not-found"),
        ],
        [[("OPEN", None)], [], [], [("CLOSE", b"\x03\xe8")]],
    )
    assert seen["gripcast"][4] == {True}  # every request is this connection's
    same_as_pushpin(seen)
