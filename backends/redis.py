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
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import suppress
from datetime import datetime
from typing import Any, Final, NoReturn, cast
from urllib.parse import urlsplit

from durable_agent.backend import (
    Backend,
    Capability,
    LeaseOwner,
    RunPage,
    check_append,
    check_lease_acquire,
    decode_cursor,
    encode_cursor,
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
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "RedisBackend needs the redis package: pip install 'durable-agent[redis]'",
        name="redis",
    ) from exc

__all__ = ["RedisBackend"]

_STATES: Final = tuple(state.value for state in RunState)
_BATCH: Final = 200
"""Index entries read (and headers fetched in one pipeline) per round trip when listing."""


class _Link:
    """One event loop's client and pool, closed when that loop shuts down."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: aioredis.Redis) -> None:
        self.loop = loop
        self.client = client
        self.closed = False
        self.keeper = loop.create_task(self._keep(), name="RedisBackend pool keeper")

    async def _keep(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            # Cancelled by close(), or by asyncio.run() shutting the loop down.
            self.closed = True
            await self.client.aclose(close_connection_pool=True)

    async def close(self) -> None:
        if not self.keeper.done():
            self.keeper.cancel()
            with suppress(asyncio.CancelledError):
                await self.keeper


class RedisBackend(Backend):
    """Runs in Redis: durable per Redis's persistence settings, shared by many hosts.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, or ``rediss://`` for
            TLS; redis-py's URL options (``?socket_keepalive=true``, ...) work.
        prefix: put before every key, so several stores share one database.
            May not contain ``{`` or ``}`` (the run id is the keys' hash tag).
        session_id: tags the runs an agent creates through this backend.
        user_id: tags the runs an agent creates through this backend.
        retention: seconds a run is kept once it is DONE or CANCELLED (a TTL
            on its keys); None keeps it until deleted or pruned.
        max_connections: size of the connection pool of each event loop.
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
    ) -> None:
        super().__init__(session_id=session_id, user_id=user_id)
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"RedisBackend(url={_hide(url)!r}) must be a redis://, rediss:// or unix:// URL"
            )
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
        self.prefix = prefix
        self._retention_ms = str(round(retention * 1000)) if retention else "0"
        self._pool_options: dict[str, Any] = {
            "max_connections": max_connections,
            "timeout": pool_timeout,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        self._link: _Link | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisBackend({_hide(self._url)!r}, prefix={self.prefix!r})"

    # -- keys and connections --------------------------------------------------------------

    def _keys(self, run_id: str) -> list[str]:
        if not isinstance(run_id, str) or not run_id:
            raise ConfigurationError(f"run id {run_id!r} must be a non-empty str")
        tag = f"{self.prefix}{{{run_id}}}"
        return [f"{tag}:header", f"{tag}:events"]

    def _client(self) -> aioredis.Redis:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        link = self._link
        if link is None or link.loop is not loop or link.closed:
            pool = aioredis.BlockingConnectionPool.from_url(self._url, **self._pool_options)
            link = self._link = _Link(loop, aioredis.Redis(connection_pool=pool))
        return link.client

    def _unavailable(self, exc: BaseException) -> NoReturn:
        raise StoreUnavailableError(
            f"Redis store {_hide(self._url)} is unavailable ({type(exc).__name__}: {exc}); "
            "nothing was half-written: an append either happened whole or not at all, so "
            "reload the run and continue it once Redis is back"
        ) from exc

    async def _eval(self, script: lua.Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self._client()
        try:
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:  # a restarted or flushed Redis forgot the script
                await client.script_load(script.source)
                return await client.evalsha(script.sha, len(keys), *keys, *args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._unavailable(exc)
        except ResponseError as exc:
            self._response_error(exc)

    def _response_error(self, exc: ResponseError) -> NoReturn:
        text = str(exc)
        if text.startswith(("LOADING", "READONLY", "MISCONF", "OOM", "BUSY", "MASTERDOWN")):
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
        fields = rec.header_fields(header)
        args = [self.prefix, self._retention_ms, len(fields), *fields]
        args.extend(encode_event(event) for event in events)
        reply = await self._eval(lua.CREATE, self._keys(header.run_id), args)
        if rec.text(reply[0]) == "exists":
            raise RunExistsError(header.run_id)

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
        args = ["".join(f"{part}\x1f" for part in control)]
        args.extend(encode_event(event) for event in events)
        reply = await self._eval(lua.APPEND, keys, args)
        if isinstance(reply, bytes):  # the one-string success reply: ok, expires[, cancel]
            parts = reply.decode().split("\x1f", 2)
            return lease.model_copy(
                update={
                    "expires_at": float(parts[1]),
                    "ttl": float(lease.ttl),
                    "cancel_requested": parts[2] if len(parts) > 2 else None,
                }
            )
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
        client = self._client()
        try:
            raw = await client.hgetall(keys[0])
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
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
        if session_id is not None:
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
        chunk: list[tuple[str, str]] = []
        async for index, score, run_id in self._merged(indexes, high, low):
            if after is not None and (score, run_id) >= after:
                continue
            chunk.append((index, run_id))
            # Headers are fetched a chunk per round trip, about as many as the page lacks.
            if len(chunk) > limit - len(found):
                found += [h for h in await self._headers(chunk) if h is not None and matches(h)]
                chunk = []
                if len(found) > limit:
                    break
        if chunk and len(found) <= limit:
            found += [h for h in await self._headers(chunk) if h is not None and matches(h)]
        page = found[:limit]
        more = len(found) > limit
        next_cursor = encode_cursor(page[-1].created_at, page[-1].run_id) if more else None
        return RunPage(runs=tuple(page), next_cursor=next_cursor)

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
        client = self._client()
        offset = 0
        while True:
            try:
                batch = await client.zrevrangebyscore(
                    index, high, low, start=offset, num=_BATCH, withscores=True
                )
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._unavailable(exc)
            except ResponseError as exc:
                if str(exc).startswith("WRONGTYPE"):
                    return  # a damaged index lists nothing; the runs themselves are intact
                self._response_error(exc)
            # Equal scores come back in reverse member order: the (created_at, run_id) order.
            entries = cast(list[tuple[bytes, float]], batch)
            for member, score in entries:
                yield index, float(score), rec.text(member)
            if len(entries) < _BATCH:
                return
            offset += len(entries)

    async def _headers(self, entries: Sequence[tuple[str, str]]) -> list[RunHeader | None]:
        """The headers of listed runs, in one round trip; None for a run gone or damaged."""
        client = self._client()
        pipe = client.pipeline(transaction=False)
        for _, run_id in entries:
            pipe.hgetall(self._keys(run_id)[0])
        try:
            replies = await pipe.execute(raise_on_error=False)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._unavailable(exc)
        headers: list[RunHeader | None] = []
        for (index, run_id), raw in zip(entries, replies, strict=True):
            if isinstance(raw, (RedisConnectionError, RedisTimeoutError)):
                self._unavailable(raw)
            if isinstance(raw, Exception):
                headers.append(None)  # a key of the wrong type: load_run reports it
            elif not raw:
                # The run expired (retention): drop its entry unless it was created meanwhile.
                await self._eval(lua.FORGET, [index, self._keys(run_id)[0]], [run_id])
                headers.append(None)
            else:
                try:
                    headers.append(rec.header_from_hash(run_id, raw))
                except CorruptRunError:
                    headers.append(None)
        return headers

    async def delete_run(self, run_id: str) -> bool:
        reply = await self._eval(lua.DELETE, self._keys(run_id), [self.prefix, run_id, *_STATES])
        return bool(reply)

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
        indexes = [f"{self.prefix}idx:state:{s}" for s in wanted]
        # created_at <= updated_at, so only runs created before the cutoff can qualify.
        entries = [(index, run_id) async for index, _, run_id in self._merged(
            indexes, f"({cutoff}", "-inf"
        )]
        doomed: list[tuple[str, str]] = []
        for start in range(0, len(entries), _BATCH):
            batch = entries[start : start + _BATCH]
            for (_, run_id), header in zip(batch, await self._headers(batch), strict=True):
                if header is not None and header.updated_at < older_than:
                    doomed.append((run_id, rec.stamp(header.updated_at)))
        removed = 0
        for run_id, updated in doomed:
            args = [self.prefix, run_id, updated, *wanted]
            removed += int(await self._eval(lua.PRUNE_ONE, self._keys(run_id), args))
        return removed

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


def _hide(url: object) -> str:
    """``url`` with any password replaced, for messages and reprs."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", str(url))
