"""Stats socket, side by side: Pushpin's ``activity`` and ``counts`` packets and its JSON format.

One GET through a route is one ``activity`` (count 1, with ``route`` when the route has an
explicit ``id``) and one ``counts`` (``requests-received`` 1) on the stats socket of each system; with ``stats_format = json``
the frames are ``<type> J<compact JSON, keys sorted>``.  ``from`` names the process
(``pushpin-handler_<pid>``, ``gripcast-broker_<pid>``) and is compared by its presence only.
"""

from __future__ import annotations

import json
import time

import pytest
import zmq

from bench.procs import free_ports
from tests.differential.harness import HttpClient, OriginResponse, same_as_pushpin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _collect(spec: str, act, want: int, timeout: float = 10.0) -> list[bytes]:
    """Subscribe to activity/counts/report on ``spec``, wait until the socket is live (an
    activity or counts packet caused by ``act``), run ``act``, then collect until ``want``
    activity+counts frames."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for t in (b"activity ", b"counts ", b"report "):
        sub.setsockopt(zmq.SUBSCRIBE, t)
    sub.connect(spec)
    try:
        # slow joiner: poke the system until a packet it caused shows the subscription is live
        # and the edge's stats are on (a periodic ``report`` may come before either)
        deadline = time.monotonic() + timeout
        live = False
        while not live:
            assert time.monotonic() < deadline, "stats socket never answered"
            act()
            while not live and sub.poll(500):
                live = not sub.recv().startswith(b"report ")
        while sub.poll(300):  # drain what the pokes caused
            sub.recv()
        got: list[bytes] = []
        act()
        deadline = time.monotonic() + timeout
        while len(got) < want:
            assert time.monotonic() < deadline, got
            if sub.poll(200):
                frame = sub.recv()
                if not frame.startswith(b"report "):
                    got.append(frame)
        return got
    finally:
        sub.close()


def _shape(frame: bytes) -> tuple:
    kind, _, rest = frame.partition(b" ")
    assert rest[:1] == b"J", frame
    text = rest[1:].decode()
    fields = json.loads(text)
    assert isinstance(fields.pop("from"), str)
    # Qt's compact JSON: sorted keys, no spaces
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")), text
    return kind.decode(), tuple(sorted(fields.items()))


@pytest.mark.parametrize("route_id", ["", "r1"])
def test_activity_and_counts_json(each_system, origin, route_id):
    origin.respond("/plain", OriginResponse(200, [("Content-Type", "text/plain")], b"ok\n"))
    gport, pport = free_ports(2)
    seen = {}
    for system in each_system(
        routes=f"*{',id=' + route_id if route_id else ''} 127.0.0.1:{origin.port}\n",
        handler={"stats_spec": f"tcp://127.0.0.1:{pport}", "stats_format": "json"},
        gripcast={"stats_spec": f"tcp://127.0.0.1:{gport}", "stats_format": "json"},
    ):
        port = gport if system.name == "gripcast" else pport

        def get(client_port: int = system.client_port) -> None:
            with HttpClient(client_port) as c:
                c.send(b"GET /plain HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n")
                c.response()

        frames = _collect(f"tcp://127.0.0.1:{port}", get, want=2)
        seen[system.name] = sorted(_shape(f) for f in frames)
    route = (("route", route_id),) if route_id else ()  # Pushpin's separate stats: explicit id
    assert seen["gripcast"] == [
        ("activity", (("count", 1), *route)),
        ("counts", (("requests-received", 1),)),
    ]
    same_as_pushpin(seen)
