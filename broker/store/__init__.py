"""The broker's history stores: ``memory`` (memory.py) and ``redis`` (redis.py, over
redisclient.py); this module chooses one from the config (``store`` key, ``--store`` flag).

* ``memory`` (default): ``MemoryStore`` over ``MemoryHistory``; nothing survives a restart
  (every channel starts a new epoch, which edges report to their clients).
* ``redis://[:password@]host[:port][/db]``: ``RedisStore``; epoch, seq and history survive a
  broker restart.  The client connects lazily: a broker started while Redis is down runs, and
  refuses publishes (HTTP 503, an error reply on the command socket, PUSH/SUB items logged and
  counted) until Redis answers; it reconnects by itself (with backoff, at most
  ``REDIS_BACKOFF_MAX_S`` between attempts) on the next publish or history request.
* ``redis+sentinel://[:password@]host1[:port1],host2[:port2],.../<master-name>[/db]``: the same
  ``RedisStore`` on the master the sentinels name, following failovers
  (``broker.store.sentinel`` for the URL form, ``broker.store.sentinelclient`` for the lookup).

* ``redis+cluster://[:password@]host:port[,host:port...]``: the same ``RedisStore`` on a Redis
  Cluster (``broker.store.cluster`` for the URL form and key tags,
  ``broker.store.clusterclient`` for slots and redirections); each channel's keys in one slot.

Every Redis form sequences across brokers (``RedisStore``'s shared sequencing: Redis
de-duplicates ids within ``id_cache_ttl_s`` and holds an item whose prev-id is not the
channel's last id, up to ``message_wait_s``), so several brokers may share one Redis.

``redis_wait_replicas`` / ``redis_wait_timeout_ms`` (any Redis form): acknowledge only what
that many replicas confirmed (``WAIT``), see ``broker.store.redis``.
"""

from __future__ import annotations

import logging

from broker.config import Config
from broker.errors import StoreUnavailable
from broker.history import MemoryHistory
from broker.namespaces import NamespaceTable
from broker.store.cluster import is_cluster_url, parse_cluster_url
from broker.store.clusterclient import RedisClusterClient
from broker.store.memory import MemoryStore, Store
from broker.store.redis import RedisStore
from broker.store.redisclient import RedisClient, parse_redis_url
from broker.store.sentinel import is_sentinel_url, parse_sentinel_url
from broker.store.sentinelclient import SentinelLocator

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0  # one round trip; a publish waits at most this long for Redis
REDIS_BACKOFF_MAX_S = 1.0
SENTINEL_TIMEOUT_S = 0.5  # one sentinel lookup; a dead sentinel is skipped after this
STARTUP_PROBE_S = 2.0


def open_store(cfg: Config) -> Store:
    """The store ``cfg.store`` names (no I/O yet; raises ConfigError for a bad URL)."""
    if cfg.store == "memory":
        return MemoryStore(
            MemoryHistory(
                max_items=cfg.history_max_items,
                max_age_s=cfg.history_max_age_s,
                max_bytes=cfg.history_max_bytes,
                max_total_bytes=cfg.history_max_total_bytes,
                limits=NamespaceTable(cfg.namespaces),
            )
        )
    locator: SentinelLocator | None = None
    wait_s = cfg.redis_wait_timeout_ms / 1000 if cfg.redis_wait_replicas else 0.0
    client: RedisClient | RedisClusterClient
    if is_cluster_url(cfg.store):
        client = RedisClusterClient(
            parse_cluster_url(cfg.store),
            timeout_s=REDIS_TIMEOUT_S + wait_s,
            connect_timeout_s=REDIS_TIMEOUT_S,
            backoff_max_s=REDIS_BACKOFF_MAX_S,
            client_name="gripcast-broker",
        )
        return _redis_store(cfg, client, None)
    if is_sentinel_url(cfg.store):
        url = parse_sentinel_url(cfg.store)
        locator = SentinelLocator(url, timeout_s=SENTINEL_TIMEOUT_S)
        host, port, db, password = url.sentinels[0][0], 0, url.db, url.password
    else:
        host, port, db, password = parse_redis_url(cfg.store)
    client = RedisClient(
        host,
        port,
        db,
        password=password,
        timeout_s=REDIS_TIMEOUT_S + wait_s,  # a round trip includes WAIT's own timeout
        connect_timeout_s=REDIS_TIMEOUT_S,
        backoff_max_s=REDIS_BACKOFF_MAX_S,
        client_name="gripcast-broker",
        locator=locator,
    )
    return _redis_store(cfg, client, locator)


def _redis_store(
    cfg: Config, client: RedisClient | RedisClusterClient, locator: SentinelLocator | None
) -> RedisStore:
    return RedisStore(
        client,
        max_items=cfg.history_max_items,
        max_age_s=cfg.history_max_age_s,
        max_bytes=cfg.history_max_bytes,
        owns_client=True,
        wait_replicas=cfg.redis_wait_replicas,
        wait_timeout_ms=cfg.redis_wait_timeout_ms,
        locator=locator,
        id_cache_ttl_s=cfg.id_cache_ttl_s,
        check_prev_id=True,
        message_wait_s=cfg.message_wait_s,
        limits=NamespaceTable(cfg.namespaces) if cfg.namespaces else None,
    )


def describe(cfg: Config) -> str:
    """The store for logs, without a password."""
    if cfg.store == "memory":
        return "memory"
    if is_cluster_url(cfg.store):
        text = parse_cluster_url(cfg.store).describe()
    elif is_sentinel_url(cfg.store):
        text = parse_sentinel_url(cfg.store).describe()
    else:
        host, port, db, _ = parse_redis_url(cfg.store)
        text = f"redis://{host}:{port}/{db}"
    if cfg.redis_wait_replicas:
        text += f" wait_replicas={cfg.redis_wait_replicas}"
    return text


def parse_store_url(url: str) -> None:
    """Validate a Redis store URL of either form (ConfigError listing every problem)."""
    if is_cluster_url(url):
        parse_cluster_url(url)
    elif is_sentinel_url(url):
        parse_sentinel_url(url)
    else:
        parse_redis_url(url)


async def probe(store: Store, timeout_s: float = STARTUP_PROBE_S) -> bool:
    """Connect a networked store now if it can be (True); False (logged) if it is unreachable.

    The broker starts either way: an unreachable store only means publishes are refused until
    it answers.
    """
    if not isinstance(store, RedisStore):
        return True
    client = store.client
    try:
        await client.wait_connected(timeout_s=timeout_s)
        return True
    except StoreUnavailable as exc:
        log.error("store unreachable at startup, publishes are refused until it answers: %s", exc)
        return False
