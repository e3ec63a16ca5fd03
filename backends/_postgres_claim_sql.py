"""The SQL of `PostgresBackend`'s claims (`durable_agent.backends._postgres_claims`).

Two claim statements: `Statements.claim`, what almost every claim runs, and
`Statements.sweep`, the same with the looks for lapsed leases a link makes
once a second (`_postgres_claims._SWEEP_EVERY`), so the claims in between pay
nothing for them. Both also run with numbered parameters through a raw cursor
(`Statements.raw`): psycopg converts a named query longer than 4,096 bytes on
every call (~150 us for these) instead of once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

from durable_agent.backend import ClaimedRun, LeaseOwner
from durable_agent.backends._postgres_schema import CLAIMABLE
from durable_agent.backends._postgres_sql import HEADER_COLUMNS, NOW, WIDTH, header_from_row
from durable_agent.errors import CorruptRunError
from durable_agent.records import SCHEMA_VERSION, Lease

__all__ = ["SWEEP_WINDOW", "Statements", "claim_params", "claimed_from_rows"]

SWEEP_WINDOW: Final = 500
"""How many held runs a sweep looks at for leases lapsed by the clock (~0.3 ms here).

A run whose lease lapsed while its owner still counts as alive waits at most
one sweep (a second) per this many runs held behind newer free runs.
"""

_START: Final = (2**31, 0.0, "")
"""The sweep's cursor before the first held run: above any priority (an INTEGER)."""

_LEASE: Final = "lease_owner, lease_host, lease_pid, lease_generation, lease_expires, lease_ttl"

# The owners whose leases no longer protect a run: lapsed or lock-less workers,
# and the given owners (processes of this host that are gone). A worker's lock
# is probed, not looked up in pg_locks: pg_lock_status() copies every lock of
# the whole server under the lock manager's locks, while a probe of a live
# worker's key fails at once without waiting. A probe that succeeds (the key's
# holder is gone) keeps the key until the claim commits; keys are never reused
# (a sequence), so no worker ever waits for it.
_DEAD: Final = f"""
dead AS (
    SELECT w.owner FROM {{workers}} w
    WHERE w.expires <= {NOW} OR pg_try_advisory_xact_lock(%(namespace)s, w.lock_key)
    UNION ALL SELECT unnest(%(gone)s::text[])
)"""

# The runs of the owners in `dead`, from runs_leased: one range per owner (its
# host is its id's first part), not a walk of runs_claimable_held in claim order.
_OF_DEAD: Final = f"""
    SELECT x.run_id FROM (SELECT DISTINCT owner FROM dead) o, LATERAL (
        SELECT d.run_id FROM {{runs}} d
        WHERE d.lease_host = regexp_replace(o.owner, ':[^:]*:[^:]*$', '')
            AND d.lease_owner = o.owner AND d.state IN {CLAIMABLE}
        OFFSET 0  -- kept a lookup per owner: flattened, it became a hash join over every lease
    ) x"""

# A held run (lease_owner IS NOT NULL) whose lease no longer protects it.
_LAPSED: Final = f"(r.lease_expires <= {NOW} OR r.lease_owner IN (SELECT owner FROM dead))"

# How many free candidates to lock: the limit, plus up to the limit again per
# queue with room, which `chosen` may drop as surplus of a queue that is nearly
# full. Never the whole room left: a queue capped at 1,000 with 990 free places
# made every claim lock 991 rows (and read the held runs, since the free ones
# rarely came to that many).
_WANTED: Final = (
    "%(limit)s + (SELECT COALESCE(sum(LEAST(left_, %(limit)s)), 0) FROM room WHERE left_ > 0)"
)


