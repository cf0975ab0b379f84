"""The first five minutes, without sockets: help text, the publish message, the demo's imports,
the runner's plan (ports, config file, banner)."""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import stat
from pathlib import Path

import pytest

from broker.config import load_config
from gripcast import cli, runner
from gripcast.preflight import planned_ports
from gripcast.publish import message_text

ROOT = Path(__file__).resolve().parents[2]


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise AssertionError("no subcommands")


def test_every_command_and_option_has_help():
    parser = cli.build_parser()
    sub = _subparsers(parser)
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, p in sub.choices.items():
        assert helps.get(name), f"{name}: no help line"
        assert p.description, f"{name}: no description"
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"gripcast {name} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.nargs != 0 and action.choices is None:
                # metavars read like the value, not like the option's dest in capitals
                assert action.metavar, f"gripcast {name} {action.option_strings}: no metavar"


class FakeStdin(io.StringIO):
    def __init__(self, text: str, tty: bool) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_publish_needs_a_message():
    with pytest.raises(ValueError, match="no message"):
        message_text(None, FakeStdin("", tty=True), close=False)
    with pytest.raises(ValueError, match="empty"):
        message_text("", None, close=False)
    with pytest.raises(ValueError, match="standard input was empty"):
        message_text(None, FakeStdin("", tty=False), close=False)
    assert message_text(None, FakeStdin("hello\n", tty=False), close=False) == "hello"
    assert message_text(None, FakeStdin("two\nlines\n", tty=False), close=False) == "two\nlines"
    assert message_text("hi", None, close=False) == "hi"
    assert message_text(None, None, close=True) == ""  # --close needs no text


def test_publish_without_message_is_an_error(capsys):
    assert cli.main(["publish", "test", ""]) == 2
    assert "empty" in capsys.readouterr().err


def test_demo_needs_nothing_beyond_the_package():
    tree = ast.parse((ROOT / "gripcast" / "demo.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    test_only = {"gripcontrol", "pubcontrol", "httpx", "websockets", "pytest", "hypothesis"}
    assert not imported & test_only


def test_planned_ports_cover_every_listener():
    cfg = load_config(
        env={},
        overrides={"port_offset": 100, "edges": 2, "metrics_port": 9100, "edge_metrics_port": 9200},
    )
    uses = {u.key: u.port for u in planned_ports(cfg, 8190)}
    assert uses["push_in_port"] == 5660 and uses["edge_ctl_port"] == 5665
    assert uses["client_port"] == 8099 and uses["demo origin"] == 8190
    assert uses["metrics_port"] == 9100
    assert uses["edge_metrics_port (edge1)"] == 9201


def test_secrets_go_to_a_private_file_not_the_command_line(tmp_path):
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    cfg = load_config(
        env={},
        overrides={
            "sig_key": "s3cret-sig",
            "publish_jwt_key": "s3cret-pub",
            "edges": 2,
            "routes": ("* 127.0.0.1:8080",),
        },
    )
    cfg2, children = runner.plan_children(cfg, False, None, str(rundir))
    for child in children:
        assert not any("s3cret" in arg for arg in child.argv), child.argv
    path = rundir / "config.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["sig_key"] == "s3cret-sig" and data["cluster_id"] == cfg2.cluster_id != ""
    args = cli.build_parser().parse_args(children[-1].argv[3:])
    assert cli.config_from_args(args) == cfg2


def test_banner_names_commands_that_work(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.chdir(ROOT)
    cfg = load_config(env={}, overrides={"port_offset": 10})
    cfg, children = runner.plan_children(cfg, True, None, str(tmp_path))
    text = runner.banner(cfg, children)
    lines = text.splitlines()
    assert lines[1] == lines[-1] == "=" * 72  # set apart
    assert "curl -N http://127.0.0.1:8009/stream" in text
    venv_script = os.path.relpath(os.path.join(os.path.dirname(os.sys.executable), "gripcast"))
    assert f"{venv_script} publish --port-offset 10 test hello" in text
