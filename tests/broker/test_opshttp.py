from prometheus_client import CollectorRegistry, Counter

from broker.opshttp import answer


def _reg():
    reg = CollectorRegistry()
    Counter("things", "doc", registry=reg).inc(3)
    return reg


def test_metrics_exposition():
    out = answer("GET", "/metrics", _reg(), lambda: None)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"things_total 3.0" in out
    assert b"Content-Type: text/plain; version=" in out


def test_health_and_ready():
    assert answer("GET", "/health", _reg(), lambda: "x").startswith(b"HTTP/1.1 200")
    assert answer("GET", "/ready", _reg(), lambda: None).endswith(b"\r\n\r\nready\n")
    out = answer("GET", "/ready?x=1", _reg(), lambda: "broker link down")
    assert out.startswith(b"HTTP/1.1 503 ")
    assert out.endswith(b"not ready: broker link down\n")


def test_unknown_path_method_and_head():
    assert answer("GET", "/nope", _reg(), lambda: None).startswith(b"HTTP/1.1 404")
    assert answer("POST", "/metrics", _reg(), lambda: None).startswith(b"HTTP/1.1 405")
    head = answer("HEAD", "/health", _reg(), lambda: None)
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: 3" in head