def _pick(which: str, limit: str, *, full_too: bool = False) -> str:
    """The claimable runs matching ``which``, in claim order, up to ``limit``, locked.

    ``full_too``: also from queues with no room left (takeovers, which keep their place).
    """
    return f"""
    SELECT r.run_id, r.queue, r.priority, r.created_at,
        {", ".join("r." + c.strip() for c in _LEASE.split(","))}
    FROM {{runs}} r
    WHERE r.state IN {CLAIMABLE} AND {which}
        AND r.agent_name = ANY(%(agents)s::text[])
        AND (%(all_queues)s OR r.queue = ANY(%(queues)s::text[]))
        AND (r.not_before IS NULL OR r.not_before <= {NOW})
        AND r.schema_version <= {SCHEMA_VERSION}
        {"" if full_too else "AND r.queue NOT IN (SELECT queue FROM room WHERE left_ <= 0)"}
    ORDER BY r.priority DESC, r.created_at, r.run_id
    LIMIT {limit}
    FOR UPDATE OF r SKIP LOCKED"""


# The candidates come from two partial indexes. `free`: the runs nobody holds
# (submitted, released), from the front of runs_claimable_free, a read whose
# cost does not grow with the runs in flight. `held`: the held runs whose lease
# lapsed or whose owner is dead, in claim order from runs_claimable_held, a read
# that steps over every live lease in flight (10^4 of them: ~5 ms). So `held` is
# read only when the free runs a claim may take (`free_kept`: after the room
# cut) do not fill it; otherwise its LIMIT is 0, and a LIMIT 0 never starts its
# scan. Held runs are never cut (a takeover keeps its place), so the limit is
# all a pick of held runs ever needs. (`free_kept` counts per queue with an
# aggregate: numbering the rows with a window function instead made every
# claim, capped or not, ~70 us slower.)
#
# While free runs fill every claim, a run whose lease lapsed would wait behind
# them for ever: so at most once a second (`_SWEEP_EVERY`) a claim also looks
# for lapsed runs, at a cost that does not grow with the leases in flight
# (reading all of runs_claimable_held took ~3 ms with 5,000 live leases):
# * `held_dead`: the runs of the owners in `dead`, each one range of
#   runs_leased (lease_host, lease_owner), the host read off the owner's id
#   (``host:pid:nonce``): a cost in the dead owners' runs, what changed. This is
#   how a killed, frozen or partitioned worker's runs are found.
# * `swept`: the lapsed leases of owners still alive (a holder that is not a
#   worker, or a renewal that fell behind) among a window of at most
#   %(window)s held runs, the next window after the cursor the client keeps
#   (`Link.sweep_after`), from the front again once a window comes up short. So
#   such a run waits at most one second per %(window)s runs held.
# The three picks may meet on one run; `held_all` keeps it once, or `chosen`
# would count it twice against the limit.
def _claim(*, sweep: bool) -> str:
    """The claim statement; ``sweep``: with `held_dead` and `swept` (see above)."""
    looks = f"""
held_dead AS ({_pick(
    f"r.lease_owner IS NOT NULL AND r.run_id = ANY(ARRAY({_OF_DEAD}))", "%(limit)s", full_too=True
)}
),
window_ AS (
    SELECT * FROM (
        (SELECT r.run_id, r.priority, r.created_at, r.lease_expires <= {NOW} AS lapsed
         FROM {{runs}} r
         WHERE r.state IN {CLAIMABLE} AND r.lease_owner IS NOT NULL
            AND r.priority = %(after_priority)s::int8
            AND (r.created_at, r.run_id) > (%(after_created)s::float8, %(after_run)s::text)
         ORDER BY r.priority DESC, r.created_at, r.run_id
         LIMIT %(window)s)
        UNION ALL
        (SELECT r.run_id, r.priority, r.created_at, r.lease_expires <= {NOW} AS lapsed
         FROM {{runs}} r
         WHERE r.state IN {CLAIMABLE} AND r.lease_owner IS NOT NULL
            AND r.priority < %(after_priority)s::int8
         ORDER BY r.priority DESC, r.created_at, r.run_id
         LIMIT %(window)s)
    ) w
    LIMIT %(window)s
),
swept AS ({_pick(
    f"r.lease_owner IS NOT NULL AND r.lease_expires <= {NOW} "
    "AND r.run_id = ANY(ARRAY(SELECT run_id FROM window_ WHERE lapsed))",
    "%(limit)s",
    full_too=True,
)}
),
held_all AS (
    SELECT DISTINCT ON (run_id) * FROM (
        SELECT * FROM held UNION ALL SELECT * FROM held_dead UNION ALL SELECT * FROM swept
    ) h
    ORDER BY run_id
),"""
    cut = "(SELECT count(*) FROM free) > (SELECT n FROM free_kept)"
    if sweep:
        # Always one row, claims or not: where the window ended, for the next sweep.
        tail = f""",
meta AS (
    SELECT {cut} AS cut, (SELECT count(*) FROM window_) AS seen,
        e.priority AS end_priority, e.created_at AS end_created, e.run_id AS end_run
    FROM (SELECT) one LEFT JOIN (
        SELECT * FROM window_ ORDER BY priority, created_at DESC, run_id DESC LIMIT 1
    ) e ON true
)
SELECT u.*, meta.cut, meta.seen, meta.end_priority, meta.end_created, meta.end_run
FROM meta LEFT JOIN upd u ON true
ORDER BY u.order_priority DESC, u.order_created, u.run_id"""
    else:
        # No claim, no cut: a queue with room keeps at least one of its runs.
        tail = f"""
SELECT *, {cut} AS cut, NULL::bigint AS seen, NULL::int AS end_priority,
    NULL::float8 AS end_created, NULL::text AS end_run
FROM upd ORDER BY order_priority DESC, order_created, run_id"""
    return f"""
WITH {_DEAD},
limits AS (
    SELECT * FROM unnest(%(limited)s::text[], %(limits)s::int[]) AS l(queue, most)
),
room AS (
    SELECT l.queue, l.most - (
        -- No further than the cap: more places held leave no room either.
        SELECT count(*) FROM (
            SELECT FROM {{runs}} r
            WHERE r.queue = l.queue AND r.state IN {CLAIMABLE} AND r.lease_owner IS NOT NULL
            LIMIT l.most
        ) placed
    ) AS left_
    FROM limits l
),
free AS ({_pick("r.lease_owner IS NULL", _WANTED)}
),
free_kept AS (
    SELECT COALESCE(sum(CASE WHEN room.queue IS NULL THEN f.n ELSE LEAST(f.n, room.left_) END),
                    0) AS n
    FROM (SELECT queue, count(*) AS n FROM free GROUP BY queue) f
    LEFT JOIN room ON room.queue = f.queue
),
held AS ({_pick(
    f"r.lease_owner IS NOT NULL AND {_LAPSED}",
    "GREATEST(%(limit)s - (SELECT n FROM free_kept), 0)",
    full_too=True,
)}
),{looks if sweep else ""}
candidates AS (SELECT * FROM free UNION ALL SELECT * FROM {"held_all" if sweep else "held"}),
chosen AS (
    SELECT c.* FROM (
        SELECT c.*, row_number() OVER (
            PARTITION BY c.queue, c.lease_owner IS NULL
            ORDER BY c.priority DESC, c.created_at, c.run_id
        ) AS nth
        FROM candidates c
    ) c LEFT JOIN room ON room.queue = c.queue
    WHERE room.queue IS NULL OR c.lease_owner IS NOT NULL OR c.nth <= room.left_
    ORDER BY c.priority DESC, c.created_at, c.run_id
    LIMIT %(limit)s
),
upd AS (
    UPDATE {{runs}} r SET
        lease_owner = %(owner)s, lease_host = %(host)s, lease_pid = %(pid)s,
        lease_generation = r.lease_generation + 1,
        lease_expires = {NOW} + %(ttl)s, lease_ttl = %(ttl)s::float8
    FROM chosen c
    WHERE r.run_id = c.run_id
    RETURNING {", ".join("r." + c.strip() for c in HEADER_COLUMNS.split(","))},
        {", ".join(f"c.{c.strip()} AS previous_{c.strip()}" for c in _LEASE.split(","))},
        c.priority AS order_priority, c.created_at AS order_created
){tail}
"""


