"""``python -m bench.tlsfloor``: full handshakes between two in-memory ends (no sockets), the
server side's CPU measured; what it prints."""

from __future__ import annotations

import ssl

import pytest

from bench import tlsfloor


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_one_handshake_completes_at_a_pinned_version(version):
    server_ctx, client_ctx = tlsfloor.contexts(version, tickets=1)
    spent = tlsfloor.one_handshake(server_ctx, client_ctx)
    # a full handshake's server side is OpenSSL's ECDHE + ECDSA signature: well above zero,
    # and nowhere near a second even on a loaded machine
    assert 0.0 < spent < 1.0


def test_contexts_pin_the_version_and_alpn():
    server_ctx, client_ctx = tlsfloor.contexts(ssl.TLSVersion.TLSv1_2, tickets=1)
    assert server_ctx.minimum_version == server_ctx.maximum_version == ssl.TLSVersion.TLSv1_2
    assert client_ctx.verify_mode == ssl.CERT_NONE


def test_main_reports_both_versions(capsys):
    assert tlsfloor.main(["--handshakes", "3", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "ECDSA P-256" in out
    assert "tls1.3: server CPU ms per full handshake" in out
    assert "tls1.2: server CPU ms per full handshake" in out
