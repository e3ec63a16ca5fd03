"""The Lua scripts `RedisBackend` runs on Redis Cluster, where a script may touch one slot only.

A run's two keys share the hash tag ``{run_id}``, so every script of one run
(create, append, leases, cancel, load, delete, prune) is single-slot and as
atomic as on a single Redis. The cancel and load scripts of
`durable_agent.backends._redis_scripts` are used unchanged; the four below are
their single-node twins without the index updates, which cannot share a script
with a run's keys there (and which keep a lease within its queue place); the
lease scripts' twins are in `durable_agent.backends._redis_cluster_place_scripts`.

The listing indexes live in one other slot, under the hash tag ``{idx}``
(``b`` is ``<prefix>{idx}:``)::

    b created             ZSET  run ids scored by created_at
    b state:<BUCKET>      ZSET  ACTIVE (PENDING, MODEL_CALL, TOOL_EXEC), WAITING, DONE,
                                ERROR, CANCELLED: runs move between buckets only when
                                they come to rest or leave it, not on every transition
    b session:<id>        ZSET  the runs of each session
    b user:<id>           ZSET  the runs of each user
    b runs                HASH  run id -> JSON [incarnation, seq, bucket, created_at,
                                session or false, user or false]: what the indexes
                                hold for the run, and from which version of it
    b pending             HASH  run id -> JSON [[seq, server time], ...]: intents of
                                writes that change the run's index entries
    b incarnation         STRING  counter: each created run gets the next number

An index update is a second step after the run's own script, so it is made
safe by three rules instead of by atomicity:

1. **Intent first.** A write that changes index entries (a create, or an append
   that moves the run to another bucket) is announced in ``pending`` before its
   script runs; the append script refuses such a move without it. If the writer
   dies between its script and its index update, the next listing finds the
   intent, reads the run's header and finishes the update.
2. **Versions.** ``INDEX`` applies a run's header as read (incarnation, seq) only
   if the runs hash holds no newer version, so a late or repeated update never
   undoes a newer one. Incarnations come from one counter, so a run deleted and
   created again is newer than anything left from before.
3. **Remove, then look again.** Entries whose run is gone are removed by
   ``UNINDEX``; whoever removes them without knowing the incarnation reads the
   header again afterwards and puts back what a concurrent create made.

Scripts of the index slot compute key names from the base they are given;
those keys all carry ``{idx}``, so they are in the slot of the declared keys.
"""

from __future__ import annotations

from typing import Final

from durable_agent.backends._redis_scripts import Script, _script, control

_BUCKET: Final = """
local function bucket(state)
  if state == 'PENDING' or state == 'MODEL_CALL' or state == 'TOOL_EXEC' then return 'ACTIVE' end
  return state
end
"""

CREATE: Final = _script(
    "cluster_create",
    """
-- KEYS: header, events. ARGV: retention_ms, incarnation, place_until ('' = the run is
-- created without a lease), #fieldargs, field, value, ..., events...
local h, ev = KEYS[1], KEYS[2]
if redis.call('EXISTS', h) == 1 then return {'exists'} end
local n = tonumber(ARGV[4])
local state
for i = 5, 4 + n, 2 do if ARGV[i] == 'state' then state = ARGV[i + 1] end end
redis.call('DEL', ev)  -- a log without a header is nobody's
redis.call('HSET', h, 'incarnation', ARGV[2], unpack(ARGV, 5, 4 + n))
local pu = tonumber(ARGV[3])
if pu then
  -- The lease never outlives its queue place (`_redis_cluster_places`).
  redis.call('HSET', h, 'place_until', ARGV[3])
  if (tonumber(redis.call('HGET', h, 'lease_expires') or '') or 0) > pu then
    redis.call('HSET', h, 'lease_expires', ARGV[3])
  end
end
push(ev, 5 + n)
local keep = tonumber(ARGV[1])
if keep > 0 and final(state) then
  redis.call('PEXPIRE', h, keep)
  redis.call('PEXPIRE', ev, keep)
end
return {'ok'}
""",
)

