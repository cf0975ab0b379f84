import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from broker.histogram import IntHistogram


def test_observe_buckets_and_sum():
    h = IntHistogram((0.1, 1.0))
    h.observe(0.05)
    h.observe(0.1)  # le is inclusive
    h.observe(0.5, n=3)
    h.observe(7.0)
    h.observe(-1.0)  # clock skew counts as 0
    st = h.statistics()
    assert st.counts == (3, 3, 1)
    assert st.count == 7
    assert st.total == pytest.approx(0.05 + 0.1 + 1.5 + 7.0)


def test_bounds_must_be_sorted():
    with pytest.raises(ValueError):
        IntHistogram((1.0, 0.5))


def test_family_exposition_is_cumulative():
    h = IntHistogram((0.1, 1.0))
    h.observe(0.05)
    h.observe(0.5, n=2)

    class C(Collector):
        def collect(self):
            yield h.family("x_seconds", "doc", {"edge": "0"})

    reg = CollectorRegistry()
    reg.register(C())
    text = generate_latest(reg).decode()
    assert 'x_seconds_bucket{edge="0",le="0.1"} 1.0' in text
    assert 'x_seconds_bucket{edge="0",le="1.0"} 3.0' in text
    assert 'x_seconds_bucket{edge="0",le="+Inf"} 3.0' in text
    assert 'x_seconds_count{edge="0"} 3.0' in text
