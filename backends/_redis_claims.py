"""`RedisBackend`'s native claim on a single Redis: one Lua script, indexes of claimable runs.

Layout, beside the runs' keys (``p`` is the backend's prefix, ``q`` a queue,
``a`` an agent name, ``\\x1f`` between them)::

    p claim:ready:q\\x1fa    ZSET  unleased runs not at rest, due: score -priority,
                                  member "<created_at padded>|<run_id>" (so ties go oldest first)
    p claim:later:q\\x1fa    ZSET  unleased runs whose not_before is ahead, scored by it
    p claim:leased:q\\x1fa   ZSET  leased runs not at rest, scored by lease expiry (the
                                  expiry index: the expired ones are one ZRANGEBYSCORE away)
    p claim:owner:<owner>   SET   the runs a lease owner holds (a lapsed worker's runs)
    p claim:owners          SET   the owners holding a lease (same-host dead pids)
    p claim:queues          SET   every queue seen;  p claim:agents:q  SET  its agents

Every write to a run (create, append, acquire, renew, release, delete) keeps
its entry in the same script (the prelude's ``reindex`` in
`durable_agent.backends._redis_scripts`), and the header's ``ix`` / ``ixo``
fields name where it is, so one run is in exactly one of these indexes and a
plain append costs one ZADD more.

`CLAIM` runs as one script, so Redis runs it alone: it marks the leases of
lapsed workers (and of processes gone from the claimer's host) expired in the
index, promotes due delayed runs, counts each limited queue's leased runs, lapsed
or not (ZCARD of the leased index, `holds_place`), picks the best
candidates among the ready and the expired ones (claim order: highest
priority, oldest, run id), checks each against its header, and takes the
lease (generation + 1). Nothing can interleave, so ``max_running`` holds
fleet-wide and two claimers never share a run.

Redis Cluster keeps a run's keys in the slot of its own hash tag, and these
indexes span runs, so there claims list the runs not at rest and take *queue
places* before leases (`durable_agent.backends._redis_cluster_places`):
``max_running`` is checked atomically in the one slot that holds every
queue's places, and each lease is then acquired in its run's own slot.

A hash tag per queue (``{q:<queue>}``) would put one queue's indexes and
counts in one slot, but not make this script atomic per queue: the script
also checks each candidate's header and takes its lease, and those keys are
in the run's own slot, where every write to the run is one script. Putting
the runs in their queue's slot instead would pin a busy queue to one node
and make every read by run id look the queue up first.

Stores written before these indexes existed are indexed once, on the first
claim (`backfill`, idempotent and safe beside other writers); processes of an
older version writing to the same store afterwards leave their new runs out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Final

from redis.asyncio import ResponseError

from durable_agent.backend import ClaimedRun, LeaseOwner, process_alive
from durable_agent.backends import _redis_records as rec
from durable_agent.backends import _redis_scripts as lua
from durable_agent.backends._redis_link import UNAVAILABLE
from durable_agent.fsm import RunState

if TYPE_CHECKING:
    from durable_agent.backends.redis import RedisBackend

__all__ = ["CLAIM", "INDEX", "backfill", "claim"]

_SCAN: Final = 64
"""Candidates read from each index beyond ``limit`` (entries found stale are mended)."""

CLAIM: Final = lua._script(
    "claim",
    """
-- No KEYS (single Redis only). ARGV: prefix, owner, host, pid, ttl, limit,
-- #queues (-1: every queue), queues..., #agents, agents..., #caps, (queue, cap)..., scan,
-- #gone, owners whose process is gone (seen from the claimer's host)...
local p, owner, host, pid, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit = tonumber(ARGV[6])
local i = 7
local queues = {}
local nq = tonumber(ARGV[i]); i = i + 1
if nq < 0 then
  queues = redis.call('SMEMBERS', p .. 'claim:queues')
