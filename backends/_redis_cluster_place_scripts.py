"""The Lua scripts of queue places on Redis Cluster: `_redis_cluster_places` runs them.

Places live in the slot of ``{idx}``, beside the listing indexes (``b`` is
``<prefix>{idx}:``, ``q`` a queue)::

    b place:q     ZSET  one member per run holding a place in queue q, scored by the
                        place's expiry (the index slot's server TIME + a horizon)
    b placed:q    HASH  run id -> "G|token|at[|G'|token'|at']": the lease generation
                        the place was taken for, a random token of the taker, the
                        server time it was taken, and the entry it replaced (if live)

`PLACES` runs a list of operations on them in one script (one round trip, one
slot). The run-slot scripts below are the cluster twins of the claim, acquire,
renew and release scripts: they cap a lease's expiry at the run's
``place_until`` header field (the place's expiry less the allowed clock skew,
written when the lease was granted or its place extended), refuse to renew a
lease whose place has lapsed, and say when the place should be extended.
"""

from __future__ import annotations

from typing import Final

from durable_agent.backends import _redis_cluster_scripts as cl
from durable_agent.backends._redis_scripts import _script

_LIB: Final = """
local function place_keys(base, q) return base .. 'place:' .. q, base .. 'placed:' .. q end
local function place_parse(e)
  local g, tok, at, rest = string.match(e, '^([^|]*)|([^|]*)|([^|]*)|?(.*)$')
  return tonumber(g) or 0, tok or '', tonumber(at) or 0, rest or ''
end
local function place_take(base, kind, q, id, gen, token, horizon, cap, fresh)
  -- kind 'c': a claim (refused when `cap` live places are held, or when another
  -- claim of this very lease is in flight); 't': a take without a cap.
  local now_s, now_n = now()
  local nows = string.format('%.6f', now_n)
  local z, h = place_keys(base, q)
  local score = tonumber(redis.call('ZSCORE', z, id) or '')
  local entry = score ~= nil and score > now_n and redis.call('HGET', h, id)
  local expiry = now_n + horizon
  if entry then
    local g, tok, at = place_parse(entry)
    if g > gen then return {'stale'} end  -- a newer generation holds it: never lower it
    if kind == 'c' and g == gen and at > now_n - fresh then return {'taken'} end
    -- A takeover keeps the run's one place, but a queue already past its cap (the cap
    -- was lowered, or leases came from outside claims) gets no takeover either.
    if kind == 'c' and cap and redis.call('ZCOUNT', z, '(' .. nows, '+inf') - 1 >= cap then
      return {'full'}
    end
    if score > expiry then expiry = score end
    redis.call('ZADD', z, expiry, id)
    redis.call('HSET', h, id, string.format('%d|%s|%s|%d|%s|%.6f', gen, token, nows, g, tok, at))
    return {'ok', string.format('%.6f', expiry)}
  end
  if kind == 'c' and cap and redis.call('ZCOUNT', z, '(' .. nows, '+inf') >= cap then
    return {'full'}
  end
  redis.call('ZADD', z, expiry, id)
  redis.call('HSET', h, id, string.format('%d|%s|%s', gen, token, nows))
  return {'ok', string.format('%.6f', expiry)}
end
local function place_drop(base, q, id, gen)
  local z, h = place_keys(base, q)
  local entry = redis.call('HGET', h, id)
  if entry and place_parse(entry) == gen then
    redis.call('ZREM', z, id)
    redis.call('HDEL', h, id)
  end
end
"""

