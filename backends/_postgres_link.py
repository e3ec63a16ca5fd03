"""One event loop's connections of a `PostgresBackend`: writer, readers, listener, liveness.

psycopg's async connections belong to the loop that opened them, so the
backend keeps one `Link` per loop and builds a new one when it is used from
another (the synchronous ``agent.do()`` runs each call under its own
``asyncio.run()``). A link holds:

* the group-commit writer and its connection (`_postgres_writer`);
* a pool of reader connections (psycopg_pool), also used by claims;
* a LISTEN connection, opened on the first `wait_for_change`;
* a relay connection, opened on the first ephemeral message sent (`_postgres_relay`);
* one connection per registered worker, holding its liveness lock.

Every connection runs with ``synchronous_commit = on`` (the relay's excepted),
and with ``idle_in_transaction_session_timeout`` and short TCP keepalives set
(`configure`). When the loop shuts
down (``asyncio.run`` cancels leftover tasks), the writer task flushes its
queue and closes all of them.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from durable_agent.backend import mark_secret
from durable_agent.backends import _postgres_schema as schema
from durable_agent.backends import _postgres_wakeup as wakeup
from durable_agent.backends._postgres_claims import Listener, Liveness
from durable_agent.backends._postgres_relay import Publisher
from durable_agent.backends._postgres_writer import Merge, Params, Rows, Stats, Writer
from durable_agent.errors import ConfigurationError, StoreUnavailableError

__all__ = ["Link", "Settings", "check_options", "connect", "first_line"]

_IDENTIFIER: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class Settings:
    """What every link of one backend connects with."""

    def __init__(
        self,
        *,
        url: str,
        schema: str,
        where: str,
        pool_size: int,
        max_batch: int,
        connect_timeout: float,
        channel: str,
        idle_in_transaction_timeout: float,
    ) -> None:
        self.url = url
        self.schema = schema
        self.where = where
        self.pool_size = pool_size
        self.max_batch = max_batch
        self.connect_timeout = connect_timeout
        self.channel = channel
        self.idle_in_transaction_timeout = idle_in_transaction_timeout
        # One round trip sets them all (no parameters: a simple query may hold several).
        timeout_ms = round(idle_in_transaction_timeout * 1000)
        self.configure_sql = (
            # An intent must be durable before its effect starts, whatever the
            # server's or the role's default says.
            "SET synchronous_commit = on; "
            # A client frozen mid-transaction (SIGSTOP, a VM paused) would hold its
            # row locks, and claims skip locked rows (SKIP LOCKED): the server ends
            # such a session, rolling it back, after this long.
            f"SET idle_in_transaction_session_timeout = {timeout_ms}; "
            # A peer gone without a word (a host powered off) is found in ~25 s, not
            # the kernel's two hours: its session, locks and advisory lock go with it.
            "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; "
            "SET tcp_keepalives_count = 3"
        )

    async def configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Set the session settings every connection of the backend runs with."""
        await conn.execute(self.configure_sql)


_WRITER_SQL: Final = "SET plan_cache_mode = force_generic_plan"
"""The writer's session setting: every statement it prepares runs its generic plan at once.

Its statements find their rows by run id (or arrays of run ids), so the
generic plan is the plan. Measured with the server's default (``auto``)
beside it, alternated, ``synchronous_commit = off``, on the 2-core test
machine: a prepared append ran 10-13 us faster this way, of the ~40 us it
costs beyond one raw INSERT.
"""


async def connect(settings: Settings, *, writer: bool = False) -> psycopg.AsyncConnection[Any]:
    """A new configured connection in autocommit, or `StoreUnavailableError`.

    ``writer``: also with the writer's generic plans (`_WRITER_SQL`).
    """
    try:
        conn = await psycopg.AsyncConnection.connect(
            settings.url,
            autocommit=True,
            connect_timeout=max(1, round(settings.connect_timeout)),
        )
    except psycopg.Error as exc:
        raise StoreUnavailableError(
            f"cannot connect to PostgreSQL store {settings.where}: {first_line(exc)}"
        ) from exc
    try:
        await settings.configure(conn)
        if writer:
            await conn.execute(_WRITER_SQL)
    except psycopg.Error as exc:
        await conn.close()
        raise StoreUnavailableError(
            f"cannot connect to PostgreSQL store {settings.where}: {first_line(exc)}"
        ) from exc
    return conn


