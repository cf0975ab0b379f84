"""The channel API against a running cluster (broker + 2 edges, real processes), with the memory
store and a real redis-server: history after a cursor is what was published (ids from the
publish answer), truncation, counts that follow clients on both edges within the stated
staleness (the Pushpin stats socket off), a killed edge's counts dropping out, the command
socket, and the JWT auth on every call (plus the CLI with --key/--iss)."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import jwt
import pytest
import zmq

from broker.ingest import tnetstring
from tests.helpers import wait_for
from tests.integration.cluster import Cluster, Origin, StreamClient
from tests.redis_server import RedisServer, redis_available

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MAX_ITEMS = 50
COUNTS_MAX_AGE_S = 6.0
STALENESS_S = 3.0  # 1 s report interval + 1-2 s (docs/channel-api.md), on a loaded machine
KEY = "channel-api-secret-of-at-least-32-bytes"


def hold(req):
    channel = req.path.rsplit("/", 1)[-1]
    return (
        200,
        {"Content-Type": "text/plain", "Grip-Hold": "stream", "Grip-Channel": channel},
        (b"[open]\n"),
    )


class AnyChannel(dict):
    """The origin's routes: ``/s/<channel>`` holds a stream on ``<channel>``."""

    def get(self, path, default=None):
        return hold if path.startswith("/s/") else default


@pytest.fixture(scope="module", params=["memory", "redis"])
def cluster(request, tmp_path_factory):
    """One cluster per store, with the publish JWT auth on (every call here sends a token).
    The counts are the broker's whatever the store: the Redis cluster has no edges."""
    redis = None
    extra = {}
    if request.param == "redis":
        if not redis_available():
            pytest.skip("missing component: redis-server")
        redis = RedisServer().start()
        extra["store"] = f"redis://127.0.0.1:{redis.port}/0"
    try:
        with Origin(AnyChannel()) as origin:
            with Cluster(
                tmp_path_factory.mktemp(request.param),
                [f"* 127.0.0.1:{origin.port}"],
                edges=2 if request.param == "memory" else 0,
                separate_ports=True,
                history_max_items=MAX_ITEMS,
                channel_counts_max_age_s=COUNTS_MAX_AGE_S,
                publish_jwt_key=KEY,
                publish_jwt_iss="realm",
                **extra,
            ) as cl:
                cl.store = request.param
                with httpx.Client(timeout=10) as cl.http:  # one client: its setup costs
                    yield cl
    finally:
        if redis is not None:
            redis.close()


def token(key=KEY, iss="realm", exp=3600):
    return jwt.encode({"iss": iss, "exp": int(time.time()) + exp}, key, algorithm="HS256")


def auth():
    return {"Authorization": "Bearer " + token()}


def publish(cl, items, accept="application/json"):
    r = cl.http.post(
        cl.publish_url + "/publish/",
        json={"items": items},
        headers={"Accept": accept, **auth()},
    )
    assert r.status_code == 200, r.text
    return r


def text_item(channel, text, **kw):
    return {"channel": channel, "formats": {"http-stream": {"content": text}}, **kw}


def get(cl, path, headers=None, **kw):
    return cl.http.get(cl.publish_url + path, headers=auth() if headers is None else headers, **kw)


