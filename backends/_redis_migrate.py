"""`RedisBackend.migrate`: every run's older records rewritten at this version, one script per run.

The key layout (`durable_agent.backends._redis_scripts`) is unchanged in this
release, so only records move: for each run the listing finds, the events of
an older ``schema_version`` are re-encoded as reading them gives them
(`decode_event` upcasts, `encode_event` writes the current form) and written
back by one script, atomically: each element is replaced only if it still
holds the text that was read (an event is never changed once written, so a
mismatch means the run was deleted or replaced meanwhile, and is left alone),
and the header's ``schema_version`` is raised with it. Appends meanwhile only
add elements after the ones rewritten. A process killed at any point leaves
each run either migrated or not, both of which read the same; running it
again finishes the job. A run's two keys share its hash tag, so this works on
Redis Cluster too.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from durable_agent.backend import Backend, MigrationReport
from durable_agent.backends._redis_scripts import Script, _script
from durable_agent.errors import CorruptRunError, RunNotFoundError
from durable_agent.records import SCHEMA_VERSION, decode_event, encode_event

REWRITE: Final[Script] = _script(
    "migrate_run",
    """
-- KEYS: header, events. ARGV: version, then index, old text, new text, ...
local h, ev = KEYS[1], KEYS[2]
if kind(h) ~= 'hash' or kind(ev) ~= 'list' then return {'missing'} end
local done = 0
for i = 2, #ARGV, 3 do
  local at = tonumber(ARGV[i])
  if redis.call('LINDEX', ev, at) == ARGV[i + 1] then
    redis.call('LSET', ev, at, ARGV[i + 2])
    done = done + 1
  end
end
local v = tonumber(redis.call('HGET', h, 'schema_version') or '1')
if v < tonumber(ARGV[1]) then redis.call('HSET', h, 'schema_version', ARGV[1]) end
return {'ok', done}
""",
)

Eval = Callable[[Script, Sequence[str], Sequence[Any]], Awaitable[Any]]


async def migrate(
    backend: Backend, keys: Callable[[str], list[str]], run: Eval, load: Script, dry_run: bool
) -> MigrationReport:
    """Rewrite every listed run's older records (see the module docstring)."""
    steps: list[str] = []
    checked = rewritten = 0
    cursor: str | None = None
    while True:
        page = await backend.list_runs(limit=500, cursor=cursor)
        for header in page.runs:
            checked += 1
            run_id = header.run_id
            reply = await run(load, keys(run_id), [])
            if reply[0] not in ("ok", b"ok"):
                continue  # deleted since it was listed
            changes = _changes(run_id, reply[2], steps)
            if changes is None or (not changes and header.schema_version >= SCHEMA_VERSION):
                continue
            rewritten += 1
            if dry_run:
                steps.append(f"rewrite run {run_id!r} at record schema {SCHEMA_VERSION}")
                continue
            args: list[Any] = [SCHEMA_VERSION]
            for index, old, new in changes:
                args += [index, old, new]
            await run(REWRITE, keys(run_id), args)
            steps.append(
                f"rewrote {len(changes)} record(s) of run {run_id!r} at schema {SCHEMA_VERSION}"
            )
        for unreadable in page.unreadable:
            steps.append(f"left run {unreadable.run_id!r} as it is: {unreadable.message}")
        cursor = page.next_cursor
        if cursor is None:
            break
    if not steps:
        steps.append(f"nothing to do: every record at schema {SCHEMA_VERSION}")
    return MigrationReport(
        store=repr(backend), layout_before=None, layout_after=None, runs_checked=checked,
        runs_rewritten=rewritten, steps=tuple(steps), dry_run=dry_run,
    )


def _changes(
    run_id: str, raw_events: Sequence[Any], steps: list[str]
) -> list[tuple[int, str, str]] | None:
    """(index, old text, new text) of each older event; None when the run does not decode."""
    changes = []
    try:
        for index, raw in enumerate(raw_events):
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            version = json.loads(text).get("schema_version", 1)
            if isinstance(version, int) and version < SCHEMA_VERSION:
                event = decode_event(run_id, index + 1, text)
                changes.append((index, text, encode_event(event)))
    except (CorruptRunError, RunNotFoundError, ValueError) as exc:
        steps.append(f"left run {run_id!r} as it is: {exc}")
        return None
    return changes