PLACES: Final = _script(
    "cluster_places",
    _LIB
    + """
-- KEYS: any key of the index slot (routing only). ARGV: base, limit of places taken
-- by 'c' operations (-1: none), seconds a claim's place counts as in flight, then
-- operations of 7 arguments: kind, queue, run_id, generation, token, horizon, cap.
--   c  claim: take a place for generation G unless the queue holds `cap` live places
--      ('' = no cap) besides the run's own; a run already placed keeps its one place
--      (no second count)
--   t  take: the same without a cap (a lease acquired outside claims)
--   x  extend the run's live place to now + horizon (never shortens it)
--   r  restore: undo this token's take (the entry it replaced comes back)
--   d  drop the run's place if it was taken for generation G (its lease released)
-- Replies, one per operation: {'ok', expiry} / {'full'} / {'taken'} / {'stale'} /
-- {'lost'} / {'skip'} (a claim past the limit) / {'done'}.
local base, limit, fresh = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now_s, now_n = now()
local nows = string.format('%.6f', now_n)
local swept = {}
local function sweep(q)
  -- Expired places go (a bounded batch per call; counts use ZCOUNT above now anyway).
  if swept[q] then return end
  swept[q] = true
  local z, h = place_keys(base, q)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', nows, 'LIMIT', 0, 100)
  if #old > 0 then
    redis.call('ZREM', z, unpack(old))
    redis.call('HDEL', h, unpack(old))
  end
end
local out, taken = {}, 0
for i = 4, #ARGV, 7 do
  local kind, q, id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local gen, token = tonumber(ARGV[i + 3]) or 0, ARGV[i + 4]
  local horizon, cap = tonumber(ARGV[i + 5]) or 0, tonumber(ARGV[i + 6])
  local z, h = place_keys(base, q)
  sweep(q)
  if kind == 'c' or kind == 't' then
    if kind == 'c' and limit >= 0 and taken >= limit then
      out[#out + 1] = {'skip'}
    else
      local reply = place_take(base, kind, q, id, gen, token, horizon, cap, fresh)
      if reply[1] == 'ok' and kind == 'c' then taken = taken + 1 end
      out[#out + 1] = reply
    end
  elseif kind == 'x' then
    local score = tonumber(redis.call('ZSCORE', z, id) or '')
    if score ~= nil and score > now_n then
      local expiry = now_n + horizon
      if score > expiry then expiry = score end
      redis.call('ZADD', z, expiry, id)
      out[#out + 1] = {'ok', string.format('%.6f', expiry)}
    else
      out[#out + 1] = {'lost'}
    end
  elseif kind == 'd' then
    place_drop(base, q, id, gen)
    out[#out + 1] = {'done'}
  else
    local entry = redis.call('HGET', h, id)
    if entry then
      local _, tok, _, rest = place_parse(entry)
      if tok == token then
        if rest ~= '' then
          redis.call('HSET', h, id, rest)  -- the expiry stays: never shortened
        else
          redis.call('ZREM', z, id)
          redis.call('HDEL', h, id)
        end
      end
    end
    out[#out + 1] = {'done'}
  end
end
return out
""",
)

INTENT_TAKE: Final = _script(
    "cluster_intent_take",
    _LIB
    + cl._INTENT_BODY
    + """
-- And ARGV[4..8]: base, queue, generation, token, horizon: the place of a run created
-- with its lease, taken in the same step. Returns {incarnation, place reply...}.
local placed = place_take(ARGV[4], 't', ARGV[5], id, tonumber(ARGV[6]), ARGV[7],
                          tonumber(ARGV[8]), nil, 0)
return {inc, placed[1], placed[2] or false}
""",
)

INDEX_DROP: Final = _script(
    "cluster_index_drop",
    cl._BUCKET
    + _LIB
    + """
-- INDEX of `_redis_cluster_scripts` after dropping a released lease's place: ARGV[2..4]
-- are its queue, run id and generation, the truths follow.
place_drop(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))
local FIRST = 5
"""
    + cl._INDEX_BODY,
)

# -- the run's slot -------------------------------------------------------------------

_CAP: Final = """
local function capped(now_n, ttl, pu)
  -- The lease never outlives its place: expiry = min(now + ttl, place_until).
  local expires = now_n + tonumber(ttl)
  if pu and pu < expires then expires = pu end
  return string.format('%.6f', expires)
end
"""

CLAIM_ONE: Final = _script(
    "cluster_claim_one",
    _CAP
    + """
-- KEYS: header. ARGV: owner, host, pid, ttl, generation seen, owner seen dead ('' =
-- none), queue seen, agent seen, place_until. Takes the lease (generation + 1) if
-- the run is still as the claimer listed it: same generation, claimable (not at
-- rest, due, unleased or its lease expired or its owner dead) and placed.
local h = KEYS[1]
if kind(h) ~= 'hash' then return {'moved'} end
local f = redis.call('HMGET', h, 'state', 'queue', 'agent_name', 'not_before', 'lease_owner',
                     'lease_expires', 'lease_generation', 'cancel_requested', 'lease_host',
                     'lease_pid', 'lease_ttl')
local now_s, now_n = now()
if f[7] ~= ARGV[5] or not ACTIVE[f[1]] or (f[2] or 'default') ~= ARGV[7] or f[3] ~= ARGV[8]
   or (tonumber(f[4] or '') or 0) > now_n then
  return {'moved'}
end
if f[5] and (tonumber(f[6]) or 0) > now_n and f[5] ~= ARGV[6] then return {'moved'} end
local pu = tonumber(ARGV[9])
if pu <= now_n then return {'moved'} end
local gen = string.format('%d', tonumber(f[7]) + 1)
redis.call('HSET', h, 'lease_owner', ARGV[1], 'lease_host', ARGV[2], 'lease_pid', ARGV[3],
           'lease_expires', capped(now_n, ARGV[4], pu), 'lease_ttl', ARGV[4],
           'lease_generation', gen, 'place_until', ARGV[9])
return {'ok', f[5] or false, f[9] or false, f[10] or false, f[6] or false, f[11] or false,
        f[7], redis.call('HGETALL', h)}
""",
)

