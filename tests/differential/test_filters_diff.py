"""Filters, the same from Pushpin and gripcast (issue 13): build-id (``id_format``, ``%I``,
``%(x)I``, ``id_encoding=hex``, ``%%``) on published items and on the initial body,
skip-self, skip-users, require-sub, var-subst, and a format's ``content-filters`` against
the subscription's (a mismatch or a filter error ends the stream, answers a long-poll 502)."""

from __future__ import annotations

import json
import time

import pytest

from tests.differential.harness import HttpClient, OriginRequest, OriginResponse, same_as_pushpin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _stream(channels: str, meta: str | None = None, body: bytes = b"start\n") -> OriginResponse:
    headers = [("Content-Type", "text/plain"), ("Grip-Hold", "stream"), ("Grip-Channel", channels)]
    if meta is not None:
        headers.append(("Grip-Set-Meta", meta))
    return OriginResponse(200, headers, body)


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode()


def _routes(origin) -> str:
    return f"* 127.0.0.1:{origin.port}\n"


def test_build_id_renders_ids_and_percent(each_system, origin, uniq):
    ch = uniq("bid")
    origin.respond(
        "/bid",
        _stream(f"{ch}; filter=build-id", "id_format=fixed", b"start 100%% real\n"),
    )
    origin.respond(
        "/hex",
        _stream(f"{ch}; filter=build-id", "id_format=C3PO, id_encoding=hex", b"hex\n"),
    )
    seen = {}
    for system in each_system(routes=_routes(origin)):
        with HttpClient(system.client_port) as a, HttpClient(system.client_port) as b:
            a.send(_get("/bid"))
            b.send(_get("/hex"))
            a.read_until(b"start 100% real\n")
            b.read_until(b"hex\n")
            system.publish(
                ch,
                {
                    "http-stream": {
                        "content": "id: %I\ndata: 100%% of %(R2D2)I\n\n",
                        "content-filters": ["build-id"],
                    }
                },
            )
            _, body_a = a.response(until=b"R2D2\n\n")
            _, body_b = b.response(until=b"\n\n")
        seen[system.name] = (body_a, body_b)
    assert seen["gripcast"] == (
        b"start 100% real\nid: fixed\ndata: 100% of R2D2\n\n",
        b"hex\nid: 4333504f\ndata: 100% of 52324432\n\n",
    )
    same_as_pushpin(seen)


def test_build_id_needs_content_filters_to_match(each_system, origin, uniq):
    """A published format naming content filters other than the subscription's ends the
    stream (Pushpin 1.36: "content filter mismatch"); one naming none is fine."""
    ch = uniq("cf")
    origin.respond("/cf", _stream(f"{ch}; filter=build-id", "id_format=x"))
    origin.respond("/plain", _stream(ch, None, b"plain\n"))
    seen = {}
    for system in each_system(routes=_routes(origin)):
        with HttpClient(system.client_port) as a, HttpClient(system.client_port) as b:
            a.send(_get("/cf"))
            b.send(_get("/plain"))
            a.read_until(b"start\n")
            b.read_until(b"plain\n")
            system.publish(ch, {"http-stream": {"content": "one %%\n"}})  # no content-filters
            a.read_until(b"one %\n")
            b.read_until(b"one %%\n")
            system.publish(
                ch, {"http-stream": {"content": "two %%\n", "content-filters": ["build-id"]}}
            )
            a.read_until(b"two %\n")
            _, body_b = b.response()  # [] != [build-id]: the plain subscriber's stream ends
            system.publish(ch, {"http-stream": {"content": "three\n", "content-filters": []}})
            _, body_a = a.response()  # [build-id] != []: ends too
        seen[system.name] = (body_a, body_b)
    assert seen["gripcast"] == (b"start\none %\ntwo %\n", b"plain\none %%\n")
    same_as_pushpin(seen)


