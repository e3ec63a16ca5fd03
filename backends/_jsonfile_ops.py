"""The file side of `JsonFileBackend`: layout, the commit log, locks. Blocking; run in a thread.

One folder per run::

    runs/
      7f3c…/                 the run id, validated so it never leaves runs/
        header.json          the header (records.encode_header), replaced atomically
        events.jsonl         one event per line (records.encode_event), and commit lines

An append writes its events and then one commit line, in one ``write`` and
one ``fsync``::

    {"commit":2,"state":"MODEL_CALL","updated_at":"…","generation":1,"expires_at":…,"release":false}

The commit line makes the append atomic: events after the last complete
commit line are a torn append (the process died inside its write) and are
ignored, then cut off by the next append, which never touches a committed
byte; damage to committed bytes is `CorruptRunError`, never a torn tail (see
`durable_agent.backends._jsonfile_log` for how the two are told apart). It also
carries what an append changes in the header (seq, state, updated_at, the
renewed or released lease), so an append costs one append plus one fsync
instead of a second atomic replacement of ``header.json`` (temp file, fsync,
rename, fsync of the folder: 350 µs against 150 µs on this machine's disk).
The run's header is ``header.json`` folded with the last commit line.
``header.json`` is rewritten, always folded, by what appends do not do:
lease acquire / renew / release and cancellation requests.

Writers of one run take an exclusive ``flock`` on its ``events.jsonl``, so
processes sharing the folder serialize, and every write checks seq and lease
under it. Reading (run ids, the header caches, loading) is
`durable_agent.backends._jsonfile_read`, re-exported here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from durable_agent.backend import LeaseOwner, check_append, check_lease_acquire
from durable_agent.backends._jsonfile_log import EVENTS, Commit, Tail
from durable_agent.backends._jsonfile_read import (
    HEADER,
    absent,
    check_run_id,
    current_header,
    decode_events,
    file_key,
    get_header,
    holds_run,
    load,
    open_log,
    read_header_file,
    remember,
)
from durable_agent.backends._log_checks import whole_run
from durable_agent.errors import (
    ConfigurationError,
    CorruptRunError,
    LeaseLostError,
    RunExistsError,
    RunNotFoundError,
    StoreUnavailableError,
)
from durable_agent.records import (
    Event,
    Lease,
    RunHeader,
    StoredRun,
    encode_header,
    utcnow,
)

__all__ = [
    "HEADER",
    "WouldBlock",
    "Written",
    "absent",
    "acquire",
    "append",
    "check_run_id",
    "create",
    "current_header",
    "decode_events",
    "delete",
    "file_key",
    "finish",
    "fsync_dir",
    "get_header",
    "holds_run",
    "load",
    "locked",
    "open_log",
    "read_header_file",
    "release",
    "remember",
    "remove",
    "renew",
    "replace_header",
    "request_cancel",
    "stored_run",
    "unavailable",
    "write_append",
    "write_file",
]


# -- writing -----------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: str) -> None:
    """fsync a folder, so the renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes) -> None:
    """Write ``data`` as the whole file at ``path`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_header(folder: str, header: RunHeader) -> None:
    """Write header.json atomically: temp file, fsync, rename, fsync of the folder."""
    temp = os.path.join(folder, f".{HEADER}.tmp")
    write_file(temp, encode_header(header).encode() + b"\n")
    os.replace(temp, os.path.join(folder, HEADER))
    fsync_dir(folder)


def create(root: str, header: RunHeader, lines: Sequence[bytes]) -> None:
    run_id = check_run_id(header.run_id)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, run_id)
    if os.path.lexists(final):
        if not holds_run(final):
            raise ConfigurationError(
                f"cannot create run {run_id!r}: {final} exists and is not a run (a file or "
                "folder of something else, left untouched); choose another run id"
            )
        raise RunExistsError(run_id)
    lease = header.lease
    commit = Commit(
        seq=header.seq,
        state=header.state,
        updated_at=header.updated_at,
        generation=header.lease_generation,
        expires_at=lease.expires_at if lease is not None else None,
        release=False,
    )
    # Built in a hidden folder and renamed into place: a run exists whole or not at all.
    temp = os.path.join(root, f".create-{uuid.uuid4().hex}")
    os.mkdir(temp)
    try:
        write_file(os.path.join(temp, HEADER), encode_header(header).encode() + b"\n")
        write_file(os.path.join(temp, EVENTS), b"".join(lines) + commit.line())
        fsync_dir(temp)
        try:
            os.rename(temp, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise RunExistsError(run_id) from None
            raise
        fsync_dir(root)
    finally:
        if os.path.isdir(temp):
            shutil.rmtree(temp, ignore_errors=True)


class WouldBlock(Exception):
    """Another writer holds the run's lock: wait for it in a worker thread instead."""


