"""PostgreSQL's group commit: one writer connection per event loop, one transaction per batch.

Every write of a `PostgresBackend` (creates, appends, lease changes) is one
statement queued here. The writer takes all the statements queued while the
previous commit was running and sends them as one transaction in one message
(the statements of a simple query, bound by the client, which the server runs
as one implicit transaction; a batch merged into one statement goes as it is):
one network round trip and one WAL flush for the whole batch, and never a
transaction left open on the server while the client is frozen or cut off
halfway through sending it. A lone write is sent on its own, in autocommit.

Writes of one kind (appends, renewals, releases, acquisitions, creates) of distinct
runs are merged into one statement that takes them as arrays: a batch of one
kind is then one prepared statement in autocommit, whatever its size, where
several statements would go as a simple query, parsed and planned each time
(128 runs renewing at once, a statement each, ran at half the throughput of
the pipeline this one message replaced; merged, at several times it, see
``benchmarks/bench_postgres_writer.py``).

Each write keeps its own check. A refusal (stale seq, lost lease) is not an
error in SQL: the statement's ``WHERE`` matches no row and returns none, and
the rest of the batch commits. A statement PostgreSQL rejects (a key that is
already there, a deadlock) aborts the whole transaction; the writer then
sends the batch's writes again one by one, so only the guilty one fails.
Each statement takes its rows in run-id order, so two processes' batches of
one kind lock them in one order; two that deadlock anyway (batches of several
kinds) are the rejected case above: the server aborts one, whose writes then
go again one by one.

When its event loop shuts down (``asyncio.run`` cancels leftover tasks), the
writer commits what callers still wait for, then closes its connection.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Final, cast

import psycopg

from durable_agent.backends import _postgres_wire as wire
from durable_agent.backends._postgres_wakeup import is_queue_full
from durable_agent.errors import StoreUnavailableError

_TUPLES_OK: Final = psycopg.pq.ExecStatus.TUPLES_OK

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
    statements: int = 0
    """Statements the batches were sent as (a merged one counts once; retries not counted)."""
    direct: int = 0
    """Batches of one write that its caller's task committed, the writer being idle."""
    wire: int = 0
    """Statements sent straight on libpq (`_postgres_wire`) rather than through psycopg."""


Merge = Callable[[list[dict[str, object]]], tuple[str, Params]]
"""Builds one statement doing several runs' writes of one kind: their parameters -> (query, params).

Its rows are ``(ordinality, *the single write's row)``; a refused write has none.
"""