def test_filter_error_ends_the_stream(each_system, origin, uniq):
    ch = uniq("err")
    origin.respond("/vs", _stream(f"{ch}; filter=var-subst", "user=al"))
    origin.respond("/id", _stream(f"{ch}; filter=build-id", "id_format=x", b"id\n"))
    seen = {}
    for system in each_system(routes=_routes(origin)):
        with HttpClient(system.client_port) as a, HttpClient(system.client_port) as b:
            a.send(_get("/vs"))
            b.send(_get("/id"))
            a.read_until(b"start\n")
            b.read_until(b"id\n")
            system.publish(ch, {"http-stream": {"content": "hi %(user)s\n"}})
            a.read_until(b"hi al\n")  # build-id fails on %(user)s: b's stream ends
            system.publish(ch, {"http-stream": {"content": "50%\n"}})  # var-subst fails
            _, body_a = a.response()
            _, body_b = b.response()
        seen[system.name] = (body_a, body_b)
    assert seen["gripcast"] == (b"start\nhi al\n", b"id\n")
    same_as_pushpin(seen)


def test_build_id_initial_body_error(each_system, origin, uniq):
    """``%I`` in the initial body has no id (Pushpin renders it with no channel ids): the
    head goes out and the response ends."""
    ch = uniq("init")
    origin.respond("/init", _stream(f"{ch}; filter=build-id", "id_format=x", b"id: %I\n"))
    seen = {}
    for system in each_system(routes=_routes(origin)):
        with HttpClient(system.client_port) as c:
            c.send(_get("/init"))
            head, body = c.response()
        seen[system.name] = (head.comparable(), body)
    assert seen["gripcast"] == ((200, "OK", (("content-type", "text/plain"),)), b"")
    same_as_pushpin(seen)


def _meta_stream(channels: str):
    def answer(req: OriginRequest) -> OriginResponse:
        user = req.path.partition("user=")[2]
        return _stream(channels, f"user={user}", f"hello {user}\n".encode())

    return answer


def test_skip_self_skip_users_require_sub_var_subst(each_system, origin, uniq):
    chat, alerts, side = uniq("chat"), uniq("alerts"), uniq("side")
    origin.respond(
        "/f",
        _meta_stream(
            f"{chat}; filter=skip-self; filter=var-subst, "
            f"{alerts}; filter=skip-users; filter=require-sub"
        ),
    )
    origin.respond("/g", _meta_stream(f"{alerts}; filter=require-sub, {side}"))
    seen = {}
    for system in each_system(routes=_routes(origin)):
        with (
            HttpClient(system.client_port) as alice,
            HttpClient(system.client_port) as bob,
            HttpClient(system.client_port) as carol,
        ):
            alice.send(_get("/f?user=alice"))
            bob.send(_get("/f?user=bob"))
            carol.send(_get("/g?user=carol"))
            alice.read_until(b"hello alice\n")
            bob.read_until(b"hello bob\n")
            carol.read_until(b"hello carol\n")
            system.publish(
                chat,
                {"http-stream": {"content": "from alice to %(user)s\n"}},
                meta={"sender": "alice"},
            )
            system.publish(
                alerts, {"http-stream": {"content": "a1\n"}}, meta={"skip_users": "x, bob"}
            )
            system.publish(alerts, {"http-stream": {"content": "a2\n"}}, meta={"require_sub": side})
            system.publish(chat, {"http-stream": {"content": "x\n"}}, meta={"sender": "x"})
            system.publish(alerts, {"http-stream": {"content": "end\n"}})
            _, a = alice.response(until=b"end\n")
            _, b = bob.response(until=b"end\n")
            _, c = carol.response(until=b"end\n")
        seen[system.name] = (a, b, c)
    assert seen["gripcast"] == (
        b"hello alice\na1\nx\nend\n",
        b"hello bob\nfrom alice to bob\nx\nend\n",
        b"hello carol\na1\na2\nend\n",
    )
    same_as_pushpin(seen)


