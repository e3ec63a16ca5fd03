"""One group commit of `SqliteBackend`: the batch's writes in one transaction, in SQLite's thread.

The writer (`durable_agent.backends._sqlite_writer`) hands a `Batch` to
`apply_batch`, which runs in aiosqlite's thread and applies every write in one
transaction with one commit (one fsync). Each write keeps its own check, so a
refused write fails alone and the rest of the batch commits:

* Appends (the hot path) are queued as `Append` records, not closures. Every
  run of consecutive appends of distinct runs shares **one** compare-and-set
  statement (``UPDATE runs ... FROM (VALUES ...) RETURNING``: each row matches
  only its own run at its expected seq, lease generation and owner) and one
  ``INSERT`` of all the accepted appends' events. An append whose row did not
  match is refused and writes nothing. A second append of a run already in
  the group starts the next group, so it sees the first one's header.
* No savepoint per write: a refusal is decided before its write changes a row
  (a compare-and-set that matches nothing changes nothing, and ``total_changes``
  tells). Only when a write fails *after* changing rows (a row SQLite rejects)
  is the transaction rolled back and the batch applied again write by write,
  each in its own savepoint, where that write fails alone.
* A failure of the store itself (lock timeout, I/O error, failed commit) rolls
  the whole transaction back and fails every write of the batch.

Outcomes are recorded on the batch, never raised, so they survive the writer
task being cancelled while this runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from durable_agent.backends import _sqlite_ops as ops
from durable_agent.errors import CorruptRunError, StoreUnavailableError
from durable_agent.records import Event, Lease

__all__ = ["Append", "Batch", "Write", "apply_batch", "noop"]

T = TypeVar("T")

_GROUP: Final = 1024
"""Most appends in one compare-and-set statement (12 parameters each, under SQLite's 32,766)."""

_SET_MOVE: Final = (
    "seq = v.new_seq, state = v.new_state, updated_at = v.now, lease_owner = v.owner, "
    "lease_host = v.host, lease_pid = v.pid, lease_expires = v.expires, lease_ttl = v.ttl"
)
# Without a trigger the state cannot have changed: leaving it out of the SET
# spares an update of the runs_by_state index.
_SET_RENEW: Final = (
    "seq = v.new_seq, updated_at = v.now, lease_owner = v.owner, lease_host = v.host, "
    "lease_pid = v.pid, lease_expires = v.expires, lease_ttl = v.ttl"
)
_ROW: Final = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_NO_ROW: Final = (None,) * 12


def _cas_sql(rows: int, moves: bool) -> str:
    return (
        "WITH v(run_id, expected, generation, holder, new_seq, new_state, now, owner, host, "
        f"pid, expires, ttl) AS (VALUES {', '.join([_ROW] * rows)}) "
        f"UPDATE runs SET {_SET_MOVE if moves else _SET_RENEW} FROM v "
        "WHERE runs.run_id = v.run_id AND runs.seq = v.expected "
        "AND runs.lease_generation = v.generation AND runs.lease_owner = v.holder "
        "RETURNING run_id, cancel_requested"
    )


# Padded to a power of two (rows of NULLs match nothing), so a few statements
# cover every batch size and stay in sqlite3's statement cache.
_CAS_SQL: Final = {
    (size, moves): _cas_sql(size, moves)
    for size in (1 << n for n in range(_GROUP.bit_length()))
    for moves in (False, True)
}


@dataclass(eq=False, slots=True)
class Write(Generic[T]):
    """One queued write: ``apply`` runs in the batch's transaction; outcome set in the thread."""

    run_id: str
    apply: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    result: T | None = None
    error: BaseException | None = None


@dataclass(eq=False, slots=True)
class Append:
    """One queued `SqliteBackend.append`, its events already encoded."""

    run_id: str
    events: Sequence[Event]
    rows: list[tuple[str, int, str]]
    expected_seq: int
    lease: Lease
    release: bool
    future: asyncio.Future[Lease]
    result: Lease | None = None
    error: BaseException | None = None

    def apply(self, db: sqlite3.Connection) -> Lease:
        """The same append alone (the savepoint fallback)."""
        return ops.append(
            db, self.run_id, self.events, self.rows, self.expected_seq, self.lease, self.release
        )

    def in_order(self) -> bool:
        """Its events' seqs follow ``expected_seq`` (else the slow path explains the refusal)."""
        seq = self.expected_seq
        for event in self.events:
            seq += 1
            if event.seq != seq:
                return False
        return True


@dataclass(eq=False, slots=True)
class Batch:
    writes: list[Write[Any] | Append]
    error: StoreUnavailableError | None = None
    committed: bool = False


class _RolledBack(Exception):
    """A write failed after changing rows: apply the batch again with savepoints."""


def apply_batch(db: sqlite3.Connection, batch: Batch, path: str) -> None:
    """Apply every write of ``batch`` in one transaction with one commit (module docstring)."""
    action = "BEGIN IMMEDIATE"
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            action = _apply_grouped(db, batch.writes)
        except _RolledBack:
            db.execute("ROLLBACK")
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


def _apply_grouped(db: sqlite3.Connection, writes: list[Write[Any] | Append]) -> str:
    """The fast path: grouped appends, no savepoints. Returns what it did last (for errors)."""
    action = "BEGIN IMMEDIATE"
    group: list[Append] = []
    runs: set[str] = set()
    for write in writes:
        fast = type(write) is Append and write.in_order()
        if group and (not fast or write.run_id in runs or len(group) >= _GROUP):
            action = f"the appends of {len(group)} run(s)"
            _append_group(db, group)
            group, runs = [], set()
        if fast:
            assert type(write) is Append
            group.append(write)
            runs.add(write.run_id)
            continue
        action = f"a write of run {write.run_id!r}"
        _apply_one(db, write)
    if group:
        action = f"the appends of {len(group)} run(s)"
        _append_group(db, group)
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


def _append_group(db: sqlite3.Connection, group: list[Append]) -> None:
    """One compare-and-set for every append of ``group`` (distinct runs), one event INSERT."""
    now = time.time()
    accepted: dict[str, str | None] = {}
    for moves in (True, False):
        params: list[object] = []
        count = 0
        for write in group:
            events = write.events
            if any(e.trigger is not None for e in events) is not moves:
                continue
            lease = write.lease
            last = events[-1] if events else None
            params += (
                write.run_id, write.expected_seq, lease.generation, lease.owner,
                write.expected_seq if last is None else last.seq,
                None if last is None else last.state.value, now,
            )
            if write.release:
                params += (None, None, None, None, None)
            else:
                params += (lease.owner, lease.host, lease.pid, now + lease.ttl, lease.ttl)
            count += 1
        if not count:
            continue
        size = 1 << (count - 1).bit_length()
        params += _NO_ROW * (size - count)
        accepted.update(db.execute(_CAS_SQL[size, moves], params).fetchall())
    rows: list[tuple[str, int, str]] = []
    for write in group:
        if write.run_id in accepted:
            rows += write.rows
            write.result = ops.renewed(write.lease, now + write.lease.ttl, accepted[write.run_id])
            continue
        try:  # nothing of it was written: say why
            write.error = ops.explain_refusal(
                db, write.run_id, write.events, write.expected_seq, write.lease
            )
        except sqlite3.Error:
            raise
        except Exception as exc:  # RunNotFoundError, or a header that does not validate
            write.error = exc
    if rows:
        try:
            db.executemany(ops._INSERT_EVENT, rows)
        except sqlite3.IntegrityError as exc:  # rows disagree: find whose, one by one
            raise _RolledBack from exc


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
