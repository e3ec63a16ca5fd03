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

Connections come from a blocking pool: when all ``max_connections`` are busy,
a caller waits (up to ``pool_timeout`` seconds) for one instead of failing, so
a thousand runs on one event loop share a few dozen connections. A Redis that
cannot be reached, or goes away mid-call, raises `StoreUnavailableError` (the
redis-py error chained); the scripts are atomic, so nothing is half-written,
and the run continues once Redis is back. Calls are not retried by redis-py:
a retried append whose first attempt reached Redis would fail its own seq
check and look like a concurrent writer.

redis-py's asyncio connections belong to the event loop that opened them, so
the backend keeps one pool per event loop: used from a new loop (``agent.do``
runs each call under a fresh ``asyncio.run``) it opens a new pool there, and
when a loop shuts down its pool is closed with it.

On Redis Cluster (``redis+cluster://`` or ``cluster=True``) a run's keys share
the hash tag ``{run_id}``, so every write to a run is still one atomic
single-slot script; the listing indexes live in another slot and are updated
right after, with an intent recorded first, so a listing finishes any update a
dead writer left (see `durable_agent.backends._redis_cluster`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext, suppress
from datetime import datetime
from types import TracebackType
from typing import Any, Final, NoReturn, cast
from urllib.parse import urlsplit, urlunsplit

from durable_agent.backend import (
    Backend,
    Capability,
    LeaseOwner,
    Position,
    RunPage,
    UnreadableRun,
    check_append,
    check_lease_acquire,
    decode_cursor,
    make_page,
)
from durable_agent.backends import _redis_records as rec
from durable_agent.backends import _redis_scripts as lua
from durable_agent.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    CorruptRunError,
    LeaseLostError,
    RunExistsError,
    RunNotFoundError,
    StoreUnavailableError,
)
from durable_agent.fsm import RunState
from durable_agent.records import (
    Event,
    Lease,
    RunHeader,
    StoredRun,
    decode_event,
    encode_event,
)

try:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import (
        ClusterError,
        NoScriptError,
        RedisClusterException,
        ResponseError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from durable_agent.backends import _redis_cluster as clx
    from durable_agent.backends import _redis_cluster_scripts as cl
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "RedisBackend needs the redis package: pip install 'durable-agent[redis]'",
        name="redis",
    ) from exc

__all__ = ["RedisBackend"]

_STATES: Final = tuple(state.value for state in RunState)
_BATCH: Final = 200
"""Index entries read (and headers fetched in one pipeline) per round trip when listing."""
_UNAVAILABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    TryAgainError,
    RedisClusterException,
)
"""Errors that mean Redis could not be reached or could not serve the call right now."""
_CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

Client = aioredis.Redis | RedisCluster