def test_long_poll_build_id_and_mismatch(each_system, origin, uniq):
    ch = uniq("lp")
    origin.respond(
        "/poll",
        OriginResponse(
            200,
            [
                ("Content-Type", "text/plain"),
                ("Grip-Hold", "response"),
                ("Grip-Channel", f"{ch}; filter=build-id"),
                ("Grip-Set-Meta", "id_format=x"),
                ("Grip-Timeout", "20"),
            ],
            b"timeout 100%%\n",
        ),
    )

    def poll(system, fmt: dict) -> tuple:
        with HttpClient(system.client_port) as c:
            c.send(_get("/poll"))
            origin.wait_requests(1)
            origin.take()
            deadline = time.monotonic() + 10
            while True:  # the hold is in place once a publish reaches it
                system.publish(ch, {"http-response": fmt})
                if c.read_for(0.2):
                    break
                assert time.monotonic() < deadline, "the long-poll never got the publish"
            head, body = c.response()
        return head.comparable(), body

    seen = {}
    for system in each_system(routes=_routes(origin)):
        ok = poll(system, {"body": "%(a)I 100%%\n", "content-filters": ["build-id"]})
        bad = poll(system, {"body": "x\n", "content-filters": ["var-subst"]})
        seen[system.name] = (ok, bad)
    assert seen["gripcast"] == (
        ((200, "OK", (("content-type", "text/plain"),)), b"a 100%\n"),
        (
            (502, "Bad Gateway", (("content-type", "text/plain"),)),
            b"Error while proxying to origin.\n",
        ),
    )
    same_as_pushpin(seen)


def test_django_eventstream_flow(each_system, origin, uniq):
    """What django-eventstream 5.3 answers and publishes (its reliable channel ``test``):
    a stream held with ``prev-id`` and a next link, ``build-id`` and ``skip-users``, ids
    rendered from ``id_format``, the data's ``%`` doubled.  Client bytes compared (gripcast
    asks the next link at once when its history does not know the ``prev-id``: issue 13
    item 3 deals with the origin's side)."""
    ch = uniq("events-test")
    user = uniq("user")

    def answer(req: OriginRequest) -> OriginResponse:
        first = "link=next" not in req.path
        body = b":" + b" " * 64 + b"\n\nevent: stream-open\ndata:\n\n" if first else b""
        if first and "last=" in req.path:  # what it stored after Last-Event-ID: escaped
            body += b'event: message\nid: test:1\ndata: "stored 10%% off"\n\n'
        prev = "1" if "last=" in req.path else "0"
        headers = [
            ("Content-Type", "text/event-stream"),
            ("Grip-Hold", "stream"),
            (
                "Grip-Channel",
                f"{ch}; prev-id={prev}; filter=build-id; filter=skip-users, "
                f"{user}; filter=require-sub",
            ),
            ("Grip-Link", "</events/?link=next&recover=true>; rel=next"),
            ("Grip-Set-Meta", f"id_format=test:%({ch})s, user=anonymous"),
            ("Grip-Keep-Alive", "event: keep-alive\\ndata:\\n\\n; format=cstring; timeout=20"),
        ]
        return OriginResponse(200, headers, body)

    origin.respond("/events/", answer)
    seen = {}
    for system in each_system(routes=_routes(origin)):
        with HttpClient(system.client_port) as c:
            c.send(_get("/events/"))
            c.read_until(b"event: stream-open\ndata:\n\n")
            system.publish(
                ch,
                {
                    "http-stream": {
                        "content": 'event: message\nid: %I\ndata: "event 1 is 100%% real"\n\n',
                        "content-filters": ["build-id"],
                    }
                },
                id="1",
                prev_id="0",
            )
            _, body = c.response(until=b"real")
        with HttpClient(system.client_port) as c:
            c.send(_get("/events/?last=1"))
            c.read_until(b"stored")
            system.publish(
                ch,
                {
                    "http-stream": {
                        "content": 'event: message\nid: %I\ndata: "2%%"\n\n',
                        "content-filters": ["build-id"],
                    }
                },
                id="2",
                prev_id="1",
            )
            _, again = c.response(until=b'"2%"\n\n')
        seen[system.name] = (body, again)
    pad = b":" + b" " * 64 + b"\n\nevent: stream-open\ndata:\n\n"
    assert seen["gripcast"] == (
        pad + b'event: message\nid: test:1\ndata: "event 1 is 100% real"\n\n',
        pad
        + b'event: message\nid: test:1\ndata: "stored 10% off"\n\n'
        + b'event: message\nid: test:2\ndata: "2%"\n\n',
    )
    same_as_pushpin(seen)


