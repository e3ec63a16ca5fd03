"""`JsonFileBackend.migrate`: each run's files rewritten at this record version, in place.

The folder layout (`durable_agent.backends._jsonfile_ops`) is unchanged in this
release, so only records move. For each run folder, under the run's lock (the
``flock`` every writer of the run takes, so no append, lease change or delete
of the run runs meanwhile):

1. ``events.jsonl``: when it holds an event of an older ``schema_version``, a
   new log is written beside it (``.events.jsonl.tmp``), holding the same
   committed lines with each older event re-encoded as reading it gives it
   (`decode_event` upcasts, `encode_event` writes the current form) and every
   commit line byte for byte; it is fsynced, renamed over the log, and the
   folder fsynced. A torn append after the last commit (never acknowledged,
   never read) is left out, as the next append would cut it off.
2. ``header.json``: when it is of an older version, it is replaced the same
   way by its upcast form (`_jsonfile_ops.replace_header`).

Each replacement is one rename, and the old and the new file read the same,
so a process killed at any point leaves every run readable, each file either
migrated or not; running it again finishes the job. A writer that was waiting
for the lock on the replaced log finds the log's path names another file and
opens it again (`_jsonfile_ops.locked`), so it appends to the new log. A run
whose files do not read, or that holds a record newer than this code, is left
as it is and named in the report. Blocking; run in a thread.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Final

from durable_agent.backends import _jsonfile_folder as folder_ops
from durable_agent.backends import _jsonfile_ops as ops
from durable_agent.backends._jsonfile_log import COMMIT, EVENTS, committed_lines, read_tail
from durable_agent.errors import CorruptRunError, RunNotFoundError
from durable_agent.records import (
    SCHEMA_VERSION,
    decode_event,
    decode_header,
    encode_event,
)

__all__ = ["Outcome", "migrate"]

_PREFIX: Final = f'{{"schema_version":{SCHEMA_VERSION},'.encode()
"""How every record this version encodes begins."""

_TEMP: Final = f".{EVENTS}.tmp"


@dataclass(slots=True)
class Outcome:
    """What `migrate` found and did."""

    checked: int = 0
    rewritten: int = 0
    steps: list[str] = field(default_factory=list)


def migrate(root: str, dry_run: bool) -> Outcome:
    """Rewrite every run folder's older records under ``root`` (see the module docstring)."""
    outcome = Outcome()
    for entry in folder_ops.run_entries(root):
        outcome.checked += 1
        try:
            count = _migrate_run(root, entry.name, dry_run)
        except RunNotFoundError:
            outcome.checked -= 1  # deleted since the folder was read, or not a run
            continue
        except CorruptRunError as exc:
            outcome.steps.append(f"left run {entry.name!r} as it is: {exc}")
            continue
        if count is None:
            continue
        outcome.rewritten += 1
        outcome.steps.append(
            f"rewrite run {entry.name!r} at record schema {SCHEMA_VERSION}"
            if dry_run
            else f"rewrote {count} record(s) of run {entry.name!r} at schema {SCHEMA_VERSION}"
        )
    return outcome


def _migrate_run(root: str, run_id: str, dry_run: bool) -> int | None:
    """Migrate one run under its lock; the records rewritten, None when none was older."""
    with ops.locked(root, run_id) as (folder, fd):
        log = _new_log(run_id, fd)
        path = os.path.join(folder, ops.HEADER)
        try:
            with open(path, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            raise CorruptRunError(run_id, None, f"{ops.HEADER} is missing") from None
        old_header = _older(run_id, None, text)
        if log is None and not old_header:
            return None
        count = (log[1] if log is not None else 0) + int(old_header)
        if dry_run:
            return count
        if log is not None:  # the log first: its commits say where the run is
            temp = os.path.join(folder, _TEMP)
            ops.write_file(temp, log[0])
            os.replace(temp, os.path.join(folder, EVENTS))
            ops.fsync_dir(folder)
        if old_header:
            ops.replace_header(folder, decode_header(run_id, text))
        return count


def _new_log(run_id: str, fd: int) -> tuple[bytes, int] | None:
    """The log's committed bytes with its older events re-encoded, and how many; None if none."""
    tail = read_tail(run_id, fd)
    data = os.pread(fd, tail.end, 0)
    if len(data) != tail.end:
        raise CorruptRunError(run_id, None, f"{EVENTS} shrank while it was read")
    _, committed = committed_lines(run_id, data)  # refuses damage before anything is written
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline after the last commit line
    events = iter(committed)
    count = 0
    for index, raw in enumerate(lines):
        if raw.startswith(COMMIT):
            continue
        seq, line = next(events, (0, b""))
        if line != raw:  # committed_lines read the same bytes: never, unless it changes
            raise CorruptRunError(run_id, None, f"{EVENTS}: lines out of step with its commits")
        if _older(run_id, seq, raw):
            lines[index] = encode_event(decode_event(run_id, seq, raw)).encode()
            count += 1
    if not count:
        return None
    return b"\n".join(lines) + b"\n", count


def _older(run_id: str, seq: int | None, raw: bytes) -> bool:
    """Whether the record ``raw`` is of an older version; raises for a newer or unreadable one."""
    if raw.startswith(_PREFIX):
        return False
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CorruptRunError(run_id, seq, f"the record is not JSON ({exc})") from exc
    version = data.get("schema_version", 1) if isinstance(data, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptRunError(run_id, seq, f"the record has no valid schema_version ({version!r})")
    if version > SCHEMA_VERSION:  # decoding raises SchemaVersionError naming the version
        if seq is None:
            decode_header(run_id, raw)
        else:
            decode_event(run_id, seq, raw)
    return version < SCHEMA_VERSION
