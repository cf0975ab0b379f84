"""Bind addresses per role and the refusal of unauthenticated publish inputs on the network
(broker.config), and the warning about the default sig_key (security issue 11, items 8, 10)."""

from __future__ import annotations

import logging

import pytest

from broker.config import Config, is_loopback, load_config
from broker.curve import generate_keypair
from broker.errors import ConfigError


def problems(**overrides) -> list[str]:
    try:
        load_config(env={}, overrides=overrides)
    except ConfigError as exc:
        return exc.problems
    return []


def test_roles_default_to_broker_bind():
    cfg = Config(broker_bind="10.0.0.1")
    assert {cfg.bind_addr(r) for r in ("publish", "http", "edge")} == {"10.0.0.1"}
    assert cfg.endpoint("push_in", bind=True) == "tcp://10.0.0.1:5560"
    assert cfg.endpoint("edge_pub", bind=True) == "tcp://10.0.0.1:5564"


def test_roles_bind_separately():
    cfg = Config(edge_bind="0.0.0.0", http_bind="10.0.0.1", curve_secret_key="x")
    assert cfg.endpoint("edge_pub", bind=True) == "tcp://*:5564"
    assert cfg.endpoint("edge_ctl", bind=True) == "tcp://*:5565"
    for name, port in (("push_in", 5560), ("sub_in", 5562), ("command", 5563)):
        assert cfg.endpoint(name, bind=True) == f"tcp://127.0.0.1:{port}"
    assert cfg.bind_addr("http") == "10.0.0.1"
    assert cfg.endpoint("edge_pub", bind=False) == "tcp://127.0.0.1:5564"  # broker_host


@pytest.mark.parametrize(
    "host, loop",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("", False),
        ("*", False),
        ("::", False),
        ("10.0.0.1", False),
        ("broker.example", False),
    ],
)
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_default_config_is_accepted():
    assert problems() == []


def test_documented_old_recipe_is_refused_with_the_key_named():
    """broker_bind = "0.0.0.0" alone (the old docs/multihost.md) opened PULL, SUB, command and
    the HTTP API to the network without auth: refused, one line per exposed role."""
    got = problems(broker_bind="0.0.0.0")
    assert len(got) == 2
    assert got[0].startswith(
        "broker_bind (the default of publish_bind): '0.0.0.0' is not "
        "loopback and the ZeroMQ publish inputs"
    )
    assert "allow_unauthenticated_publish = true" in got[0]
    assert got[1].startswith(
        "broker_bind (the default of http_bind): '0.0.0.0' is not "
        "loopback and the HTTP publish API has no auth"
    )
    assert all("\n" not in p for p in got)


def test_explicit_opt_out_is_accepted():
    assert problems(broker_bind="0.0.0.0", allow_unauthenticated_publish=True) == []


def test_role_keys_are_named():
    got = problems(publish_bind="0.0.0.0")
    assert len(got) == 1 and got[0].startswith("publish_bind: '0.0.0.0' is not loopback")
    got = problems(http_bind="10.0.0.1")
    assert len(got) == 1 and got[0].startswith("http_bind: '10.0.0.1' is not loopback")


def test_secure_multihost_recipe_is_accepted(tmp_path):
    public, secret = generate_keypair()
    edge_pub, _ = generate_keypair()
    # edges on the network with Curve, publish inputs on loopback
    assert (
        problems(edge_bind="0.0.0.0", curve_secret_key=secret, curve_allowed_clients=(edge_pub,))
        == []
    )
    # publishers on the network too: Curve on the ZeroMQ inputs, a JWT key on the HTTP API
    assert (
        problems(
            broker_bind="0.0.0.0",
            curve_secret_key=secret,
            curve_publishers=True,
            curve_allowed_clients=(edge_pub,),
            publish_jwt_key="a-long-publish-secret-0123456789",
        )
        == []
    )
    # Curve without curve_publishers leaves PULL/SUB/command plain: still refused
    got = problems(
        broker_bind="0.0.0.0",
        curve_secret_key=secret,
        curve_allowed_clients=(edge_pub,),
        publish_jwt_key="a-long-publish-secret-0123456789",
    )
    assert len(got) == 1 and "ZeroMQ publish inputs" in got[0]


@pytest.mark.parametrize(
    "overrides, expect",
    [
        ({"http_maxconn": 0}, "http_maxconn: must be at least 1"),
        ({"recover_per_s": 0}, "recover_per_s: must be positive"),
        ({"hint_per_channel_per_s": -1}, "hint_per_channel_per_s: must be positive"),
        ({"hint_per_s": 0}, "hint_per_s: must be positive"),
        ({"edge_bind": "tcp://0.0.0.0"}, "edge_bind: 'tcp://0.0.0.0' is not a host address"),
    ],
)
def test_bad_values(overrides, expect):
    assert expect in problems(**overrides)


def test_env_sets_the_new_keys():
    cfg = load_config(
        env={
            "GRIPCAST_ALLOW_UNAUTHENTICATED_PUBLISH": "true",
            "GRIPCAST_PUBLISH_BIND": "0.0.0.0",
            "GRIPCAST_HINT_PER_S": "5",
        }
    )
    assert cfg.allow_unauthenticated_publish and cfg.bind_addr("publish") == "0.0.0.0"
    assert cfg.hint_per_s == 5.0


def test_default_sig_key_on_a_public_client_bind_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="broker.config"):
        load_config(env={})  # client_addr 0.0.0.0, sig_key "changeme"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].getMessage().startswith("sig_key: the default")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="broker.config"):
        load_config(env={}, overrides={"client_addr": "127.0.0.1"})
        load_config(env={}, overrides={"sig_key": "a-real-secret"})
    assert not caplog.records
