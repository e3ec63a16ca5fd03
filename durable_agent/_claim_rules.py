"""Claiming runs for workers: the shared rules and the portable fallback (DESIGN.md §6).

The store is the queue. A worker *claims* a run by acquiring its lease with a
new generation, in the same atomic step that checks the run is claimable:

* its state is not at rest (PENDING, MODEL_CALL or TOOL_EXEC);
* its stored agent name is one the worker knows, its queue one it serves, and
  its ``not_before`` has passed;
* nobody holds a live lease on it: no lease, an expired one (by the store's
  clock), or one whose owner is a registered worker whose registration lapsed
  (the process died, froze or lost the store).

Claiming *is* a lease acquisition, so the generation check that fences every
writer also makes claims exclusive: two workers never both proceed. Native
implementations (`Capability.CLAIM`) decide with `claimable` and order with
`claim_order`, so every store picks the same runs; `portable_claim` is what a
backend without them gets, built on the required methods alone.

`durable_agent.backend` re-exports these names: backends import them from there.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from durable_agent._process import process_alive
from durable_agent.errors import ConfigurationError, RunBusyError, RunNotFoundError
from durable_agent.fsm import RunState
from durable_agent.records import Lease, RunHeader

if TYPE_CHECKING:
    from durable_agent.backend import Backend, LeaseOwner

__all__ = [
    "CLAIMABLE_STATES",
    "ClaimedRun",
    "check_claim_args",
    "check_max_running",
    "claim_lease",
    "claim_order",
    "claimable",
    "holds_place",
    "lease_live",
    "portable_claim",
    "queue_room",
    "scan_not_at_rest",
]

CLAIMABLE_STATES: Final = frozenset({RunState.PENDING, RunState.MODEL_CALL, RunState.TOOL_EXEC})
"""The states a worker may claim a run in: every state that is not at rest."""


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """One run `Backend.claim_runs` granted: its header after the claim and what it took over.

    ``header.lease`` is the new lease (generation + 1), held by the claiming
    owner. ``previous`` is the lease the claim took over: None for a run nobody
    held (submitted, or released by a worker that stopped), else an expired
    lease or one of a dead worker (a *takeover*).
    """

    header: RunHeader
    previous: Lease | None = None

    @property
    def run_id(self) -> str:
        """The claimed run's id."""
        return self.header.run_id

    @property
    def lease(self) -> Lease:
        """The lease the claim acquired."""
        lease = self.header.lease
        if lease is None:  # pragma: no cover - a backend bug, not a state
            raise RuntimeError(f"claimed run {self.header.run_id!r} has no lease")
        return lease

    @property
    def takeover(self) -> bool:
        """Whether the claim took the run from another (expired or dead) holder."""
        return self.previous is not None


def lease_live(lease: Lease | None, *, now: float, dead_owners: Collection[str] = ()) -> bool:
    """Whether ``lease`` still protects its run: held, unexpired, its owner not known dead."""
    return lease is not None and lease.expires_at > now and lease.owner not in dead_owners


def holds_place(header: RunHeader) -> bool:
    """Whether ``header``'s run counts toward its queue's ``max_running``.

    A run not at rest whose lease is held, live or lapsed, counts until the
    lease is released, the run comes to rest, or a claim takes it over (which
    keeps the place, so a takeover needs no room). A lapsed lease must count
    too: its holder may only be frozen or cut off, and it writes on when it
    comes back unless its run was taken over (the fence refuses only a stale
    generation). The cost: a dead holder's run fills its place until a worker
    that knows its agent takes it over.
    """
    return header.state in CLAIMABLE_STATES and header.lease is not None


def claimable(
    header: RunHeader,
    *,
    agents: Collection[str],
    queues: Collection[str] | None,
    now: float,
    dead_owners: Collection[str] = (),
) -> bool:
    """Whether a worker serving ``agents`` and ``queues`` (None: every queue) may claim it."""
    return (
        header.state in CLAIMABLE_STATES
        and header.agent_name in agents
        and (queues is None or header.queue in queues)
        and (header.not_before is None or header.not_before.timestamp() <= now)
        and not lease_live(header.lease, now=now, dead_owners=dead_owners)
    )


def claim_order(header: RunHeader) -> tuple[int, float, str]:
    """Sort key of claimable runs: highest priority first, then oldest first."""
    return (-header.priority, header.created_at.timestamp(), header.run_id)


def claim_lease(header: RunHeader, owner: LeaseOwner, *, ttl: float, now: float) -> Lease:
    """The lease a claim of ``header`` grants ``owner``: the next generation, ``ttl`` seconds."""
    return Lease(
        owner=owner.id,
        host=owner.host,
        pid=owner.pid,
        generation=header.lease_generation + 1,
        expires_at=now + ttl,
        ttl=ttl,
        cancel_requested=header.cancel_requested,
    )


def queue_room(max_running: Mapping[str, int], running: Mapping[str, int]) -> dict[str, int]:
    """How many more runs each limited queue may start, given how many hold a place there now.

    ``running`` counts the runs that `holds_place`; a takeover takes no room.
    """
    return {q: max(0, limit - running.get(q, 0)) for q, limit in max_running.items()}


def check_claim_args(
    agents: Collection[str], limit: int, ttl: float, max_running: Mapping[str, int] | None
) -> None:
    """Refuse arguments no claim can honour (`ConfigurationError`)."""
    if isinstance(agents, str):
        raise ConfigurationError("claim_runs(agents=...) takes a collection of agent names")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigurationError(f"claim_runs(limit={limit!r}) must be an int >= 0")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0:
        raise ConfigurationError(f"claim_runs(ttl={ttl!r}) must be positive seconds")
    check_max_running(max_running, "claim_runs")


