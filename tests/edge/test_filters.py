"""edge.grip.filters: Pushpin 1.36's filters (skip-self, skip-users, require-sub, var-subst,
build-id with id_format/%I/%%, content-filters), and what the delivery path does with them."""

from __future__ import annotations

import pytest
import trio

from broker.wire import Envelope
from edge.grip import filters
from edge.grip.filters import FilterError, IdRenderer, apply, render, render_id, var_subst
from edge.grip.instruct import Channel, Hold
from edge.grip.session import ResponseSession, StreamSession
from edge.sync.deliver import Deliverer
from edge.sync.hub import Hub
from tests.edge.puresends import use_pure_sends
from tests.edge.test_deliver import PipeEnd


@pytest.mark.parametrize(
    "flt, sub, pub, channels, content, expect",
    [
        (("skip-self",), {"user": "a"}, {"sender": "a"}, (), b"x", None),
        (("skip-self",), {"user": "a"}, {"sender": "b"}, (), b"x", b"x"),
        (("skip-self",), {}, {"sender": ""}, (), b"x", b"x"),
        (("skip-users",), {"user": "b"}, {"skip_users": "a, b ,c"}, (), b"x", None),
        (("skip-users",), {"user": "d"}, {"skip_users": "a,b"}, (), b"x", b"x"),
        (("require-sub",), {}, {"require_sub": "side"}, ("main",), b"x", None),
        (("require-sub",), {}, {"require_sub": "side"}, ("main", "side"), b"x", b"x"),
        (("require-sub",), {}, {}, ("main",), b"x", b"x"),
        (("var-subst",), {"user": "al"}, {}, (), b"hi %(user)s 100%%", b"hi al 100%"),
        (("var-subst", "skip-self"), {"user": "al"}, {"sender": "al"}, (), b"%(user)s", None),
        # a delivery filter and a content filter together: require-sub passes, then var-subst
        (
            ("require-sub", "var-subst"),
            {"u": "x"},
            {"require_sub": "b"},
            ("a", "b"),
            b"%(u)s",
            b"x",
        ),
        (("unknown",), {}, {}, (), b"%(x)s 100%", b"%(x)s 100%"),  # ignored, as Pushpin
        (("build-id",), {"id_format": "c:%(c)s"}, {}, (), b"id: %I\n100%%", b"id: c:7\n100%"),
    ],
)
def test_filters(flt, sub, pub, channels, content, expect):
    assert apply(flt, sub, pub, channels, content, {"c": "7"}) == expect


@pytest.mark.parametrize(
    "content, error",
    [
        (b"%(nope)s", "No such variable 'nope' at position 7"),
        (b"%(user)d", "Unknown directive 'd' at position 7"),
        (b"%d", "Unknown directive 'd' at position 1"),
        (b"%s", "Directive 's' requires argument at position 1"),
        (b"%()s", "Directive 's' requires argument at position 3"),
        (b"50%", "Expected directive after '%' at position 2"),
        (b"%(user", "Unterminated field starting at position 1"),
        (b"%(", "Expected character after '(' at position 1"),
        (b"%(user)", "Expected directive after ')' at position 6"),
        (b"%(a\\", "Expected character after '\\' at position 3"),
        (b"% x", "Unknown directive ' ' at position 1"),
    ],
)
def test_var_subst_errors(content, error):
    with pytest.raises(FilterError) as exc:
        var_subst(content, {"user": "u"})
    assert str(exc.value) == f"var-subst: {error}"


def test_var_subst_escapes_in_the_argument():
    meta = {"food\\fruit(type)": "apples", "name": "Alice"}
    assert var_subst(b"%(name)s eats %(food\\\\fruit(type\\))s 10%% of the time", meta) == (
        b"Alice eats apples 10% of the time"
    )


# -- build-id (Pushpin's idformattest cases, then the session context) --------------------------


def test_render_id():
    assert render_id("This template has no directives.", {}) == b"This template has no directives."
    assert render_id("a:%(a)s,b:%(b)s 10%%", {"a": "1", "b": "x"}) == b"a:1,b:x 10%"
    with pytest.raises(FilterError, match="No such variable 'b'"):
        render_id("%(b)s", {"a": "1", "b": None})  # a channel held without prev-id


