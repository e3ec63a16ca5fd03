"""A durable store in a folder of JSON files, readable by eye: one folder per run.

Each run is ``<folder>/<run_id>/header.json`` (its header) plus
``<folder>/<run_id>/events.jsonl`` (its events, one JSON line each, with a
short commit line after each append). Inspect a run with ``cat`` or ``jq``;
back the folder up with ``cp -r``. See `durable_agent.backends._jsonfile_ops`
for the layout and why an append is one write and one fsync.

Durability: every create and append is written and fsynced (and a new run's
folder fsynced into its parent) before it returns, so a run survives the
process being killed and the machine losing power. A torn append, left by a
process killed inside its write, is ignored without touching earlier events;
damage to what was committed (a byte overwritten, a commit line's newline
lost) is `CorruptRunError` naming the run and the byte, never a silent loss.

Sharing: processes on one machine may share the folder. Writers of a run take
an OS file lock (``flock``) on its log and check ``seq`` and the lease under
it. Do not share the folder over NFS or other network filesystems, whose
locks are not reliable; use Redis, SQLite on a local disk, or PostgreSQL.

Other things in the folder (a ``README.txt``, a backup folder, an editor's
temporary file, a ``.DS_Store``) are not runs: every call leaves them alone,
and `JsonFileBackend.foreign_entries` names them. A run folder whose header
cannot be read is listed in `RunPage.unreadable` (see
`durable_agent.backends._jsonfile_folder`).

Scale: listing reads every run's header, so it suits thousands of runs, not
millions; each append costs one fsync of its own (no group commit).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Final, TypeVar

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
from durable_agent.backends import _jsonfile_claims as claims
from durable_agent.backends import _jsonfile_folder as folder_ops
from durable_agent.backends import _jsonfile_migrate as migration
from durable_agent.backends import _jsonfile_ops as ops
from durable_agent.errors import ConfigurationError, StoreUnavailableError
from durable_agent.fsm import RunState
from durable_agent.records import (
    SCHEMA_VERSION,
    Event,
    Lease,
    RunHeader,
    StoredRun,
    encode_event,
    encode_events,
)

__all__ = ["JsonFileBackend"]

T = TypeVar("T")

_WORKERS: Final = ThreadPoolExecutor(max_workers=32, thread_name_prefix="durable-agent-jsonfile")
"""Runs the fsync (and lock waits) of appends; jobs are never cancelled once submitted."""


class JsonFileBackend(Backend):
    """Runs as JSON files in one folder: durable, shareable between processes of one machine.

    Args:
        folder: where the runs live; created (with its parents) on the first
            write. Each run is a sub-folder named by its run id, so run ids
            may not contain path separators or NUL, nor start with '.'
            (`ConfigurationError`).
        session_id: tags the runs an agent creates through this backend.
        user_id: tags the runs an agent creates through this backend.

    The constructor does no I/O. The files are written in a worker thread, so
    an fsync never blocks the event loop, and the backend is bound to no loop.
    """

    capabilities = frozenset(
        {Capability.DURABLE, Capability.CROSS_PROCESS, Capability.MIGRATE, Capability.QUEUE_LIMIT}
    )
    """QUEUE_LIMIT: claims take turns under a folder-wide flock (`_jsonfile_claims`)."""

    def __init__(
        self,
        folder: str | os.PathLike[str] = "runs",
        *,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> None:
        super().__init__(session_id=session_id, user_id=user_id)
        if not isinstance(folder, str | os.PathLike):
            raise ConfigurationError(
                f"JsonFileBackend(folder=...) must be a str or os.PathLike, got "
                f"{type(folder).__name__}"
            )
        path = os.fspath(folder)
        if not isinstance(path, str) or not path:
            raise ConfigurationError(f"JsonFileBackend(folder={folder!r}) must be a text path")
        # Resolved now, so a later chdir() does not move the store.
        self._root = os.path.abspath(path)
        self._closed = False

    def __repr__(self) -> str:
        return f"JsonFileBackend({self._root!r})"

    @property
    def folder(self) -> str:
        """The absolute path of the store's folder."""
        return self._root

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")
        try:
            return await asyncio.to_thread(fn, self._root, *args)
        except OSError as exc:  # the disk, not the run: full, read-only, permissions
            raise ops.unavailable(self._root, exc) from exc

    # -- runs -----------------------------------------------------------------------------

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        ops.check_run_id(header.run_id)
        lines = [encode_event(e).encode() + b"\n" for e in events]
        await self._run(ops.create, header, lines)

    async def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        lease: Lease,
        release: bool = False,
    ) -> Lease:
        lines = [text.encode() + b"\n" for text in encode_events(events)]
        events = tuple(events)
        args = (run_id, events, lines, expected_seq, lease, release)
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")
        # Only the fsync leaves the event loop: the checks and the write are page-cache
        # work of ~30 us, while a hop to a worker thread and back costs ~100 us with
        # Python code on the other side (measured: 340 us per append all in a thread,
        # against 210 us for a bare threaded write+fsync). A lock held by another
        # writer is waited for in a thread, the whole append there.
        try:
            written = ops.write_append(self._root, *args, wait=False)
        except ops.WouldBlock:
            job = _WORKERS.submit(ops.append, self._root, *args)
        except OSError as exc:
            raise ops.unavailable(self._root, exc) from exc
        else:
            job = _WORKERS.submit(ops.finish, written)
        # Shielded, on threads of our own: a cancelled caller, or an event loop shutting
        # down, never stops a job that holds the run's lock (it would stay locked).
        try:
            return await asyncio.shield(asyncio.wrap_future(job))
        except OSError as exc:
            raise ops.unavailable(self._root, exc) from exc

    async def load_run(self, run_id: str) -> StoredRun:
        return await self._run(ops.stored_run, run_id)

    async def get_run(self, run_id: str) -> RunHeader:
        return await self._run(ops.get_header, run_id)

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
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")
        if limit < 1:
            raise ConfigurationError(f"list_runs(limit={limit}) must be at least 1")
        after = decode_cursor(cursor) if cursor else None
        wanted = set(states) if states is not None else None
        if wanted is not None and not wanted:
            return RunPage(runs=(), next_cursor=None)
        found = await self._run(folder_ops.scan)
        matches = [
            h
            for h in found.headers
            if not (
                (session_id is not None and h.session_id != session_id)
                or (user_id is not None and h.user_id != user_id)
                or (wanted is not None and h.state not in wanted)
                or (created_after is not None and h.created_at <= created_after)
                or (created_before is not None and h.created_at >= created_before)
                or (after is not None and (h.created_at.timestamp(), h.run_id) >= after)
            )
        ]
        matches.sort(key=lambda h: (h.created_at.timestamp(), h.run_id), reverse=True)
        # An unreadable header's fields are unknown: no filter can rule it out, and it
        # has no place in the order, so the first page reports it.
        unreadable = [(None, u) for u in found.unreadable] if after is None else []
        return make_page(matches[: limit + 1], limit=limit, unreadable=unreadable)

    async def foreign_entries(self) -> tuple[str, ...]:
        """The entries of the folder that are not runs, which every call leaves alone.

        A file, a hidden entry, or a folder holding neither ``header.json`` nor
        ``events.jsonl`` (a folder's name ends in ``/``); the store's own
        temporary folders are not listed. ``durable-agent runs list`` prints
        them on stderr.
        """
        return tuple((await self._run(lambda root: folder_ops.scan(root, read=False))).foreign)

    async def delete_run(self, run_id: str) -> bool:
        return await self._run(ops.delete, run_id)

    async def prune(
        self,
        *,
        older_than: datetime,
        states: Collection[RunState] = (RunState.DONE, RunState.CANCELLED),
    ) -> int:
        if older_than.tzinfo is None:
            raise ConfigurationError(
                f"prune(older_than={older_than.isoformat()}) has no time zone; use an aware "
                "datetime such as durable_agent.records.utcnow()"
            )
        wanted = list(states)
        if not wanted:
            if self._closed:
                raise StoreUnavailableError(f"{self!r} is closed")
            return 0
        return await self._run(folder_ops.prune, older_than, wanted)

    async def request_cancel(self, run_id: str, reason: str) -> RunHeader:
        return await self._run(ops.request_cancel, run_id, reason)

    # -- leases ------------------------------------------------------------------------------

    async def acquire_lease(
        self, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None = None
    ) -> Lease:
        return await self._run(ops.acquire, run_id, owner, ttl, takeover)

    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        return await self._run(ops.renew, run_id, lease)

    async def release_lease(self, run_id: str, lease: Lease) -> None:
        await self._run(ops.release, run_id, lease)

    # -- upgrades ------------------------------------------------------------------------

    async def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        """Rewrite each run's files holding older records at this version, in place.

        Under each run's lock, one atomic replacement per file (temp file,
        fsync, rename, fsync of the folder: `durable_agent.backends._jsonfile_migrate`),
        so it is safe while the folder is in use and to run again after a crash.
        """
        done = await self._run(migration.migrate, dry_run)
        steps = done.steps or [f"nothing to do: every record at schema {SCHEMA_VERSION}"]
        return MigrationReport(
            store=repr(self), layout_before=None, layout_after=None, runs_checked=done.checked,
            runs_rewritten=done.rewritten, steps=tuple(steps), dry_run=dry_run,
        )

    # -- workers ---------------------------------------------------------------------------

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
        """The portable claim, one claimer at a time across processes (a folder-wide flock).

        So ``max_running`` is never exceeded by racing claimers; the claim still
        reads every run's header (see `durable_agent.backends._jsonfile_claims`).
        """
        check_claim_args(agents, limit, ttl, max_running)
        if limit == 0 or not agents:
            return []
        return await claims.claim(
            self, owner, agents=agents, queues=queues, limit=limit, ttl=ttl,
            max_running=max_running,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        """Nothing is held open between calls; later calls raise `StoreUnavailableError`."""
        self._closed = True
