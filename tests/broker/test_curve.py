"""CurveZMQ keys, config validation and the ZAP decision (no sockets)."""

from __future__ import annotations

import pytest
import zmq
from zmq.utils import z85 as Z85

from broker import curve
from broker.config import Config, load_config
from broker.errors import ConfigError


def pair():
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def test_keygen_text_is_a_matching_pair():
    text = curve.keygen_text()
    values = dict(line.split(" = ") for line in text.splitlines() if " = " in line)
    public, secret = (values[k].strip('"') for k in ("public_key", "secret_key"))
    assert curve.is_z85_key(public) and curve.is_z85_key(secret)
    assert zmq.curve_public(secret.encode()) == public.encode()


def test_write_keypair_files_are_loadable(tmp_path):
    sec, pub = curve.write_keypair(str(tmp_path / "edge1"))
    assert (tmp_path / "edge1.key").stat().st_mode & 0o077 == 0
    secret, public = curve.load_key(sec, "k"), curve.load_key(pub, "k")
    assert zmq.curve_public(secret) == public


@pytest.mark.parametrize("which", [".key", ".pub"])
def test_write_keypair_never_overwrites(tmp_path, which):
    """An existing key file is not truncated or replaced (issue 11 item 13)."""
    existing = tmp_path / ("k" + which)
    existing.write_text("precious\n")
    with pytest.raises(curve.CurveKeyError, match="already exists: not overwriting"):
        curve.write_keypair(str(tmp_path / "k"))
    assert existing.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing.name]  # nothing else left


@pytest.mark.parametrize("which", [".key", ".pub"])
def test_write_keypair_does_not_follow_a_planted_symlink(tmp_path, which):
    """A symlink planted at the key path (e.g. to a file the victim can write) is refused,
    dangling or not: the secret is never written through it."""
    target = tmp_path / "target"
    link = tmp_path / ("k" + which)
    link.symlink_to(target)  # dangling: O_CREAT without O_EXCL would create target
    with pytest.raises(curve.CurveKeyError, match="already exists"):
        curve.write_keypair(str(tmp_path / "k"))
    assert not target.exists()


def test_write_new_refuses_a_symlink_created_in_the_race(tmp_path):
    """The check before writing is not the protection: the open itself is O_EXCL."""
    target = tmp_path / "target"
    (tmp_path / "k.key").symlink_to(target)
    with pytest.raises(curve.CurveKeyError, match="already exists"):
        curve._write_new(str(tmp_path / "k.key"), "secret", 0o600)
    assert not target.exists()


def test_settings_from_config_and_files(tmp_path):
    bpub, bsec = pair()
    epub, esec = pair()
    other, _ = pair()
    allowed = tmp_path / "allowed"
    allowed.write_text(f"# edges\n{epub}\n\n{other}\n")  # '#' starts a comment only at line start
    cfg = Config(
        curve_secret_key=bsec,
        curve_allowed_clients=(str(allowed),),
        curve_client_secret_key=esec,
        curve_public_key=bpub,
    )
    s = curve.curve_settings(cfg)
    assert s.server and s.client and s.server_public == bpub.encode()
    assert s.allowed == {epub.encode(), other.encode()}
    assert s.client_public == epub.encode()
    assert s.server_sockets() == ("edge_pub", "edge_ctl")
    assert curve.curve_settings(cfg.replace(curve_publishers=True)).server_sockets() == (
        "edge_pub",
        "edge_ctl",
        "push_in",
        "sub_in",
        "command",
    )
    assert curve.client_options(s)["CURVE_SERVERKEY"] == bpub.encode()
    assert curve.curve_settings(Config(curve_allowed_clients=("*",))).allowed is None


def test_key_with_hash_in_a_file(tmp_path):
    while True:  # '#' is a Z85 digit: a key containing it must survive comment stripping
        public, secret = pair()
        if "#" in public:
            break
    f = tmp_path / "k.pub"
    f.write_text(f"# a comment\n{public}\n")
    assert curve.load_key(str(f), "k") == public.encode()


@pytest.mark.parametrize(
    "overrides, expect",
    [
        ({"curve_secret_key": "short"}, "curve_secret_key: not a Z85 key"),
        ({"curve_secret_key": "S"}, "cannot read it as a file"),
        (
            {"curve_public_key": "!" * 40, "curve_client_secret_key": "nope"},
            "curve_client_secret_key",
        ),
        ({"curve_publishers": True}, "curve_publishers: needs curve_secret_key"),
        ({"zmq_heartbeat_s": -1}, "zmq_heartbeat_s"),
        ({"client_head_timeout_s": 0}, "client_head_timeout_s"),
        ({"curve_publishers": "maybe"}, "curve_publishers: invalid value"),
    ],
)
def test_bad_curve_config_is_reported(overrides, expect):
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides=overrides)
    assert any(expect in p for p in info.value.problems), info.value.problems


def test_server_without_allowed_clients_is_an_error():
    _, sec = pair()
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"curve_secret_key": sec})
    assert any("curve_allowed_clients: empty" in p for p in info.value.problems)


def test_mismatched_public_key_is_an_error():
    _, sec = pair()
    pub2, _ = pair()
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            env={},
            overrides={
                "curve_secret_key": sec,
                "curve_public_key": pub2,
                "curve_allowed_clients": ("*",),
            },
        )
    assert any("does not match" in p for p in info.value.problems)


def test_env_and_bool_coercion():
    pub, sec = pair()
    cfg = load_config(
        None,
        env={
            "GRIPCAST_CURVE_SECRET_KEY": sec,
            "GRIPCAST_CURVE_ALLOWED_CLIENTS": pub + "\n",
            "GRIPCAST_CURVE_PUBLISHERS": "true",
        },
    )
    assert cfg.curve_publishers is True and cfg.curve_allowed_clients == (pub,)


def zap_request(mechanism=b"CURVE", key=b"\x01" * 32, version=b"1.0"):
    return [version, b"rid7", b"gripcast", b"10.0.0.9", b"", mechanism, key]


def test_zap_allows_listed_keys_only():
    key = b"\x05" * 32
    z85 = Z85.encode(key)
    ok = curve.zap_reply(zap_request(key=key), frozenset([z85]))
    assert ok.allowed and ok.reply[:4] == [b"1.0", b"rid7", b"200", b"OK"] and ok.reply[4] == z85
    no = curve.zap_reply(zap_request(key=b"\x06" * 32), frozenset([z85]))
    assert not no.allowed and no.reply[2] == b"400" and no.address == "10.0.0.9"
    assert curve.zap_reply(zap_request(key=b"\x06" * 32), None).allowed  # "*"


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"1.0"],
        zap_request(version=b"9.9"),
        zap_request(mechanism=b"NULL"),
        zap_request(mechanism=b"PLAIN"),
        zap_request(key=b"short"),
        zap_request()[:6],
    ],
)
def test_zap_refuses_malformed_and_non_curve(frames):
    d = curve.zap_reply(frames, None)
    assert not d.allowed and d.reply[2] in (b"400", b"500") and len(d.reply) == 6


def test_heartbeat_options():
    assert curve.heartbeat_options(0) == {}
    assert curve.heartbeat_options(0.5) == {
        "HEARTBEAT_IVL": 500,
        "HEARTBEAT_TIMEOUT": 1500,
        "HEARTBEAT_TTL": 1500,
    }