def test_id_content_rendering():
    meta = {"id_format": "C3PO"}
    ids = {"ch": "1"}
    assert IdRenderer(meta, ids).process(b"This content has no directives.") == (
        b"This content has no directives."
    )
    assert IdRenderer(meta, ids).process(b"The ID is %I.") == b"The ID is C3PO."
    hexed = {"id_format": "C3PO", "id_encoding": "hex"}
    assert IdRenderer(hexed, ids).process(b"The ID is %I.") == b"The ID is 4333504f."
    assert IdRenderer(hexed, ids).process(b"The ID is %(R2D2)I.") == b"The ID is 52324432."
    assert IdRenderer(meta, ids).process(b"100%% real") == b"100% real"


def test_id_content_rendering_in_pieces():
    r = IdRenderer({"id_format": "x", "id_encoding": "hex"}, {})
    out = b""
    for piece in (b"The ID is %", b"(", b"R2D", b"2", b")", b"I."):
        out += r.update(piece)
        assert out in (b"The ID is ", b"The ID is 52324432.")
    assert out == b"The ID is 52324432." and r.finalize() == b""
    r = IdRenderer({"id_format": "x"}, {})
    assert r.update(b"50%") == b"50"
    with pytest.raises(FilterError, match="^build-id: Expected directive after '%' at position 0$"):
        r.finalize()


@pytest.mark.parametrize(
    "meta, ids, content, error",
    [
        ({}, {"c": "1"}, b"no directives", "no sub meta 'id_format'"),
        ({"id_format": "%(d)s"}, {"c": "1"}, b"x", "failed to render ID: No such variable 'd'"),
        ({"id_format": "x", "id_encoding": "b64"}, {}, b"x", "unsupported encoding: b64"),
        ({"id_format": "x"}, {}, b"%I", "No ID specified and no default ID in context"),
        ({"id_format": "x"}, {"c": "1"}, b"%(user)s", "Unknown directive 's' at position 7"),
    ],
)
def test_build_id_errors(meta, ids, content, error):
    with pytest.raises(FilterError, match=f"^build-id: {error}"):
        render(("build-id",), meta, content, ids)


def test_django_eventstream_event():
    """What django-eventstream 5.3 subscribes with and publishes (reliable channel 'test')."""
    meta = {"id_format": "test:%(events-test)s", "user": "anonymous"}
    hold_channels = [("events-test", "4"), ("user-anonymous", None)]
    ids = filters.prev_ids(hold_channels, {}, "events-test", "5")
    assert ids == {"events-test": "5", "user-anonymous": None}
    content = b'event: message\nid: %I\ndata: "event 1 is 100%% real"\n\n'
    assert render(("build-id", "skip-users"), meta, content, ids) == (
        b'event: message\nid: test:5\ndata: "event 1 is 100% real"\n\n'
    )
    # the next item on another channel sees the last id delivered on this one
    assert filters.prev_ids(hold_channels, {"events-test": "5"}, "user-anonymous", "k") == ids


def test_content_filters_match():
    assert filters.content_match(("build-id", "skip-users"), None)
    assert filters.content_match(("build-id", "skip-users"), ["build-id"])
    assert filters.content_match(None, [])
    assert not filters.content_match(None, ["build-id"])
    assert not filters.content_match(("skip-users",), ["build-id"])
    assert not filters.content_match(("var-subst", "build-id"), ["build-id", "var-subst"])
    assert filters.mismatch_reason(("skip-users",), ["build-id"]) == (
        "content filter mismatch: subscription= message=build-id"
    )


def test_proxy_renderer():
    assert filters.proxy_renderer([("skip-self",), ("var-subst",)], {}) is None
    r = filters.proxy_renderer([("skip-users", "build-id"), ("build-id",)], {"id_format": "x"})
    assert r is not None and r.process(b"id: c:5\ndata: 100%%\n") == b"id: c:5\ndata: 100%\n"
    with pytest.raises(FilterError, match="No ID specified"):
        r.process(b"%I")
    with pytest.raises(FilterError, match="no sub meta 'id_format'"):
        filters.proxy_renderer([("build-id",)], {})


# -- the delivery path ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def pure_send_batch(monkeypatch):
    """Pipes stand in for sockets; the compiled twin uses send(2), which pipes refuse."""
    use_pure_sends(monkeypatch)


