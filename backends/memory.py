"""An in-process store: the reference implementation of the Backend contract.

Runs live in a dict of this process and are lost when it exits, so nothing
here is durable; use it for tests and for agents that need no recovery.
Records are kept as JSON text, exactly as a durable store keeps them, so a run
loaded from memory never shares mutable objects with the engine and a
serialization bug shows up here first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from durable_agent.backend import (
    CLAIMABLE_STATES,
    Backend,
    Capability,
    ClaimedRun,
    LeaseOwner,
    Position,
    RunPage,
    UnreadableRun,
    check_append,
    check_claim_args,
    check_lease_acquire,
    claim_lease,
    claim_order,
    claimable,
    decode_cursor,
    holds_place,
    make_page,
    queue_room,
)
from durable_agent.backends._log_checks import whole_run
from durable_agent.errors import (
    ConfigurationError,
    CorruptRunError,
    LeaseLostError,
    RunExistsError,
    RunNotFoundError,
    StoreUnavailableError,
)
from durable_agent.fsm import RunState
from durable_agent.records import (
    Event,
    Lease,
    RunHeader,
    StoredRun,
    decode_event,
    decode_header,
    encode_event,
    encode_events,
    encode_header,
    utcnow,
)

__all__ = ["MemoryBackend"]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class _Stored:
    header: str
    events: list[str] = field(default_factory=list)
    decoded: tuple[str, RunHeader] | None = None
    """The header decoded from the text it came from: reused while the text is the
    same object (headers are immutable), decoded again once it is replaced."""

    def read_header(self, run_id: str) -> RunHeader:
        if self.decoded is not None and self.decoded[0] is self.header:
            return self.decoded[1]
        header = decode_header(run_id, self.header)
        self.decoded = (self.header, header)
        return header

    def write_header(self, header: RunHeader) -> None:
        self.header = encode_header(header)
        self.decoded = (self.header, header)


class MemoryBackend(Backend):
    """Runs in this process's memory; not durable, not shared between processes."""

    capabilities = frozenset(
        {
            Capability.GROUP_COMMIT,
            Capability.CLAIM,
            Capability.QUEUE_LIMIT,
            Capability.WORKER_LIVENESS,
            Capability.WAKE_UP,
        }
    )

    def __init__(self, *, session_id: str | None = None, user_id: str | None = None) -> None:
        super().__init__(session_id=session_id, user_id=user_id)
        self._runs: dict[str, _Stored] = {}
        self._closed = False
        self._workers: dict[str, float] = {}
        """Registered workers' owner ids and when their registration lapses."""
        self._changes = 0
        self._waiters: list[asyncio.Future[None]] = []

    def _changed(self) -> None:
        """Wake every `wait_for_change` (on whichever event loop it waits)."""
        self._changes += 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    # Every method runs to completion without awaiting, so on one event loop
    # each is atomic without a lock.

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError("MemoryBackend is closed")

    def _stored(self, run_id: str) -> _Stored:
        self._check_open()
        stored = self._runs.get(run_id)
        if stored is None:
            raise RunNotFoundError(run_id)
        return stored

    def _header(self, run_id: str) -> RunHeader:
        return self._stored(run_id).read_header(run_id)

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        self._check_open()
        if header.run_id in self._runs:
            raise RunExistsError(header.run_id)
        self._runs[header.run_id] = _Stored(
            encode_header(header), [encode_event(e) for e in events]
        )
        self._changed()

    async def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        lease: Lease,
        release: bool = False,
    ) -> Lease:
        stored = self._stored(run_id)
        header = stored.read_header(run_id)
        check_append(header, events, expected_seq=expected_seq, lease=lease)
        renewed = lease.model_copy(
            update={
                "expires_at": time.time() + lease.ttl,
                "cancel_requested": header.cancel_requested,
            }
        )
        encoded = encode_events(events)  # the engine's events come encoded already
        last = events[-1] if events else None
        stored.write_header(
            header.model_copy(
                update={
                    "seq": last.seq if last else header.seq,
                    "state": last.state if last else header.state,
                    "updated_at": utcnow(),
                    "lease": None if release else renewed,
                }
            )
        )
        stored.events.extend(encoded)
        if release:
            self._changed()
        return renewed

    async def load_run(self, run_id: str) -> StoredRun:
        stored = self._stored(run_id)
        header = stored.read_header(run_id)
        events = tuple(
            decode_event(run_id, seq, text) for seq, text in enumerate(stored.events, start=1)
        )
        return whole_run(run_id, header, events)

    async def get_run(self, run_id: str) -> RunHeader:
        return self._header(run_id)

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
        self._check_open()
        if limit < 1:
            raise ConfigurationError(f"list_runs(limit={limit}) must be at least 1")
        after = decode_cursor(cursor) if cursor else None
        wanted = set(states) if states is not None else None
        if wanted is not None and not wanted:
            return RunPage(runs=(), next_cursor=None)
        matches: list[RunHeader] = []
        unreadable: list[tuple[Position | None, UnreadableRun]] = []
        for run_id, stored in self._runs.items():
            try:
                header = stored.read_header(run_id)
            except CorruptRunError as exc:
                # Its fields are unknown, so no filter can rule it out and it has no
                # place in the order: the first page reports it.
                if after is None:
                    unreadable.append((None, UnreadableRun.from_error(run_id, exc)))
                continue
            if (
                (session_id is not None and header.session_id != session_id)
                or (user_id is not None and header.user_id != user_id)
                or (wanted is not None and header.state not in wanted)
                or (created_after is not None and header.created_at <= created_after)
                or (created_before is not None and header.created_at >= created_before)
            ):
                continue
            key = (header.created_at.timestamp(), header.run_id)
            if after is not None and key >= after:
                continue
            matches.append(header)
        matches.sort(key=lambda h: (h.created_at.timestamp(), h.run_id), reverse=True)
        unreadable.sort(key=lambda item: item[1].run_id)
        return make_page(matches[: limit + 1], limit=limit, unreadable=unreadable)

    async def delete_run(self, run_id: str) -> bool:
        self._check_open()
        return self._runs.pop(run_id, None) is not None

    async def prune(
        self,
        *,
        older_than: datetime,
        states: Collection[RunState] = (RunState.DONE, RunState.CANCELLED),
    ) -> int:
        self._check_open()
        now = time.time()
        doomed = []
        for run_id, stored in self._runs.items():
            try:
                header = stored.read_header(run_id)
            except CorruptRunError:
                continue
            live = header.lease is not None and header.lease.expires_at > now
            if header.state in states and header.updated_at < older_than and not live:
                doomed.append(run_id)
        for run_id in doomed:
            del self._runs[run_id]
        return len(doomed)

    async def acquire_lease(
        self, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None = None
    ) -> Lease:
        stored = self._stored(run_id)
        header = stored.read_header(run_id)
        lease = check_lease_acquire(header, owner, ttl=ttl, takeover=takeover, now=time.time())
        stored.write_header(
            header.model_copy(update={"lease": lease, "lease_generation": lease.generation})
        )
        return lease

    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        stored = self._stored(run_id)
        header = stored.read_header(run_id)
        if header.lease is None or header.lease_generation != lease.generation:
            raise LeaseLostError(run_id, f"lease generation {lease.generation} was taken over")
        renewed = lease.model_copy(
            update={
                "expires_at": time.time() + lease.ttl,
                "cancel_requested": header.cancel_requested,
            }
        )
        stored.write_header(header.model_copy(update={"lease": renewed}))
        return renewed

    async def request_cancel(self, run_id: str, reason: str) -> RunHeader:
        stored = self._stored(run_id)
        header = stored.read_header(run_id)
        if header.cancel_requested is None:
            header = header.model_copy(update={"cancel_requested": reason})
            stored.write_header(header)
            self._changed()
        return header

    async def release_lease(self, run_id: str, lease: Lease) -> None:
        self._check_open()
        stored = self._runs.get(run_id)
        if stored is None:
            return
        header = stored.read_header(run_id)
        if header.lease is not None and header.lease_generation == lease.generation:
            stored.write_header(header.model_copy(update={"lease": None}))
            self._changed()

    # -- workers ------------------------------------------------------------------

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
        check_claim_args(agents, limit, ttl, max_running)
        self._check_open()
        now = time.time()
        dead = {o for o, lapses in self._workers.items() if lapses <= now}
        headers: list[RunHeader] = []
        for run_id, stored in self._runs.items():
            try:
                header = stored.read_header(run_id)
            except CorruptRunError:
                continue
            if header.state in CLAIMABLE_STATES:
                headers.append(header)
        running: dict[str, int] = {}
        for header in headers:
            if holds_place(header):
                running[header.queue] = running.get(header.queue, 0) + 1
        room = queue_room(max_running or {}, running)
        candidates = sorted(
            (h for h in headers
             if claimable(h, agents=agents, queues=queues, now=now, dead_owners=dead)),
            key=claim_order,
        )
        claimed: list[ClaimedRun] = []
        for header in candidates:
            if len(claimed) >= limit:
                break
            takeover = holds_place(header)  # already counted: it needs no room
            if not takeover and room.get(header.queue, 1) <= 0:
                continue
            lease = claim_lease(header, owner, ttl=ttl, now=now)
            after = header.model_copy(update={"lease": lease, "lease_generation": lease.generation})
            self._runs[header.run_id].write_header(after)
            if header.queue in room and not takeover:
                room[header.queue] -= 1
            claimed.append(ClaimedRun(header=after, previous=header.lease))
        return claimed

    async def register_worker(self, owner: LeaseOwner, *, ttl: float) -> None:
        self._check_open()
        self._workers[owner.id] = time.time() + ttl

    async def unregister_worker(self, owner: LeaseOwner) -> None:
        self._check_open()
        self._workers.pop(owner.id, None)

    async def wait_for_change(self, after: str | None = None, *, timeout: float) -> str:
        self._check_open()
        if after is None or after != str(self._changes):
            return str(self._changes)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return str(self._changes)

    async def close(self) -> None:
        self._closed = True
        self._changed()
