"""A complete custom backend: durable-agent runs in PostgreSQL, with psycopg 3.

Goal: show everything a store needs to pass durable-agent's conformance suite,
in one small file a backend author can copy. It is deliberately plain:

* every write is one transaction that locks the run's row (``SELECT … FOR
  UPDATE``), decides with the shared rules of `durable_agent.backend`
  (`check_append`, `check_lease_acquire`) exactly as the in-memory reference
  does, and writes; so two processes, or two hosts, can never both win a
  ``seq``;
* records are serialized only by `durable_agent.records` (``encode_event``,
  ``encode_header``), never pickled; the columns next to the header text
  exist only so that listing can filter and sort in SQL;
* a damaged record raises `CorruptRunError` for its own run; a listing reports
  a run whose header it cannot read in `RunPage.unreadable` (`make_page` puts
  it on the right page), and prune keeps it; a lost connection raises
  `StoreUnavailableError`.

Run with: ``pip install "psycopg[binary]"`` and a PostgreSQL you can reach, then
``pytest examples/custom_backend`` (see docs/backends.md). The tests read
``DURABLE_AGENT_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1/test``).
Use it from an agent with::

    from durable_agent.registry import register_backend
    register_backend("postgresql", "examples.custom_backend.postgres_backend:PostgresBackend")
    agent = Agent(model, db="postgresql://app@db.internal/agents?schema=runs")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from durable_agent.backend import (
    Backend,
    Capability,
    LeaseOwner,
    Position,
    RunPage,
    UnreadableRun,
    check_append,
    check_lease_acquire,
    decode_cursor,
    make_page,
)
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
    encode_header,
    utcnow,
)

__all__ = ["PostgresBackend"]

_TABLES = (
    """CREATE TABLE IF NOT EXISTS {runs} (
        run_id TEXT PRIMARY KEY,
        header TEXT NOT NULL,
        session_id TEXT, user_id TEXT, state TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS {by_created} ON {runs} (created_at DESC, run_id DESC)",
    """CREATE TABLE IF NOT EXISTS {events} (
        run_id TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (run_id, seq))""",
)


