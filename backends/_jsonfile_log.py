"""The commit log of one `JsonFileBackend` run: commit lines, and a torn tail told from damage.

``events.jsonl`` holds event lines, each append followed by one commit line
(see `durable_agent.backends._jsonfile_ops` for why). What counts as written:

* Everything up to the last **complete** commit line is committed: an append
  returned for it, or could have. A commit line is complete once its closing
  ``}`` is on disk: the append's events precede it in the same write.
* Only what follows it is a **torn tail**, left by a process killed inside its
  write: complete event lines continuing the run's seqs, then at most one
  partial line. It is ignored, and cut off by the next append.
* Anything else is damage to committed bytes and raises `CorruptRunError`
  naming the run and the byte position, never a silent loss: a commit line
  followed by something other than a newline (its newline was overwritten),
  a line after the last commit that is not the next event, a commit line
  that does not parse.

A commit line cut just before its newline (the write stopped one byte short,
or the last byte was lost) still holds every byte of its append, so it is
committed; the next append writes the missing newline first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from durable_agent.errors import CorruptRunError
from durable_agent.fsm import RunState
from durable_agent.records import RunHeader

EVENTS: Final = "events.jsonl"
COMMIT: Final = b'{"commit":'
_TAIL_CHUNK: Final = 1024
"""Bytes read from the end of a log at a time: a commit line is ~170 bytes."""


@dataclass(frozen=True, slots=True)
class Commit:
    """What one append (or the create) changed in the header."""

    seq: int
    state: RunState
    updated_at: datetime
    generation: int
    expires_at: float | None
    release: bool

    def line(self) -> bytes:
        # Framing of the log, not a stored record: the records themselves are
        # written by durable_agent.records. Every value is a number, a bool, or
        # text that needs no JSON escaping (a state name, an ISO time), so the
        # only "}" of the line is its last byte before the newline.
        expires = "null" if self.expires_at is None else repr(self.expires_at)
        return (
            f'{{"commit":{self.seq},"state":"{self.state.value}",'
            f'"updated_at":"{self.updated_at.isoformat()}","generation":{self.generation},'
            f'"expires_at":{expires},"release":{"true" if self.release else "false"}}}\n'
        ).encode()

    @classmethod
    def parse(cls, run_id: str, raw: bytes, position: int) -> Commit:
        try:
            data = json.loads(raw)
            expires = data["expires_at"]
            commit = cls(
                seq=_int(data["commit"]),
                state=RunState(data["state"]),
                updated_at=datetime.fromisoformat(data["updated_at"]),
                generation=_int(data["generation"]),
                expires_at=None if expires is None else float(expires),
                release=bool(data["release"]),
            )
        except (ValueError, TypeError, KeyError) as exc:
            detail = f"{EVENTS} has a damaged commit line at byte {position} ({exc})"
            raise CorruptRunError(run_id, None, detail) from exc
        if commit.updated_at.tzinfo is None:
            raise CorruptRunError(
                run_id, None, f"{EVENTS} commit line at byte {position} has a naive time"
            )
        return commit

    def fold(self, base: RunHeader) -> RunHeader:
        """``base`` (header.json) as this commit, later than the file, leaves it."""
        lease = base.lease
        if lease is not None and self.generation == base.lease_generation:
            if self.release:
                lease = None
            elif self.expires_at is not None and self.expires_at > lease.expires_at:
                lease = lease.model_copy(update={"expires_at": self.expires_at})
        return base.model_copy(
            update={
                "seq": self.seq,
                "state": self.state,
                "updated_at": max(base.updated_at, self.updated_at),
                "lease": lease,
            }
        )


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not an int")
    return value


@dataclass(frozen=True, slots=True)
class Tail:
    """The last commit of a log and where the committed bytes end."""

    commit: Commit
    end: int
    """Where the committed bytes end (after the last commit line's newline, if any)."""
    size: int
    newline: bool = True
    """False when the last commit line lacks its newline: the next append adds it."""


def _last_piece(run_id: str, piece: bytes, position: int) -> Commit | None:
    """The commit the bytes after the last newline complete, or None when they are torn."""
    if not piece.startswith(COMMIT):
        return None  # a partial event line (or nothing): torn, never committed
    close = piece.find(b"}")
    if close < 0:
        return None  # a partial commit line: the append never finished
    commit = Commit.parse(run_id, piece[: close + 1], position)
    if close + 1 < len(piece):
        found = piece[close + 1 : close + 2]
        raise CorruptRunError(
            run_id,
            commit.seq,
            f"{EVENTS}: the commit line of seq {commit.seq} at byte {position} ends in "
            f"{found!r} at byte {position + close + 1} instead of a newline, so the append it "
            "commits cannot be told from a torn one; the file was left as it is: repair the "
            "newline by hand, or export what loads and delete the run",
        )
    return commit


def _check_uncommitted(run_id: str, lines: Sequence[tuple[int, bytes]], commit: Commit) -> None:
    """Complete lines after the last commit must be the next events of a torn append.

    Anything else means a commit line was damaged into something that no
    longer reads as one: treating it as torn would drop an acknowledged append.
    """
    for offset, (position, raw) in enumerate(lines, start=1):
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("seq") != commit.seq + offset:
            raise CorruptRunError(
                run_id,
                commit.seq + offset,
                f"{EVENTS} has a damaged line at byte {position}, after its last commit "
                f"(seq {commit.seq}): it is not the next event of a torn append",
            )


def read_tail(run_id: str, fd: int) -> Tail:
    """Find the last complete commit line, reading the file backwards."""
    size = os.fstat(fd).st_size
    reader = _Backwards(fd, size)
    cut = reader.last_newline()
    piece = reader.buffer[cut + 1 :]
    commit = _last_piece(run_id, piece, reader.start + cut + 1)
    if commit is not None:
        return Tail(commit, size, size, newline=False)
    after: list[tuple[int, bytes]] = []  # complete lines after the last commit, last first
    while cut >= 0:
        reader.buffer = reader.buffer[:cut]  # up to the newline of the line to look at
        cut = reader.last_newline()
        raw = reader.buffer[cut + 1 :]
        begins = reader.start + cut + 1
        if raw.startswith(COMMIT):
            commit = Commit.parse(run_id, raw, begins)
            _check_uncommitted(run_id, after[::-1], commit)
            return Tail(commit, begins + len(raw) + 1, size)
        after.append((begins, raw))
    raise CorruptRunError(run_id, None, f"{EVENTS} holds no commit line")


class _Backwards:
    """The end of a file, read backwards as far as needed: ``buffer`` starts at ``start``."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.start, self.buffer = fd, size, b""

    def last_newline(self) -> int:
        """The index of the buffer's last newline, reading further back until one (or -1)."""
        while True:
            cut = self.buffer.rfind(b"\n")
            if cut >= 0 or self.start == 0:
                return cut
            # Twice as far back each time, so a long torn line costs no quadratic copying.
            begin = max(0, self.start - max(_TAIL_CHUNK, len(self.buffer)))
            self.buffer = os.pread(self.fd, self.start - begin, begin) + self.buffer
            self.start = begin


def committed_lines(run_id: str, data: bytes) -> tuple[Commit, list[tuple[int, bytes]]]:
    """The last commit of a whole log and every event line it commits, with their seqs."""
    committed: list[tuple[int, bytes]] = []
    pending: list[tuple[int, bytes]] = []
    last: Commit | None = None
    *complete, piece = data.split(b"\n")
    position = 0
    for raw in complete:
        if raw.startswith(COMMIT):
            last = _commit(run_id, raw, position, committed, pending)
            pending = []
        else:
            pending.append((position, raw))
        position += len(raw) + 1
    tail = _last_piece(run_id, piece, position)
    if tail is not None:
        last = _commit(run_id, piece[: piece.index(b"}") + 1], position, committed, pending)
        pending = []
    if last is None:
        raise CorruptRunError(run_id, None, f"{EVENTS} holds no commit line")
    _check_uncommitted(run_id, pending, last)
    return last, committed


def _commit(
    run_id: str,
    raw: bytes,
    position: int,
    committed: list[tuple[int, bytes]],
    pending: list[tuple[int, bytes]],
) -> Commit:
    """Check the commit line at ``position`` and move the lines it commits to ``committed``."""
    commit = Commit.parse(run_id, raw, position)
    expected = len(committed) + len(pending)
    if commit.seq != expected:
        raise CorruptRunError(
            run_id,
            commit.seq,
            f"the commit line at byte {position} says seq {commit.seq} after {expected} events",
        )
    committed.extend((seq, line) for seq, (_, line) in enumerate(pending, start=len(committed) + 1))
    return commit
