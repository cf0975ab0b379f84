"""``message_wait_s`` and ``id_cache_ttl_s`` reach the broker's sequencer (Pushpin's
``message_wait`` and ``id_cache_ttl``)."""

from __future__ import annotations

import time

import httpx
import pytest
from gripcontrol import create_grip_channel_header

from tests.integration.cluster import Cluster, Origin, StreamClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_message_wait_and_id_cache_ttl_from_config(tmp_path):
    def hold(req):
        headers = {"Grip-Hold": "stream", "Grip-Channel": create_grip_channel_header("sq")}
        return 200, {"Content-Type": "text/plain", **headers}, b"[open]\n"

    def publish(cluster: Cluster, content: str, **item: str) -> None:
        body = {"channel": "sq", "formats": {"http-stream": {"content": content}}, **item}
        r = httpx.post(cluster.publish_url + "/publish/", json={"items": [body]})
        assert r.status_code == 200

    with (
        Origin({"/s": hold}) as origin,
        Cluster(
            tmp_path, [f"* 127.0.0.1:{origin.port}"], message_wait_s=0.5, id_cache_ttl_s=0.0
        ) as cluster,
    ):
        client = StreamClient(cluster.url("/s")).wait_open()
        try:
            client.read_until(b"[open]\n")
            publish(cluster, "A\n", id="a")
            client.read_until(b"A\n")
            publish(cluster, "A\n", id="a")  # id_cache_ttl_s = 0: no de-duplication
            client.read_until(b"A\nA\n")
            t0 = time.monotonic()
            publish(cluster, "C\n", id="c", **{"prev-id": "b"})  # waits for b: message_wait_s
            client.read_until(b"A\nA\nC\n", timeout=4.0)  # Pushpin's default would be 5 s
            waited = time.monotonic() - t0
            assert 0.4 <= waited < 4.0
        finally:
            client.close()