else
  for _ = 1, nq do queues[#queues + 1] = ARGV[i]; i = i + 1 end
end
local agents, known = {}, {}
local na = tonumber(ARGV[i]); i = i + 1
for _ = 1, na do agents[#agents + 1] = ARGV[i]; known[ARGV[i]] = true; i = i + 1 end
local caps = {}
local nc = tonumber(ARGV[i]); i = i + 1
for _ = 1, nc do caps[ARGV[i]] = tonumber(ARGV[i + 1]); i = i + 2 end
local scan = tonumber(ARGV[i]); i = i + 1
local gone = {}
local ng = tonumber(ARGV[i]); i = i + 1
for _ = 1, ng do gone[#gone + 1] = ARGV[i]; i = i + 1 end
local now_s, now_n = now()
local nows = string.format('%.6f', now_n)
local function header(id) return p .. '{' .. id .. '}:header' end
local function leased(ix) return string.sub(ix, #p + 1, #p + 13) == 'claim:leased:' end

-- 1. The leases of a lapsed worker, or of a process gone from the claimer's host, are
-- dead: score them 0 in the expiry index.
local dead = {}
local lapsed = redis.call('ZRANGEBYSCORE', p .. '{workers}', '-inf', nows)
for _, o in ipairs(gone) do lapsed[#lapsed + 1] = o end
for _, o in ipairs(lapsed) do
  dead[o] = true
  for _, id in ipairs(redis.call('SMEMBERS', p .. 'claim:owner:' .. o)) do
    local ok, ix = pcall(redis.call, 'HGET', header(id), 'ix')
    if ok and ix and leased(ix) then
      local score = redis.call('ZSCORE', ix, id)
      if score and tonumber(score) > 0 then redis.call('ZADD', ix, 0, id) end
    end
  end
end

-- 2. Candidates: due delayed runs become ready, then the best ready and expired ones.
local cands = {}
for _, q in ipairs(queues) do
  for _, a in ipairs(agents) do
    local slot = q .. '\\31' .. a
    local later = p .. 'claim:later:' .. slot
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', later, '-inf', nows, 'LIMIT', 0, scan)) do
      local ok = pcall(reindex, header(id), p, now_n)
      if not ok then redis.call('ZREM', later, id) end
    end
    local ready = p .. 'claim:ready:' .. slot
    local found = redis.call('ZRANGE', ready, 0, scan - 1, 'WITHSCORES')
    for j = 1, #found, 2 do
      local m = found[j]
      cands[#cands + 1] = {prio = -tonumber(found[j + 1]), created = string.sub(m, 1, 17),
                           id = string.sub(m, 19), ix = ready, member = m, q = q}
    end
    local leasedix = p .. 'claim:leased:' .. slot
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', leasedix, '-inf', nows, 'LIMIT', 0, scan)) do
      local ok, f = pcall(redis.call, 'HMGET', header(id), 'priority', 'created_at')
      if ok and f[2] then
        cands[#cands + 1] = {prio = tonumber(f[1] or '0') or 0, created = pad(f[2]), id = id,
                             ix = leasedix, member = id, q = q, held = true}
      else
        redis.call('ZREM', leasedix, id)
      end
    end
  end
end
table.sort(cands, function(x, y)
  if x.prio ~= y.prio then return x.prio > y.prio end
  if x.created ~= y.created then return x.created < y.created end
  return x.id < y.id
end)

-- 3. Room per limited queue: its leased runs not at rest, lapsed or not (a frozen
-- holder writes on when it thaws unless its run is taken over). A takeover keeps the
-- run's place, so it needs no room.
local room = {}
for q, most in pairs(caps) do
  local running = 0
  for _, a in ipairs(redis.call('SMEMBERS', p .. 'claim:agents:' .. q)) do
    running = running + redis.call('ZCARD', p .. 'claim:leased:' .. q .. '\\31' .. a)
  end
  room[q] = most - running
end

-- 4. Claim in order, each checked against its header (the index may be stale).
local out = {}
for _, c in ipairs(cands) do
  if #out >= limit then break end
  if room[c.q] == nil or room[c.q] > 0 or c.held then
    local h = header(c.id)
    local ok, f = pcall(redis.call, 'HMGET', h, 'state', 'queue', 'agent_name', 'not_before',
                        'lease_owner', 'lease_expires', 'lease_generation', 'cancel_requested',
                        'lease_host', 'lease_pid', 'lease_ttl', 'ix')
    local gen = ok and tonumber(f[7])
    if not gen then
      redis.call('ZREM', c.ix, c.member)  -- a run deleted, or a key past reading
    elseif f[12] ~= c.ix then
      redis.call('ZREM', c.ix, c.member)  -- a stale entry: the header says where it is
      reindex(h, p, now_n)
    else
      local expired = not f[5] or (tonumber(f[6]) or 0) <= now_n or dead[f[5]]
      local due = not f[4] or (tonumber(f[4]) or 0) <= now_n
      if ACTIVE[f[1]] and known[f[3] or ''] and (f[2] or 'default') == c.q and due
         and expired then
        local g = string.format('%d', gen + 1)
        local expires = string.format('%.6f', now_n + tonumber(ttl))
        redis.call('HSET', h, 'lease_owner', owner, 'lease_host', host, 'lease_pid', pid,
                   'lease_expires', expires, 'lease_ttl', ttl, 'lease_generation', g)
        reindex(h, p, now_n)
        if room[c.q] and not f[5] then room[c.q] = room[c.q] - 1 end
        out[#out + 1] = {c.id, f[5] or false, f[9] or false, f[10] or false, f[6] or false,
                         f[11] or false, f[7], redis.call('HGETALL', h)}
      else
        reindex(h, p, now_n)  -- e.g. a renewed lease whose score lagged: mended
      end
    end
  end
end
return out
""",
)

INDEX: Final = lua._script(
    "claim_index",
    """
-- KEYS: headers. Puts each run in its claim index (the once-only backfill).
local now_s, now_n = now()
for _, h in ipairs(KEYS) do
  if kind(h) == 'hash' then reindex(h, prefix_of(h), now_n) end
end
return 1
""",
)

_ACTIVE: Final = (RunState.PENDING, RunState.MODEL_CALL, RunState.TOOL_EXEC)


async def claim(
    backend: RedisBackend,
    owner: LeaseOwner,
    *,
    agents: Collection[str],
    queues: Collection[str] | None,
    limit: int,
    ttl: float,
    max_running: Mapping[str, int] | None,
) -> list[ClaimedRun]:
    """Run `CLAIM` once and read what it granted."""
    await backfill(backend)
    args: list[str] = [backend.prefix, owner.id, owner.host, str(owner.pid), repr(float(ttl))]
    args.append(str(limit))
    if queues is None:
        args.append("-1")
    else:
        wanted = sorted(set(queues))
        args += [str(len(wanted)), *wanted]
    names = sorted(set(agents))
    args += [str(len(names)), *names]
    caps = sorted((max_running or {}).items())
    args.append(str(len(caps)))
    for queue, most in caps:
        args += [queue, str(most)]
    args.append(str(limit + _SCAN))
    gone = await _gone_here(backend, owner)
    args += [str(len(gone)), *gone]
    reply = await backend._eval(CLAIM, [], args)
    return [rec.claimed(rec.text(row[0]), row, ttl) for row in reply]


async def _gone_here(backend: RedisBackend, owner: LeaseOwner) -> list[str]:
    """Lease owners on this host whose process is gone: their leases are taken at once.

    ``claim:owners`` lists the owners holding a lease (a few per live process),
    so this reads no run. Owner ids are ``host:pid:nonce``.
    """
    try:
        held = await backend._client().smembers(f"{backend.prefix}claim:owners")
    except (*UNAVAILABLE, ResponseError) as exc:
        backend._translate(exc)
    gone: list[str] = []
    alive: dict[int, bool] = {}  # one look per pid: a process may hold leases as many owners
    for raw in held:
        held_by = rec.text(raw)
        host, _, pid = held_by.rpartition(":")[0].rpartition(":")
        if host != owner.host or not pid.isdigit():
            continue
        if int(pid) not in alive:
            alive[int(pid)] = process_alive(int(pid))
        if not alive[int(pid)]:
            gone.append(held_by)
    return sorted(gone)


async def backfill(backend: RedisBackend) -> None:
    """Index a store's runs not at rest once (stores written before the claim indexes)."""
    if backend._claims_indexed:
        return
    marker = f"{backend.prefix}claim:layout"
    client = backend._client()
    try:
        if await client.exists(marker):
            backend._claims_indexed = True
            return
        for state in _ACTIVE:
            ids = await client.zrange(f"{backend.prefix}idx:state:{state.value}", 0, -1)
            for start in range(0, len(ids), 200):
                keys = [backend._keys(rec.text(i))[0] for i in ids[start : start + 200]]
                await backend._eval(INDEX, keys, [])
        await client.set(marker, "1")
    except (*UNAVAILABLE, ResponseError) as exc:
        backend._translate(exc)
    backend._claims_indexed = True