_CLAIM: Final = _claim(sweep=False)
_SWEEP: Final = _claim(sweep=True)

# The owners of this host's leases, to check their processes (DESIGN.md §3
# rule 5): one step of runs_leased per distinct owner (a loose index scan), not
# one row per lease, so 10^4 leases of four processes cost four probes. Owners
# whose leases all lapsed come too: their runs are claimable either way.
_LOCAL: Final = """
WITH RECURSIVE owners AS (
    (SELECT lease_owner, lease_pid FROM {runs}
     WHERE lease_host = %(host)s AND lease_owner IS NOT NULL
     ORDER BY lease_owner LIMIT 1)
    UNION ALL
    SELECT n.lease_owner, n.lease_pid FROM owners o, LATERAL (
        SELECT lease_owner, lease_pid FROM {runs}
        WHERE lease_host = %(host)s AND lease_owner IS NOT NULL AND lease_owner > o.lease_owner
        ORDER BY lease_owner LIMIT 1
    ) n
)
SELECT lease_owner, lease_pid FROM owners
"""

_REGISTER: Final = f"""
INSERT INTO {{workers}} (owner, lock_key, expires) VALUES (%(owner)s, %(key)s, {NOW} + %(ttl)s)
ON CONFLICT (owner) DO UPDATE SET lock_key = EXCLUDED.lock_key, expires = EXCLUDED.expires
"""

