"""The Redis history store: epoch, seq and bounded history per channel that survive a broker restart.

``RedisStore`` implements ``broker.store.memory.Store`` (``append_batch``, ``position``, ``replay``,
``statistics``, ``aclose``) with the semantics of ``broker.history.MemoryHistory`` (read its
docstring for ``replay``'s cursor rules and ``complete``), over ``broker.store.redisclient``.

Keys, per channel (``P`` is ``key_prefix``, default ``"gc:"``)::

    P m:<channel>   hash    epoch    random hex, created with HSETNX the first time the channel is
                                     touched (append, position or replay); never expires
                            seq      last seq handed out (HINCRBY: a range is reserved before use)
                            last_id  publisher id of the last message ("" for none)
                            bytes_total  running payload byte total (entries' ``c``)
    P h:<channel>   stream  entry id "<seq>-0", fields t = ts in ms, i = publisher id ("" for
                            none), d = the record: msgpack of Envelope.to_map(), i.e.
                            {seq, epoch, id, prev_id, formats, meta, ts}, byte for byte what
                            ``msgpack.packb(env.to_map(), use_bin_type=True)`` gives,
                            c = the channel's running payload byte total up to and including
                            this entry, n = this entry's payload bytes (item_bytes)

Writes: ``append_batch`` runs one Lua script (EVALSHA) per ``max_script_items`` items, all
pipelined in one round trip; each script is atomic, so seq assignment and XADD cannot be
separated.  The script reserves each channel's seqs with HINCRBY *before* adding the entries:
if it fails half way (Redis out of memory, say), seqs are burnt (a gap, which replay reports as
``complete=False``), never reused.  XADD with an explicit ``<seq>-0`` id also refuses to go
backwards.  The record is built inside the script: Python packs the map without ``seq`` and
``epoch``, the script prefixes the map header and those two entries (cmsgpack).

Bounds: payload bytes by ``max_bytes`` (the stream holds ``c(newest) - c(oldest) + n(oldest)``
bytes whatever trimmed it before, so no counter can drift; the oldest entries past the budget
are trimmed with ``XTRIM MINID``, the newest always kept; entries written before the byte
fields existed are left to the count and age bounds); count by ``XADD MAXLEN ~ max_items``
(``approximate_trim=False`` for exact ``MAXLEN =``; the approximate form may keep up to one
stream node, ~100 entries, more); age by
trimming the head (``XTRIM MINID``) of every stream that is written or replayed, by ``t``, plus
``PEXPIRE`` of the stream key so an idle channel's history vanishes by itself.  The meta hash
is kept, so an idle channel keeps its epoch and seq.  If the meta hash is lost (Redis restarted
without persistence, or evicted by ``maxmemory``), the channel starts a new epoch and its stale
stream is deleted: seqs may restart, but never under a known epoch.

Acknowledged means stored: ``append_batch`` returns (and the broker acknowledges and fans out)
only after every script's reply came back without an error.  With ``wait_replicas = N`` (the
``redis_wait_replicas`` key) each pipeline ends with ``WAIT N wait_timeout_ms``: fewer than N
replicas confirming raises ``RedisStoreError`` (a ``StoreUnavailable``: HTTP 503, an error reply
on the command socket), so a message is acknowledged only once N replicas hold it and a
failover to one of them cannot lose it.  Reads (``position``, ``replay``) end with the same
``WAIT``: what an edge learns (a seq, a record) is on N replicas too, so no edge can see a seq
that a failover then hands out again for another message.  A refused batch may still be on the
master (its seqs are then used: edges repair them from history like any gap) or lost with it
(never fanned out, so its seqs being handed out again cannot be noticed).

Redis Sentinel (``redis+sentinel://`` URLs, ``broker.store.sentinel``): the client follows
the master (``broker.store.sentinelclient``); ``serve()`` (run by the broker) also follows the
sentinels' ``+switch-master`` announcements.  Each channel's state is all in Redis and replicated
with it, so after a failover sequencing continues where the new master's copy ends.

Durability across a *Redis* restart is Redis's own persistence (AOF with ``appendfsync``) and the
operator's choice; across a *broker* restart it is everything above.

Cursor resolution differs from ``MemoryHistory`` in one pathological case only: a publisher id
that looks like ``"<current epoch>:<n>"`` is read as that cursor before any id search (the id
search walks the stream from the newest entry, inside the script).

Differences from the memory store: no ``max_channels`` eviction (an idle channel costs one small
hash); age is measured with the ``now`` the broker passes (wall-clock seconds), in milliseconds.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import msgpack
import trio

from broker.errors import StoreUnavailable
from broker.history import Position, Replay
from broker.items import Item, item_bytes
from broker.namespaces import NamespaceTable, limit_runs
from broker.store.redisclient import (
    RedisClient,
    RedisClientStatistics,
    RedisReplyError,
    open_redis_url,
)
from broker.store.sentinelclient import SentinelLocator, SentinelLocatorStatistics
from broker.wire import REPLAY_LIMIT, Envelope

_packb = msgpack.Packer(use_bin_type=True).pack


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class RedisStoreError(StoreUnavailable):
    """Redis refused a store command (out of memory, read-only replica, a foreign key, ...)."""


@dataclass(frozen=True, slots=True)
class RedisStoreStatistics:
    appended: int
    batches: int
    script_calls: int
    script_reloads: int
    positions: int
    replays: int
    wait_refusals: int  # batches (or reads) refused: fewer than wait_replicas confirmed
    client: RedisClientStatistics
    sentinel: SentinelLocatorStatistics | None


# -- Lua -------------------------------------------------------------------------------------

_LUA_COMMON = r"""
local function ensure_epoch(meta, stream, candidate)
  if redis.call('HSETNX', meta, 'epoch', candidate) == 1 then
    redis.call('DEL', stream)  -- a stale stream from a lost epoch
  end