def _woh_events(*events: tuple[str, bytes]) -> bytes:
    out = b""
    for kind, content in events:
        out += f"{kind} {len(content):x}\r\n".encode() + content + b"\r\n"
    return out


def test_websocket_build_id_and_content_filters(each_system, origin, uniq):
    """WebSocket-over-HTTP: ``%%`` is ``%`` under build-id, ``%I`` has no id on a WebSocket
    (Pushpin 1.36 passes no channel ids there: the message is dropped), and a message whose
    ``content-filters`` differ from the subscription's is dropped (the connection stays)."""
    from websockets.sync.client import connect

    ch = uniq("ws")
    subscribe = json.dumps({"type": "subscribe", "channel": ch, "filters": ["build-id"]})
    set_meta = json.dumps({"type": "set-meta", "name": "id_format", "value": "x"})

    def answer(req: OriginRequest) -> OriginResponse:
        body = b""
        if req.body.startswith(b"OPEN"):
            body = b"OPEN\r\n" + _woh_events(
                ("TEXT", b"c:" + set_meta.encode()), ("TEXT", b"c:" + subscribe.encode())
            )
        return OriginResponse(
            200,
            [
                ("Content-Type", "application/websocket-events"),
                ("Sec-WebSocket-Extensions", "grip"),
            ],
            body,
        )

    origin.respond("/ws", answer)
    seen = {}
    for system in each_system(routes=f"* 127.0.0.1:{origin.port},over_http\n"):
        got = []
        with connect(f"ws://127.0.0.1:{system.client_port}/ws", open_timeout=10) as ws:
            origin.wait_requests(1)
            deadline = time.monotonic() + 10
            while True:  # subscribed once a publish reaches the client
                system.publish(ch, {"ws-message": {"content": "ready", "content-filters": []}})
                system.publish(
                    ch, {"ws-message": {"content": "100%% ready", "content-filters": ["build-id"]}}
                )
                try:
                    got.append(ws.recv(timeout=0.3))
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "the subscription never got a publish"
            for content in ("id %I", "%(a)I and 1%%"):
                system.publish(
                    ch, {"ws-message": {"content": content, "content-filters": ["build-id"]}}
                )
            system.publish(ch, {"ws-message": {"content": "no filters"}})
            got.append(ws.recv(timeout=10))
            got.append(ws.recv(timeout=10))
        seen[system.name] = got
    assert seen["gripcast"] == ["100% ready", "a and 1%", "no filters"]
    same_as_pushpin(seen)


