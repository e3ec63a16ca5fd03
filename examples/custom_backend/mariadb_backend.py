"""A complete custom backend: durable-agent runs in MariaDB (or MySQL), with PyMySQL.

Goal: show everything a store needs to pass durable-agent's conformance suite,
in one small file a backend author can copy, for a store durable-agent does
not ship. It is deliberately plain:

* the driver is synchronous (PyMySQL, pure Python), so every call runs one
  whole transaction in a worker thread (`asyncio.to_thread`), one at a time on
  the backend's connection; nothing is bound to an event loop;
* every write is one transaction that locks the run's row (``SELECT … FOR
  UPDATE``), decides with the shared rules of `durable_agent.backend`
  (`check_append`, `check_lease_acquire`) exactly as the in-memory reference
  does, and writes; so two processes, or two hosts, can never both win a
  ``seq``;
* records are serialized only by `durable_agent.records` (``encode_events``,
  ``encode_event``, ``encode_header``), never pickled; the columns next to the header text
  exist only so that listing can filter and sort in SQL;
* a damaged record raises `CorruptRunError` for its own run; a listing reports
  a run whose header it cannot read in `RunPage.unreadable` (`make_page` puts
  it on the right page), and prune keeps it; a lost connection raises
  `StoreUnavailableError`.

Lease expiry here is judged by each client's clock (``time.time()``), which
is fine for hosts kept in sync by NTP; the built-in `PostgresBackend` uses the
server's clock instead.

Run with: ``pip install PyMySQL`` and a MariaDB you can reach, then ``pytest
examples/custom_backend`` (see docs/backends.md). The tests read
``DURABLE_AGENT_TEST_MARIADB_URL`` (default ``mysql://root@127.0.0.1:3306/test``).
Use it from an agent with::

    from durable_agent.registry import register_backend
    register_backend("mysql", "examples.custom_backend.mariadb_backend:MariaDbBackend")
    agent = Agent(model, db="mysql://app:secret@db.internal:3306/agents")
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import pymysql

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
    mark_secret,
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
    encode_events,
    encode_header,
    utcnow,
)

__all__ = ["MariaDbBackend"]

T = TypeVar("T")
Cursor = Any  # pymysql.cursors.Cursor; PyMySQL ships no type information

# utf8mb4 with a binary collation: any Unicode run id, compared exactly.
_TABLES = (
    """CREATE TABLE IF NOT EXISTS durable_runs (
        run_id VARCHAR(255) PRIMARY KEY,
        header LONGTEXT NOT NULL,
        session_id VARCHAR(255), user_id VARCHAR(255), state VARCHAR(32) NOT NULL,
        created_at DOUBLE NOT NULL, updated_at DOUBLE NOT NULL,
        KEY by_created (created_at, run_id)
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin ENGINE = InnoDB""",
    """CREATE TABLE IF NOT EXISTS durable_events (
        run_id VARCHAR(255) NOT NULL, seq INTEGER NOT NULL, body LONGTEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin ENGINE = InnoDB""",
)


class MariaDbBackend(Backend):
    """Runs in two InnoDB tables (``durable_runs``, ``durable_events``) of one database."""

    capabilities = frozenset({Capability.DURABLE, Capability.CROSS_PROCESS})

    def __init__(
        self, url: str, *, session_id: str | None = None, user_id: str | None = None
    ) -> None:
        super().__init__(session_id=session_id, user_id=user_id)
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb") or not parts.path.strip("/"):
            raise ConfigurationError("MariaDbBackend wants mysql://user@host:port/database")
        if parts.password:
            mark_secret(unquote(parts.password))  # never in stored data or error text
        self.url = url
        self.database = unquote(parts.path.strip("/"))
        self._connect_args = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "database": self.database,
            "charset": "utf8mb4",
            "autocommit": False,
            "connect_timeout": 10,
        }
        self._conn: Any = None
        self._mutex = threading.Lock()  # one transaction at a time on the connection
        self._closed = False

    # -- connection and transactions ---------------------------------------------------------

    async def _transaction(self, work: Callable[[Cursor], T]) -> T:
        """Run ``work(cursor)`` as one transaction in a worker thread; commit or roll back."""
        if self._closed:
            raise StoreUnavailableError(f"MariaDbBackend({self.database!r}) is closed")
        return await asyncio.to_thread(self._in_thread, work)

    def _in_thread(self, work: Callable[[Cursor], T]) -> T:
        with self._mutex:
            try:
                if self._closed:
                    raise StoreUnavailableError(f"MariaDbBackend({self.database!r}) is closed")
                if self._conn is None:
                    self._conn = pymysql.connect(**self._connect_args)
                    with self._conn.cursor() as cur:
                        # Locking reads see the latest commit; no gap locks between creators.
                        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        for statement in _TABLES:
                            cur.execute(statement)
                try:
                    with self._conn.cursor() as cur:
                        result = work(cur)
                    self._conn.commit()
                    return result
                except BaseException:
                    self._conn.rollback()
                    raise
            except pymysql.OperationalError as exc:
                self._conn = None
                host = self._connect_args["host"]
                raise StoreUnavailableError(
                    f"MariaDB store {host}/{self.database} unavailable: {exc.args[-1]}"
                ) from exc

    @staticmethod
    def _locked_header(cur: Cursor, run_id: str) -> RunHeader:
        """Read the run's header and lock its row until the transaction ends."""
        cur.execute("SELECT header FROM durable_runs WHERE run_id = %s FOR UPDATE", (run_id,))
        row = cur.fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        return decode_header(run_id, row[0])

    @staticmethod
    def _save_header(cur: Cursor, header: RunHeader) -> None:
        cur.execute(
            "UPDATE durable_runs SET header = %s, state = %s, updated_at = %s WHERE run_id = %s",
            (encode_header(header), header.state.value, header.updated_at.timestamp(),
             header.run_id),
        )

    # -- runs ------------------------------------------------------------------------------------

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        row = (header.run_id, encode_header(header), header.session_id, header.user_id,
               header.state.value, header.created_at.timestamp(), header.updated_at.timestamp())
        bodies = [(header.run_id, e.seq, encode_event(e)) for e in events]

        def work(cur: Cursor) -> None:
            try:
                cur.execute(
                    "INSERT INTO durable_runs (run_id, header, session_id, user_id, state,"
                    " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    row,
                )
            except pymysql.IntegrityError as exc:  # 1062: the primary key is taken
                raise RunExistsError(header.run_id) from exc
            cur.execute("DELETE FROM durable_events WHERE run_id = %s", (header.run_id,))
            cur.executemany(
                "INSERT INTO durable_events (run_id, seq, body) VALUES (%s, %s, %s)", bodies
            )

        await self._transaction(work)

    async def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        lease: Lease,
        release: bool = False,
    ) -> Lease:
        # The engine's events arrive encoded already: `encode_events` returns their texts.
        texts = encode_events(events)
        bodies = [(run_id, e.seq, text) for e, text in zip(events, texts, strict=True)]

        def work(cur: Cursor) -> Lease:
            header = self._locked_header(cur, run_id)
            check_append(header, events, expected_seq=expected_seq, lease=lease)
            renewed = lease.model_copy(
                update={
                    "expires_at": time.time() + lease.ttl,
                    "cancel_requested": header.cancel_requested,
                }
            )
            last = events[-1] if events else None
            self._save_header(
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
            cur.executemany(
                "INSERT INTO durable_events (run_id, seq, body) VALUES (%s, %s, %s)", bodies
            )
            return renewed

        return await self._transaction(work)

    async def load_run(self, run_id: str) -> StoredRun:
        def work(cur: Cursor) -> tuple[str, list[tuple[int, str]]]:
            # The row lock keeps an append from landing between the two reads.
            cur.execute(
                "SELECT header FROM durable_runs WHERE run_id = %s LOCK IN SHARE MODE", (run_id,)
            )
            row = cur.fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            cur.execute(
                "SELECT seq, body FROM durable_events WHERE run_id = %s ORDER BY seq", (run_id,)
            )
            return row[0], list(cur.fetchall())

        text, rows = await self._transaction(work)
        header = decode_header(run_id, text)
        events = tuple(decode_event(run_id, seq, body) for seq, body in rows)
        if [e.seq for e in events] != list(range(1, header.seq + 1)):
            raise CorruptRunError(run_id, header.seq, "the event log does not match the header")
        return StoredRun(header=header, events=events)

    async def get_run(self, run_id: str) -> RunHeader:
        def work(cur: Cursor) -> str:
            cur.execute("SELECT header FROM durable_runs WHERE run_id = %s", (run_id,))
            row = cur.fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            return str(row[0])

        return decode_header(run_id, await self._transaction(work))

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
            wanted = [RunState(s).value for s in states]
            if not wanted:
                return RunPage(runs=(), next_cursor=None)
            where.append(f"state IN ({', '.join(['%s'] * len(wanted))})")
            params.extend(wanted)
        if created_after is not None:
            where.append("created_at > %s")
            params.append(created_after.timestamp())
        if created_before is not None:
            where.append("created_at < %s")
            params.append(created_before.timestamp())
        if cursor:
            where.append("(created_at, run_id) < (%s, %s)")
            params.extend(decode_cursor(cursor))
        query = (
            "SELECT run_id, header, created_at FROM durable_runs WHERE " + " AND ".join(where)
            + " ORDER BY created_at DESC, run_id DESC"
        )

        def work(cur: Cursor) -> list[tuple[str, str, float]]:
            cur.execute(query, params)
            return list(cur.fetchall())

        found: list[RunHeader] = []
        unreadable: list[tuple[Position | None, UnreadableRun]] = []
        for run_id, text, created_at in await self._transaction(work):
            try:
                found.append(decode_header(run_id, text))
            except CorruptRunError as exc:
                # Listed, not skipped: the columns still place it and filter it.
                unreadable.append(((created_at, run_id), UnreadableRun.from_error(run_id, exc)))
                continue
            if len(found) > limit:
                break
        return make_page(found, limit=limit, unreadable=unreadable)

    async def delete_run(self, run_id: str) -> bool:
        def work(cur: Cursor) -> bool:
            cur.execute("DELETE FROM durable_events WHERE run_id = %s", (run_id,))
            return bool(cur.execute("DELETE FROM durable_runs WHERE run_id = %s", (run_id,)))

        return await self._transaction(work)

    async def prune(
        self,
        *,
        older_than: datetime,
        states: Collection[RunState] = (RunState.DONE, RunState.CANCELLED),
    ) -> int:
        wanted = [RunState(s).value for s in states]
        if not wanted:
            return 0

        def work(cur: Cursor) -> int:
            marks = ", ".join(["%s"] * len(wanted))
            cur.execute(
                f"SELECT run_id, header FROM durable_runs WHERE state IN ({marks})"
                " AND updated_at < %s FOR UPDATE SKIP LOCKED",
                (*wanted, older_than.timestamp()),
            )
            doomed = []
            for run_id, text in cur.fetchall():
                try:
                    header = decode_header(run_id, text)
                except CorruptRunError:
                    continue  # never deleted by a sweep
                live = header.lease is not None and header.lease.expires_at > time.time()
                if header.state.value in wanted and header.updated_at < older_than and not live:
                    doomed.append(run_id)
            for run_id in doomed:
                cur.execute("DELETE FROM durable_events WHERE run_id = %s", (run_id,))
                cur.execute("DELETE FROM durable_runs WHERE run_id = %s", (run_id,))
            return len(doomed)

        return await self._transaction(work)

    async def request_cancel(self, run_id: str, reason: str) -> RunHeader:
        def work(cur: Cursor) -> RunHeader:
            header = self._locked_header(cur, run_id)
            if header.cancel_requested is None:
                header = header.model_copy(update={"cancel_requested": reason})
                self._save_header(cur, header)
            return header

        return await self._transaction(work)

    # -- leases ----------------------------------------------------------------------------------

    async def acquire_lease(
        self, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None = None
    ) -> Lease:
        def work(cur: Cursor) -> Lease:
            header = self._locked_header(cur, run_id)
            lease = check_lease_acquire(header, owner, ttl=ttl, takeover=takeover, now=time.time())
            update = {"lease": lease, "lease_generation": lease.generation}
            self._save_header(cur, header.model_copy(update=update))
            return lease

        return await self._transaction(work)

    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        def work(cur: Cursor) -> Lease:
            header = self._locked_header(cur, run_id)
            if header.lease is None or header.lease_generation != lease.generation:
                raise LeaseLostError(run_id, f"lease generation {lease.generation} was taken over")
            renewed = lease.model_copy(
                update={
                    "expires_at": time.time() + lease.ttl,
                    "cancel_requested": header.cancel_requested,
                }
            )
            self._save_header(cur, header.model_copy(update={"lease": renewed}))
            return renewed

        return await self._transaction(work)

    async def release_lease(self, run_id: str, lease: Lease) -> None:
        def work(cur: Cursor) -> None:
            header = self._locked_header(cur, run_id)
            if header.lease is not None and header.lease_generation == lease.generation:
                self._save_header(cur, header.model_copy(update={"lease": None}))

        try:
            await self._transaction(work)
        except RunNotFoundError:
            return

    # -- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        def shut() -> None:
            with self._mutex:
                self._closed = True
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

        await asyncio.to_thread(shut)