# Registrations lapsed a day ago: every lease they held has expired long since.
_FORGET: Final = f"DELETE FROM {{workers}} WHERE expires < {NOW} - 86400"


class Statements:
    """The statements above with one schema's table names (``q`` is `Statements.q`)."""

    def __init__(self, q: Callable[[str], str]) -> None:
        self.claim = q(_CLAIM)
        self.sweep = q(_SWEEP)
        self.raw = {text: _numbered(text) for text in (self.claim, self.sweep)}
        """Each claim statement -> its text with numbered parameters, and their names."""
        self.local = q(_LOCAL)
        self.register = q(_REGISTER)
        self.forget = q(_FORGET)
        self.unregister = q("DELETE FROM {workers} WHERE owner = %s")
        self.next_key = q("SELECT nextval('{worker_keys}')::int")


def _numbered(text: str) -> tuple[str, list[str]]:
    """``text`` with ``$1``, ``$2``... for its ``%(name)s`` parameters, and the names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"%\((\w+)\)s", number, text), names


def claim_params(
    owner: LeaseOwner,
    *,
    namespace: int,
    agents: Collection[str],
    queues: Collection[str] | None,
    limit: int,
    ttl: float,
    max_running: Mapping[str, int],
    gone: Collection[str],
    after: tuple[int, float, str] | None = None,
    window: int = SWEEP_WINDOW,
) -> dict[str, object]:
    """The parameters of the claim statements.

    The sweep's: ``window`` held runs after ``after`` (a claim-order key; None: from the front).
    """
    limited = sorted(max_running)
    after_priority, after_created, after_run = after or _START
    return {
        "namespace": namespace,
        "gone": sorted(gone),
        "limited": limited,
        "limits": [max_running[q] for q in limited],
        "agents": sorted(agents),
        "all_queues": queues is None,
        "queues": sorted(queues or ()),
        "limit": limit,
        "owner": owner.id,
        "host": owner.host,
        "pid": owner.pid,
        "ttl": float(ttl),
        "window": window,
        "after_priority": after_priority,
        "after_created": after_created,
        "after_run": after_run,
    }


def claimed_from_rows(rows: list[tuple[Any, ...]]) -> list[ClaimedRun]:
    """The claim statement's rows as `ClaimedRun`s (a damaged header is given up on).

    The row of a claim that claimed nothing carries only the statement's ``meta``.
    """
    claimed: list[ClaimedRun] = []
    for row in rows:
        if row[0] is None:
            continue
        try:
            header = header_from_row(row[:WIDTH])
        except CorruptRunError:
            continue  # never claimable: its state column is checked above
        owner, host, pid, generation, expires, ttl = row[WIDTH : WIDTH + 6]
        previous = (
            None
            if owner is None
            else Lease(
                owner=owner,
                host=host,
                pid=pid,
                generation=generation,
                expires_at=expires,
                ttl=ttl,
                cancel_requested=header.cancel_requested,
            )
        )
        claimed.append(ClaimedRun(header=header, previous=previous))
    return claimed