def test_history_after_a_cursor_is_what_was_published(cluster):
    ch = "hist-" + cluster.store
    texts = [f"m{i}\n" for i in range(6)]
    items = [text_item(ch, t, **({"id": "pub-3"} if i == 3 else {})) for i, t in enumerate(texts)]
    r = publish(cluster, items)
    ids = r.json()["items"]
    assert r.json()["message"] == "Published"
    assert [x["seq"] for x in ids] == [1, 2, 3, 4, 5, 6] and all(x["stored"] for x in ids)
    epoch = ids[0]["epoch"]
    assert ids[0]["id"] == f"{epoch}:1" and ids[3]["id"] == "pub-3"
    # the plain answer stays Pushpin's
    assert publish(cluster, [text_item(ch + "-x", "y")], accept="text/plain").text == "Published\n"

    for after, first in ((ids[1]["id"], 2), ("pub-3", 4), (None, 0)):
        params = {"after": after} if after else {}
        doc = get(cluster, f"/channels/{ch}/items", params=params).json()
        assert doc["truncated"] is False
        got = [(i["id"], i["formats"]["http-stream"]["content"]) for i in doc["items"]]
        want = [(f"{epoch}:{n + 1}", texts[n]) for n in range(first, 6)]
        assert got == want
        assert doc["items"][3 - first].get("publisher_id") == "pub-3" if first <= 3 else True
    # paging
    doc = get(cluster, f"/channels/{ch}/items", params={"limit": 4}).json()
    assert (len(doc["items"]), doc["more"], doc["next"]) == (4, True, f"{epoch}:4")
    # the channel's state
    info = get(cluster, f"/channels/{ch}").json()
    assert (info["last_seq"], info["last_id"], info["history"]["items"]) == (6, f"{epoch}:6", 6)


def test_truncated_cursor_says_so(cluster):
    ch = "trunc-" + cluster.store
    r = publish(cluster, [text_item(ch, f"t{i}") for i in range(300)])
    epoch = r.json()["items"][0]["epoch"]
    doc = get(cluster, f"/channels/{ch}/items", params={"after": f"{epoch}:1"}).json()
    assert doc["truncated"] is True
    first = doc["items"][0]["seq"]
    # the oldest kept (Redis trims approximately: at least MAX_ITEMS, less than one more node)
    assert 2 < first <= 300 - MAX_ITEMS + 1
    assert doc["items"][0]["formats"]["http-stream"]["content"] == f"t{first - 1}"
    for after in ("deadbeef00000000:5", "no-such-id", f"{epoch}:999"):
        doc = get(cluster, f"/channels/{ch}/items", params={"after": after}).json()
        assert doc["truncated"] is True and doc["items"][0]["seq"] == first
    # bad input: clear 400s, bounded answers
    for params in ({"limit": 5000}, {"limit": 0}, {"after": ""}, {"after": "a\nb"}, {"x": 1}):
        r = get(cluster, f"/channels/{ch}/items", params=params)
        assert r.status_code == 400 and r.text.startswith("Invalid") or "parameter" in r.text
    doc = get(cluster, f"/channels/{ch}/items", params={"limit": 1000}).json()
    assert len(doc["items"]) <= 300 and doc["items"][-1]["seq"] == 300


def counts(cl, ch):
    return get(cl, f"/channels/{ch}").json()


@pytest.mark.parametrize("cluster", ["memory"], indirect=True)  # store-independent
def test_counts_follow_clients_on_both_edges(cluster):
    """With the Pushpin stats socket off (no stats_spec): the edges report anyway."""
    ch = "cnt-" + cluster.store
    clients = [StreamClient(cluster.url(f"/s/{ch}", edge)) for edge in (0, 0, 1)]
    try:
        for c in clients:
            c.read_until(b"[open]\n")
        t0 = time.monotonic()
        wait_for(lambda: counts(cluster, ch)["subscribers"] == 3, STALENESS_S, "counts never 3")
        seen = time.monotonic() - t0
        doc = counts(cluster, ch)
        assert doc["by_mode"] == {"response": 0, "stream": 3, "ws": 0}
        assert doc["edges"] == 2 and doc["live"] is True
        assert doc["counts_age_s"] is not None and doc["counts_age_s"] <= STALENESS_S
        listing = get(cluster, "/channels", params={"prefix": "cnt-"}).json()
        row = next(r for r in listing["channels"] if r["channel"] == ch)
        assert row["subscribers"] == 3
        clients.pop().close()  # the one on edge 1
        t0 = time.monotonic()
        wait_for(lambda: counts(cluster, ch)["subscribers"] == 2, STALENESS_S, "never 2")
        print(f"counts seen after {seen:.2f} s; the leave after {time.monotonic() - t0:.2f} s")
    finally:
        for c in clients:
            c.close()


