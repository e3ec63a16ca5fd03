"""A durable store in PostgreSQL, shared by every process and host that reaches it.

Each run is a row of ``runs`` (the header, one column per field) plus rows of
``events`` (one compact JSON text per event, written by
`durable_agent.records.encode_event`), in one schema of their own; the tables
are created on first use (`durable_agent.backends._postgres_schema`).

* **One round trip per append.** The compare-and-set on ``seq`` and the lease
  generation, the events, the header's new state and the lease renewal are
  one statement (`durable_agent.backends._postgres_sql`).
* **Group commit.** Every write goes through one writer connection per event
  loop, which sends all the writes queued during the previous commit as one
  transaction in one message, the writes of each kind merged into one
  statement; each keeps its own check, so one refused write fails alone
  (`durable_agent.backends._postgres_writer`).
* **The server's clock.** Lease expiry is judged and set by
  ``clock_timestamp()`` on the database server, never by the client's clock,
  so hosts whose clocks disagree still agree on who holds a run.
* **Durable on return.** Every connection runs with ``synchronous_commit =
  on``: an append has reached the server's disk (and, with
  ``synchronous_standby_names`` set on the server, a standby) before it returns.

* **Relay.** Token deltas of a streamed run reach its followers in other
  processes over NOTIFY on a channel of the run's own, best effort
  (`durable_agent.backends._postgres_relay`).
* **No frozen transaction holds a run.** Every connection runs with
  ``idle_in_transaction_session_timeout``: a client stopped mid-transaction
  (SIGSTOP, a paused VM) is disconnected and its transaction rolled back, so
  the row locks claims skip are not held for longer than that.

Reads use a small connection pool (psycopg_pool). The backend is bound to no
event loop: it connects lazily, and reconnects when used from another loop
(the synchronous ``agent.do()`` runs each call under its own ``asyncio.run()``).
Listing pages and the prune sweep are `durable_agent.backends._postgres_listing`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Final

import psycopg

from durable_agent.backend import (
    Backend,
    Capability,
    ClaimedRun,
    LeaseOwner,
    MigrationReport,
    RunPage,
    check_append,
    check_claim_args,
)
from durable_agent.backends import _postgres_claims as claims
from durable_agent.backends import _postgres_listing as listing
from durable_agent.backends import _postgres_migrate as migration
from durable_agent.backends import _postgres_relay as relay
from durable_agent.backends import _postgres_sql as q
from durable_agent.backends._log_checks import check_distinct_seqs, numbered_events, whole_run
from durable_agent.backends._loop_link import LoopLinks
from durable_agent.backends._postgres_link import (
    Link,
    Settings,
    check_options,
    first_line,
)
from durable_agent.backends._postgres_writer import Params, Rows, Stats
from durable_agent.errors import (
    ConcurrentUpdateError,
    CorruptRunError,
    LeaseLostError,
    RunBusyError,
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
    encode_events,
)

__all__ = ["PostgresBackend"]

_AT_REST: Final = frozenset({RunState.DONE, RunState.ERROR, RunState.WAITING, RunState.CANCELLED})


def _never_stored(run_id: str) -> None:
    """`RunNotFoundError` for an id holding NUL, which no ``TEXT`` column can hold.

    Sent to the server it fails the statement as if the store were down; no run
    here can have it (stores that can, keep such runs since before ids were checked).
    """
    if "\0" in run_id:
        raise RunNotFoundError(run_id, "PostgreSQL cannot store NUL, so no run here has this id")


class PostgresBackend(relay.Relaying, LoopLinks[Link], Backend):
    """Runs in PostgreSQL, durable and shared by every process and host.

    Args:
        url: a libpq connection URL, ``postgresql://user:password@host:port/db``
            (its query parameters other than the options below go to libpq,
            e.g. ``?sslmode=require``). The password is marked secret
            (`durable_agent.mark_secret`) so it never reaches stored data or
            an error message.
        schema: the PostgreSQL schema that holds the tables, created on first
            use; one per application (or per test run).
        session_id: tags the runs an agent creates through this backend.
        user_id: tags the runs an agent creates through this backend.
        pool_size: most connections the readers' pool opens (the writer has
            one more of its own).
        max_batch: most writes committed together in one transaction.
        connect_timeout: seconds to wait for the server when connecting.
        idle_in_transaction_timeout: seconds a connection of this backend may
            sit idle inside a transaction before the server ends its session
            (``idle_in_transaction_session_timeout``). Its transactions are
            sent in one go, so only a frozen client (SIGSTOP, a paused VM)
            waits that long; meanwhile the rows it locked are skipped by
            claims. Keep it well under the lease TTL; 0 turns it off.

    The constructor does no I/O. Close it with ``await backend.close()`` or
    ``async with``. Behind PgBouncer use session pooling: the writer's
    session settings and the workers' advisory locks need a session of their own.
    """

    capabilities = frozenset(
        {
            Capability.CROSS_PROCESS,
            Capability.GROUP_COMMIT,
            Capability.DURABLE,
            Capability.CLAIM,
            Capability.QUEUE_LIMIT,
            Capability.WORKER_LIVENESS,
            Capability.WAKE_UP,
            Capability.MIGRATE,
            Capability.RELAY,
        }
    )

    def __init__(
        self,
        url: str,
        *,
        schema: str = "durable_agent",
        session_id: str | None = None,
        user_id: str | None = None,
        pool_size: int = 4,
        max_batch: int = 256,
        connect_timeout: float = 10.0,
        idle_in_transaction_timeout: float = 10.0,
    ) -> None:
        super().__init__(session_id=session_id, user_id=user_id)
        info = check_options(
            url, schema=schema, pool_size=pool_size, max_batch=max_batch,
            connect_timeout=connect_timeout,
            idle_in_transaction_timeout=idle_in_transaction_timeout,
        )
        self.url = url
        self.schema = schema
        self._where = (
            f"{info.get('user') or ''}@{info.get('host') or 'localhost'}:"
            f"{info.get('port') or 5432}/{info.get('dbname') or ''} schema {schema}"
        )
        self._max_batch = max_batch
        self._settings = Settings(
            url=url,
            schema=schema,
            where=self._where,
            pool_size=pool_size,
            max_batch=max_batch,
            connect_timeout=float(connect_timeout),
            channel=claims.channel(schema),
            idle_in_transaction_timeout=float(idle_in_transaction_timeout),
        )
        self._sql = q.Statements(schema)
        self._claims = claims.Statements(self._sql.q)
        self._namespace = claims.lock_namespace(schema)
        self.stats = Stats()
        """Group-commit counters (batches, writes, largest batch)."""
        self._init_links()

    def __repr__(self) -> str:
        return f"PostgresBackend({self._where!r})"

    # -- connections ------------------------------------------------------------------------

    async def _open_link(self, loop: asyncio.AbstractEventLoop) -> Link:
        return await Link.open(self._settings, self.stats, q.merges(self._sql))

    async def _drop_link(self, link: Link, loop: asyncio.AbstractEventLoop) -> None:
        if link.loop is loop:
            await link.shutdown()
        else:
            link.abandon()

    async def _write(
        self,
        run_id: str,
        query: str,
        params: Params,
        *,
        notify: bool = False,
    ) -> Rows:
        link = self._link
        if link is None or not link.usable or link.loop is not asyncio.get_running_loop():
            link = await self._reconnect()
        try:
            rows: Rows = await link.writer.write(run_id, query, params, notify=notify)
            return rows
        except psycopg.IntegrityError as exc:
            raise CorruptRunError(
                run_id, None, f"PostgreSQL refused the write ({first_line(exc)}): rows disagree"
            ) from exc
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"PostgreSQL store {self._where}: a write of run {run_id!r} failed "
                f"({first_line(exc)}); it was not stored"
            ) from exc

    async def _read(self, query: str, params: Params) -> Rows:
        return await (await self._connected()).read(query, params)

    async def _header(self, run_id: str) -> tuple[RunHeader, float]:
        """The stored header and the server's clock now; `RunNotFoundError`."""
        _never_stored(run_id)
        rows = await self._read(self._sql.header, (run_id,))
        if not rows:
            raise RunNotFoundError(run_id)
        return q.header_from_row(rows[0][: q.WIDTH]), float(rows[0][q.WIDTH])

    # -- runs -------------------------------------------------------------------------------

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        check_distinct_seqs(header, events)
        params = q.create_params(header, events)
        if not await self._write(header.run_id, self._sql.create, params, notify=True):
            raise RunExistsError(header.run_id)

    async def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        lease: Lease,
        release: bool = False,
    ) -> Lease:
        events = tuple(events)
        params: dict[str, object] = {
            "run_id": run_id,
            "expected": expected_seq,
            "generation": lease.generation,
            "owner": lease.owner,
            "ttl": lease.ttl,
            "release": release,
        }
        if len(events) == 1:  # the common case, without the arrays and the loops
            event = events[0]
            if event.seq != expected_seq + 1:
                check_append((await self._header(run_id))[0], events,
                             expected_seq=expected_seq, lease=lease)
            params["new_seq"] = params["seq"] = event.seq
            params["state"] = None if event.trigger is None else event.state.value
            params["body"] = encode_events(events)[0]
            query = self._sql.append_one
            last: Event | None = event
        else:
            if any(e.seq != expected_seq + i for i, e in enumerate(events, start=1)):
                check_append((await self._header(run_id))[0], events,
                             expected_seq=expected_seq, lease=lease)
            seqs, bodies = q.event_arrays(events)
            moved = any(e.trigger is not None for e in events)
            last = events[-1] if events else None
            params["new_seq"] = last.seq if last else expected_seq
            params["state"] = last.state.value if last and moved else None
            params["seqs"], params["bodies"] = seqs, bodies
            query = self._sql.append
        # A run coming to rest or given up wakes the waiters; a step in between does not.
        rests = release or (last is not None and last.state in _AT_REST)
        rows = await self._write(run_id, query, params, notify=rests)
        if not rows:
            header, _ = await self._header(run_id)
            check_append(header, events, expected_seq=expected_seq, lease=lease)
            raise ConcurrentUpdateError(run_id, "the append was refused; reload the run")
        cancel_requested, expires = rows[0]
        return lease.renewed(float(expires), cancel_requested)

    async def load_run(self, run_id: str) -> StoredRun:
        _never_stored(run_id)
        rows = await self._read(self._sql.load, (run_id,))
        if not rows:
            raise RunNotFoundError(run_id)
        row = rows[0]
        header = q.header_from_row(row[: q.WIDTH])
        seqs: list[int] = row[q.WIDTH] or []
        bodies: list[str] = row[q.WIDTH + 1] or []
        return whole_run(run_id, header, numbered_events(run_id, zip(seqs, bodies, strict=True)))

    async def get_run(self, run_id: str) -> RunHeader:
        return (await self._header(run_id))[0]

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
        return await listing.page(
            self,
            session_id=session_id,
            user_id=user_id,
            states=states,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )

    async def delete_run(self, run_id: str) -> bool:
        if "\0" in run_id:  # no run here has it (`_never_stored`)
            return False
        rows = await self._write(run_id, self._sql.delete, {"run_id": run_id})
        return bool(rows and rows[0][0])

    async def prune(
        self,
        *,
        older_than: datetime,
        states: Collection[RunState] = (RunState.DONE, RunState.CANCELLED),
    ) -> int:
        return await listing.prune(self, older_than, states)

    async def request_cancel(self, run_id: str, reason: str) -> RunHeader:
        _never_stored(run_id)
        rows = await self._write(
            run_id, self._sql.cancel, {"run_id": run_id, "reason": reason}, notify=True
        )
        if not rows:
            raise RunNotFoundError(run_id)
        return q.header_from_row(rows[0])

    # -- leases -----------------------------------------------------------------------------

    async def acquire_lease(
        self, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None = None
    ) -> Lease:
        params = {
            "run_id": run_id,
            "owner": owner.id,
            "host": owner.host,
            "pid": owner.pid,
            "ttl": float(ttl),
            "takeover": takeover,
        }
        rows = await self._write(run_id, self._sql.acquire, params)
        if not rows:
            header, now = await self._header(run_id)
            held = header.lease
            if held is None:  # released between the two statements: try once more
                rows = await self._write(run_id, self._sql.acquire, params)
            if not rows:
                holder = held.owner if held else "another owner"
                left = held.expires_at - now if held else 0.0
                raise RunBusyError(run_id, holder, max(left, 0.0))
        generation, expires, cancel_requested = rows[0]
        return Lease(
            owner=owner.id,
            host=owner.host,
            pid=owner.pid,
            generation=int(generation),
            expires_at=float(expires),
            ttl=float(ttl),
            cancel_requested=cancel_requested,
        )

    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        params = {"run_id": run_id, "generation": lease.generation, "ttl": lease.ttl}
        rows = await self._write(run_id, self._sql.renew, params)
        if not rows:
            await self._header(run_id)  # RunNotFoundError / CorruptRunError first
            raise LeaseLostError(run_id, f"lease generation {lease.generation} was taken over")
        expires, cancel_requested = rows[0]
        return q.renewed(lease, float(expires), cancel_requested)

    async def release_lease(self, run_id: str, lease: Lease) -> None:
        params = {"run_id": run_id, "generation": lease.generation}
        await self._write(run_id, self._sql.release, params, notify=True)

    # -- workers ----------------------------------------------------------------------------

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
        """Claim natively: one transaction over the claimable index (`_postgres_claims`)."""
        check_claim_args(agents, limit, ttl, max_running)
        self._check_open()
        if limit == 0 or not agents:
            return []
        return await claims.claim(
            await self._connected(),
            self._claims,
            owner,
            namespace=self._namespace,
            agents=agents,
            queues=queues,
            limit=limit,
            ttl=ttl,
            max_running=max_running or {},
        )

    async def register_worker(self, owner: LeaseOwner, *, ttl: float) -> None:
        """Hold ``owner``'s advisory lock on its own connection and renew its registration."""
        await claims.register(
            await self._connected(), self._claims, owner, ttl=ttl, namespace=self._namespace
        )

    async def unregister_worker(self, owner: LeaseOwner) -> None:
        """Forget ``owner``'s registration and release its advisory lock."""
        await claims.unregister(await self._connected(), self._claims, owner)

    async def wait_for_change(self, after: str | None = None, *, timeout: float) -> str:
        """Wait for a notification of a change (LISTEN/NOTIFY), at most ``timeout`` seconds."""
        listener = await (await self._connected()).listening()
        if after is None:
            return listener.token()
        return await listener.wait(after, timeout)

    # -- upgrades ---------------------------------------------------------------------------

    async def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        """Bring the table layout and every older record up to this version.

        One transaction per step and per run, under an advisory lock that keeps
        a second migrator waiting (`durable_agent.backends._postgres_migrate`),
        so it is safe while workers use the store and to run again after a crash.
        """
        self._check_open()
        return await migration.migrate(self, dry_run)

    # -- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit the writes already queued, then close every connection; idempotent."""
        await self._close_links()
