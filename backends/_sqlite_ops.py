"""The SQL side of `SqliteBackend`: rows <-> records, and the work done in SQLite's thread.

The tables and opening the file are in `durable_agent.backends._sqlite_schema`.

Every function taking a ``sqlite3.Connection`` runs in aiosqlite's worker
thread, called by `durable_agent.backends.sqlite`. The writes (`create`,
`append`, `acquire`, ...) run inside the transaction of a batch that
`durable_agent.backends._sqlite_batch` opens and commits; they check before
they write, and raise a `DurableAgentError` to refuse, which fails that write
alone.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, cast

from durable_agent.backend import (
    LeaseOwner,
    Position,
    UnreadableRun,
    check_append,
    check_lease_acquire,
)
from durable_agent.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    CorruptRunError,
    LeaseLostError,
    RunExistsError,
    RunNotFoundError,
    SchemaVersionError,
)
from durable_agent.fsm import RunState
from durable_agent.records import SCHEMA_VERSION, Event, Lease, RunHeader

_HEADER_COLUMNS: Final = (
    "run_id, session_id, user_id, agent_name, state, seq, created_at, updated_at, "
    "lease_owner, lease_host, lease_pid, lease_generation, lease_expires, lease_ttl, "
    "schema_version, cancel_requested, queue, priority, not_before"
)
_SELECT_HEADER: Final = f"SELECT {_HEADER_COLUMNS} FROM runs WHERE run_id = ?"
_INSERT_RUN: Final = f"INSERT INTO runs ({_HEADER_COLUMNS}) VALUES ({', '.join('?' * 19)})"
_INSERT_EVENT: Final = "INSERT INTO events (run_id, seq, body) VALUES (?, ?, ?)"
_CAS: Final = (
    "updated_at = ?, lease_owner = ?, lease_host = ?, lease_pid = ?, lease_expires = ?, "
    "lease_ttl = ? WHERE run_id = ? AND seq = ? AND lease_generation = ? AND lease_owner = ? "
    "RETURNING cancel_requested"
)
_CAS_RENEW: Final = f"UPDATE runs SET seq = ?, {_CAS}"
_CAS_MOVE: Final = f"UPDATE runs SET seq = ?, state = ?, {_CAS}"
_SET_LEASE: Final = (
    "UPDATE runs SET lease_owner = ?, lease_host = ?, lease_pid = ?, lease_expires = ?, "
    "lease_ttl = ? WHERE run_id = ?"
)


# -- rows <-> records ----------------------------------------------------------------


def timestamp(value: datetime, what: str) -> float:
    """Seconds since the epoch, as stored; naive datetimes are refused, not guessed."""
    if value.tzinfo is None:
        raise ConfigurationError(
            f"{what} {value.isoformat()} has no time zone; use an aware datetime such as "
            "durable_agent.records.utcnow()"
        )
    return value.timestamp()


def _from_timestamp(value: object) -> datetime:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"timestamp {value!r} is not a number")
    return datetime.fromtimestamp(value, UTC)


def header_row(header: RunHeader) -> tuple[object, ...]:
    lease = header.lease
    return (
        header.run_id,
        header.session_id,
        header.user_id,
        header.agent_name,
        header.state.value,
        header.seq,
        timestamp(header.created_at, "header.created_at"),
        timestamp(header.updated_at, "header.updated_at"),
        lease.owner if lease else None,
        lease.host if lease else None,
        lease.pid if lease else None,
        header.lease_generation,
        lease.expires_at if lease else None,
        lease.ttl if lease else None,
        header.schema_version,
        header.cancel_requested,
        header.queue,
        header.priority,
        None if header.not_before is None else timestamp(header.not_before, "not_before"),
    )


def header_from_row(row: Sequence[Any]) -> RunHeader:
    """Rebuild a header from its columns; `CorruptRunError` when one does not validate."""
    (run_id, session_id, user_id, agent_name, state, seq, created_at, updated_at) = row[:8]
    (owner, host, pid, generation, expires, ttl, version, cancel_requested) = row[8:16]
    (queue, priority, not_before) = row[16:19]
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise SchemaVersionError(run_id, None, version, SCHEMA_VERSION)
    try:
        lease = (
            None
            if owner is None
            else Lease(
                owner=owner,
                host=host,
                pid=pid,
                generation=generation,
                expires_at=expires,
                ttl=ttl,
                cancel_requested=cancel_requested,
            )
        )
        return RunHeader(
            schema_version=version,
            run_id=run_id,
            session_id=session_id,
            user_id=user_id,
            agent_name=agent_name,
            state=state,
            seq=seq,
            created_at=_from_timestamp(created_at),
            updated_at=_from_timestamp(updated_at),
            lease=lease,
            lease_generation=generation,
            cancel_requested=cancel_requested,
            queue=queue,
            priority=priority,
            not_before=None if not_before is None else _from_timestamp(not_before),
        )
    except (ValueError, TypeError, OverflowError, OSError) as exc:  # incl. ValidationError
        detail = " ".join(str(exc).split())
        raise CorruptRunError(str(run_id), None, detail[:300]) from exc


def load_header(db: sqlite3.Connection, run_id: str) -> RunHeader:
    row = db.execute(_SELECT_HEADER, (run_id,)).fetchone()
    if row is None:
        raise RunNotFoundError(run_id)
    return header_from_row(row)


def _lease_columns(lease: Lease | None) -> tuple[object, ...]:
    if lease is None:
        return (None, None, None, None, None)
    return (lease.owner, lease.host, lease.pid, lease.expires_at, lease.ttl)


# -- the writes, each run inside a batch's transaction (in SQLite's thread) ----------------


def create(
    db: sqlite3.Connection, row: tuple[object, ...], events: list[tuple[str, int, str]]
) -> None:
    run_id = cast(str, row[0])
    if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None:
        raise RunExistsError(run_id)
    db.execute(_INSERT_RUN, row)
    db.executemany(_INSERT_EVENT, events)


def explain_refusal(
    db: sqlite3.Connection,
    run_id: str,
    events: Sequence[Event],
    expected_seq: int,
    lease: Lease,
) -> ConcurrentUpdateError:
    """Why an append's compare-and-set matched no row (`RunNotFoundError` is raised)."""
    header = load_header(db, run_id)
    try:
        check_append(header, events, expected_seq=expected_seq, lease=lease)
    except ConcurrentUpdateError as exc:
        return exc
    return ConcurrentUpdateError(run_id, "the append was refused; reload the run")


