"""`PostgresBackend`'s claims, worker liveness and wake-ups.

**A claim is one transaction, one round trip.** The statement reads the
claimable runs in claim order (highest priority, then oldest) from two partial
indexes of the runs not at rest, ``runs_claimable_free`` (nobody holds them)
and ``runs_claimable_held`` (see `_CLAIM`), skips rows another
claimer has locked (``FOR UPDATE SKIP LOCKED``), and sets each chosen run's
lease with generation + 1 in the same statement. With ``max_running``, the
transaction first takes one advisory lock per limited queue (in name order, so
claimers never deadlock); the claim statement then starts with a snapshot
taken after the lock, so it counts every claim committed before it and the cap
holds fleet-wide. It counts every held lease of a queue's runs not at rest,
lapsed or not (`holds_place`: a frozen holder writes on when it thaws unless
its run was taken over), and a takeover needs no room. A run is claimable
when nobody holds a live lease on it: no lease, an expired one (the server's
clock), one of a worker whose liveness is gone, or one of a process on the
claimer's own host that no longer exists.

**Liveness is a session advisory lock.** `register_worker` opens a connection
of the worker's own that holds ``pg_advisory_lock(namespace, key)`` for as
long as the worker lives, and records ``(owner, key, expires)`` in
``workers``. A worker counts as dead as soon as its lock is gone (a claim
probes it, see `_DEAD`), which
PostgreSQL notices when the worker's socket closes (a SIGKILL, an OOM kill, a
crashed host that resets the connection), so its runs are taken within
seconds, not after a lease TTL; or when its registration is not renewed in
time (a frozen or partitioned worker, whose connection may linger for the TCP
keepalive time).

**Wake-ups are LISTEN/NOTIFY, coalesced.** Writes that matter to a waiter (a
run created, brought to rest or released, a cancellation asked) add one
``pg_notify`` to their batch's transaction, however many such writes it
holds, and PostgreSQL folds the duplicates of a transaction into one. A
listener connection per event loop counts the notifications;
`wait_for_change` waits for the count to move. Notifications sent while the
listener was reconnecting are lost, so a reconnect counts as a change, and
every wait ends by its (jittered) timeout anyway: callers poll behind it. The
notification is best effort on the writing side too: skipped when the
server's NOTIFY queue is nearly full, never the reason a write fails
(`durable_agent.backends._postgres_wakeup`).
"""

from __future__ import annotations

import asyncio
import os
import random
import zlib
from collections.abc import Callable, Collection, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final

import psycopg

from durable_agent.backend import ClaimedRun, LeaseOwner
from durable_agent.backends._postgres_schema import CLAIMABLE
from durable_agent.backends._postgres_sql import HEADER_COLUMNS, NOW, WIDTH, header_from_row
from durable_agent.errors import CorruptRunError, StoreUnavailableError
from durable_agent.records import SCHEMA_VERSION, Lease

if TYPE_CHECKING:
    from durable_agent.backends._postgres_link import Link

__all__ = [
    "Listener",
    "Liveness",
    "Statements",
    "channel",
    "claim",
    "lock_namespace",
    "register",
    "unregister",
]

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
_CLAIM: Final = f"""
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
),
held_dead AS ({_pick(
    f"r.lease_owner IS NOT NULL AND r.run_id = ANY(ARRAY({_OF_DEAD}))",
    "CASE WHEN %(sweep)s THEN %(limit)s ELSE 0 END",
    full_too=True,
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
         LIMIT CASE WHEN %(sweep)s THEN %(window)s ELSE 0 END)
        UNION ALL
        (SELECT r.run_id, r.priority, r.created_at, r.lease_expires <= {NOW} AS lapsed
         FROM {{runs}} r
         WHERE r.state IN {CLAIMABLE} AND r.lease_owner IS NOT NULL
            AND r.priority < %(after_priority)s::int8
         ORDER BY r.priority DESC, r.created_at, r.run_id
         LIMIT CASE WHEN %(sweep)s THEN %(window)s ELSE 0 END)
    ) w
    LIMIT CASE WHEN %(sweep)s THEN %(window)s ELSE 0 END
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
),
candidates AS (SELECT * FROM free UNION ALL SELECT * FROM held_all),
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
),
-- Always one row, claims or not: whether free runs were cut for want of room
-- (the client then claims again for the rest), and where the sweep's window ended.
meta AS (
    SELECT (SELECT count(*) FROM free) > (SELECT n FROM free_kept) AS cut,
        (SELECT count(*) FROM window_) AS seen,
        e.priority AS end_priority, e.created_at AS end_created, e.run_id AS end_run
    FROM (SELECT) one LEFT JOIN (
        SELECT * FROM window_ ORDER BY priority, created_at DESC, run_id DESC LIMIT 1
    ) e ON true
)
SELECT u.*, meta.cut, meta.seen, meta.end_priority, meta.end_created, meta.end_run
FROM meta LEFT JOIN upd u ON true
ORDER BY u.order_priority DESC, u.order_created, u.run_id
"""

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


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's changes."""
    return f"durable_agent_{schema}"[:63]


