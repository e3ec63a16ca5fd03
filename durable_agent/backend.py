"""The Backend contract: what a store must do for the engine (DESIGN.md §5).

A backend stores runs as a header plus an append-only log of events, and
gives four guarantees the engine's durability rests on:

1. **Atomic, checked appends.** `Backend.append` writes all of its events or
   none, and only if the run's ``seq`` equals ``expected_seq`` and the run's
   lease generation equals the caller's (compare-and-set plus fencing, in one
   atomic step). Otherwise it raises `ConcurrentUpdateError` (or
   `LeaseLostError`) and writes nothing.
2. **Durable on return.** When `create_run` or `append` returns, the data
   survives the process being killed (and, per the backend's settings, the
   machine losing power).
3. **Exclusive leases.** At most one owner holds a live lease; acquiring
   increments the generation.
4. **Isolation of damage.** A record that does not validate makes loading
   *that* run raise `CorruptRunError`; other runs are unaffected.

Backends import only this module, `durable_agent.records`,
`durable_agent.errors` and their driver: the built-in ones are the worked
examples for custom backend authors. A backend given a password (in a URL,
say) passes it to `mark_secret`, re-exported here, so it never reaches stored
data or an error message.

Listing pages (`durable_agent._listing`), the shared write rules
(`durable_agent._store_rules`) and claims (`durable_agent._claim_rules`) are
defined beside this module and re-exported here, the one place to import them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import ClassVar, Self

from durable_agent._claim_rules import (
    CLAIMABLE_STATES,
    ClaimedRun,
    check_claim_args,
    claim_lease,
    claim_order,
    claimable,
    holds_place,
    lease_live,
    portable_claim,
    queue_room,
    scan_not_at_rest,
)
from durable_agent._listing import (
    Position,
    RunPage,
    UnreadableReason,
    UnreadableRun,
    decode_cursor,
    encode_cursor,
    make_page,
)
from durable_agent._names import LONGEST_LABEL, check_name
from durable_agent._process import host_id, process_alive
from durable_agent._redact import mark_secret
from durable_agent._store_rules import check_append, check_lease_acquire
from durable_agent.errors import (
    ConfigurationError,
)
from durable_agent.fsm import RunState
from durable_agent.records import Event, Lease, RunHeader, StoredRun

__all__ = [
    "CLAIMABLE_STATES",
    "Backend",
    "Capability",
    "ClaimedRun",
    "LeaseOwner",
    "MigrationReport",
    "Position",
    "RunPage",
    "UnreadableReason",
    "UnreadableRun",
    "check_append",
    "check_claim_args",
    "check_lease_acquire",
    "claim_lease",
    "claim_order",
    "claimable",
    "commit_observer",
    "decode_cursor",
    "encode_cursor",
    "holds_place",
    "lease_live",
    "make_page",
    "mark_secret",
    "portable_claim",
    "process_alive",
    "queue_room",
    "scan_not_at_rest",
]


commit_observer: Callable[[str, Sequence[str]], None] | None = None
"""Set by telemetry (`durable_agent.telemetry`); a store with group commit calls it after
each commit with its kind and the run id of every append in the batch. None: nobody asks."""


class Capability(StrEnum):
    """Optional features a backend declares; the conformance suite skips what is missing."""

    CROSS_PROCESS = "cross_process"
    """Several processes (and hosts) may share the store safely."""
    GROUP_COMMIT = "group_commit"
    """Concurrent appends of many runs share one commit."""
    DURABLE = "durable"
    """Data survives the process being killed."""
    CLAIM = "claim"
    """`Backend.claim_runs` is native: one atomic step per claim, over an index of
    the claimable runs only (its cost does not grow with finished runs)."""
    QUEUE_LIMIT = "queue_limit"
    """`Backend.claim_runs` enforces ``max_running`` atomically: racing claims never pass it
    together (checked in the claim's own atomic step, or in one that every lease passes
    before it is granted, as Redis Cluster's queue places)."""
    WORKER_LIVENESS = "worker_liveness"
    """`Backend.register_worker` is kept: a lapsed worker's leases are claimable at once."""
    WAKE_UP = "wake_up"
    """`Backend.wait_for_change` is woken by the store, not by a timer."""
    RELAY = "relay"
    """Ephemeral messages (token deltas) reach followers in other processes, best effort:
    `Backend.publish_ephemeral` and `Backend.subscribe_ephemeral` are implemented."""
    MIGRATE = "migrate"
    """`Backend.migrate` brings the store's layout and stored records up to this version."""


@dataclass(frozen=True, slots=True)
class LeaseOwner:
    """Identifies one running process: host, pid and a random id (pids get reused).

    The engine leases runs as `LeaseOwner.process`, one owner per live
    process, so every agent of a process may take back a lease the process
    still holds (a release that failed, a write that landed after its caller
    was cancelled): see `check_lease_acquire`.
    """

    host: str
    pid: int
    nonce: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        # The id is stored on every lease, packed with "\x1f" by Redis, and read back
        # split at its last two ":".
        check_name(self.host, "LeaseOwner(host=...)")
        check_name(self.nonce, "LeaseOwner(nonce=...)", forbid=":")
        if isinstance(self.pid, bool) or not isinstance(self.pid, int) or self.pid < 0:
            raise ConfigurationError(f"LeaseOwner(pid=...) must be an int >= 0, got {self.pid!r}")

    @classmethod
    def current(cls) -> LeaseOwner:
        """A new owner for this process, with a fresh random id.

        ``host`` is the host name plus, on Linux, the pid namespace: two
        containers may share a host name while their pids mean different
        processes, and the same-host takeover must only trust a pid it can see.
        Two calls give two owners, which a store tells apart; the engine uses
        `process` instead.
        """
        return cls(host=host_id(), pid=os.getpid())

    @classmethod
    def process(cls) -> LeaseOwner:
        """This process's one owner: the same object on every call, renewed after a fork.

        A forked child gets its own owner (its pid differs), so it never
        passes for its parent.
        """
        global _process_owner
        owner = _process_owner
        if owner is None or owner.pid != os.getpid():
            owner = _process_owner = cls.current()
        return owner

    @property
    def id(self) -> str:
        """``host:pid:nonce``, the owner string stored on the lease."""
        return f"{self.host}:{self.pid}:{self.nonce}"


_process_owner: LeaseOwner | None = None
"""The owner `LeaseOwner.process` hands out, made on first use (and after a fork)."""


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What `Backend.migrate` found and did (``dry_run``: what it would do).

    ``layout_before`` / ``layout_after`` are the store's own layout versions
    (None for a store that keeps none); ``runs_rewritten`` counts runs whose
    records were rewritten at the current schema version; ``steps`` says in
    words what was (or would be) done, in order.
    """

    store: str
    layout_before: int | None
    layout_after: int | None
    runs_checked: int = 0
    runs_rewritten: int = 0
    steps: tuple[str, ...] = ()
    dry_run: bool = False


class Backend(ABC):
    """Abstract store of runs. Subclass it and implement every abstract method.

    ``session_id`` and ``user_id`` tag the runs an agent creates through this
    backend. They label runs; they are not a scope: a backend is a handle on
    the whole store, so `list_runs` shows every run unless given
    ``session_id=`` / ``user_id=`` (pass ``session_id=backend.session_id`` for
    this session's runs). Backends are async context managers: ``async with``
    closes them.
    """

    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    """Optional features this backend provides."""

    def __init__(self, *, session_id: str | None = None, user_id: str | None = None) -> None:
        for name, value in (("session_id", session_id), ("user_id", user_id)):
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(
                    f"{type(self).__name__}({name}=...) must be a str or None, "
                    f"got {type(value).__name__}"
                )
            if value is not None:
                check_name(value, f"{type(self).__name__}({name}=...)", longest=LONGEST_LABEL)
        self.session_id = session_id
        self.user_id = user_id

    # -- runs ---------------------------------------------------------------

    @abstractmethod
    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        """Store a new run with its first events, atomically and durably.

        ``header.seq`` equals the last event's ``seq`` and ``header.state`` its
        state. Raises `RunExistsError` when the id is taken.
        """

    @abstractmethod
    async def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        lease: Lease,
        release: bool = False,
    ) -> Lease:
        """Append ``events`` (seqs ``expected_seq + 1 …``) atomically and durably.

        With ``release=True`` the lease is given up in the same atomic step: the
        engine uses it for the write that brings a run to rest (DONE, ERROR,
        WAITING, CANCELLED), so a crash right after it leaves no lease behind.

        Checks in the same atomic step that the run's ``seq`` is
        ``expected_seq`` and that its lease generation and owner are
        ``lease``'s. On success the header takes the last event's state and
        seq, and the lease is renewed to ``now + lease.ttl``; the renewed lease
        is returned, carrying the header's ``cancel_requested``. Raises
        `RunNotFoundError`, `ConcurrentUpdateError` (stale
        seq) or `LeaseLostError` (lease taken over); nothing is written then.
        """

    @abstractmethod
    async def load_run(self, run_id: str) -> StoredRun:
        """Return the header and all events; `RunNotFoundError` or `CorruptRunError`."""

    @abstractmethod
    async def get_run(self, run_id: str) -> RunHeader:
        """Return the header only; `RunNotFoundError` when unknown."""

    @abstractmethod
    async def list_runs(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        states: Collection[RunState] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        """List run headers matching every given filter, newest first, a page at a time.

        Runs whose header cannot be read are listed in `RunPage.unreadable`
        (see there for the page that reports each), never skipped silently.
        """

    @abstractmethod
    async def delete_run(self, run_id: str) -> bool:
        """Delete a run and its events; return whether it existed."""

    @abstractmethod
    async def prune(
        self,
        *,
        older_than: datetime,
        states: Collection[RunState] = (RunState.DONE, RunState.CANCELLED),
    ) -> int:
        """Delete runs in ``states`` last updated before ``older_than``; return how many.

        Runs holding a live lease are kept, and so is every run whose header
        cannot be read (its state and age are unknown).
        """

    @abstractmethod
    async def request_cancel(self, run_id: str, reason: str) -> RunHeader:
        """Record that the run should be cancelled, without holding its lease.

        Sets the header's ``cancel_requested`` to ``reason`` (a later request
        keeps the first reason) and returns the header. From then on every lease
        this store hands out or renews for the run, by `acquire_lease`,
        `append` or `renew_lease`, carries ``cancel_requested``, which is how the
        process running it learns to stop at its next transition boundary.
        Raises `RunNotFoundError`.
        """

    # -- leases -------------------------------------------------------------

    @abstractmethod
    async def acquire_lease(
        self, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None = None
    ) -> Lease:
        """Take the run's lease for ``ttl`` seconds and return it with a new generation.

        Granted when no lease is held, the held one expired, ``takeover``
        equals the held generation (the caller established that the holder's
        process is gone), or the held lease has ``owner``'s id (a process may
        always take back its own lease; the generation still increments, which
        fences the earlier holder). Decide with `check_lease_acquire`.
        Otherwise raises `RunBusyError` naming the holder.
        """

    @abstractmethod
    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        """Extend a held lease to ``now + lease.ttl``; `LeaseLostError` if taken over."""

    @abstractmethod
    async def release_lease(self, run_id: str, lease: Lease) -> None:
        """Give the lease up if still held by ``lease``'s generation; a no-op otherwise."""

    # -- workers (optional: each has a portable fallback, see DESIGN.md §6) ---------

    async def claim_runs(
        self,
        owner: LeaseOwner,
        *,
        agents: Collection[str],
        queues: Collection[str] | None = None,
        limit: int = 1,
        ttl: float = 30.0,
        max_running: Mapping[str, int] | None = None,
    ) -> list[ClaimedRun]:
        """Acquire the leases of up to ``limit`` claimable runs for ``owner``, best first.

        Claimable and the order are `claimable` and `claim_order` (pass
        ``queues=None`` for every queue); a lease of an owner whose worker
        registration lapsed counts as dead. Each claim is a lease acquisition
        (generation + 1, ``ttl`` seconds), so two callers never both get one run.
        ``max_running`` caps, per queue, the runs holding a place after the
        claim, fleet-wide (`holds_place`: a held lease, live or lapsed, of a run
        not at rest; a takeover keeps its run's place). Natively
        (`Capability.CLAIM`) one atomic step claims and, with
        `Capability.QUEUE_LIMIT`, checks the cap; the default lists and acquires
        one by one (`portable_claim`), which may overshoot the cap under races.
        """
        check_claim_args(agents, limit, ttl, max_running)
        return await portable_claim(
            self, owner, agents=agents, queues=queues, limit=limit, ttl=ttl,
            max_running=max_running,
        )

    async def register_worker(self, owner: LeaseOwner, *, ttl: float) -> None:
        """Record, or renew, that ``owner`` is a live worker for ``ttl`` seconds (store clock).

        Once the registration lapses (the process died, froze, or lost the
        store), `claim_runs` treats every lease of ``owner`` as dead before the
        lease's own expiry. Natively with `Capability.WORKER_LIVENESS`; the
        default keeps nothing (leases then end by their TTL).
        """
        return None

    async def unregister_worker(self, owner: LeaseOwner) -> None:
        """Forget ``owner``'s registration (a worker that stopped and released its leases)."""
        return None

    async def wait_for_change(self, after: str | None = None, *, timeout: float) -> str:
        """Wait until the store may have changed since token ``after``; return the new token.

        A change is a run created, brought to rest, released or asked to
        cancel (not every append). ``after=None`` returns the current token at
        once: take it *before* checking the store, then wait with it, so a
        change in between is not missed. It may return early for no change;
        callers check the store again. Natively (`Capability.WAKE_UP`) the
        store wakes the caller; the default sleeps ``timeout`` (callers poll
        with a backoff).
        """
        if after is not None:
            await asyncio.sleep(timeout)
        return ""

    # -- relaying ephemeral messages (optional: Capability.RELAY) ----------------

    # Optional with a no-op default, so a custom backend written before it keeps working.
    async def publish_ephemeral(self, run_id: str, message: str) -> None:  # noqa: B027
        """Relay ``message`` to the run's followers in other processes, best effort.

        Never stored and may be lost (a follower that is not subscribed at that
        moment never sees it). The default does nothing; a backend with
        `Capability.RELAY` sends it to `subscribe_ephemeral`'s iterators.
        """

    def subscribe_ephemeral(
        self, run_id: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[str]] | None:
        """The run's ephemeral messages from now on, or None when this store does not relay.

        ``async with backend.subscribe_ephemeral(run_id) as messages:`` then
        ``async for message in messages``; the default returns None.
        """
        return None

    # -- upgrades -----------------------------------------------------------

    async def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        """Bring the store's own layout and its stored records up to this version.

        Optional (`Capability.MIGRATE`). It must be idempotent and safe to run
        again after a crash at any point, and safe while other processes use the
        store: each step is atomic, and a record is rewritten only into what
        reading it gives anyway (`durable_agent.records.decode_event` upcasts
        older records), so a half-done migration reads the same as a whole one.
        This default changes nothing: a store without it keeps older records
        as they are, and they are upcast each time they are read.
        """
        return MigrationReport(
            store=repr(self), layout_before=None, layout_after=None, dry_run=dry_run,
            steps=("nothing to migrate: this store's older records are upcast when read",),
        )

    # -- lifecycle ----------------------------------------------------------

    @abstractmethod
    async def close(self) -> None:
        """Flush and release every resource; further calls raise."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
