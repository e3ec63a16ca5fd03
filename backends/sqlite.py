"""A durable store in one SQLite file, with group commit.

Each run is a row of ``runs`` (the header, one column per field) plus rows of
``events`` (one compact JSON text per event, written by
`durable_agent.records.encode_event`). The file is in WAL mode, so readers
never wait for the writer, and several processes may share it: ``BEGIN
IMMEDIATE`` plus ``busy_timeout`` queue their writers, and every append's
compare-and-set on ``seq`` and lease generation catches a stale one.

Group commit: every write of this backend (appends, creates, lease changes,
deletes) is queued to one writer task per event loop. The task takes all the
writes queued while the previous commit was running and applies them in one
transaction with one commit (one fsync), in one hop to aiosqlite's thread. Each
write keeps its own checks: a refused append fails alone and the rest of its
batch commits. With a thousand runs appending at once, this turns a thousand
fsyncs into a handful.

The backend is bound to no event loop: it connects lazily on first use, and
when it is used from a new loop (the synchronous ``agent.do()`` runs each call
under a fresh ``asyncio.run()``) it reconnects there. When a loop shuts down,
its writer task flushes the queue and closes that loop's connection, so a
backend held at module level never keeps the interpreter from exiting.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import suppress
from datetime import datetime
from typing import Final, Literal, TypeVar

import aiosqlite

from durable_agent.backend import (
    Backend,
    Capability,
    ClaimedRun,
    LeaseOwner,
    MigrationReport,
    RunPage,
    check_claim_args,
    decode_cursor,
    make_page,
)
from durable_agent.backends import _sqlite_claims as claims
from durable_agent.backends import _sqlite_migrate as migration
from durable_agent.backends import _sqlite_ops as ops
from durable_agent.backends import _sqlite_schema as schema
from durable_agent.backends._log_checks import check_distinct_seqs, numbered_events, whole_run
from durable_agent.backends._loop_link import LoopLinks
from durable_agent.backends._sqlite_batch import Append
from durable_agent.backends._sqlite_writer import Link, Stats
from durable_agent.errors import ConfigurationError, StoreUnavailableError
from durable_agent.fsm import RunState
from durable_agent.records import Event, Lease, RunHeader, StoredRun, encode_event

__all__ = ["SqliteBackend"]

T = TypeVar("T")

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
"""The values of ``SqliteBackend(synchronous=...)``."""

_SYNCHRONOUS: Final = ("OFF", "NORMAL", "FULL", "EXTRA")


class SqliteBackend(LoopLinks[Link], Backend):
    """Runs in one SQLite file, durable and shareable between processes.

    Args:
        db_file: path of the database file. Its directory must exist (it is not
            created for you); the file and the tables are created on first use.
            ``":memory:"`` is refused: a connection is reopened per event loop,
            which would lose every run (use `MemoryBackend` instead).
        session_id: tags the runs an agent creates through this backend.
        user_id: tags the runs an agent creates through this backend.
        synchronous: SQLite's ``PRAGMA synchronous``, how hard a commit is
            pushed to disk before ``append`` returns (the file is in WAL mode).
            ``"FULL"`` (default): a committed append survives a process crash
            and power loss or an OS crash. ``"NORMAL"``: survives a process
            crash or SIGKILL, but the last commits before a power loss or OS
            crash may be lost (the file stays consistent); several times
            faster on disks with slow fsync. ``"OFF"``: no fsync at all; the
            file may be corrupted by a power loss or OS crash. ``"EXTRA"``:
            accepted for completeness; in WAL mode SQLite treats it as FULL
            (it differs only in rollback-journal modes).
        busy_timeout: seconds a write waits for another connection (process)
            holding the file's write lock before failing with
            `StoreUnavailableError`.
        max_batch: most writes committed together in one transaction.

    The constructor does no I/O, so a backend may be built at module level;
    it connects on first use, from whichever event loop uses it. Close it
    with ``await backend.close()`` or ``async with``.
    """

    capabilities = frozenset(
        {
            Capability.CROSS_PROCESS,
            Capability.GROUP_COMMIT,
            Capability.DURABLE,
            Capability.CLAIM,
            Capability.QUEUE_LIMIT,
            Capability.WORKER_LIVENESS,
            Capability.MIGRATE,
        }
    )

    def __init__(
        self,
        db_file: str | os.PathLike[str] = "durable.db",
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
        max_batch: int = 512,
    ) -> None:
        super().__init__(session_id=session_id, user_id=user_id)
        self._path = _check_path(db_file)
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"SqliteBackend(synchronous={synchronous!r}) must be one of "
                f"{', '.join(map(repr, _SYNCHRONOUS))}"
            )
        self._synchronous = synchronous.upper()
        if (
            not isinstance(busy_timeout, int | float)
            or isinstance(busy_timeout, bool)
            or not math.isfinite(busy_timeout)
            or busy_timeout < 0
        ):
            raise ConfigurationError(
                f"SqliteBackend(busy_timeout={busy_timeout!r}) must be a number of seconds >= 0"
            )
        self._busy_timeout = float(busy_timeout)
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ConfigurationError(
                f"SqliteBackend(max_batch={max_batch!r}) must be an int of at least 1"
            )
        self._max_batch = max_batch
        self._stats = Stats()
        self._init_links()
        self._swept = -math.inf  # the first claim sweeps

    def __repr__(self) -> str:
        return f"SqliteBackend({self._path!r})"

    def __del__(self) -> None:
        link: Link | None = getattr(self, "_link", None)
        if link is None or link.closed:
            return
        warnings.warn(
            f"{self!r} was garbage-collected with its connection open; "
            "call `await backend.close()` or use `async with`",
            ResourceWarning,
            stacklevel=1,
            source=self,
        )
        # Cancelling the writer makes it flush and close the connection on its own loop.
        if link.writer is not None and not link.loop.is_closed():
            with suppress(RuntimeError):
                link.loop.call_soon_threadsafe(link.writer.cancel)

    # -- connection ---------------------------------------------------------------------

    async def _drop_link(self, link: Link, loop: asyncio.AbstractEventLoop) -> None:
        # Left by an earlier event loop, or its writer was cancelled.
        await (link.shutdown() if link.loop is loop else link.abandon())

    async def _open_link(self, loop: asyncio.AbstractEventLoop) -> Link:
        path, timeout = self._path, self._busy_timeout
        opened: list[sqlite3.Connection] = []
        failed: list[StoreUnavailableError] = []

        # Runs in aiosqlite's thread, and never raises: when a connector raises,
        # aiosqlite (0.22) stops its thread without waiting, and the thread dies
        # resolving a future on the loop if that loop closed meanwhile. So on a
        # failure it hands over a throwaway in-memory connection, closed below.
        # The connection keeps it: it must not refer to self, or the cycle would
        # delay __del__ past the collection of the writer task.
        def connector() -> sqlite3.Connection:
            folder = os.path.dirname(path)
            if not os.path.isdir(folder):
                failed.append(
                    StoreUnavailableError(
                        f"cannot open SQLite store {path}: its directory {folder} does not "
                        "exist; create the directory first (SqliteBackend never creates "
                        "directories)"
                    )
                )
                return sqlite3.connect(":memory:")
            try:
                opened.append(sqlite3.connect(path, timeout=timeout, isolation_level=None))
            except sqlite3.Error as exc:
                error = StoreUnavailableError(f"cannot open SQLite store {path}: {exc}")
                error.__cause__ = exc
                failed.append(error)
                return sqlite3.connect(":memory:")
            return opened[0]

        conn = aiosqlite.Connection(connector, 64)
        # aiosqlite's private Connection._execute(fn, *args) runs fn in its thread:
        # every public aiosqlite method is built on it. A batch is one function,
        # so one thread hop per batch instead of ~5 per append (BEGIN, SELECT,
        # INSERT, UPDATE, COMMIT) - that is what keeps an append within 1.5x of a
        # raw INSERT+COMMIT on this machine, where a hop costs ~40 µs.
        execute = getattr(conn, "_execute", None)
        if not callable(execute):
            raise StoreUnavailableError(
                f"aiosqlite {aiosqlite.__version__} has no Connection._execute, which "
                "SqliteBackend needs; install a supported version: pip install 'aiosqlite>=0.20'"
            )
        # A daemon worker thread: a backend never closed (for example one held
        # at module level, used from a loop that was never shut down) must not
        # keep the interpreter from exiting; committed data is on disk anyway.
        thread = getattr(conn, "_thread", None)
        if isinstance(thread, threading.Thread) and not thread.is_alive():
            thread.daemon = True
        await conn
        if failed:
            await conn.close()
            raise failed[0]
        link = Link(loop, conn, execute, opened[0], path, self._max_batch, self._stats)
        try:
            busy_ms = round(self._busy_timeout * 1000)
            await link.execute(schema.prepare, path, self._synchronous, busy_ms)
        except BaseException:
            await conn.close()
            raise
        link.writer = loop.create_task(link.write_loop(), name=f"SqliteBackend writer {path}")
        return link

    async def _read(self, fn: Callable[..., T], *args: object) -> T:
        link = await self._connected()
        try:
            return await link.execute(fn, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"SQLite store {self._path}: read failed ({exc})") from exc

    async def _write(self, run_id: str, fn: Callable[..., T], *args: object) -> T:
        link = await self._connected()
        return await link.submit(run_id, lambda db: fn(db, *args))

    # -- runs -----------------------------------------------------------------------------

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        row = ops.header_row(header)
        check_distinct_seqs(header, events)
        rows = [(header.run_id, event.seq, encode_event(event)) for event in events]
        await self._write(header.run_id, lambda db: ops.create(db, row, rows))

    async def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        lease: Lease,
        release: bool = False,
    ) -> Lease:
        # The hot path, kept flat: straight onto the writer's queue as a record
        # (no closure, no coroutine in between), where one compare-and-set
        # serves every append of the batch (`durable_agent.backends._sqlite_batch`).
        link = self._link
        if link is None or not link.usable or link.loop is not asyncio.get_running_loop():
            link = await self._reconnect()
        future: asyncio.Future[Lease] = link.loop.create_future()
        # Encodes the events and builds the append's statement rows, once.
        link.pending.append(Append(run_id, events, expected_seq, lease, release, future))
        link.wakeup.set()
        return await future

    async def load_run(self, run_id: str) -> StoredRun:
        row, stored = await self._read(ops.read_run, run_id)
        header = ops.header_from_row(row)
        # Decoded here, not in SQLite's thread, so big events never delay a commit.
        return whole_run(run_id, header, numbered_events(run_id, stored))

    async def get_run(self, run_id: str) -> RunHeader:
        return await self._read(ops.load_header, run_id)

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
        self._check_open()
        if limit < 1:
            raise ConfigurationError(f"list_runs(limit={limit}) must be at least 1")
        where: list[str] = []
        params: list[object] = []
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if states is not None:
            wanted = sorted({str(s) for s in states})
            if not wanted:
                return RunPage(runs=(), next_cursor=None)
            where.append(f"state IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        if created_after is not None:
            where.append("created_at > ?")
            params.append(ops.timestamp(created_after, "list_runs(created_after=...)"))
        if created_before is not None:
            where.append("created_at < ?")
            params.append(ops.timestamp(created_before, "list_runs(created_before=...)"))
        if cursor:
            where.append("(created_at, run_id) < (?, ?)")
            params.extend(decode_cursor(cursor))
        found, unreadable = await self._read(ops.list_headers, where, params, limit + 1)
        return make_page(found, limit=limit, unreadable=unreadable)

    async def delete_run(self, run_id: str) -> bool:
        return await self._write(run_id, ops.delete, run_id)

    async def prune(
        self,
        *,
        older_than: datetime,
        states: Collection[RunState] = (RunState.DONE, RunState.CANCELLED),
    ) -> int:
        ops.timestamp(older_than, "prune(older_than=...)")
        wanted = list(states)
        if not wanted:
            self._check_open()
            return 0
        pruned = await self._write("", ops.prune, older_than, wanted)
        if pruned:
            await self._read(ops.reclaim)
        return pruned

    # -- leases -----------------------------------------------------------------------------

    async def acquire_lease(
        self, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None = None
    ) -> Lease:
        return await self._write(run_id, ops.acquire, run_id, owner, ttl, takeover)

    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        return await self._write(run_id, ops.renew, run_id, lease)

    async def release_lease(self, run_id: str, lease: Lease) -> None:
        await self._write(run_id, ops.release, run_id, lease)

    async def request_cancel(self, run_id: str, reason: str) -> RunHeader:
        return await self._write(run_id, ops.request_cancel, run_id, reason)

    # -- workers (polling: SQLite has no way to wake another process) --------------------------

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
        check_claim_args(agents, limit, ttl, max_running)
        if limit == 0 or not agents:
            self._check_open()
            return []
        names = sorted(set(agents))
        wanted = None if queues is None else sorted(set(queues))
        if wanted == []:
            return []
        caps = dict(max_running or {})
        now = time.monotonic()
        sweep = now - self._swept >= claims.SWEEP_EVERY
        if sweep:
            self._swept = now
        return await self._write(
            "", lambda db: claims.claim(db, owner, names, wanted, limit, ttl, caps, sweep=sweep)
        )

    async def register_worker(self, owner: LeaseOwner, *, ttl: float) -> None:
        await self._write("", claims.register_worker, owner.id, ttl)

    async def unregister_worker(self, owner: LeaseOwner) -> None:
        await self._write("", claims.unregister_worker, owner.id)

    # -- upgrades -----------------------------------------------------------------------------

    async def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        """Bring the table layout and every older record up to this version.

        One transaction per step and per run (`durable_agent.backends._sqlite_migrate`),
        so it is safe while the file is in use and to run again after a crash.
        """
        link = await self._connected()
        try:
            return await link.execute(migration.migrate, repr(self), dry_run)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(
                f"SQLite store {self._path}: migration failed ({exc}); every step already "
                "committed is whole, run it again"
            ) from exc

    # -- lifecycle ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit the writes already queued, then close the connection; idempotent."""
        link = await self._close_links()
        if link is not None and link.close_error is not None:
            raise StoreUnavailableError(
                f"SQLite store {self._path}: closing failed ({link.close_error}); every "
                "committed write is stored"
            ) from link.close_error


def _check_path(db_file: object) -> str:
    if not isinstance(db_file, str | os.PathLike):
        raise ConfigurationError(
            f"SqliteBackend(db_file=...) must be a str or os.PathLike, got {type(db_file).__name__}"
        )
    path = os.fspath(db_file)
    if not isinstance(path, str):
        raise ConfigurationError(f"SqliteBackend(db_file={db_file!r}) must be a text path")
    if path in ("", ":memory:") or path.startswith("file::memory:"):
        raise ConfigurationError(
            f"SqliteBackend(db_file={path!r}) is not supported: the connection is reopened per "
            "event loop, which would lose every run; use MemoryBackend, or a file path"
        )
    # Resolved now, so a later chdir() does not move the store.
    return os.path.abspath(path)