end

-- drop entries older than cutoff (ms, field t) from the head of the stream
local function expire_head(stream, cutoff)
  if cutoff <= 0 then return 0 end
  local page = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #page == 0 or tonumber(page[1][2][2]) >= cutoff then return 0 end
  local dropped = 0
  while #page > 0 do
    for i = 1, #page do
      local e = page[i]
      if tonumber(e[2][2]) >= cutoff then
        redis.call('XTRIM', stream, 'MINID', e[1])
        return dropped
      end
      dropped = dropped + 1
    end
    page = redis.call('XRANGE', stream, '(' .. page[#page][1], '+', 'COUNT', 64)
  end
  redis.call('XTRIM', stream, 'MAXLEN', 0)  -- everything was old
  return dropped
end

-- keep at most maxbytes of payload (fields c at [8], n at [10]); newest_cum: c of the newest
local function trim_bytes(stream, newest_cum, maxbytes)
  local threshold = newest_cum - maxbytes
  local page = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #page == 0 then return end
  local c, n = tonumber(page[1][2][8]), tonumber(page[1][2][10])
  if c == nil or n == nil or c - n >= threshold then return end
  local last = nil
  while #page > 0 do
    for i = 1, #page do
      local e = page[i]
      local ec, en = tonumber(e[2][8]), tonumber(e[2][10])
      if ec == nil or en == nil or ec - en >= threshold then
        redis.call('XTRIM', stream, 'MINID', e[1])
        return
      end
      last = e[1]
    end
    page = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 64)
  end
  redis.call('XTRIM', stream, 'MAXLEN', 1)  -- the newest alone is over: it is kept
end
"""

# KEYS: meta_1, stream_1, ..., meta_n, stream_n (the distinct channels of the batch)
# ARGV: maxlen, '~' or '=', cutoff_ms, ttl_ms, ts_ms, maxbytes (0: none), n, epoch candidate x n,
#       then per item: channel index (1-based), publisher id or '', record tail, payload bytes
# -> {{epoch_1..epoch_n}, {seq per item}}
_LUA_APPEND = (
    _LUA_COMMON
    + r"""
local nch = tonumber(ARGV[7])
local base = 7 + nch
local nitems = (#ARGV - base) / 4
local counts, epochs, seqs, lastids, totals = {}, {}, {}, {}, {}
for c = 1, nch do counts[c] = 0 end
for k = 0, nitems - 1 do
  local c = tonumber(ARGV[base + 4 * k + 1])
  counts[c] = counts[c] + 1
end
for c = 1, nch do
  local meta = KEYS[2 * c - 1]
  ensure_epoch(meta, KEYS[2 * c], ARGV[7 + c])
  epochs[c] = redis.call('HGET', meta, 'epoch')
  seqs[c] = redis.call('HINCRBY', meta, 'seq', counts[c]) - counts[c]
  totals[c] = tonumber(redis.call('HGET', meta, 'bytes_total')) or 0
end
local packed_epochs = {}
for c = 1, nch do packed_epochs[c] = '\165epoch' .. cmsgpack.pack(epochs[c]) end
local out = {}
local ts, maxlen, mode = ARGV[5], ARGV[1], ARGV[2]
local call, pack, fmt = redis.call, cmsgpack.pack, string.format
for k = 0, nitems - 1 do
  local j = base + 4 * k
  local c = tonumber(ARGV[j + 1])
  local pid = ARGV[j + 2]
  local seq = seqs[c] + 1
  seqs[c] = seq
  local n = tonumber(ARGV[j + 4])
  totals[c] = totals[c] + n
  call('XADD', KEYS[2 * c], 'MAXLEN', mode, maxlen, fmt('%d-0', seq), 't', ts, 'i', pid,
       'd', '\135\163seq' .. pack(seq) .. packed_epochs[c] .. ARGV[j + 3],
       'c', fmt('%d', totals[c]), 'n', fmt('%d', n))
  lastids[c] = pid
  out[k + 1] = seq
end
local cutoff, ttl, maxbytes = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
for c = 1, nch do
  redis.call('HSET', KEYS[2 * c - 1], 'last_id', lastids[c], 'bytes_total',
             fmt('%d', totals[c]))
  if maxbytes > 0 then trim_bytes(KEYS[2 * c], totals[c], maxbytes) end
  expire_head(KEYS[2 * c], cutoff)
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2 * c], ttl) end
end
return {epochs, out}
"""
)

# KEYS: meta, stream.  ARGV: epoch candidate -> {epoch, seq or false, last_id or false}
_LUA_POSITION = (
    _LUA_COMMON
    + r"""