APPEND: Final = _script(
    "cluster_append",
    _BUCKET
    + control(11)
    + """
-- KEYS: header, events. ARGV[1]: the packed control of the single-node append
-- (retention_ms, generation, owner, ttl, expected_seq, new_seq, new_state, release)
-- plus: '1' when the caller recorded an index intent for this write; the seconds of
-- place left below which the reply asks for the place to be extended; an extended
-- place_until to record ('' = none). ARGV[2..]: events. A move to another bucket
-- without an intent is refused with {'intent'}, and a write (other than a release)
-- of a lease whose queue place lapsed with {'lapsed', queue}, before anything is
-- written. The lease is renewed to now + ttl, never past its place. A write that
-- leaves the run at rest with its lease kept gives its place up: the reply names
-- the queue to drop it from, as for a release.
local h, ev = KEYS[1], KEYS[2]
local a = {string.match(ARGV[1], CONTROL)}
local ok, f = pcall(redis.call, 'HMGET', h, 'seq', 'state', 'lease_generation', 'lease_owner',
                    'cancel_requested', 'created_at', 'run_id', 'place_until', 'queue')
if not ok then return {'wrongtype', 'header', kind(h)} end
if not f[7] then return {'missing'} end
if not f[4] or f[3] ~= a[2] or f[4] ~= a[3] or f[1] ~= a[5] then
  return {'refused', redis.call('HGETALL', h)}
end
local state = f[2]
local to = a[7]
if to == '' then to = state end
if bucket(to) ~= bucket(state) and a[9] ~= '1' then return {'intent', f[9] or 'default'} end
local now_s, now_n = now()
local q = f[9] or 'default'
local pu = tonumber(f[8] or '')
local given = tonumber(a[11] or '')
if given and pu and given <= pu then given = nil end
if given then pu = given end
if pu and a[8] ~= '1' and pu <= now_n then return {'lapsed', q} end
local refused = append_log(ev, 2, f[1])  -- the log's type and length checked by its RPUSH
if refused then return refused end
-- A run at rest holds no place (`holds_place`), even while its lease is kept: a
-- write that leaves it at rest gives the place up (the caller drops it, as for a
-- release) and its lease is no longer capped by it.
local placed_at_rest = bucket(to) ~= 'ACTIVE' and a[8] ~= '1' and pu ~= nil
if placed_at_rest then pu = nil end
local expires = now_n + tonumber(a[4])
if pu and pu < expires then expires = pu end
expires = string.format('%.6f', expires)
local placed = false
if a[8] == '1' then
  redis.call('HSET', h, 'seq', a[6], 'state', to, 'updated_at', now_s)
  redis.call('HDEL', h, 'place_until', unpack(LEASE))
  if pu then placed = q end
elseif placed_at_rest then
  redis.call('HSET', h, 'seq', a[6], 'state', to, 'updated_at', now_s,
             'lease_expires', expires, 'lease_ttl', a[4])
  redis.call('HDEL', h, 'place_until')
  placed = q
else
  redis.call('HSET', h, 'seq', a[6], 'state', to, 'updated_at', now_s,
             'lease_expires', expires, 'lease_ttl', a[4])
  if given then redis.call('HSET', h, 'place_until', a[11]) end
end
if to ~= state then
  local keep = tonumber(a[1])
  if keep > 0 and final(to) then
    redis.call('PEXPIRE', h, keep)
    redis.call('PEXPIRE', ev, keep)
  end
end
if a[9] == '1' then
  -- What the caller's index update needs, read in the same atomic step.
  local g = redis.call('HMGET', h, 'incarnation', 'session_id', 'user_id')
  return {'indexed', expires, f[5] or false, g[1] or '0', a[6], to, f[6], g[2] or false,
          g[3] or false, placed}
end
if placed then return {'released', expires, f[5] or false, placed} end
if pu and a[8] ~= '1' and pu - now_n < tonumber(a[10]) then
  return {'ox', expires, f[5] or false, q}
end
if f[5] then return 'ok\\31' .. expires .. '\\31' .. f[5] end
return 'ok\\31' .. expires
""",
    index=False,  # the claim indexes are single Redis's
)

