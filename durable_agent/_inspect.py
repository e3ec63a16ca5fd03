"""What the surfaces show of a store: one module, so the CLI, the page and ``--json`` agree.

DESIGN.md §8: ``durable-agent runs list`` / ``runs show`` and the inspector
page (`durable_agent.ui`) read runs through the functions here, and
``--json`` prints the dictionaries they build. A list is `list_runs` (the
store's filters plus the agent name and an id search, which the contract has
no filter for), `count_states` counts runs per state; a run is `inspect_run`:
its header, its events as stored, the timeline and the markers of
`durable_agent._timeline`, its usage, what it waits for, its lease in words.

Every value is data (fields, not sentences), except the few ``text`` fields
meant to be printed as they are. Nothing here writes to the store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from durable_agent._timeline import Marker, Owner, Row, error_text, markers, owner_of, timeline
from durable_agent.backend import Backend, UnreadableRun, encode_cursor
from durable_agent.errors import RunNotFoundError
from durable_agent.fsm import RunState
from durable_agent.records import (
    Event,
    RequirementRecord,
    RunHeader,
    StoredRun,
    encode_event,
    encode_header,
)
from durable_agent.run import RunContext, RunOutput

__all__ = [
    "COUNT_LIMIT",
    "Filters",
    "Listing",
    "RunView",
    "count_states",
    "event_data",
    "header_data",
    "inspect_run",
    "lease_data",
    "list_runs",
    "marker_data",
    "outcome_data",
    "owner_data",
    "row_data",
    "unreadable_data",
]

COUNT_LIMIT: Final = 10_000
"""`count_states` reads at most this many headers (and says so when it stops)."""

_PAGE: Final = 500


# -- one run ------------------------------------------------------------------------------------


def header_data(header: RunHeader) -> dict[str, Any]:
    """The header exactly as stored (`records.encode_header`), as a dictionary."""
    data: dict[str, Any] = json.loads(encode_header(header))
    return data


def event_data(event: Event) -> dict[str, Any]:
    """One event exactly as stored (`records.encode_event`), as a dictionary."""
    data: dict[str, Any] = json.loads(encode_event(event))
    return data


def owner_data(owner: Owner) -> dict[str, Any]:
    """A lease owner: id, host, pid, ``status`` (alive, gone, this process, unknown), words."""
    return {
        "id": owner.id,
        "host": owner.host,
        "pid": owner.pid,
        "status": owner.status,
        "text": owner.words,
    }


def lease_data(header: RunHeader, *, now: float | None = None) -> dict[str, Any] | None:
    """Who holds the run, for how long, and whether it can be taken over now; None if nobody."""
    lease = header.lease
    if lease is None:
        return None
    left = lease.expires_at - (time.time() if now is None else now)
    owner = owner_of(lease.owner)
    expired = left <= 0
    if expired:
        text = f"expired, was held by {owner.words}"
    else:
        text = f"held by {owner.words} for {left:.0f} s more"
        if owner.status == "gone":
            text += f" (process {owner.pid} is gone: the run can be resumed now)"
    return {
        "owner": owner_data(owner),
        "generation": lease.generation,
        "expires_in": round(left, 3),
        "expired": expired,
        "resumable_now": expired or owner.status == "gone",
        "text": text,
    }


def row_data(row: Row) -> dict[str, Any]:
    """A timeline row: seq, time, kind, trigger, from and to state, and its detail line."""
    return {
        "seq": row.seq,
        "at": row.at.isoformat(),
        "kind": row.kind,
        "trigger": row.trigger,
        "from": row.source.value,
        "to": row.state.value,
        "detail": row.detail,
    }


def marker_data(marker: Marker) -> dict[str, Any]:
    """A place where the run changed hands (before event ``seq``), with both owners."""
    return {
        "seq": marker.seq,
        "kind": marker.kind,
        "left_in": marker.left_in.value,
        "previous_owner": owner_data(owner_of(marker.previous_owner))
        if marker.previous_owner
        else None,
        "owner": owner_data(owner_of(marker.owner)) if marker.owner else None,
        "stranded_seconds": marker.stranded_seconds,
        "text": marker.text,
    }


def _requirement_data(record: RequirementRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "kind": record.kind,
        "call_id": record.call_id,
        "tool_name": record.tool_name,
        "arguments": dict(record.arguments),
        "fields": list(record.fields),
    }


@dataclass(frozen=True)
class RunView:
    """One run as the surfaces show it: stored data plus what is derived from it."""

    stored: StoredRun
    output: RunOutput
    rows: list[Row]
    markers: list[Marker]
    requirements: list[RequirementRecord]

    @property
    def header(self) -> RunHeader:
        """The run's header."""
        return self.stored.header

    def markers_before(self, seq: int) -> list[Marker]:
        """The markers that sit just before event ``seq``."""
        return [m for m in self.markers if m.seq == seq]

    def data(self, *, events: bool = True) -> dict[str, Any]:
        """Everything as JSON-ready data: what ``runs show --json`` prints."""
        output = self.output
        usage = output.usage
        data: dict[str, Any] = {
            "header": header_data(self.header),
            "lease": lease_data(self.header),
            "usage": {
                "requests": usage.requests,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
            },
            "error": (
                {
                    "type": output.error.type,
                    "message": output.error.message,
                    "text": error_text(output.error),
                    "failed_state": output.failed_state.value if output.failed_state else None,
                }
                if output.error is not None
                else None
            ),
            "output": output.output,
            "requirements": [_requirement_data(r) for r in self.requirements],
            "markers": [marker_data(m) for m in self.markers],
            "timeline": [row_data(r) for r in self.rows],
        }
        if events:
            data["events"] = [event_data(e) for e in self.stored.events]
        return data