def lock_namespace(schema: str) -> int:
    """The first key of this schema's advisory locks: a positive int4, alike in every process."""
    return zlib.crc32(f"durable_agent.workers:{schema}".encode()) & 0x7FFFFFFF


class Statements:
    """The statements above with one schema's table names (``q`` is `Statements.q`)."""

    def __init__(self, q: Callable[[str], str]) -> None:
        self.claim = q(_CLAIM)
        self.local = q(_LOCAL)
        self.register = q(_REGISTER)
        self.forget = q(_FORGET)
        self.unregister = q("DELETE FROM {workers} WHERE owner = %s")
        self.next_key = q("SELECT nextval('{worker_keys}')::int")


async def claim(
    link: Link,
    stmts: Statements,
    owner: LeaseOwner,
    *,
    namespace: int,
    agents: Collection[str],
    queues: Collection[str] | None,
    limit: int,
    ttl: float,
    max_running: Mapping[str, int],
) -> list[ClaimedRun]:
    """Claim up to ``limit`` runs for ``owner`` (see the module docstring).

    One transaction, unless free runs were cut for want of room in a queue
    (more of its runs came first than it had places): the queue is full then,
    and the next claim, for the rest, passes over it. At most one more per
    limited queue, so a claim never comes back short while runs it may take wait.
    """
    claimed: list[ClaimedRun] = []
    for _ in range(len(max_running) + 1):
        got, cut = await _claim_once(
            link, stmts, owner, namespace=namespace, agents=agents, queues=queues,
            limit=limit - len(claimed), ttl=ttl, max_running=max_running,
        )
        claimed += got
        if not cut or len(claimed) >= limit:
            break
    return claimed


async def _claim_once(
    link: Link,
    stmts: Statements,
    owner: LeaseOwner,
    *,
    namespace: int,
    agents: Collection[str],
    queues: Collection[str] | None,
    limit: int,
    ttl: float,
    max_running: Mapping[str, int],
) -> tuple[list[ClaimedRun], bool]:
    """One claim transaction: the runs claimed, and whether free runs were cut for want of room."""
    gone = await _gone_here(link, stmts, owner.host)
    now = asyncio.get_running_loop().time()
    sweep = now - link.swept >= _SWEEP_EVERY
    if sweep:
        link.swept = now
    window = SWEEP_WINDOW
    params = claim_params(
        owner, namespace=namespace, agents=agents, queues=queues, limit=limit, ttl=ttl,
        max_running=max_running, gone=gone, sweep=sweep, after=link.sweep_after, window=window,
    )
    try:
        async with link.claimer() as conn:
            if not max_running:
                cur = await conn.execute(stmts.claim, params)
                rows = await cur.fetchall()
            else:
                # The queue locks first, then the claim's snapshot: it sees every
                # claim committed before this one got the locks.
                async with conn.pipeline(), conn.transaction():
                    for queue in sorted(max_running):
                        await conn.execute(
                            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (namespace, queue)
                        )
                    cur = await conn.execute(stmts.claim, params)
                    rows = await cur.fetchall()
    except psycopg.Error as exc:
        raise StoreUnavailableError(
            f"PostgreSQL store {link.settings.where}: a claim failed ({first_line(exc)}); "
            "nothing was claimed"
        ) from exc
    cut, seen, *end = rows[-1][-5:]
    if sweep:
        # A window that came up short reached the end: the next one starts at the front.
        link.sweep_after = (int(end[0]), float(end[1]), str(end[2])) if seen >= window else None
    return claimed_from_rows(rows), bool(cut)


_SWEEP_EVERY: Final = 1.0
"""Most seconds between two claims of a link that look for lapsed leases whatever the free runs.

So a run whose worker is gone waits at most this long behind newer free runs
of no higher priority, and the claims in between cost nothing per run in flight.
"""