class _Link:
    """One event loop's client and pool, closed when that loop shuts down.

    On Redis Cluster redis-py's per-node pools fail a call when they are full
    instead of waiting, so ``gate`` (a semaphore as large as a node's pool)
    makes calls wait for their turn: a call holds at most one connection per
    node, so no node's pool is ever exhausted. Each call also waits until the
    client knows the cluster's layout: redis-py 8 drops connections in use when
    several calls discover it at once.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: Client,
        gate: asyncio.Semaphore | None = None,
        pool_timeout: float = 0.0,
    ) -> None:
        self.loop = loop
        self.client = client
        self.gate = gate
        self.pool_timeout = pool_timeout
        self.layout = asyncio.Lock()
        self.closed = False
        self.keeper = loop.create_task(self._keep(), name="RedisBackend pool keeper")

    def turn(self) -> AbstractAsyncContextManager[object]:
        """Wait for a free connection (cluster mode; a no-op on a single Redis)."""
        if self.gate is None:
            return nullcontext()
        return _Turn(self)

    async def _keep(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            # Cancelled by close(), or by asyncio.run() shutting the loop down.
            self.closed = True
            if isinstance(self.client, RedisCluster):
                await self.client.aclose()
            else:
                await self.client.aclose(close_connection_pool=True)

    async def close(self) -> None:
        if not self.keeper.done():
            self.keeper.cancel()
            with suppress(asyncio.CancelledError):
                await self.keeper


class _Turn:
    """One call's permit of a `_Link` gate, taken once the cluster's layout is known."""

    def __init__(self, link: _Link) -> None:
        assert link.gate is not None
        assert isinstance(link.client, RedisCluster)
        self.gate = link.gate
        self.link = link
        self.client = link.client

    async def __aenter__(self) -> None:
        if self.gate.locked():
            try:
                async with asyncio.timeout(self.link.pool_timeout):
                    await self.gate.acquire()
            except TimeoutError:
                raise StoreUnavailableError(
                    f"no Redis connection became free within pool_timeout="
                    f"{self.link.pool_timeout} s"
                ) from None
        else:
            await self.gate.acquire()
        try:
            async with self.link.layout:
                await self.client.initialize()  # a no-op once the layout is known
        except BaseException:
            self.gate.release()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.gate.release()


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
            docs/backends.md. Run ids may not start with ``}`` there.
        session_id: tags the runs an agent creates through this backend.
        user_id: tags the runs an agent creates through this backend.
        retention: seconds a run is kept once it is DONE or CANCELLED (a TTL
            on its keys); None keeps it until deleted or pruned.
        max_connections: size of the connection pool of each event loop (on a
            cluster: of each node's pool, and the number of calls at once).
        pool_timeout: seconds a call waits for a free connection before
            raising `StoreUnavailableError`.
        socket_timeout: seconds a call waits for Redis's answer.
        connect_timeout: seconds to open a connection.

    The constructor does no I/O; the first call connects.
    """

    capabilities = frozenset({Capability.DURABLE, Capability.CROSS_PROCESS})

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "durable-agent:",
        session_id: str | None = None,
        user_id: str | None = None,
        retention: float | None = None,
        max_connections: int = 50,
        pool_timeout: float = 20.0,
        socket_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        cluster: bool | None = None,
    ) -> None:
        super().__init__(session_id=session_id, user_id=user_id)
        schemes = ("redis", "rediss", "unix", *_CLUSTER_SCHEMES)
        if not isinstance(url, str) or urlsplit(url).scheme.lower() not in schemes:
            raise ConfigurationError(
                f"RedisBackend(url={_hide(url)!r}) must be a redis://, rediss://, unix:// or "
                "redis+cluster:// URL"
            )
        node_url, cluster = _cluster_url(url, cluster)
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"RedisBackend(prefix={prefix!r}) must be a str without '{{' or '}}'"
            )
        if retention is not None and (
            not isinstance(retention, int | float) or isinstance(retention, bool) or retention <= 0
        ):
            raise ConfigurationError(
                f"RedisBackend(retention={retention!r}) must be a number of seconds > 0, or None"
            )
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigurationError(
                f"RedisBackend(max_connections={max_connections!r}) must be an int >= 1"
            )
        for name, value in (
            ("pool_timeout", pool_timeout),
            ("socket_timeout", socket_timeout),
            ("connect_timeout", connect_timeout),
        ):
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigurationError(f"RedisBackend({name}={value!r}) must be seconds > 0")
        self._url = url
        self._node_url = node_url
        self.cluster = cluster
        self.prefix = prefix
        self._retention_ms = str(round(retention * 1000)) if retention else "0"
        self._pool_timeout = float(pool_timeout)
        self._max_connections = max_connections
        self._pool_options: dict[str, Any] = {
            "max_connections": max_connections,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if not cluster:
            self._pool_options["timeout"] = pool_timeout
        self._indexes = clx.ClusterIndexes(self) if cluster else None
        self._link: _Link | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisBackend({_hide(self._url)!r}, prefix={self.prefix!r})"

    # -- keys and connections --------------------------------------------------------------

    def _keys(self, run_id: str) -> list[str]:
        if not isinstance(run_id, str) or not run_id:
            raise ConfigurationError(f"run id {run_id!r} must be a non-empty str")
        if run_id[0] == "}" and self.cluster:
            # "{}" is no hash tag: the run's two keys would fall in different slots.
            raise ConfigurationError(f"run id {run_id!r} may not start with '}}' on Redis Cluster")
        tag = f"{self.prefix}{{{run_id}}}"
        return [f"{tag}:header", f"{tag}:events"]

    def _connect(self) -> _Link:
        """This event loop's client (and, on a cluster, its gate); opened on first use."""
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        link = self._link
        if link is None or link.loop is not loop or link.closed:
            if self.cluster:
                client = RedisCluster.from_url(self._node_url, **self._pool_options)
                gate = asyncio.Semaphore(self._max_connections)
                link = self._link = _Link(loop, client, gate, self._pool_timeout)
            else:
                pool = aioredis.BlockingConnectionPool.from_url(self._url, **self._pool_options)
                link = self._link = _Link(loop, aioredis.Redis(connection_pool=pool))
        return link

    def _client(self) -> Client:
        return self._connect().client

    def _unavailable(self, exc: BaseException) -> NoReturn:
        raise StoreUnavailableError(
            f"Redis store {_hide(self._url)} is unavailable ({type(exc).__name__}: {exc}); "
            "nothing was half-written: an append either happened whole or not at all, so "
            "reload the run and continue it once Redis is back"
        ) from exc

    def _translate(self, exc: BaseException) -> NoReturn:
        """Raise what a redis-py error means for the caller."""
        if isinstance(exc, _UNAVAILABLE):
            self._unavailable(exc)
        if isinstance(exc, ResponseError):
            self._response_error(exc)
        raise exc

    async def _eval(self, script: lua.Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        link = self._connect()
        if link.gate is not None:
            try:
                async with link.turn():
                    return await self._evalsha(link.client, script, keys, args)
            except _UNAVAILABLE as exc:  # finding the cluster's layout failed
                self._unavailable(exc)
        return await self._evalsha(link.client, script, keys, args)

    async def _evalsha(
        self, client: Client, script: lua.Script, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        try:
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:  # a restarted or flushed Redis forgot the script
                await client.script_load(script.source)
                return await client.evalsha(script.sha, len(keys), *keys, *args)
        except _UNAVAILABLE as exc:
            self._unavailable(exc)
        except ResponseError as exc:
            self._response_error(exc)

    def _response_error(self, exc: ResponseError) -> NoReturn:
        text = str(exc)
        if text.startswith(
            ("LOADING", "READONLY", "MISCONF", "OOM", "BUSY", "MASTERDOWN", "CLUSTERDOWN")
        ):
            self._unavailable(exc)
        raise StoreUnavailableError(
            f"Redis store {_hide(self._url)} refused a call: {text}"
        ) from exc

    def _status(self, run_id: str, reply: Any) -> str:
        status = rec.text(reply[0])
        if status == "missing":
            raise RunNotFoundError(run_id)
        if status == "wrongtype":
            which, kind = rec.text(reply[1]), rec.text(reply[2])
            raise CorruptRunError(
                run_id, None, f"its Redis {which} key holds a {kind}, not the expected type"
            )
        if status == "corrupt":
            detail = " ".join(rec.text(part) for part in reply[1:])
            raise CorruptRunError(run_id, None, f"the stored header does not match ({detail})")
        return status

    # -- runs ------------------------------------------------------------------------------------

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        keys = self._keys(header.run_id)
        fields = rec.header_fields(header)
        ix = self._indexes
        if ix is None:
            args = [self.prefix, self._retention_ms, len(fields), *fields]
            args.extend(encode_event(event) for event in events)
            reply = await self._eval(lua.CREATE, keys, args)
            if rec.text(reply[0]) == "exists":
                raise RunExistsError(header.run_id)
            return
        incarnation = await ix.intent(header.run_id, header.seq, new=True)
        args = [self._retention_ms, incarnation, len(fields), *fields]
        args.extend(encode_event(event) for event in events)
        reply = await self._eval(cl.CREATE, keys, args)
        if rec.text(reply[0]) == "exists":
            raise RunExistsError(header.run_id)
        await ix.index([ix.truth(header, incarnation)], after_write=True)

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
            return await self._append_on_cluster(run_id, keys, events, control, lease)
        args = ["".join(f"{part}\x1f" for part in control)]
        args.extend(encode_event(event) for event in events)
        reply = await self._eval(lua.APPEND, keys, args)
        if isinstance(reply, bytes):  # the one-string success reply: ok, expires[, cancel]
            return _renewed(lease, reply)
        if self._status(run_id, reply) == "refused":
            current = rec.header_from_hash(run_id, reply[1])
            check_append(current, events, expected_seq=expected_seq, lease=lease)
            raise ConcurrentUpdateError(run_id, "the append was refused")  # not reached
        return lease.model_copy(
            update={
                "expires_at": float(rec.text(reply[1])),
                "ttl": float(lease.ttl),
                "cancel_requested": rec.optional(reply[2]),
            }
        )

    async def _append_on_cluster(
        self,
        run_id: str,
        keys: list[str],
        events: tuple[Event, ...],
        control: tuple[str, ...],
        lease: Lease,
    ) -> Lease:
        """`append` on Redis Cluster: the same script, and the index update after it.

        A write that moves the run to another index bucket (it comes to rest, or
        leaves rest) is announced first. Coming to rest is recognised by the last
        event's state; leaving it only by the script, which then asks for the intent.
        """
        ix = self._indexes
        assert ix is not None
        last = events[-1] if events else None
        announced = last is not None and clx.bucket(last.state) != clx.ACTIVE
        if announced:
            await ix.intent(run_id, int(control[5]))
        encoded = [encode_event(event) for event in events]
        while True:
            packed = "".join(f"{part}\x1f" for part in (*control, "1" if announced else "0"))
            reply = await self._eval(cl.APPEND, keys, [packed, *encoded])
            if isinstance(reply, bytes):
                return _renewed(lease, reply)
            status = self._status(run_id, reply)
            if status == "intent" and not announced:
                await ix.intent(run_id, int(control[5]))
                announced = True
                continue
            if status == "indexed":
                await ix.index([ix.truth_of_reply(run_id, reply)], after_write=True)
                return lease.model_copy(
                    update={
                        "expires_at": float(rec.text(reply[1])),
                        "ttl": float(lease.ttl),
                        "cancel_requested": rec.optional(reply[2]),
                    }
                )
            if status != "refused":
                raise StoreUnavailableError(f"the append script of {run_id!r} answered {status!r}")
            current = rec.header_from_hash(run_id, reply[1])
            check_append(current, events, expected_seq=int(control[4]), lease=lease)
            raise ConcurrentUpdateError(run_id, "the append was refused")  # not reached

    async def load_run(self, run_id: str) -> StoredRun:
        reply = await self._eval(lua.LOAD, self._keys(run_id), [])
        self._status(run_id, reply)
        header = rec.header_from_hash(run_id, reply[1])
        events = tuple(decode_event(run_id, seq, raw) for seq, raw in enumerate(reply[2], start=1))
        if len(events) != header.seq:
            raise CorruptRunError(run_id, header.seq, "header seq does not match the event log")
        return StoredRun(header=header, events=events)

    async def get_run(self, run_id: str) -> RunHeader:
        keys = self._keys(run_id)
        link = self._connect()
        try:
            if link.gate is None:
                raw = await link.client.hgetall(keys[0])
            else:
                async with link.turn():
                    raw = await link.client.hgetall(keys[0])
        except _UNAVAILABLE as exc:
            self._unavailable(exc)
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise CorruptRunError(
                    run_id, None, "its Redis header key holds another type than a hash"
                ) from exc
            self._response_error(exc)
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
        self._client()
        if limit < 1:
            raise ConfigurationError(f"list_runs(limit={limit}) must be at least 1")
        after = decode_cursor(cursor) if cursor else None
        wanted = {RunState(s) for s in states} if states is not None else None
        if wanted is not None and not wanted:
            return RunPage(runs=(), next_cursor=None)
        # The most selective index drives the scan; every filter is checked on the header.
        if self._indexes is not None:
            await self._indexes.settle()
            indexes = self._indexes.keys_for(session_id, user_id, wanted)
        elif session_id is not None:
            indexes = [f"{self.prefix}idx:session:{session_id}"]
        elif user_id is not None:
            indexes = [f"{self.prefix}idx:user:{user_id}"]
        elif wanted is not None:
            indexes = [f"{self.prefix}idx:state:{s.value}" for s in sorted(wanted)]
        else:
            indexes = [f"{self.prefix}idx:created"]
        high = "+inf" if created_before is None else f"({rec.stamp(created_before)}"
        if after is not None and (created_before is None or after[0] < created_before.timestamp()):
            high = repr(after[0])  # inclusive: entries at the cursor's own time are skipped below
        low = "-inf" if created_after is None else f"({rec.stamp(created_after)}"

        def matches(header: RunHeader) -> bool:
            return (
                (session_id is None or header.session_id == session_id)
                and (user_id is None or header.user_id == user_id)
                and (wanted is None or header.state in wanted)
                and (created_after is None or header.created_at > created_after)
                and (created_before is None or header.created_at < created_before)
            )

        found: list[RunHeader] = []
        # Met in the index but unreadable: the index still places it, and the index it
        # was found in is the one filter it is known to match.
        unreadable: list[tuple[Position | None, UnreadableRun]] = []
        chunk: list[tuple[str, float, str]] = []
        seen: set[str] = set()
        async for index, score, run_id in self._merged(indexes, high, low):
            if after is not None and (score, run_id) >= after:
                continue
            if run_id in seen:
                continue  # listed by two of the indexes (it changed state meanwhile)
            seen.add(run_id)
            chunk.append((index, score, run_id))
            # Headers are fetched a chunk per round trip, about as many as the page lacks.
            if len(chunk) > limit - len(found):
                headers = await self._headers(chunk, unreadable)
                found += [h for h in headers if h is not None and matches(h)]
                chunk = []
                if len(found) > limit:
                    break
        if chunk and len(found) <= limit:
            headers = await self._headers(chunk, unreadable)
            found += [h for h in headers if h is not None and matches(h)]
        return make_page(found, limit=limit, unreadable=unreadable)

    async def _merged(
        self, indexes: list[str], high: str, low: str
    ) -> AsyncIterator[tuple[str, float, str]]:
        """Entries of several indexes, newest first, as (index, score, run id)."""
        streams = [self._scan(index, high, low) for index in indexes]
        heads: list[tuple[str, float, str] | None] = [await anext(s, None) for s in streams]
        while True:
            live = [(i, h) for i, h in enumerate(heads) if h is not None]
            if not live:
                return
            i, head = max(live, key=lambda item: (item[1][1], item[1][2]))
            yield head
            heads[i] = await anext(streams[i], None)

    async def _scan(self, index: str, high: str, low: str) -> AsyncIterator[tuple[str, float, str]]:
        """One index's entries in (score, run id) order, newest first.

        Each batch starts at the last entry's score rather than at an offset, so
        entries removed or added meanwhile (a listing drops those of expired runs)
        never make the scan skip one.
        """
        link = self._connect()
        last: tuple[float, str] | None = None
        size = _BATCH
        while True:
            try:
                async with link.turn():
                    batch = await link.client.zrevrangebyscore(
                        index, high, low, start=0, num=size, withscores=True
                    )
            except _UNAVAILABLE as exc:
                self._unavailable(exc)
            except ResponseError as exc:
                if str(exc).startswith("WRONGTYPE"):
                    return  # a damaged index lists nothing; the runs themselves are intact
                self._response_error(exc)
            # Equal scores come back in reverse member order: the (created_at, run_id) order.
            entries = [
                (float(score), rec.text(member))
                for member, score in cast(list[tuple[bytes, float]], batch)
            ]
            fresh = [entry for entry in entries if last is None or entry < last]
            for score, run_id in fresh:
                yield index, score, run_id
            if len(entries) < size:
                return
            if fresh:
                last = fresh[-1]
                high, size = repr(last[0]), _BATCH
            else:
                size *= 2  # a whole batch of one creation time, already seen: read further

    async def _read_headers(self, run_ids: Sequence[str]) -> list[Any]:
        """HGETALL of runs' headers in one round trip (one per node on a cluster)."""
        link = self._connect()
        pipe = link.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self._keys(run_id)[0])
        try:
            async with link.turn():
                replies = await pipe.execute(raise_on_error=False)
        except _UNAVAILABLE as exc:
            self._unavailable(exc)
        for raw in replies:
            if isinstance(raw, _UNAVAILABLE):
                self._unavailable(raw)
        return replies

    async def _headers(
        self,
        entries: Sequence[tuple[str, float, str]],
        unreadable: list[tuple[Position | None, UnreadableRun]] | None = None,
    ) -> list[RunHeader | None]:
        """The headers of listed runs, in one round trip; None for a run gone or damaged.

        A damaged one is added to ``unreadable`` at its index entry's place. On a
        cluster, index entries that disagree with the header are mended.
        """
        replies = await self._read_headers([run_id for _, _, run_id in entries])
        ix = self._indexes
        stale: list[str] = []
        gone: list[tuple[str, str]] = []
        headers: list[RunHeader | None] = []
        for (index, score, run_id), raw in zip(entries, replies, strict=True):
            if isinstance(raw, Exception):
                headers.append(None)  # a key of the wrong type: load_run reports it
                if unreadable is not None:
                    wrong = CorruptRunError(run_id, None, f"its Redis header key: {raw}")
                    unreadable.append(((score, run_id), UnreadableRun.from_error(run_id, wrong)))
            elif not raw:
                if ix is None:
                    # The run expired (retention): drop its entry unless it was created meanwhile.
                    await self._eval(lua.FORGET, [index, self._keys(run_id)[0]], [run_id])
                else:
                    gone.append((run_id, index))
                headers.append(None)
            else:
                try:
                    header = rec.header_from_hash(run_id, raw)
                except CorruptRunError as exc:
                    headers.append(None)
                    if unreadable is not None:
                        unreadable.append(((score, run_id), UnreadableRun.from_error(run_id, exc)))
                    continue
                if ix is not None and not ix.belongs(index, score, header):
                    stale.append(ix.truth(header, raw.get(b"incarnation"), index))
                headers.append(header)
        if ix is not None and (stale or gone):
            await ix.mend(stale, gone)
        return headers

    async def delete_run(self, run_id: str) -> bool:
        keys = self._keys(run_id)
        ix = self._indexes
        if ix is None:
            reply = await self._eval(lua.DELETE, keys, [self.prefix, run_id, *_STATES])
            return bool(reply)
        deleted, incarnation = await self._eval(cl.DELETE, keys, [])
        if deleted:
            await self._forget([(run_id, rec.optional(incarnation))])
        return bool(deleted)

    async def _forget(self, runs: Sequence[tuple[str, str | None]]) -> None:
        """Cluster: remove the index entries of runs just deleted (incarnation if known)."""
        ix = self._indexes
        assert ix is not None
        known = [(run_id, inc, "") for run_id, inc in runs if inc is not None]
        await ix.unindex(known, after_write=True)
        unknown = [(run_id, "") for run_id, inc in runs if inc is None]
        if unknown:  # a damaged header: remove whatever is indexed, then look again
            await ix.mend([], unknown, after_write=True)

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
        ix = self._indexes
        if ix is not None:
            await ix.settle()
            indexes = ix.keys_for(None, None, {RunState(s) for s in wanted})
        else:
            indexes = [f"{self.prefix}idx:state:{s}" for s in wanted]
        # created_at <= updated_at, so only runs created before the cutoff can qualify.
        entries = [entry async for entry in self._merged(indexes, f"({cutoff}", "-inf")]
        doomed: list[tuple[str, str]] = []
        for start in range(0, len(entries), _BATCH):
            batch = entries[start : start + _BATCH]
            for (_, _, run_id), header in zip(batch, await self._headers(batch), strict=True):
                if (
                    header is not None
                    and header.updated_at < older_than
                    and header.state.value in wanted
                ):
                    doomed.append((run_id, rec.stamp(header.updated_at)))
        removed = 0
        if ix is None:
            for run_id, updated in doomed:
                args = [self.prefix, run_id, updated, *wanted]
                removed += int(await self._eval(lua.PRUNE_ONE, self._keys(run_id), args))
            return removed
        for start in range(0, len(doomed), _BATCH):
            pruned: list[tuple[str, str | None]] = []
            for run_id, updated in doomed[start : start + _BATCH]:
                reply = await self._eval(cl.PRUNE_ONE, self._keys(run_id), [updated, *wanted])
                if int(reply[0]):
                    pruned.append((run_id, rec.optional(reply[1])))
            removed += len(pruned)
            await self._forget(pruned)
        return removed

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
        self._status(run_id, reply)
        return rec.header_from_hash(run_id, reply[1])

    # -- leases ---------------------------------------------------------------------------------

    async def acquire_lease(
        self, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None = None
    ) -> Lease:
        chosen = "" if takeover is None else str(takeover)
        args = [owner.id, owner.host, str(owner.pid), repr(float(ttl)), chosen]
        reply = await self._eval(lua.ACQUIRE, self._keys(run_id)[:1], args)
        status = self._status(run_id, reply)
        if status == "busy":
            header = rec.header_from_hash(run_id, reply[2])
            now = float(rec.text(reply[1]))
            check_lease_acquire(header, owner, ttl=ttl, takeover=takeover, now=now)
            raise ConcurrentUpdateError(run_id, "the lease was refused")  # not reached
        return Lease(
            owner=owner.id,
            host=owner.host,
            pid=owner.pid,
            generation=int(rec.text(reply[1])),
            expires_at=float(rec.text(reply[2])),
            ttl=float(ttl),
            cancel_requested=rec.optional(reply[3]),
        )

    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        args = [str(lease.generation), *rec.lease_args(lease)]
        reply = await self._eval(lua.RENEW, self._keys(run_id)[:1], args)
        if self._status(run_id, reply) == "lost":
            raise LeaseLostError(run_id, f"lease generation {lease.generation} was taken over")
        return lease.model_copy(
            update={
                "expires_at": float(rec.text(reply[1])),
                "ttl": float(lease.ttl),
                "cancel_requested": rec.optional(reply[2]),
            }
        )

    async def release_lease(self, run_id: str, lease: Lease) -> None:
        reply = await self._eval(lua.RELEASE, self._keys(run_id)[:1], [str(lease.generation)])
        self._status(run_id, reply)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close this loop's connection pool; idempotent. Later calls raise."""
        self._closed = True
        link, self._link = self._link, None
        if link is None or link.closed:
            return
        if link.loop is asyncio.get_running_loop():
            await link.close()
        elif not link.loop.is_closed():
            link.loop.call_soon_threadsafe(link.keeper.cancel)


def _renewed(lease: Lease, reply: bytes) -> Lease:
    """The lease from the append script's one-string reply: ok, expires[, cancel]."""
    parts = reply.decode().split("\x1f", 2)
    return lease.model_copy(
        update={
            "expires_at": float(parts[1]),
            "ttl": float(lease.ttl),
            "cancel_requested": parts[2] if len(parts) > 2 else None,
        }
    )


def _cluster_url(url: str, cluster: bool | None) -> tuple[str, bool]:
    """The URL redis-py opens, and whether it names a Redis Cluster."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    named = scheme in _CLUSTER_SCHEMES
    if cluster is None:
        cluster = named
    if not isinstance(cluster, bool):
        raise ConfigurationError(f"RedisBackend(cluster={cluster!r}) must be True, False or None")
    if named and not cluster:
        raise ConfigurationError(
            f"RedisBackend({_hide(url)!r}, cluster=False): a {scheme}:// URL names a Redis Cluster"
        )
    if not cluster:
        return url, False
    if scheme == "unix":
        raise ConfigurationError(
            f"RedisBackend({_hide(url)!r}): Redis Cluster is reached over TCP, not a unix socket"
        )
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigurationError(f"RedisBackend({_hide(url)!r}): Redis Cluster has only database 0")
    plain = _CLUSTER_SCHEMES.get(scheme, scheme)
    return urlunsplit(parts._replace(scheme=plain)), True


def _hide(url: object) -> str:
    """``url`` with any password replaced, for messages and reprs."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", str(url))
