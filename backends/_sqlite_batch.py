"""One group commit of `SqliteBackend`: the batch's writes in one transaction, in SQLite's thread.

The writer (`durable_agent.backends._sqlite_writer`) hands a `Batch` to
`apply_batch`, which runs in aiosqlite's thread and applies every write in one
transaction with one commit (one fsync). Each write keeps its own check, so a
refused write fails alone and the rest of the batch commits. The appends'
statements are built before, in the event loop
(`durable_agent.backends._sqlite_group`); this module runs them:

* Appends (the hot path) are queued as `Append` records, not closures, each
  with its statement rows already built. Every run of consecutive appends of
  distinct runs is a group with a handful of statements, built before the
  transaction: one compare-and-set per kind (``UPDATE runs ... FROM (VALUES
  ...)``: each row matches only its own run at its expected seq, lease
  generation and owner) and one multi-row ``INSERT`` of the accepted appends'
  events. When the compare-and-set changes fewer rows than the group has
  appends, one read finds the refused ones: they write nothing and say why. A
  second append of a run already in the group starts the next group, so it
  sees the first one's header. The cancellation requests of the group's runs
  are read after ``COMMIT``, so a request committed before the append's commit
  reaches its renewed lease.
* Why so few statements, and so little inside the transaction: the write lock
  is what two processes on one file share, and every ``sqlite3_step`` lets go
  of the GIL; taking it back from a busy event loop costs up to its 5 ms
  switch interval. One statement per row (``executemany``, ``RETURNING``)
  meant ~1,200 hand-offs per batch of 512, and a writer holding the lock ~3x
  longer than its CPU time. So a batch that starts with a group takes the lock
  at its compare-and-set (a deferred ``BEGIN``), and holds it across two
  hand-offs (after the compare-and-set and after the INSERT) instead of four;
  the reads and the renewed leases are outside it.
* No savepoint per write: a refused append changes no row. Only when a write
  fails *after* changing rows (a row SQLite rejects) is the transaction rolled
  back and the batch applied again write by write, each in its own savepoint,
  where that write fails alone.
* A failure of the store itself (lock timeout, I/O error, failed commit) rolls
  the whole transaction back and fails every write of the batch.
* No lock of our own between processes: an ``flock`` around each transaction
  (so a waiting process wakes at the other's commit instead of polling in
  SQLite's busy handler) was measured worse with two processes on two busy
  CPUs: strict turns meant ~70 hand-offs per 22,000 appends instead of ~18,
  each leaving the file idle ~20 ms while the waiter got a CPU and the GIL.

Outcomes are recorded on the batch, never raised, so they survive the writer
task being cancelled while this runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from durable_agent.backends import _sqlite_ops as ops
from durable_agent.backends._sqlite_group import (
    CANCELS_SQL,
    MAX_GROUP,
    REFUSED_SQL,
    WIDTH,
    Append,
    Group,
    insert_statements,
    make_group,
)
from durable_agent.errors import CorruptRunError, StoreUnavailableError

__all__ = ["Append", "Batch", "Write", "apply_batch", "noop"]

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Write(Generic[T]):
    """One queued write: ``apply`` runs in the batch's transaction; outcome set in the thread."""

    run_id: str
    apply: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    result: T | None = None
    error: BaseException | None = None


@dataclass(eq=False, slots=True)
class Batch:
    """The writes of one transaction, and its outcome: the store's error, or committed."""

    writes: list[Write[Any] | Append]
    error: StoreUnavailableError | None = None
    committed: bool = False


class _RolledBack(Exception):
    """A write was refused or failed after changing rows: apply the batch again, one by one."""


def apply_batch(db: sqlite3.Connection, batch: Batch, path: str) -> None:
    """Apply every write of ``batch`` in one transaction with one commit (module docstring).

    The statements are built before ``BEGIN``, the cancellation requests read
    and the leases built after ``COMMIT``, so the file's write lock is held only
    for SQLite's own work.
    """
    plan = _plan(batch.writes)
    # A group's first statement is its compare-and-set, a write: a deferred
    # BEGIN takes the write lock there (waiting in the busy handler like
    # BEGIN IMMEDIATE), so the lock is not held across the hand-off of the GIL
    # that follows BEGIN's own step. Any other write may read first, so it
    # takes the lock at BEGIN.
    begin = "BEGIN" if plan and type(plan[0]) is Group else "BEGIN IMMEDIATE"
    action = begin
    grouped = True
    try:
        db.execute(begin)
        try:
            action = _apply_plan(db, plan)
        except _RolledBack:
            db.execute("ROLLBACK")
            grouped = False
            for write in batch.writes:
                write.result = write.error = None
            db.execute("BEGIN IMMEDIATE")
            action = _apply_each(db, batch.writes)
        if db.in_transaction:
            action = "COMMIT"
            db.execute("COMMIT")
            batch.committed = True
    except Exception as exc:
        with suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        hint = ""
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            hint = "; another connection held the write lock longer than busy_timeout"
        error = StoreUnavailableError(
            f"SQLite store {path}: {action} failed ({exc}){hint}; the {len(batch.writes)} "
            "write(s) of this batch were rolled back, none was stored"
        )
        error.__cause__ = exc
        batch.error = error
    if batch.committed and grouped:
        for step in plan:
            if type(step) is Group:
                _read_cancels(db, step)
                _renewed(step)


