"""Config precedence, CLI flags and the runner's plan: no sockets, no processes."""

import pytest

from broker.config import load_config
from broker.errors import ConfigError
from gripcast.cli import build_parser, config_from_args
from gripcast.publish import build_item
from gripcast.runner import plan_children


def test_defaults_match_pushpin():
    cfg = load_config(env={})
    assert [
        cfg.port(k)
        for k in ("client_port", "push_in_port", "http_port", "sub_in_port", "command_port")
    ] == [7999, 5560, 5561, 5562, 5563]
    assert (cfg.sig_iss, cfg.sig_key) == ("pushpin", "changeme")


def test_precedence_file_env_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('sig_key = "fromfile"\nport_offset = 5\n[edge]\nclient_buffer_bytes = 4096\n')
    cfg = load_config(str(f), env={"GRIPCAST_SIG_KEY": "fromenv"}, overrides={"port_offset": 7})
    assert cfg.sig_key == "fromenv"
    assert cfg.port_offset == 7
    assert cfg.client_buffer_bytes == 4096
    assert cfg.port("client_port") == 8006 and cfg.port("push_in_port") == 5567


def test_validation_reports_every_problem(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('bogus = 1\nhistory_max_items = 0\nclient_port = "x"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(str(f), env={})
    text = str(exc.value)
    assert "bogus" in text and "history_max_items" in text and "client_port" in text


def test_cli_flags_become_config():
    args = build_parser().parse_args(
        [
            "run",
            "--port",
            "127.0.0.1:9000",
            "--route",
            "* 127.0.0.1:8080",
            "--route",
            "api.example.com 10.0.0.1:80",
            "--port-offset",
            "3",
            "--edges",
            "2",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.client_addr, cfg.port("client_port")) == ("127.0.0.1", 9000)
    assert cfg.routes == ("* 127.0.0.1:8080", "api.example.com 10.0.0.1:80")
    assert cfg.port("http_port") == 5564 and cfg.edge_count == 2


def test_bad_port_flag_is_a_config_error():
    args = build_parser().parse_args(["broker", "--port", "notaport"])
    with pytest.raises(ConfigError):
        config_from_args(args)


def test_runner_plan_routes_demo(tmp_path):
    cfg = load_config(env={}, overrides={"edges": 3})
    cfg2, children = plan_children(cfg, demo=True, demo_port=8123, rundir=str(tmp_path))
    assert [c.name for c in children] == ["demo", "broker", "edge0", "edge1", "edge2"]
    # the chat's WebSocket endpoint goes over_http, everything else plain HTTP
    assert cfg2.routes == ("*,path_beg=/chat/ws 127.0.0.1:8123,over_http", "* 127.0.0.1:8123")
    _, children = plan_children(cfg, demo=False, demo_port=None, rundir=str(tmp_path))
    assert [c.name for c in children] == ["broker", "edge0", "edge1", "edge2"]


def test_publish_item_shapes():
    item = build_item("c", "hi", item_id="1", prev_id="0")
    assert item["formats"]["http-stream"] == {"content": "hi\n"}
    assert item["formats"]["ws-message"] == {"content": "hi"}
    assert item["id"] == "1" and item["prev-id"] == "0"
    sse = build_item("c", "a\nb", sse=True)["formats"]
    assert sse["http-stream"]["content"] == "id: %(id)s\ndata: a\ndata: b\n\n"  # edge fills the id
    assert sse["http-response"]["body"] == "data: a\ndata: b\n\n"
    assert build_item("c", "x", sse=True, item_id="7")["formats"]["http-stream"]["content"] == (
        "id: 7\ndata: x\n\n"
    )
    assert build_item("c", "", close=True)["formats"]["http-stream"] == {"action": "close"}
