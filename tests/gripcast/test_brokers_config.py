"""Several brokers (docs/cluster.md): the ``brokers`` key, its refusals, and ``gripcast run
--brokers N``'s plan (no processes: the integration test runs them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.config import Config, load_config, several_brokers_problems, split_broker
from broker.errors import ConfigError
from gripcast import runner
from gripcast.preflight import planned_ports

REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", None)),
        ("broker-2.example:15564", ("broker-2.example", 15564)),
        ("[::1]", ("[::1]", None)),
        ("[fd00::2]:5574", ("[fd00::2]", 5574)),
    ],
)
def test_broker_entries(entry, expected):
    assert split_broker(entry) == expected


@pytest.mark.parametrize(
    "entry", ["", "h:", "h:x", "h:0", "h:65535", "::1", "[::1]x", "a/b", "h:1:2"]
)
def test_bad_broker_entries(entry):
    with pytest.raises(ValueError):
        split_broker(entry)


def test_endpoints_of_every_broker():
    cfg = Config(brokers=("10.0.0.1", "10.0.0.2:15564", "[fd00::3]:5574"), port_offset=100)
    assert cfg.broker_endpoints() == [
        ("tcp://10.0.0.1:5664", "tcp://10.0.0.1:5665"),
        ("tcp://10.0.0.2:15564", "tcp://10.0.0.2:15565"),
        ("tcp://[fd00::3]:5574", "tcp://[fd00::3]:5575"),
    ]
    # [] = the one broker at broker_host
    assert Config(broker_host="b").broker_endpoints() == [("tcp://b:5564", "tcp://b:5565")]


def test_validation_reports_every_bad_entry_at_once():
    with pytest.raises(ConfigError) as exc:
        load_config(
            env={},
            overrides={"brokers": ["a:x", "b", "b", "[::1"], "reorder_window_s": -1},
        )
    text = str(exc.value)
    assert "'a:x'" in text and "'b' is listed twice" in text and "'[::1'" in text
    assert "reorder_window_s" in text


def test_brokers_from_the_environment_is_a_comma_list():
    cfg = load_config(env={"GRIPCAST_BROKERS": "10.0.0.1, 10.0.0.2:5574"})
    assert cfg.brokers == ("10.0.0.1", "10.0.0.2:5574")


def test_several_brokers_on_the_memory_store_are_refused():
    (problem,) = several_brokers_problems(Config(brokers=("a", "b")))
    assert "several brokers need a shared Redis store" in problem
    assert several_brokers_problems(Config(brokers=("a", "b"), store=REDIS)) == []
    assert several_brokers_problems(Config(brokers=("a",))) == []  # one listed broker


def test_run_brokers_n_lists_each_broker_ten_ports_apart():
    cfg = runner.cluster_config(Config(store=REDIS, port_offset=1000), 3)
    assert cfg.brokers == ("127.0.0.1:6564", "127.0.0.1:6574", "127.0.0.1:6584")
    b2 = runner.broker_config(cfg, 2)
    assert [b2.port(k) for k in runner.BROKER_PORT_KEYS] == list(range(6580, 6586))
    assert runner.broker_config(cfg, 0) is cfg
    assert runner.cluster_config(Config(store=REDIS), 1).brokers == ()


def test_run_refusals():
    with pytest.raises(ConfigError, match="starts its brokers itself"):
        runner.cluster_config(Config(brokers=("a", "b"), store=REDIS), None)
    with pytest.raises(ConfigError, match="edge_ctl_port must be edge_pub_port"):
        runner.cluster_config(Config(store=REDIS, edge_ctl_port=9000), 2)
    with pytest.raises(ConfigError, match="stats_spec"):
        runner.cluster_config(Config(store=REDIS, stats_spec="tcp://127.0.0.1:9"), 2)
    with pytest.raises(ConfigError, match="1 or more"):
        runner.cluster_config(Config(store=REDIS), 0)


def test_preflight_plans_every_brokers_ports():
    cfg = runner.cluster_config(Config(store=REDIS, metrics_port=9100, edges=1), 2)
    uses = {u.key: u.port for u in planned_ports(cfg, None)}
    assert uses["edge_pub_port (broker0)"] == 5564
    assert uses["edge_ctl_port (broker1)"] == 5575
    assert uses["metrics_port (broker1)"] == 9110
    assert uses["client_port"] == 7999


def test_plan_children_one_config_per_broker(tmp_path):
    cfg = runner.cluster_config(Config(store=REDIS, edges=2), 2)
    cfg, children = runner.plan_children(cfg, False, None, str(tmp_path))
    names = [c.name for c in children]
    assert names == ["broker0", "broker1", "edge0", "edge1"]
    files = [c.argv[c.argv.index("--config-file") + 1] for c in children]
    b1 = json.loads(Path(files[1]).read_text())
    edge = json.loads(Path(files[2]).read_text())
    assert b1["http_port"] == 5571 and b1["brokers"] == edge["brokers"] == list(cfg.brokers)
    assert edge["http_port"] is None  # edges keep the listed brokers, not broker ports
    text = runner.banner(cfg, children)
    assert "2 brokers" in text and ":5561/publish/" in text and ":5571/publish/" in text


@pytest.mark.parametrize("value", [0, -1, 0.05, 601, "soon"])
def test_resume_retry_for_s_is_validated_with_the_other_problems(value):
    with pytest.raises(ConfigError) as exc:
        load_config(env={}, overrides={"resume_retry_for_s": value, "reorder_window_s": -1})
    text = str(exc.value)
    assert "resume_retry_for_s" in text and "reorder_window_s" in text  # all at once
    assert load_config(env={}, overrides={"resume_retry_for_s": 0.1}).resume_retry_for_s == 0.1
