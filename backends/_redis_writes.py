"""`RedisBackend`'s writes on one Redis: each one Lua script, one round trip, atomic.

Each script (`durable_agent.backends._redis_scripts`) checks and writes the run
and its listing and claim indexes together, or writes nothing; these functions
pass it the arguments and read its reply back into a `Lease`, a refusal or an
error. `RedisBackend` calls these on a single Redis and
`durable_agent.backends._redis_cluster_writes` on a cluster; it announces the
writes that wake workers itself, after either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

from durable_agent.backend import LeaseOwner, check_append, check_lease_acquire
from durable_agent.backends import _redis_records as rec
from durable_agent.backends import _redis_scripts as lua
from durable_agent.errors import ConcurrentUpdateError, LeaseLostError, RunExistsError
from durable_agent.fsm import RunState
from durable_agent.records import Event, Lease, RunHeader, encode_event

if TYPE_CHECKING:
    from durable_agent.backends.redis import RedisBackend

__all__ = [
    "acquire",
    "append",
    "create",
    "delete",
    "granted",
    "prune",
    "refuse_acquire",
    "release",
    "renew",
]

_STATES: Final = tuple(state.value for state in RunState)


async def create(
    backend: RedisBackend, header: RunHeader, events: Sequence[Event], keys: list[str]
) -> None:
    """`RedisBackend.create_run`: header, events and indexes in one script, unless it exists."""
    fields = rec.header_fields(header)
    args = [backend.prefix, backend._retention_ms, len(fields), *fields]
    args.extend(encode_event(event) for event in events)
    reply = await backend._eval(lua.CREATE, keys, args)
    if rec.text(reply[0]) == "exists":
        raise RunExistsError(header.run_id)


async def append(
    backend: RedisBackend,
    run_id: str,
    keys: list[str],
    events: tuple[Event, ...],
    control: tuple[str, ...],
    lease: Lease,
) -> Lease:
    """`RedisBackend.append`: the compare-and-set and the write in one script.

    ``control`` is the script's packed first argument (`RedisBackend.append`
    builds it; the cluster's append adds its own flags to the same fields). A
    refusal is explained by the shared rule, from the header the script sent back.
    """
    args = ["".join(f"{part}\x1f" for part in control)]
    args.extend(encode_event(event) for event in events)
    reply = await backend._eval(lua.APPEND, keys, args)
    if isinstance(reply, bytes):  # the one-string success reply: ok, expires[, cancel]
        return rec.renewed(lease, reply)
    if rec.status(run_id, reply) == "refused":
        current = rec.header_from_hash(run_id, reply[1])
        check_append(current, events, expected_seq=int(control[4]), lease=lease)
        raise ConcurrentUpdateError(run_id, "the append was refused")  # not reached
    return rec.extended(lease, reply)


async def delete(backend: RedisBackend, run_id: str, keys: list[str]) -> bool:
    """`RedisBackend.delete_run`: the run's keys and its index entries in one script."""
    reply = await backend._eval(lua.DELETE, keys, [backend.prefix, run_id, *_STATES])
    return bool(reply)


async def prune(
    backend: RedisBackend, doomed: Sequence[tuple[str, str]], wanted: Sequence[str]
) -> int:
    """`RedisBackend.prune`: one script per run, which deletes it only if still unchanged."""
    removed = 0
    for run_id, updated in doomed:
        args = [backend.prefix, run_id, updated, *wanted]
        removed += int(await backend._eval(lua.PRUNE_ONE, backend._keys(run_id), args))
    return removed


async def acquire(
    backend: RedisBackend, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None
) -> Lease:
    """`RedisBackend.acquire_lease`: the generation bump, checked and granted in one script."""
    chosen = "" if takeover is None else str(takeover)
    args = [owner.id, owner.host, str(owner.pid), repr(float(ttl)), chosen, backend._index_flag]
    reply = await backend._eval(lua.ACQUIRE, backend._keys(run_id)[:1], args)
    if rec.status(run_id, reply) == "busy":
        refuse_acquire(run_id, reply, owner, ttl=ttl, takeover=takeover)
    return granted(owner, ttl, reply)


def granted(owner: LeaseOwner, ttl: float, reply: Any) -> Lease:
    """The lease an acquire script granted: ``[ok, generation, expires, cancel]``."""
    return Lease(
        owner=owner.id,
        host=owner.host,
        pid=owner.pid,
        generation=int(rec.text(reply[1])),
        expires_at=float(rec.text(reply[2])),
        ttl=float(ttl),
        cancel_requested=rec.optional(reply[3]),
    )


def refuse_acquire(
    run_id: str, reply: Any, owner: LeaseOwner, *, ttl: float, takeover: int | None
) -> NoReturn:
    """Why an acquire script said ``[busy, now, header]``: the shared rule decides, on its clock."""
    header = rec.header_from_hash(run_id, reply[2])
    now = float(rec.text(reply[1]))
    check_lease_acquire(header, owner, ttl=ttl, takeover=takeover, now=now)
    raise ConcurrentUpdateError(run_id, "the lease was refused")  # not reached


async def renew(backend: RedisBackend, run_id: str, lease: Lease) -> Lease:
    """`RedisBackend.renew_lease`: extended only while this generation still holds it."""
    args = [str(lease.generation), *rec.lease_args(lease), backend._index_flag]
    reply = await backend._eval(lua.RENEW, backend._keys(run_id)[:1], args)
    if rec.status(run_id, reply) == "lost":
        raise LeaseLostError(run_id, f"lease generation {lease.generation} was taken over")
    return rec.extended(lease, reply)


async def release(backend: RedisBackend, run_id: str, lease: Lease) -> None:
    """`RedisBackend.release_lease`: a no-op once another generation holds the run."""
    args = [str(lease.generation), backend._index_flag]
    rec.status(run_id, await backend._eval(lua.RELEASE, backend._keys(run_id)[:1], args))
