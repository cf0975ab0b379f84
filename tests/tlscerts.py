"""Real certificates made at test time (the ``cryptography`` package): a CA and server pairs.

``make_ca(dir)`` writes ``ca.crt``; ``ca.issue(dir, name, hosts)`` writes ``<name>.crt`` (the
leaf, then the CA: a chain as a server sends it) and ``<name>.key``, signed by that CA, with the
hosts as subjectAltNames (DNS names, or IP addresses).  ``days`` may be negative (an expired
certificate) and ``key`` lets a test pair a certificate with someone else's key.
"""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Pair:
    cert: str
    key: str
    serial: int


@dataclass
class CA:
    cert_path: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def issue(
        self,
        directory: pathlib.Path,
        name: str,
        hosts: list[str],
        *,
        days: int = 30,
        key: ec.EllipticCurvePrivateKey | None = None,
        cn: str | None = None,
        client: bool = False,
    ) -> Pair:
        """A certificate for ``hosts`` (subject alt names; none for a client certificate),
        common name ``cn`` (default: the first host), for server or ``client`` use."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=days))
        if days < 0:
            start, end = (
                now + datetime.timedelta(days=days * 2),
                now + datetime.timedelta(days=days),
            )
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        serial = x509.random_serial_number()
        usage = x509.oid.ExtendedKeyUsageOID
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn or hosts[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([usage.CLIENT_AUTH if client else usage.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        crt = directory / f"{name}.crt"
        kf = directory / f"{name}.key"
        crt.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + self.cert.public_bytes(serialization.Encoding.PEM)
        )
        kf.write_bytes(_pem_key(key))
        return Pair(str(crt), str(kf), serial)


def make_ca(directory: pathlib.Path, cn: str = "gripcast test CA", filename: str = "ca.crt") -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / filename
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(str(path), cert, key)