DELETE: Final = _script(
    "cluster_delete",
    """
-- KEYS: header, events. Deletes the run's keys; UNINDEX removes its entries after.
-- Returns {keys deleted, incarnation or false, queue of a placed lease or false, its
-- generation or false}.
local h, ev = KEYS[1], KEYS[2]
local f = {false, false, false, false}
if kind(h) == 'hash' then
  f = redis.call('HMGET', h, 'incarnation', 'place_until', 'queue', 'lease_generation')
end
local q = false
if f[2] then q = f[3] or 'default' end
return {redis.call('DEL', h, ev), f[1] or false, q, f[2] and f[4] or false}
""",
)

PRUNE_ONE: Final = _script(
    "cluster_prune_one",
    """
-- KEYS: header, events. ARGV: updated_at as read, states...
-- Deleted only if unchanged since it was read (same updated_at), in one of the
-- states, and its lease is not live. Returns {1, incarnation or false} or {0}.
local h, ev = KEYS[1], KEYS[2]
if kind(h) ~= 'hash' then return {0} end
local f = redis.call('HMGET', h, 'updated_at', 'state', 'lease_owner', 'lease_expires',
                     'incarnation')
if f[1] ~= ARGV[1] then return {0} end
local wanted = false
for i = 2, #ARGV do if ARGV[i] == f[2] then wanted = true end end
if not wanted then return {0} end
local now_s, now_n = now()
if f[3] and (tonumber(f[4]) or 0) > now_n then return {0} end
redis.call('DEL', h, ev)
return {1, f[5] or false}
""",
)

# -- the index slot ---------------------------------------------------------------------

_INTENT_BODY: Final = """
-- KEYS: pending, incarnation counter. ARGV: run_id, seq, '1' to take a new incarnation.
-- Announces that a write bringing the run to `seq` changes its index entries: a
-- token {seq, server time} in the run's field of `pending` (announcing a seq again
-- refreshes its time). Returns the new incarnation, or ''.
local pending, id, seq = KEYS[1], ARGV[1], tonumber(ARGV[2])
local raw = redis.call('HGET', pending, id)
local tokens = {}
if raw then tokens = cjson.decode(raw) end
local now_s, now_n = now()
local found = false
for _, t in ipairs(tokens) do
  if t[1] == seq then
    t[2] = now_n
    found = true
  end
end
if not found then tokens[#tokens + 1] = {seq, now_n} end
local inc = ''
if ARGV[3] == '1' then inc = tostring(redis.call('INCR', KEYS[2])) end
redis.call('HSET', pending, id, cjson.encode(tokens))
"""

INTENT: Final = _script("cluster_intent", _INTENT_BODY + "return inc\n")

