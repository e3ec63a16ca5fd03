"""The folder of a `JsonFileBackend` as a whole: which entries are runs, listing, prune.

People keep other things next to their runs: a ``README.txt``, a backup
folder, an editor's ``.swp`` or ``~`` file, a ``.DS_Store``. An entry is a run
only when it is a folder with a valid run id as its name that holds
``header.json`` or ``events.jsonl`` (a run folder always holds both; one alone
is a damaged run). Every other entry is **foreign**: no call reads, changes or
deletes it, and `JsonFileBackend.foreign_entries` names them. The store's own
work in progress (``.create-…``, ``.deleted-…``, left by a killed create or
delete) is neither: prune clears it after an hour.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from durable_agent.backend import UnreadableRun
from durable_agent.backends import _jsonfile_ops as ops
from durable_agent.errors import ConfigurationError, CorruptRunError, RunNotFoundError
from durable_agent.fsm import RunState
from durable_agent.records import RunHeader

_OWN: Final = (".create-", ".deleted-")
"""Prefixes of the store's own temporary folders."""

CLAIM_LOCK: Final = ".claims.lock"
"""The store's own claim lock file (`durable_agent.backends._jsonfile_claims`)."""


@dataclass(slots=True)
class Scan:
    """What the folder holds: readable runs, unreadable runs, and entries that are not runs."""

    headers: list[RunHeader] = field(default_factory=list)
    unreadable: list[UnreadableRun] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    """Names of the entries that are not runs; a folder's name ends in ``/``."""


def _entries(root: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(root) as found:
            return sorted(
                (e for e in found if not e.name.startswith(_OWN) and e.name != CLAIM_LOCK),
                key=lambda e: e.name,
            )
    except FileNotFoundError:
        return []  # nothing written yet


def _may_be_run(entry: os.DirEntry[str]) -> bool:
    """A folder whose name is a valid run id (whether it holds a run is seen on reading it)."""
    try:
        ops.check_run_id(entry.name)
        return entry.is_dir()
    except (ConfigurationError, OSError):
        return False


def run_entries(root: str) -> list[os.DirEntry[str]]:
    """The entries that may be runs (folders named by a valid run id), sorted by name."""
    return [entry for entry in _entries(root) if _may_be_run(entry)]


def _shown(entry: os.DirEntry[str]) -> str:
    try:
        return entry.name + ("/" if entry.is_dir() else "")
    except OSError:
        return entry.name


def scan(root: str, *, read: bool = True) -> Scan:
    """Classify every entry; with ``read``, read each run's header (else only the foreign)."""
    found = Scan()
    for entry in _entries(root):
        if not _may_be_run(entry):
            found.foreign.append(_shown(entry))
            continue
        if not read:
            if not ops.holds_run(entry.path):
                found.foreign.append(_shown(entry))
            continue
        try:
            found.headers.append(ops.get_header(root, entry.name))
        except CorruptRunError as exc:
            found.unreadable.append(UnreadableRun.from_error(entry.name, exc))
        except RunNotFoundError:
            if os.path.isdir(entry.path):  # still there: a folder that is not a run
                found.foreign.append(_shown(entry))
            # else deleted since the folder was read: gone, not hidden
    return found


def prune(root: str, older_than: datetime, states: list[RunState]) -> int:
    """Delete the runs in ``states`` last updated before ``older_than`` and not leased.

    A run whose header cannot be read is kept (its state and age are unknown),
    and so is every foreign entry.
    """
    removed = 0
    for entry in _entries(root):
        if not _may_be_run(entry):
            continue
        with (
            suppress(RunNotFoundError, CorruptRunError),
            ops.locked(root, entry.name) as (folder, fd),
        ):
            header, _ = ops.current_header(entry.name, folder, fd)
            live = header.lease is not None and header.lease.expires_at > time.time()
            if header.state in states and header.updated_at < older_than and not live:
                ops.remove(root, folder)
                removed += 1
    # Left by creates and deletes that were killed half-way.
    with suppress(FileNotFoundError), os.scandir(root) as leftovers:
        for leftover in leftovers:
            if leftover.name.startswith(_OWN):
                with suppress(OSError):
                    if time.time() - leftover.stat().st_mtime > 3600:
                        shutil.rmtree(leftover.path, ignore_errors=True)
    return removed
