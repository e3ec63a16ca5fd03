"""The ``durable-agent`` command's dealings with stores, agents and exported runs.

Kept apart from the click commands in `durable_agent.cli` so each piece reads
on its own: which store URL applies, durations and dates on the command line,
the export document, importing an ``Agent`` by ``module:attribute``, and
recording a human decision without running anything.

It knows nothing of click, and imports the library where a function needs it:
the root group reads `DB_ENV` and `DEFAULT_DB` for ``--help``, which should
not pay for the records, the registry, the agent and the engine.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit

from durable_agent.errors import DurableAgentError

if TYPE_CHECKING:
    from durable_agent.agent import Agent
    from durable_agent.backend import Backend, UnreadableRun
    from durable_agent.fsm import RunState
    from durable_agent.records import Event, RunHeader, StoredRun

__all__ = [
    "DB_ENV",
    "DEFAULT_DB",
    "EXPORT_FORMAT",
    "CliError",
    "StoreChoice",
    "choose_store",
    "export_document",
    "foreign_entries",
    "foreign_note",
    "import_document",
    "load_agent",
    "open_store",
    "parse_age",
    "parse_since",
    "record_decision",
    "unreadable_json",
    "unreadable_notes",
    "unreadable_row",
]

DB_ENV: Final = "DURABLE_AGENT_DB"
"""The environment variable naming the store when ``--db`` is not given."""

DEFAULT_DB: Final = "sqlite:///durable.db"
"""The store used when neither ``--db`` nor `DB_ENV` names one."""

EXPORT_FORMAT: Final = "durable-agent-run"
"""The ``format`` field of an exported run; ``version`` is `EXPORT_VERSION`."""
EXPORT_VERSION: Final = 1


class CliError(DurableAgentError):
    """A command cannot do what was asked; the message says why and what to do."""


# -- which store ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreChoice:
    """A store URL and where it came from (for error messages)."""

    url: str
    origin: str


def choose_store(option: str | None) -> StoreChoice:
    """``--db``, else the `DB_ENV` variable, else `DEFAULT_DB`."""
    if option:
        return StoreChoice(option, "--db")
    env = os.environ.get(DB_ENV)
    if env:
        return StoreChoice(env, f"${DB_ENV}")
    return StoreChoice(DEFAULT_DB, "the default")


def _local_path(url: str) -> Path | None:
    """The file or folder a ``sqlite:`` or ``file:`` URL names, or None for other schemes."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite" and url.lower().startswith("sqlite:///") and parts.path[1:]:
        # sqlite:///relative.db → "/relative.db"; sqlite:////abs.db → "//abs.db".
        return Path(unquote(parts.path[1:]))
    if scheme == "file" and parts.path:
        return Path(unquote(parts.path))
    return None


def open_store(choice: StoreChoice, *, create: bool = False) -> Backend:
    """Open the chosen store; unless ``create``, a local store that does not exist is an error.

    Without that check, reading ``sqlite:///durable.db`` in the wrong folder
    would silently create an empty database and report no runs.
    """
    path = _local_path(choice.url)
    if not create and path is not None and not path.exists():
        raise CliError(
            f"no store at {path} ({choice.url}, from {choice.origin}); pass --db URL or set "
            f"{DB_ENV} to the store your agents use"
        )
    from durable_agent.registry import open_backend

    return open_backend(choice.url)


# -- what a listing could not show -------------------------------------------------------------

UNREADABLE_STATE: Final = {"corrupt": "corrupt", "newer_version": "newer"}
"""What ``runs list`` prints in the STATE column of a run it cannot read."""


def unreadable_row(run: UnreadableRun, width: int) -> list[str]:
    """A ``runs list`` table row for a run whose header cannot be read."""
    return [run.run_id, UNREADABLE_STATE[run.reason], *["-"] * (width - 2)]


def unreadable_json(run: UnreadableRun) -> dict[str, str]:
    """A run whose header cannot be read, as ``runs list --json`` gives it."""
    return {"run_id": run.run_id, "reason": run.reason, "message": run.message}


def unreadable_notes(runs: Sequence[UnreadableRun]) -> list[str]:
    """What to do about the runs a listing could not read, one line per reason."""
    notes = []
    corrupt = [r.run_id for r in runs if r.reason == "corrupt"]
    newer = [r.run_id for r in runs if r.reason == "newer_version"]
    if corrupt:
        notes.append(
            f"{_count(corrupt, 'run')} could not be read (state corrupt: {_names(corrupt)}); "
            "`durable-agent runs show RUN_ID` says what is damaged, `runs delete` removes one"
        )
    if newer:
        notes.append(
            f"{_count(newer, 'run')} written by a newer durable-agent (state newer: "
            f"{_names(newer)}); upgrade durable-agent to read them"
        )
    return notes


async def foreign_entries(backend: Backend) -> tuple[str, ...]:
    """What the store holds that is not a run, for a store that can tell (JSON files), else ().

    A store tells by having an async ``foreign_entries()`` method, as
    `JsonFileBackend` does; the CLI never imports a concrete backend.
    """
    method = getattr(backend, "foreign_entries", None)
    if not callable(method):
        return ()
    found = await method()
    return tuple(str(entry) for entry in found)


