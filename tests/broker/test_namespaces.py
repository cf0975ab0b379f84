"""Channel namespaces: parsing and validation (every problem at once), longest-prefix lookup,
per-prefix history bounds in the memory history and the Redis store's chunking, ZeroMQ
publish refusal (``broker.namespaces``)."""

from __future__ import annotations

import pytest

from broker.config import Config, config_from_dict, load_config
from broker.errors import ConfigError
from broker.history import MemoryHistory
from broker.ingest import tnetstring
from broker.items import Item
from broker.namespaces import (
    Namespace,
    NamespaceTable,
    limit_runs,
    parse_namespaces,
    refused_command_reply,
)


def _item(channel: str, n: int = 0) -> Item:
    return Item(channel, {"http-stream": {"action": "send", "content": b"x%d" % n}})


def test_parse_full_table_and_defaults():
    problems: list[str] = []
    ns = parse_namespaces(
        [
            {
                "prefix": "chat:",
                "history_max_items": 5,
                "history_max_age_s": 10,
                "presence": True,
                "publish_zmq": False,
            },
            {"prefix": "ticker:"},
        ],
        problems,
    )
    assert problems == []
    assert ns[0] == Namespace("chat:", 5, 10.0, True, "/presence", False)
    assert ns[1] == Namespace("ticker:")


def test_parse_reports_every_problem_at_once():
    problems: list[str] = []
    ns = parse_namespaces(
        [
            {"prefix": "a:", "history_max_items": 0},
            {"prefix": "a:", "history_max_age_s": -1, "presence": "yes"},
            {"history_max_items": 3},
            {"prefix": "b:", "colour": "red", "publish_zmq": 1, "history_max_items": True},
            "not a table",
        ],
        problems,
    )
    assert ns == ()
    text = "\n".join(problems)
    assert "namespace 'a:': history_max_items must be an integer of at least 1" in text
    assert "namespace 'a:': duplicate prefix" in text
    assert "history_max_age_s must be a positive number" in text
    assert "namespace 'a:': presence must be true or false" in text
    assert "namespace[2]: prefix must be a non-empty string" in text
    assert "namespace 'b:': unknown key 'colour'" in text
    assert "namespace 'b:': publish_zmq must be true or false" in text
    assert "namespace 'b:': history_max_items must be an integer" in text
    assert "namespace[4]: must be a table" in text


def test_config_file_tables_and_child_round_trip(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(
        "[broker]\nhistory_max_items = 50\n\n"
        '[[namespace]]\nprefix = "chat:"\nhistory_max_items = 500\npresence = true\n\n'
        '[[namespace]]\nprefix = "chat:vip:"\npublish_zmq = false\n'
    )
    cfg = load_config(str(path), env={})
    assert [n.prefix for n in cfg.namespaces] == ["chat:", "chat:vip:"]
    assert config_from_dict(cfg.to_dict()) == cfg  # as the runner hands it to its children


def test_config_file_bad_tables_refused_with_all_problems(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(
        '[[namespace]]\nprefix = "x"\nhistory_max_items = -2\n\n[[namespace]]\nprefix = "x"\n'
    )
    with pytest.raises(ConfigError) as exc:
        load_config(str(path), env={})
    text = str(exc.value)
    assert "history_max_items must be an integer" in text and "duplicate prefix" in text


def test_env_json_form():
    cfg = load_config(None, env={"GRIPCAST_NAMESPACES": '[{"prefix": "p:", "presence": true}]'})
    assert cfg.namespaces == (Namespace("p:", presence=True),)


def test_longest_prefix_wins_and_no_match_uses_globals():
    t = NamespaceTable(
        [
            Namespace("chat:", history_max_items=100),
            Namespace("chat:vip:", history_max_age_s=5.0),
            Namespace("", history_max_items=7),  # a prefix that matches everything
        ]
    )
    assert t.match("chat:vip:1").prefix == "chat:vip:"
    assert t.match("chat:x").prefix == "chat:"
    assert t.match("other").prefix == ""
    assert t.history_limits("chat:vip:1", 1000, 3600.0) == (1000, 5.0)  # items: the global
    assert t.history_limits("chat:1", 1000, 3600.0) == (100, 3600.0)
    assert NamespaceTable([Namespace("a")]).history_limits("b", 9, 9.0) == (9, 9.0)


def test_memory_history_bounds_per_prefix():
    t = NamespaceTable([Namespace("long:", history_max_items=20), Namespace("short:", 2, 10.0)])
    h = MemoryHistory(max_items=5, max_age_s=100.0, limits=t)
    for i in range(10):
        h.append_many([_item("long:a", i), _item("short:a", i), _item("plain", i)], now=1.0)
    assert len(h.replay("long:a", limit=100).items) == 10
    assert len(h.replay("short:a", limit=100).items) == 2
    assert len(h.replay("plain", limit=100).items) == 5
    # the age bound per prefix: short: keeps 10 s, the others 100 s
    assert h.replay("short:a", now=12.0).items == []
    assert len(h.replay("plain", now=12.0).items) == 5
    # a reload of the global bounds: namespaced channels keep theirs
    h.set_limits(3, 100.0)
    h.append(_item("plain", 99), now=12.0)
    h.append(_item("long:a", 99), now=12.0)
    assert len(h.replay("plain", limit=100).items) == 3
    assert len(h.replay("long:a", limit=100).items) == 11


def test_limit_runs_keeps_order_and_splits_by_bounds():
    t = NamespaceTable([Namespace("a:", history_max_items=3)])
    items = [_item("a:1"), _item("a:2"), _item("b"), _item("b"), _item("a:1"), _item("b")]
    runs = list(limit_runs(items, t, 10, 60.0, step=100))
    assert [(m, len(c)) for m, _, c in runs] == [(3, 2), (10, 2), (3, 1), (10, 1)]
    assert [i for _, _, c in runs for i in c] == items
    assert [len(c) for *_, c in limit_runs(items, None, 10, 60.0, step=4)] == [4, 2]
    assert [len(c) for *_, c in limit_runs(items[2:4], t, 10, 60.0, step=1)] == [1, 1]


def test_zmq_split_counts_refusals():
    t = NamespaceTable([Namespace("http:", publish_zmq=False), Namespace("http:open:")])
    allowed, refused = t.split_zmq([_item("http:x"), _item("http:open:y"), _item("z")])
    assert [i.channel for i in allowed] == ["http:open:y", "z"]
    assert [i.channel for i in refused] == ["http:x"]
    assert t.statistics().zmq_refused == 1
    assert NamespaceTable().split_zmq([_item("x")]) == ([_item("x")], [])


def test_refused_command_reply_keeps_the_id():
    failed = tnetstring.dumps({b"id": b"42", b"success": False, b"condition": b"x"})
    reply = tnetstring.loads(refused_command_reply(failed, "publish_zmq = false"))
    assert reply == {
        b"id": b"42",
        b"success": False,
        b"condition": b"forbidden",
        b"value": b"publish_zmq = false",
    }
    assert refused_command_reply(None, "r") is None


def test_default_config_has_no_namespaces():
    assert Config().namespaces == ()
