"""The one check of a fleet scenario's outcome, read from the store and the effects table.

Every fleet test (SQLite, Redis, PostgreSQL, many hosts) ends with
`check_fleet`. It reads the run logs the way an auditor would: the
``lease_taken`` stamp on the first event of each new lease marks a handover,
and the tool-call intents without a result before it are the calls that were
in flight when the previous owner was killed, frozen or cut off. Only those may
run again, each at most once per handover it was in flight across, and no
effect may have started without a durable intent of its own (a fenced worker
cannot record one). It returns what it read, for a test's own checks of who
took over from whom.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from durable_agent.fsm import RunState
from durable_agent.records import StoredRun, ToolFinishedEvent, ToolStartedEvent


@dataclass(frozen=True)
class Handover:
    """A run's lease passing from one owner to another, read off the log."""

    run_id: str
    seq: int
    """The first event the new owner wrote."""
    generation: int
    previous: str | None
    """The owner id that wrote the events before (None: nobody had written yet)."""
    owner: str
    in_flight: frozenset[str]
    """Call ids with an intent and no result when the new owner took over."""


@dataclass(frozen=True)
class FleetReport:
    """What `check_fleet` read: the handovers, re-executions and owners of every run."""

    handovers: tuple[Handover, ...]
    reruns: int
    """Tool executions beyond the first, over all calls."""
    in_flight: int
    """Calls in flight at a handover, summed over the handovers (the bound of ``reruns``)."""
    owners: frozenset[str]
    """Every lease owner id that wrote to a run."""

    def taken_from(self, victim: Callable[[str], bool]) -> set[str]:
        """Runs another owner took over from an owner id ``victim`` matches."""
        return {
            h.run_id for h in self.handovers
            if h.previous is not None and victim(h.previous) and not victim(h.owner)
        }


def host_of(owner: str) -> str:
    """The host part of a lease owner id ``host:pid:nonce``."""
    return owner.rsplit(":", 2)[0]


def pid_of(owner: str) -> int:
    """The pid part of a lease owner id ``host:pid:nonce``."""
    return int(owner.rsplit(":", 2)[1])


def refused_runs(log: str) -> set[str]:
    """Runs a worker's log says it stopped driving because another owner holds them.

    That line is how `durable_agent.worker` reports a write the fence refused
    (`ConcurrentUpdateError` and its `LeaseLostError`).
    """
    return set(re.findall(r"run (\S+): another owner holds it now", log))


def effects(folder: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Recorded effects per run, and attempts per idempotency key (`tests.workers.fleet_app`)."""
    with closing(sqlite3.connect(folder / "effects.db")) as conn:
        recorded = dict(conn.execute("SELECT run_id, count(*) FROM effects GROUP BY run_id"))
        tried = dict(conn.execute("SELECT key, count(*) FROM attempts GROUP BY key"))
    return recorded, tried


def _handovers(run: StoredRun) -> list[Handover]:
    found: list[Handover] = []
    writer: str | None = None
    generation = 0
    open_calls: set[str] = set()
    for event in run.events:
        stamp = event.lease_taken
        if stamp is not None:
            assert stamp.generation > generation, (
                f"run {run.header.run_id}: lease generation {stamp.generation} at seq "
                f"{event.seq} after {generation}"
            )
            found.append(Handover(run.header.run_id, event.seq, stamp.generation, writer,
                                  stamp.owner, frozenset(open_calls)))
            writer, generation = stamp.owner, stamp.generation
        if isinstance(event, ToolStartedEvent):
            open_calls.add(event.call_id)
        elif isinstance(event, ToolFinishedEvent):
            open_calls.discard(event.result.call_id)
    assert run.header.lease_generation >= generation, run.header.run_id
    return found


def check_fleet(
    stored: Mapping[str, StoredRun], folder: Path, *, tool_calls: int
) -> FleetReport:
    """Assert the outcome every fleet scenario promises, and return what was read.

    * every run DONE, its lease released, its ``seq`` gap-free from 1;
    * lease generations only go up along each log;
    * each run recorded exactly ``tool_calls`` effects (0 duplicates, none lost);
    * every effect attempt had an intent of its own in the log (a fenced
      writer cannot start one), and a call ran again only across handovers it
      was in flight at: at most once per such handover.
    """
    handovers: list[Handover] = []
    allowed: Counter[tuple[str, str]] = Counter()
    intents: Counter[tuple[str, str]] = Counter()
    owners: set[str] = set()
    for run_id, run in stored.items():
        header = run.header
        assert header.state is RunState.DONE, f"run {run_id} rests in {header.state.value}"
        assert header.lease is None, run_id
        assert [e.seq for e in run.events] == list(range(1, len(run.events) + 1)), run_id
        found = _handovers(run)
        assert found, f"run {run_id} has no lease stamp: no worker claimed it"
        handovers.extend(found)
        owners.update(h.owner for h in found)
        for handover in found:
            allowed.update((run_id, call) for call in handover.in_flight)
        intents.update(
            (run_id, e.call_id) for e in run.events if isinstance(e, ToolStartedEvent)
        )
    recorded, tried = effects(folder)
    assert recorded == dict.fromkeys(stored, tool_calls)  # 0 duplicate recorded effects
    calls: Counter[tuple[str, str]] = Counter()
    for key, count in tried.items():
        run_id, _, call_id = key.split(":")
        calls[run_id, call_id] += count
    assert len(calls) == len(stored) * tool_calls, "attempts of calls no run asked for"
    for call, count in calls.items():
        assert count <= intents[call], f"call {call}: {count} attempts, {intents[call]} intents"
        assert count - 1 <= allowed[call], (
            f"call {call} ran {count} times but was in flight at {allowed[call]} handover(s)"
        )
    return FleetReport(
        handovers=tuple(handovers),
        reruns=sum(calls.values()) - len(calls),
        in_flight=sum(allowed.values()),
        owners=frozenset(owners),
    )
