"""Client-side TLS without sockets: certificate loading and its errors, SNI choice, the
settings of every context, HTTPS config keys and flags, and the preflight check."""

from __future__ import annotations

import datetime
import os
import ssl

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.config import load_config
from broker.errors import ConfigError
from edge.tls import load_certificates
from gripcast.cli import build_parser, config_from_args
from gripcast.preflight import check_certificates, planned_ports
from tests.tlscerts import make_ca


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path)


def _cfg(**kw):
    return load_config(env={}, overrides=kw)


def _problems(cfg) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_certificates(cfg)
    return info.value.problems


def test_one_pair_every_setting(tmp_path, ca):
    pair = ca.issue(tmp_path, "site", ["localhost"])
    certs = load_certificates(_cfg(tls_cert=pair.cert, tls_key=pair.key))
    assert certs is not None and certs.files == (pair.cert,)
    ctx = certs.for_port(443)
    assert ctx is certs.by_name["default"]
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert not ctx.options & ssl.OP_NO_TICKET  # session tickets on
    assert ctx.num_tickets == 1  # one TLS 1.3 ticket per handshake (edge.tls.NUM_TICKETS)
    assert ctx.sni_callback is None  # one pair: nothing to pick per name
    assert all(c["protocol"] in ("TLSv1.2", "TLSv1.3") for c in ctx.get_ciphers())


def test_no_certificate_configured():
    assert load_certificates(_cfg()) is None


def test_missing_mismatched_expired_and_not_pem_are_errors_naming_the_file(tmp_path, ca):
    good = ca.issue(tmp_path, "good", ["localhost"])
    other = ca.issue(tmp_path, "other", ["localhost"])
    expired = ca.issue(tmp_path, "old", ["localhost"], days=-2)
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    missing = str(tmp_path / "nope.crt")

    (p,) = _problems(_cfg(tls_cert=missing, tls_key=good.key))
    assert p == f"{missing}: no such file"
    (p,) = _problems(_cfg(tls_cert=good.cert, tls_key=other.key))
    assert p == f"{other.key}: the private key does not match {good.cert}"
    (p,) = _problems(_cfg(tls_cert=expired.cert, tls_key=expired.key))
    assert p.startswith(f"{expired.cert}: the certificate expired on ")
    (p,) = _problems(_cfg(tls_cert=str(tmp_path / "junk.crt"), tls_key=good.key))
    assert "not a PEM certificate chain and private key" in p


def test_unreadable_file(tmp_path, ca):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    pair = ca.issue(tmp_path, "site", ["localhost"])
    os.chmod(pair.key, 0)
    (p,) = _problems(_cfg(tls_cert=pair.cert, tls_key=pair.key))
    assert p.startswith(f"{pair.key}: cannot read")


