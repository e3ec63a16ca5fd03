"""`SqliteBackend`'s claims and worker registrations, run in SQLite's thread.

A claim is one write of the group-commit batch, so it runs inside ``BEGIN
IMMEDIATE``: the file's write lock makes the read of the claimable runs, the
``max_running`` count and the lease updates one atomic step across every
process sharing the file. The candidates, and the count of a capped queue's
runs holding a place (`holds_place`), come from the partial index
``runs_claimable``, which holds only runs not at rest, so the cost does not
grow with finished runs.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Collection, Mapping

from durable_agent.backend import (
    ClaimedRun,
    LeaseOwner,
    claim_lease,
    claimable,
    holds_place,
    queue_room,
)
from durable_agent.backends._sqlite_ops import _HEADER_COLUMNS, header_from_row
from durable_agent.backends._sqlite_schema import CLAIMABLE
from durable_agent.errors import CorruptRunError

__all__ = ["claim", "register_worker", "unregister_worker"]

_FORGET_AFTER = 86_400.0
"""Seconds a lapsed registration is kept: its leases are long expired by then."""

_DEAD = "SELECT owner FROM workers WHERE expires <= ?"


def _marks(values: Collection[object]) -> str:
    return ", ".join("?" * len(values))


def claim(
    db: sqlite3.Connection,
    owner: LeaseOwner,
    agents: Collection[str],
    queues: Collection[str] | None,
    limit: int,
    ttl: float,
    max_running: Mapping[str, int],
) -> list[ClaimedRun]:
    now = time.time()
    dead = {row[0] for row in db.execute(_DEAD, (now,))}
    # DESIGN.md §3 rule 5: on the same host a lease of a process that is gone
    # is dead at once (SQLite is one host; "host" includes the pid namespace).
    local = db.execute(
        f"SELECT DISTINCT lease_owner, lease_pid FROM runs WHERE {CLAIMABLE} "
        "AND lease_host = ? AND lease_expires > ?",
        (owner.host, now),
    ).fetchall()
    gone = [o for o, pid in local if o not in dead and isinstance(pid, int) and _gone(pid)]
    dead.update(gone)
    room: dict[str, int] = {}
    if max_running:
        # `holds_place`: every held lease of a run not at rest, lapsed or not.
        rows = db.execute(
            f"SELECT queue, count(*) FROM runs INDEXED BY runs_claimable WHERE {CLAIMABLE} "
            f"AND queue IN ({_marks(max_running)}) AND lease_owner IS NOT NULL GROUP BY queue",
            tuple(max_running),
        ).fetchall()
        room = queue_room(max_running, dict(rows))
    where = [
        CLAIMABLE,
        f"agent_name IN ({_marks(agents)})",
        "(not_before IS NULL OR not_before <= ?)",
        f"(lease_owner IS NULL OR lease_expires <= ? OR lease_owner IN ({_DEAD})"
        + (f" OR lease_owner IN ({_marks(gone)}))" if gone else ")"),
    ]
    params: list[object] = [*agents, now, now, now, *gone]
    if queues is not None:
        where.append(f"queue IN ({_marks(queues)})")
        params.extend(queues)
    full = [q for q, left in room.items() if left <= 0]
    if full:
        # A full queue's held runs are still claimable: a takeover keeps the place.
        where.append(f"(queue NOT IN ({_marks(full)}) OR lease_owner IS NOT NULL)")
        params.extend(full)
    rows = db.execute(
        # INDEXED BY: walked in claim order, the partial index stops at the
        # LIMIT; the planner (no statistics) would rather sort every claimable run.
        f"SELECT {_HEADER_COLUMNS} FROM runs INDEXED BY runs_claimable "
        f"WHERE {' AND '.join(where)} "
        "ORDER BY priority DESC, created_at, run_id LIMIT ?",
        (*params, limit + sum(room.values())),
    ).fetchall()
    claimed: list[ClaimedRun] = []
    for row in rows:
        if len(claimed) >= limit:
            break
        try:
            header = header_from_row(row)
        except CorruptRunError:
            continue  # a damaged run is reported by load_run, never claimed
        if not claimable(header, agents=agents, queues=queues, now=now, dead_owners=dead):
            continue
        takeover = holds_place(header)  # already counted: it needs no room
        if not takeover and room.get(header.queue, 1) <= 0:
            continue
        lease = claim_lease(header, owner, ttl=ttl, now=now)
        db.execute(
            "UPDATE runs SET lease_owner = ?, lease_host = ?, lease_pid = ?, lease_expires = ?, "
            "lease_ttl = ?, lease_generation = ? WHERE run_id = ?",
            (lease.owner, lease.host, lease.pid, lease.expires_at, lease.ttl,
             lease.generation, header.run_id),
        )
        if header.queue in room and not takeover:
            room[header.queue] -= 1
        claimed.append(
            ClaimedRun(
                header=header.model_copy(
                    update={"lease": lease, "lease_generation": lease.generation}
                ),
                previous=header.lease,
            )
        )
    return claimed


def _gone(pid: int) -> bool:
    """Whether no live process has ``pid`` on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[:1] == ["Z"]
    except OSError:
        return False


def register_worker(db: sqlite3.Connection, owner: str, ttl: float) -> None:
    now = time.time()
    db.execute("INSERT OR REPLACE INTO workers (owner, expires) VALUES (?, ?)", (owner, now + ttl))
    db.execute("DELETE FROM workers WHERE expires < ?", (now - _FORGET_AFTER,))


def unregister_worker(db: sqlite3.Connection, owner: str) -> None:
    db.execute("DELETE FROM workers WHERE owner = ?", (owner,))
