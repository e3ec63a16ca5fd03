"""The Lua scripts of `RedisBackend`: every write is one script, so one atomic round trip.

Layout (``p`` is the backend's prefix, ``{id}`` the run id as a hash tag)::

    p{id}:header          HASH  the header, one field per RunHeader field (lease_* apart)
    p{id}:events          LIST  one element per event, records.encode_event text, seq = index + 1
    p idx:created         ZSET  run ids scored by created_at (seconds)
    p idx:state:<STATE>   ZSET  the runs in each state
    p idx:session:<id>    ZSET  the runs of each session
    p idx:user:<id>       ZSET  the runs of each user

Times are ``"<seconds>.<microseconds>"`` decimal strings, exact both ways.
Leases are timed by the Redis server's clock (``TIME``), one clock for every
worker host. Each script checks key types before its first write, so a key of
the wrong type fails the call with nothing written (a Lua error after a write
would leave that write in place).

On Redis Cluster the indexes cannot share a script with a run's keys (other
slots): `durable_agent.backends._redis_cluster_scripts` has the twins of
CREATE, APPEND, DELETE and PRUNE_ONE without them, and the scripts that keep
the indexes there; `durable_agent.backends._redis_cluster_place_scripts` has
the lease scripts' twins (a lease there holds a queue place); CANCEL and LOAD
serve both.

Replies: a table whose first element is a status string. ``refused`` and
``busy`` carry the run's whole header hash, read in the same atomic step, so
the Python side explains the refusal with the shared rules of
`durable_agent.backend` (`check_append`, `check_lease_acquire`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

_PRELUDE: Final = """
local function kind(key) return redis.call('TYPE', key)['ok'] end
local function now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2])),
         tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local LEASE = {'lease_owner', 'lease_host', 'lease_pid', 'lease_expires', 'lease_ttl'}