def _open_locked(root: str, run_id: str, *, wait: bool) -> tuple[str, int]:
    """Open the run's log for appending and take its exclusive flock.

    The lock is on the file the path named when it was opened. Once it is
    held, the path must still name that file: if the run's folder is gone it
    was deleted meanwhile; if the path names another file, ``migrate``
    replaced the log while this waited, and the new one is opened and locked
    instead (its lock is the run's lock now).
    """
    folder = os.path.join(root, check_run_id(run_id))
    path = os.path.join(folder, EVENTS)
    while True:
        fd = open_log(run_id, folder, os.O_RDWR | os.O_APPEND)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WouldBlock from None
            try:
                now = os.stat(path).st_ino
            except FileNotFoundError:
                raise RunNotFoundError(run_id, "it was deleted by another writer") from None
        except BaseException:
            os.close(fd)
            raise
        if now == os.fstat(fd).st_ino:
            return folder, fd
        os.close(fd)  # replaced by a migration: lock the log that is there now


@contextmanager
def locked(root: str, run_id: str) -> Iterator[tuple[str, int]]:
    """The run's folder and its log opened for appending, under an exclusive flock."""
    folder, fd = _open_locked(root, run_id, wait=True)
    try:
        yield folder, fd
    finally:
        os.close(fd)  # also releases the lock


@dataclass(frozen=True, slots=True)
class Written:
    """An append written under the run's lock, not yet fsynced: `finish` it."""

    fd: int
    committed_end: int
    lease: Lease


def write_append(
    root: str,
    run_id: str,
    events: Sequence[Event],
    lines: Sequence[bytes],
    expected_seq: int,
    lease: Lease,
    release: bool,
    *,
    wait: bool,
) -> Written:
    """Check and write an append under the run's lock; the lock stays held until `finish`.

    With ``wait=False`` it never blocks on the lock (raises `WouldBlock`), so
    the event loop may call it directly: everything here is small reads and
    one write to the page cache. Only `finish` (the fsync) must go to a thread.
    """
    folder, fd = _open_locked(root, run_id, wait=wait)
    try:
        header, tail = current_header(run_id, folder, fd)
        check_append(header, events, expected_seq=expected_seq, lease=lease)
        renewed = lease.model_copy(
            update={
                "expires_at": time.time() + lease.ttl,
                "cancel_requested": header.cancel_requested,
            }
        )
        last = events[-1] if events else None
        commit = Commit(
            seq=last.seq if last else header.seq,
            state=last.state if last else header.state,
            updated_at=utcnow(),
            generation=lease.generation,
            expires_at=renewed.expires_at,
            release=release,
        )
        if tail.size > tail.end:
            os.ftruncate(fd, tail.end)  # a torn append: never committed, never read
        # A last commit line cut just before its newline is committed; it gets its newline.
        data = (b"" if tail.newline else b"\n") + b"".join(lines) + commit.line()
        try:
            _write_all(fd, data)
        except OSError:
            with suppress(OSError):
                os.ftruncate(fd, tail.end)
            raise
        end = tail.end + len(data)
        after = header.model_copy(
            update={
                "seq": commit.seq,
                "state": commit.state,
                "updated_at": commit.updated_at,
                "lease": None if release else renewed,
            }
        )
        remember(folder, file_key(folder, fd), after, Tail(commit, end, end))
    except BaseException:
        os.close(fd)
        raise
    return Written(fd, tail.end, renewed)