ACQUIRE: Final = _script(
    "cluster_acquire",
    _CAP
    + """
-- KEYS: header. ARGV: owner, host, pid, ttl, takeover ('' = none), generation expected,
-- place_until. ACQUIRE's rules, and the generation must still be the one the place
-- was taken for ({'moved'} otherwise, nothing written).
local h = KEYS[1]
local t = kind(h)
if t == 'none' then return {'missing'} end
if t ~= 'hash' then return {'wrongtype', 'header', t} end
local f = redis.call('HMGET', h, 'lease_owner', 'lease_expires', 'lease_generation',
                     'cancel_requested')
local now_s, now_n = now()
local generation = tonumber(f[3])
if not generation then return {'corrupt', 'lease_generation', tostring(f[3])} end
if f[1] and f[1] ~= ARGV[1] and (tonumber(f[2]) or 0) > now_n and ARGV[5] ~= f[3] then
  return {'busy', now_s, redis.call('HGETALL', h)}
end
if f[3] ~= ARGV[6] then return {'moved'} end
local pu = tonumber(ARGV[7])
if pu <= now_n then return {'moved'} end
local gen = string.format('%d', generation + 1)
local expires = capped(now_n, ARGV[4], pu)
redis.call('HSET', h, 'lease_owner', ARGV[1], 'lease_host', ARGV[2], 'lease_pid', ARGV[3],
           'lease_expires', expires, 'lease_ttl', ARGV[4], 'lease_generation', gen,
           'place_until', ARGV[7])
return {'ok', gen, expires, f[4] or false}
""",
)

RENEW: Final = _script(
    "cluster_renew",
    _CAP
    + """
-- KEYS: header. ARGV: generation, owner, host, pid, ttl, extend below (seconds),
-- place_until ('' = unchanged). A lease whose place lapsed is not renewed ({'lapsed',
-- queue}); {'ox', ...} instead of {'ok', ...} asks the caller to extend the place.
local h = KEYS[1]
local t = kind(h)
if t == 'none' then return {'missing'} end
if t ~= 'hash' then return {'wrongtype', 'header', t} end
local f = redis.call('HMGET', h, 'lease_owner', 'lease_generation', 'cancel_requested',
                     'place_until', 'queue')
if not f[1] or f[2] ~= ARGV[1] then return {'lost'} end
local now_s, now_n = now()
local pu = tonumber(f[4] or '')
local given = tonumber(ARGV[7])
if given and (not pu or given > pu) then pu = given end
if pu and pu <= now_n then return {'lapsed', f[5] or 'default'} end
local expires = capped(now_n, ARGV[5], pu)
redis.call('HSET', h, 'lease_owner', ARGV[2], 'lease_host', ARGV[3], 'lease_pid', ARGV[4],
           'lease_expires', expires, 'lease_ttl', ARGV[5])
if given and pu == given then redis.call('HSET', h, 'place_until', ARGV[7]) end
local status = 'ok'
if pu and pu - now_n < tonumber(ARGV[6]) then status = 'ox' end
return {status, expires, f[3] or false, f[5] or 'default'}
""",
)

RELEASE: Final = _script(
    "cluster_release",
    """
-- KEYS: header. ARGV: generation. Gives the lease up if still held by that generation;
-- replies {'ok', queue} when the lease had a place to drop, else {'ok', false}.
local h = KEYS[1]
local t = kind(h)
if t == 'none' then return {'ok', false} end
if t ~= 'hash' then return {'wrongtype', 'header', t} end
local f = redis.call('HMGET', h, 'lease_owner', 'lease_generation', 'place_until', 'queue')
if f[1] and f[2] == ARGV[1] then
  redis.call('HDEL', h, 'place_until', unpack(LEASE))
  if f[3] then return {'ok', f[4] or 'default'} end
end
return {'ok', false}
""",
)

SET_PLACE: Final = _script(
    "cluster_set_place",
    """
-- KEYS: header. ARGV: generation, place_until. Records an extended place for the lease
-- of that generation (never shortens it); later renewals may run until then.
local h = KEYS[1]
if kind(h) ~= 'hash' then return 0 end
local f = redis.call('HMGET', h, 'lease_owner', 'lease_generation', 'place_until')
if not f[1] or f[2] ~= ARGV[1] then return 0 end
if (tonumber(f[3] or '') or 0) >= tonumber(ARGV[2]) then return 1 end
redis.call('HSET', h, 'place_until', ARGV[2])
return 1
""",
)

__all__ = [
    "ACQUIRE",
    "CLAIM_ONE",
    "INDEX_DROP",
    "INTENT_TAKE",
    "PLACES",
    "RELEASE",
    "RENEW",
    "SET_PLACE",
]
