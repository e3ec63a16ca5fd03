"""SQLite's group commit: one writer task per event loop, one transaction per batch.

Every write of a `SqliteBackend` is queued here. The writer takes all the
writes queued while the previous commit was running and applies them in one
transaction with one commit (one fsync), in one hop to aiosqlite's thread;
each write keeps its own checks, so a refused append fails alone and the rest
of its batch commits. When its event loop shuts down, the writer flushes the
queue and closes that loop's connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import aiosqlite

import durable_agent.backend as contract
from durable_agent.backends import _sqlite_batch as batching
from durable_agent.errors import ConfigurationError, StoreUnavailableError

__all__ = ["Link", "Stats"]

T = TypeVar("T")


@dataclass(slots=True)
class Stats:
    """Counters the tests read to see group commit at work."""

    commits: int = 0
    batches: int = 0
    writes: int = 0


class Link:
    """One event loop's connection to the file, its write queue and its writer task."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: aiosqlite.Connection,
        execute: Callable[..., Awaitable[Any]],
        raw: sqlite3.Connection,
        path: str,
        max_batch: int,
        stats: Stats,
    ) -> None:
        self.loop = loop
        self.conn = conn
        self._execute = execute
        self.raw = raw
        self.path = path
        self.max_batch = max_batch
        self.stats = stats
        self.pending: deque[batching.Write[Any] | batching.Append] = deque()
        self.wakeup = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None
        self.closing = False
        self.closed = False
        self.close_error: BaseException | None = None

    @property
    def usable(self) -> bool:
        return not self.closing and self.writer is not None and not self.writer.done()

    async def execute(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(raw_connection, *args)`` in aiosqlite's thread, one hop."""
        return cast(T, await self._execute(fn, self.raw, *args))

    def submit(self, run_id: str, apply: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self.loop.create_future()
        self.pending.append(batching.Write(run_id, apply, future))
        self.wakeup.set()
        return future

    async def write_loop(self) -> None:
        """Commit queued writes a batch at a time until closed; then close the connection."""
        try:
            while self.pending or not self.closing:
                if not self.pending:
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                await self._commit_next()
        except asyncio.CancelledError:
            # The event loop is shutting down (asyncio.run cancels leftover
            # tasks): commit what callers still wait for, then close.
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
                            f"SQLite store {self.path} was closed before this write started; "
                            "nothing was stored"
                        )
                    )
            self.pending.clear()
            try:
                await self.conn.close()
            except Exception as exc:
                self.close_error = exc
            finally:
                self.closed = True

    async def _commit_next(self) -> None:
        pending = self.pending
        if len(pending) <= self.max_batch:  # the usual case: take the whole queue at once
            taken = list(pending)
            pending.clear()
        else:
            taken = [pending.popleft() for _ in range(self.max_batch)]
        # A write whose caller was cancelled before it started is dropped.
        writes = [write for write in taken if not write.future.done()]
        if not writes:
            return
        batch = batching.Batch(writes)
        try:
            await self.execute(batching.apply_batch, batch, self.path)
        except asyncio.CancelledError:
            # The batch runs on in SQLite's thread and may commit. A no-op
            # queued behind it tells when it ended, so its callers still learn
            # whether their write is stored.
            with suppress(Exception):
                await self.execute(batching.noop)
            self._settle(batch)
            raise
        except Exception as exc:  # aiosqlite refused the call: the connection is gone
            batch.error = StoreUnavailableError(f"SQLite store {self.path}: {exc}")
            batch.error.__cause__ = exc
        self._settle(batch)

    def _settle(self, batch: batching.Batch) -> None:
        self.stats.batches += 1
        self.stats.writes += len(batch.writes)
        if batch.committed:
            self.stats.commits += 1
            observe = contract.commit_observer
            if observe is not None:
                with suppress(Exception):  # telemetry never fails a write
                    observe("sqlite", [write.run_id for write in batch.writes])
        if batch.error is None and batch.committed:  # the usual case
            for write in batch.writes:
                future = write.future
                if future.done():
                    continue
                if write.error is None:
                    cast("asyncio.Future[Any]", future).set_result(write.result)
                else:
                    future.set_exception(write.error)
            return
        for write in batch.writes:
            if write.future.done():
                continue
            if batch.error is not None:
                # One exception object per caller: each raise rewrites its traceback.
                error = StoreUnavailableError(*batch.error.args)
                error.__cause__ = batch.error.__cause__
                write.future.set_exception(error)
            elif write.error is not None:
                write.future.set_exception(write.error)
            elif batch.committed:
                cast("asyncio.Future[Any]", write.future).set_result(write.result)
            else:  # the batch never reached its end (the thread was interrupted)
                write.future.set_exception(
                    StoreUnavailableError(f"SQLite store {self.path}: the write was not committed")
                )

    async def shutdown(self) -> None:
        """Flush the queue and close the connection (from this link's own loop)."""
        writer = self.writer
        if writer is not None and not writer.done():
            self.closing = True
            self.wakeup.set()
            await asyncio.wait([writer])
        elif not self.closed:
            await self.abandon()

    async def abandon(self) -> None:
        """Close a connection left open by an event loop that ended without cancelling it."""
        if self.closed:
            return
        if self.loop.is_running() and self.loop is not asyncio.get_running_loop():
            raise ConfigurationError(
                f"SqliteBackend({self.path!r}) is in use by an event loop running in another "
                "thread; create one backend per event loop"
            )
        self.closed = self.closing = True
        self.pending.clear()  # their futures belong to the loop that is gone
        stop = self.conn.stop()  # queues the close in SQLite's thread, behind its work
        if stop is not None:
            await asyncio.wait([stop], timeout=30)


# -- the backend ---------------------------------------------------------------------------