DJANGO_HOLD = Hold(
    mode="stream",
    channels=(
        Channel("events-test", "4", ("build-id", "skip-users")),
        Channel("user-anonymous", None, ("require-sub",)),
    ),
    meta={"id_format": "test:%(events-test)s", "user": "anonymous"},
)


def _stream_session(pipe, hold=DJANGO_HOLD, chunked=False) -> StreamSession:
    s = StreamSession(pipe, hold, chunked, now=0.0)
    s.writing = False
    return s


def _item(seq, content, content_filters=None, id_=None, prev=None, channel="events-test", **meta):
    fmt: dict = {"action": "send", "content": content}
    if content_filters is not None:
        fmt["content-filters"] = content_filters
    return Envelope(
        channel=channel,
        seq=seq,
        epoch="e",
        formats={"http-stream": fmt},
        id=id_,
        prev_id=prev,
        meta=meta,
    )


def test_delivery_renders_ids_per_session_and_keeps_the_shared_path():
    async def main():
        hub = Hub()
        p1, p2 = PipeEnd(), PipeEnd()
        s1 = _stream_session(p1)
        plain = _stream_session(p2, Hold(mode="stream", channels=(Channel("events-test"),)))
        hub.add(s1, ["events-test", "user-anonymous"], 0)
        hub.add(plain, ["events-test"], 0)
        d = Deliverer(hub, 1 << 20, spawn=None)
        ev = b"event: message\nid: %I\ndata: 100%% real\n\n"
        await d.deliver(
            [
                _item(1, ev, ["build-id"], "5", "4"),
                _item(2, ev, ["build-id"], "6", "5", skip_users="anonymous"),
                _item(3, ev, ["build-id"], "7", "6"),
            ],
            now=1.0,
        )
        assert p1.read() == (
            b"event: message\nid: test:5\ndata: 100% real\n\n"
            b"event: message\nid: test:7\ndata: 100% real\n\n"
        )
        assert s1.cursors() == {"events-test": "7"}
        # the item skip-users left out counts as seen: the next id on another channel knows it
        await d.deliver([_item(4, ev, ["build-id"], "8", "7", skip_users="anonymous")], 1.0)
        assert s1.cursors() == {"events-test": "8"} and p1.read() == b""
        # a subscriber without build-id: Pushpin ends its stream (content filter mismatch)
        assert p2.read() == b"" and plain.done
        assert not s1.done
        p1.close()
        p2.close()

    trio.run(main)


def test_content_filter_mismatch_and_filter_error_end_the_stream():
    async def main():
        hub = Hub()
        p1, p2 = PipeEnd(), PipeEnd()
        s1 = _stream_session(p1, chunked=True)
        s2 = _stream_session(p2, chunked=True)
        hub.add(s1, ["events-test"], 0)
        hub.add(s2, ["events-test"], 0)
        d = Deliverer(hub, 1 << 20, spawn=None)
        # the subscription's content filters are [build-id]: a message naming none ends it
        await d.deliver([_item(1, b"a\n", [], "5", "4")], now=1.0)
        assert p1.read() == b"0\r\n\r\n" and s1.done and s2.done
        p1.close()
        p2.close()
        hub = Hub()
        p3 = PipeEnd()
        s3 = _stream_session(p3, chunked=True)
        hub.add(s3, ["events-test"], 0)
        d = Deliverer(hub, 1 << 20, spawn=None)
        await d.deliver([_item(1, b"x\n", None, "5", "4"), _item(2, b"%(x)s\n", None, "6", "5")], 1)
        assert p3.read() == b"2\r\nx\n\r\n0\r\n\r\n" and s3.done  # build-id: %s is unknown
        p3.close()

    trio.run(main)


def test_long_poll_filter_error_is_a_502():
    async def main():
        hub = Hub()
        hold = Hold(mode="response", channels=(Channel("c", None, ("var-subst",)),), body=b"t")
        s = ResponseSession(hold, keep_alive=True, deadline=9)
        ok = ResponseSession(
            Hold(mode="response", channels=(Channel("c", None, ("var-subst",)),), meta={"n": "v"}),
            keep_alive=True,
            deadline=9,
        )
        hub.add(s, ["c"], 0)
        hub.add(ok, ["c"], 0)
        d = Deliverer(hub, 1 << 20, spawn=None)
        fmt = {"action": "send", "code": 200, "reason": "OK", "headers": [], "body": b"%(n)s"}
        await d.deliver(
            [Envelope(channel="c", seq=1, epoch="e", formats={"http-response": fmt})], 1
        )
        assert s.result.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        assert s.result.endswith(b"\r\n\r\nError while proxying to origin.\n")
        assert ok.result.endswith(b"\r\n\r\nv")

    trio.run(main)


