"""A Redis Cluster client over ``RedisClient``s (one per master), for ``RedisStore``.

Theory of operation
-------------------

The client keeps a slot map (``CLUSTER SLOTS``: slot -> master address), asked from the seed
nodes of the URL, then from every node it has learnt, in turn, until one answers.  A request
is a list of commands, each with the slot it must run on (``pipeline``): the commands are
grouped by master and each group is pipelined on that master's connection (one round trip per
master, all masters at once), optionally followed by ``WAIT n ms`` on each master written to.
Replies come back in the order of the commands.

Redirections (``broker.store.cluster``): a ``MOVED`` reply updates the map for that slot, asks
for a full refresh before the next request, and the command is sent again to the node named (a
redirected command did not run, so sending it again is safe); an ``ASK`` reply sends ``ASKING``
and the command to the node named, once.  A ``TRYAGAIN`` reply (a multi-key command whose slot is being migrated
and whose keys are not all on one side yet; it did not run) is sent again after a short,
doubling delay, for at most ``TRYAGAIN_BUDGET_S``.  After ``MAX_REDIRECTS`` hops (or that
budget) the last error reply is returned (the store refuses: 503).

Failures: a master that cannot be reached raises ``RedisUnavailable`` (as ``RedisClient``
does) for the whole request and marks the map stale; the next request refreshes it (at most
once per ``REFRESH_MIN_S``), so once the cluster has promoted a replica the new master is used.
While the cluster has not yet done so, requests on the dead master's slots fail fast (its
client's reconnect backoff) and requests elsewhere may answer ``CLUSTERDOWN`` (the cluster
refuses while a slot has no master): both are refusals upstream (503).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import trio

from broker.errors import LocalProtocolError
from broker.store.addr import hostport
from broker.store.cluster import (
    SLOTS,
    ClusterReplyError,
    ClusterURL,
    parse_redirect,
    parse_slots,
)
from broker.store.redisclient import RedisClient, RedisClientStatistics, RedisUnavailable

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
TRYAGAIN_INITIAL_S = 0.01  # TRYAGAIN: retried after this, doubling up to TRYAGAIN_MAX_S,
TRYAGAIN_MAX_S = 0.2  # for at most TRYAGAIN_BUDGET_S (then the reply is the refusal)
TRYAGAIN_BUDGET_S = 1.0
TRYAGAIN_TRIES = 20
REFRESH_MIN_S = 0.1

Node = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ClusterClientStatistics:
    masters: int
    slots_covered: int
    refreshes: int
    refresh_failures: int
    moved: int
    asked: int
    tryagain: int
    requests: int
    nodes: tuple[RedisClientStatistics, ...]


class RedisClusterClient:
    """See the module docstring."""

    def __init__(
        self,
        url: ClusterURL,
        *,
        timeout_s: float = 5.0,
        connect_timeout_s: float | None = None,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        client_name: str | None = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.connect_timeout_s = timeout_s if connect_timeout_s is None else connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._client_name = client_name
        self._slots: list[Node | None] = [None] * SLOTS
        self._nodes: dict[Node, RedisClient] = {}
        self._known: list[Node] = list(url.seeds)
        self._stale = True
        self._last_refresh = float("-inf")
        self._refresh_lock = trio.Lock()
        self._closed = False
        self._refreshes = 0
        self._refresh_failures = 0
        self._moved = 0
        self._asked = 0
        self._tryagain = 0
        self._requests = 0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return not self._stale and any(c.connected for c in self._nodes.values())

    async def aclose(self) -> None:
        self._closed = True
        nodes, self._nodes = self._nodes, {}
        for client in nodes.values():
            await client.aclose()

    async def __aenter__(self) -> RedisClusterClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def wait_connected(self, *, timeout_s: float | None = None) -> None:
        """Return once a slot map was read; RedisUnavailable after ``timeout_s``."""
        deadline = float("inf") if timeout_s is None else trio.current_time() + timeout_s
        delay = self.backoff_initial_s
        while True:
            try:
                await self.refresh(force=True)
                return
            except RedisUnavailable:
                if trio.current_time() + delay >= deadline:
                    raise
            await trio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)

    def invalidate(self) -> None:
        """Refresh the slot map before the next request."""
        self._stale = True

    def node(self, node: Node) -> RedisClient:
        client = self._nodes.get(node)
        if client is None:
            if self._closed:
                raise LocalProtocolError("RedisClusterClient is closed")
            client = self._nodes[node] = RedisClient(
                node[0],
                node[1],
                0,
                password=self.url.password,
                timeout_s=self.timeout_s,
                connect_timeout_s=self.connect_timeout_s,
                backoff_initial_s=self.backoff_initial_s,
                backoff_max_s=self.backoff_max_s,
                client_name=self._client_name,
            )
        return client

    def slot_node(self, slot: int) -> Node | None:
        return self._slots[slot]

    def masters(self) -> list[Node]:
        return sorted({n for n in self._slots if n is not None})

    # -- slot map -----------------------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> None:
        """Read ``CLUSTER SLOTS`` from the first node that answers; RedisUnavailable if none."""
        async with self._refresh_lock:
            if not force and not self._stale:
                return
            now = trio.current_time()
            if not force and now - self._last_refresh < REFRESH_MIN_S:
                if any(n is not None for n in self._slots):
                    return  # refreshed a moment ago: use the map we have
            self._last_refresh = now
            errors = []
            # masters first (they are the likeliest to be up to date), then every node known
            order = list(dict.fromkeys([*self.masters(), *self._known, *self.url.seeds]))
            for node in order:
                try:
                    reply = await self.node(node).execute("CLUSTER", "SLOTS")
                    ranges = parse_slots(reply, node[0])
                except (RedisUnavailable, ClusterReplyError) as exc:
                    errors.append(f"{hostport(*node)}: {exc}")
                    continue
                except Exception as exc:  # an error reply: not a cluster node, say
                    errors.append(f"{hostport(*node)}: {exc}")
                    continue
                if not ranges:
                    errors.append(f"{hostport(*node)}: no slots assigned")
                    continue
                slots: list[Node | None] = [None] * SLOTS
                for first, last, master in ranges:
                    for s in range(first, last + 1):
                        slots[s] = master
                    if master not in self._known:
                        self._known.append(master)
                self._slots = slots
                self._stale = False
                self._refreshes += 1
                return
            self._refresh_failures += 1
            raise RedisUnavailable(
                "redis cluster: no node answered CLUSTER SLOTS: " + "; ".join(errors)
            )

    # -- requests -----------------------------------------------------------------------------

    async def pipeline(
        self,
        commands: Sequence[Sequence[Any]],
        slots: Sequence[int],
        wait: tuple[int, int] | None = None,
    ) -> tuple[list[Any], int | None]:
        """Run ``commands[i]`` on the master of ``slots[i]``; return the replies (error
        replies in place) and, with ``wait = (n, ms)``, the fewest replicas any master
        written to confirmed (``WAIT n ms`` after its commands), else None."""
        if self._stale:
            await self.refresh()
        self._requests += 1
        replies: list[Any] = [None] * len(commands)
        todo: list[tuple[int, Node | None, bool]] = []  # (index, node, asking)
        for i, slot in enumerate(slots):
            node = self._slots[slot]
            if node is None:
                self._stale = True
                raise RedisUnavailable(f"redis cluster: slot {slot} has no master (yet)")
            todo.append((i, node, False))
        waited: int | None = None
        tryagain_delay = TRYAGAIN_INITIAL_S
        tryagain_deadline = trio.current_time() + TRYAGAIN_BUDGET_S
        hops = 0
        while True:
            groups: dict[tuple[Node, bool], list[int]] = {}
            for i, node, asking in todo:
                assert node is not None
                groups.setdefault((node, asking), []).append(i)
            results = await self._run_groups(groups, commands, wait)
            todo = []
            tryagain: list[int] = []
            for (_node, _asking), (idx, group_replies, group_waited) in results.items():
                if group_waited is not None:
                    waited = group_waited if waited is None else min(waited, group_waited)
                for i, reply in zip(idx, group_replies):
                    replies[i] = reply
                    if isinstance(reply, hiredis.ReplyError):
                        redirect = parse_redirect(str(reply))
                        if redirect is None:
                            if str(reply).startswith("TRYAGAIN"):
                                # a multi-key command while its slot is being migrated: it did
                                # not run; ask again shortly (the migration moves on)
                                self._tryagain += 1
                                tryagain.append(i)
                            elif str(reply).startswith("CLUSTERDOWN"):
                                self._stale = True
                            continue
                        if redirect.ask:
                            self._asked += 1
                        else:
                            self._moved += 1
                            self._slots[redirect.slot] = redirect.node
                            self._stale = True
                        todo.append((i, redirect.node, redirect.ask))
            if tryagain and trio.current_time() + tryagain_delay < tryagain_deadline:
                await trio.sleep(tryagain_delay)
                tryagain_delay = min(tryagain_delay * 2, TRYAGAIN_MAX_S)
                for i in tryagain:
                    node = self._slots[slots[i]]
                    if node is not None:
                        todo.append((i, node, False))
            hops += 1
            if not todo or hops > MAX_REDIRECTS + TRYAGAIN_TRIES:
                break
        return replies, waited

    async def _run_groups(
        self,
        groups: dict[tuple[Node, bool], list[int]],
        commands: Sequence[Sequence[Any]],
        wait: tuple[int, int] | None,
    ) -> dict[tuple[Node, bool], tuple[list[int], list[Any], int | None]]:
        results: dict[tuple[Node, bool], tuple[list[int], list[Any], int | None]] = {}
        failures: list[RedisUnavailable] = []

        async def run(key: tuple[Node, bool], idx: list[int]) -> None:
            node, asking = key
            batch: list[Sequence[Any]] = []
            for i in idx:
                if asking:
                    batch.append(("ASKING",))
                batch.append(commands[i])
            if wait is not None:
                batch.append(("WAIT", wait[0], wait[1]))
            try:
                out = await self.node(node).pipeline(batch)
            except RedisUnavailable as exc:
                failures.append(exc)
                return
            group_waited = None
            if wait is not None:
                w = out.pop()
                group_waited = w if isinstance(w, int) else -1
            if asking:
                out = out[1::2]
            results[key] = (idx, out, group_waited)

        if len(groups) == 1:
            ((key, idx),) = groups.items()
            await run(key, idx)
        else:
            async with trio.open_nursery() as nursery:
                for key, idx in groups.items():
                    nursery.start_soon(run, key, idx)
        if failures:
            self._stale = True
            raise failures[0]
        return results

    def statistics(self) -> ClusterClientStatistics:
        return ClusterClientStatistics(
            masters=len(self.masters()),
            slots_covered=sum(1 for n in self._slots if n is not None),
            refreshes=self._refreshes,
            refresh_failures=self._refresh_failures,
            moved=self._moved,
            asked=self._asked,
            tryagain=self._tryagain,
            requests=self._requests,
            nodes=tuple(c.statistics() for c in self._nodes.values()),
        )
