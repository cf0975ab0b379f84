"""``bench.profile``: py-spy's raw collapsed stacks -> self and total shares of busy samples."""

from __future__ import annotations

from bench.profile import frame_name, parse, summarise

RAW = """\
main (gripcast/cli.py:3);run (trio/_core/_run.py:9);get_events (trio/_core/_io_epoll.py:225) 50
main (gripcast/cli.py:3);run (trio/_core/_run.py:9);deliver (edge/sync/deliver.py:247);write_many (edge/sync/deliver.py:307) 30
main (gripcast/cli.py:3);run (trio/_core/_run.py:9);deliver (edge/sync/deliver.py:250) 10
main (gripcast/cli.py:3);run (trio/_core/_run.py:9);_dump (broker/ingest/tnetstring.py:40) 10
"""


def test_frame_name_drops_the_line_and_long_paths():
    assert (
        frame_name("write_many (/a/b/edge/sync/deliver.py:307)") == "write_many (sync/deliver.py)"
    )
    assert frame_name("<module> (x.py)") == "<module> (x.py)"


def test_summarise_counts_busy_samples_only():
    s = summarise(parse(RAW.splitlines()))
    assert s["samples"] == 100
    assert s["idle_share"] == 0.5
    assert s["self"][0] == ("write_many (sync/deliver.py)", 60.0)
    assert dict(s["self"])["_dump (ingest/tnetstring.py)"] == 20.0
    total = dict(s["total"])
    assert total["deliver (sync/deliver.py)"] == 80.0
    assert "main (gripcast/cli.py)" not in total  # under every busy sample
