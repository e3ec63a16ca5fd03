"""How `RedisBackend` reaches Redis: one client per event loop, and what redis-py's errors mean.

Calls queue for a connection: at most ``max_connections`` run at once, the
others wait their turn first come, first served (an `asyncio.Semaphore`, the
``gate``), so a thousand runs on one event loop share a few dozen connections.
A busy pool is back-pressure from this process's own runs, not an outage: by
default the wait has no deadline (each call ahead of it is bounded by
``socket_timeout``), and ``pool_timeout`` sets one for those who prefer to
fail. The gate, not redis-py's blocking pool, decides the order: the pool
lets a newcomer take a connection released to a woken waiter, which then
queues again at the back, so under load some calls starved past the pool's
20 s timeout while the pool turned over every millisecond. A Redis that
cannot be reached, or goes away mid-call, raises `StoreUnavailableError` (the
redis-py error chained); the scripts are atomic, so nothing is half-written,
and the run continues once Redis is back. Calls are not retried by redis-py:
a retried append whose first attempt reached Redis would fail its own seq
check and look like a concurrent writer.

redis-py's asyncio connections belong to the event loop that opened them, so
a `Connection` keeps one `Link` (client and pool) per event loop: used from a
new loop (``agent.do`` runs each call under a fresh ``asyncio.run``) it opens
a new one there, and when a loop shuts down its link is closed with it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

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

from durable_agent.backend import mark_secret
from durable_agent.backends import _redis_scripts as lua
from durable_agent.errors import ConfigurationError, CorruptRunError, StoreUnavailableError

__all__ = [
    "CLUSTER_SCHEMES",
    "UNAVAILABLE",
    "Client",
    "Connection",
    "Link",
    "check_options",
    "cluster_url",
    "hide",
]

UNAVAILABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    TryAgainError,
    RedisClusterException,
)
"""Errors that mean Redis could not be reached or could not serve the call right now."""
CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""The URL schemes that name a Redis Cluster, and the plain scheme redis-py opens."""

Client = aioredis.Redis | RedisCluster


class Link:
    """One event loop's client and pool, closed when that loop shuts down.

    ``gate`` (a semaphore as large as the pool, or as a node's pool on a
    cluster) makes calls wait for their turn in arrival order; a call holds at
    most one connection (per node), so a gated call finds one free. On Redis
    Cluster it is also what makes calls wait at all: redis-py's per-node pools
    fail a call when they are full. Each cluster call also waits until the
    client knows the cluster's layout: redis-py 8 drops connections in use when
    several calls discover it at once.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: Client,
        size: int,
        pool_timeout: float | None = None,
    ) -> None:
        self.loop = loop
        self.client = client
        self.size = size
        self.gate = asyncio.Semaphore(size)
        self.pool_timeout = pool_timeout
        self.plain = pool_timeout is None and not isinstance(client, RedisCluster)
        self.layout = asyncio.Lock()
        self.closed = False
        self.closing: asyncio.Task[None] | None = None  # close_soon's, kept until done
        self.closer = self._closing()
        _start(self.closer)

    def turn(self) -> AbstractAsyncContextManager[object]:
        """Wait for this call's turn: a free connection, in arrival order."""
        if self.plain:
            return self.gate  # the hot path: no deadline, no layout to wait for
        return _Turn(self)

    async def _closing(self) -> AsyncGenerator[None, None]:
        # An async generator, not a task: asyncio.run() closes the loop's
        # generators only after the tasks it cancelled have finished, so a
        # write made on the way out (an interruption recorded by a run cancelled
        # at shutdown) still finds the pool open, and no link is opened after it.
        try:
            yield
        finally:
            self.closed = True  # no call starts on this link any more
            # The calls already under way end first (each within socket_timeout):
            # a connection still opening when the pool closes would stay open.
            for _ in range(self.size):
                await self.gate.acquire()
            try:
                if isinstance(self.client, RedisCluster):
                    await self.client.aclose()
                else:
                    await self.client.aclose(close_connection_pool=True)
            finally:
                for _ in range(self.size):  # none waits forever behind a closed link
                    self.gate.release()

    async def close(self) -> None:
        """Close the client and its pool, from the loop that owns them."""
        await self.closer.aclose()

    def close_soon(self) -> None:
        """Close the client and its pool from another thread, on the loop that owns them."""

        def there() -> None:
            self.closing = self.loop.create_task(self.closer.aclose())

        self.loop.call_soon_threadsafe(there)


