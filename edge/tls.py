"""TLS for client listeners: certificates, server contexts, SNI, reload (no I/O but file reads).

Certificates come from one of (docs/tls.md):

* ``tls_cert`` / ``tls_key``: one PEM certificate chain and its key, for every connection;
* ``tls_certs_dir``: a directory of ``<name>.crt`` / ``<name>.key`` pairs, as Pushpin's
  ``certs`` directory: a client's SNI host name picks ``<host>.crt`` (lowercased), else the
  wildcard file of the same level (``_.example.com.crt`` for ``www.example.com``), else the
  listener's default: ``default_<port>.crt`` (Pushpin's name for the default of one HTTPS port)
  or ``default.crt``.  A name without a pair and no default fails that handshake only.

Every pair is loaded and checked when loaded (``load_certificates``): a missing or unreadable
file, a file that is not PEM, a key that does not match its certificate, an encrypted key, or a
certificate past its ``notAfter`` is a ``ConfigError`` naming the file; at start that stops the
edge (exit 78), on SIGHUP the running certificates are kept.  Unlike Pushpin (which re-reads a
file when its mtime changes, on the next handshake), files are read only at start and on SIGHUP.

Each pair gets its own ``ssl.SSLContext`` with the same settings: TLS 1.2 or newer, the ssl
module's default (secure) cipher list for ``PROTOCOL_TLS_SERVER``, ALPN ``http/1.1`` (there is
no HTTP/2 here), renegotiation refused (``OP_NO_RENEGOTIATION``), compression off, and
session tickets (one per TLS 1.3 handshake, ``NUM_TICKETS``; the ticket key is per context,
so tickets survive until the next reload and are per edge process).  With several pairs, the
SNI callback switches a connection's context to the pair its host name picks; with one pair
(``tls_cert`` / ``tls_key``, or a directory holding only ``default``) there is no callback:
every name gets that pair anyway (the same holds for a directory of ``default_<port>`` pairs
only), and the handshake skips a call into Python.  A reload builds new contexts: open
connections keep the context they were made with; new connections get the new ones.
"""

from __future__ import annotations

import datetime
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from broker.config import Config
from broker.errors import ConfigError

ALPN = ["http/1.1"]
MAX_NAME = 253  # longest DNS name (Pushpin refuses longer SNI names too)
# TLS 1.3 session tickets sent per handshake (OpenSSL's default is 2): each new connection,
# resumed or not, gets a fresh one, so a client always holds one for its next connection (and
# RFC 8446 clients use a ticket once); a second costs an encryption and a record per handshake
NUM_TICKETS = 1
_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE


class EncryptedKeyError(ConfigError):
    """A private key asks for a password (raised from the ssl module's password callback, so
    that loading never prompts on a terminal)."""


def _no_password() -> str:
    raise EncryptedKeyError(["the private key is encrypted (not supported)"])


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for one PEM pair; ``ConfigError`` naming the file when it cannot be."""
    ctx = base_context()
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except EncryptedKeyError:
        raise ConfigError([f"{key}: the private key is encrypted (not supported)"]) from None
    except FileNotFoundError as exc:
        raise ConfigError([f"{exc.filename or cert}: no such file"]) from exc
    except PermissionError as exc:
        raise ConfigError([f"{exc.filename or cert}: cannot read ({exc.strerror})"]) from exc
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in reason or "key values mismatch" in str(exc):
            raise ConfigError([f"{key}: the private key does not match {cert}"]) from exc
        raise ConfigError(
            [f"{cert} / {key}: not a PEM certificate chain and private key ({reason})"]
        ) from exc
    except OSError as exc:
        raise ConfigError([f"{cert} / {key}: cannot read ({exc.strerror})"]) from exc
    return ctx


def base_context() -> ssl.SSLContext:
    """The settings every client-side TLS context has (module docstring), without a pair."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= _OPTIONS
    ctx.set_alpn_protocols(ALPN)
    ctx.num_tickets = NUM_TICKETS
    return ctx


def check_validity(cert: str, now: datetime.datetime) -> str | None:
    """A problem with ``cert``'s first (leaf) certificate's dates, or None."""
    from cryptography import x509

    try:
        with open(cert, "rb") as fh:
            leaf = x509.load_pem_x509_certificate(fh.read())
    except (OSError, ValueError) as exc:
        return f"{cert}: cannot read the certificate ({exc})"
    not_after = leaf.not_valid_after_utc
    if not_after <= now:
        return f"{cert}: the certificate expired on {not_after:%Y-%m-%d %H:%M:%S} UTC"
    not_before = leaf.not_valid_before_utc
    if not_before > now:
        return f"{cert}: the certificate is not valid before {not_before:%Y-%m-%d %H:%M:%S} UTC"
    return None