def test_unfiltered_subscribers_share_one_chunk_and_sseid():
    """No subscription filters and no content-filters: the shared path, ``%(id)s`` rendered."""

    async def main():
        hub = Hub()
        pipes = [PipeEnd() for _ in range(3)]
        for p in pipes:
            hub.add(_stream_session(p, Hold(mode="stream"), chunked=True), ["c"], 0)
        d = Deliverer(hub, 1 << 20, spawn=None)
        await d.deliver([_item(1, b"id: %(id)s\n100%%\n", channel="c")], now=1.0)
        assert {p.read() for p in pipes} == {b"E\r\nid: e:1\n100%%\n\r\n"}
        for p in pipes:
            p.close()

    trio.run(main)


# -- proxy content: the initial body of a stream instruct -------------------------------------


def _instruct(headers, body):
    from edge.grip.instruct import parse_instruct

    return parse_instruct(200, "OK", headers, body)


def test_initial_stream_body_goes_through_build_id():
    h = [
        ("Grip-Hold", "stream"),
        ("Grip-Channel", "events-test; prev-id=4; filter=build-id; filter=skip-users"),
        ("Grip-Set-Meta", "id_format=test:%(events-test)s"),
    ]
    hold = _instruct(h, b"event: message\nid: test:4\ndata: 100%% real\n\n")
    assert hold.body == b"event: message\nid: test:4\ndata: 100% real\n\n"
    assert hold.body_error is None
    # %I has no id in the initial body (Pushpin passes no channel ids there): the response
    # ends after the head
    bad = _instruct(h, b"id: %I\n\n")
    assert bad.body == b"" and bad.body_error == (
        "filter error: build-id: No ID specified and no default ID in context at position 5"
    )
    # without build-id the body is untouched; a response hold's (timeout) body too
    assert _instruct([("Grip-Hold", "stream"), ("Grip-Channel", "c")], b"100%%").body == b"100%%"
    resp = [("Grip-Hold", "response"), ("Grip-Channel", "c; filter=build-id")]
    assert _instruct(resp, b"100%%").body == b"100%%"
    # no id_format: an error only when there is a body to render
    nometa = [("Grip-Hold", "stream"), ("Grip-Channel", "c; filter=build-id")]
    assert _instruct(nometa, b"").body_error is None
    assert "no sub meta 'id_format'" in (_instruct(nometa, b"x").body_error or "")


def test_stream_body_in_pieces_goes_through_build_id():
    from broker.errors import InstructError
    from edge.grip.holds import _proxy_filtered

    hold = _instruct(
        [
            ("Grip-Hold", "stream"),
            ("Grip-Channel", "c; filter=build-id"),
            ("Grip-Set-Meta", "id_format=x"),
        ],
        b"",
    )

    async def pieces(*ps):
        for p in ps:
            yield p

    async def collect(it):
        return [p async for p in it]

    async def main():
        got = await collect(_proxy_filtered(hold, pieces(b"100%", b"% and 5", b"0%%")))
        assert b"".join(got) == b"100% and 50%"
        with pytest.raises(InstructError, match="Expected directive after '%'"):
            await collect(_proxy_filtered(hold, pieces(b"ok", b"50%")))

    trio.run(main)


def test_long_poll_body_patch_goes_through_the_content_filters():
    async def main():
        hub = Hub()
        hold = Hold(
            mode="response",
            channels=(Channel("c", None, ("var-subst",)),),
            meta={"who": "al"},
            body=b'{"msg": "none"}',
        )
        s = ResponseSession(hold, keep_alive=True, deadline=9)
        hub.add(s, ["c"], 0)
        d = Deliverer(hub, 1 << 20, spawn=None)
        patch = [{"op": "replace", "path": "/msg", "value": "hi %(who)s"}]
        fmt = {"action": "send", "code": 200, "headers": [], "body": None, "body-patch": patch}
        await d.deliver(
            [Envelope(channel="c", seq=1, epoch="e", formats={"http-response": fmt})], 1
        )
        assert s.result.endswith(b'\r\n\r\n{"msg":"hi al"}')

    trio.run(main)