def _start(closer: AsyncGenerator[None, None]) -> None:
    """Run ``closer`` to its ``yield`` now, registering it with the running loop.

    Nothing before the ``yield`` awaits, so its first step completes at once;
    the loop learns of the generator (its first-iteration hook) and closes it
    when it shuts down.
    """
    step = closer.asend(None).__await__()
    try:
        step.send(None)
    except StopIteration:
        return
    raise RuntimeError("a link's closer awaited before its yield")  # pragma: no cover


class _Turn:
    """One call's permit of a `Link` gate, taken once the cluster's layout is known."""

    def __init__(self, link: Link) -> None:
        self.gate = link.gate
        self.link = link
        self.client = link.client

    async def __aenter__(self) -> None:
        limit = self.link.pool_timeout
        if limit is not None and self.gate.locked():
            try:
                async with asyncio.timeout(limit):
                    await self.gate.acquire()
            except TimeoutError:
                raise StoreUnavailableError(
                    f"no Redis connection became free within pool_timeout={limit} s: all "
                    f"{self.link.size} connections of this process's pool stayed busy (Redis "
                    "itself answered); raise max_connections, or pass pool_timeout=None to "
                    "wait for a turn however long"
                ) from None
        else:
            await self.gate.acquire()
        if not isinstance(self.client, RedisCluster):
            return
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


