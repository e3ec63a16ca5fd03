"""One group commit of `SqliteBackend`: the batch's writes in one transaction, in SQLite's thread.

The writer (`durable_agent.backends._sqlite_writer`) hands a `Batch` to
`apply_batch`, which runs in aiosqlite's thread and applies every write in one
transaction with one commit (one fsync). Each write keeps its own check, so a
refused write fails alone and the rest of the batch commits:

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
import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, cast

from durable_agent.backends import _sqlite_ops as ops
from durable_agent.errors import CorruptRunError, StoreUnavailableError
from durable_agent.records import Event, Lease, encode_events

__all__ = ["Append", "Batch", "Write", "apply_batch", "noop"]

T = TypeVar("T")

_GROUP: Final = 1024
"""Most appends in one compare-and-set statement (10 parameters each, under SQLite's 32,766)."""
_ROWS: Final = 1024
"""Most event rows in one INSERT (3 parameters each)."""

# ``now`` is the statement's last parameter, bound once the write lock is held,
# so everything else is built before the transaction starts.
_SET_MOVE: Final = (
    "seq = v.new_seq, state = v.new_state, updated_at = ?{now}, lease_owner = v.owner, "
    "lease_host = v.host, lease_pid = v.pid, lease_expires = ?{now} + v.ttl, lease_ttl = v.ttl"
)
# Without a trigger the state cannot have changed: leaving it out of the SET
# spares an update of the runs_by_state index.
_SET_RENEW: Final = (
    "seq = v.new_seq, updated_at = ?{now}, lease_owner = v.owner, lease_host = v.host, "
    "lease_pid = v.pid, lease_expires = ?{now} + v.ttl, lease_ttl = v.ttl"
)
_WIDTH: Final = 10
_ROW: Final = "(" + ", ".join("?" * _WIDTH) + ")"
_NO_ROW: Final = ("", -1, -1, "", -1, "", "", "", -1, 0.0)
"""A padding row of the compare-and-set: ``expected`` -1 matches no run (a run's seq is never
negative). Not NULLs: sqlite3 binds only exact int, float and str without asking the
adapter registry, and each NULL parameter costs two failed attribute lookups there
(~1,200 instructions, more than binding a whole row)."""
_NO_EVENT: Final = ("", -1, "")
"""A padding row of the event INSERT (seq -1, which no event has), for the same reason."""


def _cas_sql(rows: int, moves: bool) -> str:
    now = rows * _WIDTH + 1
    return (
        "WITH v(run_id, expected, generation, holder, new_seq, new_state, owner, host, pid, "
        f"ttl) AS (VALUES {', '.join([_ROW] * rows)}) "
        f"UPDATE runs SET {(_SET_MOVE if moves else _SET_RENEW).format(now=now)} FROM v "
        "WHERE runs.run_id = v.run_id AND runs.seq = v.expected "
        "AND runs.lease_generation = v.generation AND runs.lease_owner = v.holder"
    )


def _insert_sql(rows: int) -> str:
    # Padding rows have seq -1 (`_NO_EVENT`), which the WHERE drops.
    return (
        "INSERT INTO events (run_id, seq, body) SELECT column1, column2, column3 FROM "
        f"(VALUES {', '.join(['(?, ?, ?)'] * rows)}) WHERE column2 >= 0"
    )


_V: Final = "v(run_id, expected, generation, holder, new_seq, new_state, owner, host, pid, ttl)"
"""The compare-and-set's rows as a table: the two reads below take its parameter list."""


def _cancels_sql(rows: int) -> str:
    # After COMMIT, outside the write lock: the runs of the group with a
    # cancellation request (usually none: one step), as of the commit or later.
    return (
        f"WITH {_V} AS (VALUES {', '.join([_ROW] * rows)}) "
        "SELECT v.run_id, runs.cancel_requested FROM v JOIN runs ON runs.run_id = v.run_id "
        "WHERE v.expected >= 0 AND runs.cancel_requested IS NOT NULL"
    )


def _refused_sql(rows: int) -> str:
    # Only when the compare-and-set changed fewer rows than the group has
    # appends: the appends whose run does not now hold exactly what their row
    # wrote, at this ``now`` (nothing else writes inside the transaction, and
    # no other writer holds this lease's owner id).
    now = rows * _WIDTH + 1
    return (
        f"WITH {_V} AS (VALUES {', '.join([_ROW] * rows)}) "
        "SELECT v.run_id FROM v LEFT JOIN runs ON runs.run_id = v.run_id "
        "WHERE v.expected >= 0 AND NOT (runs.seq IS v.new_seq "
        "AND runs.lease_generation IS v.generation AND runs.lease_owner IS v.owner "
        f"AND runs.updated_at IS ?{now})"
    )


# Padded to a power of two (padding rows match nothing), so a few statements
# cover every batch size and stay in sqlite3's statement cache; built on first
# use, not at import. Each is one ``sqlite3_step``: every step lets go of the
# GIL, and taking it back from a busy event loop costs up to its 5 ms switch
# interval, with the write lock held.
_CAS_SQL: Final = functools.cache(_cas_sql)
_INSERT_SQL: Final = functools.cache(_insert_sql)
_CANCELS_SQL: Final = functools.cache(_cancels_sql)
_REFUSED_SQL: Final = functools.cache(_refused_sql)


def _padded(count: int) -> int:
    return 1 << (count - 1).bit_length()


@dataclass(eq=False, slots=True)
class Write(Generic[T]):
    """One queued write: ``apply`` runs in the batch's transaction; outcome set in the thread."""

    run_id: str
    apply: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    result: T | None = None
    error: BaseException | None = None


class Append:
    """One queued `SqliteBackend.append`: its events encoded, its statement parameters built.

    Built once, in the event loop, when the append is queued: the flat ``rows``
    of the event INSERT and the ``cas`` row of the compare-and-set, so a group
    only concatenates them and the writer thread makes no object per append.
    """

    __slots__ = (
        "cas", "error", "events", "expected_seq", "future", "in_order", "lease", "moves",
        "release", "result", "rows", "run_id",
    )

    def __init__(
        self,
        run_id: str,
        events: Sequence[Event],
        expected_seq: int,
        lease: Lease,
        release: bool,
        future: asyncio.Future[Lease],
    ) -> None:
        rows: list[object] = []
        seq = expected_seq
        in_order = True
        moves = False
        for event, text in zip(events, encode_events(events), strict=True):
            seq += 1
            if event.seq != seq:
                in_order = False
            if event.trigger is not None:
                moves = True
            rows += (run_id, event.seq, text)
        self.run_id = run_id
        self.events = events
        self.rows = rows
        """The event INSERT's parameters, three per event (run_id, seq, body)."""
        self.expected_seq = expected_seq
        self.lease = lease
        self.release = release
        self.future = future
        self.result: Lease | None = None
        self.error: BaseException | None = None
        self.in_order = in_order
        """Its events' seqs follow ``expected_seq`` (else the slow path explains the refusal)."""
        self.moves = moves
        """A trigger among its events: the state may change (else a renewal's statement)."""
        owner = lease.owner
        # ``_value_``: the enum's ``value`` is a Python-level property.
        state = events[-1].state._value_ if events else None
        self.cas: tuple[object, ...] = (
            (run_id, expected_seq, lease.generation, owner, seq, state, None, None, None, None)
            if release
            else (run_id, expected_seq, lease.generation, owner, seq, state, owner, lease.host,
                  lease.pid, lease.ttl)
        )
        """Its row of the compare-and-set's VALUES (``_cas_sql``'s columns)."""

    def apply(self, db: sqlite3.Connection) -> Lease:
        """The same append alone (the savepoint fallback)."""
        flat = self.rows
        rows = cast("list[tuple[str, int, str]]", list(zip(*[iter(flat)] * 3, strict=True)))
        return ops.append(
            db, self.run_id, self.events, rows, self.expected_seq, self.lease, self.release
        )


@dataclass(eq=False, slots=True)
class Batch:
    writes: list[Write[Any] | Append]
    error: StoreUnavailableError | None = None
    committed: bool = False


@dataclass(eq=False, slots=True)
class _Group:
    """Consecutive appends of distinct runs, their statements built before the transaction."""

    appends: list[Append]
    cas: list[tuple[str, list[object]]]
    """One compare-and-set per kind (moves, renewals); ``now`` is appended when run."""
    rows: list[object]
    """Every append's row of the compare-and-set, padded: the compare-and-set's own list
    when one kind has them all (the usual case), for the two reads of the group."""
    inserts: list[tuple[str, list[object]]]
    now: float = 0.0
    cancelled: dict[str, str] | None = None
    refused: set[str] | None = None


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
    begin = "BEGIN" if plan and type(plan[0]) is _Group else "BEGIN IMMEDIATE"
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
            if type(step) is _Group:
                _read_cancels(db, step)
                _renewed(step)


def _plan(writes: list[Write[Any] | Append]) -> list[_Group | Write[Any] | Append]:
    """The batch as steps: groups of appends (one compare-and-set each) and single writes."""
    plan: list[_Group | Write[Any] | Append] = []
    group: list[Append] = []
    runs: set[str] = set()
    for write in writes:
        if type(write) is Append and write.in_order:
            if write.run_id in runs or len(group) >= _GROUP:
                plan.append(_group(group))
                group, runs = [], set()
            group.append(write)
            runs.add(write.run_id)
            continue
        if group:
            plan.append(_group(group))
            group, runs = [], set()
        plan.append(write)
    if group:
        plan.append(_group(group))
    return plan


def _group(appends: list[Append]) -> _Group:
    # One pass: each append's rows were built when it was queued.
    moved: list[object] = []
    kept: list[object] = []
    rows: list[object] = []
    for write in appends:
        if write.moves:
            moved += write.cas
        else:
            kept += write.cas
        rows += write.rows
    size = _padded(len(appends))
    cas: list[tuple[str, list[object]]] = []
    if moved and kept:
        check = moved + kept
        check += _NO_ROW * (size - len(check) // _WIDTH)
        for params, moves in ((moved, True), (kept, False)):
            padded = _padded(len(params) // _WIDTH)
            params += _NO_ROW * (padded - len(params) // _WIDTH)
            cas.append((_CAS_SQL(padded, moves), params))
    else:
        check = moved or kept
        check += _NO_ROW * (size - len(check) // _WIDTH)
        cas.append((_CAS_SQL(size, bool(moved)), check))
    return _Group(appends, cas, check, _inserts(rows))


def _inserts(rows: list[object]) -> list[tuple[str, list[object]]]:
    """The event INSERTs of flat ``rows`` (three values per event), padded; chunked if long."""
    if not rows:
        return []
    if len(rows) <= _ROWS * 3:
        padded = _padded(len(rows) // 3)
        rows += _NO_EVENT * (padded - len(rows) // 3)
        return [(_INSERT_SQL(padded), rows)]
    inserts: list[tuple[str, list[object]]] = []
    for start in range(0, len(rows), _ROWS * 3):
        chunk = rows[start : start + _ROWS * 3]
        padded = _padded(len(chunk) // 3)
        chunk += _NO_EVENT * (padded - len(chunk) // 3)
        inserts.append((_INSERT_SQL(padded), chunk))
    return inserts


def _apply_plan(db: sqlite3.Connection, plan: list[_Group | Write[Any] | Append]) -> str:
    """The fast path: grouped appends, no savepoints. Returns what it did last (for errors)."""
    action = "BEGIN IMMEDIATE"
    for step in plan:
        if type(step) is _Group:
            action = f"the appends of {len(step.appends)} run(s)"
            _append_group(db, step)
        else:
            assert not isinstance(step, _Group)
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


def _append_group(db: sqlite3.Connection, group: _Group) -> None:
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
            found = db.execute(_REFUSED_SQL(len(rows) // _WIDTH), rows).fetchall()
        finally:
            rows.pop()
        refused = group.refused = {run_id for (run_id,) in found}
        if changed != len(group.appends) - len(refused):
            raise _RolledBack  # the read and the compare-and-set disagree: decide one by one
        kept: list[object] = []
        for write in group.appends:
            if write.run_id not in refused:
                kept += write.rows
        inserts = _inserts(kept)
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


def _read_cancels(db: sqlite3.Connection, group: _Group) -> None:
    """The group's runs with a cancellation request, read after COMMIT (outside the lock).

    As of the commit or later, so a request committed before it (by this batch
    or another process) reaches the renewed lease. If the read fails, the
    leases go out without it: the request reaches the holder with the next
    lease the store hands out (the append or renewal after).
    """
    rows = group.rows
    with suppress(sqlite3.Error):
        found = db.execute(_CANCELS_SQL(len(rows) // _WIDTH), rows).fetchall()
        if found:
            group.cancelled = dict(found)


def _renewed(group: _Group) -> None:
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
