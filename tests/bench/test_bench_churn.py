"""Churn: SSE clients resume with the cursor an EventSource would have, and the churn scenario
reports zero loss and zero duplicates across client drops and an edge SIGKILL (SSE resumes
with ``Last-Event-ID``, HTTP streams with the bench origin's ``?last=`` query).

Regression: a client dropped after the probes but before message ``M1`` reached it used to
reconnect with no ``Last-Event-ID`` (probes carried no id), went live, and lost seq 1 (one
message in 40,000, in about half the runs of ``bench churn --clients 200``)."""

from __future__ import annotations

import pytest

from bench.publisher import probe_item
from bench.swarm import Client, Worker, WorkerConfig, seq_runs, sse_cursor
from tests.bench.benchrun import gripcast_run


def _worker(transport: str = "sse", resume: bool = True) -> Worker:
    cfg = WorkerConfig(
        index=0, port=1, transport=transport, first=0, last=2, channels=1, max_seq=20, resume=resume
    )
    return Worker(cfg, None)


def _last_event_id(request: bytes) -> bytes | None:
    for line in request.split(b"\r\n"):
        if line.lower().startswith(b"last-event-id:"):
            return line.split(b":", 1)[1].strip()
    return None


def test_probe_carries_an_sse_id():
    item = probe_item("sse", "c0", 3)
    assert item["id"] == "p3"
    assert item["formats"]["http-stream"]["content"] == "id: p3\ndata: P3\n\n"


def test_sse_cursor_is_the_last_event_id_seen():
    w = _worker()
    try:
        c = w.clients[0]
        assert sse_cursor(c) is None
        assert _last_event_id(w.request(c)) is None  # nothing seen yet: nothing to resume from
        w.consume(c, b"id: p1\ndata: P1\n\n", 0.0)
        assert w.probed == 1
        w.consume(c, b"id: p2\ndata: P2\n\nid: p3\nda", 0.0)
        w.consume(c, b"ta: P3\n\n", 0.0)
        # dropped here, before M1: it must resume after the last probe, not go live
        assert _last_event_id(w.request(c)) == b"p3"
        assert w.probed == 1
        w.consume(c, b"id: 1\ndata: M1 1.000000\n\nid: 2\ndata: M2 1.000000\n\n", 1.0)
        assert _last_event_id(w.request(c)) == b"2"
        w.consume(c, b"id: p4\ndata: P4\n\n", 1.0)  # a late probe does not move a message cursor
        assert _last_event_id(w.request(c)) == b"2"
        assert _worker(resume=False).request(c).count(b"Last-Event-ID") == 0
    finally:
        w.ep.close()


def test_seq_runs():
    seen = bytearray([0, 1, 0, 0, 1, 2, 2, 1, 0])
    assert seq_runs(seen, 8, True) == [[2, 3], [8, 8]]
    assert seq_runs(seen, 8, False) == [[5, 6]]
    assert seq_runs(seen, 10, True) == [[2, 3], [8, 10]]
    assert seq_runs(bytearray(12), 10, True, limit=1) == [[1, 10]]
    c = Client(0, "c0", 4)
    assert seq_runs(c.seen, 4, True) == [[1, 4]]


@pytest.mark.integration
@pytest.mark.timeout(150)
@pytest.mark.parametrize("transport", ["sse", "stream"])
def test_churn_zero_loss_and_duplicates(tmp_path, transport):
    """Clients drop and resume at 25/s from 0.3 s before the first message (so some resume with
    a probe cursor), edge0 is SIGKILLed and restarted a third of the way in."""
    run, proc = gripcast_run(
        tmp_path / "churn.json",
        *("churn", "--transport", transport, "--clients", "100", "--rate", "20"),
        *("--duration", "5", "--churn-rate", "25"),
        timeout=140,
    )
    assert run["edge_kill"]["restarted"], run["edge_kill"]
    assert run["connections"]["churned"] > 50
    assert run["connections"]["drops"] > 0  # the killed edge's clients came back
    assert run["loss"]["lost"] == 0, run["loss"]
    assert run["loss"]["duplicated"] == 0, run["loss"]
    assert run["deliveries"]["received"] == run["deliveries"]["expected"] > 0
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_stream_clients_resume_with_a_query_cursor():
    from bench.origin import respond

    w = _worker("stream")
    try:
        c = w.clients[0]
        assert w.request(c).startswith(b"GET /stream/c0 HTTP/1.1\r\n")
        w.consume(c, b"P2\n", 0.0)
        assert w.request(c).startswith(b"GET /stream/c0?last=p2 HTTP/1.1\r\n")
        w.consume(c, b"M7 1.000000\n", 0.0)
        assert w.request(c).startswith(b"GET /stream/c0?last=7 HTTP/1.1\r\n")
    finally:
        w.ep.close()
    assert b"Grip-Channel: c0; prev-id=7\r\n" in respond(b"/stream/c0?last=7", None, True)
    assert b"Grip-Channel: c0\r\n" in respond(
        b"/stream/c0?last=7", None, False
    )  # Pushpin: no prev-id
    assert b"Grip-Channel: c0\r\n" in respond(b"/stream/c0", None, True)
