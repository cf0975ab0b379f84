"""``bench.connload`` (the compiled load generator) against a real gripcast cluster with an
HTTPS listener (the bench's own target and origin): plain, TLS 1.2, TLS 1.3 and resumed
connections each complete the stream request with no error, and ``bench handshakes``' rate
case reads the servers' and the client's CPU around it."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from bench import connload
from bench.handshakes import run_rate_case
from bench.origin import Origin
from bench.targets import make_target

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def binary():
    try:
        return connload.build()
    except connload.BuildError as exc:  # pragma: no cover - the CI image has gcc + libssl-dev
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def target():
    workdir = tempfile.mkdtemp(prefix="test-connload-")
    origin = Origin().start()
    t = make_target("gripcast", origin.port, 1, workdir, "warning", False, tls=True)
    try:
        t.start()
        yield t, origin
    finally:
        t.stop()
        origin.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize(
    "mode,resume", [("plain", False), ("tls1.2", False), ("tls1.3", False), ("tls1.3", True)]
)
def test_stream_requests_complete(binary, target, mode, resume):
    t, _ = target
    spec = connload.LoadSpec(
        port=t.client_port if mode == "plain" else t.https_port,
        mode=mode,
        resume=resume,
        concurrency=4,
        duration_s=20,
        conns=40,
        request=connload.STREAM_REQUEST,
        until=connload.STREAM_UNTIL,
        procs=2,
        timeout_s=10,
    )
    r = connload.run(spec, binary)
    assert r.completed == 40, (r.errors, r.first_error)
    assert sum(r.errors.values()) == 0, r.first_error
    assert r.per_s > 0 and r.client_cpu_s > 0
    assert r.handshake_p50_ms is not None and r.total_p99_ms is not None
    assert r.handshake_p50_ms <= r.total_p99_ms
    if resume:  # every slot's first connection is a full handshake (4 slots)
        assert r.resumed >= 40 - 4, r.resumed
    else:
        assert r.resumed == 0


def test_tls_version_refused_is_an_error_not_a_connection(binary, target):
    """A handshake the server refuses counts as a handshake error, with OpenSSL's reason."""
    t, _ = target
    spec = connload.LoadSpec(port=t.client_port, mode="tls1.2", conns=3, concurrency=1)
    r = connload.run(spec, binary)  # TLS to the plain port: the server answers HTTP 400
    assert r.completed == 0 and r.errors["handshake"] == 3, r.errors
    assert "handshake" in r.first_error


def test_rate_case_reads_server_and_client_cpu(binary, target):
    t, origin = target
    load = {
        "concurrency": 4,
        "duration_s": 1.0,
        "procs": 1,
        "request": True,
        "binary": binary,
    }
    row = run_rate_case(t, origin.pid, "tls1.2", load, idle_s=0.3)
    assert row["connections"] > 0 and sum(row["errors"].values()) == 0, row
    assert row["server_cpu_ms_per_conn"] > 0 and row["client_cpu_ms_per_conn"] > 0
    assert row["server_cores"] > 0 and row["client_cores"] > 0
    assert row["target"] == "gripcast" and row["case"] == "tls1.2"
