"""`RedisBackend`'s part for workers: registrations, the wake-up stream, claims.

Layout, beside the runs' keys (``p`` is the backend's prefix)::

    p{workers}            ZSET    worker owner ids scored by when their registration lapses
    p{changes}            STREAM  one entry per change a waiter cares about (trimmed)

Each is one key, so every script here touches one slot (Redis Cluster-safe).
Registrations and their lapse are timed by the Redis server's clock, as leases
are. A worker renews its registration every second; once it lapses (the worker
died, froze or lost Redis), its leases count as dead: a claim takes them over
with the lease generation as compare-and-set (`RedisBackend.acquire_lease`
with ``takeover``), so of two claimers one wins.

The stream is the wake-up channel: a change is announced *after* its write (on
a cluster it is another slot), so an announcement can be lost with a crash
between the two; waiters wait with a timeout and look at the store again, so a
lost one costs one poll interval, never a run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from redis.asyncio import ResponseError

from durable_agent.backends import _redis_scripts as lua
from durable_agent.backends._redis_link import UNAVAILABLE
from durable_agent.backends._redis_records import text

if TYPE_CHECKING:
    from durable_agent.backends.redis import RedisBackend

__all__ = ["announce_soon", "dead_workers", "flush", "latest", "register", "unregister", "wait"]

_log = logging.getLogger("durable_agent")

_FORGET_AFTER: Final = 86_400
"""Seconds a lapsed registration is kept: its leases are long expired by then."""

_STREAM_LENGTH: Final = 1000
"""Entries the stream keeps (approximately): waiters only need the newest id."""

_LONGEST_BLOCK: Final = 10.0
"""Seconds one XREAD may block; below the client's socket timeout."""

_REGISTER: Final = lua.Script(
    "register_worker",
    """
-- KEYS: workers. ARGV: owner, ttl seconds, forget-after seconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[2])), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now - tonumber(ARGV[3])))
return 1
""",
)

_DEAD: Final = lua.Script(
    "dead_workers",
    """
-- KEYS: workers. Returns the owners whose registration lapsed (server clock).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now))
""",
)


def _keys(backend: RedisBackend) -> tuple[str, str]:
    return f"{backend.prefix}{{workers}}", f"{backend.prefix}{{changes}}"


async def register(backend: RedisBackend, owner: str, ttl: float) -> None:
    """Record or renew ``owner``'s registration for ``ttl`` seconds."""
    workers, _ = _keys(backend)
    await backend._eval(_REGISTER, [workers], [owner, repr(float(ttl)), str(_FORGET_AFTER)])


async def unregister(backend: RedisBackend, owner: str) -> None:
    """Forget ``owner``'s registration."""
    workers, _ = _keys(backend)
    await _call(backend, "zrem", workers, owner)


async def dead_workers(backend: RedisBackend) -> set[str]:
    """The owners whose registration lapsed, by the server's clock."""
    workers, _ = _keys(backend)
    return {text(o) for o in await backend._eval(_DEAD, [workers], [])}


def announce_soon(backend: RedisBackend, what: str) -> None:
    """Add an entry to the wake-up stream, on its own task (after the write it announces).

    The backend keeps the task (the loop holds only a weak reference) until it
    ends; `flush` awaits those in flight before the connections close.
    """
    task = asyncio.ensure_future(_announce(backend, what))
    backend._announcing.add(task)
    task.add_done_callback(backend._announcing.discard)


async def flush(backend: RedisBackend) -> None:
    """Let the announcements in flight on this loop finish (before closing)."""
    loop = asyncio.get_running_loop()
    pending = [t for t in backend._announcing if t.get_loop() is loop]
    if pending:
        await asyncio.wait(pending)


async def _announce(backend: RedisBackend, what: str) -> None:
    _, changes = _keys(backend)
    try:
        await _call(
            backend, "xadd", changes, {"what": what}, maxlen=_STREAM_LENGTH, approximate=True
        )
    except Exception as exc:  # a hint lost: waiters look at the store again on their timeout
        _log.debug("wake-up announcement failed: %s", exc)


async def latest(backend: RedisBackend) -> str:
    """The id of the stream's newest entry ("0-0" when empty)."""
    _, changes = _keys(backend)
    found = await _call(backend, "xrevrange", changes, "+", "-", count=1)
    return text(found[0][0]) if found else "0-0"


async def wait(backend: RedisBackend, after: str, timeout: float) -> str:
    """Block until an entry newer than ``after`` arrives, or ``timeout``; the newest id."""
    _, changes = _keys(backend)
    block = max(1, round(min(timeout, _LONGEST_BLOCK) * 1000))
    found = await _call(backend, "xread", {changes: after}, count=_STREAM_LENGTH, block=block)
    if not found:
        return after
    entries = found[0][1]
    return text(entries[-1][0]) if entries else after


async def _call(backend: RedisBackend, name: str, *args: Any, **options: Any) -> Any:
    link = backend._connect()
    method = getattr(link.client, name)
    try:
        async with link.turn():
            return await method(*args, **options)
    except (*UNAVAILABLE, ResponseError) as exc:
        backend._translate(exc)
