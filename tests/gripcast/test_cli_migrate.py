"""``gripcast migrate`` and ``--pushpin-config`` through the CLI (no sockets, no processes)."""

from __future__ import annotations

import logging
import tomllib

import pytest

from broker.errors import EXIT_CONFIG, ConfigError
from gripcast.cli import build_parser, config_from_args, main


def write_conf(tmp_path, handler: str = "") -> str:
    conf = tmp_path / "pushpin.conf"
    conf.write_text(
        "[global]\nport_offset=5\n[runner]\nhttp_port=127.0.0.1:9000\nlogdir=/var/log/pushpin\n"
        f"[proxy]\nroutesfile=routes\nsig_key=k3y\nset_x_forwarded_protocol=proto-only\n"
        f"[handler]\nmessage_wait=250\nid_cache_ttl=30\n{handler}"
    )
    (tmp_path / "routes").write_text("* 127.0.0.1:8080\n")
    return str(conf)


def test_migrate_prints_toml_equal_to_the_pushpin_config(tmp_path, capsys):
    path = write_conf(tmp_path)
    assert main(["migrate", path]) == 0
    out = capsys.readouterr().out
    doc = tomllib.loads(out)
    assert doc == {
        "client_addr": "127.0.0.1",
        "client_port": 9000,
        "id_cache_ttl_s": 30.0,
        "message_wait_s": 0.25,
        "port_offset": 5,
        "routes_file": str(tmp_path / "routes"),
        "sig_key": "k3y",
    }
    assert "[runner] logdir: ignored" in out  # the warnings, as comments
    toml = tmp_path / "gripcast.toml"
    toml.write_text(out)
    a = config_from_args(build_parser().parse_args(["run", "--config", str(toml)]))
    b = config_from_args(build_parser().parse_args(["run", "--pushpin-config", path]))
    assert a == b


def test_migrate_refusal_exits_with_config_status(tmp_path, capsys):
    path = write_conf(tmp_path, handler="share_all=true\n")
    assert main(["migrate", path]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"{path}:13: [handler] share_all: 'true': gripcast has no share_all mode" in err


def test_pushpin_config_flags_still_win_and_notes_are_collected(tmp_path):
    path = write_conf(tmp_path)
    notes: list[tuple[int, str]] = []
    args = build_parser().parse_args(["edge", "--pushpin-config", path, "--port", "127.0.0.1:9100"])
    cfg = config_from_args(args, notes)
    assert cfg.port("client_port") == 9100 and cfg.message_wait_s == 0.25
    assert (logging.WARNING, f"{path}:5: [runner] logdir: ignored: gripcast logs to standard "
            "error (journald under systemd)") in notes  # fmt: skip


def test_config_and_pushpin_config_together_are_refused(tmp_path):
    path = write_conf(tmp_path)
    args = build_parser().parse_args(["run", "--config", path, "--pushpin-config", path])
    with pytest.raises(ConfigError, match="not both"):
        config_from_args(args)
