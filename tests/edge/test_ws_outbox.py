"""edge.ws.outbox: what a WebSocket-over-HTTP connection owes its origin, with Pushpin 1.41's
``Content-Bytes-Accepted`` / ``Content-Bytes-Replayed`` and the ``one_event`` target option.
Sans-IO: no sockets, no sleeps."""

import pytest
from gripcontrol import decode_websocket_events
from hypothesis import given
from hypothesis import strategies as st

from edge.ws.outbox import AcceptError, Outbox


def events(body):
    return [(e.type, e.content) for e in decode_websocket_events(body)]


def test_everything_accepted_by_default():
    o = Outbox()
    o.add("TEXT", b"hello")
    o.add("PING", None)
    o.add("BINARY", b"\x00")
    offer = o.offer()
    assert events(offer.body) == [("TEXT", b"hello"), ("PING", None), ("BINARY", b"\x00")]
    assert (offer.messages, offer.content, offer.replayed, offer.close) == (3, 6, 0, False)
    assert offer.body == b"TEXT 5\r\nhello\r\nPING\r\nBINARY 1\r\n\x00\r\n"
    assert o.accept(offer, None) is False
    assert len(o) == 0 and o.size == 0 and not o.due()


def test_partial_acceptance_keeps_the_rest_and_says_it_is_replayed():
    o = Outbox()
    o.add("TEXT", b"hello")
    o.add("TEXT", b"world")
    offer = o.offer()
    o.accept(offer, b"7")  # "hello" and "wo"
    assert len(o) == 1 and o.size == 3
    assert not o.due()  # nothing new: wait for more (or a keep-alive / refresh)
    again = o.offer()
    assert events(again.body) == [("TEXT", b"rld")]
    assert again.replayed == 3
    o.add("TEXT", b"!")
    assert o.due()
    offer = o.offer()
    assert events(offer.body) == [("TEXT", b"rld"), ("TEXT", b"!")]
    assert offer.replayed == 3
    o.accept(offer, None)
    assert len(o) == 0 and o.offer().replayed == 0


def test_accepting_zero_replays_everything():
    o = Outbox()
    o.add("TEXT", b"abc")
    offer = o.offer()
    o.accept(offer, b"0")
    assert o.offer().replayed == 3 and len(o) == 1


@pytest.mark.parametrize("header", [b"x", b"-1", b"1_0", b"+1", b""])
def test_unparsable_or_negative_header_accepts_everything(header):
    o = Outbox()
    o.add("TEXT", b"abc")
    o.accept(o.offer(), header)
    assert len(o) == 0


def test_accepting_more_than_offered_is_an_error():
    o = Outbox()
    o.add("TEXT", b"abc")
    with pytest.raises(AcceptError) as exc:
        o.accept(o.offer(), b"4")
    assert exc.value.close_code == 1011


def test_close_after_the_messages_and_its_content_must_be_accepted_too():
    o = Outbox()
    o.add("TEXT", b"abc")
    o.close(1000, "bye")
    offer = o.offer()
    assert events(offer.body) == [("TEXT", b"abc"), ("CLOSE", b"\x03\xe8bye")]
    assert (offer.content, offer.close_content) == (3, 5)
    with pytest.raises(AcceptError):
        o.accept(offer, b"3")  # the content, not the close
    o2 = Outbox()
    o2.add("TEXT", b"abc")
    o2.close(1000, "bye")
    offer = o2.offer()
    assert o2.accept(offer, b"2") is False  # content held back: the close waits for it
    assert not o2.close_sent
    again = o2.offer()
    assert events(again.body) == [("TEXT", b"c"), ("CLOSE", b"\x03\xe8bye")]
    assert o2.accept(again, b"6") is True and o2.close_sent
    assert not o2.due() and len(o2) == 0


def test_bare_close_without_a_code():
    o = Outbox()
    o.close(None, "")
    assert o.due()
    offer = o.offer()
    assert offer.body == b"CLOSE\r\n" and offer.close_content == 0
    assert o.accept(offer, b"0") is True
    assert not o.due()


def test_one_event_sends_one_event_per_request_and_the_close_alone():
    o = Outbox(one_event=True)
    o.add("TEXT", b"a")
    o.add("TEXT", b"b")
    o.close(1000, "")
    bodies = []
    while o.due():
        offer = o.offer()
        bodies.append(events(offer.body))
        o.accept(offer, None)
    assert bodies == [[("TEXT", b"a")], [("TEXT", b"b")], [("CLOSE", b"\x03\xe8")]]
    assert o.close_sent


def test_one_event_needs_progress():
    o = Outbox(one_event=True)
    o.add("TEXT", b"a")
    o.add("TEXT", b"b")
    offer = o.offer()
    assert offer.maxed
    with pytest.raises(AcceptError):
        o.accept(offer, b"0")


def test_messages_queued_during_a_request_are_not_accepted_by_it():
    o = Outbox()
    o.add("TEXT", b"a")
    offer = o.offer()
    o.add("TEXT", b"")  # arrives while the request is in flight
    o.accept(offer, None)
    assert events(o.offer().body) == [("TEXT", b"")]


@given(
    st.lists(st.binary(max_size=8), min_size=1, max_size=6),
    st.lists(st.integers(0, 40), max_size=10),
)
def test_acceptance_never_loses_or_duplicates_content(messages, accepts):
    """Whatever the origin accepts, request by request, the bytes it accepted are exactly the
    client's messages in order, each byte once."""
    o = Outbox()
    for m in messages:
        o.add("BINARY", m)
    total = b"".join(messages)
    got = b""
    for n in [*accepts, None]:
        if not len(o):
            break
        offer = o.offer()
        offered = b"".join(c or b"" for _, c in events(offer.body))
        assert offer.replayed <= len(offered)
        k = offer.content if n is None else min(n, offer.content)
        o.accept(offer, None if n is None else b"%d" % k)
        got += offered[:k]
    assert got == total


def test_one_event_is_a_target_option():
    from edge.routes import parse_routes

    table = parse_routes(["* 127.0.0.1:80,over_http,one_event", "a.example 127.0.0.1:81"])
    assert table.routes[0].targets[0].one_event is True
    assert table.routes[1].targets[0].one_event is False
