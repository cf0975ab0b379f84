"""Retained history out of the cyclic collector's walks (``_speedups.retain``): the compiled
twin untracks a stored envelope and its formats dicts; the pure twin leaves them as they are;
either way what the history holds and returns is the same (no sockets, no sleeps)."""

from __future__ import annotations

import gc
import json

import pytest

import _speedups
from _speedups import twin
from broker.history import MemoryHistory
from broker.items import parse_http_publish
from broker.wire import Envelope


def _items(n: int, channels: int = 3):
    body = {
        "items": [
            {
                "channel": f"c{k % channels}",
                "id": f"m{k}",
                "formats": {
                    "http-stream": {"content": f"M{k}\n"},
                    "ws-message": {"content": f"M{k}"},
                },
            }
            for k in range(n)
        ]
    }
    return parse_http_publish(json.dumps(body).encode())


def _envelope() -> Envelope:
    return Envelope(
        channel="c",
        seq=1,
        epoch="e",
        formats={"http-stream": {"content": b"x"}, "ws-message": {"content": "x"}},
        id="a",
        meta={"k": "v"},
    )


def test_compiled_retain_untracks_the_envelope_and_its_formats():
    env = _envelope()
    assert gc.is_tracked(env) and gc.is_tracked(env.formats)
    twin("fanout", True).retain(env)
    assert not gc.is_tracked(env)
    assert not gc.is_tracked(env.formats)
    assert not any(gc.is_tracked(f) for f in env.formats.values())
    gc.collect()  # untracked, still owned by refcounts: nothing is freed under it
    assert env.formats == {"http-stream": {"content": b"x"}, "ws-message": {"content": "x"}}
    assert env.meta == {"k": "v"} and env.id == "a"


def test_compiled_retain_twice_and_on_odd_formats_is_harmless():
    retain = twin("fanout", True).retain
    env = _envelope()
    retain(env)
    retain(env)
    odd = Envelope(channel="c", seq=1, epoch="e", formats={"http-stream": "not a dict"})
    retain(odd)
    assert not gc.is_tracked(odd)


def test_a_retained_formats_dict_given_a_container_is_tracked_again():
    # the safety the untracking relies on: CPython tracks a dict again when a container goes in
    env = _envelope()
    twin("fanout", True).retain(env)
    env.formats["extra"] = {"content": [1, 2]}
    assert gc.is_tracked(env.formats)


def test_pure_retain_changes_nothing():
    env = _envelope()
    assert twin("fanout", False).retain(env) is None
    assert gc.is_tracked(env) and gc.is_tracked(env.formats)


@pytest.mark.parametrize("many", [False, True])
def test_history_keeps_and_evicts_the_same_with_untracked_envelopes(many):
    h = MemoryHistory(max_items=2)
    items = _items(12)
    envs = h.append_many(items, 100.0) if many else [h.append(i, 100.0) for i in items]
    gc.collect()
    replay = h.replay("c0")
    assert [e.id for e in replay.items] == ["m6", "m9"]  # the ring's bound, as before
    assert replay.items == [e for e in envs if e.id in ("m6", "m9")]
    for e in replay.items:
        assert e.formats["http-stream"]["content"] == f"M{e.id[1:]}\n".encode()
        assert e.formats["ws-message"]["content"] == f"M{e.id[1:]}".encode()
        # untracked when the compiled twin is in use, tracked as any object with the pure one
        assert gc.is_tracked(e) is (not _speedups.COMPILED)
        assert gc.is_tracked(e.formats) is (not _speedups.COMPILED)


@pytest.mark.parametrize("compiled", [False, True], ids=["pure", "compiled"])
def test_compiled_channels_and_rings_are_out_of_the_collector(compiled):
    try:
        mod = twin("history", compiled)
    except ImportError:
        pytest.skip("compiled twins are not built")
    ch = mod.HistoryChannel("c", "e", 5, 60.0)
    # compiled: neither the channel nor its ring is walked by a collection; pure: as any object
    assert gc.is_tracked(ch) is (not compiled)
    assert gc.is_tracked(ch.ring) is (not compiled)
    env = _envelope()
    ch.ring.append(env)
    assert gc.is_tracked(ch.ring) is (not compiled)  # an append does not track it again
    gc.collect()
    assert list(ch.ring) == [env] and ch.drop_oldest() == 2


def test_history_with_untracked_rings_survives_collections_and_frees_evicted_channels():
    import sys

    h = MemoryHistory(max_items=3, max_channels=2)
    h.append_many(_items(6, channels=2), 100.0)  # c0: m0 m2 m4, c1: m1 m3 m5 (c1 written last)
    gc.collect()
    assert [e.id for e in h.replay("c0").items] == ["m0", "m2", "m4"]
    oldest = h.replay("c0").items[0]
    held = sys.getrefcount(oldest)
    h.append_many(_items(3, channels=3)[2:], 101.0)  # c2 arrives: c0, the least recent, goes
    assert h.statistics().channels == 2 and h.statistics().evicted_channels == 1
    assert sys.getrefcount(oldest) == held - 1  # refcounting let go of the untracked ring


@pytest.mark.parametrize("compiled", [False, True], ids=["pure", "compiled"])
def test_atom_pairs_keep_a_dict_out_of_the_collector(compiled):
    try:
        mod = twin("fanout", compiled)
    except ImportError:
        pytest.skip("compiled twins are not built")
    p = mod.atom_pair("c", "id1")
    assert p == ("c", "id1") and type(p) is tuple and hash(p) == hash(("c", "id1"))
    d: dict = {}
    d[p] = 1.5
    assert gc.is_tracked(p) is (not compiled) and gc.is_tracked(d) is (not compiled)
    assert d[("c", "id1")] == 1.5  # found by an ordinary tuple (forget_ids looks up so)


def test_the_sequencers_id_cache_and_the_trailing_positions_stay_untracked():
    from broker.sequencer import Sequencer

    s = Sequencer(id_cache_ttl_s=60.0)
    batch = _items(50, channels=10)
    assert s.add_many(batch, 1.0) == batch
    assert s.add_many(batch, 2.0) == []  # every id seen: the cache works with pair keys
    assert gc.is_tracked(s._ids) is (not _speedups.COMPILED)
    s.forget_ids(batch[:1])
    assert s.add_many(batch[:1], 3.0) == batch[:1]  # forgotten by an ordinary tuple
    recent: dict = {}
    fan_out = twin("fanout", _speedups.COMPILED).fan_out

    class NoSocket:  # fan_out sends nothing when no channel is live
        closed = False
        underlying = 0

        def send(self, *a, **k):  # pragma: no cover - not called: nothing is live
            raise AssertionError("sent")

    envs = MemoryHistory().append_many(batch, 1.0)
    assert fan_out(NoSocket(), envs, set(), recent) == (0, 0)
    assert len(recent) == 10 and gc.is_tracked(recent) is (not _speedups.COMPILED)