def test_debug_route_tells_the_reason(each_system, origin, uniq):
    """On a ``debug`` route the client gets Pushpin's reason: appended to the stream before
    its end, or as the long-poll's 502 body."""
    ch = uniq("dbg")
    origin.respond("/s", _stream(f"{ch}; filter=build-id", "id_format=x"))
    origin.respond("/v", _stream(f"{ch}; filter=var-subst", "user=al", b"v\n"))
    origin.respond("/i", _stream(f"{ch}; filter=build-id", "id_format=x", b"id: %I\n"))
    origin.respond(
        "/p",
        OriginResponse(
            200,
            [("Grip-Hold", "response"), ("Grip-Channel", f"{ch}; filter=var-subst")],
            b"timeout\n",
        ),
    )
    seen = {}
    for system in each_system(routes=f"*,debug 127.0.0.1:{origin.port}\n"):
        with (
            HttpClient(system.client_port) as a,
            HttpClient(system.client_port) as b,
            HttpClient(system.client_port) as p,
        ):
            a.send(_get("/s"))
            b.send(_get("/v"))
            a.read_until(b"start\n")
            b.read_until(b"v\n")
            p.send(_get("/p"))
            origin.wait_requests(3)
            deadline = time.monotonic() + 10
            while True:  # the long-poll is held once a publish reaches it
                system.publish(ch, {"http-response": {"body": "%(nope)s"}})
                if p.read_for(0.2):
                    break
                assert time.monotonic() < deadline, "the long-poll never got the publish"
            system.publish(
                ch, {"http-stream": {"content": "%(nope)s", "content-filters": ["var-subst"]}}
            )
            _, body_a = a.response()
            _, body_b = b.response()
            head, body_p = p.response()
        with HttpClient(system.client_port) as i:
            i.send(_get("/i"))
            _, body_i = i.response()
        seen[system.name] = (body_a, body_b, head.status, body_p, body_i)
    assert seen["gripcast"] == (
        b"start\n\n\ncontent filter mismatch: subscription=build-id message=var-subst\n",
        b"v\n\n\nfilter error: var-subst: No such variable 'nope' at position 7\n",
        502,
        b"filter error: var-subst: No such variable 'nope' at position 7\n",
        b"\n\nfilter error: build-id: No ID specified and no default ID in context at position 5\n",
    )
    same_as_pushpin(seen)


def test_build_id_on_no_hold_answers_and_next_links(each_system, origin, uniq):
    """``build-id`` renders the body of an answer without a hold, and of a next link."""
    ch = uniq("nh")
    grip = [("Content-Type", "text/plain"), ("Grip-Set-Meta", "id_format=x")]
    origin.respond(
        "/once",
        OriginResponse(200, [*grip, ("Grip-Channel", f"{ch}; filter=build-id")], b"100%%\n"),
    )
    origin.respond(
        "/bad", OriginResponse(200, [*grip, ("Grip-Channel", f"{ch}; filter=build-id")], b"%I\n")
    )
    origin.respond(
        "/first",
        OriginResponse(
            200,
            [*grip, ("Grip-Channel", f"{ch}; filter=build-id"), ("Grip-Link", "</next>; rel=next")],
            b"first 1%%\n",
        ),
    )
    origin.respond(
        "/next",
        OriginResponse(
            200,
            [*grip, ("Grip-Hold", "stream"), ("Grip-Channel", f"{ch}; filter=build-id")],
            b"next 2%%\n",
        ),
    )
    seen = {}
    for system in each_system(routes=_routes(origin)):
        out = []
        for path in ("/once", "/bad"):
            with HttpClient(system.client_port) as c:
                c.send(_get(path))
                head, body = c.response()
                out.append((head.status, body))
        with HttpClient(system.client_port) as c:
            c.send(_get("/first"))
            c.read_until(b"next 2%\n")
            # the next link's hold subscribes after its body went out (both systems): publish
            # until one arrives, keep what came up to the first
            deadline = time.monotonic() + 10
            while b"pub 3%\n" not in c.data:
                system.publish(ch, {"http-stream": {"content": "pub 3%%\n"}})
                c.read_for(0.2)
                assert time.monotonic() < deadline, "the next link's hold never got a publish"
            _, body = c.response(until=b"pub 3%\n")
            out.append((200, body[: body.index(b"pub 3%\n") + 7]))
        seen[system.name] = out
    assert seen["gripcast"] == [
        (200, b"100%\n"),
        (502, b"Error while proxying to origin.\n"),
        (200, b"first 1%\nnext 2%\npub 3%\n"),
    ]
    same_as_pushpin(seen)
