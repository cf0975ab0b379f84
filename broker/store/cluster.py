"""Redis Cluster, the sans-IO part: the store URL form, hash slots, key tags, redirections.

URL form (the ``store`` key, ``--store``)::

    redis+cluster://[:password@]host1:port1[,host2:port2,...][/]

* ``hostN:portN``: seed nodes (any master or replica; port 6379 by default), asked in the
  order given for the slot map (``CLUSTER SLOTS``); the other nodes are learnt from it;
  ``[::1]:7000`` for an IPv6 address;
* ``password``: AUTH on every node.  Redis Cluster has one database (0): no ``/db``.

Slots (the Redis Cluster specification): a key's slot is ``CRC16(key) mod 16384`` (CRC16-CCITT,
XMODEM variant), computed over the *hash tag* when the key has one: the part between the first
``{`` and the first ``}`` after it, when that part is not empty.

Key tags: every key of one channel carries the same tag, so the store's scripts touch one slot
(``channel_tag``): the channel name itself (``{news}``) when it has no brace and is not empty,
otherwise ``{#<sha1 of the channel>}:<channel>`` (the channel is kept in the key, so two
channels never share a key even if their digests met).  A tagged key of the first form ends
with ``}``; one of the second form has a ``}:`` after a ``#``-digest, which no first-form key
(no brace inside its tag) can contain: the two forms never collide.

Redirections (error replies): ``MOVED <slot> <host>:<port>`` (the slot lives elsewhere now:
update the map, send the command there) and ``ASK <slot> <host>:<port>`` (the slot is being
migrated: send ``ASKING`` then the command to that node, once, without changing the map);
``TRYAGAIN`` and ``CLUSTERDOWN`` are refusals (the store answers 503).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from broker.errors import ConfigError, RemoteProtocolError
from broker.store.addr import hostport, split_hosts_url

SCHEME = "redis+cluster"
SLOTS = 16384
DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class ClusterURL:
    seeds: tuple[tuple[str, int], ...]
    password: str | None = None

    def describe(self) -> str:
        """The URL without the password (for logs)."""
        return f"{SCHEME}://" + ",".join(hostport(h, p) for h, p in self.seeds)


@dataclass(frozen=True, slots=True)
class Redirect:
    """A ``MOVED`` or ``ASK`` error reply."""

    ask: bool
    slot: int
    node: tuple[str, int]


class ClusterReplyError(RemoteProtocolError):
    """A ``CLUSTER SLOTS`` reply without the expected shape."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=503)


def is_cluster_url(url: str) -> bool:
    return url.startswith(SCHEME + "://")


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse a ``redis+cluster://`` URL (module docstring); ConfigError listing every problem."""
    seeds, password, path, query, problems = split_hosts_url(
        url, SCHEME, "Redis Cluster URL", DEFAULT_PORT, "a node"
    )
    if path.strip("/"):
        problems.append(
            f"store: Redis Cluster URL takes no path (a cluster has one database; got {path!r})"
        )
    if query:
        problems.append(f"store: Redis Cluster URL takes no options (got {query!r})")
    if len(set(seeds)) != len(seeds):
        problems.append("store: Redis Cluster URL lists a node twice")
    if problems:
        raise ConfigError(problems)
    return ClusterURL(tuple(seeds), password)


def _crc16_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM): the checksum Redis Cluster hashes keys with."""
    crc = 0
    table = _TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ b) & 0xFF]
    return crc


def key_slot(key: bytes) -> int:
    """The hash slot of ``key`` (its hash tag's, when it has one)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % SLOTS


def channel_tag(channel: str) -> bytes:
    """The tagged form of ``channel`` used in its keys (module docstring)."""
    raw = channel.encode("utf-8")
    if raw and b"{" not in raw and b"}" not in raw:
        return b"{" + raw + b"}"
    digest = hashlib.sha1(raw).hexdigest().encode("ascii")
    return b"{#" + digest + b"}:" + raw


def parse_redirect(error: str) -> Redirect | None:
    """``MOVED 3999 127.0.0.1:6381`` / ``ASK ...`` -> ``Redirect``; None for other errors."""
    parts = error.split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK") or not parts[1].isdigit():
        return None
    host, _, port = parts[2].rpartition(":")
    if not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Redirect(parts[0] == "ASK", int(parts[1]), (host, int(port)))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise ClusterReplyError(f"CLUSTER SLOTS: expected a string, got {value!r}")


def parse_slots(reply: Any, default_host: str) -> list[tuple[int, int, tuple[str, int]]]:
    """``CLUSTER SLOTS`` -> ``[(first, last, master)]``; an empty host means the node asked."""
    if not isinstance(reply, list):
        raise ClusterReplyError(f"CLUSTER SLOTS: unexpected reply {reply!r}")
    out = []
    for entry in reply:
        if not isinstance(entry, list) or len(entry) < 3 or not isinstance(entry[2], list):
            raise ClusterReplyError(f"CLUSTER SLOTS: unexpected entry {entry!r}")
        first, last, master = entry[0], entry[1], entry[2]
        if not isinstance(first, int) or not isinstance(last, int) or len(master) < 2:
            raise ClusterReplyError(f"CLUSTER SLOTS: unexpected entry {entry!r}")
        host = _text(master[0]) or default_host
        if not isinstance(master[1], int):
            raise ClusterReplyError(f"CLUSTER SLOTS: unexpected port in {entry!r}")
        out.append((first, last, (host, master[1])))
    return out
