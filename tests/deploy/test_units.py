"""deploy/: the systemd units pass ``systemd-analyze verify`` and their command lines run.

The units name /opt/gripcast/venv/bin/gripcast and /etc/gripcast/gripcast.toml; the tests
point them at this checkout's venv and at a config on free ports, and otherwise use the
units' own ``ExecStart``/``ExecReload`` lines and ``KillSignal``.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gripcontrol import create_grip_channel_header

from broker.errors import EXIT_CONFIG
from tests.helpers import MISSING, free_port_block, free_ports
from tests.integration.cluster import PORT_KEYS, Origin, Proc, StreamClient, write_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = (
    "gripcast-broker.service",
    "gripcast-broker@.service",
    "gripcast-edge@.service",
    "gripcast.target",
    "gripcast-brokers.target",
)
INSTALLED_BIN = "/opt/gripcast/venv/bin/gripcast"
INSTALLED_CONFIG = "/etc/gripcast/gripcast.toml"
INSTALLED_EDGE_CONFIG = "/etc/gripcast/edge.toml"
VENV_BIN = str(Path(sys.executable).parent / "gripcast")


def unit_keys(name: str) -> dict[str, list[str]]:
    """``key -> [values]`` of a unit file (all sections; continuation lines unsupported)."""
    out: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def command(name: str, key: str, config: str, instance: str = "0", pid: int = 0) -> list[str]:
    (line,) = unit_keys(name)[key]
    argv = shlex.split(line.replace("%i", instance).replace("$MAINPID", str(pid)))
    return [
        VENV_BIN
        if a == INSTALLED_BIN
        else config
        if a in (INSTALLED_CONFIG, INSTALLED_EDGE_CONFIG)
        else a
        for a in argv
    ]


def test_units_have_the_operational_settings():
    for name in ("gripcast-broker.service", "gripcast-broker@.service", "gripcast-edge@.service"):
        k = unit_keys(name)
        assert k["Type"] == ["notify"]
        assert int(k["LimitNOFILE"][0]) >= 65536
        assert k["Restart"] == ["on-failure"]
        # a configuration error (gripcast's exit status) is not restarted, a crash is
        assert k["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]
        assert k["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        assert k["ProtectSystem"] == ["strict"] and k["NoNewPrivileges"] == ["yes"]
        assert k["WantedBy"] == ["gripcast.target"] and k["PartOf"] == ["gripcast.target"]
        # the drain (drain_timeout_s, default 10) must fit in the stop timeout
        assert int(k["TimeoutStopSec"][0]) > 10


def test_edges_are_ordered_after_every_broker_but_never_need_one():
    """Edges start after the brokers of their host (single unit and every template instance,
    through gripcast-brokers.target: a template cannot be named in After=), yet only Wants=
    it: a broker that is down must not keep an edge from starting (it fails over)."""
    edge = unit_keys("gripcast-edge@.service")
    after = " ".join(edge["After"]).split()
    wants = " ".join(edge["Wants"]).split()
    assert "gripcast-brokers.target" in after and "gripcast-broker.service" in after
    assert "gripcast-brokers.target" in wants
    for key in ("Requires", "Requisite", "BindsTo"):
        assert key not in edge, key
    for name in ("gripcast-broker.service", "gripcast-broker@.service"):
        k = unit_keys(name)
        assert k["Before"] == ["gripcast-brokers.target"], name
        assert "gripcast-edge" not in " ".join(k.get("After", [])), name  # no cycle
    target = unit_keys("gripcast-brokers.target")
    for key in ("Requires", "Requisite", "BindsTo", "Wants", "After"):
        assert key not in target, key  # an ordering point only: it pulls no broker in


def test_edges_and_broker_do_not_share_a_user_or_a_config():
    """Internet-facing edges run as their own user with their own config file, so an edge
    compromise does not read the broker's secrets (security issue 11, item 13)."""
    broker, edge = unit_keys("gripcast-broker.service"), unit_keys("gripcast-edge@.service")
    assert broker["User"] == ["gripcast"] and broker["Group"] == ["gripcast"]
    assert edge["User"] == ["gripcast-edge"] and edge["Group"] == ["gripcast-edge"]
    assert INSTALLED_CONFIG in broker["ExecStart"][0]
    assert INSTALLED_EDGE_CONFIG in edge["ExecStart"][0]
    assert INSTALLED_CONFIG not in edge["ExecStart"][0]
    readme = (DEPLOY / "README.md").read_text()
    assert "useradd" in readme and "gripcast-edge" in readme and "edge.toml" in readme


