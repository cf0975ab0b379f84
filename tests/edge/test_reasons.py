"""One reason-phrase table (Pushpin's, ``broker.items.status_reason``) for broker and edge.

Python's http.HTTPStatus says "Content Too Large" for 413 since 3.13; Pushpin always says
"Request Entity Too Large", and "Undefined Reason" for a code it has no phrase for."""

import pytest

import edge.http1.headers
from broker.items import STATUS_REASONS, status_reason
from edge.grip.instruct import Hold, parse_instruct
from edge.http1 import responses

GRIP = ("Content-Type", "text/plain")


def test_table():
    assert status_reason(413) == "Request Entity Too Large"
    assert status_reason(414) == "Request-URI Too Long"
    assert status_reason(299) == "Undefined Reason"
    assert status_reason(421) == "Undefined Reason"  # not in Pushpin's table (Python has one)
    assert not hasattr(edge.http1.headers, "reason_for")  # the second table is gone


@pytest.mark.parametrize(
    "code, reason", [(413, "Request Entity Too Large"), (299, "Undefined Reason")]
)
def test_grip_status_without_reason(code, reason):
    hold = parse_instruct(
        200,
        "OK",
        [GRIP, ("Grip-Hold", "response"), ("Grip-Channel", "a"), ("Grip-Status", str(code))],
        b"",
    )
    assert (hold.code, hold.reason) == (code, reason)
    assert responses.timeout(hold).startswith(b"HTTP/1.1 %d %s\r\n" % (code, reason.encode()))


@pytest.mark.parametrize("code", [413, 299])
def test_edge_responses_use_the_table(code):
    line = b"HTTP/1.1 %d %s\r\n" % (code, STATUS_REASONS.get(code, "Undefined Reason").encode())
    assert responses.error(code, "x").startswith(line)
    assert responses.head(code, "", []).startswith(line)
    assert responses.published(Hold(mode="response", channels=()), {"code": code}).startswith(line)