_INDEX_BODY: Final = """
-- KEYS: runs, pending. ARGV[1]: the base of the index keys; ARGV[FIRST..] (FIRST
-- is 2, but 5 in INDEX_DROP of `_redis_cluster_place_scripts`): one JSON array per
-- run, as its header was read: [run_id, incarnation, seq, state, created_at,
-- session_id or null, user_id or null, index key it was found in or null].
-- Puts each run in the indexes its header calls for (and takes it out of those it
-- left), unless `runs` holds a newer version of it; then drops its intents up to
-- that seq. An entry found where the run's record does not put it is removed.
-- Returns how many runs were (re)indexed.
local runs, pending, base = KEYS[1], KEYS[2], ARGV[1]
local function opt(v)
  if v == cjson.null then return false end
  return v
end
local applied = 0
for i = FIRST, #ARGV do
  local t = cjson.decode(ARGV[i])
  local id, inc, seq, b, score = t[1], t[2], t[3], bucket(t[4]), t[5]
  local session, user = opt(t[6]), opt(t[7])
  local raw = redis.call('HGET', runs, id)
  local old = false
  if raw then old = cjson.decode(raw) end
  local cur = old
  if not old or old[1] < inc or (old[1] == inc and old[2] <= seq) then
    cur = {inc, seq, b, score, session, user}
    if old then
      if old[3] ~= b then redis.call('ZREM', base .. 'state:' .. old[3], id) end
      if old[5] and old[5] ~= session then
        redis.call('ZREM', base .. 'session:' .. old[5], id)
      end
      if old[6] and old[6] ~= user then redis.call('ZREM', base .. 'user:' .. old[6], id) end
    end
    redis.call('ZADD', base .. 'created', score, id)
    redis.call('ZADD', base .. 'state:' .. b, score, id)
    if session then redis.call('ZADD', base .. 'session:' .. session, score, id) end
    if user then redis.call('ZADD', base .. 'user:' .. user, score, id) end
    redis.call('HSET', runs, id, cjson.encode(cur))
    applied = applied + 1
  end
  local found = opt(t[8])
  if found then
    local own = found == base .. 'created' or found == base .. 'state:' .. cur[3]
        or (cur[5] and found == base .. 'session:' .. cur[5])
        or (cur[6] and found == base .. 'user:' .. cur[6])
    if own then
      redis.call('ZADD', found, cur[4], id)
    else
      redis.call('ZREM', found, id)
    end
  end
  if not old or old[1] <= inc then
    local traw = redis.call('HGET', pending, id)
    if traw then
      local keep = {}
      for _, tok in ipairs(cjson.decode(traw)) do
        if tok[1] > seq then keep[#keep + 1] = tok end
      end
      if #keep == 0 then
        redis.call('HDEL', pending, id)
      else
        redis.call('HSET', pending, id, cjson.encode(keep))
      end
    end
  end
end
return applied
"""

INDEX: Final = _script("cluster_index", _BUCKET + "local FIRST = 2\n" + _INDEX_BODY)

UNINDEX: Final = _script(
    "cluster_unindex",
    """
-- KEYS: runs. ARGV[1]: the base of the index keys; then triples: run_id, incarnation
-- ('' = whichever is indexed), an index key the run was found in ('' = none).
-- Removes each run's index entries, as `runs` records them, unless they belong to a
-- newer incarnation. Intents are left alone: a create in flight still needs its own.
local runs, base = KEYS[1], ARGV[1]
for i = 2, #ARGV, 3 do
  local id, inc, found = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local raw = redis.call('HGET', runs, id)
  if raw then
    local old = cjson.decode(raw)
    if not inc or old[1] <= inc then
      redis.call('ZREM', base .. 'created', id)
      redis.call('ZREM', base .. 'state:' .. old[3], id)
      if old[5] then redis.call('ZREM', base .. 'session:' .. old[5], id) end
      if old[6] then redis.call('ZREM', base .. 'user:' .. old[6], id) end
      redis.call('HDEL', runs, id)
    end
  end
  if found ~= '' and not inc then redis.call('ZREM', found, id) end
end
return 'ok'
""",
)

EXPIRE_INTENTS: Final = _script(
    "cluster_expire_intents",
    """
-- KEYS: pending. ARGV: age in seconds, run ids... Drops the intents older than `age`:
-- writes announced but never made (the writer died first, or was refused).
local pending = KEYS[1]
local now_s, now_n = now()
local cutoff = now_n - tonumber(ARGV[1])
for i = 2, #ARGV do
  local raw = redis.call('HGET', pending, ARGV[i])
  if raw then
    local keep = {}
    for _, tok in ipairs(cjson.decode(raw)) do
      if tok[2] >= cutoff then keep[#keep + 1] = tok end
    end
    if #keep == 0 then
      redis.call('HDEL', pending, ARGV[i])
    else
      redis.call('HSET', pending, ARGV[i], cjson.encode(keep))
    end
  end
end
return 'ok'
""",
)

__all__ = [
    "APPEND",
    "CREATE",
    "DELETE",
    "EXPIRE_INTENTS",
    "INDEX",
    "INTENT",
    "PRUNE_ONE",
    "UNINDEX",
    "Script",
]