ensure_epoch(KEYS[1], KEYS[2], ARGV[1])
return redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'last_id')
"""
)

# KEYS: meta, stream.
# ARGV: epoch candidate, epoch ('' = current), after_seq ('' = none), after_id ('' = none),
#       limit, cutoff_ms
# -> {epoch, last_seq, from_cursor (1: records start after the cursor, 0: oldest retained), records}
_LUA_REPLAY = (
    _LUA_COMMON
    + r"""
local meta, stream = KEYS[1], KEYS[2]
ensure_epoch(meta, stream, ARGV[1])
local m = redis.call('HMGET', meta, 'epoch', 'seq', 'last_id')
local epoch, last_seq, last_id = m[1], tonumber(m[2]) or 0, m[3] or ''
expire_head(stream, tonumber(ARGV[6]))
local limit = tonumber(ARGV[5])

local function find_id(id)
  local from = '+'
  while true do
    local page = redis.call('XREVRANGE', stream, from, '-', 'COUNT', 100)
    for i = 1, #page do
      if page[i][2][4] == id then return tonumber(string.match(page[i][1], '^(%d+)')) end
    end
    if #page < 100 then return nil end
    from = '(' .. page[#page][1]
  end
end

local start = nil
local after_id, after_seq = ARGV[4], ARGV[3]
local placed = false
if after_id ~= '' then
  if after_id == last_id then
    start = last_seq
  else
    local ep, tail = string.match(after_id, '^(.*):(%d+)$')
    if ep ~= nil and ep == epoch and tonumber(tail) <= last_seq then
      start = tonumber(tail)
    else
      start = find_id(after_id)
    end
  end
  placed = start ~= nil or after_seq == ''
end
if not placed then
  if ARGV[2] == '' or ARGV[2] == epoch then
    local s = 0
    if after_seq ~= '' then s = tonumber(after_seq) end
    if s >= 0 and s <= last_seq then start = s end
  end
end

local function records(page)
  local out = {}
  for i = 1, #page do out[i] = page[i][2][6] end
  return out
end

if start ~= nil then
  local page = redis.call('XRANGE', stream, '(' .. string.format('%d', start) .. '-0', '+',
                          'COUNT', math.max(limit, 1))
  local first = last_seq + 1
  if #page > 0 then first = tonumber(string.match(page[1][1], '^(%d+)')) end
  if first == start + 1 then
    if limit == 0 then page = {} end
    return {epoch, last_seq, 1, records(page)}
  end
end
if limit == 0 then return {epoch, last_seq, 0, {}} end
return {epoch, last_seq, 0, records(redis.call('XRANGE', stream, '-', '+', 'COUNT', limit))}
"""
)


class _Script:
    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source.encode("utf-8")
        self.sha = hashlib.sha1(self.source).hexdigest()


_APPEND = _Script(_LUA_APPEND)
_POSITION = _Script(_LUA_POSITION)
_REPLAY = _Script(_LUA_REPLAY)


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


def _str(value: bytes | None) -> str | None:
    return value.decode("utf-8") if value else None


# -- the store -------------------------------------------------------------------------------


class RedisStore:
    """``broker.store.memory.Store`` over Redis; see the module docstring."""

    name = "redis"

    def __init__(
        self,
        client: RedisClient,
        *,
        max_items: int = 1000,
        max_age_s: float = 3600.0,
        key_prefix: str = "gc:",
        approximate_trim: bool = True,
        max_script_items: int = 1000,
        max_bytes: int = 0,
        new_epoch: Callable[[], str] = lambda: secrets.token_hex(8),
        owns_client: bool = False,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        locator: SentinelLocator | None = None,
        limits: NamespaceTable | None = None,
    ) -> None:
        if max_items < 1 or max_age_s <= 0 or max_script_items < 1:
            raise ValueError("history bounds must be positive")
        if wait_replicas < 0 or (wait_replicas and wait_timeout_ms < 1):
            raise ValueError("wait_replicas must be >= 0 and wait_timeout_ms >= 1")
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.locator = locator
        self._wait_refusals = 0
        self.client = client
        self.max_items = max_items
        self.max_age_s = max_age_s
        self.limits = limits  # per-prefix history bounds (broker.namespaces)
        self.approximate_trim = approximate_trim
        self.max_script_items = max_script_items
        self.max_bytes = max(0, int(max_bytes))  # payload bytes per channel; 0: no budget
        self._prefix = key_prefix.encode("utf-8")
        self._new_epoch = new_epoch
        self._owns_client = owns_client
        self._appended = 0
        self._batches = 0
        self._script_calls = 0
        self._script_reloads = 0
        self._positions = 0
        self._replays = 0

    # -- keys ---------------------------------------------------------------------------------

    def meta_key(self, channel: str) -> bytes:
        return self._prefix + b"m:" + channel.encode("utf-8")

    def stream_key(self, channel: str) -> bytes:
        return self._prefix + b"h:" + channel.encode("utf-8")

    # -- Store --------------------------------------------------------------------------------

    async def append_batch(self, items: Sequence[Item], now: float) -> list[Envelope]:
        """Sequence and retain ``items`` in order, in one round trip; return their envelopes.

        ``now`` is wall-clock seconds (it is compared across broker restarts).  On an error
        (``StoreUnavailable``) a prefix of the batch, or all of it, may have been stored.
        """
        if not items:
            return []
        ts_ms = int(now * 1000)
        commands: list[tuple[Any, ...]] = []
        chunks: list[tuple[list[str], Sequence[Item]]] = []
        # one script call per chunk of items sharing history bounds (per-prefix bounds:
        # broker.namespaces; without namespaces, plain slices of max_script_items)
        for max_items, max_age_s, chunk in limit_runs(
            items, self.limits, self.max_items, self.max_age_s, self.max_script_items
        ):
            head = (
                str(max_items),
                "~" if self.approximate_trim else "=",
                int((now - max_age_s) * 1000),  # cutoff
                int(max_age_s * 1000) + 1000,  # ttl
                ts_ms,
                self.max_bytes,
            )
            index: dict[str, int] = {}
            args: list[Any] = []
            for item in chunk:
                c = index.get(item.channel)
                if c is None:
                    c = index[item.channel] = len(index) + 1
                body = _packb(
                    {
                        "id": item.id,
                        "prev_id": item.prev_id,
                        "formats": item.formats,
                        "meta": item.meta,
                        "ts": now,
                    }
                )
                # body[0] is the fixmap header 0x85
                args += (c, item.id or "", body[1:], item_bytes(item))
            keys: list[bytes] = []
            for ch in index:
                keys += (self.meta_key(ch), self.stream_key(ch))
            epochs = [self._new_epoch() for _ in index]
            commands.append(
                ("EVALSHA", _APPEND.sha, len(keys), *keys, *head, len(index), *epochs, *args)
            )
            chunks.append((list(index), chunk))
        replies = await self._run_scripts(_APPEND, commands)
        out: list[Envelope] = []
        for (channels, chunk), (epochs, seqs) in zip(chunks, replies):
            ep = [e.decode("utf-8") for e in epochs]
            index = {ch: i for i, ch in enumerate(channels)}
            for item, seq in zip(chunk, seqs):
                out.append(
                    Envelope(
                        channel=item.channel,
                        seq=seq,
                        epoch=ep[index[item.channel]],
                        formats=item.formats,
                        id=item.id,
                        prev_id=item.prev_id,
                        meta=item.meta,
                        ts=now,
                    )
                )
        self._appended += len(out)
        self._batches += 1
        return out

    async def position(self, channel: str) -> Position:
        """The channel's ``(epoch, last_seq, last_id)``; creates its epoch if it has none."""
        self._positions += 1
        cmd = (
            "EVALSHA",
            _POSITION.sha,
            2,
            self.meta_key(channel),
            self.stream_key(channel),
            self._new_epoch(),
        )
        (reply,) = await self._run_scripts(_POSITION, [cmd])
        epoch, seq, last_id = reply
        return Position(epoch.decode("utf-8"), int(seq or 0), _str(last_id))

    async def replay(
        self,
        channel: str,
        epoch: str | None = None,
        after_seq: int | None = None,
        after_id: str | None = None,
        limit: int | None = REPLAY_LIMIT,
        now: float | None = None,
    ) -> Replay:
        """Retained messages after the cursor; ``broker.history`` semantics.

        ``now`` (wall-clock seconds) applies the age bound first; None skips it.
        """
        self._replays += 1
        limit = REPLAY_LIMIT if limit is None else max(0, min(int(limit), REPLAY_LIMIT))
        max_age_s = (
            self.limits.history_limits(channel, self.max_items, self.max_age_s)[1]
            if self.limits
            else self.max_age_s
        )
        cutoff_ms = 0 if now is None else int((now - max_age_s) * 1000)
        cmd = (
            "EVALSHA",
            _REPLAY.sha,
            2,
            self.meta_key(channel),
            self.stream_key(channel),
            self._new_epoch(),
            epoch if epoch is not None else "",
            "" if after_seq is None else int(after_seq),
            after_id or "",
            limit,
            cutoff_ms,
        )
        (reply,) = await self._run_scripts(_REPLAY, [cmd])
        cur_epoch, last_seq, from_cursor, records = reply
        # our own records (written by _LUA_APPEND): build the Envelopes directly
        envs = []
        for rec in records:
            m = _unpackb(rec)
            envs.append(
                Envelope(
                    channel,
                    m["seq"],
                    m["epoch"],
                    m["formats"],
                    m["id"],
                    m["prev_id"],
                    m["meta"],
                    m["ts"],
                )
            )
        complete = bool(from_cursor)
        if complete:
            # burnt seqs (a failed script) leave holes: stop before one; the next call from
            # there reports complete=False
            for i in range(1, len(envs)):
                if envs[i].seq != envs[i - 1].seq + 1:
                    del envs[i:]
                    break
        return Replay(cur_epoch.decode("utf-8"), int(last_seq), complete, envs)

    def set_history_limits(self, max_items: int, max_age_s: float) -> None:
        self.max_items = max_items
        self.max_age_s = max_age_s

    def statistics(self) -> RedisStoreStatistics:
        return RedisStoreStatistics(
            appended=self._appended,
            batches=self._batches,
            script_calls=self._script_calls,
            script_reloads=self._script_reloads,
            positions=self._positions,
            replays=self._replays,
            wait_refusals=self._wait_refusals,
            client=self.client.statistics(),
            sentinel=self.locator.statistics() if self.locator is not None else None,
        )

    async def serve(self) -> None:
        """Follow the sentinels' ``+switch-master`` (Sentinel only; otherwise nothing to do)."""
        if self.locator is None:
            await trio.sleep_forever()
            return
        client = self.client
        await self.locator.watch(lambda switch: client.invalidate())

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()
            if self.locator is not None:
                await self.locator.aclose()

    # -- internals ----------------------------------------------------------------------------

    async def _run_scripts(self, script: _Script, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Pipeline EVALSHA ``commands``; rerun NOSCRIPT ones with EVAL (it had not run)."""
        self._script_calls += len(commands)
        wait = ("WAIT", self.wait_replicas, self.wait_timeout_ms) if self.wait_replicas else None
        replies = await self.client.pipeline(commands + [wait] if wait else commands)
        waited = replies.pop() if wait else None
        retry = [i for i, r in enumerate(replies) if _is_noscript(r)]
        if retry:
            self._script_reloads += 1
            reload = [("EVAL", script.source, *commands[i][2:]) for i in retry]
            again = await self.client.pipeline(reload + [wait] if wait else reload)
            waited = again.pop() if wait else None
            for i, r in zip(retry, again):
                replies[i] = r
        for r in replies:
            if isinstance(r, hiredis.ReplyError):
                raise RedisStoreError(f"redis refused a store write: {r}") from RedisReplyError(r)
        if wait is not None:
            if isinstance(waited, hiredis.ReplyError):
                raise RedisStoreError(f"redis refused WAIT: {waited}") from RedisReplyError(waited)
            if not isinstance(waited, int) or waited < self.wait_replicas:
                self._wait_refusals += 1
                raise RedisStoreError(
                    f"only {waited} of {self.wait_replicas} replicas confirmed within "
                    f"{self.wait_timeout_ms} ms; not acknowledged"
                )
        return replies


async def open_redis_store(url: str, *, timeout_s: float = 5.0, **kwargs: Any) -> RedisStore:
    """Connect to ``redis://host:port/db`` and return a ``RedisStore`` that owns the client."""
    client = await open_redis_url(url, timeout_s=timeout_s, client_name="gripcast-broker")
    try:
        return RedisStore(client, owns_client=True, **kwargs)
    except ValueError:
        await client.aclose()
        raise