def inspect_run(stored: StoredRun, *, full: bool = False) -> RunView:
    """Derive the view of ``stored``; ``full`` turns the timeline's abridging off."""
    ctx = RunContext.from_stored(stored)
    return RunView(
        stored=stored,
        output=RunOutput.from_context(ctx),
        rows=timeline(stored, full=full),
        markers=markers(stored),
        requirements=list(ctx.open_requirements.values()),
    )


# -- many runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What a listing keeps: every given filter must match.

    ``agent`` (the agent's name) and ``search`` (a part of the run id) are
    applied here, over the store's own filters, since the contract has none.
    """

    states: Sequence[RunState] = ()
    session_id: str | None = None
    user_id: str | None = None
    agent: str | None = None
    search: str | None = None
    created_after: datetime | None = None

    def keeps(self, header: RunHeader) -> bool:
        """Whether ``header`` passes the filters the store does not apply."""
        if self.agent and header.agent_name != self.agent:
            return False
        return not self.search or self.search.lower() in header.run_id.lower()

    def data(self) -> dict[str, Any]:
        """The filters as data (for ``--json`` and the page's links)."""
        return {
            "states": [s.value for s in self.states],
            "session": self.session_id,
            "user": self.user_id,
            "agent": self.agent,
            "search": self.search,
            "since": self.created_after.isoformat() if self.created_after else None,
        }


@dataclass(frozen=True)
class Listing:
    """A page of runs, the unreadable runs met on the way, and the cursor of the next page."""

    runs: list[RunHeader]
    unreadable: list[UnreadableRun] = field(default_factory=list)
    next_cursor: str | None = None

    def data(self) -> dict[str, Any]:
        """What ``runs list --json`` prints."""
        return {
            "runs": [header_data(h) for h in self.runs],
            "unreadable": [unreadable_data(u) for u in self.unreadable],
            "next_cursor": self.next_cursor,
        }


def unreadable_data(run: UnreadableRun) -> dict[str, str]:
    """A run whose header cannot be read: its id, why (corrupt, newer_version), the error."""
    return {"run_id": run.run_id, "reason": run.reason, "message": run.message}


async def list_runs(
    backend: Backend, filters: Filters, *, limit: int = 20, cursor: str | None = None
) -> Listing:
    """One page of runs matching ``filters``, newest first.

    An exact run id in ``search`` is looked up directly. With an agent or a
    search filter the store is read page after page until ``limit`` runs
    match; the cursor then points after the last run shown.
    """
    if filters.search and cursor is None:
        try:
            header = await backend.get_run(filters.search)
        except RunNotFoundError:
            pass
        else:
            if _matches(filters, header):
                return Listing([header])
    found: list[RunHeader] = []
    unreadable: list[UnreadableRun] = []
    local = bool(filters.agent or filters.search)
    while True:
        page = await backend.list_runs(
            session_id=filters.session_id,
            user_id=filters.user_id,
            states=list(filters.states) or None,
            created_after=filters.created_after,
            limit=limit if not local else max(limit, 100),
            cursor=cursor,
        )
        unreadable.extend(page.unreadable)  # a run it cannot read is shown, never hidden
        for header in page.runs:
            if filters.keeps(header):
                found.append(header)
                if local and len(found) == limit:
                    last = page.runs.index(header) == len(page.runs) - 1
                    more = page.next_cursor is not None or not last
                    return Listing(
                        found,
                        unreadable,
                        encode_cursor(header.created_at, header.run_id) if more else None,
                    )
        cursor = page.next_cursor
        if not local or cursor is None:
            return Listing(found, unreadable, cursor)


def _matches(filters: Filters, header: RunHeader) -> bool:
    return (
        filters.keeps(header)
        and (not filters.states or header.state in filters.states)
        and (filters.session_id is None or header.session_id == filters.session_id)
        and (filters.user_id is None or header.user_id == filters.user_id)
        and (filters.created_after is None or header.created_at >= filters.created_after)
    )


async def count_states(backend: Backend, filters: Filters) -> dict[str, Any]:
    """How many runs match ``filters`` (its ``states`` ignored) in each state.

    Reads at most `COUNT_LIMIT` headers; ``complete`` is False when it stopped.
    """
    counts = {s.value: 0 for s in RunState}
    seen = 0
    cursor: str | None = None
    while seen < COUNT_LIMIT:
        page = await backend.list_runs(
            session_id=filters.session_id,
            user_id=filters.user_id,
            created_after=filters.created_after,
            limit=_PAGE,
            cursor=cursor,
        )
        for header in page.runs:
            seen += 1
            if filters.keeps(header):
                counts[header.state.value] += 1
        cursor = page.next_cursor
        if cursor is None:
            return {"counts": counts, "complete": True}
    return {"counts": counts, "complete": False}


def outcome_data(output: RunOutput) -> dict[str, Any]:
    """Where a run stands after a command acted on it: state, answer, error, what it waits for."""
    return {
        "run_id": output.run_id,
        "state": output.state.value,
        "output": output.output,
        "error": error_text(output.error) if output.error is not None else None,
        "requirements": [_requirement_data(r.record) for r in output.requirements],
    }