def load_pair(cert: str, key: str, now: datetime.datetime) -> ssl.SSLContext:
    """Load and check one pair (``ConfigError`` with every problem found)."""
    ctx = server_context(cert, key)
    problem = check_validity(cert, now)
    if problem:
        raise ConfigError([problem])
    return ctx


@dataclass(frozen=True, slots=True)
class Certificates:
    """The server contexts of one load: by lowercase name (``default``, ``default_<port>``,
    host names, ``_.<domain>`` wildcards)."""

    by_name: Mapping[str, ssl.SSLContext]
    files: tuple[str, ...] = ()  # the certificate files loaded (for the log)
    _fallback: ssl.SSLContext = field(default_factory=base_context)

    def for_port(self, port: int) -> ssl.SSLContext:
        """The context a connection on HTTPS ``port`` starts with (its default pair; without
        one, a context with no certificate: only an SNI name with a pair completes)."""
        ctx = self.by_name.get(f"default_{port}") or self.by_name.get("default")
        return ctx if ctx is not None else self._fallback

    def pick(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for an SNI host name, or None (keep the listener's default)."""
        if not server_name or len(server_name) > MAX_NAME:
            return None
        name = server_name.lower().rstrip(".")
        ctx = self.by_name.get(name)
        if ctx is None and "." in name:
            ctx = self.by_name.get("_" + name[name.index(".") :])
        return ctx


def _pairs_in(directory: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``(name, cert, key)`` for every ``<name>.crt`` with a ``<name>.key`` in ``directory``."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        return [], [f"tls_certs_dir: cannot read {directory}: {exc.strerror}"]
    pairs, problems = [], []
    names = set(entries)
    for entry in entries:
        if not entry.endswith(".crt"):
            continue
        name = entry[: -len(".crt")]
        if name + ".key" not in names:
            problems.append(f"tls_certs_dir: {entry} has no {name}.key beside it")
            continue
        pairs.append(
            (name.lower(), os.path.join(directory, entry), os.path.join(directory, name + ".key"))
        )
    if not pairs and not problems:
        problems.append(f"tls_certs_dir: {directory} holds no <name>.crt / <name>.key pair")
    return pairs, problems


def load_certificates(cfg: Config, now: datetime.datetime | None = None) -> Certificates | None:
    """Every pair ``cfg`` names, loaded and checked; None when no certificate is configured.
    ``ConfigError`` lists every problem (all files are tried)."""
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    wanted: list[tuple[str, str, str]] = []
    problems: list[str] = []
    if cfg.tls_cert or cfg.tls_key:
        if not (cfg.tls_cert and cfg.tls_key):
            problems.append("tls_cert and tls_key: set both (a PEM certificate and its key)")
        else:
            wanted.append(("default", cfg.tls_cert, cfg.tls_key))
    if cfg.tls_certs_dir:
        pairs, dir_problems = _pairs_in(cfg.tls_certs_dir)
        problems.extend(dir_problems)
        if wanted:  # tls_cert / tls_key: the default, the directory's names beside it
            pairs = [p for p in pairs if p[0] != "default"]
        wanted.extend(pairs)
    if not wanted and not problems:
        return None
    by_name: dict[str, ssl.SSLContext] = {}
    for name, cert, key in wanted:
        try:
            by_name[name] = load_pair(cert, key, now)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    certs = Certificates(by_name, tuple(cert for _, cert, _ in wanted))
    if any(_is_host(name) for name in by_name):  # else no callback: nothing to pick per name
        callback = _sni_callback(certs)
        for ctx in (*by_name.values(), certs._fallback):
            ctx.sni_callback = callback
    return certs


def _is_host(name: str) -> bool:
    """A pair's name that an SNI host name can pick (not a listener's default)."""
    return name != "default" and not name.startswith("default_")


SniCallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]


def _sni_callback(certs: Certificates) -> SniCallback:
    def on_server_name(
        conn: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> int | None:
        picked = certs.pick(server_name)
        if picked is not None and picked is not ctx:
            conn.context = picked
        return None

    return on_server_name
