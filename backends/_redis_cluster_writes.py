"""`RedisBackend`'s writes on Redis Cluster: each run script, then the index update after it.

A run's keys share one slot, so the write itself is still one atomic script
(`durable_agent.backends._redis_cluster_scripts`); the listing indexes live in
another slot and are updated right after, with an intent recorded first when
the write moves the run to another index bucket
(`durable_agent.backends._redis_cluster`). `RedisBackend` calls these when it
runs on a cluster, and `durable_agent.backends._redis_writes` on one Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from durable_agent.backend import check_append
from durable_agent.backends import _redis_cluster as clx
from durable_agent.backends import _redis_cluster_places as places
from durable_agent.backends import _redis_cluster_scripts as cl
from durable_agent.backends import _redis_records as rec
from durable_agent.backends._redis_listing import BATCH
from durable_agent.errors import (
    ConcurrentUpdateError,
    LeaseLostError,
    RunExistsError,
    StoreUnavailableError,
)
from durable_agent.records import Event, Lease, RunHeader, encode_event

if TYPE_CHECKING:
    from durable_agent.backends._redis_cluster import ClusterIndexes
    from durable_agent.backends.redis import RedisBackend

__all__ = ["append", "create", "delete", "forget", "prune"]


def _indexes(backend: RedisBackend) -> ClusterIndexes:
    ix = backend._indexes
    assert ix is not None
    return ix


async def create(
    backend: RedisBackend, header: RunHeader, events: Sequence[Event], keys: list[str]
) -> None:
    """`RedisBackend.create_run` on a cluster: the intent, the script, then the indexes."""
    ix = _indexes(backend)
    fields = rec.header_fields(header)
    placed: tuple[str, str] | None = None
    if header.lease is None:
        incarnation = await ix.intent(header.run_id, header.seq, new=True)
    else:  # a lease takes its queue place first, in the intent's script
        incarnation, placed = await places.intent_and_take(backend, header, header.lease)
    until = "" if placed is None else placed[0]
    args = [backend._retention_ms, incarnation, until, len(fields), *fields]
    args.extend(encode_event(event) for event in events)
    reply = await backend._eval(cl.CREATE, keys, args)
    if rec.text(reply[0]) == "exists":
        if placed is not None and placed[1]:
            await places.undo(backend, header.queue, header.run_id, placed[1])
        raise RunExistsError(header.run_id)
    await ix.index([ix.truth(header, incarnation)], after_write=True)


async def append(
    backend: RedisBackend,
    run_id: str,
    keys: list[str],
    events: tuple[Event, ...],
    control: tuple[str, ...],
    lease: Lease,
) -> Lease:
    """`RedisBackend.append` on a cluster: the same script, and the index update after it.

    A write that moves the run to another index bucket (it comes to rest, or
    leaves rest) is announced first. Coming to rest is recognised by the last
    event's state; leaving it only by the script, which then asks for the intent.
    """
    ix = _indexes(backend)
    last = events[-1] if events else None
    announced = last is not None and clx.bucket(last.state) != clx.ACTIVE
    if announced:
        await ix.intent(run_id, int(control[5]))
    encoded = [encode_event(event) for event in events]
    below = repr(places.extend_below(lease.ttl))
    until = ""
    while True:
        flags = ("1" if announced else "0", below, until)
        packed = "".join(f"{part}\x1f" for part in (*control, *flags))
        reply = await backend._eval(cl.APPEND, keys, [packed, *encoded])
        if isinstance(reply, bytes):
            return rec.renewed(lease, reply)
        status = rec.status(run_id, reply)
        if status == "intent" and not announced:
            await ix.intent(run_id, int(control[5]))
            announced = True
            continue
        if status == "lapsed" and not until:
            until = await places.lapsed(backend, run_id, lease, rec.text(reply[1]))
            continue
        if status == "indexed":
            # A released lease's queue place is dropped in the same call.
            drop = (rec.text(reply[9]), run_id, lease.generation) if reply[9] else None
            await ix.index([ix.truth_of_reply(run_id, reply)], after_write=True, drop=drop)
            return rec.extended(lease, reply)
        if status == "released":
            await places.drop(backend, rec.text(reply[3]), run_id, lease.generation)
            return rec.extended(lease, reply)
        if status == "lapsed":
            raise LeaseLostError(run_id, f"lease generation {lease.generation} lost its place")
        if status == "ox":
            await places.extend_soon(backend, run_id, lease, rec.text(reply[3]))
            return rec.extended(lease, reply)
        if status != "refused":
            raise StoreUnavailableError(f"the append script of {run_id!r} answered {status!r}")
        current = rec.header_from_hash(run_id, reply[1])
        check_append(current, events, expected_seq=int(control[4]), lease=lease)
        raise ConcurrentUpdateError(run_id, "the append was refused")  # not reached


async def delete(backend: RedisBackend, run_id: str, keys: list[str]) -> bool:
    """`RedisBackend.delete_run` on a cluster: the script, then its index entries."""
    deleted, incarnation, queue, generation = await backend._eval(cl.DELETE, keys, [])
    if deleted:
        await forget(backend, [(run_id, rec.optional(incarnation))])
        if queue:  # a run deleted while leased gives its place back
            await places.drop(backend, rec.text(queue), run_id, int(rec.text(generation)))
    return bool(deleted)


async def forget(backend: RedisBackend, runs: Sequence[tuple[str, str | None]]) -> None:
    """Remove the index entries of runs just deleted (incarnation if known)."""
    ix = _indexes(backend)
    known = [(run_id, inc, "") for run_id, inc in runs if inc is not None]
    await ix.unindex(known, after_write=True)
    unknown = [(run_id, "") for run_id, inc in runs if inc is None]
    if unknown:  # a damaged header: remove whatever is indexed, then look again
        await ix.mend([], unknown, after_write=True)


async def prune(
    backend: RedisBackend, doomed: Sequence[tuple[str, str]], wanted: Sequence[str]
) -> int:
    """`RedisBackend.prune` on a cluster: one script per run, index entries a batch at a time."""
    removed = 0
    for start in range(0, len(doomed), BATCH):
        pruned: list[tuple[str, str | None]] = []
        for run_id, updated in doomed[start : start + BATCH]:
            reply = await backend._eval(cl.PRUNE_ONE, backend._keys(run_id), [updated, *wanted])
            if int(reply[0]):
                pruned.append((run_id, rec.optional(reply[1])))
        removed += len(pruned)
        await forget(backend, pruned)
    return removed
