"""broker.ingest.httpapi: every status and message of Pushpin's publish API."""

from __future__ import annotations

import json

import pytest

from broker.ingest import httpapi

ITEM = {"channel": "c", "formats": {"http-stream": {"content": "x"}}}
GOOD = json.dumps({"items": [ITEM]}).encode()


def call(method="POST", path="/publish", headers=(), body=GOOD):
    return httpapi.handle_request(method, path, list(headers), body)


def hdr(resp, name):
    values = [v for k, v in resp.headers if k.lower() == name.lower()]
    return values[0] if values else None


@pytest.mark.parametrize("path", ["/publish", "/publish/", "/publish?x=1"])
def test_publish_ok(path):
    result = call(path=path)
    r = result.response
    assert (r.status, r.reason, r.body) == (200, "OK", b"Published\n")
    assert hdr(r, "Content-Type") == "text/plain"
    assert hdr(r, "Connection") == "close"
    assert hdr(r, "Content-Length") == str(len(r.body))
    assert [i.channel for i in result.items] == ["c"]
    assert not result.recover and result.error is None


def test_authorization_is_accepted_and_ignored():
    result = call(headers=[(b"Authorization", b"Bearer not.a.jwt")])
    assert result.response.status == 200 and len(result.items) == 1


@pytest.mark.parametrize(
    "accept,ctype,body",
    [
        ("text/plain", "text/plain", b"Published\n"),
        ("text/*", "text/plain", b"Published\n"),
        ("*/*", "text/plain", b"Published\n"),
        ("*", "text/plain", b"Published\n"),
        ("application/json", "application/json", b'{"message": "Published"}\n'),
        ("application/*", "application/json", b'{"message": "Published"}\n'),
        ("text/html, application/json;q=0.9", "application/json", b'{"message": "Published"}\n'),
        ("application/json, text/plain", "text/plain", b"Published\n"),  # last one wins (Pushpin)
    ],
)
def test_accept_negotiation(accept, ctype, body):
    r = call(headers=[("Accept", accept)]).response
    assert (r.status, hdr(r, "Content-Type"), r.body) == (200, ctype, body)
    assert json.loads(r.body)["message"] == "Published" if ctype == "application/json" else True


@pytest.mark.parametrize("accept", ["text/html", "image/png, application/xml", ""])
def test_not_acceptable(accept):
    result = call(headers=[("Accept", accept)])
    r = result.response
    assert (r.status, r.reason) == (406, "Not Acceptable")
    assert r.body == b"Not Acceptable. Supported formats are text/plain and application/json.\n"
    assert result.items == ()


def test_errors_are_text_even_when_json_accepted():
    r = call(headers=[("Accept", "application/json")], body=b"nope").response
    assert (r.status, r.body, hdr(r, "Content-Type")) == (
        400,
        b"Body is not valid JSON.\n",
        "text/plain",
    )


@pytest.mark.parametrize(
    "body,message",
    [
        (b"nope", b"Body is not valid JSON.\n"),
        (b"[1]", b"Invalid format.\n"),
        (b"{}", b"Invalid format: object does not contain 'items'\n"),
        (b'{"items": [{"channel": "c"}]}', b"Invalid format: no formats specified\n"),
        (
            b'{"items": [{"http-stream": {"content": "x"}}]}',
            b"Invalid format: publish item object does not contain 'channel'\n",
        ),
        (
            b'{"items": [{"channel": "c", "http-stream": {"action": "nope"}}]}',
            b"Invalid format: \n",
        ),
    ],
)
def test_publish_bad_request(body, message):
    result = call(body=body)
    r = result.response
    assert (r.status, r.reason, r.body) == (400, "Bad Request", message)
    assert result.items == () and result.error == message.decode()[:-1]


