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

    P i:<channel>   zset    shared sequencing only: publisher ids seen, scored by expiry (ms);
                            expired entries trimmed on write, the key expires by itself

``<channel>`` is the channel name on standalone Redis and Sentinel (the layout of earlier
versions, so existing data keeps working; ``i:`` is the only new key).  On a Redis Cluster
(``RedisClusterClient``) it is the channel's hash tag (``broker.store.cluster.channel_tag``):
``{news}``, or ``{#<sha1>}:<channel>`` for a channel with a brace, so every key of a channel is
in one slot and each script touches one slot.  A batch is then split by slot (one script per
slot and ``max_script_items``) and pipelined to each master at once; the envelopes still come
back in the order of the batch.

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
that a failover then hands out again for another message.  ``WAIT`` covers only its own
connection's writes, so such a read first makes a no-op write (``HINCRBY seq 0``, replicated):
``WAIT`` then also covers what other connections (other brokers) wrote before the read.  A refused batch may still be on the
master (its seqs are then used: edges repair them from history like any gap) or lost with it
(never fanned out, so its seqs being handed out again cannot be noticed).

Seq went backwards: without ``WAIT`` a failover may promote a replica that missed acknowledged
writes, so a channel's seq in Redis is lower than seqs already handed out (and delivered).  The
store remembers per channel the highest ``(epoch, seq)`` it stored or read (``_seen``, at most
``SEEN_CHANNELS_MAX`` channels, the first remembered dropped first) and passes it to every
script: ``check_floor`` moves a channel found in that epoch below that seq to a new epoch (seq
0, stream deleted) before anything else, atomically, so every broker agrees and no seq is
handed out twice (counted ``seq_regressions``, logged).  Edges catch the case a broker cannot
(it restarted, forgetting): ``edge.sync.tracker``.

Redis Cluster (``redis+cluster://`` URLs, ``broker.store.clusterclient``): ``WAIT`` is sent to
every master written to and the fewest confirmations count; while a failed master's slots have
no master (until the cluster promotes a replica) its channels' writes are refused
(``RedisUnavailable`` or a ``CLUSTERDOWN`` reply: ``StoreUnavailable``).  A batch refused by one
master may have been stored by the others (not acknowledged; edges repair those seqs as gaps,
and a publisher retry with the same ids is dropped as a duplicate).

Redis Sentinel (``redis+sentinel://`` URLs, ``broker.store.sentinel``): the client follows
the master (``broker.store.sentinelclient``); ``serve()`` (run by the broker) also follows the
sentinels' ``+switch-master`` announcements.  Each channel's state is all in Redis and replicated
with it, so after a failover sequencing continues where the new master's copy ends.

Shared sequencing (several brokers on one Redis; on when ``id_cache_ttl_s`` > 0 or
``check_prev_id``, which ``broker.store.open_store`` sets from the broker's ``id_cache_ttl_s``
and ``message_wait_s``): the append script also does Pushpin's sequencer steps, in Redis, so
they hold whichever broker an item reaches.  Per item (flags in the script's arguments): an id
seen on the channel within ``id_cache_ttl_s`` is dropped (answer 0; the id is recorded
otherwise, even if the item is then held); with a ``prev_id`` that is not the channel's
``last_id`` (when it has one) the item is held (answer -1) and not stored.  ``append_batch``
leaves both out of its envelopes; held items go to the broker's ``Sequencer``
(``attach_sequencer``: its ``defer`` queue), which offers them again at its next ``poll`` (the
broker's sequencer timer, and ``serve`` every ``HELD_RETRY_S`` while any are held); one whose
predecessor this store stores is retried at once.  A held item is retried without its id
check and, once ``message_wait_s`` has passed since it was first held, without the prev-id check
(counted ``timed_out``).  ``recover`` lets each channel's next item and every held item through
unchecked.

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
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import msgpack
import trio

from broker.errors import StoreUnavailable
from broker.history import Position, Replay
from broker.items import Item, item_bytes
from broker.namespaces import NamespaceTable
from broker.sequencer import Sequencer
from broker.store.cluster import channel_tag, key_slot
from broker.store.clusterclient import ClusterClientStatistics, RedisClusterClient
from broker.store.redisclient import (
    RedisClient,
    RedisClientStatistics,
    RedisReplyError,
    open_redis_url,
)
from broker.store.sentinelclient import SentinelLocator, SentinelLocatorStatistics
from broker.wire import REPLAY_LIMIT, Envelope

_packb = msgpack.Packer(use_bin_type=True).pack
log = logging.getLogger(__name__)


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


SEEN_CHANNELS_MAX = 100_000  # channels whose highest seen seq is remembered (first in, first out)
HELD_RETRY_S = 0.1  # items held for their prev-id are offered again this often (``serve``)
RECOVER_CHANNELS_MAX = 100_000  # after a recover, channels let through unchecked, at most


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
    client: RedisClientStatistics | ClusterClientStatistics
    sentinel: SentinelLocatorStatistics | None
    dropped_duplicate: int  # shared sequencing: ids Redis had seen within id_cache_ttl_s
    held: int  # shared sequencing: items held (each try) because prev-id was not the last id
    timed_out: int  # shared sequencing: held items stored without the check after the wait
    seq_regressions: int = 0  # channels moved to a new epoch: their seq went backwards


# -- Lua -------------------------------------------------------------------------------------

_LUA_COMMON = r"""
local function ensure_epoch(meta, stream, candidate)
  if redis.call('HSETNX', meta, 'epoch', candidate) == 1 then
    redis.call('DEL', stream)  -- a stale stream from a lost epoch
  end
end

-- seq went backwards (a failover lost acknowledged writes: module docstring, "Seq went
-- backwards"): the caller saw seq fseq in epoch fepoch; if the channel is still in that epoch
-- with a lower seq, move it to the new epoch 'candidate' now (seq 0, no last id, the stale
-- stream deleted), before anything is sequenced, so no seq is ever handed out twice.  1: moved
local function check_floor(meta, stream, candidate, fepoch, fseq)
  if fepoch == nil or fepoch == '' then return 0 end
  local m = redis.call('HMGET', meta, 'epoch', 'seq')
  if m[1] ~= fepoch or (tonumber(m[2]) or 0) >= tonumber(fseq) then return 0 end
  redis.call('DEL', meta, stream)
  redis.call('HSET', meta, 'epoch', candidate)
  return 1
end

-- a read followed by WAIT: a no-op write (it is replicated) moves this connection's
-- replication offset up to the master's, so WAIT confirms every write the read saw,
-- whichever connection made it (WAIT only covers the caller's own writes)
local function confirm(meta, flag)
  if flag == '1' then redis.call('HINCRBY', meta, 'seq', 0) end
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

# KEYS: meta_1, stream_1, ids_1, ..., meta_n, stream_n, ids_n (the distinct channels)
# ARGV: maxlen, '~' or '=', cutoff_ms, ttl_ms, ts_ms, maxbytes (0: none), id_ttl_ms (0: no
#       de-duplication here), n, epoch candidate x n, "<seen epoch>:<seen seq>" x n ('' none:
#       the broker's floor per channel, as ``check_floor``), then per item: channel index (1-based),
#       publisher id or '', record tail, payload bytes, prev id or '', flags (1: de-duplicate
#       the id, 2: hold if prev id is not the channel's last id)
# -> {{epoch_1..epoch_n}, {seq per item: > 0 stored, 0 duplicate dropped, -1 held},
#     {last id per channel after the batch}, channels moved to a new epoch (seq went back)}
_LUA_APPEND = (
    _LUA_COMMON
    + r"""
local nch = tonumber(ARGV[8])
local base = 8 + 2 * nch
local nitems = (#ARGV - base) / 6
local idttl = tonumber(ARGV[7])
local now = tonumber(ARGV[5])
local counts, epochs, seqs, lastids, totals, touched = {}, {}, {}, {}, {}, {}
local verdict = {}
local call = redis.call
local moved = 0
for c = 1, nch do
  counts[c] = 0
  -- check_floor, inlined: one read of the meta hash for it and the last id
  local meta = KEYS[3 * c - 2]
  local m = call('HMGET', meta, 'last_id', 'epoch', 'seq')
  local floor = ARGV[8 + nch + c]
  local fseq = nil
  if floor ~= '' and m[2] and string.sub(floor, 1, #m[2] + 1) == m[2] .. ':' then
    fseq = tonumber(string.sub(floor, #m[2] + 2))
  end
  if fseq ~= nil and (tonumber(m[3]) or 0) < fseq then
    call('DEL', meta, KEYS[3 * c - 1])
    call('HSET', meta, 'epoch', ARGV[8 + c])
    moved = moved + 1
    lastids[c] = ''
  else
    lastids[c] = m[1] or ''
  end
end
for k = 0, nitems - 1 do
  local j = base + 6 * k
  local c = tonumber(ARGV[j + 1])
  local pid, prev, flags = ARGV[j + 2], ARGV[j + 5], tonumber(ARGV[j + 6])
  local ok = true
  if pid ~= '' and idttl > 0 and flags % 2 == 1 then
    local ids = KEYS[3 * c]
    local exp = call('ZSCORE', ids, pid)
    if exp and tonumber(exp) > now then
      ok = false
      verdict[k + 1] = 0
    else
      call('ZADD', ids, now + idttl, pid)
      touched[c] = true
    end
  end
  if ok and flags >= 2 and prev ~= '' and lastids[c] ~= '' and lastids[c] ~= prev then
    ok = false
    verdict[k + 1] = -1
  end
  if ok then
    counts[c] = counts[c] + 1
    lastids[c] = pid
    verdict[k + 1] = 1
  end
end
for c = 1, nch do
  local meta = KEYS[3 * c - 2]
  ensure_epoch(meta, KEYS[3 * c - 1], ARGV[8 + c])
  epochs[c] = call('HGET', meta, 'epoch')
  seqs[c] = call('HINCRBY', meta, 'seq', counts[c]) - counts[c]
  totals[c] = tonumber(call('HGET', meta, 'bytes_total')) or 0
  if touched[c] then
    call('ZREMRANGEBYSCORE', KEYS[3 * c], '-inf', now)
    call('PEXPIRE', KEYS[3 * c], idttl)
  end
end
local packed_epochs = {}
for c = 1, nch do packed_epochs[c] = '\165epoch' .. cmsgpack.pack(epochs[c]) end
local out = {}
local ts, maxlen, mode = ARGV[5], ARGV[1], ARGV[2]
local pack, fmt = cmsgpack.pack, string.format
for k = 0, nitems - 1 do
  if verdict[k + 1] == 1 then
    local j = base + 6 * k
    local c = tonumber(ARGV[j + 1])
    local seq = seqs[c] + 1
    seqs[c] = seq
    local n = tonumber(ARGV[j + 4])
    totals[c] = totals[c] + n
    call('XADD', KEYS[3 * c - 1], 'MAXLEN', mode, maxlen, fmt('%d-0', seq), 't', ts,
         'i', ARGV[j + 2], 'd', '\135\163seq' .. pack(seq) .. packed_epochs[c] .. ARGV[j + 3],
         'c', fmt('%d', totals[c]), 'n', fmt('%d', n))
    out[k + 1] = seq
  else
    out[k + 1] = verdict[k + 1]
  end
end
local cutoff, ttl, maxbytes = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
for c = 1, nch do
  if counts[c] > 0 then
    call('HSET', KEYS[3 * c - 2], 'last_id', lastids[c], 'bytes_total', fmt('%d', totals[c]))
    if maxbytes > 0 then trim_bytes(KEYS[3 * c - 1], totals[c], maxbytes) end
  end
  expire_head(KEYS[3 * c - 1], cutoff)
  if ttl > 0 then call('PEXPIRE', KEYS[3 * c - 1], ttl) end
end
return {epochs, out, lastids, moved}
"""
)

# KEYS: meta, stream.  ARGV: epoch candidate, confirm ('1': before WAIT), seen epoch, seen seq
# -> {epoch, seq or false, last_id or false, 1 if moved to a new epoch (check_floor)}
_LUA_POSITION = (
    _LUA_COMMON
    + r"""
local moved = check_floor(KEYS[1], KEYS[2], ARGV[1], ARGV[3], ARGV[4])
ensure_epoch(KEYS[1], KEYS[2], ARGV[1])
confirm(KEYS[1], ARGV[2])
local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'last_id')
return {m[1], m[2], m[3], moved}
"""
)

# KEYS: meta, stream.
# ARGV: epoch candidate, epoch ('' = current), after_seq ('' = none), after_id ('' = none),
#       limit, cutoff_ms, confirm ('1': before WAIT), seen epoch, seen seq
# -> {epoch, last_seq, from_cursor (1: records start after the cursor, 0: oldest retained), records,
#     1 if moved to a new epoch (check_floor)}
_LUA_REPLAY = (
    _LUA_COMMON
    + r"""
local meta, stream = KEYS[1], KEYS[2]
local moved = check_floor(meta, stream, ARGV[1], ARGV[8], ARGV[9])
ensure_epoch(meta, stream, ARGV[1])
confirm(meta, ARGV[7])
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
    return {epoch, last_seq, 1, records(page), moved}
  end
end
if limit == 0 then return {epoch, last_seq, 0, {}, moved} end
return {epoch, last_seq, 0, records(redis.call('XRANGE', stream, '-', '+', 'COUNT', limit)),
        moved}
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
        client: RedisClient | RedisClusterClient,
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
        id_cache_ttl_s: float = 0.0,
        check_prev_id: bool = False,
        message_wait_s: float = 5.0,
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
        # Redis Cluster: keys carry the channel's hash tag (module docstring)
        self._cluster = client if isinstance(client, RedisClusterClient) else None
        if self._cluster is not None and (b"{" in self._prefix or b"}" in self._prefix):
            raise ValueError("key_prefix must not contain braces on a Redis Cluster")
        # shared sequencing (several brokers on one Redis; module docstring)
        self.id_cache_ttl_s = max(0.0, float(id_cache_ttl_s))
        self.check_prev_id = check_prev_id
        self.message_wait_s = message_wait_s
        self._shared = self.id_cache_ttl_s > 0 or check_prev_id
        self._sequencer: Sequencer | None = None
        self._poll: Callable[[], Awaitable[None]] | None = None
        self._held_since: dict[tuple[str, str | None, str | None], float] = {}
        self._recover_seen: set[str] | None = None
        self._unattached: list[Item] = []
        self._dropped_duplicate = 0
        self._held = 0
        self._timed_out = 0
        # the highest (epoch, seq) this broker stored or read per channel (bounded, the first
        # remembered dropped first): the floor under which a channel's seq must not go (module docstring)
        self._seen: dict[str, tuple[str, int]] = {}
        self._seq_regressions = 0

    # -- keys ---------------------------------------------------------------------------------

    def _name(self, channel: str) -> bytes:
        if self._cluster is not None:
            return channel_tag(channel)
        return channel.encode("utf-8")

    def meta_key(self, channel: str) -> bytes:
        return self._prefix + b"m:" + self._name(channel)

    def stream_key(self, channel: str) -> bytes:
        return self._prefix + b"h:" + self._name(channel)

    def ids_key(self, channel: str) -> bytes:
        return self._prefix + b"i:" + self._name(channel)

    def _keys(self, channel: str) -> tuple[bytes, bytes, bytes]:
        name = self._name(channel)
        p = self._prefix
        return p + b"m:" + name, p + b"h:" + name, p + b"i:" + name

    def _slot(self, channel: str) -> int:
        return key_slot(channel_tag(channel))

    def _slot_of(self, channel: str) -> int:
        return self._slot(channel) if self._cluster is not None else 0

    # -- Store --------------------------------------------------------------------------------

    async def append_batch(self, items: Sequence[Item], now: float) -> list[Envelope]:
        """Sequence and retain ``items`` in order, in one round trip; return their envelopes.

        ``now`` is wall-clock seconds (it is compared across broker restarts).  On an error
        (``StoreUnavailable``) a prefix of the batch, or all of it, may have been stored (on a
        cluster: any subset whose masters answered).

        With shared sequencing on (``id_cache_ttl_s`` > 0 or ``check_prev_id``; the module
        docstring) the envelopes of dropped duplicates are left out, and so are items held for
        their predecessor: those go back to the attached sequencer for a retry.
        """
        if not items:
            return []
        ts_ms = int(now * 1000)
        shared = self._shared
        mono = 0.0
        if shared:
            mono = trio.current_time()
            if self._sequencer is not None:
                mono = max(mono, self._sequencer.clock)  # a flush polls far ahead: all go
        # one script call per chunk of items sharing a hash slot (a cluster) and history bounds
        # (per-prefix bounds: broker.namespaces); a channel's items keep their order in one group
        groups: dict[tuple[int, int, float], list[int]] = {}
        limits, cluster = self.limits, self._cluster is not None
        if not limits and not cluster:
            groups[(0, self.max_items, self.max_age_s)] = list(range(len(items)))
        else:
            for i, item in enumerate(items):
                ch = item.channel
                mi, ma = (
                    limits.history_limits(ch, self.max_items, self.max_age_s)
                    if limits
                    else (self.max_items, self.max_age_s)
                )
                groups.setdefault((self._slot(ch) if cluster else 0, mi, ma), []).append(i)
        commands: list[tuple[Any, ...]] = []
        slots: list[int] = []
        chunks: list[tuple[list[str], list[int]]] = []
        step = self.max_script_items
        for (slot, max_items, max_age_s), positions in groups.items():
            head = (
                str(max_items),
                "~" if self.approximate_trim else "=",
                int((now - max_age_s) * 1000),  # cutoff
                int(max_age_s * 1000) + 1000,  # ttl
                ts_ms,
                self.max_bytes,
                int(self.id_cache_ttl_s * 1000),
            )
            for start in range(0, len(positions), step):
                chunk = positions[start : start + step]
                index: dict[str, int] = {}
                args: list[Any] = []
                for pos in chunk:
                    item = items[pos]
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
                    flags = self._flags(item, mono) if shared else 0
                    # body[0] is the fixmap header 0x85
                    args += (
                        c,
                        item.id or "",
                        body[1:],
                        item_bytes(item),
                        item.prev_id or "",
                        flags,
                    )
                keys: list[bytes] = []
                for ch in index:
                    keys += self._keys(ch)
                epochs = [self._new_epoch() for _ in index]
                floors = [self._floor(ch) for ch in index]
                commands.append(
                    (
                        "EVALSHA",
                        _APPEND.sha,
                        len(keys),
                        *keys,
                        *head,
                        len(index),
                        *epochs,
                        *[f"{f[0]}:{f[1]}" if f[0] else "" for f in floors],
                        *args,
                    )
                )
                slots.append(slot)
                chunks.append((list(index), chunk))
        replies = await self._run_scripts(_APPEND, commands, slots)
        placed: list[Envelope | None] = [None] * len(items)
        held: list[Item] = []
        seen = self._seen
        for (channels, chunk), (epochs, seqs, _last_ids, moved) in zip(chunks, replies):
            ep = [e.decode("utf-8") for e in epochs]
            index = {ch: i for i, ch in enumerate(channels)}
            if moved:
                self._moved(channels, ep, moved)
            for pos, seq in zip(chunk, seqs):
                item = items[pos]
                if seq <= 0:
                    if seq == 0:
                        self._dropped_duplicate += 1
                        self._held_since.pop(_held_key(item), None)
                    else:
                        held.append(item)
                    continue
                if shared and self._held_since:
                    self._held_since.pop(_held_key(item), None)
                placed[pos] = Envelope(
                    channel=item.channel,
                    seq=seq,
                    epoch=ep[index[item.channel]],
                    formats=item.formats,
                    id=item.id,
                    prev_id=item.prev_id,
                    meta=item.meta,
                    ts=now,
                )
        out = [env for env in placed if env is not None]
        for env in out:  # in seq order per channel: the last one is the highest
            seen[env.channel] = (env.epoch, env.seq)
        if len(seen) > SEEN_CHANNELS_MAX:
            self._trim_seen()
        self._appended += len(out)
        self._batches += 1
        if held:
            self._hold(held, mono)
        seq = self._sequencer
        if seq is not None and seq.deferred_count():
            # items held for a predecessor stored just now go at once, not at the next poll
            chained = seq.take_deferred([(env.channel, env.id) for env in out if env.id])
            if chained:
                out += await self.append_batch(chained, now)
        return out

    # -- shared sequencing (several brokers on one Redis) ------------------------------------

    def attach_sequencer(
        self, sequencer: Sequencer, poll: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Let Redis sequence across brokers (module docstring): the broker's ``sequencer``
        keeps de-duplicating locally but no longer holds items for their ``prev-id`` (this
        store does, through the sequencer's retry queue).  ``poll`` (the broker's
        ``poll_sequencer``) is called by ``serve`` every ``HELD_RETRY_S`` while items are held,
        so a held item goes soon after its predecessor reached Redis through another broker.
        A no-op unless shared sequencing is on."""
        if not self._shared:
            return
        self._sequencer = sequencer
        self._poll = poll
        sequencer.last_ids_max = 0  # Redis knows the channel's last id, whichever broker wrote it
        sequencer.on_recover.append(self._recovered)

    async def _retry_held(self, poll: Callable[[], Awaitable[None]]) -> None:
        while True:
            await trio.sleep(HELD_RETRY_S)
            if self._sequencer is not None and self._sequencer.deferred_count():
                await poll()

    def _flags(self, item: Item, mono: float) -> int:
        flags = 0
        since = self._held_since.get(_held_key(item))
        if since is None:
            flags |= 1  # first time here: de-duplicate (a retry's id is recorded already)
        skip = False
        if self._recover_seen is not None and item.channel not in self._recover_seen:
            self._recover_seen.add(item.channel)
            skip = True  # the channel's first item since a recover goes through
            if len(self._recover_seen) > RECOVER_CHANNELS_MAX:
                self._recover_seen = None  # bounded memory: the rest are checked again
        if self.check_prev_id and item.prev_id is not None and not skip:
            wait_s = (
                self.message_wait_s if self._sequencer is None else self._sequencer.message_wait_s
            )
            if since is None or mono - since < wait_s:
                flags |= 2
            else:
                self._timed_out += 1
        return flags

    def _hold(self, held: list[Item], mono: float) -> None:
        for item in held:
            self._held_since.setdefault(_held_key(item), mono)
        self._held += len(held)
        if self._sequencer is None:
            self._unattached.extend(held)  # a store used alone: ``take_held`` hands them back
            return
        # retried at the sequencer's next poll, or at once when their predecessor is stored
        # through this broker (``append_batch``)
        for item in self._sequencer.defer(held):  # dropped: one per prev-id, pending_max
            self._held_since.pop(_held_key(item), None)

    def _recovered(self) -> None:
        """Pushpin's recover: held items go through on their next try without a prev check,
        and so does each channel's next item."""
        self._recover_seen = set()
        for key in list(self._held_since):
            self._held_since[key] = float("-inf")

    # -- seq went backwards (module docstring) ----------------------------------------------

    def _floor(self, channel: str) -> tuple[str, int]:
        return self._seen.get(channel, ("", 0))

    def _observed(self, channel: str, epoch: str, seq: int) -> None:
        seen = self._seen
        old = seen.get(channel)
        if old is not None and old[0] == epoch and old[1] > seq:
            return  # not lower: the script moved the channel on if it was
        seen[channel] = (epoch, seq)
        if len(seen) > SEEN_CHANNELS_MAX:
            self._trim_seen()

    def _trim_seen(self) -> None:
        seen = self._seen
        for ch in list(itertools.islice(seen, len(seen) - SEEN_CHANNELS_MAX)):
            del seen[ch]

    def _moved(self, channels: list[str], epochs: list[str], count: int) -> None:
        """``count`` of ``channels`` went to a new epoch in this script (seq went back)."""
        for ch, epoch in zip(channels, epochs):
            old = self._seen.get(ch)
            if old is not None and old[0] != epoch:
                self._log_moved(ch, old, epoch)
        self._seq_regressions += count

    @staticmethod
    def _log_moved(channel: str, old: tuple[str, int], epoch: str) -> None:
        log.warning(
            "channel %r: the store's seq went below %d (epoch %s): acknowledged writes were "
            "lost (a Redis failover without redis_wait_replicas?); new epoch %s",
            channel,
            old[1],
            old[0],
            epoch,
        )

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
            "1" if self.wait_replicas else "",
            *self._floor(channel),
        )
        (reply,) = await self._run_scripts(_POSITION, [cmd], [self._slot_of(channel)])
        epoch, seq, last_id, moved = reply
        pos = Position(epoch.decode("utf-8"), int(seq or 0), _str(last_id))
        if moved:
            self._moved([channel], [pos.epoch], moved)
        self._observed(channel, pos.epoch, pos.last_seq)
        return pos

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
            "1" if self.wait_replicas else "",
            *self._floor(channel),
        )
        (reply,) = await self._run_scripts(_REPLAY, [cmd], [self._slot_of(channel)])
        cur_epoch, last_seq, from_cursor, records, moved = reply
        if moved:
            self._moved([channel], [cur_epoch.decode("utf-8")], moved)
        self._observed(channel, cur_epoch.decode("utf-8"), int(last_seq))
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
            dropped_duplicate=self._dropped_duplicate,
            held=self._held,
            timed_out=self._timed_out,
            seq_regressions=self._seq_regressions,
        )

    def take_held(self) -> list[Item]:
        """Items held for their prev-id while no sequencer was attached (a store used alone):
        offer them again to ``append_batch`` (after ``message_wait_s`` they go unchecked)."""
        held, self._unattached = self._unattached, []
        return held

    async def serve(self) -> None:
        """Follow the sentinels' ``+switch-master`` (Sentinel), and retry held items
        (``attach_sequencer``); otherwise nothing to do."""
        client = self.client
        poll = self._poll
        if self.locator is None:
            if poll is not None:
                await self._retry_held(poll)
            await trio.sleep_forever()
            return
        if poll is None:
            await self.locator.watch(lambda switch: client.invalidate())
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._retry_held, poll)
            await self.locator.watch(lambda switch: client.invalidate())
            nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()  # a cluster client closes every node's connection
            if self.locator is not None:
                await self.locator.aclose()

    # -- internals ----------------------------------------------------------------------------

    async def _run_scripts(
        self, script: _Script, commands: list[tuple[Any, ...]], slots: list[int]
    ) -> list[Any]:
        """Pipeline EVALSHA ``commands``; rerun NOSCRIPT ones with EVAL (it had not run)."""
        self._script_calls += len(commands)
        replies, waited = await self._send(commands, slots)
        retry = [i for i, r in enumerate(replies) if _is_noscript(r)]
        if retry:
            self._script_reloads += 1
            reload = [("EVAL", script.source, *commands[i][2:]) for i in retry]
            again, waited2 = await self._send(reload, [slots[i] for i in retry])
            if self.wait_replicas:
                waited = waited2 if not isinstance(waited, int) else min(waited, waited2)
            for i, r in zip(retry, again):
                replies[i] = r
        for r in replies:
            if isinstance(r, hiredis.ReplyError):
                raise RedisStoreError(f"redis refused a store write: {r}") from RedisReplyError(r)
        if self.wait_replicas:
            if isinstance(waited, hiredis.ReplyError):
                raise RedisStoreError(f"redis refused WAIT: {waited}") from RedisReplyError(waited)
            if not isinstance(waited, int) or waited < self.wait_replicas:
                self._wait_refusals += 1
                raise RedisStoreError(
                    f"only {waited} of {self.wait_replicas} replicas confirmed within "
                    f"{self.wait_timeout_ms} ms; not acknowledged"
                )
        return replies

    async def _send(
        self, commands: list[tuple[Any, ...]], slots: list[int]
    ) -> tuple[list[Any], Any]:
        """Run ``commands`` (one pipeline, or one per cluster master), then ``WAIT`` on each
        connection written to; return the replies and the fewest replicas confirmed."""
        if self._cluster is not None:
            wait = (self.wait_replicas, self.wait_timeout_ms) if self.wait_replicas else None
            return await self._cluster.pipeline(commands, slots, wait)
        assert isinstance(self.client, RedisClient)
        if not self.wait_replicas:
            return await self.client.pipeline(commands), None
        replies = await self.client.pipeline(
            [*commands, ("WAIT", self.wait_replicas, self.wait_timeout_ms)]
        )
        waited = replies.pop()
        return replies, waited


def _held_key(item: Item) -> tuple[str, str | None, str | None]:
    return (item.channel, item.id, item.prev_id)


async def open_redis_store(url: str, *, timeout_s: float = 5.0, **kwargs: Any) -> RedisStore:
    """Connect to ``redis://host:port/db`` and return a ``RedisStore`` that owns the client."""
    client = await open_redis_url(url, timeout_s=timeout_s, client_name="gripcast-broker")
    try:
        return RedisStore(client, owns_client=True, **kwargs)
    except ValueError:
        await client.aclose()
        raise