@dataclass(eq=False, slots=True)
class _Write:
    run_id: str
    query: str
    params: Params
    future: asyncio.Future[Rows]
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
        merges: Mapping[str, Merge],
        *,
        notify: str,
    ) -> None:
        self.loop = loop
        self.merges = merges
        """How writes merge, by the text of the single write's statement; the
        statements whose writes share one merge are one kind."""
        self.notify = notify
        self._connect = connect
        self.where = where
        self.max_batch = max_batch
        self.stats = stats
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self._cursor: psycopg.AsyncCursor[Any] | None = None
        self._binder: psycopg.AsyncClientCursor[Any] | None = None
        self._wire: wire.Wire | None = None
        self.pending: deque[_Write] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self._committing = False
        """The writer's task is sending a batch."""
        self._held = False
        """A caller's task holds the connection (`write`): the writer's task waits."""
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
        notify: bool = False,
    ) -> asyncio.Future[Rows]:
        """Queue one statement; the future gets its rows once its batch committed.

        A write whose ``query`` is a key of `merges` (its ``params`` a dict that
        merge accepts) shares one statement with the batch's other writes of
        that kind. A ``notify`` write wakes the store's waiters: its batch's
        transaction sends one notification, however many such writes it holds.
        """
        future: asyncio.Future[Rows] = self.loop.create_future()
        self.pending.append(_Write(run_id, query, params, future, notify))
        self.wakeup.set()
        return future

    async def write(
        self,
        run_id: str,
        query: str,
        params: Params,
        *,
        notify: bool = False,
    ) -> Rows:
        """One statement, as `submit` queues it; its rows once its batch committed.

        When the writer is idle (nothing queued, no batch in flight), the
        caller's own task commits the batch, so a lone write costs no hand-off
        to the writer's task and back (two passes of the event loop, ~50 us of
        the client's time on the test machine). The batch is the same either
        way. Queued, a write waits for the writer's task, which runs after the
        callbacks already waiting in the loop: the writes those make join its
        batch. So the caller first lets those callbacks run (one pass), and
        should any of them have queued a write, the writer's task commits them
        all, as it always did; no caller ever commits another's write. With no
        callback waiting, no write can join and the pass is skipped.
        """
        if self.pending or self._committing or self._held or self.closing:
            return await self.submit(run_id, query, params, notify=notify)
        write = _Write(run_id, query, params, self.loop.create_future(), notify)
        self.pending.append(write)
        self._held = True  # the writer's task starts no batch while this caller decides
        if _callbacks_waiting(self.loop):
            try:
                await asyncio.sleep(0)  # they run: the writes they queue share this batch
            except BaseException:
                write.future.cancel()  # not sent: the writer's task skips it
                self._release()
                raise
        if len(self.pending) != 1 or self.pending[0] is not write:
            self._release()
            return await write.future
        self.pending.popleft()
        self.stats.direct += 1
        try:
            await self._commit([write])
        finally:
            self._release()
        if write.error is not None:
            raise write.error
        return write.result or []

    def _release(self) -> None:
        """A caller is done with the connection: the writer's task takes what is queued."""
        self._held = False
        if self.pending or self.closing:
            self.wakeup.set()

    async def _loop(self) -> None:
        try:
            while self.pending or self._held or not self.closing:
                if self._held or not self.pending:
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                self._committing = True
                try:
                    await self._commit_next()
                finally:
                    self._committing = False
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
        if writes:
            await self._commit(writes)
            self._settle(writes)

    async def _commit(self, writes: list[_Write]) -> None:
        """Send ``writes`` as one batch; each gets its ``result`` or its ``error``."""
        writes.sort(key=lambda w: w.run_id)  # stable: one run's writes keep their order
        self.stats.batches += 1
        self.stats.writes += len(writes)
        self.stats.largest = max(self.stats.largest, len(writes))
        try:
            conn = await self._connection()
            if len(writes) == 1:
                self.stats.statements += 1
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
            write.result = await self._execute(conn, write.query, write.params)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise
            write.error = exc

    def _statements(self, writes: list[_Write]) -> list[tuple[str, Params, list[_Write]]]:
        """The batch as statements: the writes of one kind of distinct runs merged into one.

        One run's writes keep their order: each goes into the first statement
        of its kind after the one holding that run's previous write, or starts
        a new statement at the end. ``writes`` is sorted by run id, so a merged
        statement takes its runs' rows in that order.
        """
        groups: list[tuple[Merge | None, list[_Write]]] = []
        of_kind: dict[int, list[int]] = {}  # a kind's statements, by position in groups
        last: dict[str, int] = {}  # where each run's latest write is
        for write in writes:
            after = last.get(write.run_id, -1)
            place = -1
            merge = self.merges.get(write.query)
            if merge is not None:  # a kind is a merge: two statements may share one
                kind = of_kind.setdefault(id(merge), [])
                at = bisect_right(kind, after)
                if at < len(kind):
                    place = kind[at]
                    groups[place][1].append(write)
                else:
                    kind.append(len(groups))
            if place < 0:
                place = len(groups)
                groups.append((merge, [write]))
            last[write.run_id] = place
        statements: list[tuple[str, Params, list[_Write]]] = []
        for merge, group in groups:
            if merge is None or len(group) == 1:
                statements.append((group[0].query, group[0].params, group))
            else:
                merged, params = merge([cast(dict[str, object], w.params) for w in group])
                statements.append((merged, params, group))
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
        self.stats.statements += len(statements)
        notify = any(w.notify for w in writes)
        if len(statements) == 1 and not notify:
            query, params, _ = statements[0]
            results = [await self._execute(conn, query, params)]
        else:
            bind = self._binder
            if bind is None or bind.connection is not conn:
                bind = self._binder = psycopg.AsyncClientCursor(conn)
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

    async def _execute(
        self, conn: psycopg.AsyncConnection[Any], query: str, params: Params
    ) -> Rows:
        """One statement in autocommit, and its rows.

        Straight on libpq when its parameters are scalars (`_postgres_wire`:
        ~100 us less of the client's CPU per statement), else on the
        connection's one cursor: a new one per statement (what
        ``conn.execute`` makes) builds its adapters afresh and looks every
        parameter's dumper up again, ~20 us of the client's CPU per append.
        """
        if isinstance(params, dict) and (plan := wire.plan(query)) is not None:
            line = self._wire
            if line is None or line.conn is not conn:
                line = self._wire = wire.Wire(conn)
            encoded = line.encode(plan, params)
            if encoded is not None:
                rows = await line.run(plan, *encoded)
                if rows is not None:
                    self.stats.wire += 1
                    return rows
        cur = self._cursor
        if cur is None or cur.connection is not conn:
            cur = self._cursor = conn.cursor()
        await cur.execute(query, params)
        result = cur.pgresult
        if result is None or result.status != _TUPLES_OK:  # no RETURNING, no rows
            return []
        return await cur.fetchall()

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


def _callbacks_waiting(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a callback waits to run in ``loop`` before one scheduled now would.

    CPython's loops keep them in ``_ready`` (a handle cancelled there, such as
    a reader removed after it fired, never runs); for another loop (uvloop),
    assume one does.
    """
    waiting = getattr(loop, "_ready", None)
    if waiting is None:
        return True
    return any(not handle.cancelled() for handle in waiting)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
