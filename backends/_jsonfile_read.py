"""The reading side of `JsonFileBackend`'s files: run ids, header caches, loading a run.

`durable_agent.backends._jsonfile_ops` re-exports these names; its docstring
describes the layout. Blocking; run in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

from durable_agent.backends._jsonfile_log import EVENTS, Tail, committed_lines, read_tail
from durable_agent.errors import ConfigurationError, CorruptRunError, RunNotFoundError
from durable_agent.records import Event, RunHeader, decode_event, decode_header

HEADER: Final = "header.json"
_MAX_ID_BYTES: Final = 200


def check_run_id(run_id: object) -> str:
    """Refuse an id that could name a file outside its own run folder."""
    if not isinstance(run_id, str) or not run_id:
        raise ConfigurationError(f"run id {run_id!r} must be a non-empty str")
    bad = next((c for c in run_id if c in "/\\\0" or ord(c) < 32 or c == "\x7f"), None)
    if bad is not None or run_id.startswith(".") or os.path.isabs(run_id):
        raise ConfigurationError(
            f"run id {run_id!r} cannot be stored by JsonFileBackend: a run id names a folder, "
            f"so it may not contain path separators, NUL or control characters "
            f"({bad!r} found), nor start with '.'"
            if bad is not None
            else f"run id {run_id!r} cannot be stored by JsonFileBackend: a run id names a "
            "folder, so it may not start with '.' or be an absolute path"
        )
    if len(os.fsencode(run_id)) > _MAX_ID_BYTES:
        raise ConfigurationError(
            f"run id {run_id[:40]!r}… is longer than {_MAX_ID_BYTES} bytes, too long for a "
            "file name"
        )
    return run_id


# The last header.json read per run folder, keyed by the file's identity: the
# file is only ever replaced by a rename, so a new version has a new inode.
# Saves an open, a read and a validation on every append (~25 us).
_HEADERS: dict[str, tuple[tuple[int, int, int], RunHeader]] = {}


def read_header_file(run_id: str, folder: str) -> RunHeader:
    path = os.path.join(folder, HEADER)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = _HEADERS.get(path)
            if cached is not None and cached[0] == key:
                return cached[1]
            text = f.read()
    except FileNotFoundError:
        _HEADERS.pop(path, None)
        if not os.path.isdir(folder):
            raise RunNotFoundError(run_id) from None
        raise CorruptRunError(run_id, None, f"{HEADER} is missing") from None
    header = decode_header(run_id, text)
    if len(_HEADERS) > 10_000:
        _HEADERS.clear()
    _HEADERS[path] = (key, header)
    return header


# The run's current header and log tail per folder, keyed by the identity of both
# files: (inode, size, mtime) of the log and of header.json. Anything another
# writer does changes one of them. An append stores what it wrote, so the next
# append of the same run skips reading and validating both files (~25 us).
_Key = tuple[int, int, int, int, int, int]
_CURRENT: dict[str, tuple[_Key, RunHeader, Tail]] = {}


def file_key(folder: str, fd: int) -> _Key | None:
    try:
        header = os.stat(os.path.join(folder, HEADER))
    except FileNotFoundError:
        return None
    log = os.fstat(fd)
    return (
        log.st_ino, log.st_size, log.st_mtime_ns,
        header.st_ino, header.st_size, header.st_mtime_ns,
    )  # fmt: skip


def current_header(run_id: str, folder: str, fd: int) -> tuple[RunHeader, Tail]:
    key = file_key(folder, fd)
    cached = _CURRENT.get(folder)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1], cached[2]
    base = read_header_file(run_id, folder)
    if base.run_id != run_id:
        raise CorruptRunError(run_id, None, f"{HEADER} names run {base.run_id!r}")
    tail = read_tail(run_id, fd)
    header = tail.commit.fold(base)
    remember(folder, key, header, tail)
    return header, tail


def remember(folder: str, key: _Key | None, header: RunHeader, tail: Tail) -> None:
    if key is None:
        return
    if len(_CURRENT) > 10_000:
        _CURRENT.clear()
    _CURRENT[folder] = (key, header, tail)


def holds_run(folder: str) -> bool:
    """Whether ``folder`` is a run's: it holds the header or the log (both, unless damaged)."""
    return os.path.isdir(folder) and any(
        os.path.lexists(os.path.join(folder, name)) for name in (HEADER, EVENTS)
    )


def absent(run_id: str, folder: str) -> RunNotFoundError | CorruptRunError:
    """Why ``folder`` has no log: no run, an entry that is not a run, or a damaged run."""
    if not os.path.isdir(folder):
        return RunNotFoundError(run_id)  # never was, deleted, or a file of another program
    if not holds_run(folder):
        return RunNotFoundError(
            run_id,
            f"{folder} holds neither {HEADER} nor {EVENTS}, so it is not a run; it was left "
            "untouched",
        )
    return CorruptRunError(run_id, None, f"{EVENTS} is missing")


def open_log(run_id: str, folder: str, flags: int) -> int:
    try:
        return os.open(os.path.join(folder, EVENTS), flags)
    except (FileNotFoundError, NotADirectoryError):
        raise absent(run_id, folder) from None


def get_header(root: str, run_id: str) -> RunHeader:
    folder = os.path.join(root, check_run_id(run_id))
    fd = open_log(run_id, folder, os.O_RDONLY)
    try:
        return current_header(run_id, folder, fd)[0]
    finally:
        os.close(fd)


def load(root: str, run_id: str) -> tuple[RunHeader, list[tuple[int, bytes]]]:
    """The header and every committed event line, in order."""
    folder = os.path.join(root, check_run_id(run_id))
    with open(open_log(run_id, folder, os.O_RDONLY), "rb") as f:
        data = f.read()
    base = read_header_file(run_id, folder)
    last, committed = committed_lines(run_id, data)
    return last.fold(base), committed


def decode_events(run_id: str, lines: Sequence[tuple[int, bytes]]) -> tuple[Event, ...]:
    return tuple(decode_event(run_id, seq, raw) for seq, raw in lines)