def _plan(writes: list[Write[Any] | Append]) -> list[Group | Write[Any] | Append]:
    """The batch as steps: groups of appends (one compare-and-set each) and single writes."""
    plan: list[Group | Write[Any] | Append] = []
    group: list[Append] = []
    runs: set[str] = set()
    for write in writes:
        if type(write) is Append and write.in_order:
            if write.run_id in runs or len(group) >= MAX_GROUP:
                plan.append(make_group(group))
                group, runs = [], set()
            group.append(write)
            runs.add(write.run_id)
            continue
        if group:
            plan.append(make_group(group))
            group, runs = [], set()
        plan.append(write)
    if group:
        plan.append(make_group(group))
    return plan


def _apply_plan(db: sqlite3.Connection, plan: list[Group | Write[Any] | Append]) -> str:
    """The fast path: grouped appends, no savepoints. Returns what it did last (for errors)."""
    action = "BEGIN IMMEDIATE"
    for step in plan:
        if type(step) is Group:
            action = f"the appends of {len(step.appends)} run(s)"
            _append_group(db, step)
        else:
            assert not isinstance(step, Group)
            action = f"a write of run {step.run_id!r}"
            _apply_one(db, step)
    return action


def _apply_one(db: sqlite3.Connection, write: Write[Any] | Append) -> None:
    before = db.total_changes
    try:
        write.result = write.apply(db)
    except sqlite3.IntegrityError as exc:
        if db.total_changes != before:
            raise _RolledBack from exc
        write.error = _rejected(write.run_id, exc)
    except sqlite3.Error:
        raise
    except Exception as exc:  # this write's own refusal (or a bug): it fails alone
        if db.total_changes != before:
            raise _RolledBack from exc
        write.error = exc


def _append_group(db: sqlite3.Connection, group: Group) -> None:
    """One compare-and-set per kind and one event INSERT for ``group`` (distinct runs).

    The compare-and-set decides: each row matches only its own run at its
    expected seq, lease generation and owner. When it changed fewer rows than
    there are appends, one read finds the refused (they write nothing, and say
    why). Only SQLite's work and a few operations per statement run here, with
    the file's write lock held; the cancellation requests are read after COMMIT.
    """
    inserts = group.inserts
    now = group.now = time.time()
    before = db.total_changes
    for sql, params in group.cas:
        params.append(now)  # ``?{now}``, the statement's last parameter
        try:
            db.execute(sql, params)
        finally:
            params.pop()  # the list is the reads' too
    changed = db.total_changes - before
    refused: set[str] | None = None
    if changed != len(group.appends):
        rows = group.rows
        rows.append(now)
        try:
            found = db.execute(REFUSED_SQL(len(rows) // WIDTH), rows).fetchall()
        finally:
            rows.pop()
        refused = group.refused = {run_id for (run_id,) in found}
        if changed != len(group.appends) - len(refused):
            raise _RolledBack  # the read and the compare-and-set disagree: decide one by one
        kept: list[object] = []
        for write in group.appends:
            if write.run_id not in refused:
                kept += write.rows
        inserts = insert_statements(kept)
    try:
        for sql, params in inserts:
            db.execute(sql, params)
    except sqlite3.IntegrityError as exc:  # rows disagree: find whose, one by one
        raise _RolledBack from exc
    if not refused:
        return
    for write in group.appends:
        if write.run_id not in refused:
            continue
        try:  # nothing of it was written: say why
            write.error = ops.explain_refusal(
                db, write.run_id, write.events, write.expected_seq, write.lease
            )
        except sqlite3.Error:
            raise
        except Exception as exc:  # RunNotFoundError, or a header that does not validate
            write.error = exc


def _read_cancels(db: sqlite3.Connection, group: Group) -> None:
    """The group's runs with a cancellation request, read after COMMIT (outside the lock).

    As of the commit or later, so a request committed before it (by this batch
    or another process) reaches the renewed lease. If the read fails, the
    leases go out without it: the request reaches the holder with the next
    lease the store hands out (the append or renewal after).
    """
    rows = group.rows
    with suppress(sqlite3.Error):
        found = db.execute(CANCELS_SQL(len(rows) // WIDTH), rows).fetchall()
        if found:
            group.cancelled = dict(found)


def _renewed(group: Group) -> None:
    """Each append's renewed lease, once the commit is done (the write lock released)."""
    now, cancelled, refused = group.now, group.cancelled, group.refused
    if cancelled is None and refused is None:  # the usual case
        for write in group.appends:
            lease = write.lease
            write.result = lease.renewed(now + lease.ttl, None)
        return
    cancels = cancelled or {}
    for write in group.appends:
        if refused and write.run_id in refused:
            continue
        lease = write.lease
        write.result = lease.renewed(now + lease.ttl, cancels.get(write.run_id))


def _apply_each(db: sqlite3.Connection, writes: list[Write[Any] | Append]) -> str:
    """The fallback: each write in its own savepoint, so one that fails midway fails alone."""
    action = "BEGIN IMMEDIATE"
    for write in writes:
        action = f"a write of run {write.run_id!r}"
        db.execute("SAVEPOINT one_write")
        try:
            write.result = write.apply(db)
        except sqlite3.IntegrityError as exc:
            write.error = _rejected(write.run_id, exc)
        except sqlite3.Error:
            raise
        except Exception as exc:  # this write's own refusal (or a bug): it fails alone
            write.error = exc
        if write.error is not None:
            db.execute("ROLLBACK TO one_write")
        db.execute("RELEASE one_write")
    return action


def _rejected(run_id: str, exc: sqlite3.IntegrityError) -> CorruptRunError:
    return CorruptRunError(run_id, None, f"SQLite refused the write ({exc}): rows disagree")


def noop(db: sqlite3.Connection) -> None:
    pass