def test_encrypted_key_is_refused_without_prompting(tmp_path, ca):
    key = ec.generate_private_key(ec.SECP256R1())
    pair = ca.issue(tmp_path, "site", ["localhost"], key=key)
    with open(pair.key, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
    (p,) = _problems(_cfg(tls_cert=pair.cert, tls_key=pair.key))
    assert p == f"{pair.key}: the private key is encrypted (not supported)"


def test_not_yet_valid_is_an_error(tmp_path, ca):
    pair = ca.issue(tmp_path, "site", ["localhost"])
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    with pytest.raises(ConfigError) as info:
        load_certificates(_cfg(tls_cert=pair.cert, tls_key=pair.key), now=past)
    assert "is not valid before" in info.value.problems[0]


def test_certs_dir_sni_choice(tmp_path, ca):
    d = tmp_path / "certs"
    d.mkdir()
    ca.issue(d, "default", ["localhost"])
    ca.issue(d, "default_8443", ["localhost"])
    ca.issue(d, "www.example.com", ["www.example.com"])
    ca.issue(d, "_.example.com", ["*.example.com"])
    certs = load_certificates(_cfg(tls_certs_dir=str(d)))
    assert certs is not None
    by = certs.by_name
    assert certs.pick("www.example.com") is by["www.example.com"]
    assert certs.pick("WWW.Example.COM.") is by["www.example.com"]
    assert certs.pick("api.example.com") is by["_.example.com"]
    assert certs.pick("a.b.example.com") is None  # wildcards cover one level only
    assert certs.pick("example.org") is None
    assert certs.pick(None) is None
    assert certs.pick("x" * 300) is None
    assert certs.for_port(8443) is by["default_8443"]  # Pushpin's per-port default
    assert certs.for_port(443) is by["default"]
    # host names to pick: every context (and the certificate-less fallback) has the callback
    assert all(ctx.sni_callback is not None for ctx in by.values())
    assert certs.for_port(1) is by["default"]


def test_defaults_only_need_no_sni_callback(tmp_path, ca):
    d = tmp_path / "certs"
    d.mkdir()
    ca.issue(d, "default", ["localhost"])
    ca.issue(d, "default_8443", ["localhost"])
    certs = load_certificates(_cfg(tls_certs_dir=str(d)))
    assert certs is not None
    assert all(ctx.sni_callback is None for ctx in certs.by_name.values())


def test_certs_dir_without_default_has_a_certificate_less_start(tmp_path, ca):
    d = tmp_path / "certs"
    d.mkdir()
    ca.issue(d, "only.test", ["only.test"])
    certs = load_certificates(_cfg(tls_certs_dir=str(d)))
    assert certs is not None and "default" not in certs.by_name
    assert certs.for_port(443) not in certs.by_name.values()


def test_certs_dir_problems(tmp_path, ca):
    d = tmp_path / "certs"
    d.mkdir()
    assert _problems(_cfg(tls_certs_dir=str(d))) == [
        f"tls_certs_dir: {d} holds no <name>.crt / <name>.key pair"
    ]
    ca.issue(d, "a.test", ["a.test"])
    os.remove(d / "a.test.key")
    assert _problems(_cfg(tls_certs_dir=str(d))) == [
        "tls_certs_dir: a.test.crt has no a.test.key beside it"
    ]
    assert _problems(_cfg(tls_certs_dir=str(tmp_path / "none")))[0].startswith(
        "tls_certs_dir: cannot read"
    )


def test_cert_and_dir_together_the_pair_is_the_default(tmp_path, ca):
    d = tmp_path / "certs"
    d.mkdir()
    ca.issue(d, "default", ["localhost"])
    ca.issue(d, "b.test", ["b.test"])
    pair = ca.issue(tmp_path, "main", ["localhost"])
    certs = load_certificates(_cfg(tls_cert=pair.cert, tls_key=pair.key, tls_certs_dir=str(d)))
    assert certs is not None
    assert sorted(certs.by_name) == ["b.test", "default"]
    assert certs.files[0] == pair.cert


def test_https_port_config(tmp_path):
    cfg = _cfg(https_port=["8443", "127.0.0.1:9443"], tls_cert="c", tls_key="k", port_offset=10)
    assert cfg.https_listens() == [("0.0.0.0", 8453), ("127.0.0.1", 9453)]
    assert _cfg(https_port="443,[::1]:8443", tls_cert="c", tls_key="k").https_listens() == [
        ("0.0.0.0", 443),
        ("::1", 8443),
    ]
    assert _cfg(https_port=443, tls_certs_dir="d").https_port == ("443",)
    with pytest.raises(ConfigError) as info:
        _cfg(https_port=["x"])
    assert info.value.problems[0].startswith("https_port: invalid value")
    with pytest.raises(ConfigError) as info:
        _cfg(https_port=["8443"])
    assert info.value.problems == ["https_port: set tls_cert and tls_key, or tls_certs_dir"]
    with pytest.raises(ConfigError) as info:
        _cfg(tls_cert="c")
    assert info.value.problems == [
        "tls_cert and tls_key: set both (a PEM certificate chain and its key)"
    ]
    with pytest.raises(ConfigError) as info:
        _cfg(https_port=["7999"], tls_cert="c", tls_key="k", client_addr="0.0.0.0")
    assert info.value.problems == ["https_port: 7999 is also the client_port"]
    with pytest.raises(ConfigError) as info:
        _cfg(https_port=["65000"], tls_cert="c", tls_key="k", port_offset=1000)
    assert "out of range" in info.value.problems[0]
    toml = tmp_path / "g.toml"
    toml.write_text('https_port = ["8443"]\ntls_certs_dir = "/etc/gripcast/certs"\n')
    assert load_config(str(toml), env={}).https_listens() == [("0.0.0.0", 8443)]
    env = {"GRIPCAST_HTTPS_PORT": "8443,8444", "GRIPCAST_TLS_CERTS_DIR": "d"}
    assert load_config(env=env).https_port == ("8443", "8444")


def test_cli_flags(tmp_path):
    args = build_parser().parse_args(
        [
            "edge",
            "--https-port",
            "8443",
            "--https-port",
            "127.0.0.1:9443",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--port-offset",
            "5",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.https_listens() == [("0.0.0.0", 8448), ("127.0.0.1", 9448)]
    assert (cfg.tls_cert, cfg.tls_key) == ("c.pem", "k.pem")
    uses = [(u.key, u.port) for u in planned_ports(cfg, None)]
    assert ("https_port", 8448) in uses and ("https_port", 9448) in uses


def test_preflight_reports_certificate_problems(tmp_path, ca):
    expired = ca.issue(tmp_path, "old", ["localhost"], days=-1)
    cfg = _cfg(https_port=["8443"], tls_cert=expired.cert, tls_key=expired.key)
    with pytest.raises(ConfigError) as info:
        check_certificates(cfg)
    assert info.value.problems[0].startswith(f"{expired.cert}: the certificate expired on ")
    check_certificates(_cfg(tls_cert=expired.cert, tls_key=expired.key))  # no HTTPS: unread