def foreign_note(choice: StoreChoice, entries: Sequence[str]) -> str:
    """One line naming the entries of a store that are not runs (and were left alone)."""
    return (
        f"ignored {_count(entries, 'entry', 'entries')} of {choice.url} that "
        f"{'is' if len(entries) == 1 else 'are'} not a run: {_names(entries)}"
    )


def _count(items: Sequence[object], noun: str, plural: str = "") -> str:
    return f"{len(items)} {noun if len(items) == 1 else plural or noun + 's'}"


def _names(names: Sequence[str], most: int = 20) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


# -- durations and dates ----------------------------------------------------------------------

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_age(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` as a duration; `CliError` otherwise."""
    match = _AGE.match(text)
    if match is None:
        raise CliError(
            f"{text!r} is not an age; write a number and a unit: 90s, 15m, 12h, 30d or 2w"
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """An age (``7d``: that long ago) or an ISO date or time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    if _AGE.match(text):
        return now - parse_age(text)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"{text!r} is neither an age (7d, 12h) nor an ISO date or time (2025-05-02, "
            "2025-05-02T07:10:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


# -- export and import ------------------------------------------------------------------------


def export_document(run: StoredRun) -> dict[str, object]:
    """``run`` as one JSON object that `import_document` reads back.

    The header and each event are written by `records.encode_header` and
    `records.encode_event`, the one place of serialization, so an import
    validates them exactly as a store's load does.
    """
    from durable_agent.records import encode_event, encode_header

    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "header": json.loads(encode_header(run.header)),
        "events": [json.loads(encode_event(e)) for e in run.events],
    }


def import_document(text: str, *, source: str, run_id: str | None = None) -> StoredRun:
    """Read an exported run, checked as a store would load it, ready for `Backend.create_run`.

    The lease is cleared (the process that held it is not this store's), and
    ``run_id`` stores the run under a new id (a copy to experiment with),
    checked as every new run's id is; the exported id is kept as it is (the
    run was stored under it before).
    """
    from durable_agent._names import check_new_run_id
    from durable_agent.records import StoredRun, decode_event, decode_header

    if run_id is not None:
        check_new_run_id(run_id, "runs import --run-id")
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise CliError(
            f"{source} is not JSON ({exc}); give a file written by runs export"
        ) from None
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise CliError(f"{source} is not a run exported by `durable-agent runs export`")
    version = document.get("version")
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise CliError(
            f"{source} is export version {version!r}; this durable-agent reads up to "
            f"{EXPORT_VERSION}: upgrade it"
        )
    raw_header, raw_events = document.get("header"), document.get("events")
    if not isinstance(raw_header, dict) or not isinstance(raw_events, list) or not raw_events:
        raise CliError(f"{source} has no header or no events")
    original = str(raw_header.get("run_id", "?"))
    header = decode_header(original, json.dumps(raw_header))
    events: list[Event] = [
        decode_event(original, index, json.dumps(raw))
        for index, raw in enumerate(raw_events, start=1)
    ]
    last = events[-1]
    if header.seq != last.seq or header.state is not last.state:
        raise CliError(
            f"{source}: the header says seq {header.seq} and {header.state.value}, but the last "
            f"event is seq {last.seq} in {last.state.value}; the file was edited or cut short"
        )
    header = header.model_copy(update={"lease": None, "run_id": run_id or header.run_id})
    return StoredRun(header=header, events=tuple(events))


# -- agents -----------------------------------------------------------------------------------


def load_agent(spec: str) -> Agent:
    """Import ``module:attribute`` and return the `Agent` it names.

    The attribute may be dotted, and may be a function that takes no argument
    and returns the agent. The current directory is importable, as with
    ``python -m``.
    """
    from durable_agent.agent import Agent

    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(
            f"--agent {spec!r}: write module:attribute, for example myapp.agents:support"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"--agent {spec!r}: cannot import {module_name!r}: {exc}") from exc
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise CliError(
                f"--agent {spec!r}: {module_name} has no attribute {attribute!r}"
            ) from None
    if not isinstance(target, Agent) and callable(target):
        target = target()
    if not isinstance(target, Agent):
        raise CliError(
            f"--agent {spec!r} is a {type(target).__name__}, not an Agent (or a function "
            "returning one)"
        )
    return target


# -- deciding without an agent ----------------------------------------------------------------


async def record_decision(
    backend: Backend,
    header: RunHeader,
    approvals: Mapping[str, bool | str],
    *,
    decided_by: str | None = None,
) -> RunState:
    """Record approvals by requirement id on a WAITING run, without running anything.

    The run is then WAITING with the rest, or TOOL_EXEC with nobody running
    it, for ``runs resume`` (or any ``continue_run_async``) to pick up with the
    agent's tools. Returns the state afterwards.
    """
    from durable_agent.engine import decide_run
    from durable_agent.fsm import RunState

    header_state = header.state
    if header_state is not RunState.WAITING:
        raise CliError(
            f"run {header.run_id!r} is {header_state.value}, not WAITING: it has nothing to "
            "approve or reject"
        )
    return await decide_run(
        backend, header.run_id, approvals=approvals, decided_by=decided_by
    )