SWEEP_WINDOW: Final = 500
"""How many held runs a sweep looks at for leases lapsed by the clock (~0.3 ms here).

A run whose lease lapsed while its owner still counts as alive waits at most
one `_SWEEP_EVERY` per this many runs held behind newer free runs.
"""

_START: Final = (2**31, 0.0, "")
"""The sweep's cursor before the first held run: above any priority (an INTEGER)."""

_LOOK_AGAIN: Final = 1.0
"""Seconds between two looks at this host's leases for processes that are gone."""


async def _gone_here(link: Link, stmts: Statements, host: str) -> list[str]:
    """The owners of this host's live leases whose processes are gone (DESIGN.md §3 rule 5).

    Looked up at most once a second: an owner once gone stays gone (its id
    holds a random nonce), so only a death in the last second waits one more
    claim, and the claim stays one round trip.
    """
    now = asyncio.get_running_loop().time()
    if now - link.gone_checked >= _LOOK_AGAIN:
        link.gone_checked = now
        local = await link.read(stmts.local, {"host": host})
        link.gone = {o for o, pid in local if isinstance(pid, int) and not process_alive(pid)}
    return sorted(link.gone)


async def register(
    link: Link, stmts: Statements, owner: LeaseOwner, *, ttl: float, namespace: int
) -> None:
    """Hold ``owner``'s liveness lock on a connection of its own and renew its registration."""
    live = link.liveness.get(owner.id)
    try:
        if live is None or not live.usable:
            if live is not None:
                live.abandon()
            conn = await link.connect()
            try:
                # A fresh key each time: a session of this owner that the server
                # has not yet noticed is gone may still hold the old one.
                key = (await (await conn.execute(stmts.next_key)).fetchall())[0][0]
                await conn.execute("SELECT pg_advisory_lock(%s, %s)", (namespace, key))
            except BaseException:
                await conn.close()
                raise
            live = link.liveness[owner.id] = Liveness(owner.id, int(key), conn)
            await conn.execute(stmts.forget)
        # Renewed on the lock's own connection: a worker cut off from the
        # store cannot renew, so its registration lapses too.
        await live.conn.execute(
            stmts.register, {"owner": owner.id, "key": live.key, "ttl": float(ttl)}
        )
    except psycopg.Error as exc:
        if live is not None:
            live.abandon()
        raise StoreUnavailableError(
            f"PostgreSQL store {link.settings.where}: registering worker {owner.id} failed "
            f"({first_line(exc)})"
        ) from exc


async def unregister(link: Link, stmts: Statements, owner: LeaseOwner) -> None:
    """Delete ``owner``'s registration and close its lock's connection."""
    await link.read(stmts.unregister, (owner.id,))
    live = link.liveness.pop(owner.id, None)
    if live is not None:
        try:
            await live.conn.close()
        except psycopg.Error:
            live.abandon()


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
    sweep: bool = True,
    after: tuple[int, float, str] | None = None,
    window: int = SWEEP_WINDOW,
) -> dict[str, object]:
    """The parameters of the claim statement.

    ``sweep``: look for lapsed leases whatever the free runs: the dead owners'
    runs, and ``window`` held runs after ``after`` (a claim-order key; None: from the front).
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
        "sweep": sweep,
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


class Liveness:
    """One worker's own connection, holding its advisory lock while the worker lives."""

    def __init__(self, owner: str, key: int, conn: psycopg.AsyncConnection[Any]) -> None:
        self.owner = owner
        self.key = key
        self.conn = conn

    @property
    def usable(self) -> bool:
        return not self.conn.closed and not self.conn.broken

    def abandon(self) -> None:
        if not self.conn.closed:
            self.conn.pgconn.finish()


class Listener:
    """One event loop's LISTEN connection and the count of notifications it received."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.conn: psycopg.AsyncConnection[Any] | None = None

    def token(self) -> str:
        return str(self.count)

    def bump(self) -> None:
        self.count += 1
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait(self, after: str, timeout: float) -> str:
        if after != self.token():
            return self.token()
        changed = self.changed
        # Jittered, so a fleet's polls behind the notifications spread out.
        with_jitter = timeout * random.uniform(0.8, 1.0)
        with suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), with_jitter)
        return self.token()

    def abandon(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()


def process_alive(pid: int) -> bool:
    """Whether a live process has ``pid`` on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[:1] != ["Z"]
    except OSError:
        return True


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