def append(
    db: sqlite3.Connection,
    run_id: str,
    events: Sequence[Event],
    rows: list[tuple[str, int, str]],
    expected_seq: int,
    lease: Lease,
    release: bool = False,
) -> Lease:
    # The compare-and-set is the UPDATE's WHERE clause, so the common case
    # builds no header object in SQLite's thread (~11 µs saved per append);
    # the header is read only to explain a refusal. Run inside the batch's
    # transaction, two appends of one run in one batch chain correctly.
    for offset, event in enumerate(events, start=1):
        if event.seq != expected_seq + offset:
            header = load_header(db, run_id)
            check_append(header, events, expected_seq=expected_seq, lease=lease)
    last = events[-1] if events else None
    now = time.time()
    expires = now + lease.ttl
    lease_columns = _lease_columns(None) if release else (
        lease.owner, lease.host, lease.pid, expires, lease.ttl
    )
    guard = (run_id, expected_seq, lease.generation, lease.owner)
    if last is None or all(e.trigger is None for e in events):
        # The state cannot have changed: leaving it out of the SET spares an
        # update of the runs_by_state index.
        row = db.execute(
            _CAS_RENEW, (expected_seq if last is None else last.seq, now, *lease_columns, *guard)
        ).fetchone()
    else:
        row = db.execute(
            _CAS_MOVE, (last.seq, last.state.value, now, *lease_columns, *guard)
        ).fetchone()
    if row is None:
        header = load_header(db, run_id)  # RunNotFoundError for an unknown run
        check_append(header, events, expected_seq=expected_seq, lease=lease)
        raise ConcurrentUpdateError(run_id, "the append was refused; reload the run")
    if len(rows) == 1:
        db.execute(_INSERT_EVENT, rows[0])  # executemany costs ~2 µs more for one row
    elif rows:
        db.executemany(_INSERT_EVENT, rows)
    return renewed(lease, expires, row[0])


def renewed(lease: Lease, expires: float, cancel_requested: str | None) -> Lease:
    """``lease`` renewed until ``expires``: a shallow copy with two fields set, not revalidated.

    Every other field is the lease's own, already valid; ``model_copy(update=...)``
    cost 2-3x as much, once per append.
    """
    return lease.renewed(expires, cancel_requested)


def acquire(
    db: sqlite3.Connection, run_id: str, owner: LeaseOwner, ttl: float, takeover: int | None
) -> Lease:
    header = load_header(db, run_id)
    lease = check_lease_acquire(header, owner, ttl=ttl, takeover=takeover, now=time.time())
    db.execute(
        "UPDATE runs SET lease_owner = ?, lease_host = ?, lease_pid = ?, lease_expires = ?, "
        "lease_ttl = ?, lease_generation = ? WHERE run_id = ?",
        (*_lease_columns(lease), lease.generation, run_id),
    )
    return lease


