"""CurveZMQ keys and ZAP authentication (sans-IO; no sockets, no zmq context).

Multi-host deployments encrypt and authenticate the broker's ZeroMQ sockets with CurveZMQ
(RFC 26).  The broker is the Curve *server*: ``curve_secret_key`` turns Curve on for the edge
sockets (``edge_pub``, ``edge_ctl``) and, with ``curve_publishers = true``, for the publisher
sockets too (``push_in``, ``sub_in``, ``command``; off by default because pubcontrol cannot do
Curve).  Edges are Curve *clients*: they need the broker's public key (``curve_public_key``)
and their own key pair (``curve_client_secret_key``; the public half is derived).

Which clients may connect is decided by ZAP (RFC 27): libzmq asks a handler bound on
``inproc://zeromq.zap.01`` in the socket's context about every handshake.  ``zap_reply`` is that
handler's logic: the broker's server module runs it on a ROUTER socket in a trio task, so no
thread is needed.  ``curve_allowed_clients`` lists the accepted client public keys (Z85), files
holding keys (one a line; lines starting with ``#`` are comments), or ``"*"`` (any client
with a valid handshake: encryption without client authentication).

Keys are Z85 text (40 characters for 32 bytes), as ``gripcast keygen`` prints them; a config
value that is not a Z85 key is read as the path of a file holding one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from broker.errors import GripcastError

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "gripcast"
ZAP_VERSION = b"1.0"
KEY_LEN = 40  # Z85 text of a 32-byte key
_Z85 = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
EDGE_SOCKETS = ("edge_pub", "edge_ctl")
PUBLISHER_SOCKETS = ("push_in", "sub_in", "command")


class CurveKeyError(GripcastError):
    """A key value is neither a Z85 key nor a readable file holding one."""


def is_z85_key(text: str | bytes) -> bool:
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    return len(data) == KEY_LEN and all(c in _Z85 for c in data)


def _read_keys(path: str, what: str) -> list[bytes]:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise CurveKeyError(
            f"{what}: not a Z85 key, and cannot read it as a file: {exc.strerror or exc}"
        ) from None
    keys = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):  # '#' is a Z85 digit: comments are whole lines
            continue
        if "=" in line and not is_z85_key(line):  # 'public_key = "..."' as keygen prints it
            line = line.split("=", 1)[1].strip().strip('"').strip("'")
        if not is_z85_key(line):
            raise CurveKeyError(f"{what}: {path} line {n} is not a Z85 key")
        keys.append(line.encode("ascii"))
    return keys


def load_key(spec: str, what: str) -> bytes:
    """One Z85 key from a config value (the key itself, or a file holding exactly one)."""
    spec = spec.strip()
    if is_z85_key(spec):
        return spec.encode("ascii")
    keys = _read_keys(spec, what)
    if len(keys) != 1:
        raise CurveKeyError(f"{what}: {spec} holds {len(keys)} keys, expected one")
    return keys[0]


def load_allowed(specs: Sequence[str]) -> frozenset[bytes] | None:
    """The allowed client public keys (Z85 bytes); None means any client ("*")."""
    keys: set[bytes] = set()
    for spec in specs:
        spec = spec.strip()
        if spec == "*":
            return None
        if is_z85_key(spec):
            keys.add(spec.encode("ascii"))
        elif spec:
            keys.update(_read_keys(spec, "curve_allowed_clients"))
    return frozenset(keys)


def generate_keypair() -> tuple[str, str]:
    """A fresh (public, secret) key pair, Z85 text."""
    import zmq  # only the key maths; no sockets

    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def public_of(secret: bytes) -> bytes:
    import zmq

    return zmq.curve_public(secret)


@dataclass(frozen=True, slots=True)
class CurveSettings:
    """Resolved Curve settings of one process (keys as Z85 bytes)."""

    server_secret: bytes | None  # broker: Curve server on
    server_public: bytes | None  # broker's public key (edges: the server key)
    allowed: frozenset[bytes] | None  # None: any client key
    client_secret: bytes | None  # an edge's own pair (None: an ephemeral pair)
    client_public: bytes | None
    publishers: bool

    @property
    def server(self) -> bool:
        return self.server_secret is not None

    @property
    def client(self) -> bool:
        return self.server_public is not None

    def server_sockets(self) -> tuple[str, ...]:
        """Names of the broker sockets that speak Curve."""
        if not self.server:
            return ()
        return EDGE_SOCKETS + (PUBLISHER_SOCKETS if self.publishers else ())


def curve_settings(cfg: Any) -> CurveSettings:
    """Resolve the ``curve_*`` keys of a Config (raises CurveKeyError on a bad key)."""
    server_secret = server_public = client_secret = client_public = None
    if cfg.curve_secret_key:
        server_secret = load_key(cfg.curve_secret_key, "curve_secret_key")
        server_public = public_of(server_secret)
    if cfg.curve_public_key:
        given = load_key(cfg.curve_public_key, "curve_public_key")
        if server_public is not None and given != server_public:
            raise CurveKeyError("curve_public_key: does not match curve_secret_key")
        server_public = given
    if cfg.curve_client_secret_key:
        client_secret = load_key(cfg.curve_client_secret_key, "curve_client_secret_key")
        client_public = public_of(client_secret)
    allowed = load_allowed(cfg.curve_allowed_clients)
    return CurveSettings(
        server_secret,
        server_public,
        allowed,
        client_secret,
        client_public,
        bool(cfg.curve_publishers),
    )


def validate_curve(cfg: Any) -> list[str]:
    """Every problem with the ``curve_*`` keys, for config validation."""
    try:
        s = curve_settings(cfg)
    except CurveKeyError as exc:
        return [str(exc)]
    problems = []
    if s.server and s.allowed is not None and not s.allowed:
        problems.append(
            "curve_allowed_clients: empty, so no edge could connect (list client "
            'public keys, key files, or "*" for any client)'
        )
    if s.publishers and not s.server:
        problems.append("curve_publishers: needs curve_secret_key (the broker's key pair)")
    if s.client_secret is not None and not s.client:
        problems.append("curve_client_secret_key: needs curve_public_key (the broker's public key)")
    return problems


def server_options(s: CurveSettings) -> dict[str, Any]:
    """Socket options (by zmq constant name) for a broker socket that speaks Curve."""
    return {
        "CURVE_SERVER": 1,
        "CURVE_SECRETKEY": s.server_secret,
        "CURVE_PUBLICKEY": s.server_public,
        "ZAP_DOMAIN": ZAP_DOMAIN.encode(),
    }


def client_options(
    s: CurveSettings, ephemeral: tuple[bytes, bytes] | None = None
) -> dict[str, Any]:
    """Socket options for a socket connecting to the broker with Curve (empty when off)."""
    if not s.client:
        return {}
    pair = (s.client_public, s.client_secret) if s.client_secret else ephemeral
    if pair is None:  # the caller's mistake (unpacking None raised this TypeError before)
        raise TypeError("client_options: no client key pair and no ephemeral one")
    public, secret = pair
    return {
        "CURVE_SERVERKEY": s.server_public,
        "CURVE_PUBLICKEY": public,
        "CURVE_SECRETKEY": secret,
    }


@dataclass(frozen=True, slots=True)
class ZapDecision:
    reply: list[bytes]  # the reply frames (without the ROUTER routing prefix)
    allowed: bool
    mechanism: str
    client_key: str  # Z85 of the client's public key ("" for non-Curve)
    address: str


def zap_reply(
    frames: Sequence[bytes],
    allowed: frozenset[bytes] | None,
    z85_encode: Callable[[bytes], bytes] | None = None,
) -> ZapDecision:
    """Decide one ZAP request (RFC 27), given the frames after the routing prefix.

    Request: version, request id, domain, address, identity, mechanism, credentials...
    Reply: version, request id, status code, status text, user id, metadata.  Only CURVE
    handshakes whose client key is allowed (or any, when ``allowed`` is None) pass; NULL and
    PLAIN are refused, since a socket asks ZAP only when it was configured for Curve.
    """
    if len(frames) < 6 or frames[0] != ZAP_VERSION:
        rid = frames[1] if len(frames) > 1 else b""
        return ZapDecision(
            [ZAP_VERSION, rid, b"500", b"Bad ZAP request", b"", b""], False, "", "", ""
        )
    rid, address, mechanism = frames[1], frames[3], frames[5]
    addr = address.decode("latin-1")
    mech = mechanism.decode("latin-1")
    if mechanism != b"CURVE" or len(frames) < 7 or len(frames[6]) != 32:
        return ZapDecision(
            [ZAP_VERSION, rid, b"400", b"Curve required", b"", b""], False, mech, "", addr
        )
    if z85_encode is None:
        from zmq.utils import z85

        z85_encode = z85.encode
    key = z85_encode(frames[6])
    ok = allowed is None or key in allowed
    if ok:
        reply = [ZAP_VERSION, rid, b"200", b"OK", key, b""]
    else:
        reply = [ZAP_VERSION, rid, b"400", b"Unknown client key", b"", b""]
    return ZapDecision(reply, ok, mech, key.decode("ascii"), addr)


def keygen_text() -> str:
    """What ``gripcast keygen`` prints: a fresh key pair as TOML-friendly lines."""
    public, secret = generate_keypair()
    return (
        "# gripcast CurveZMQ key pair (Z85); keep the secret key secret\n"
        f'public_key = "{public}"\n'
        f'secret_key = "{secret}"\n'
    )


def write_keypair(prefix: str) -> tuple[str, str]:
    """Write ``PREFIX.key`` (secret, mode 0600) and ``PREFIX.pub``; return their paths.

    Both are created new (``O_EXCL``: an existing file, or a symlink planted where the key
    goes, is never written through or replaced; ``O_NOFOLLOW`` as well); if either exists,
    ``CurveKeyError`` says so and nothing is written."""
    public, secret = generate_keypair()
    sec_path, pub_path = prefix + ".key", prefix + ".pub"
    for path in (sec_path, pub_path):
        if os.path.lexists(path):
            raise CurveKeyError(
                f"{path} already exists: not overwriting a key file (remove it "
                "or choose another --out)"
            )
    _write_new(sec_path, f"# gripcast CurveZMQ secret key (Z85)\n{secret}\n", 0o600)
    try:
        _write_new(pub_path, f"# gripcast CurveZMQ public key (Z85)\n{public}\n", 0o644)
    except CurveKeyError:
        os.unlink(sec_path)  # ours: created just above
        raise
    return sec_path, pub_path


def _write_new(path: str, text: str, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CurveKeyError(
            f"{path} already exists: not overwriting a key file (remove it or choose another --out)"
        ) from None
    except OSError as exc:
        raise CurveKeyError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def heartbeat_options(interval_s: float) -> dict[str, Any]:
    """ZMTP heartbeats: PING every ``interval_s``; a peer silent for 3 intervals is dropped (and
    a connecting side reconnects), so a cut TCP path between hosts is noticed (0: off)."""
    if interval_s <= 0:
        return {}
    ivl = max(1, int(interval_s * 1000))
    return {"HEARTBEAT_IVL": ivl, "HEARTBEAT_TIMEOUT": 3 * ivl, "HEARTBEAT_TTL": 3 * ivl}


def link_options(cfg: Any) -> dict[str, Any]:
    """Socket options for an edge's (or a tool's) sockets toward the broker: heartbeats, and
    Curve client keys when ``curve_public_key`` is set (an ephemeral key pair when the edge has
    no ``curve_client_secret_key``: encrypted, accepted only by a broker allowing ``"*"``)."""
    opts = heartbeat_options(cfg.zmq_heartbeat_s)
    s = curve_settings(cfg)
    if s.client:
        ephemeral = None
        if s.client_secret is None:
            public, secret = generate_keypair()
            ephemeral = (public.encode("ascii"), secret.encode("ascii"))
        opts.update(client_options(s, ephemeral))
    return opts
