"""django-eventstream (the real library, a real Django server) behind a real gripcast cluster.

The Django project is tests/integration/django_sse: django-eventstream with its database
storage, publishing through gripcontrol to gripcast's publish API.  An SSE client gets the
events sent with ``send_event`` with their ids (``build-id``: ``id: %I`` rendered from
``Grip-Set-Meta: id_format=test:%(events-test)s``) and their ``%`` characters as sent (the
library doubles each ``%`` of the data, as Pushpin's format language wants); a client that
reconnects with ``Last-Event-ID`` gets what it missed: django-eventstream answers the
request with the stored events after that id (escaped as in a publish, rendered by
``build-id`` on the initial body) and holds the stream with ``prev-id`` at the last one.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import free_ports, skip_missing, stop_process, wait_for
from tests.integration.cluster import Cluster, StreamClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


REPO = Path(__file__).resolve().parents[2]
SETTINGS = "tests.integration.django_sse.settings"


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def django_behind_gripcast(tmp_path):
    if importlib.util.find_spec("django_eventstream") is None:  # the test extra installs it
        skip_missing("django-eventstream (pip install -e '.[test]')")
    (django_port,) = free_ports(1)
    with Cluster(tmp_path, routes=[f"* 127.0.0.1:{django_port}"]) as cluster:
        env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE=SETTINGS,
            DJANGO_SSE_DB=str(tmp_path / "db.sqlite3"),
            GRIP_URL=f"{cluster.publish_url}/?iss=pushpin&key=changeme",
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
        )
        django_cmd = [sys.executable, "-m", "django"]
        subprocess.run(
            [*django_cmd, "migrate", "--verbosity", "0"],
            env=env,
            cwd=REPO,
            check=True,
            timeout=60,
        )
        log = open(tmp_path / "django.log", "wb")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [*django_cmd, "runserver", "--noreload", f"127.0.0.1:{django_port}"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: _port_open(django_port), 30, "django runserver did not start")

            def send(text: str) -> None:
                url = f"http://127.0.0.1:{django_port}/send/?" + urllib.parse.urlencode(
                    {"text": text}
                )
                with urllib.request.urlopen(url, timeout=10) as resp:
                    assert resp.read() == b"sent\n"

            yield cluster, send
        finally:
            stop_process(proc)
            log.close()
            if proc.returncode not in (0, -15):
                print((tmp_path / "django.log").read_text(errors="replace")[-3000:])


def _event(n: int, text: str) -> bytes:
    return f'event: message\nid: test:{n}\ndata: "{text}"\n\n'.encode()


def test_events_ids_percent_and_last_event_id(django_behind_gripcast):
    cluster, send = django_behind_gripcast
    a = StreamClient(cluster.url("/events/")).wait_open()
    try:
        assert a.status == 200 and a.headers["content-type"].startswith("text/event-stream")
        a.read_until(b"event: stream-open\ndata:\n\n")
        send("event 1 is 100% real")
        a.read_until(_event(1, "event 1 is 100% real"))
        send("event 2: 50%% off, %(user)s, %I")  # the app's own % signs come out as sent
        data = a.read_until(_event(2, "event 2: 50%% off, %(user)s, %I"))
        assert b"%%" not in data.replace(b"50%% off", b"")
        assert data.count(b"event: message") == 2
    finally:
        a.close()

    send("event 3 while away: 3%")
    # the browser reconnects with the last id it saw: it gets event 3 from django-eventstream's
    # storage in the initial body, then the live events that follow
    b = StreamClient(cluster.url("/events/"), headers={"Last-Event-ID": "test:2"}).wait_open()
    try:
        b.read_until(_event(3, "event 3 while away: 3%"))
        send("event 4 is live: 4%")
        data = b.read_until(_event(4, "event 4 is live: 4%"))
        assert b"event 1" not in data and b"event 2" not in data
        assert data.count(b"event: message") == 2  # 3 and 4, each once
    finally:
        b.close()
