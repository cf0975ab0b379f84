"""Publisher-id reliability (issue 13 item 3), the same from Pushpin and gripcast: a prev-id gap
on a stream fetches the next link with ``Grip-Last``, on a long-poll re-requests the origin, and
a stream hold with a prev-id but no next link ends after its initial response.

Each scenario uses a fresh channel, so the broker's history does not hold the origin's prev-id
and gripcast falls back to Pushpin's behaviour.  Both systems do their first-subscription update
about a second after the hold (Pushpin's default): the tests wait for it before publishing.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.differential.harness import (
    HttpClient,
    OriginRequest,
    OriginResponse,
    same_as_pushpin,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROUTES = "* 127.0.0.1:{port}\n"


def _requests(reqs: list[OriginRequest]) -> list[tuple]:
    return [r.comparable() for r in reqs]


class _Script:
    """An origin answer that changes once the test says the gap happened."""

    def __init__(self, before: OriginResponse, after: OriginResponse) -> None:
        self.before, self.after = before, after
        self.gap = threading.Event()

    def __call__(self, req: OriginRequest) -> OriginResponse:
        return self.after if self.gap.is_set() else self.before


def test_stream_gap_fetches_the_next_link_with_grip_last(each_system, origin):
    hold = [
        ("Content-Type", "text/plain"),
        ("Grip-Hold", "stream"),
        ("Grip-Channel", "rs; prev-id=1"),
        ("Grip-Link", "</rs/next>; rel=next"),
    ]
    origin.respond("/rs", OriginResponse(200, hold, b"start\n"))
    script = _Script(
        OriginResponse(200, hold, b""),
        OriginResponse(
            200,
            [
                ("Content-Type", "text/plain"),
                ("Grip-Hold", "stream"),
                ("Grip-Channel", "rs; prev-id=3"),
                ("Grip-Link", "</rs/next>; rel=next"),
            ],
            b"two\nthree\n",
        ),
    )
    origin.respond("/rs/next", script)
    seen = {}
    # (gripcast logs a next link's answer at debug level: the readiness signal below)
    for system in each_system(
        routes=ROUTES.format(port=origin.port), gripcast={"log_level": "debug"}
    ):
        script.gap.clear()
        with HttpClient(system.client_port) as c:
            c.send(b"GET /rs HTTP/1.1\r\nHost: example.com\r\n\r\n")
            c.read_until(b"start\n")
            origin.wait_requests(2)  # the first-subscription fetch (~1 s)
            # both drop an item published while that fetch's answer is in flight (its prev-ids
            # replace the session's): wait until each has taken the answer
            system.wait_log("/rs/next route=" if system.name == "pushpin" else "next link answered")
            script.gap.set()
            system.publish("rs", {"http-stream": {"content": "three\n"}}, id="3", prev_id="2")
            c.read_until(b"two\nthree\n")
            origin.wait_requests(3)
            system.publish("rs", {"http-stream": {"content": "four\n"}}, id="4", prev_id="3")
            head, body = c.response(until=b"four\n")
        seen[system.name] = (head.comparable(), body, _requests(origin.take()))
    start = ("GET", "/rs", (), b"")
    nxt = ("GET", "/rs/next", (("grip-last", "rs; last-id=1"),), b"")
    assert seen["gripcast"] == (
        (200, "OK", (("content-type", "text/plain"),)),
        b"start\ntwo\nthree\nfour\n",
        [start, nxt, nxt],
    )
    same_as_pushpin(seen)


def test_long_poll_gap_re_requests_the_origin_with_grip_last(each_system, origin):
    hold = OriginResponse(
        200,
        [
            ("Content-Type", "text/plain"),
            ("Grip-Hold", "response"),
            ("Grip-Channel", "rp; prev-id=1"),
            ("Grip-Timeout", "30"),
        ],
        b"timeout\n",
    )
    script = _Script(hold, OriginResponse(200, [("Content-Type", "text/plain")], b"two three\n"))
    origin.respond("/rp", script)
    seen = {}
    for system in each_system(routes=ROUTES.format(port=origin.port)):
        script.gap.clear()
        with HttpClient(system.client_port) as c:
            c.send(b"GET /rp?c=1 HTTP/1.1\r\nHost: example.com\r\nX-Client: a\r\n\r\n")
            origin.wait_requests(2)  # the first-subscription retry (~1 s)
            script.gap.set()
            # the retried hold is in place once a publish reaches it: publish until answered
            deadline = time.monotonic() + 10
            while not c.read_for(0.3):
                system.publish("rp", {"http-response": {"body": "three\n"}}, id="3", prev_id="2")
                assert time.monotonic() < deadline, "the long-poll was never re-requested"
            head, body = c.response()
        seen[system.name] = (head.comparable(), body, _requests(origin.take()))
    first = ("GET", "/rp?c=1", (("x-client", "a"),), b"")
    retry = ("GET", "/rp?c=1", (("grip-last", "rp; last-id=1"), ("x-client", "a")), b"")
    assert seen["gripcast"] == (
        (200, "OK", (("content-type", "text/plain"),)),
        b"two three\n",
        [first, retry, retry],
    )
    same_as_pushpin(seen)


def test_stream_prev_id_without_next_link_ends_after_the_initial_body(each_system, origin):
    origin.respond(
        "/rn",
        OriginResponse(
            200,
            [
                ("Content-Type", "text/plain"),
                ("Grip-Hold", "stream"),
                ("Grip-Channel", "rn; prev-id=1"),
            ],
            b"start\n",
        ),
    )
    seen = {}
    for system in each_system(routes=ROUTES.format(port=origin.port)):
        with HttpClient(system.client_port) as c:
            c.send(b"GET /rn HTTP/1.1\r\nHost: example.com\r\n\r\n")
            head, body = c.response(timeout=10)
        seen[system.name] = (head.comparable(), body, _requests(origin.take()))
    assert seen["gripcast"] == (
        (200, "OK", (("content-type", "text/plain"),)),
        b"start\n",
        [("GET", "/rn", (), b"")],
    )
    same_as_pushpin(seen)
