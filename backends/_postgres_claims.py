"""`PostgresBackend`'s claims, worker liveness and wake-ups.

**A claim is one transaction, one round trip.** The statement reads the
claimable runs in claim order (highest priority, then oldest) from two partial
indexes of the runs not at rest, ``runs_claimable_free`` (nobody holds them)
and ``runs_claimable_held`` (the SQL is `_postgres_claim_sql`), skips rows another
claimer has locked (``FOR UPDATE SKIP LOCKED``: the scan goes on past them, so
they never shorten a claim), and sets each chosen run's lease with generation
+ 1 in the same statement. Once a second a claim also sweeps for lapsed leases
(`_SWEEP_EVERY`), at a cost bounded whatever the runs in flight. With ``max_running``, the
transaction first takes one advisory lock per limited queue (in name order, so
claimers never deadlock); the claim statement then starts with a snapshot
taken after the lock, so it counts every claim committed before it and the cap
holds fleet-wide. It counts every held lease of a queue's runs not at rest,
lapsed or not (`holds_place`: a frozen holder writes on when it thaws unless
its run was taken over), and a takeover needs no room. When runs of a queue
with fewer places left than it had runs among them cut the claim short, a
second transaction claims the rest (`claim`). A run is claimable
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
from collections.abc import Collection, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final

import psycopg

from durable_agent.backend import ClaimedRun, LeaseOwner
from durable_agent.backends._postgres_claim_sql import (
    SWEEP_WINDOW,
    Statements,
    claim_params,
    claimed_from_rows,
)
from durable_agent.errors import StoreUnavailableError

if TYPE_CHECKING:
    from durable_agent.backends._postgres_link import Link

__all__ = [
    "SWEEP_WINDOW",
    "Listener",
    "Liveness",
    "Statements",
    "channel",
    "claim",
    "claim_params",
    "claimed_from_rows",
    "lock_namespace",
    "register",
    "unregister",
]

def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's changes."""
    return f"durable_agent_{schema}"[:63]


def lock_namespace(schema: str) -> int:
    """The first key of this schema's advisory locks: a positive int4, alike in every process."""
    return zlib.crc32(f"durable_agent.workers:{schema}".encode()) & 0x7FFFFFFF


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
        max_running=max_running, gone=gone, after=link.sweep_after, window=window,
    )
    query, names = stmts.raw[stmts.sweep if sweep else stmts.claim]
    args = [params[name] for name in names]
    try:
        async with link.claimer() as conn:
            cur = psycopg.AsyncRawCursor(conn)
            if not max_running:
                await cur.execute(query, args)
                rows = await cur.fetchall()
            else:
                # The queue locks first, then the claim's snapshot: it sees every
                # claim committed before this one got the locks.
                async with conn.pipeline(), conn.transaction():
                    for queue in sorted(max_running):
                        await conn.execute(
                            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (namespace, queue)
                        )
                    await cur.execute(query, args)
                    rows = await cur.fetchall()
    except psycopg.Error as exc:
        raise StoreUnavailableError(
            f"PostgreSQL store {link.settings.where}: a claim failed ({first_line(exc)}); "
            "nothing was claimed"
        ) from exc
    if not rows:  # nothing claimed, and no sweep (which always has its row)
        return [], False
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