def finish(written: Written) -> Lease:
    """fsync the append, then release the lock; on failure cut the append off again."""
    try:
        os.fsync(written.fd)
    except OSError:
        with suppress(OSError):
            os.ftruncate(written.fd, written.committed_end)
        raise
    finally:
        os.close(written.fd)
    return written.lease


def append(
    root: str,
    run_id: str,
    events: Sequence[Event],
    lines: Sequence[bytes],
    expected_seq: int,
    lease: Lease,
    release: bool,
) -> Lease:
    """The whole append in one blocking call (for callers in a worker thread)."""
    return finish(
        write_append(root, run_id, events, lines, expected_seq, lease, release, wait=True)
    )


def acquire(root: str, run_id: str, owner: LeaseOwner, ttl: float, takeover: int | None) -> Lease:
    with locked(root, run_id) as (folder, fd):
        header, _ = current_header(run_id, folder, fd)
        lease = check_lease_acquire(header, owner, ttl=ttl, takeover=takeover, now=time.time())
        replace_header(
            folder, header.model_copy(update={"lease": lease, "lease_generation": lease.generation})
        )
        return lease


def renew(root: str, run_id: str, lease: Lease) -> Lease:
    with locked(root, run_id) as (folder, fd):
        header, _ = current_header(run_id, folder, fd)
        if header.lease is None or header.lease_generation != lease.generation:
            raise LeaseLostError(run_id, f"lease generation {lease.generation} was taken over")
        renewed = lease.model_copy(
            update={
                "expires_at": time.time() + lease.ttl,
                "cancel_requested": header.cancel_requested,
            }
        )
        replace_header(folder, header.model_copy(update={"lease": renewed}))
        return renewed


def release(root: str, run_id: str, lease: Lease) -> None:
    try:
        with locked(root, run_id) as (folder, fd):
            header, _ = current_header(run_id, folder, fd)
            if header.lease is not None and header.lease_generation == lease.generation:
                replace_header(folder, header.model_copy(update={"lease": None}))
    except RunNotFoundError:
        return


def request_cancel(root: str, run_id: str, reason: str) -> RunHeader:
    with locked(root, run_id) as (folder, fd):
        header, _ = current_header(run_id, folder, fd)
        if header.cancel_requested is None:
            header = header.model_copy(update={"cancel_requested": reason})
            replace_header(folder, header)
        return header


def remove(root: str, folder: str) -> None:
    # Moved aside in one rename (the run is gone at once, whole), then removed.
    trash = os.path.join(root, f".deleted-{uuid.uuid4().hex}")
    os.rename(folder, trash)
    fsync_dir(root)
    shutil.rmtree(trash, ignore_errors=True)


def delete(root: str, run_id: str) -> bool:
    folder = os.path.join(root, check_run_id(run_id))
    if not os.path.isdir(folder):
        return False
    try:
        with locked(root, run_id) as (folder, _):
            remove(root, folder)
    except RunNotFoundError:
        return False
    except CorruptRunError:  # no log to lock: nothing to serialize with
        remove(root, folder)
    return True


def stored_run(root: str, run_id: str) -> StoredRun:
    header, lines = load(root, run_id)
    return whole_run(run_id, header, decode_events(run_id, lines))


def unavailable(root: str, exc: OSError) -> StoreUnavailableError:
    error = StoreUnavailableError(f"JSON file store {root}: {exc}")
    error.__cause__ = exc
    return error
