"""PostgreSQL's group commit: one writer connection per event loop, one transaction per batch.

Every write of a `PostgresBackend` (creates, appends, lease changes) is one
statement queued here. The writer takes all the statements queued while the
previous commit was running and sends them as one transaction in one message
(the statements of a simple query, bound by the client, which the server runs
as one implicit transaction; a batch merged into one statement goes as it is):
one network round trip and one WAL flush for the whole batch, and never a
transaction left open on the server while the client is frozen or cut off
halfway through sending it. A lone write is sent on its own, in autocommit.

Each write keeps its own check. A refusal (stale seq, lost lease) is not an
error in SQL: the statement's ``WHERE`` matches no row and returns none, and
the rest of the batch commits. A statement PostgreSQL rejects (a key that is
already there, a deadlock) aborts the whole transaction; the writer then
sends the batch's writes again one by one, so only the guilty one fails.
Statements are sent sorted by run id, so two processes' batches lock rows in
one order and never deadlock each other.

When its event loop shuts down (``asyncio.run`` cancels leftover tasks), the
writer commits what callers still wait for, then closes its connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg

from durable_agent.backends._postgres_wakeup import is_queue_full
from durable_agent.errors import StoreUnavailableError

__all__ = ["Rows", "Stats", "Writer"]

Rows = list[tuple[Any, ...]]
"""What a write's statement returned."""

Params = dict[str, object] | tuple[object, ...]


@dataclass(slots=True)
class Stats:
    """Counters the tests and benchmarks read to see group commit at work."""

    batches: int = 0
    writes: int = 0
    largest: int = 0
    retried_alone: int = 0


Merge = Callable[[list[dict[str, object]]], tuple[str, Params]]
"""Builds one statement doing several runs' appends: their parameters -> (query, params).

Its rows are ``(ordinality, *the single append's row)``; a refused append has none.
"""


@dataclass(eq=False, slots=True)
class _Write:
    run_id: str
    query: str
    params: Params
    future: asyncio.Future[Rows]
    mergeable: bool = False
    notify: bool = False
    result: Rows | None = None
    error: BaseException | None = field(default=None)


