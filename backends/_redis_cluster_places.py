"""Queue places: ``max_running`` enforced atomically on Redis Cluster.

On a cluster a run's keys live in the slot of its own hash tag, so no script
can count a queue's live leases and take one more in one atomic step (the
leases are in as many slots as runs). Instead every lease holds a **place** in
its queue, and the places of all queues live in one slot, ``{idx}``, beside the
listing indexes (layout in `durable_agent.backends._redis_cluster_place_scripts`):
a ZSET per queue, one member per run, scored by the place's expiry by that
node's clock. Counting a queue's live places and taking one more *is* one
script there.

The protocol, for every lease on a cluster (claimed by a worker, acquired by
`continue_run_async`, created with a run by `do_async`):

1. **Take a place first** (the index slot): expired places are dropped; a run
   that already holds a live place keeps that one place (re-taking it never
   counts twice, so a takeover needs no room); otherwise a claim with a cap is
   refused when the queue holds ``cap`` live places. The place is taken for the
   lease generation about to be granted, with a random token, and expires at
   the node's ``TIME`` + `horizon` (``ttl + max(2 ttl, 30 s)``).
2. **Then acquire the lease** (the run's slot) with the generation check: only
   if the run is still at the generation the place was taken for. The lease's
   expiry is capped at ``place_until``, stored on the header: the place's
   expiry less `SKEW`. If the acquisition is refused, the take is undone by its
   token (the entry it replaced, if any, comes back).
3. **Extend lazily.** Every append and renewal renews the lease to ``now + ttl``
   but never past ``place_until``, so appends stay one round trip. When less
   than ``ttl + max(ttl, 15 s)`` of place is left the script says so, and the
   writer extends the place (one call to the index slot, then one to record the
   new ``place_until``): about once every ``max(ttl, 15 s)`` per running run. A
   write (other than a release) whose place has lapsed is refused before it
   writes; the writer extends the place if it is still live, else it gets
   `LeaseLostError`.
4. **Drop on release or rest**: a release (or a write that releases) that gave
   up a lease of generation G drops the place if it was taken for G, so a newer
   take is never dropped by an older holder. A write that brings the run to
   rest while keeping its lease drops it too (a run at rest holds no place, as
   on every store: `holds_place`), and its lease is no longer capped by it; a
   write that takes the run out of rest under that lease takes a place (no cap)
   before it writes.

A run created with its lease takes its place in the script that announces the
create (`INTENT_TAKE`), and a write that releases as it comes to rest drops it
in the script of its index update (`INDEX_DROP`): the life of a ``do_async``
run costs no round trip more than before places.

**Invariant.** A lease granted in step 2 expires no later than ``place_until``,
and renewals never move it past ``place_until``, which is only raised after the
place itself was extended. So while a run holds a live lease its place is live
(place expiry >= lease expiry), and a queue's live leases never exceed its
live places, which a capped claim never lets pass ``cap``. It assumes the
masters' clocks agree within `SKEW` (a place is timed by the index slot's node,
a lease by its run's node). A crash between steps 1 and 2 only holds a place
until it expires: the cap is then under-used, never exceeded.

**What counts.** Every lease a process of this version holds, in every queue,
as on the other stores; but a place outlives its lease: a run whose lease
expired keeps its place until its place expires or the run is taken over (the
takeover re-takes the same place, so it needs no room; and since a capped
queue is full until then, expired runs are what a full queue's claims take).
Leases granted by processes of an older version hold no place and are not
counted until their run is next acquired.

**Why one slot for every queue.** A claim takes its candidates' places, across
queues and in claim order, in one script, and gives back the refused ones in
one more; a slot per queue would mean a script per queue per claim, and a
capped claim checking several queues could not do it in one step. The
``{idx}`` slot already takes a few writes per run's life (create, rest); places
add one per lease change and one per extension. A fleet whose lease changes
outgrow one master would shard places by queue hash tag, at that price.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from durable_agent.backend import (
    ClaimedRun,
    LeaseOwner,
    claim_order,
    claimable,
    scan_not_at_rest,
)
from durable_agent.backends import _redis_cluster_place_scripts as pl
from durable_agent.backends import _redis_records as rec
from durable_agent.backends import _redis_writes as writes
from durable_agent.errors import ConcurrentUpdateError, LeaseLostError, StoreUnavailableError
from durable_agent.records import Lease, RunHeader

if TYPE_CHECKING:
    from durable_agent.backends.redis import RedisBackend

SKEW: Final = 1.0
"""Seconds by which the masters' clocks may disagree: a lease ends this much before its place.

