"""The statements of a group commit's appends, built in the event loop before the transaction.

`durable_agent.backends._sqlite_batch` applies a batch in SQLite's thread; what
it runs for appends is built here, outside the write lock: each queued `Append`
with its event rows and its compare-and-set row (built when it is queued), a
`Group` of consecutive appends of distinct runs with its statements and their
parameters, and the SQL text of those statements, padded to a power of two so
that a few statements cover every batch size and stay in sqlite3's statement
cache.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, cast

from durable_agent.backends import _sqlite_ops as ops
from durable_agent.records import Event, Lease, encode_events

__all__ = [
    "CANCELS_SQL",
    "MAX_GROUP",
    "REFUSED_SQL",
    "WIDTH",
    "Append",
    "Group",
    "insert_statements",
    "make_group",
]

MAX_GROUP: Final = 1024
"""Most appends in one compare-and-set statement (10 parameters each, under SQLite's 32,766)."""
_ROWS: Final = 1024
"""Most event rows in one INSERT (3 parameters each)."""

# ``now`` is the statement's last parameter, bound once the write lock is held,
# so everything else is built before the transaction starts. SQLite updates
# every index with a column SET (in its key or a partial index's WHERE),
# whether or not the value changes, so each kind of append SETs only what it
# may change. A release clears the lease's owner, host and pid (and brings the
# run to rest, out of the claims' indexes).
_SET_RELEASE: Final = (
    "seq = v.new_seq, state = v.new_state, updated_at = ?{now}, lease_owner = v.owner, "
    "lease_host = v.host, lease_pid = v.pid, lease_expires = ?{now} + v.ttl, lease_ttl = v.ttl"
)
# Any other append keeps the lease's owner, host and pid (the WHERE matched the
# owner and its generation, under which they were written), so a state move of
# a held run leaves the indexes of held leases alone (runs_leased, runs_held); a
# tool result, a renewal's write, changes no state either, and touches no index
# on the state (runs_by_state, the claims' runs_claimable_free, runs_placed): an
# append wrote ~1.7x the floor when every append SET them all.
_SET_MOVE: Final = (
    "seq = v.new_seq, state = v.new_state, updated_at = ?{now}, "
    "lease_expires = ?{now} + v.ttl, lease_ttl = v.ttl"
)
_SET_RENEW: Final = (
    "seq = v.new_seq, updated_at = ?{now}, lease_expires = ?{now} + v.ttl, lease_ttl = v.ttl"
)
_SETS: Final = (_SET_RENEW, _SET_MOVE, _SET_RELEASE)
"""The SET of each kind of append (`Append.kind`)."""
_RENEW, _MOVE, _RELEASE = range(3)
WIDTH: Final = 10
"""Parameters in one row of the compare-and-set's VALUES (`Append.cas`)."""
_ROW: Final = "(" + ", ".join("?" * WIDTH) + ")"
_NO_ROW: Final = ("", -1, -1, "", -1, "", "", "", -1, 0.0)
"""A padding row of the compare-and-set: ``expected`` -1 matches no run (a run's seq is never
negative). Not NULLs: sqlite3 binds only exact int, float and str without asking the
adapter registry, and each NULL parameter costs two failed attribute lookups there
(~1,200 instructions, more than binding a whole row)."""
_NO_EVENT: Final = ("", -1, "")
"""A padding row of the event INSERT (seq -1, which no event has), for the same reason."""


def _cas_sql(rows: int, kind: int) -> str:
    now = rows * WIDTH + 1
    return (
        "WITH v(run_id, expected, generation, holder, new_seq, new_state, owner, host, pid, "
        f"ttl) AS (VALUES {', '.join([_ROW] * rows)}) "
        f"UPDATE runs SET {_SETS[kind].format(now=now)} FROM v "
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
    now = rows * WIDTH + 1
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
CANCELS_SQL: Final = functools.cache(_cancels_sql)
REFUSED_SQL: Final = functools.cache(_refused_sql)


def _padded(count: int) -> int:
    return 1 << (count - 1).bit_length()


class Append:
    """One queued `SqliteBackend.append`: its events encoded, its statement parameters built.

    Built once, in the event loop, when the append is queued: the flat ``rows``
    of the event INSERT and the ``cas`` row of the compare-and-set, so a group
    only concatenates them and the writer thread makes no object per append.
    """

    __slots__ = (
        "cas", "error", "events", "expected_seq", "future", "in_order", "kind", "lease",
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
        self.kind = _RELEASE if release else _MOVE if moves else _RENEW
        """Which compare-and-set SET it takes: a release's, a state move's (a trigger among
        its events) or a renewal's."""
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
class Group:
    """Consecutive appends of distinct runs, their statements built before the transaction."""

    appends: list[Append]
    cas: list[tuple[str, list[object]]]
    """One compare-and-set per kind (releases, moves, renewals); ``now`` is appended when
    run."""
    rows: list[object]
    """Every append's row of the compare-and-set, padded: the compare-and-set's own list
    when one kind has them all (the usual case), for the two reads of the group."""
    inserts: list[tuple[str, list[object]]]
    now: float = 0.0
    cancelled: dict[str, str] | None = None
    refused: set[str] | None = None


def make_group(appends: list[Append]) -> Group:
    # One pass: each append's rows were built when it was queued.
    kinds: list[list[object]] = [[], [], []]
    rows: list[object] = []
    for write in appends:
        kinds[write.kind] += write.cas
        rows += write.rows
    size = _padded(len(appends))
    cas: list[tuple[str, list[object]]] = []
    used = [(kind, params) for kind, params in enumerate(kinds) if params]
    if len(used) == 1:  # the usual case: the reads share the compare-and-set's list
        kind, check = used[0]
        check += _NO_ROW * (size - len(check) // WIDTH)
        cas.append((_CAS_SQL(size, kind), check))
    else:
        check = [value for _, params in used for value in params]
        check += _NO_ROW * (size - len(check) // WIDTH)
        for kind, params in used:
            padded = _padded(len(params) // WIDTH)
            params += _NO_ROW * (padded - len(params) // WIDTH)
            cas.append((_CAS_SQL(padded, kind), params))
    return Group(appends, cas, check, insert_statements(rows))


def insert_statements(rows: list[object]) -> list[tuple[str, list[object]]]:
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