def check_max_running(max_running: Mapping[str, int] | None, where: str) -> None:
    """Refuse a queue's cap that is not an int >= 0 (0 claims none of the queue)."""
    for queue, most in (max_running or {}).items():
        if isinstance(most, bool) or not isinstance(most, int) or most < 0:
            raise ConfigurationError(
                f"{where}(max_running={{{queue!r}: {most!r}}}): a queue's cap must be an "
                "int >= 0 (the most runs of it holding a lease at once; 0 claims none)"
            )


# -- the portable fallback -------------------------------------------------------------


async def portable_claim(
    backend: Backend,
    owner: LeaseOwner,
    *,
    agents: Collection[str],
    queues: Collection[str] | None,
    limit: int,
    ttl: float,
    max_running: Mapping[str, int] | None,
    dead_owners: Collection[str] = (),
) -> list[ClaimedRun]:
    """`Backend.claim_runs` from the required methods: list, then acquire one by one.

    Exclusive all the same (each acquisition is the store's compare-and-set on
    the generation), but it reads every run not at rest on each call, and
    ``max_running`` is checked before acquiring, not in the same atomic step, so
    racing workers may overshoot it by up to their number. A lease of a dead
    process on this host is taken over at once, as `Agent.continue_run_async`
    does; other holders count as dead only once their lease expires, or when
    they are in ``dead_owners`` (a store that keeps worker registrations passes
    the lapsed ones: their leases are taken over by generation).
    """
    if limit == 0 or not agents:
        return []
    # The store grants an owner its own lease back, so two claims of one owner
    # racing here could both acquire one run: they take turns instead.
    async with _turn(backend, owner):
        return await _claim(
            backend, owner, agents, queues, limit, ttl, max_running, dead_owners
        )


_TURNS: weakref.WeakKeyDictionary[Backend, dict[tuple[str, int], asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _turn(backend: Backend, owner: LeaseOwner) -> asyncio.Lock:
    locks = _TURNS.setdefault(backend, {})
    key = (owner.id, id(asyncio.get_running_loop()))
    lock = locks.get(key)
    if lock is None:
        lock = locks[key] = asyncio.Lock()
    return lock


async def scan_not_at_rest(
    backend: Backend, owner: LeaseOwner, dead_owners: Collection[str]
) -> tuple[list[RunHeader], set[str]]:
    """Every run not at rest, and the owners to treat as dead.

    Those are ``dead_owners`` plus the owners on this host whose pid is gone.

    The listing step of the portable claim, shared by stores whose claim
    indexes cannot span runs (Redis Cluster).
    """
    headers: list[RunHeader] = []
    cursor: str | None = None
    while True:
        page = await backend.list_runs(states=CLAIMABLE_STATES, limit=500, cursor=cursor)
        headers.extend(page.runs)
        cursor = page.next_cursor
        if cursor is None:
            break
    dead = set(dead_owners) | {
        h.lease.owner
        for h in headers
        if h.lease is not None and h.lease.host == owner.host and not process_alive(h.lease.pid)
    }
    return headers, dead


async def _claim(
    backend: Backend,
    owner: LeaseOwner,
    agents: Collection[str],
    queues: Collection[str] | None,
    limit: int,
    ttl: float,
    max_running: Mapping[str, int] | None,
    dead_owners: Collection[str],
) -> list[ClaimedRun]:
    headers, dead = await scan_not_at_rest(backend, owner, dead_owners)
    now = time.time()
    running: dict[str, int] = {}
    for h in headers:
        if holds_place(h):
            running[h.queue] = running.get(h.queue, 0) + 1
    room = queue_room(max_running or {}, running)
    candidates = sorted(
        (
            h
            for h in headers
            if claimable(h, agents=agents, queues=queues, now=now, dead_owners=dead)
        ),
        key=claim_order,
    )
    claimed: list[ClaimedRun] = []
    for candidate in candidates:
        if len(claimed) >= limit:
            break
        takeover = holds_place(candidate)  # already counted: it needs no room
        if not takeover and room.get(candidate.queue, 1) <= 0:
            continue
        got = await _acquire_if_claimable(backend, owner, candidate, ttl, dead, agents, queues)
        if got is not None:
            claimed.append(got)
            if candidate.queue in room and not takeover:
                room[candidate.queue] -= 1
    return claimed


async def _acquire_if_claimable(
    backend: Backend,
    owner: LeaseOwner,
    seen: RunHeader,
    ttl: float,
    dead: Collection[str],
    agents: Collection[str],
    queues: Collection[str] | None,
) -> ClaimedRun | None:
    held = seen.lease
    takeover = seen.lease_generation if held is not None and held.owner in dead else None
    try:
        lease = await backend.acquire_lease(seen.run_id, owner, ttl=ttl, takeover=takeover)
    except (RunBusyError, RunNotFoundError):
        return None  # another worker was first, or the run was deleted
    try:
        header = await backend.get_run(seen.run_id)
    except BaseException:
        await asyncio.shield(backend.release_lease(seen.run_id, lease))
        raise
    # Between the listing and the acquisition the run may have come to rest
    # (its lease released): a claim of it is given straight back.
    if (
        header.lease_generation != lease.generation
        or lease.generation != seen.lease_generation + 1
        or header.state not in CLAIMABLE_STATES
        or header.agent_name not in agents
        or (queues is not None and header.queue not in queues)
    ):
        await backend.release_lease(seen.run_id, lease)
        return None
    return ClaimedRun(header=header.model_copy(update={"lease": lease}), previous=held)