local function final(state) return state == 'DONE' or state == 'CANCELLED' end
local function prefix_of(h) return string.match(h, '^([^{]*)') end
local function push(key, first)
  -- RPUSH ARGV[first..] in slices: unpack() of thousands of values overflows Lua's stack.
  for i = first, #ARGV, 500 do
    redis.call('RPUSH', key, unpack(ARGV, i, math.min(i + 499, #ARGV)))
  end
end
local function append_log(ev, first, seq)
  -- RPUSH ARGV[first..] to a log that must hold `seq` events, with RPUSH's reply as
  -- the length check (one command, not LLEN before it). A log of another type fails
  -- the RPUSH, and a log of the wrong length is trimmed back: nothing is left
  -- written, and the script is atomic, so nobody saw the events in between.
  -- Returns the refusal, or nil once written.
  local n = #ARGV - first + 1
  if n < 1 then
    local ok, stored = pcall(redis.call, 'LLEN', ev)
    if not ok then return {'wrongtype', 'events', kind(ev)} end
    if stored ~= tonumber(seq) then return {'corrupt', tostring(stored), seq} end
    return nil
  end
  local last = math.min(first + 499, #ARGV)
  local ok, len = pcall(redis.call, 'RPUSH', ev, unpack(ARGV, first, last))
  if not ok then return {'wrongtype', 'events', kind(ev)} end
  local stored = len - (last - first + 1)
  if stored ~= tonumber(seq) then
    if stored == 0 then redis.call('DEL', ev) else redis.call('LTRIM', ev, 0, stored - 1) end
    return {'corrupt', tostring(stored), seq}
  end
  push(ev, last + 1)
  return nil
end
"""

_INDEX: Final = """
-- The claim indexes (single Redis only: `durable_agent.backends._redis_claims`). The
-- header's 'ix' names the one index the run is in, 'ixo' its lease owner's set;
-- 'claim:owners' lists the owners holding any lease.
local ACTIVE = {PENDING = true, MODEL_CALL = true, TOOL_EXEC = true}
local function pad(created) return string.rep('0', 17 - #created) .. created end
local function unindex(p, id, ix, ixo, created)
  if ix then
    if string.sub(ix, #p + 1, #p + 12) == 'claim:ready:' then
      redis.call('ZREM', ix, pad(created) .. '|' .. id)
    else
      redis.call('ZREM', ix, id)
    end
  end
  if ixo then
    redis.call('SREM', ixo, id)
    if redis.call('SCARD', ixo) == 0 then
      redis.call('SREM', p .. 'claim:owners', string.sub(ixo, #p + 13))
    end
  end
end
local function reindex(h, p, now_n)
  -- Put the run in the one claim index its header calls for: leased (scored by
  -- lease expiry), later (by not_before) or ready (by -priority, then created_at).
  local f = redis.call('HMGET', h, 'run_id', 'state', 'queue', 'agent_name', 'priority',
                       'created_at', 'not_before', 'lease_owner', 'lease_expires', 'ix', 'ixo')
  local id = f[1]
  if not id then return end
  unindex(p, id, f[10], f[11], f[6] or '')
  if not ACTIVE[f[2]] then
    redis.call('HDEL', h, 'ix', 'ixo')
    return
  end
  local q, agent = f[3] or 'default', f[4] or ''
  local slot = q .. '\\31' .. agent
  redis.call('SADD', p .. 'claim:queues', q)
  redis.call('SADD', p .. 'claim:agents:' .. q, agent)
  local ix
  if f[8] then
    ix = p .. 'claim:leased:' .. slot
    local ixo = p .. 'claim:owner:' .. f[8]
    redis.call('ZADD', ix, tonumber(f[9]) or 0, id)
    redis.call('SADD', ixo, id)
    redis.call('SADD', p .. 'claim:owners', f[8])
    redis.call('HSET', h, 'ix', ix, 'ixo', ixo)
    return
  end
  local nb = tonumber(f[7] or '')
  if nb and nb > now_n then
    ix = p .. 'claim:later:' .. slot
    redis.call('ZADD', ix, nb, id)
  else
    ix = p .. 'claim:ready:' .. slot
    redis.call('ZADD', ix, -(tonumber(f[5] or '0') or 0), pad(f[6] or '') .. '|' .. id)
  end
  redis.call('HSET', h, 'ix', ix)
  redis.call('HDEL', h, 'ixo')
end
"""


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1, for EVALSHA with a fallback to loading it."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


def _script(name: str, body: str, *, index: bool = True) -> Script:
    """A script: the prelude, the claim index helpers unless ``index`` is False, then ``body``.

    Lua makes every helper anew on each call (~0.6 us for the claim index's); a
    script that uses them on a rare branch only (APPEND) or never (Cluster's)
    leaves them out, or defines them in that branch.
    """
    return Script(name, _PRELUDE + (_INDEX if index else "") + body)


def control(count: int) -> str:
    """Lua: ``CONTROL``, the pattern that takes ``count`` packed fields apart in one match.

    Each field is followed by \\31; one ``string.match`` costs less than a
    ``gmatch`` loop building the table.
    """
    return "local CONTROL = '^" + "([^\\31]*)\\31" * count + "$'\n"


CREATE: Final = _script(
    "create",
    """
-- KEYS: header, events. ARGV: prefix, retention_ms, #fieldargs, field, value, ..., events...
local h, ev, prefix = KEYS[1], KEYS[2], ARGV[1]
if redis.call('EXISTS', h) == 1 then return {'exists'} end
local n = tonumber(ARGV[3])
local f = {}
for i = 4, 3 + n, 2 do f[ARGV[i]] = ARGV[i + 1] end
redis.call('DEL', ev)  -- a log without a header is nobody's
redis.call('HSET', h, unpack(ARGV, 4, 3 + n))
push(ev, 4 + n)
local id, score = f['run_id'], f['created_at']
redis.call('ZADD', prefix .. 'idx:created', score, id)
redis.call('ZADD', prefix .. 'idx:state:' .. f['state'], score, id)
local session, user = f['session_id'], f['user_id']
if session then redis.call('ZADD', prefix .. 'idx:session:' .. session, score, id) end
if user then redis.call('ZADD', prefix .. 'idx:user:' .. user, score, id) end
local keep = tonumber(ARGV[2])
if keep > 0 and final(f['state']) then
  redis.call('PEXPIRE', h, keep)
  redis.call('PEXPIRE', ev, keep)
end
local now_s, now_n = now()
reindex(h, prefix, now_n)
return {'ok'}
""",
)

APPEND: Final = _script(
    "append",
    control(8)
    + """
-- KEYS: header, events. ARGV[1]: retention_ms, generation, owner, ttl, expected_seq,
-- new_seq, new_state ('' = unchanged), release ('1'), each followed by \\31 (packed:
-- redis-py encodes every argument apart, ~1 us each, on the hot path; one
-- string.match takes them apart, cheaper than a gmatch loop). ARGV[2..]: events.
-- Five commands: HMGET and RPUSH double as the type checks (a key of another type
-- fails them, before anything is written), RPUSH's reply as the log's length check.
local h, ev = KEYS[1], KEYS[2]
local prefix = string.match(h, '^([^{]*)')
local a = {string.match(ARGV[1], CONTROL)}
local ok, f = pcall(redis.call, 'HMGET', h, 'seq', 'state', 'lease_generation', 'lease_owner',
                    'cancel_requested', 'created_at', 'run_id', 'ix')
if not ok then return {'wrongtype', 'header', kind(h)} end
if not f[7] then return {'missing'} end
if not f[4] or f[3] ~= a[2] or f[4] ~= a[3] or f[1] ~= a[5] then
  return {'refused', redis.call('HGETALL', h)}
end
local refused = append_log(ev, 2, f[1])
if refused then return refused end
local now_s, now_n = now()
local state = f[2]
local to = a[7]
if to == '' then to = state end
local expires = string.format('%.6f', now_n + tonumber(a[4]))
if a[8] == '1' then
  redis.call('HSET', h, 'seq', a[6], 'state', to, 'updated_at', now_s)
  redis.call('HDEL', h, unpack(LEASE))
else
  -- Generation and owner matched, so host and pid are the stored ones already.
  redis.call('HSET', h, 'seq', a[6], 'state', to, 'updated_at', now_s,
             'lease_expires', expires, 'lease_ttl', a[4])
end
if to ~= state then
  redis.call('ZREM', prefix .. 'idx:state:' .. state, f[7])
  redis.call('ZADD', prefix .. 'idx:state:' .. to, f[6], f[7])
  local keep = tonumber(a[1])
  if keep > 0 and final(to) then
    redis.call('PEXPIRE', h, keep)
    redis.call('PEXPIRE', ev, keep)
  end
end
-- The claim index follows the lease: a renewal moves its expiry (one ZADD), a
-- release or a new state may move the run to another index.
if a[8] == '1' or to ~= state then
"""
    + _INDEX
    + """
  reindex(h, prefix, now_n)
elseif f[8] and string.sub(f[8], #prefix + 1, #prefix + 13) == 'claim:leased:' then
  redis.call('ZADD', f[8], expires, f[7])
end
-- One string, not a table: redis-py's pure-Python parser reads each element of
-- an array reply apart (~3 us each).
if f[5] then return 'ok\\31' .. expires .. '\\31' .. f[5] end
return 'ok\\31' .. expires
""",
    index=False,
)

ACQUIRE: Final = _script(
    "acquire",
    """
-- KEYS: header. ARGV: owner, host, pid, ttl, takeover ('' = none), index ('1': single Redis).
local h = KEYS[1]
local t = kind(h)
if t == 'none' then return {'missing'} end
if t ~= 'hash' then return {'wrongtype', 'header', t} end
local f = redis.call('HMGET', h, 'lease_owner', 'lease_expires', 'lease_generation',
                     'cancel_requested')
local now_s, now_n = now()
local generation = tonumber(f[3])
if not generation then return {'corrupt', 'lease_generation', tostring(f[3])} end
-- Busy unless expired, taken over by generation, or held by this very owner
-- (a process may always take back its own lease: check_lease_acquire).
if f[1] and f[1] ~= ARGV[1] and (tonumber(f[2]) or 0) > now_n and ARGV[5] ~= f[3] then
  return {'busy', now_s, redis.call('HGETALL', h)}
end
local gen = string.format('%d', generation + 1)
local expires = string.format('%.6f', now_n + tonumber(ARGV[4]))
redis.call('HSET', h, 'lease_owner', ARGV[1], 'lease_host', ARGV[2], 'lease_pid', ARGV[3],
           'lease_expires', expires, 'lease_ttl', ARGV[4], 'lease_generation', gen)
if ARGV[6] == '1' then reindex(h, prefix_of(h), now_n) end
return {'ok', gen, expires, f[4] or false}
""",
)

RENEW: Final = _script(
    "renew",
    """
-- KEYS: header. ARGV: generation, owner, host, pid, ttl, index ('1': single Redis).
local h = KEYS[1]
local t = kind(h)
if t == 'none' then return {'missing'} end
if t ~= 'hash' then return {'wrongtype', 'header', t} end
local f = redis.call('HMGET', h, 'lease_owner', 'lease_generation', 'cancel_requested')
if not f[1] or f[2] ~= ARGV[1] then return {'lost'} end
local now_s, now_n = now()
local expires = string.format('%.6f', now_n + tonumber(ARGV[5]))
redis.call('HSET', h, 'lease_owner', ARGV[2], 'lease_host', ARGV[3], 'lease_pid', ARGV[4],
           'lease_expires', expires, 'lease_ttl', ARGV[5])
if ARGV[6] == '1' then reindex(h, prefix_of(h), now_n) end
return {'ok', expires, f[3] or false}
""",
)

RELEASE: Final = _script(
    "release",
    """
-- KEYS: header. ARGV: generation, index ('1': single Redis).
local h = KEYS[1]
local t = kind(h)
if t == 'none' then return {'ok'} end
if t ~= 'hash' then return {'wrongtype', 'header', t} end
local f = redis.call('HMGET', h, 'lease_owner', 'lease_generation')
if f[1] and f[2] == ARGV[1] then
  redis.call('HDEL', h, unpack(LEASE))
  if ARGV[2] == '1' then
    local now_s, now_n = now()
    reindex(h, prefix_of(h), now_n)
  end
end
return {'ok'}
""",
)

CANCEL: Final = _script(
    "cancel",
    """
-- KEYS: header. ARGV: reason.
local h = KEYS[1]
local t = kind(h)
if t == 'none' then return {'missing'} end
if t ~= 'hash' then return {'wrongtype', 'header', t} end
redis.call('HSETNX', h, 'cancel_requested', ARGV[1])
return {'ok', redis.call('HGETALL', h)}
""",
)

_DELETE_BODY: Final = """
-- Deletes a run's keys and index entries. A header past reading does not name
-- its indexes: then the state indexes ARGV[sweep..] are swept (session and user
-- entries are dropped by the next listing that meets them).
local function delete(h, ev, prefix, id, sweep)
  if kind(h) == 'hash' then
    local f = redis.call('HMGET', h, 'state', 'session_id', 'user_id', 'ix', 'ixo', 'created_at')
    if f[1] then redis.call('ZREM', prefix .. 'idx:state:' .. f[1], id) end
    if f[2] then redis.call('ZREM', prefix .. 'idx:session:' .. f[2], id) end
    if f[3] then redis.call('ZREM', prefix .. 'idx:user:' .. f[3], id) end
    unindex(prefix, id, f[4], f[5], f[6] or '')
  elseif sweep then
    for i = sweep, #ARGV do redis.call('ZREM', prefix .. 'idx:state:' .. ARGV[i], id) end
  end
  redis.call('ZREM', prefix .. 'idx:created', id)
  return redis.call('DEL', h, ev)
end
"""

DELETE: Final = _script(
    "delete",
    _DELETE_BODY
    + """
-- KEYS: header, events. ARGV: prefix, run_id, every state.
return delete(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 3)
""",
)

PRUNE_ONE: Final = _script(
    "prune_one",
    _DELETE_BODY
    + """
-- KEYS: header, events. ARGV: prefix, run_id, updated_at as read, states...
-- Deleted only if unchanged since it was read (same updated_at), in one of the
-- states, and its lease is not live.
local h, ev = KEYS[1], KEYS[2]
if kind(h) ~= 'hash' then return 0 end
local f = redis.call('HMGET', h, 'updated_at', 'state', 'lease_owner', 'lease_expires')
if f[1] ~= ARGV[3] then return 0 end
local wanted = false
for i = 4, #ARGV do if ARGV[i] == f[2] then wanted = true end end
if not wanted then return 0 end
local now_s, now_n = now()
if f[3] and (tonumber(f[4]) or 0) > now_n then return 0 end
if delete(h, ev, ARGV[1], ARGV[2], nil) > 0 then return 1 end
return 0
""",
)

LOAD: Final = _script(
    "load",
    """
-- KEYS: header, events. One consistent snapshot of both.
local h, ev = KEYS[1], KEYS[2]
local t = kind(h)
if t == 'none' then return {'missing'} end
if t ~= 'hash' then return {'wrongtype', 'header', t} end
local te = kind(ev)
if te ~= 'list' and te ~= 'none' then return {'wrongtype', 'events', te} end
return {'ok', redis.call('HGETALL', h), redis.call('LRANGE', ev, 0, -1)}
""",
)

FORGET: Final = _script(
    "forget",
    """
-- KEYS: index, header. ARGV: run_id. Drops an index entry whose run expired (retention).
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('ZREM', KEYS[1], ARGV[1]) end
return {'ok'}
""",
)
