"""`SqliteBackend`'s claims and worker registrations, run in SQLite's thread.

A claim is one write of the group-commit batch, so it runs inside ``BEGIN
IMMEDIATE``: the file's write lock makes the read of the claimable runs, the
``max_running`` count and the lease updates one atomic step across every
process sharing the file. Every read is of a partial index that leaves out
the released runs (every finished one), so the cost does not grow with
finished runs: the candidates
nobody holds from the front of ``runs_claimable_free``; the held ones whose
lease lapsed from ``runs_held`` (only when the free ones do not fill the
claim, or at a sweep, since that read steps over every live lease); a capped
queue's count of the runs holding a place (`holds_place`) from one queue's
range of ``runs_placed``; this host's owners from ``runs_leased``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Collection, Mapping
from typing import Final, cast

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


SWEEP_EVERY: Final = 1.0
"""Most seconds between two claims of a backend that read the held runs whatever the free ones.

So a run whose lease lapsed waits at most this long behind newer free runs of
no higher priority, and the claims in between step over no live lease.
"""


def claim(
    db: sqlite3.Connection,
    owner: LeaseOwner,
    agents: Collection[str],
    queues: Collection[str] | None,
    limit: int,
    ttl: float,
    max_running: Mapping[str, int],
    *,
    sweep: bool = True,
) -> list[ClaimedRun]:
    """Claim up to ``limit`` runs for ``owner`` (see the module docstring).

    ``sweep``: read the held runs (for lapsed leases) even when the free ones fill the claim.
    When free runs were passed over for want of room in a queue (more of its runs
    came first than it had places), that queue is full now: the claim looks
    again for the rest, in the same transaction, at most once per limited queue.
    """
    claimed: list[ClaimedRun] = []
    for _ in range(len(max_running) + 1):
        got, cut = _claim_once(
            db, owner, agents, queues, limit - len(claimed), ttl, max_running, sweep=sweep
        )
        claimed += got
        if not cut or len(claimed) >= limit:
            break
    return claimed


def _claim_once(
    db: sqlite3.Connection,
    owner: LeaseOwner,
    agents: Collection[str],
    queues: Collection[str] | None,
    limit: int,
    ttl: float,
    max_running: Mapping[str, int],
    *,
    sweep: bool,
) -> tuple[list[ClaimedRun], bool]:
    """One look at the claimable runs: those claimed, and whether any was cut for want of room."""
    now = time.time()
    dead = {row[0] for row in db.execute(_DEAD, (now,))}
    # DESIGN.md §3 rule 5: on the same host a lease of a process that is gone
    # is dead at once (SQLite is one host; "host" includes the pid namespace).
    # From runs_leased alone; owners whose leases lapsed, or who hold a run at
    # rest (a decision being recorded), come too: harmless, a dead owner's runs
    # not at rest are claimable either way, and its runs at rest never are.
    local = db.execute(
        "SELECT DISTINCT lease_owner, lease_pid FROM runs INDEXED BY runs_leased "
        "WHERE lease_owner IS NOT NULL AND lease_host = ?",
        (owner.host,),
    ).fetchall()
    gone = [o for o, pid in local if o not in dead and isinstance(pid, int) and _gone(pid)]
    dead.update(gone)
    room: dict[str, int] = {}
    if max_running:
        # `holds_place`: every held lease of a run not at rest, lapsed or not.
        # Counted in runs_placed, one queue's range of it: through the runs not at
        # rest, the count visited every one and its row (5,000 held: 1.4 ms).
        rows = db.execute(
            f"SELECT queue, count(*) FROM runs INDEXED BY runs_placed WHERE {CLAIMABLE} "
            f"AND lease_owner IS NOT NULL AND queue IN ({_marks(max_running)}) GROUP BY queue",
            tuple(max_running),
        ).fetchall()
        room = queue_room(max_running, dict(rows))
    where = [
        CLAIMABLE,
        f"agent_name IN ({_marks(agents)})",
        "(not_before IS NULL OR not_before <= ?)",
    ]
    params: list[object] = [*agents, now]
    if queues is not None:
        where.append(f"queue IN ({_marks(queues)})")
        params.extend(queues)
    full = [q for q, left in room.items() if left <= 0]
    # The runs nobody holds, from the front of runs_claimable_free: the limit, plus
    # up to the limit again per queue with room (surplus of a nearly full queue).
    wanted = limit + sum(min(left, limit) for left in room.values() if left > 0)
    free = _pick(
        db, [*where, "lease_owner IS NULL"]
        + ([f"queue NOT IN ({_marks(full)})"] if full else []),
        [*params, *full], "runs_claimable_free", wanted,
    )
    rows = free
    if sweep or _kept(free, room) < limit:
        # The held runs whose lease lapsed or whose owner is dead: this read steps
        # over every live lease in runs_held, so it is made only when the free
        # runs do not fill the claim, or at a sweep. A full queue's held runs are
        # claimable too: a takeover keeps its place.
        lapsed = (
            f"(lease_expires <= ? OR lease_owner IN ({_DEAD})"
            + (f" OR lease_owner IN ({_marks(gone)}))" if gone else ")")
        )
        held = _pick(
            db, [*where, "lease_owner IS NOT NULL", lapsed], [*params, now, now, *gone],
            "runs_held", limit,
        )
        rows = sorted([*free, *held], key=_claim_order)
    claimed: list[ClaimedRun] = []
    cut = False
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
            cut = True
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
    return claimed, cut


def _pick(
    db: sqlite3.Connection, where: list[str], params: list[object], index: str, limit: int
) -> list[tuple[object, ...]]:
    """The first ``limit`` header rows matching ``where``, in claim order, from ``index``."""
    # INDEXED BY: walked in claim order, the partial index stops at the LIMIT;
    # the planner (no statistics) would rather sort every claimable run.
    return db.execute(
        f"SELECT {_HEADER_COLUMNS} FROM runs INDEXED BY {index} "
        f"WHERE {' AND '.join(where)} ORDER BY priority DESC, created_at, run_id LIMIT ?",
        (*params, limit),
    ).fetchall()


def _claim_order(row: tuple[object, ...]) -> tuple[int, float, str]:
    """`claim_order` of a header row (priority, created_at, run_id are columns 17, 6, 0)."""
    return (-int(cast(int, row[17])), float(cast(float, row[6])), str(row[0]))


def _kept(free: list[tuple[object, ...]], room: Mapping[str, int]) -> int:
    """How many of the ``free`` rows a claim may take: at most the room of a limited queue."""
    taken: dict[str, int] = {}
    for row in free:
        queue = str(row[16])
        taken[queue] = taken.get(queue, 0) + 1
    return sum(n if q not in room else min(n, max(0, room[q])) for q, n in taken.items())


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
