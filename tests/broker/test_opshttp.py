from prometheus_client import CollectorRegistry, Counter

from broker.runtime.opshttp import answer


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


def test_connections_are_capped():
    """Idle connections cannot pile up on the ops listener (security issue 11, item 9)."""
    import trio
    import trio.testing

    from broker.runtime.opshttp import capped

    served, closed = [], []

    class Stream:
        def __init__(self, n):
            self.n = n

        async def aclose(self):
            closed.append(self.n)

    gate = trio.Event()

    async def handler(stream):
        served.append(stream.n)
        await gate.wait()

    async def main():
        run = capped(handler, 2)
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(run, Stream(n))
            await trio.testing.wait_all_tasks_blocked()
            assert len(served) == 2 and len(closed) == 3  # trio starts tasks in any order
            assert set(served) | set(closed) == set(range(5))
            gate.set()
        await run(Stream(9))  # slots free again
        assert served[-1] == 9

    trio.run(main)


def test_trio_task_gauge_counts_living_tasks():
    """``<prefix>trio_tasks`` follows the tasks alive in the run (the soak samples it to find
    task leaks); outside a trio run the collector yields nothing."""
    import trio
    import trio.testing

    from broker.runtime.taskcount import TrioTaskCollector

    def gauge(reg) -> float | None:
        return reg.get_sample_value("x_trio_tasks")

    reg = CollectorRegistry(auto_describe=False)
    reg.register(TrioTaskCollector("x_"))
    assert gauge(reg) is None
    seen = []

    async def main():
        seen.append(gauge(reg))
        async with trio.open_nursery() as n:
            for _ in range(25):
                n.start_soon(trio.sleep_forever)
            await trio.testing.wait_all_tasks_blocked()
            seen.append(gauge(reg))
            body = answer("GET", "/metrics", reg, lambda: None)
            n.cancel_scope.cancel()
        seen.append(gauge(reg))
        assert b"# TYPE x_trio_tasks gauge" in body

    trio.run(main)
    base = seen[0]
    assert base is not None and base >= 1
    assert seen[1] == base + 25 and seen[2] == base
