"""What the templates are given: the list's and the run's values, from `durable_agent._inspect`.

The page shows the same data as the command line (DESIGN.md §8): the list
is `durable_agent._inspect.list_runs` and `count_states` with the filters
read from the query string, a run is `durable_agent._inspect.inspect_run`.
Only presentation is decided here: which form each requirement gets, which
events are shown how, which actions a run offers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

from durable_agent import _inspect as inspect
from durable_agent._submit import AT_REST
from durable_agent.backend import Backend
from durable_agent.errors import ConfigurationError
from durable_agent.fsm import RunState
from durable_agent.records import (
    DecisionEvent,
    Event,
    FailedEvent,
    ModelAttemptFailedEvent,
    ModelResponseEvent,
    ToolFinishedEvent,
)

__all__ = ["list_context", "parse_filters", "run_context"]

AGES: Final = {"": "any age", "1h": "last hour", "1d": "last day", "7d": "last 7 days",
               "30d": "last 30 days"}  # fmt: skip
LIMIT: Final = 25
_CAN_RESUME: Final = frozenset(
    {RunState.ERROR, RunState.PENDING, RunState.MODEL_CALL, RunState.TOOL_EXEC}
)


def _age(text: str) -> datetime | None:
    if not text:
        return None
    units = {"h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit():
        raise ConfigurationError(f"age {text!r}: use one of {', '.join(a for a in AGES if a)}")
    return datetime.now(UTC) - timedelta(seconds=int(number) * units[unit])


def parse_filters(query: Any) -> tuple[inspect.Filters, int, str | None]:
    """The listing's filters, page size and cursor, from the query string."""
    try:
        states = [RunState(s.upper()) for s in query.getlist("state") if s]
    except ValueError:
        raise ConfigurationError("unknown state in the filter") from None
    try:
        limit = min(max(int(query.get("limit", LIMIT)), 1), 500)
    except ValueError:
        limit = LIMIT
    filters = inspect.Filters(
        states=states,
        session_id=query.get("session") or None,
        user_id=query.get("user") or None,
        agent=query.get("agent") or None,
        search=(query.get("q") or "").strip() or None,
        created_after=_age(query.get("age", "")),
    )
    return filters, limit, query.get("cursor") or None


async def list_context(backend: Backend, query: Any) -> dict[str, Any]:
    """The runs page's values: the listing, the counts, the filters and the paging links."""
    filters, limit, cursor = parse_filters(query)
    listing = await inspect.list_runs(backend, filters, limit=limit, cursor=cursor)
    counted = await inspect.count_states(backend, filters)
    kept = [(k, v) for k, v in query.multi_items() if k not in ("cursor", "token") and v]
    return {
        "listing": listing,
        "counts": counted["counts"],
        "counts_complete": counted["complete"],
        "filters": filters,
        "states": [s.value for s in RunState],
        "chosen_states": {s.value for s in filters.states},
        "ages": AGES,
        "age": query.get("age", ""),
        "query": urlencode(kept),
        "next_query": urlencode([*kept, ("cursor", listing.next_cursor)])
        if listing.next_cursor
        else None,
        "cursor": cursor,
        "when": _when,
    }


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _event_view(event: Event) -> dict[str, Any]:
    """What one event shows besides its timeline line: its class and full texts."""
    shown: dict[str, Any] = {"css": event.kind, "texts": []}
    match event:
        case ModelResponseEvent():
            if event.message.content:
                shown["texts"].append(("answer", event.message.content))
            for call in event.message.tool_calls:
                shown["texts"].append((f"{call.name} arguments", _pretty(call.arguments)))
        case ToolFinishedEvent():
            label = "error" if event.result.is_error else "result"
            shown["texts"].append((f"{event.result.name} {label}", event.result.content))
            if event.result.is_error:
                shown["css"] += " is-error"
        case ModelAttemptFailedEvent():
            shown["css"] += " retry"
            shown["texts"].append(("error", f"{event.error.type}: {event.error.message}"))
        case FailedEvent():
            shown["css"] += " is-error"
            shown["texts"].append(("error", f"{event.error.type}: {event.error.message}"))
        case DecisionEvent():
            if event.decided_by:
                shown["texts"].append(("decided by", event.decided_by))
        case _:
            pass
    if event.requested_by:
        shown["texts"].append(("requested by", event.requested_by))
    return shown


def run_context(view: inspect.RunView, *, svg: bool) -> dict[str, Any]:
    """The run page's values: the header fields, the timeline with markers, the forms."""
    header = view.header
    events = {e.seq: e for e in view.stored.events}
    items: list[dict[str, Any]] = []
    for row in view.rows:
        for marker in view.markers_before(row.seq):
            items.append({"marker": marker})
        event = events[row.seq]
        raw = _pretty(inspect.event_data(event))
        items.append({"marker": None, "row": row, "event": _event_view(event), "raw": raw})
    lease = inspect.lease_data(header)
    running = lease is not None and not lease["resumable_now"]
    output = view.output
    return {
        "view": view,
        "header": header,
        "lease": lease,
        "usage": output.usage,
        "error": output.error,
        "answer": output.output,
        "items": items,
        "requirements": view.requirements,
        "crashes": [m for m in view.markers if m.kind != "handover"],
        "can_cancel": header.state not in (RunState.DONE, RunState.CANCELLED),
        "can_resume": header.state in _CAN_RESUME and not running,
        "at_rest": header.state in AT_REST and header.lease is None,
        "svg": svg,
        "mermaid": None if svg else _mermaid(view),
        "version": f"{header.seq}:{header.state.value}",
        "when": _when,
        "pretty": _pretty,
    }


def _mermaid(view: inspect.RunView) -> str:
    from durable_agent.diagram import run_diagram

    return run_diagram(view.stored, format="mermaid").text