class Link:
    """One event loop's connections; build with `Link.open`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Settings) -> None:
        self.loop = loop
        self.settings = settings
        self.writer: Writer
        self.pool: AsyncConnectionPool[Any]
        self.listener: Listener | None = None
        self.relay = Publisher(self.connect, settings.where)
        self._listening: asyncio.Future[None] | None = None
        self.liveness: dict[str, Liveness] = {}
        self._claimer: psycopg.AsyncConnection[Any] | None = None
        self._claiming = asyncio.Lock()
        self.gone: set[str] = set()
        """Owners of this host's leases whose processes are gone (`_postgres_claims`)."""
        self.gone_checked = -1e9
        self.swept = -1e9
        """When a claim last swept for lapsed leases (`_postgres_claims`)."""
        self.sweep_after: tuple[int, float, str] | None = None
        """Where the last sweep's window of held runs ended (a claim-order key); None: the front."""
        self._closer = self._closing()

    @classmethod
    async def open(cls, settings: Settings, stats: Stats, merges: Mapping[str, Merge]) -> Link:
        """Connect, create or migrate the tables, open the pool, start the writer."""
        link = cls(asyncio.get_running_loop(), settings)
        # The writer's first connection, configured as every later one is
        # (`connect_writer`); it creates or migrates the tables first, which
        # its generic plans do not change (DDL, and lookups of one row).
        first = await link.connect_writer()
        try:
            await schema.prepare(first, settings.schema)
        except psycopg.Error as exc:
            await first.close()
            raise StoreUnavailableError(
                f"PostgreSQL store {settings.where}: creating the tables failed "
                f"({first_line(exc)})"
            ) from exc
        except BaseException:
            await first.close()
            raise
        link.pool = AsyncConnectionPool(
            settings.url,
            min_size=1,
            max_size=settings.pool_size,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(settings.connect_timeout))},
            configure=settings.configure,
            open=False,
            name=f"durable_agent {settings.schema}",
        )
        try:
            await link.pool.open(wait=True, timeout=settings.connect_timeout)
        except Exception as exc:
            await first.close()
            await link.pool.close()
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL store {settings.where}: {first_line(exc)}"
            ) from exc
        link.writer = Writer(
            link.loop, link.connect_writer, settings.where, settings.max_batch, stats, merges,
            notify=wakeup.statement(settings.channel),
        )
        link.writer.on_queue_usage = wakeup.QueueWatch(settings.where)
        link.writer.conn = first
        link.writer.also_close = link._close_others
        link.writer.start()
        await anext(link._closer)
        return link

    async def _closing(self) -> AsyncGenerator[None, None]:
        # The loop closes its async generators after the tasks that asyncio.run()
        # cancelled have finished. The writer and the pool's tasks are among
        # those, so a run cancelled alongside them records its interruption
        # through a link opened then: this closes that one, which no task would.
        try:
            yield
        finally:
            await self.shutdown()

    @property
    def usable(self) -> bool:
        return self.writer.usable and not self.pool.closed

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        """A new configured connection in autocommit, or `StoreUnavailableError`."""
        return await connect(self.settings)

    async def connect_writer(self) -> psycopg.AsyncConnection[Any]:
        """A new connection for the writer: `connect`'s, with its generic plans (`_WRITER_SQL`)."""
        return await connect(self.settings, writer=True)

    async def read(self, query: str, params: Params) -> Rows:
        """One statement on a pool connection; driver errors become store errors."""
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(query, params)
                rows: Rows = await cur.fetchall() if cur.description else []
                return rows
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"PostgreSQL store {self.settings.where}: read failed ({first_line(exc)})"
            ) from exc

    @asynccontextmanager
    async def claimer(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The claims' own connection, one claim at a time.

        Its statement is prepared at once with a generic plan: planning the
        claim costs ~10 ms, running it under 1 ms. Its commits are asynchronous
        (``synchronous_commit = off``), which is safe for a claim: the
        claimer's first append, synchronous, flushes the WAL up to and past
        the claim before any effect starts; a claim lost with the server's
        last moments only makes the run claimable again.
        """
        async with self._claiming:
            conn = self._claimer
            if conn is None or conn.closed or conn.broken:
                conn = self._claimer = await self.connect()
                conn.prepare_threshold = 0
                await conn.execute("SET plan_cache_mode = force_generic_plan")
                await conn.execute("SET synchronous_commit = off")
                # A claim touches a handful of rows, but its plan's estimated cost
                # (the sweep's look-up per registered worker) can pass the server's
                # jit_above_cost: compiling it took ~150 ms, its run ~2 ms.
                await conn.execute("SET jit = off")
            yield conn

    # -- wake-ups ---------------------------------------------------------------------------

    async def listening(self) -> Listener:
        """The loop's listener, once its LISTEN is in force (started on first use)."""
        if self.listener is None:
            self.listener = Listener()
            self._listening = self.loop.create_future()
            self.listener.task = self.loop.create_task(
                self._listen(self.listener, self._listening),
                name=f"PostgresBackend listener {self.settings.where}",
            )
        assert self._listening is not None
        await asyncio.shield(self._listening)
        return self.listener

    async def _listen(self, listener: Listener, ready: asyncio.Future[None]) -> None:
        pause = 0.1
        try:
            while True:
                try:
                    conn = await self.connect()
                    listener.conn = conn
                    await conn.execute(sql.SQL("LISTEN {}").format(
                        sql.Identifier(self.settings.channel)))
                    pause = 0.1
                    if ready.done():
                        listener.bump()  # notifications sent while reconnecting are lost
                    else:
                        ready.set_result(None)
                    async for _ in conn.notifies():
                        listener.bump()
                except (psycopg.Error, StoreUnavailableError) as exc:
                    listener.abandon()
                    if not ready.done():
                        ready.set_exception(
                            exc if isinstance(exc, StoreUnavailableError) else
                            StoreUnavailableError(
                                f"PostgreSQL store {self.settings.where}: LISTEN failed "
                                f"({first_line(exc)})"
                            )
                        )
                        return
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
        finally:
            last, listener.conn = listener.conn, None
            if last is not None and not last.closed:
                with suppress(Exception):
                    await last.close()

    # -- shutting down ----------------------------------------------------------------------

    async def _close_others(self) -> None:
        """Close everything but the writer's connection (the writer closes that itself)."""
        listener = self.listener
        if listener is not None and listener.task is not None and not listener.task.done():
            listener.task.cancel()
            with suppress(BaseException):
                await listener.task
        for live in list(self.liveness.values()):
            with suppress(Exception):
                await live.conn.close()
        self.liveness.clear()
        claimer, self._claimer = self._claimer, None
        if claimer is not None:
            with suppress(Exception):
                await claimer.close()
        await self.relay.close()
        await self.pool.close()

    async def shutdown(self) -> None:
        """Flush the writer's queue and close every connection (from this link's loop)."""
        await self.writer.shutdown()
        await self._close_others()

    def abandon(self) -> None:
        """Drop a link whose event loop is gone: nothing of it can be awaited any more."""
        self.writer.abandon()
        if self.listener is not None:
            self.listener.abandon()
        self.relay.abandon()
        for live in self.liveness.values():
            live.abandon()
        self.liveness.clear()
        if self._claimer is not None and not self._claimer.closed:
            self._claimer.pgconn.finish()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (psycopg adds DETAIL and HINT lines)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_options(
    url: str,
    *,
    schema: str,
    pool_size: int,
    max_batch: int,
    connect_timeout: float,
    idle_in_transaction_timeout: float,
) -> dict[str, Any]:
    """Refuse `PostgresBackend`'s bad options; return the URL's libpq fields.

    The URL's password is marked secret (`durable_agent.mark_secret`) here.
    """
    if not isinstance(url, str):
        raise ConfigurationError(
            f"PostgresBackend(url=...) must be a str, got {type(url).__name__}"
        )
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"PostgresBackend: malformed connection URL ({exc})") from exc
    password = info.get("password")
    if isinstance(password, str):
        mark_secret(password)
    if not isinstance(schema, str) or not re.match(_IDENTIFIER, schema):
        raise ConfigurationError(
            f"PostgresBackend(schema={schema!r}) must be a plain identifier (letters, "
            "digits and '_', not starting with a digit, at most 63 characters)"
        )
    for name, value, least in (("pool_size", pool_size, 1), ("max_batch", max_batch, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigurationError(
                f"PostgresBackend({name}={value!r}) must be an int of at least {least}"
            )
    if (
        not isinstance(connect_timeout, int | float)
        or isinstance(connect_timeout, bool)
        or not math.isfinite(connect_timeout)
        or connect_timeout <= 0
    ):
        raise ConfigurationError(
            f"PostgresBackend(connect_timeout={connect_timeout!r}) must be seconds > 0"
        )
    idle = idle_in_transaction_timeout
    if (
        not isinstance(idle, int | float)
        or isinstance(idle, bool)
        or not math.isfinite(idle)
        or idle < 0
        or (0 < idle < 0.001)
        or idle > 2_000_000
    ):
        raise ConfigurationError(
            f"PostgresBackend(idle_in_transaction_timeout={idle!r}) must be seconds, "
            "0 (off) or from 0.001 to 2000000"
        )
    return info
