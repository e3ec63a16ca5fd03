"""Listing runs a page at a time: `RunPage`, its cursors, and the runs it could not read.

`durable_agent.backend` re-exports these names: backends import them from there.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from durable_agent.errors import ConfigurationError, CorruptRunError, SchemaVersionError
from durable_agent.records import RunHeader

__all__ = [
    "Position",
    "RunPage",
    "UnreadableReason",
    "UnreadableRun",
    "decode_cursor",
    "encode_cursor",
    "make_page",
]


UnreadableReason = Literal["corrupt", "newer_version"]
"""Why a listed run could not be read: a damaged header, or one a newer durable-agent wrote."""


@dataclass(frozen=True, slots=True)
class UnreadableRun:
    """A stored run a listing came across but could not read; listed so it is never hidden.

    ``reason`` is ``"newer_version"`` for a header written by a newer
    durable-agent (upgrade to read it), else ``"corrupt"``; ``message`` is the
    error `Backend.get_run` raises for it.
    """

    run_id: str
    reason: UnreadableReason
    message: str

    @classmethod
    def from_error(cls, run_id: str, error: CorruptRunError) -> UnreadableRun:
        """The entry for a run whose header raised ``error`` (a `SchemaVersionError` is newer)."""
        reason: UnreadableReason = (
            "newer_version" if isinstance(error, SchemaVersionError) else "corrupt"
        )
        return cls(run_id=run_id, reason=reason, message=str(error))


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of `Backend.list_runs`; pass ``next_cursor`` back for the next page.

    ``unreadable`` holds the stored runs the page's scan met but could not read
    (a damaged header, or one from a newer durable-agent): a listing never
    drops a run silently. They are not in ``runs`` and do not count toward
    ``limit``. Over a walk through every page each is reported once: on the
    page whose part of the listing order holds it, where the store still knows
    its creation time (an SQL column, an index), otherwise on the first page.
    A filter leaves one out only when the store can still tell it does not
    match (a column, an index); otherwise it is reported whatever the filter.
    A backend written before this field existed simply reports none.
    """

    runs: tuple[RunHeader, ...]
    next_cursor: str | None
    unreadable: tuple[UnreadableRun, ...] = ()


Position = tuple[float, str]
"""A run's place in the listing order: (creation time as a timestamp, run id)."""


def make_page(
    found: Sequence[RunHeader],
    *,
    limit: int,
    unreadable: Sequence[tuple[Position | None, UnreadableRun]] = (),
) -> RunPage:
    """The page of a newest-first scan, with its cursor and the unreadable runs it owns.

    ``found`` holds the readable headers the scan kept, up to ``limit + 1`` of
    them (one more than the page, to know whether another page follows).
    ``unreadable`` holds the runs the scan met but could not read, each with
    its `Position`, or None when the store cannot place it (it belongs to this
    page). One met past the page's last run is left to the next page, whose
    scan meets it again, so each is reported exactly once.
    """
    page = tuple(found[:limit])
    if len(found) <= limit or not page:
        return RunPage(runs=page, next_cursor=None, unreadable=tuple(u for _, u in unreadable))
    last = page[-1]
    cut = (last.created_at.timestamp(), last.run_id)
    owned = tuple(u for place, u in unreadable if place is None or place > cut)
    return RunPage(
        runs=page, next_cursor=encode_cursor(last.created_at, last.run_id), unreadable=owned
    )




def encode_cursor(created_at: datetime, run_id: str) -> str:
    """An opaque cursor for the position after ``(created_at, run_id)``."""
    raw = json.dumps([created_at.timestamp(), run_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of `encode_cursor`; `ConfigurationError` for a cursor not made by it."""
    try:
        ts, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(ts), str(run_id)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"invalid list_runs cursor {cursor!r}") from exc
