"""Finding the Redis master through Redis Sentinel (the I/O; ``broker.store.sentinel`` is the
sans-IO part: the URL form and the replies).

``SentinelLocator`` is the ``locator`` a ``RedisClient`` asks each time it (re)connects:
``locate()`` asks the sentinels, in order, ``SENTINEL get-master-addr-by-name`` and returns the
first address one of them knows; a sentinel that does not answer (down, timeout, an error
reply, an unknown name) is skipped.  The sentinel that answered moves to the front, so a dead
sentinel costs one refused connection per lookup at most once.  ``RedisClient`` then checks
``ROLE`` on that address (a stale sentinel may still name the old master) and drops the
connection on ``-READONLY``/``-LOADING``/``-MASTERDOWN``, so the next request locates again:
that is how a failover is followed.

``watch()`` (optional, run in a nursery) subscribes to ``+switch-master`` on the sentinels and
calls ``on_switch`` when the monitored master moves, so a client connected to a demoted master
that still accepts connections moves at once instead of at its next refused write.

A sentinel connection is one ``RedisClient`` per sentinel (this module opens no socket of its
own: ``broker.store.redisclient`` is the only module that talks to Redis).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from broker.errors import StoreUnavailable
from broker.store.redisclient import RedisClient, RedisReplyError, RedisUnavailable
from broker.store.sentinel import (
    SentinelReplyError,
    SentinelURL,
    SwitchMaster,
    master_address,
    parse_switch_master,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SentinelLocatorStatistics:
    master: tuple[str, int] | None  # the last address a sentinel gave
    lookups: int
    lookup_failures: int  # lookups no sentinel could answer
    sentinel_errors: int  # sentinels that did not answer a lookup
    master_changes: int  # the address changed (a failover followed)
    switch_messages: int  # +switch-master announcements received
    watching: tuple[str, int] | None  # the sentinel watch() is subscribed to


class SentinelLocator:
    """Ask the sentinels of ``url`` where the master is; see the module docstring."""

    def __init__(self, url: SentinelURL, *, timeout_s: float = 1.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._order = list(url.sentinels)
        self._clients: dict[tuple[str, int], RedisClient] = {}
        self._master: tuple[str, int] | None = None
        self._lookups = 0
        self._lookup_failures = 0
        self._sentinel_errors = 0
        self._master_changes = 0
        self._switch_messages = 0
        self._watching: tuple[str, int] | None = None
        self._closed = False

    @property
    def master_name(self) -> str:
        return self.url.master_name

    def _client(self, addr: tuple[str, int]) -> RedisClient:
        client = self._clients.get(addr)
        if client is None:
            client = self._clients[addr] = RedisClient(
                addr[0],
                addr[1],
                password=self.url.sentinel_password,
                timeout_s=self.timeout_s,
                backoff_initial_s=0.0,  # a lookup asks each sentinel once, no fast-fail period
                backoff_max_s=0.0,
                client_name="gripcast-broker-sentinel",
            )
        return client

    async def locate(self) -> tuple[str, int]:
        """The master's address according to the first sentinel that knows; RedisUnavailable
        when none does."""
        self._lookups += 1
        errors = []
        for addr in list(self._order):
            try:
                reply = await self._client(addr).execute(
                    "SENTINEL", "get-master-addr-by-name", self.url.master_name
                )
                found = master_address(reply)
            except (StoreUnavailable, RedisReplyError, SentinelReplyError) as exc:
                self._sentinel_errors += 1
                errors.append(f"{addr[0]}:{addr[1]}: {exc}")
                continue
            if found is None:
                self._sentinel_errors += 1
                errors.append(f"{addr[0]}:{addr[1]}: unknown master {self.url.master_name!r}")
                continue
            if addr != self._order[0]:  # the one that answered goes first next time
                self._order.remove(addr)
                self._order.insert(0, addr)
            self._note(found)
            return found
        self._lookup_failures += 1
        raise RedisUnavailable(
            f"no sentinel knows master {self.url.master_name!r}: " + "; ".join(errors)
        )

    def _note(self, found: tuple[str, int]) -> None:
        if found != self._master:
            if self._master is not None:
                self._master_changes += 1
                log.warning(
                    "redis master moved name=%s from=%s:%d to=%s:%d",
                    self.url.master_name,
                    self._master[0],
                    self._master[1],
                    found[0],
                    found[1],
                )
            else:
                log.info("redis master located name=%s at=%s:%d", self.url.master_name, *found)
            self._master = found

    async def watch(self, on_switch: Callable[[SwitchMaster], None]) -> None:
        """Follow ``+switch-master`` on the sentinels, forever (run it in a nursery).

        One sentinel at a time (the first that accepts the subscription); when it goes away the
        next one is used.  ``on_switch`` is called for this locator's master name only.
        """
        while not self._closed:
            for addr in list(self._order):
                client = RedisClient(
                    addr[0],
                    addr[1],
                    password=self.url.sentinel_password,
                    timeout_s=self.timeout_s,
                    client_name="gripcast-broker-sentinel-watch",
                )

                def on_message(message: object, addr: tuple[str, int] = addr) -> None:
                    if isinstance(message, list) and message[:1] == [b"subscribe"]:
                        self._watching = addr
                        log.debug("sentinel watch subscribed sentinel=%s:%d", *addr)
                        return
                    switch = _switch_or_none(message)
                    if switch is not None and switch.master_name == self.url.master_name:
                        self._switch_messages += 1
                        self._note(switch.new)
                        on_switch(switch)

                try:
                    async with client:
                        await client.serve_subscription(["+switch-master"], on_message)
                except StoreUnavailable as exc:
                    log.debug("sentinel watch lost sentinel=%s:%d error=%s", *addr, exc)
                finally:
                    self._watching = None
            await trio.sleep(max(self.timeout_s, 0.5))

    def statistics(self) -> SentinelLocatorStatistics:
        return SentinelLocatorStatistics(
            master=self._master,
            lookups=self._lookups,
            lookup_failures=self._lookup_failures,
            sentinel_errors=self._sentinel_errors,
            master_changes=self._master_changes,
            switch_messages=self._switch_messages,
            watching=self._watching,
        )

    async def aclose(self) -> None:
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def _switch_or_none(message: object) -> SwitchMaster | None:
    try:
        return parse_switch_master(message)
    except SentinelReplyError as exc:
        log.warning("ignoring a malformed +switch-master message: %s", exc)
        return None