def test_broker_template_instance_is_the_port_offset(tmp_path):
    """gripcast-broker@10 runs a broker on the broker ports + 10 (broker 1 of
    ``gripcast run --brokers N``), with the same user and config file as the single unit."""
    from gripcast.cli import build_parser, config_from_args

    single, many = unit_keys("gripcast-broker.service"), unit_keys("gripcast-broker@.service")
    for key in ("User", "Group", "Type", "Restart", "RestartPreventExitStatus", "KillSignal"):
        assert single[key] == many[key], key
    config = write_config(tmp_path / "g.toml", {}, ["* 127.0.0.1:9"], store="redis://h:1/0")
    argv = command("gripcast-broker@.service", "ExecStart", config, "10")
    assert argv[:2] == [VENV_BIN, "broker"]
    cfg = config_from_args(build_parser().parse_args(argv[1:]))
    assert (cfg.port("push_in_port"), cfg.port("edge_pub_port")) == (5570, 5574)
    assert (cfg.port("edge_ctl_port"), cfg.port("http_port")) == (5575, 5571)


BROKER_SECRETS = (
    "publish_jwt_key",
    "curve_secret_key",
    "curve_allowed_clients",
    "store",
    "publish_jwt_iss",
    "publish_jwt_aud",
)


def test_example_edge_config_loads_and_holds_no_broker_secret():
    import tomllib

    from broker.config import load_config

    text = (DEPLOY / "edge.toml").read_text()
    keys = set(tomllib.loads(text))
    assert keys and not keys & set(BROKER_SECRETS)
    cfg = load_config(str(DEPLOY / "edge.toml"), env={})
    assert not cfg.publish_jwt_key and not cfg.curve_secret_key


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason=MISSING + "systemd-analyze is not installed (Debian package systemd)",
)
@pytest.mark.timeout(60)
def test_systemd_analyze_verify_prints_nothing(tmp_path):
    for name in UNITS:
        text = (DEPLOY / name).read_text().replace(INSTALLED_BIN, VENV_BIN)
        target = name.replace("@.service", "@0.service")  # the template, as an instance
        (tmp_path / target).write_text(text)
    files = [str(tmp_path / n.replace("@.service", "@0.service")) for n in UNITS]
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *files],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "" and out.stderr.strip() == "", out.stdout + out.stderr


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_unit_command_lines_start_ready_serve_reload_and_stop(tmp_path):
    def hold(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header("u"),
            },
            b"[open]\n",
        )

    with Origin({"/s": hold}) as origin:
        ports = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS))))
        mport = free_port_block(3)  # broker; edges 0 and 1 on eport + index
        eport = mport + 1
        config = write_config(
            tmp_path / "gripcast.toml",
            ports,
            [f"* 127.0.0.1:{origin.port}"],
            metrics_port=mport,
            edge_metrics_port=eport,
        )
        env = {"PYTHONUNBUFFERED": "1"}
        broker = Proc(command("gripcast-broker.service", "ExecStart", config), env).wait_ready()
        edge = None
        try:
            edge = Proc(
                command("gripcast-edge@.service", "ExecStart", config, "1"), env
            ).wait_ready()
            # edge instance 1 serves metrics on edge_metrics_port + 1
            wait = time.monotonic() + 10
            while httpx.get(f"http://127.0.0.1:{eport + 1}/ready").status_code != 200:
                assert time.monotonic() < wait, "edge@1 not ready"
                time.sleep(0.05)
            assert httpx.get(f"http://127.0.0.1:{mport}/ready").status_code == 200
            client = StreamClient(f"http://127.0.0.1:{ports['client_port']}/s").wait_open()
            client.read_until(b"[open]\n")
            r = httpx.post(
                f"http://127.0.0.1:{ports['http_port']}/publish/",
                json={
                    "items": [
                        {"channel": "u", "formats": {"http-stream": {"content": "via-units\n"}}}
                    ]
                },
            )
            assert r.status_code == 200
            client.read_until(b"via-units\n")
            for p, unit in ((broker, "gripcast-broker.service"), (edge, "gripcast-edge@.service")):
                reload = command(unit, "ExecReload", config, pid=p.proc.pid)
                assert subprocess.run(reload, timeout=10).returncode == 0
                p.wait_ready(timeout=10)  # RELOADING=1 ... READY=1
            client.close()
            for p, unit in ((edge, "gripcast-edge@.service"), (broker, "gripcast-broker.service")):
                k = unit_keys(unit)
                p.proc.send_signal(getattr(signal, k["KillSignal"][0]))
                assert p.proc.wait(int(k["TimeoutStopSec"][0])) == 0
        finally:
            if edge is not None:
                edge.stop()
            broker.stop()