def command(cl, method, **args):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        sock.connect(cl.command_uri)
        sock.send(tnetstring.dumps({b"id": b"q1", b"method": method.encode(), b"args": args}))
        return tnetstring.loads(sock.recv())
    finally:
        sock.close()


def test_command_socket(cluster):
    ch = "cmd-" + cluster.store
    ids = publish(cluster, [text_item(ch, "a"), text_item(ch, "b")]).json()["items"]
    rep = command(cluster, "channel-items", channel=ch.encode(), after=ids[0]["id"].encode())
    assert rep[b"success"] is True and rep[b"id"] == b"q1"
    assert [i[b"formats"][b"http-stream"][b"content"] for i in rep[b"value"][b"items"]] == [b"b"]
    rep = command(cluster, "channel-info", channel=ch.encode())
    assert rep[b"value"][b"last_seq"] == 2
    rep = command(cluster, "channels", prefix=b"cnt-", limit=5)
    assert rep[b"success"] is True and isinstance(rep[b"value"][b"channels"], list)
    rep = command(cluster, "channel-items", channel=ch.encode(), limit=100_000)
    assert (rep[b"success"], rep[b"condition"]) == (False, b"bad-request")


@pytest.mark.parametrize("cluster", ["memory"], indirect=True)  # store-independent
def test_killed_edge_counts_drop_out(cluster):
    """Last in the module: kills edge 1."""
    ch = "dead-edge"
    client = StreamClient(cluster.url(f"/s/{ch}", 1))
    try:
        client.read_until(b"[open]\n")
        wait_for(lambda: counts(cluster, ch)["subscribers"] == 1, STALENESS_S, "never counted")
        edge = cluster.edge_procs[1].proc
        os.kill(edge.pid, signal.SIGKILL)
        edge.wait()
        t0 = time.monotonic()
        wait_for(
            lambda: counts(cluster, ch)["subscribers"] == 0,
            COUNTS_MAX_AGE_S + 3,
            "a dead edge's counts stayed",
        )
        gone = time.monotonic() - t0
        assert gone <= COUNTS_MAX_AGE_S + 2.5
        assert counts(cluster, ch)["edges"] == 1
        print(f"a killed edge's counts dropped out after {gone:.2f} s")
    finally:
        client.close()


# -- auth --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cluster", ["memory"], indirect=True)  # store-independent
def test_auth_refuses_missing_or_bad_tokens_on_every_call(cluster, capsys, monkeypatch):
    calls = ["/channels", "/channels?prefix=a", "/channels/a", "/channels/a/items?limit=1"]
    bad_headers = [
        {},
        {"Authorization": "Bearer " + token(key="another-key-of-at-least-32-bytes!!")},
        {"Authorization": "Bearer " + token(iss="other")},
        {"Authorization": "Bearer " + token(exp=-3600)},
        {"Authorization": "Basic abc"},
    ]
    for path in calls:
        for headers in bad_headers:
            r = get(cluster, path, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
        assert get(cluster, path).status_code == 200, path
    assert command(cluster, "channels")[b"success"] is True  # Curve is the socket's auth

    # the CLI, with the publish command's auth options (in this process: no interpreter start)
    from gripcast.cli import main

    ch = "cli-" + cluster.store
    publish(cluster, [text_item(ch, "hello from the cli test\n", id="i1")])
    monkeypatch.delenv("GRIP_URL", raising=False)
    assert main(["history", ch, "--url", cluster.publish_url]) == 1
    assert "401" in capsys.readouterr().err
    creds = ["--url", cluster.publish_url, "--key", KEY, "--iss", "realm"]
    assert main(["history", ch, *creds, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"][0]["publisher_id"] == "i1"
    assert main(["history", ch, *creds]) == 0
    assert "hello from the cli test" in capsys.readouterr().out
    monkeypatch.setenv("GRIP_URL", f"{cluster.publish_url}/?iss=realm&key={KEY}")
    assert main(["channels", "cli-"]) == 0
    assert "live channels" in capsys.readouterr().out
