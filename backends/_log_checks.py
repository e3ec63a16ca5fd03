"""The checks every built-in backend makes on a run's log as it creates or loads it.

A new run's events must have distinct seqs; a loaded log must hold events
1..n in order, and n must be the header's ``seq``. Each backend reads its rows
its own way and hands them here, so all of them refuse a damaged log alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from durable_agent.errors import ConfigurationError, CorruptRunError
from durable_agent.records import Event, RunHeader, StoredRun, decode_event

__all__ = ["check_distinct_seqs", "numbered_events", "whole_run"]


def check_distinct_seqs(header: RunHeader, events: Sequence[Event]) -> None:
    """`ConfigurationError` when two of a new run's events share a seq."""
    seqs = [event.seq for event in events]
    if len(set(seqs)) != len(seqs):
        raise ConfigurationError(f"create_run({header.run_id!r}): two events share a seq")


def numbered_events(run_id: str, rows: Iterable[tuple[int, str | bytes]]) -> tuple[Event, ...]:
    """The stored ``(seq, body)`` rows decoded; `CorruptRunError` at the first gap."""
    events: list[Event] = []
    for position, (seq, body) in enumerate(rows, start=1):
        if seq != position:
            raise CorruptRunError(run_id, position, "the event is missing from the log")
        events.append(decode_event(run_id, seq, body))
    return tuple(events)


def whole_run(run_id: str, header: RunHeader, events: tuple[Event, ...]) -> StoredRun:
    """The loaded run; `CorruptRunError` when the log is not as long as the header says."""
    if len(events) != header.seq:
        raise CorruptRunError(run_id, header.seq, "header seq does not match the event log")
    return StoredRun(header=header, events=events)