def renew(db: sqlite3.Connection, run_id: str, lease: Lease) -> Lease:
    header = load_header(db, run_id)
    if header.lease is None or header.lease_generation != lease.generation:
        raise LeaseLostError(run_id, f"lease generation {lease.generation} was taken over")
    fresh = renewed(lease, time.time() + lease.ttl, header.cancel_requested)
    db.execute(_SET_LEASE, (*_lease_columns(fresh), run_id))
    return fresh


def request_cancel(db: sqlite3.Connection, run_id: str, reason: str) -> RunHeader:
    header = load_header(db, run_id)
    if header.cancel_requested is not None:
        return header  # the first reason stands
    db.execute("UPDATE runs SET cancel_requested = ? WHERE run_id = ?", (reason, run_id))
    return header.model_copy(update={"cancel_requested": reason})


def release(db: sqlite3.Connection, run_id: str, lease: Lease) -> None:
    row = db.execute(_SELECT_HEADER, (run_id,)).fetchone()
    if row is None:
        return
    header = header_from_row(row)
    if header.lease is not None and header.lease_generation == lease.generation:
        db.execute(_SET_LEASE, (*_lease_columns(None), run_id))


def delete(db: sqlite3.Connection, run_id: str) -> bool:
    existed = db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount > 0
    db.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
    return existed


def prune(db: sqlite3.Connection, older_than: datetime, states: list[RunState]) -> int:
    now = time.time()
    marks = ", ".join("?" * len(states))
    rows = db.execute(
        f"SELECT {_HEADER_COLUMNS} FROM runs WHERE state IN ({marks}) AND updated_at < ?",
        (*(str(s) for s in states), older_than.timestamp()),
    ).fetchall()
    doomed: list[tuple[str]] = []
    for row in rows:
        try:
            header = header_from_row(row)
        except CorruptRunError:
            continue  # a damaged header is reported by load_run, never deleted by a sweep
        live = header.lease is not None and header.lease.expires_at > now
        if header.state in states and header.updated_at < older_than and not live:
            doomed.append((header.run_id,))
    db.executemany("DELETE FROM events WHERE run_id = ?", doomed)
    db.executemany("DELETE FROM runs WHERE run_id = ?", doomed)
    return len(doomed)


def reclaim(db: sqlite3.Connection) -> None:
    """After a prune: give freed pages back to the file system, then truncate the WAL.

    VACUUM rewrites the live data, so it runs only once at least half of the
    file is free pages. (auto_vacuum=INCREMENTAL would free them page by page,
    but its pointer-map pages made every append ~15% slower in benchmark (a).)
    """
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    if free * 2 >= pages > 0:
        db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


# -- the reads (in SQLite's thread) ------------------------------------------------------


def read_run(
    db: sqlite3.Connection, run_id: str
) -> tuple[Sequence[Any], list[tuple[int, str | bytes]]]:
    # One read transaction, so the header and the events are one consistent snapshot.
    db.execute("BEGIN")
    try:
        row = db.execute(_SELECT_HEADER, (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        events = db.execute(
            "SELECT seq, body FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
        ).fetchall()
    finally:
        db.execute("COMMIT")
    return row, events


def list_headers(
    db: sqlite3.Connection, where: list[str], params: list[object], wanted: int
) -> tuple[list[RunHeader], list[tuple[Position | None, UnreadableRun]]]:
    """Up to ``wanted`` valid headers, newest first, and the damaged rows met on the way.

    A damaged row keeps its place in the order while its ``created_at`` is a
    number; otherwise (it sorts before every number in SQLite) it has none.
    The filters are SQL on the columns, so they apply to damaged rows too.
    """
    found: list[RunHeader] = []
    unreadable: list[tuple[Position | None, UnreadableRun]] = []
    after: tuple[object, object] | None = None
    db.execute("BEGIN")
    try:
        while len(found) < wanted:
            clauses = [*where, "(created_at, run_id) < (?, ?)"] if after else where
            sql = f"SELECT {_HEADER_COLUMNS} FROM runs"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += " ORDER BY created_at DESC, run_id DESC LIMIT ?"
            asked = wanted - len(found)
            rows = db.execute(sql, (*params, *(after or ()), asked)).fetchall()
            for row in rows:
                try:
                    found.append(header_from_row(row))
                except CorruptRunError as exc:
                    run_id, created = str(row[0]), row[6]
                    place = (
                        (float(created), run_id)
                        if isinstance(created, int | float) and not isinstance(created, bool)
                        else None
                    )
                    unreadable.append((place, UnreadableRun.from_error(run_id, exc)))
            if len(rows) < asked:
                break
            after = (rows[-1][6], rows[-1][0])
    finally:
        db.execute("COMMIT")
    return found, unreadable