A fixed allowance, not a share of the lease TTL: it covers how far two masters'
clocks drift apart (NTP keeps them within milliseconds), which no setting of the
backend changes, and a short TTL does not shrink. Every place outlives its lease
by at least 30 s of ``horizon`` anyway, so it costs nothing. Clocks further apart
than this can only let a queue pass its cap near the end of a lapsed place; the
one-writer rule never depends on it (the fence is the generation check in the
run's own slot).
"""
CLAIM_WINDOW: Final = 10.0
"""Seconds a place just taken by a claim keeps other claims of the same lease away, at most.

See `claim_window`, which bounds it by the claim's lease TTL.
"""
_SCAN: Final = 64
_ATTEMPTS: Final = 8


def horizon(ttl: float) -> float:
    """Seconds a place is taken (or extended) for, for a lease of ``ttl`` seconds."""
    return ttl + max(2 * ttl, 30.0)


def extend_below(ttl: float) -> float:
    """Seconds of place left below which a write asks for the place to be extended."""
    return ttl + max(ttl, 15.0)


def claim_window(ttl: float) -> float:
    """Seconds a place taken for one lease generation counts as a claim in flight.

    A claim takes places first and acquires the leases right after (one round
    trip later); meanwhile another claim of the same generation is told the run
    is ``taken`` instead of racing for it. Only a claimer that died between its
    two calls is waited out for the whole window, so it is short (`CLAIM_WINDOW`)
    and never longer than the lease TTL of the claim: a claimer that died keeps a
    run from the others no longer than a dead holder of its lease would. Safety
    never depends on it: two claims of one generation are decided by the
    generation check, and the loser gives back only its own take (by token).
    """
    return min(CLAIM_WINDOW, ttl)


def _place_until(expiry: Any) -> str:
    return f"{float(rec.text(expiry)) - SKEW:.6f}"


def _key(backend: RedisBackend, queue: str) -> str:
    return f"{backend.prefix}{{idx}}:place:{queue}"


async def _places(
    backend: RedisBackend, ops: Sequence[Sequence[str]], *, limit: int = -1, window: float = 0.0
) -> list[Any]:
    """Run `PLACES` once: ``ops`` of (kind, queue, run, generation, token, horizon, cap).

    ``window``: the claims' `claim_window` (only claim operations read it).
    """
    base = f"{backend.prefix}{{idx}}:"
    args = [base, str(limit), repr(window)]
    for op in ops:
        args.extend(op)
    reply = await backend._eval(pl.PLACES, [_key(backend, ops[0][1])], args)
    return list(reply)


def _op(kind: str, queue: str, run_id: str, gen: int = 0, token: str = "",
        ttl: float = 0.0, cap: int | None = None) -> list[str]:
    span = repr(horizon(ttl)) if ttl else "0"
    return [kind, queue, run_id, str(gen), token, span, "" if cap is None else str(cap)]


async def take(backend: RedisBackend, queue: str, run_id: str, gen: int, ttl: float) -> tuple[
    str, str
] | None:
    """Take a place (no cap) for ``gen``: (place_until, token), or None if a newer one holds it."""
    token = secrets.token_hex(8)
    (reply,) = await _places(backend, [_op("t", queue, run_id, gen, token, ttl)])
    if rec.text(reply[0]) != "ok":
        return None
    return _place_until(reply[1]), token


async def undo(backend: RedisBackend, queue: str, run_id: str, token: str) -> None:
    """Undo a take whose acquisition was refused (best effort: a leftover only expires)."""
    with contextlib.suppress(StoreUnavailableError):
        await _places(backend, [_op("r", queue, run_id, token=token)])


async def drop(backend: RedisBackend, queue: str, run_id: str, gen: int) -> None:
    """Drop the place of a released lease of ``gen``, after the release landed.

    A failure is not the release's: the place then expires by itself.
    """
    with contextlib.suppress(StoreUnavailableError):
        await _places(backend, [_op("d", queue, run_id, gen)])


async def extend(backend: RedisBackend, queue: str, run_id: str, ttl: float) -> str | None:
    """Extend a live place; the new place_until, or None if the place lapsed."""
    (reply,) = await _places(backend, [_op("x", queue, run_id, ttl=ttl)])
    if rec.text(reply[0]) != "ok":
        return None
    return _place_until(reply[1])


async def extend_soon(backend: RedisBackend, run_id: str, lease: Lease, queue: str) -> None:
    """A write asked for more place: extend it and record it on the header (best effort)."""
    try:
        until = await extend(backend, queue, run_id, lease.ttl)
        if until is not None:
            header = backend._keys(run_id)[0]
            await backend._eval(pl.SET_PLACE, [header], [str(lease.generation), until])
    except StoreUnavailableError:
        pass  # asked again by the next write, while some place is left


async def lapsed(backend: RedisBackend, run_id: str, lease: Lease, queue: str) -> str:
    """A write found its place lapsed: the extended place_until, or `LeaseLostError`."""
    until = await extend(backend, queue, run_id, lease.ttl)
    if until is None:
        raise LeaseLostError(
            run_id,
            f"lease generation {lease.generation} of {lease.owner} outlived its place in "
            f"queue {queue!r} (its lease expired and its place was given up); this writer "
            "must stop",
        )
    return until


# -- leases ----------------------------------------------------------------------------------


async def acquire(
    backend: RedisBackend, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None
) -> Lease:
    """`RedisBackend.acquire_lease` on a cluster: read the generation, take a place, acquire."""
    header = backend._keys(run_id)[0]
    chosen = "" if takeover is None else str(takeover)
    for _ in range(_ATTEMPTS):
        raw = await backend._conn.header_hash(run_id, header)
        if not raw:
            # Let the script say what is wrong (missing, or a key of another type).
            reply = await backend._eval(pl.ACQUIRE, [header], ["", "", "0", "1", "", "", "0"])
            rec.status(run_id, reply)
            raise ConcurrentUpdateError(run_id, "the run changed while its lease was acquired")
        seen = rec.header_from_hash(run_id, raw)
        placed = await take(backend, seen.queue, run_id, seen.lease_generation + 1, ttl)
        if placed is None:
            continue  # a newer generation took the place first: read again
        until, token = placed
        args = [owner.id, owner.host, str(owner.pid), repr(float(ttl)), chosen,
                str(seen.lease_generation), until]
        reply = await backend._eval(pl.ACQUIRE, [header], args)
        status = rec.status(run_id, reply)
        if status == "ok":
            return writes.granted(owner, ttl, reply)
        await undo(backend, seen.queue, run_id, token)
        if status == "busy":
            writes.refuse_acquire(run_id, reply, owner, ttl=ttl, takeover=takeover)
    raise ConcurrentUpdateError(
        run_id, f"its lease changed hands {_ATTEMPTS} times while it was acquired; try again"
    )


async def renew(backend: RedisBackend, run_id: str, lease: Lease) -> Lease:
    """`RedisBackend.renew_lease` on a cluster: renewed up to its place, extended when asked."""
    header = backend._keys(run_id)[0]
    args = [str(lease.generation), *rec.lease_args(lease), repr(extend_below(lease.ttl)), ""]
    reply = await backend._eval(pl.RENEW, [header], args)
    status = rec.status(run_id, reply)
    if status == "lapsed":
        args[-1] = await lapsed(backend, run_id, lease, rec.text(reply[1]))
        reply = await backend._eval(pl.RENEW, [header], args)
        status = rec.status(run_id, reply)
    if status == "lost":
        raise LeaseLostError(run_id, f"lease generation {lease.generation} was taken over")
    if status == "lapsed":  # pragma: no cover - the place was extended just before
        raise LeaseLostError(run_id, f"lease generation {lease.generation} lost its place")
    if status == "ox":
        await extend_soon(backend, run_id, lease, rec.text(reply[3]))
    return rec.extended(lease, reply)


async def release(backend: RedisBackend, run_id: str, lease: Lease) -> None:
    """`RedisBackend.release_lease` on a cluster: the release, then its place dropped."""
    reply = await backend._eval(pl.RELEASE, backend._keys(run_id)[:1], [str(lease.generation)])
    rec.status(run_id, reply)
    if reply[1]:
        await drop(backend, rec.text(reply[1]), run_id, lease.generation)


async def intent_and_take(
    backend: RedisBackend, header: RunHeader, lease: Lease
) -> tuple[str, tuple[str, str]]:
    """The create's intent and its lease's place, in one script: (incarnation, (until, token)).

    A place held for a newer generation (a run of this id deleted while leased)
    gives ``("0", "")``: the lease is created expired, and its first write
    extends that place or is refused.
    """
    ix = backend._indexes
    assert ix is not None
    token = secrets.token_hex(8)
    args = [header.run_id, str(header.seq), "1", ix.base, header.queue,
            str(header.lease_generation), token, repr(horizon(lease.ttl))]
    reply = await backend._eval(pl.INTENT_TAKE, [ix.pending, ix.counter], args)
    if rec.text(reply[1]) != "ok":
        return rec.text(reply[0]), ("0", "")
    return rec.text(reply[0]), (_place_until(reply[2]), token)


# -- claims ----------------------------------------------------------------------------------


async def claim(
    backend: RedisBackend,
    owner: LeaseOwner,
    *,
    agents: Collection[str],
    queues: Collection[str] | None,
    limit: int,
    ttl: float,
    max_running: Mapping[str, int] | None,
    dead_owners: Collection[str],
) -> list[ClaimedRun]:
    """Claim on a cluster: list the runs not at rest, take places, then acquire each.

    The places are taken in claim order by one script (so the caps hold), up to
    ``limit``; each placed run is then acquired with the generation it was
    listed at, and a refused one gives its place back.
    """
    headers, dead = await scan_not_at_rest(backend, owner, dead_owners)
    now = time.time()
    candidates = sorted(
        (h for h in headers if claimable(h, agents=agents, queues=queues, now=now,
                                         dead_owners=dead)),
        key=claim_order,
    )
    caps = dict(max_running or {})
    token = secrets.token_hex(8)
    granted: list[ClaimedRun] = []
    start = 0
    while start < len(candidates) and len(granted) < limit:
        wanted = limit - len(granted)
        chunk = candidates[start : start + wanted + _SCAN]
        start += len(chunk)
        ops = [
            _op("c", h.queue, h.run_id, h.lease_generation + 1, token, ttl, caps.get(h.queue))
            for h in chunk
        ]
        replies = await _places(backend, ops, limit=wanted, window=claim_window(ttl))
        placed = [
            (h, _place_until(reply[1]))
            for h, reply in zip(chunk, replies, strict=True)
            if rec.text(reply[0]) == "ok"
        ]
        results = await asyncio.gather(
            *(_claim_one(backend, owner, h, until, ttl, dead) for h, until in placed),
            return_exceptions=True,
        )
        refused = [h for (h, _), got in zip(placed, results, strict=True) if got is None]
        if refused:  # best effort, as `undo`: the grants below must reach the caller
            with contextlib.suppress(StoreUnavailableError):
                await _places(backend, [_op("r", h.queue, h.run_id, token=token) for h in refused])
        failures = [got for got in results if isinstance(got, BaseException)]
        granted.extend(got for got in results if isinstance(got, ClaimedRun))
        if failures and not granted:
            raise failures[0]  # the places of unknown outcome expire by themselves
        if failures:
            break
    return granted


async def _claim_one(
    backend: RedisBackend,
    owner: LeaseOwner,
    seen: RunHeader,
    until: str,
    ttl: float,
    dead: Collection[str],
) -> ClaimedRun | None:
    held = seen.lease
    gone = held.owner if held is not None and held.owner in dead else ""
    args = [owner.id, owner.host, str(owner.pid), repr(float(ttl)), str(seen.lease_generation),
            gone, seen.queue, seen.agent_name, until]
    reply = await backend._eval(pl.CLAIM_ONE, backend._keys(seen.run_id)[:1], args)
    if rec.text(reply[0]) != "ok":
        return None
    return rec.claimed(seen.run_id, reply, ttl)