class Connection:
    """A backend's way to Redis: this loop's `Link`, script calls, and redis-py's errors translated.

    Args:
        url: the backend's URL, for a single Redis and in messages (password hidden).
        node_url: the URL redis-py opens on a cluster (see `cluster_url`).
        cluster: whether it is a Redis Cluster.
        label: names the backend in the error raised once it is closed.
        max_connections: the pool size and the number of calls at once (on a
            cluster: of each node's pool).
        pool_timeout: seconds a call waits for a free connection; None waits
            for its turn however long.
        socket_timeout: seconds a call waits for Redis's answer.
        connect_timeout: seconds to open a connection.
    """

    def __init__(
        self,
        *,
        url: str,
        node_url: str,
        cluster: bool,
        label: str,
        max_connections: int,
        pool_timeout: float | None,
        socket_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.url = url
        self.node_url = node_url
        self.cluster = cluster
        self.label = label
        self.pool_timeout = None if pool_timeout is None else float(pool_timeout)
        self.max_connections = max_connections
        self.pool_options: dict[str, Any] = {
            "max_connections": max_connections,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if not cluster:
            # Gated calls find a free connection; the rest (pub/sub, pipelines of
            # listings) wait in the pool, no longer than a gated call would.
            self.pool_options["timeout"] = self.pool_timeout
        self.current: Link | None = None
        self.closed = False

    def link(self) -> Link:
        """This event loop's client and gate; opened on first use."""
        if self.closed:
            raise StoreUnavailableError(f"{self.label} is closed")
        loop = asyncio.get_running_loop()
        link = self.current
        if link is not None and link.loop is loop and link.closed:
            # Only the loop's shutdown closes its link while the backend is open: a
            # pool opened now would never be closed.
            raise StoreUnavailableError(
                f"{self.label}: this event loop is shutting down and its Redis connections "
                "are closed, so the call was not made; make it from a running loop"
            )
        if link is None or link.loop is not loop:
            client: Client
            if self.cluster:
                client = RedisCluster.from_url(self.node_url, **self.pool_options)
            else:
                pool = aioredis.BlockingConnectionPool.from_url(self.url, **self.pool_options)
                client = aioredis.Redis(connection_pool=pool)
            link = self.current = Link(loop, client, self.max_connections, self.pool_timeout)
        return link

    def unavailable(self, exc: BaseException) -> NoReturn:
        """Raise `StoreUnavailableError` for a Redis that could not serve the call."""
        if isinstance(exc, StoreUnavailableError):  # already says why (pool_timeout)
            raise exc
        raise StoreUnavailableError(
            f"Redis store {hide(self.url)} is unavailable ({type(exc).__name__}: {exc}); "
            "nothing was half-written: an append either happened whole or not at all, so "
            "reload the run and continue it once Redis is back"
        ) from exc

    def response_error(self, exc: ResponseError) -> NoReturn:
        """Raise what an error reply means: Redis is busy or failing over, or it refused."""
        text = str(exc)
        if text.startswith(
            ("LOADING", "READONLY", "MISCONF", "OOM", "BUSY", "MASTERDOWN", "CLUSTERDOWN")
        ):
            self.unavailable(exc)
        raise StoreUnavailableError(f"Redis store {hide(self.url)} refused a call: {text}") from exc

    def translate(self, exc: BaseException) -> NoReturn:
        """Raise what a redis-py error means for the caller."""
        if isinstance(exc, UNAVAILABLE):
            self.unavailable(exc)
        if isinstance(exc, ResponseError):
            self.response_error(exc)
        raise exc

    async def header_hash(self, run_id: str, key: str) -> Any:
        """HGETALL of one run's header key (empty when the run is unknown)."""
        link = self.link()
        try:
            async with link.turn():
                return await link.client.hgetall(key)
        except UNAVAILABLE as exc:
            self.unavailable(exc)
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise CorruptRunError(
                    run_id, None, "its Redis header key holds another type than a hash"
                ) from exc
            self.response_error(exc)

    async def eval(self, script: lua.Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script (loading it if Redis forgot it) and return its reply."""
        # One frame, not a helper's as well: every append passes here.
        link = self.link()
        client = link.client
        try:
            async with link.turn():
                try:
                    return await client.evalsha(script.sha, len(keys), *keys, *args)
                except NoScriptError:  # a restarted or flushed Redis forgot the script
                    await client.script_load(script.source)
                    return await client.evalsha(script.sha, len(keys), *keys, *args)
        except UNAVAILABLE as exc:  # Redis, or finding the cluster's layout, failed
            self.unavailable(exc)
        except ResponseError as exc:
            self.response_error(exc)

    async def close(self) -> None:
        """Close this loop's link; idempotent. Later calls raise."""
        self.closed = True
        link, self.current = self.current, None
        if link is None or link.closed:
            return
        if link.loop is asyncio.get_running_loop():
            await link.close()
        elif not link.loop.is_closed():
            link.close_soon()


def cluster_url(url: str, cluster: bool | None) -> tuple[str, bool]:
    """The URL redis-py opens, and whether it names a Redis Cluster."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    named = scheme in CLUSTER_SCHEMES
    if cluster is None:
        cluster = named
    if not isinstance(cluster, bool):
        raise ConfigurationError(f"RedisBackend(cluster={cluster!r}) must be True, False or None")
    if named and not cluster:
        raise ConfigurationError(
            f"RedisBackend({hide(url)!r}, cluster=False): a {scheme}:// URL names a Redis Cluster"
        )
    if not cluster:
        return url, False
    if scheme == "unix":
        raise ConfigurationError(
            f"RedisBackend({hide(url)!r}): Redis Cluster is reached over TCP, not a unix socket"
        )
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigurationError(f"RedisBackend({hide(url)!r}): Redis Cluster has only database 0")
    plain = CLUSTER_SCHEMES.get(scheme, scheme)
    return urlunsplit(parts._replace(scheme=plain)), True


def check_options(
    url: str,
    cluster: bool | None,
    *,
    prefix: str,
    retention: float | None,
    max_connections: int,
    timeouts: dict[str, float | None],
) -> tuple[str, bool]:
    """Refuse `RedisBackend`'s bad options; return the URL redis-py opens and the cluster flag.

    The URL's password (``redis://user:password@host`` or ``?password=``) is
    marked secret (`durable_agent.mark_secret`) here, so neither stored data
    nor a message quoting a redis-py error can show it.
    """
    schemes = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)
    if not isinstance(url, str) or urlsplit(url).scheme.lower() not in schemes:
        raise ConfigurationError(
            f"RedisBackend(url={hide(url)!r}) must be a redis://, rediss://, unix:// or "
            "redis+cluster:// URL"
        )
    _mark_password(url)
    node_url, cluster = cluster_url(url, cluster)
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
    for name, value in timeouts.items():
        if value is None and name == "pool_timeout":
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            also = ", or None" if name == "pool_timeout" else ""
            raise ConfigurationError(f"RedisBackend({name}={value!r}) must be seconds > 0{also}")
    return node_url, cluster


def hide(url: object) -> str:
    """``url`` with any password replaced, for messages and reprs."""
    hidden = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", str(url))
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", hidden, flags=re.IGNORECASE)


def _mark_password(url: str) -> None:
    """Mark the password of ``url`` secret, in the forms it may take (quoted and plain)."""
    parts = urlsplit(url)
    found = [v for k, vs in parse_qs(parts.query).items() if k.lower() == "password" for v in vs]
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    for password in found:
        mark_secret(password)
