"""The upcaster chain: a stored record of an older schema version, brought up to this one.

A record is stored with the ``schema_version`` of the code that wrote it. One
upcaster per version step turns the JSON of version *k* into the JSON of
version *k + 1*; reading applies them in order, so a record any earlier
release wrote decodes into today's models. They work on plain JSON data (no
models, no imports by name: DESIGN.md §3 rule 6), never fail on a record that
validated in its own version, and are pure, so the same record always reads
back the same (``durable-agent migrate`` stores what they return).

To change a stored shape: bump `durable_agent._messages.SCHEMA_VERSION`, add
the step here, and commit a store written by the previous release under
``tests/data/`` (tests/migrations loads it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, TypeVar

from pydantic import ConfigDict, JsonValue, TypeAdapter, ValidationError

from durable_agent._messages import SCHEMA_VERSION, Record
from durable_agent.errors import CorruptRunError, SchemaVersionError

__all__ = [
    "EVENT_STEPS",
    "HEADER_STEPS",
    "check_version",
    "read_record",
    "short_error",
    "upcast_event",
    "upcast_header",
]

Data = dict[str, JsonValue]
Step = Callable[[Data], Data]
_R = TypeVar("_R", bound=Record)
_VERSION_PROBE: Final = TypeAdapter(dict[str, JsonValue], config=ConfigDict(defer_build=True))


def _event_1_to_2(data: Data) -> Data:
    # Version 1 intents did not name the tool's identity, and runs did not list
    # their tools: both stay unknown (None), which a resume treats as "cannot
    # tell whether the tool changed" (only a tool that is gone is detected).
    if data.get("kind") == "tool_started":
        data.setdefault("schema_hash", None)
        data.setdefault("idempotent", None)
    elif data.get("kind") == "created":
        data.setdefault("tools", None)
    return data


def _same(data: Data) -> Data:
    return data


EVENT_STEPS: Final[Mapping[int, Step]] = {1: _event_1_to_2}
"""Upcaster of an event from version k (the key) to k + 1."""

HEADER_STEPS: Final[Mapping[int, Step]] = {1: _same}
"""Upcaster of a run header from version k (the key) to k + 1 (headers kept their shape)."""


def _chain(data: Data, steps: Mapping[int, Step]) -> Data:
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version >= SCHEMA_VERSION:
        return data
    data = dict(data)
    for step in range(max(version, 1), SCHEMA_VERSION):
        data = steps[step](data)
    data["schema_version"] = SCHEMA_VERSION
    return data


def upcast_event(data: Data) -> Data:
    """The JSON of an event of any earlier version, as this version stores it."""
    return _chain(data, EVENT_STEPS)


def upcast_header(data: Data) -> Data:
    """The fields of a run header of any earlier version, as this version stores them."""
    return _chain(data, HEADER_STEPS)


def check_version(run_id: str, seq: int | None, data: object) -> None:
    """Raise `SchemaVersionError` when ``data`` says it was written by a newer version."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise SchemaVersionError(run_id, seq, version, SCHEMA_VERSION)


def read_record(
    adapter: TypeAdapter[_R],
    upcast: Step,
    run_id: str,
    seq: int | None,
    text: str | bytes,
) -> _R:
    """Validate ``text`` with ``adapter``, through ``upcast`` when it is of an older version.

    Raises `SchemaVersionError` for a newer record, `CorruptRunError` for one
    that does not validate.
    """
    error: ValidationError | None = None
    try:
        record = adapter.validate_json(text)
    except ValidationError as exc:
        error = exc
    else:
        if record.schema_version == SCHEMA_VERSION:  # the fast path: one parse
            return record
    try:
        raw = _VERSION_PROBE.validate_json(text)
    except ValidationError:
        raw = None
    check_version(run_id, seq, raw)
    if raw is not None:  # an older record: bring it up to this version, then validate
        try:
            return adapter.validate_python(upcast(raw))
        except ValidationError as exc:
            error = error or exc
    assert error is not None
    raise CorruptRunError(run_id, seq, short_error(error)) from error


def short_error(exc: ValidationError) -> str:
    """A one-line summary of a validation error, for `CorruptRunError`."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{exc.error_count()} validation error(s), first at {where or '<root>'}: {first['msg']}"