class Writer:
    """One event loop's writer connection, its queue and its task."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        where: str,
        max_batch: int,
        stats: Stats,
        merge: Merge,
        *,
        notify: str,
    ) -> None:
        self.loop = loop
        self.merge = merge
        self.notify = notify
        self._connect = connect
        self.where = where
        self.max_batch = max_batch
        self.stats = stats
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.pending: deque[_Write] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.also_close: Callable[[], Awaitable[None]] | None = None
        """Closed with the writer's connection (the readers' pool of the same loop)."""
        self.on_queue_usage: Callable[[float], None] | None = None
        """Told the NOTIFY queue's usage that a notifying commit read (`_postgres_wakeup`)."""

    @property
    def usable(self) -> bool:
        return not self.closing and self.task is not None and not self.task.done()

    def start(self) -> None:
        self.task = self.loop.create_task(self._loop(), name=f"PostgresBackend writer {self.where}")

    def submit(
        self,
        run_id: str,
        query: str,
        params: Params,
        *,
        mergeable: bool = False,
        notify: bool = False,
    ) -> asyncio.Future[Rows]:
        """Queue one statement; the future gets its rows once its batch committed.

        A ``mergeable`` write is an append whose ``params`` `merge` accepts: in a
        batch, the appends of different runs become one statement. A ``notify``
        write wakes the store's waiters: its batch's transaction sends one
        notification, however many such writes it holds.
        """
        future: asyncio.Future[Rows] = self.loop.create_future()
        self.pending.append(_Write(run_id, query, params, future, mergeable, notify))
        self.wakeup.set()
        return future

    async def _loop(self) -> None:
        try:
            while self.pending or not self.closing:
                if not self.pending:
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                await self._commit_next()
        except asyncio.CancelledError:
            with suppress(asyncio.CancelledError):
                while self.pending:
                    await self._commit_next()
            raise
        finally:
            self.closing = True
            for write in self.pending:
                if not write.future.done():
                    write.future.set_exception(
                        StoreUnavailableError(
                            f"PostgreSQL store {self.where} was closed before this write "
                            "started; nothing was stored"
                        )
                    )
            self.pending.clear()
            conn, self.conn = self.conn, None
            if conn is not None:
                with suppress(Exception):
                    await conn.close()
            if self.also_close is not None:
                with suppress(Exception):
                    await self.also_close()

    async def _commit_next(self) -> None:
        writes: list[_Write] = []
        while self.pending and len(writes) < self.max_batch:
            write = self.pending.popleft()
            if not write.future.done():  # its caller was cancelled before it was sent
                writes.append(write)
        if not writes:
            return
        writes.sort(key=lambda w: w.run_id)  # stable: one run's writes keep their order
        self.stats.batches += 1
        self.stats.writes += len(writes)
        self.stats.largest = max(self.stats.largest, len(writes))
        try:
            conn = await self._connection()
            if len(writes) == 1:
                await self._alone(conn, writes[0])
            else:
                try:
                    await self._together(conn, writes)
                except psycopg.Error:
                    if conn.broken or conn.closed:
                        raise
                    # One statement aborted the transaction: nothing of the batch is
                    # stored. Alone, each write stands or falls by itself.
                    self.stats.retried_alone += 1
                    for write in writes:
                        write.result = write.error = None
                        await self._alone(conn, write)
        except psycopg.Error as exc:
            self._lost(exc)
            error = StoreUnavailableError(
                f"PostgreSQL store {self.where}: the connection failed during a commit "
                f"({_first_line(exc)}); these writes may or may not be stored, reload the run"
            )
            error.__cause__ = exc
            for write in writes:
                if write.result is None and write.error is None:
                    write.error = error
        except StoreUnavailableError as exc:
            for write in writes:
                write.error = exc
        self._settle(writes)

    async def _alone(self, conn: psycopg.AsyncConnection[Any], write: _Write) -> None:
        try:
            if write.notify:  # the statement and its notification: one transaction
                try:
                    await self._together(conn, [write])
                    return
                except psycopg.Error as exc:
                    # A full NOTIFY queue rolled it all back: store it without the wake-up.
                    if not is_queue_full(exc) or conn.broken or conn.closed:
                        raise
            cur = await conn.execute(write.query, write.params)
            write.result = await cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise
            write.error = exc

    def _statements(self, writes: list[_Write]) -> list[tuple[str, Params, list[_Write]]]:
        """The batch as statements: consecutive appends of distinct runs merged into one.

        ``writes`` is sorted by run id, so one run's writes are adjacent and keep
        their order: a second write of a run in a group starts the next statement.
        """
        statements: list[tuple[str, Params, list[_Write]]] = []
        group: list[_Write] = []

        def flush() -> None:
            if len(group) == 1:
                statements.append((group[0].query, group[0].params, [group[0]]))
            elif group:
                query, params = self.merge([cast(dict[str, object], w.params) for w in group])
                statements.append((query, params, list(group)))
            group.clear()

        for write in writes:
            if group and group[-1].run_id == write.run_id:
                flush()
            if write.mergeable:
                group.append(write)
            else:
                statements.append((write.query, write.params, [write]))
        flush()
        return statements

    async def _together(self, conn: psycopg.AsyncConnection[Any], writes: list[_Write]) -> None:
        """Commit ``writes`` in one transaction that reaches the server in one message.

        Never a transaction spread over several client messages (a pipeline's
        BEGIN, statements, COMMIT): a client frozen or cut off between them
        would leave the server waiting in the middle, its row locks held for as
        long (``idle_in_transaction_session_timeout`` does not count that wait),
        and the claims, which skip locked rows, could not take its runs over.
        One statement goes as it is, in autocommit; several go as one simple
        query, bound here, which the server runs as one implicit transaction.
        """
        statements = self._statements(writes)
        notify = any(w.notify for w in writes)
        if len(statements) == 1 and not notify:
            query, params, _ = statements[0]
            cur = await conn.execute(query, params)
            results = [await cur.fetchall() if cur.description else []]
        else:
            bind = psycopg.AsyncClientCursor(conn)
            parts = [bind.mogrify(query, params) for query, params, _ in statements]
            if notify:
                parts.append(self.notify)
            await bind.execute(";\n".join(parts))
            results = []
            for _ in statements:
                results.append(await bind.fetchall() if bind.description else [])
                bind.nextset()
            if notify and self.on_queue_usage is not None:
                usage = await bind.fetchone()
                if usage is not None:
                    self.on_queue_usage(float(usage[0]))
        for (_, _, answered), rows in zip(statements, results, strict=True):
            if len(answered) == 1:
                answered[0].result = rows
                continue
            for write in answered:
                write.result = []
            for ordinality, *row in rows:
                answered[ordinality - 1].result = [tuple(row)]

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = await self._connect()
        return self.conn

    def _lost(self, exc: BaseException) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()

    def _settle(self, writes: list[_Write]) -> None:
        for write in writes:
            if write.future.done():
                continue
            if write.error is not None:
                write.future.set_exception(write.error)
            else:
                write.future.set_result(write.result or [])

    async def shutdown(self) -> None:
        """Flush the queue and close the connection (from this writer's own loop)."""
        task = self.task
        self.closing = True
        self.wakeup.set()
        if task is not None and not task.done():
            await asyncio.wait([task])

    def abandon(self) -> None:
        """Drop a writer whose event loop ended without cancelling it."""
        self.closing = True
        self.pending.clear()
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