class PostgresBackend(Backend):
    """Runs in two PostgreSQL tables (``runs``, ``events``) of one schema."""

    capabilities = frozenset({Capability.DURABLE, Capability.CROSS_PROCESS})

    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> None:
        super().__init__(session_id=session_id, user_id=user_id)
        self.url, self.schema = url, schema
        self._names = {
            "runs": sql.Identifier(schema, "durable_runs"),
            "events": sql.Identifier(schema, "durable_events"),
            "by_created": sql.Identifier("durable_runs_by_created"),
        }
        # psycopg's async connections belong to the loop that opened them: one per loop.
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(**self._names)

    # -- connection and transactions ---------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """One transaction on this loop's connection; driver errors become store errors."""
        if self._closed:
            raise StoreUnavailableError(f"PostgresBackend({self.schema!r}) is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._lock is None:
            if self._conn is not None:
                self._conn.pgconn.finish()  # its loop is gone: close without awaiting
            self._loop, self._lock, self._conn = loop, asyncio.Lock(), None
        async with self._lock:  # one connection runs one transaction at a time
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(self.url)
                    async with self._conn.transaction(), self._conn.cursor() as cur:
                        for statement in _TABLES:
                            await cur.execute(self._q(statement))
                async with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
            except psycopg.OperationalError as exc:
                raise StoreUnavailableError(f"PostgreSQL store unavailable: {exc}") from exc

    async def _locked_header(self, cur: psycopg.AsyncCursor[Any], run_id: str) -> RunHeader:
        """Read the run's header and lock its row until the transaction ends."""
        await cur.execute(
            self._q("SELECT header FROM {runs} WHERE run_id = %s FOR UPDATE"), (run_id,)
        )
        row = await cur.fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        return decode_header(run_id, row[0])

    async def _save_header(self, cur: psycopg.AsyncCursor[Any], header: RunHeader) -> None:
        await cur.execute(
            self._q(
                "UPDATE {runs} SET header = %s, state = %s, updated_at = %s WHERE run_id = %s"
            ),
            (encode_header(header), header.state.value, header.updated_at.timestamp(),
             header.run_id),
        )

    # -- runs ------------------------------------------------------------------------------------

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        async with self._transaction() as cur:
            await cur.execute(
                self._q(
                    "INSERT INTO {runs} (run_id, header, session_id, user_id, state, created_at,"
                    " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
                ),
                (header.run_id, encode_header(header), header.session_id, header.user_id,
                 header.state.value, header.created_at.timestamp(), header.updated_at.timestamp()),
            )
            if cur.rowcount == 0:
                raise RunExistsError(header.run_id)
            await cur.execute(self._q("DELETE FROM {events} WHERE run_id = %s"), (header.run_id,))
            await cur.executemany(
                self._q("INSERT INTO {events} (run_id, seq, body) VALUES (%s, %s, %s)"),
                [(header.run_id, e.seq, encode_event(e)) for e in events],
            )

    async def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        lease: Lease,
        release: bool = False,
    ) -> Lease:
        async with self._transaction() as cur:
            header = await self._locked_header(cur, run_id)
            check_append(header, events, expected_seq=expected_seq, lease=lease)
            renewed = lease.model_copy(
                update={
                    "expires_at": time.time() + lease.ttl,
                    "cancel_requested": header.cancel_requested,
                }
            )
            last = events[-1] if events else None
            await self._save_header(
                cur,
                header.model_copy(
                    update={
                        "seq": last.seq if last else header.seq,
                        "state": last.state if last else header.state,
                        "updated_at": utcnow(),
                        "lease": None if release else renewed,
                    }
                ),
            )
            await cur.executemany(
                self._q("INSERT INTO {events} (run_id, seq, body) VALUES (%s, %s, %s)"),
                [(run_id, e.seq, encode_event(e)) for e in events],
            )
            return renewed

    async def load_run(self, run_id: str) -> StoredRun:
        async with self._transaction() as cur:
            await cur.execute(self._q("SELECT header FROM {runs} WHERE run_id = %s"), (run_id,))
            row = await cur.fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            await cur.execute(
                self._q("SELECT seq, body FROM {events} WHERE run_id = %s ORDER BY seq"), (run_id,)
            )
            rows = await cur.fetchall()
        header = decode_header(run_id, row[0])
        events = tuple(decode_event(run_id, seq, body) for seq, body in rows)
        if [e.seq for e in events] != list(range(1, header.seq + 1)):
            raise CorruptRunError(run_id, header.seq, "the event log does not match the header")
        return StoredRun(header=header, events=events)

    async def get_run(self, run_id: str) -> RunHeader:
        async with self._transaction() as cur:
            await cur.execute(self._q("SELECT header FROM {runs} WHERE run_id = %s"), (run_id,))
            row = await cur.fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        return decode_header(run_id, row[0])

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
        if limit < 1:
            raise ConfigurationError(f"list_runs(limit={limit}) must be at least 1")
        where: list[str] = ["TRUE"]
        params: list[object] = []
        for column, value in (("session_id", session_id), ("user_id", user_id)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if states is not None:
            where.append("state = ANY(%s)")
            params.append([RunState(s).value for s in states])
        if created_after is not None:
            where.append("created_at > %s")
            params.append(created_after.timestamp())
        if created_before is not None:
            where.append("created_at < %s")
            params.append(created_before.timestamp())
        if cursor:
            where.append("(created_at, run_id) < (%s, %s)")
            params.extend(decode_cursor(cursor))
        query = self._q(
            "SELECT run_id, header, created_at FROM {runs} WHERE " + " AND ".join(where)
            + " ORDER BY created_at DESC, run_id DESC"
        )
        found: list[RunHeader] = []
        unreadable: list[tuple[Position | None, UnreadableRun]] = []
        async with self._transaction() as cur:
            async for run_id, text, created_at in cur.stream(query, params):
                try:
                    found.append(decode_header(run_id, text))
                except CorruptRunError as exc:
                    # Listed, not skipped: the columns still place it and filter it.
                    place = (created_at, run_id)
                    unreadable.append((place, UnreadableRun.from_error(run_id, exc)))
                    continue
                if len(found) > limit:
                    break
        return make_page(found, limit=limit, unreadable=unreadable)

    async def delete_run(self, run_id: str) -> bool:
        async with self._transaction() as cur:
            await cur.execute(self._q("DELETE FROM {events} WHERE run_id = %s"), (run_id,))
            await cur.execute(self._q("DELETE FROM {runs} WHERE run_id = %s"), (run_id,))
            return cur.rowcount > 0

    async def prune(
        self,
        *,
        older_than: datetime,
        states: Collection[RunState] = (RunState.DONE, RunState.CANCELLED),
    ) -> int:
        wanted = [RunState(s).value for s in states]
        async with self._transaction() as cur:
            await cur.execute(
                self._q(
                    "SELECT run_id, header FROM {runs} WHERE state = ANY(%s) AND updated_at < %s"
                    " FOR UPDATE SKIP LOCKED"
                ),
                (wanted, older_than.timestamp()),
            )
            doomed = []
            for run_id, text in await cur.fetchall():
                try:
                    header = decode_header(run_id, text)
                except CorruptRunError:
                    continue  # never deleted by a sweep
                live = header.lease is not None and header.lease.expires_at > time.time()
                if header.state.value in wanted and header.updated_at < older_than and not live:
                    doomed.append(run_id)
            await cur.execute(self._q("DELETE FROM {events} WHERE run_id = ANY(%s)"), (doomed,))
            await cur.execute(self._q("DELETE FROM {runs} WHERE run_id = ANY(%s)"), (doomed,))
            return len(doomed)

    async def request_cancel(self, run_id: str, reason: str) -> RunHeader:
        async with self._transaction() as cur:
            header = await self._locked_header(cur, run_id)
            if header.cancel_requested is None:
                header = header.model_copy(update={"cancel_requested": reason})
                await self._save_header(cur, header)
            return header

    # -- leases ----------------------------------------------------------------------------------

    async def acquire_lease(
        self, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None = None
    ) -> Lease:
        async with self._transaction() as cur:
            header = await self._locked_header(cur, run_id)
            lease = check_lease_acquire(header, owner, ttl=ttl, takeover=takeover, now=time.time())
            update = {"lease": lease, "lease_generation": lease.generation}
            await self._save_header(cur, header.model_copy(update=update))
            return lease

    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        async with self._transaction() as cur:
            header = await self._locked_header(cur, run_id)
            if header.lease is None or header.lease_generation != lease.generation:
                raise LeaseLostError(run_id, f"lease generation {lease.generation} was taken over")
            renewed = lease.model_copy(
                update={
                    "expires_at": time.time() + lease.ttl,
                    "cancel_requested": header.cancel_requested,
                }
            )
            await self._save_header(cur, header.model_copy(update={"lease": renewed}))
            return renewed

    async def release_lease(self, run_id: str, lease: Lease) -> None:
        try:
            async with self._transaction() as cur:
                header = await self._locked_header(cur, run_id)
                if header.lease is not None and header.lease_generation == lease.generation:
                    await self._save_header(cur, header.model_copy(update={"lease": None}))
        except RunNotFoundError:
            return

    # -- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._loop is asyncio.get_running_loop():
            await conn.close()
        else:
            conn.pgconn.finish()
