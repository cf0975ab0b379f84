"""``gripcast publish`` against a broker with ``publish_jwt_key``: --key/--iss and GRIP_URL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KEY = "publish-secret-of-at-least-32-bytes!"


def publish(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "GRIP_URL"}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gripcast", "publish", *args, "test", "hello"],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_publish_signs_with_key_and_iss(tmp_path):
    with Cluster(
        tmp_path, ["* 127.0.0.1:9"], edges=0, publish_jwt_key=KEY, publish_jwt_iss="realm"
    ) as cluster:
        url = cluster.publish_url
        denied = publish("--url", url)
        assert denied.returncode == 1 and "401" in denied.stderr
        wrong = publish("--url", url, "--iss", "other", "--key", KEY)
        assert wrong.returncode == 1 and "401" in wrong.stderr
        ok = publish("--url", url, "--iss", "realm", "--key", KEY)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == "Published"
        b64 = "base64:" + __import__("base64").b64encode(KEY.encode()).decode()
        grip_url = f"{url}/?iss=realm&key={b64.replace('+', '%2B')}"
        ok = publish(env={"GRIP_URL": grip_url})
        assert ok.returncode == 0, ok.stderr
