"""Redis Sentinel, the sans-IO part: the store URL form and the meaning of the sentinels' replies.

URL form (the ``store`` key, ``--store``), the one the ``redis-sentinel-url`` package and
Kombu made familiar::

    redis+sentinel://[:password@]host1[:port1][,host2[:port2],...]/<master-name>[/db]
                     [?sentinel_password=<password>]

* ``hostN:portN``: the sentinels (port 26379 by default), asked in the order given;
  ``[::1]:26379`` for an IPv6 address;
* ``master-name``: the name the sentinels monitor (``sentinel monitor <master-name> ...``);
* ``db``: the database number on the master (default 0);
* ``password``: AUTH on the master (and its replicas once promoted);
* ``sentinel_password``: AUTH on the sentinels themselves (``requirepass`` in sentinel.conf).

How the broker uses the replies (``broker.store.sentinelclient`` does the I/O):

* ``SENTINEL get-master-addr-by-name <name>`` answers ``[host, port]`` or nil (the sentinel
  does not know the name): ``master_address``; a sentinel that answers with an error or not at
  all is skipped and the next one asked;
* ``ROLE`` on the address found must answer ``master`` (``is_master_role``): a stale sentinel
  can name a former master that came back as a replica, and a write there would fail;
* a reply ``-READONLY``, ``-LOADING`` or ``-MASTERDOWN`` (``needs_new_master``) from the
  connected server means the master is not (or not yet) this server: the connection is dropped
  and the master resolved again through the sentinels;
* the sentinels' pub/sub message ``+switch-master <name> <old-ip> <old-port> <new-ip>
  <new-port>`` (``parse_switch_master``) announces a completed failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from broker.errors import ConfigError, RemoteProtocolError
from broker.store.addr import hostport, split_hosts_url

SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
# error-reply codes that mean "this server is not (or not yet) a usable master"
FAILOVER_CODES = frozenset({"READONLY", "LOADING", "MASTERDOWN"})


@dataclass(frozen=True, slots=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None

    def describe(self) -> str:
        """The URL without passwords (for logs)."""
        hosts = ",".join(hostport(h, p) for h, p in self.sentinels)
        return f"{SCHEME}://{hosts}/{self.master_name}/{self.db}"


@dataclass(frozen=True, slots=True)
class SwitchMaster:
    """A ``+switch-master`` announcement: ``master_name`` moved from ``old`` to ``new``."""

    master_name: str
    old: tuple[str, int]
    new: tuple[str, int]


class SentinelReplyError(RemoteProtocolError):
    """A sentinel or server reply that does not have the expected shape (the store treats the
    server as unavailable: ``RedisUnavailable``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=503)


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL (module docstring); ConfigError naming what is wrong."""
    sentinels, password, path, query, problems = split_hosts_url(
        url, SCHEME, "Sentinel URL", SENTINEL_PORT, "a sentinel", "sentinel host:port"
    )
    segments = [unquote(s) for s in path.split("/")] if path else []
    while segments and segments[-1] == "":
        segments.pop()
    master_name = segments[0] if segments else ""
    db = 0
    if not master_name:
        problems.append(
            f"store: Sentinel URL needs the master name: {SCHEME}://host:port/<master-name>[/db]"
        )
    if len(segments) > 2:
        problems.append(f"store: Sentinel URL path is /<master-name>[/db] (got {path!r})")
    elif len(segments) == 2:
        if not segments[1].isdigit():
            problems.append(f"store: Sentinel URL database must be a number (got {segments[1]!r})")
        else:
            db = int(segments[1])
    sentinel_password: str | None = None
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if key == "sentinel_password":
            sentinel_password = values[-1] or None
        else:
            problems.append(f"store: Sentinel URL: unknown option {key!r} (sentinel_password)")
    if len(set(sentinels)) != len(sentinels):
        problems.append("store: Sentinel URL lists a sentinel twice")
    if problems:
        raise ConfigError(problems)
    return SentinelURL(tuple(sentinels), master_name, db, password, sentinel_password)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise SentinelReplyError(f"expected a string, got {value!r}")


def master_address(reply: Any) -> tuple[str, int] | None:
    """``SENTINEL get-master-addr-by-name`` -> ``(host, port)``, None if the name is unknown."""
    if reply is None:
        return None
    if not isinstance(reply, list) or len(reply) != 2:
        raise SentinelReplyError(f"get-master-addr-by-name: expected [host, port], got {reply!r}")
    host = _text(reply[0])
    port_text = _text(reply[1])
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SentinelReplyError(f"get-master-addr-by-name: bad address {reply!r}")
    return host, int(port_text)


def is_master_role(reply: Any) -> bool:
    """``ROLE``'s reply: ``[b"master", offset, replicas]`` for a master."""
    if not isinstance(reply, list) or not reply:
        raise SentinelReplyError(f"ROLE: unexpected reply {reply!r}")
    return _text(reply[0]) == "master"


def needs_new_master(error: str) -> bool:
    """True for an error reply that means the master moved or is not ready (module docstring).

    A script that writes on a replica fails with ``-READONLY ...`` (Redis 7) or ``-ERR Error
    running script ... READONLY ...`` (older): both count.
    """
    code = error.split(" ", 1)[0]
    return code in FAILOVER_CODES or "-READONLY " in error or " READONLY " in error


def parse_switch_master(message: Any) -> SwitchMaster | None:
    """A pub/sub push ``[b"message", b"+switch-master", b"<name> <ip> <port> <ip> <port>"]``
    -> ``SwitchMaster``; None for any other message (subscribe confirmations included)."""
    if not isinstance(message, list) or len(message) != 3:
        return None
    kind, channel, payload = message
    if kind != b"message" or channel != b"+switch-master" or not isinstance(payload, bytes):
        return None
    parts = payload.decode("utf-8", "replace").split()
    if len(parts) != 5 or not parts[2].isdigit() or not parts[4].isdigit():
        raise SentinelReplyError(f"+switch-master: unexpected payload {payload!r}")
    return SwitchMaster(parts[0], (parts[1], int(parts[2])), (parts[3], int(parts[4])))
