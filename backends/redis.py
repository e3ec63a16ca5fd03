"""A durable store on plain Redis (6 or newer, no modules), shared by any number of workers.

Each write (create, append, lease changes, cancel, delete) is one Lua script,
so one round trip that Redis runs atomically: the append script checks the
expected ``seq``, the lease generation and owner, then pushes the events,
updates the header and moves the run between state indexes, or writes nothing
(see `durable_agent.backends._redis_scripts` for the keys and the scripts).

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` a
returned append survives a Redis crash or power loss; with ``appendfsync
everysec`` (Redis's default when AOF is on) up to a second of appends may be
lost on a power loss, none on a Redis process crash; with no AOF and only RDB
snapshots (``save``), everything since the last snapshot is lost when Redis
restarts. A script is written to the AOF as one MULTI/EXEC, so a restart
never replays half an append. See docs/backends.md.

Calls queue for the connections of a pool, one pool per event loop, in
arrival order and by default without a deadline; a Redis that cannot be
reached, or goes away mid-call, raises `StoreUnavailableError` with nothing
half-written, and calls are never retried behind the caller's back (see
`durable_agent.backends._redis_link`).

On Redis Cluster (``redis+cluster://`` or ``cluster=True``) a run's keys share
the hash tag ``{run_id}``, so every write to a run is still one atomic
single-slot script; the listing indexes live in another slot and are updated
right after, with an intent recorded first, so a listing finishes any update a
dead writer left (see `durable_agent.backends._redis_cluster`); queue places
keep ``max_running`` atomic there (`durable_agent.backends._redis_cluster_places`).

This module is `RedisBackend`: its options, keys and reads, and which write
runs where; beside it are the connection (`durable_agent.backends._redis_link`:
one client per event loop, redis-py's errors translated, scripts run, the
options checked), the writes on one Redis (`durable_agent.backends._redis_writes`)
and on a cluster (`durable_agent.backends._redis_cluster_writes`), listing
(`durable_agent.backends._redis_listing`: ``list_runs`` and the runs ``prune``
deletes), the Lua scripts (`durable_agent.backends._redis_scripts`,
`durable_agent.backends._redis_cluster_scripts`) and the header hashes
(`durable_agent.backends._redis_records`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, NoReturn

from durable_agent.backend import (
    Backend,
    Capability,
    ClaimedRun,
    LeaseOwner,
    MigrationReport,
    RunPage,
    check_append,
    check_claim_args,
)
from durable_agent.backends import _redis_migrate as migration
from durable_agent.backends import _redis_records as rec
from durable_agent.backends import _redis_relay as relay
from durable_agent.backends import _redis_scripts as lua
from durable_agent.backends import _redis_writes as writes
from durable_agent.backends._log_checks import whole_run
from durable_agent.errors import (
    ConfigurationError,
    RunNotFoundError,
)
from durable_agent.fsm import RunState
from durable_agent.records import (
    Event,
    Lease,
    RunHeader,
    StoredRun,
    decode_event,
)

try:
    # From redis.asyncio, the client this backend runs on: a missing (or pre-asyncio)
    # redis-py fails here, with the hint below, even once the helpers are imported.
    from redis.asyncio import ResponseError  # noqa: F401  (the check, not the name)

    from durable_agent.backends import _redis_claims as claims
    from durable_agent.backends import _redis_cluster as clx
    from durable_agent.backends import _redis_cluster_places as places
    from durable_agent.backends import _redis_cluster_writes as cluster_writes
    from durable_agent.backends import _redis_workers as workers
    from durable_agent.backends._redis_link import (
        Client,
        Connection,
        Link,
        check_options,
        hide,
    )
    from durable_agent.backends._redis_listing import Listing
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "RedisBackend needs the redis package: pip install 'durable-agent[redis]'",
        name="redis",
    ) from exc

__all__ = ["RedisBackend"]

_STATES: Final = tuple(state.value for state in RunState)


class RedisBackend(Backend):
    """Runs in Redis: durable per Redis's persistence settings, shared by many hosts.

    Works on one Redis primary (with replicas or Sentinel) and on Redis Cluster.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, or ``rediss://`` for
            TLS; redis-py's URL options (``?socket_keepalive=true``, ...) work.
            ``redis+cluster://host:port`` (``rediss+cluster://`` for TLS) names
            any one node of a Redis Cluster; the others are discovered.
        prefix: put before every key, so several stores share one database.
            May not contain ``{`` or ``}`` (the run id is the keys' hash tag).
        cluster: use Redis Cluster; None (the default) decides by the URL's
            scheme. On a cluster each write to a run is still one atomic script
            (a run's keys share one slot, through the hash tag ``{run_id}``);
            the listing indexes live in the slot of ``{idx}`` and are updated
            right after that script, an intent recorded first. A listing thus
            reads every run's header and checks its filters there, finishes
            index updates a dead writer left, and may miss or include (in its
            new state) a run that changes bucket while it runs; see
            docs/backends.md. Every lease holds a queue place there, so
            ``max_running`` holds atomically. Run ids may not start with ``}``.
        session_id: tags the runs an agent creates through this backend.
        user_id: tags the runs an agent creates through this backend.
        retention: seconds a run is kept once it is DONE or CANCELLED (a TTL
            on its keys); None keeps it until deleted or pruned.
        max_connections: size of the connection pool of each event loop, and
            the number of calls at once (on a cluster: of each node's pool).
            More runs than connections is fine: calls wait their turn, first
            come, first served.
        pool_timeout: seconds a call may wait for its turn before raising
            `StoreUnavailableError`; None (the default) waits however long,
            since a busy pool is this process's own back-pressure, not an
            outage (each call ahead is bounded by ``socket_timeout``).
        socket_timeout: seconds a call waits for Redis's answer.
        connect_timeout: seconds to open a connection.

    The constructor does no I/O; the first call connects.
    """

    capabilities = frozenset(
        {
            Capability.DURABLE,
            Capability.CROSS_PROCESS,
            Capability.CLAIM,
            Capability.QUEUE_LIMIT,
            Capability.WORKER_LIVENESS,
            Capability.WAKE_UP,
            Capability.RELAY,
            Capability.MIGRATE,
        }
    )
    """On Redis Cluster an instance lacks CLAIM (see `claim_runs`)."""

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "durable-agent:",
        session_id: str | None = None,
        user_id: str | None = None,
        retention: float | None = None,
        max_connections: int = 50,
        pool_timeout: float | None = None,
        socket_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        cluster: bool | None = None,
    ) -> None:
        super().__init__(session_id=session_id, user_id=user_id)
        node_url, cluster = check_options(
            url, cluster, prefix=prefix, retention=retention, max_connections=max_connections,
            timeouts={"pool_timeout": pool_timeout, "socket_timeout": socket_timeout,
                      "connect_timeout": connect_timeout},
        )
        self._url = url
        self._node_url = node_url
        self.cluster = cluster
        self.prefix = prefix
        self._retention_ms = str(round(retention * 1000)) if retention else "0"
        self._conn = Connection(
            url=url,
            node_url=node_url,
            cluster=cluster,
            label=repr(self),
            max_connections=max_connections,
            pool_timeout=pool_timeout,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
        )
        self._indexes = clx.ClusterIndexes(self) if cluster else None
        if cluster:
            # The claim indexes span slots: a cluster lists, then takes queue places.
            # Set on the instance, which the class attribute's readers all look at.
            vars(self)["capabilities"] = type(self).capabilities - {Capability.CLAIM}
        self._index_flag = "" if cluster else "1"
        """Passed to the lease scripts: '1' keeps the claim indexes (single Redis)."""
        self._claims_indexed = False
        """Whether `durable_agent.backends._redis_claims.backfill` has run (or was not needed)."""
        self._listing = Listing(self, self._conn)
        self._announcing: set[asyncio.Task[None]] = set()
        """Wake-up announcements in flight (`durable_agent.backends._redis_workers`)."""

    def __repr__(self) -> str:
        return f"RedisBackend({hide(self._url)!r}, prefix={self.prefix!r})"

    # -- keys and connections --------------------------------------------------------------

    def _keys(self, run_id: str) -> list[str]:
        if not isinstance(run_id, str) or not run_id:
            raise ConfigurationError(f"run id {run_id!r} must be a non-empty str")
        if run_id[0] == "}" and self.cluster:
            # "{}" is no hash tag: the run's two keys would fall in different slots.
            raise ConfigurationError(f"run id {run_id!r} may not start with '}}' on Redis Cluster")
        tag = f"{self.prefix}{{{run_id}}}"
        return [f"{tag}:header", f"{tag}:events"]

    # Every call to Redis passes through these, ClusterIndexes' and Listing's too,
    # so there is one place where scripts run and redis-py's errors are translated.

    def _connect(self) -> Link:
        """This event loop's client and gate; opened on first use."""
        return self._conn.link()

    def _client(self) -> Client:
        return self._conn.link().client

    def _translate(self, exc: BaseException) -> NoReturn:
        """Raise what a redis-py error means for the caller."""
        self._conn.translate(exc)

    def _eval(
        self, script: lua.Script, keys: Sequence[str], args: Sequence[Any]
    ) -> Coroutine[Any, Any, Any]:
        # The connection's coroutine itself, not one more frame around it.
        return self._conn.eval(script, keys, args)

    async def _read_headers(self, run_ids: Sequence[str]) -> list[Any]:
        """HGETALL of runs' headers in one round trip (one per node on a cluster)."""
        return await self._listing.read_headers(run_ids)

    # -- runs ------------------------------------------------------------------------------------

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        keys = self._keys(header.run_id)
        if self._indexes is not None:
            await cluster_writes.create(self, header, events, keys)
        else:
            await writes.create(self, header, events, keys)
        await self._announce(header.lease is None, "created")

    async def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        lease: Lease,
        release: bool = False,
    ) -> Lease:
        events = tuple(events)
        keys = self._keys(run_id)
        if any(e.seq != expected_seq + i for i, e in enumerate(events, start=1)):
            # Refused without writing; the shared rule says why, lease first.
            current = await self.get_run(run_id)
            check_append(current, events, expected_seq=expected_seq, lease=lease)
        last = events[-1] if events else None
        control = (
            self._retention_ms,
            str(lease.generation),
            lease.owner,
            repr(float(lease.ttl)),
            str(expected_seq),
            str(last.seq if last else expected_seq),
            last.state.value if last else "",
            "1" if release else "0",
        )
        if self._indexes is not None:
            renewed = await cluster_writes.append(self, run_id, keys, events, control, lease)
        else:
            renewed = await writes.append(self, run_id, keys, events, control, lease)
        await self._announce(release, "released")
        return renewed

    async def load_run(self, run_id: str) -> StoredRun:
        reply = await self._eval(lua.LOAD, self._keys(run_id), [])
        rec.status(run_id, reply)
        header = rec.header_from_hash(run_id, reply[1])
        events = tuple(decode_event(run_id, seq, raw) for seq, raw in enumerate(reply[2], start=1))
        return whole_run(run_id, header, events)

    async def get_run(self, run_id: str) -> RunHeader:
        raw = await self._conn.header_hash(run_id, self._keys(run_id)[0])
        if not raw:
            raise RunNotFoundError(run_id)
        return rec.header_from_hash(run_id, raw)

    async def list_runs(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        states: Collection[RunState] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        return await self._listing.page(
            session_id=session_id,
            user_id=user_id,
            states=states,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )

    async def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        """Rewrite older records at this version, one script per run (`_redis_migrate`)."""
        return await migration.migrate(self, self._keys, self._eval, lua.LOAD, dry_run)

    async def delete_run(self, run_id: str) -> bool:
        keys = self._keys(run_id)
        if self._indexes is not None:
            return await cluster_writes.delete(self, run_id, keys)
        return await writes.delete(self, run_id, keys)

    async def prune(
        self,
        *,
        older_than: datetime,
        states: Collection[RunState] = (RunState.DONE, RunState.CANCELLED),
    ) -> int:
        cutoff = rec.stamp(older_than)
        wanted = sorted({RunState(s).value for s in states})
        self._client()
        if not wanted:
            return 0
        doomed = await self._listing.prunable(older_than, cutoff, wanted)
        if self._indexes is not None:
            return await cluster_writes.prune(self, doomed, wanted)
        return await writes.prune(self, doomed, wanted)

    async def repair_indexes(self) -> int:
        """Rebuild the listing indexes from the runs' headers; return how many runs it indexed.

        Only Redis Cluster needs it, and only after a failover lost writes of the
        index slot but not of a run's slot (replication is asynchronous): listings
        mend everything else themselves. Safe while other processes write. On a
        single Redis the indexes are written with the runs, so it does nothing.
        """
        if self._indexes is None:
            self._client()
            return 0
        return await self._indexes.rebuild()

    async def request_cancel(self, run_id: str, reason: str) -> RunHeader:
        reply = await self._eval(lua.CANCEL, self._keys(run_id)[:1], [reason])
        rec.status(run_id, reply)
        await self._announce(True, "cancel")
        return rec.header_from_hash(run_id, reply[1])

    # -- leases ---------------------------------------------------------------------------------

    async def acquire_lease(
        self, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None = None
    ) -> Lease:
        if self._indexes is not None:
            return await places.acquire(self, run_id, owner, ttl=ttl, takeover=takeover)
        return await writes.acquire(self, run_id, owner, ttl=ttl, takeover=takeover)

    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        if self._indexes is not None:
            return await places.renew(self, run_id, lease)
        return await writes.renew(self, run_id, lease)

    async def release_lease(self, run_id: str, lease: Lease) -> None:
        if self._indexes is not None:
            await places.release(self, run_id, lease)
        else:
            await writes.release(self, run_id, lease)
        await self._announce(True, "released")

    # -- workers -----------------------------------------------------------------------------------

    async def claim_runs(
        self,
        owner: LeaseOwner,
        *,
        agents: Collection[str],
        queues: Collection[str] | None = None,
        limit: int = 1,
        ttl: float = 30.0,
        max_running: Mapping[str, int] | None = None,
    ) -> list[ClaimedRun]:
        """Claim in one atomic script over the claim indexes; on a cluster, place by place.

        On one Redis (`durable_agent.backends._redis_claims`) the script takes
        lapsed workers' and expired leases from the expiry index, checks
        ``max_running`` and grants the leases with the generation bump, all in
        one atomic step. On Redis Cluster (`durable_agent.backends._redis_cluster_places`)
        claims list the runs not at rest, take queue places in one script
        (``max_running`` checked there), then acquire each in its own slot.
        """
        check_claim_args(agents, limit, ttl, max_running)
        if limit == 0 or not agents:
            return []
        if self._indexes is None:
            granted = await claims.claim(
                self, owner, agents=agents, queues=queues, limit=limit, ttl=ttl,
                max_running=max_running,
            )
            return granted
        dead = await workers.dead_workers(self)
        return await places.claim(
            self, owner, agents=agents, queues=queues, limit=limit, ttl=ttl,
            max_running=max_running, dead_owners=dead,
        )

    async def register_worker(self, owner: LeaseOwner, *, ttl: float) -> None:
        await workers.register(self, owner.id, ttl)

    async def unregister_worker(self, owner: LeaseOwner) -> None:
        await workers.unregister(self, owner.id)

    async def wait_for_change(self, after: str | None = None, *, timeout: float) -> str:
        if after is None:
            return await workers.latest(self)
        return await workers.wait(self, after, timeout)

    async def _announce(self, really: bool, what: str) -> None:
        """Wake waiters after a write that matters to them (never for a plain append).

        Sent on its own task: the write has landed, so neither a failure of the
        announcement nor a cancellation of the caller may look like the write's.
        """
        if really:
            workers.announce_soon(self, what)

    # -- relay (pub/sub; a no-op on a cluster) ----------------------------------------------------

    async def publish_ephemeral(self, run_id: str, message: str) -> None:
        if not self.cluster:
            await relay.publish(self._client(), f"{self._keys(run_id)[0][:-7]}:relay", message)

    def subscribe_ephemeral(
        self, run_id: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[str]] | None:
        channel = f"{self._keys(run_id)[0][:-7]}:relay"  # the header key without ":header"
        return None if self.cluster else relay.messages(self._client(), channel)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close this loop's connection pool; idempotent. Later calls raise."""
        await workers.flush(self)
        await self._conn.close()