@pytest.mark.parametrize("path", ["/publish", "/recover/"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_method_not_allowed(path, method):
    r = call(method=method, path=path).response
    assert (r.status, r.reason) == (405, "Method Not Allowed")
    assert r.body == f"Method not allowed: {method}.\n".encode()
    assert hdr(r, "Allow") == "POST"
    assert hdr(r, "Connection") == "close"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_root(method):
    r = call(method=method, path="/", body=b"").response
    assert (r.status, r.body) == (200, b"Pushpin API\n")


def test_not_found():
    r = call(path="/nope").response
    assert (r.status, r.reason, r.body) == (404, "Not Found", b"Not Found\n")


@pytest.mark.parametrize(
    "accept,body",
    [
        (None, b"Updated\n"),
        ("application/json", b'{"message": "Updated"}\n'),
    ],
)
def test_recover(accept, body):
    headers = [("Accept", accept)] if accept else []
    result = call(path="/recover", headers=headers, body=b"")
    assert (result.response.status, result.response.body) == (200, body)
    assert result.recover and result.items == ()


# -- head checks (made by the server before reading the body) --------------------------------------


def test_post_requires_content_length():
    check = httpapi.check_head("POST", [])
    r = check.response
    assert (r.status, r.reason, r.body) == (
        411,
        "Length Required",
        b"Request requires Content-Length.\n",
    )
    assert hdr(r, "Connection") == "close"


def test_chunked_requires_content_length():
    r = httpapi.check_head("GET", [(b"Transfer-Encoding", b"chunked")]).response
    assert r.status == 411


def test_get_without_length_is_fine():
    check = httpapi.check_head("GET", [])
    assert check.response is None and check.content_length == 0


def test_body_too_large():
    ok = httpapi.check_head("POST", [("Content-Length", str(httpapi.MAX_BODY_BYTES))])
    assert ok.response is None and ok.content_length == 1_000_000
    r = httpapi.check_head("POST", [("Content-Length", "1000001")]).response
    assert (r.status, r.body) == (400, b"Request body too large.\n")


@pytest.mark.parametrize("value", ["abc", "-1", ""])
def test_bad_content_length(value):
    r = httpapi.check_head("POST", [("Content-Length", value)]).response
    assert (r.status, r.body) == (400, b"Bad Content-Length.\n")


def test_expect_continue():
    check = httpapi.check_head("POST", [("Content-Length", "2"), ("Expect", "100-continue")])
    assert check.expect_continue and check.response is None


def test_response_bytes():
    r = httpapi.respond(200, "Published\n")
    assert r.to_bytes() == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: 10\r\n\r\nPublished\n"
    )
    assert r.to_bytes("1.0").startswith(b"HTTP/1.0 200 OK\r\n")
    assert httpapi.header_too_large().body == b"Request header too large.\n"


# -- headers normalised once per request -----------------------------------------------------------


def test_norm_headers_bytes_text_and_mixed():
    raw = [(b"Content-Length", b" 12 "), (b"ACCEPT", b"application/json")]
    hs = httpapi.norm_headers(raw)
    assert list(hs) == [("content-length", "12"), ("accept", "application/json")]
    mixed = [("Content-Length", b"12"), (b"Accept", " text/plain")]
    assert list(httpapi.norm_headers(mixed)) == [("content-length", "12"), ("accept", "text/plain")]
    assert list(httpapi.norm_headers([(b"X", b"\xe9")])) == [("x", "\xe9")]  # latin-1
    # any iterable, text after bytes too (the bytes-only attempt stops at the text)
    gen = (pair for pair in [(b"A", b"1"), ("B", "2")])
    assert list(httpapi.norm_headers(gen)) == [("a", "1"), ("b", "2")]


def test_normalised_headers_are_not_normalised_again():
    hs = httpapi.norm_headers([(b"Accept", b"application/json")])
    assert httpapi.norm_headers(hs) is hs
    # a plain list that looks normalised is still normalised (only NormHeaders passes through)
    plain = [("Accept", " application/json ")]
    assert list(httpapi.norm_headers(plain)) == [("accept", "application/json")]


def test_checks_answer_the_same_for_raw_and_normalised_headers():
    raw = [(b"Content-Length", b"5"), (b"Expect", b"100-Continue"), (b"Accept", b"application/*")]
    hs = httpapi.norm_headers(raw)
    assert httpapi.check_head("POST", raw) == httpapi.check_head("POST", hs)
    assert httpapi.check_head("POST", hs).expect_continue
    assert httpapi.negotiate(raw) == httpapi.negotiate(hs) == "application/json"
    a, b = call(headers=raw), call(headers=hs)
    assert a.response == b.response and a.items == b.items
