"""Durability proven with real processes killed by SIGKILL (DESIGN.md §3).

Each case starts the run of `tests/crash/child.py` in a child process that is
SIGKILLed at one exact point: after each durable write, inside each tool call
(between its intent and its result) and inside each model call. A new process
then continues the run once, and the test checks what DESIGN.md §3 promises:

* the resumed run ends DONE with the same answer and transcript as an
  uninterrupted run, and its stored log is the log at the kill plus new events,
  ``seq`` 1..N without gap or duplicate;
* a tool call whose result was recorded ran exactly once; the call in flight at
  the kill ran at most twice, with one idempotency key; a call with no intent
  at the kill never ran in the dead process (intent before effect);
* a model answer that was recorded is never asked for again; only a request in
  flight at the kill is repeated;
* the new process takes over from the dead owner at once (same host, pid gone)
  instead of waiting out the lease, and releases the lease at the end.

Effects are counted in fsynced ledger files, so the dead process's count
survives it. Cases run in parallel, each in its own store; the whole module runs
against every durable built-in backend (SQLite, Redis, JSON files, PostgreSQL),
named to the child processes by a store URL.

Which kills each store gets: a kill after every durable write on every store (each write and each
compare-and-set is the store's own code). A kill inside a tool or model call
leaves the store as a kill after some write does; what it adds is the engine's
rule about the effect in flight (intent before effect, at most one repeat), the
same code whatever the store. So every tool and model call is killed on SQLite
(`ENGINE_STORE`), and on the other stores one call of each kind: a tool of the
parallel turn and a model request after recorded answers.

The race of two processes continuing one dead run is `tests/crash/test_crash_race.py`;
running the child and loading its store, `tests/crash/processes.py`; the stores,
`tests/crash/conftest.py`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from durable_agent.fsm import RunState
from durable_agent.records import ModelResponseEvent, ToolFinishedEvent, ToolStartedEvent
from tests.crash.child import (
    CITIES,
    LEASE_TTL,
    MODEL_TURNS,
    ChildArgs,
    ChildResult,
    read_ledger,
)
from tests.crash.processes import (
    RUN_ID,
    StoreUrl,
    in_parallel,
    load,
    run_child,
    seqs_of,
    transcript,
    with_args,
)

AT_REST = frozenset({RunState.DONE, RunState.ERROR, RunState.WAITING, RunState.CANCELLED})
ENGINE_STORE = "sqlite"
"""The store on which every tool and model call is killed (the engine's rules, see above)."""
SAMPLE_CITY = "Rome"
"""The tool killed on the other stores: one of two parallel calls, its sibling maybe in flight."""
SAMPLE_TURN = 2
"""The model request killed on the other stores: two answers are recorded before it."""
QUICK_TAKEOVER = LEASE_TTL / 6
"""A resume slower than this (100 s of a 600 s lease) has waited for the lease: no
healthy resume comes near it, however loaded the machine."""



# -- the uninterrupted run --------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """What an uninterrupted run of the child's script does."""

    url: StoreUrl
    """How each case of this module's store kind gets its store."""
    scheme: str
    """The store's URL scheme (``sqlite``, ``redis+cluster``, ...)."""
    output: str
    writes: int
    write_seqs: list[list[int]]
    transcript: list[dict[str, Any]]
    call_ids: frozenset[str]
    events: int
    ledger: list[dict[str, Any]]
    model_calls: int


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, store_url: StoreUrl) -> Baseline:
    where = tmp_path_factory.mktemp("baseline")
    args = ChildArgs(
        store=store_url(where), run_id=RUN_ID, mode="start", ledger=str(where / "ledger")
    )
    child = run_child(args)
    result = child.result
    assert result is not None, child.describe()
    assert result["error"] is None, child.describe()
    assert result["state"] == RunState.DONE.value
    assert result["output"]
    stored = load(args["store"])
    calls = frozenset(e.result.call_id for e in stored.events if isinstance(e, ToolFinishedEvent))
    return Baseline(
        url=store_url,
        scheme=args["store"].split(":", 1)[0],
        output=result["output"],
        writes=result["writes"],
        write_seqs=result["write_seqs"],
        transcript=transcript(stored),
        call_ids=calls,
        events=len(stored.events),
        ledger=read_ledger(Path(args["ledger"])),
        model_calls=result["model_calls"],
    )


def test_the_uninterrupted_run_makes_every_effect_once_in_numbered_writes(
    baseline: Baseline,
) -> None:
    assert baseline.writes == len(baseline.write_seqs)
    # Each model answer and each tool result is durable before the next effect
    # starts, so each needs a write of its own: the kill tests below cover at
    # least that many points.
    assert baseline.writes >= MODEL_TURNS + len(CITIES)
    flat = [s for write in baseline.write_seqs for s in write]
    assert flat == list(range(1, baseline.events + 1)), "each event is written exactly once"
    assert len(baseline.call_ids) == len(CITIES)
    tools = Counter(e["city"] for e in baseline.ledger if e["kind"] == "tool")
    assert tools == Counter(dict.fromkeys(CITIES, 1))
    turns = Counter(e["turn"] for e in baseline.ledger if e["kind"] == "model")
    assert turns == Counter(dict.fromkeys(range(MODEL_TURNS), 1))
    assert baseline.model_calls == MODEL_TURNS



# -- one kill, one resume ------------------------------------------------------------


@dataclass
class Case:
    """One kill point: how the first process dies, and what is expected of the dead."""

    name: str
    kill: dict[str, Any]
    model_in_flight: bool = False
    """Whether the dead process had a model request in flight (not yet answered)."""
    tool_in_flight: str | None = None
    """The city whose tool call the dead process was executing."""
    write: int | None = None
    """The write the process died after, if it died after one."""
    check_lease_released: bool = True


@dataclass
class Outcome:
    case: Case
    problems: list[str] = field(default_factory=list)

    def expect(self, ok: bool, message: str) -> bool:
        if not ok:
            self.problems.append(message)
        return ok


def crash_and_resume(case: Case, where: Path, baseline: Baseline) -> Outcome:
    """Kill a child as ``case`` says, resume in a new process, check everything."""
    where.mkdir()
    db, ledger = baseline.url(where), where / "ledger"
    base = ChildArgs(store=db, run_id=RUN_ID, mode="start", ledger=str(ledger))
    outcome = Outcome(case)
    expect = outcome.expect

    dead = run_child(with_args(base, **case.kill))
    if not expect(dead.killed, f"the first process was not SIGKILLed: {dead.describe()}"):
        return outcome
    at_kill = load(db)
    lease = at_kill.header.lease
    if at_kill.header.state in AT_REST:
        # The write that brings a run to rest releases the lease in the same step.
        expect(lease is None, f"a run at rest ({at_kill.header.state}) kept a lease: {lease}")
    else:
        expect(
            lease is not None and lease.pid == dead.pid and lease.expires_at > time.time(),
            f"at the kill the dead process should hold an unexpired lease, found {lease}",
        )
    expect(seqs_of(at_kill) == list(range(1, len(at_kill.events) + 1)), "seq gap at the kill")
    if case.write is not None:
        expected_seq = baseline.write_seqs[case.write - 1][-1]
        expect(
            at_kill.header.seq == expected_seq,
            f"killed after write {case.write}, the store should be at seq {expected_seq} "
            f"but is at {at_kill.header.seq}: the write was not durable on return",
        )
    answered = sum(isinstance(e, ModelResponseEvent) for e in at_kill.events)
    intents = {e.call_id for e in at_kill.events if isinstance(e, ToolStartedEvent)}
    results = {e.result.call_id for e in at_kill.events if isinstance(e, ToolFinishedEvent)}

    resumed = run_child(with_args(base, mode="continue"))
    result = resumed.result
    if not expect(
        result is not None and result["error"] is None,
        f"one resume must finish the run: {resumed.describe()}",
    ):
        return outcome
    assert result is not None
    expect(result["state"] == RunState.DONE.value, f"resumed run is {result['state']}")
    expect(
        result["output"] == baseline.output,
        f"output {result['output']!r} != uninterrupted {baseline.output!r}",
    )
    expect(
        result["elapsed"] < QUICK_TAKEOVER,
        f"the resume took {result['elapsed']:.1f} s: it waited for the dead owner's lease "
        f"({LEASE_TTL} s) instead of taking over at once",
    )

    final = load(db)
    header = final.header
    expect(
        seqs_of(final) == list(range(1, header.seq + 1)),
        f"stored seqs are not 1..{header.seq}: {seqs_of(final)}",
    )
    expect(header.state is RunState.DONE, f"stored header state is {header.state}")
    if case.check_lease_released:
        expect(header.lease is None, f"the lease is still held at the end: {header.lease}")
    expect(
        final.events[: len(at_kill.events)] == at_kill.events,
        "the events stored before the kill were changed by the resume (the log is append-only)",
    )
    expect(transcript(final) == baseline.transcript, "the transcript differs from the baseline")
    finished = Counter(e.result.call_id for e in final.events if isinstance(e, ToolFinishedEvent))
    expect(
        finished == Counter(dict.fromkeys(baseline.call_ids, 1)),
        f"each call must have exactly one recorded result, got {dict(finished)}",
    )
    started_before: set[str] = set()
    for event in final.events:
        if isinstance(event, ToolStartedEvent):
            started_before.add(event.call_id)
        elif isinstance(event, ToolFinishedEvent):
            expect(
                event.result.call_id in started_before,
                f"result of {event.result.call_id} at seq {event.seq} has no earlier intent",
            )
    responses = sum(isinstance(e, ModelResponseEvent) for e in final.events)
    expect(responses == MODEL_TURNS, f"{responses} model answers stored, {MODEL_TURNS} expected")

    entries = read_ledger(ledger)
    attempts = Counter(e.call_id for e in final.events if isinstance(e, ToolStartedEvent))
    _check_tools(outcome, entries, dead.pid, resumed.pid, intents, results, attempts, baseline)
    _check_model(outcome, entries, dead.pid, resumed.pid, answered, result)
    return outcome


def _check_tools(
    outcome: Outcome,
    entries: list[dict[str, Any]],
    dead: int,
    resumed: int,
    intents: set[str],
    results: set[str],
    attempts: Counter[str],
    baseline: Baseline,
) -> None:
    expect = outcome.expect
    tools = [e for e in entries if e["kind"] == "tool"]
    strangers = {e["pid"] for e in tools} - {dead, resumed}
    expect(not strangers, f"tool effects by unknown processes {strangers}")
    in_flight = outcome.case.tool_in_flight
    if in_flight is not None:
        expect(
            any(e["city"] == in_flight and e["pid"] == dead for e in tools),
            f"the dead process never ran {in_flight}: the kill was not inside that call",
        )
    for call_id in sorted(baseline.call_ids):
        runs = [e for e in tools if e["call_id"] == call_id]
        by_dead = sum(e["pid"] == dead for e in runs)
        by_resumed = sum(e["pid"] == resumed for e in runs)
        if call_id in results:
            expect(
                (by_dead, by_resumed) == (1, 0),
                f"{call_id} had a recorded result at the kill, so it runs exactly once (in the "
                f"dead process); it ran {by_dead}x there and {by_resumed}x in the resume",
            )
        elif call_id in intents:
            expect(
                by_dead <= 1 and by_resumed == 1,
                f"{call_id} was in flight at the kill: at most once before it and exactly once "
                f"after; it ran {by_dead}x and {by_resumed}x",
            )
            # The re-run is recorded by a new intent, and the tool is told so.
            rerun = [e["attempt"] for e in runs if e["pid"] == resumed]
            expect(
                attempts[call_id] == 2 and rerun == [2],
                f"{call_id} re-run after the kill should have a second intent and see "
                f"attempt 2; intents {attempts[call_id]}, attempts seen {rerun}",
            )
        else:
            expect(
                (by_dead, by_resumed) == (0, 1),
                f"{call_id} had no intent at the kill, so it must not have run before it "
                f"(intent before effect) and runs once after; it ran {by_dead}x and "
                f"{by_resumed}x",
            )
        keys = {e["key"] for e in runs}
        expect(len(keys) <= 1, f"{call_id} ran with different idempotency keys {keys}")


def _check_model(
    outcome: Outcome,
    entries: list[dict[str, Any]],
    dead: int,
    resumed: int,
    answered: int,
    result: ChildResult,
) -> None:
    expect = outcome.expect
    requests = [e for e in entries if e["kind"] == "model"]
    for turn in range(MODEL_TURNS):
        by_dead = sum(e["turn"] == turn and e["pid"] == dead for e in requests)
        by_resumed = sum(e["turn"] == turn and e["pid"] == resumed for e in requests)
        if turn < answered:
            want = (1, 0)
        elif turn == answered:
            want = (1 if outcome.case.model_in_flight else 0, 1)
        else:
            want = (0, 1)
        expect(
            (by_dead, by_resumed) == want,
            f"model turn {turn} (answers recorded at the kill: {answered}) was requested "
            f"{by_dead}x by the dead process and {by_resumed}x by the resume, expected {want}",
        )
    expect(
        result["model_calls"] == MODEL_TURNS - answered,
        f"the resume made {result['model_calls']} model requests, expected "
        f"{MODEL_TURNS - answered}",
    )
    repeated = len(requests) - MODEL_TURNS
    expect(repeated <= 1, f"{repeated} model requests were repeated, at most 1 may be")


def run_cases(cases: Sequence[Case], tmp_path: Path, baseline: Baseline) -> None:
    outcomes: list[Outcome] = in_parallel(
        [
            partial(crash_and_resume, case, tmp_path / f"case{i}", baseline)
            for i, case in enumerate(cases)
        ]
    )
    failed = [o for o in outcomes if o.problems]
    report = "\n".join(f"- {o.case.name}:\n    " + "\n    ".join(o.problems) for o in failed)
    assert not failed, f"{len(failed)} of {len(outcomes)} kill points failed:\n{report}"


def write_cases(baseline: Baseline, writes: Iterable[int]) -> list[Case]:
    return [
        Case(
            name=f"killed after write {k} of {baseline.writes} (seqs {baseline.write_seqs[k - 1]})",
            kill={"kill_after": k},
            write=k,
            check_lease_released=k < baseline.writes,
        )
        for k in writes
    ]


def test_a_run_killed_after_any_durable_write_resumes_in_a_new_process_to_the_same_end(
    baseline: Baseline, tmp_path: Path
) -> None:
    run_cases(write_cases(baseline, range(1, baseline.writes + 1)), tmp_path, baseline)


def test_a_run_killed_inside_any_tool_call_reruns_only_calls_without_a_result(
    baseline: Baseline, tmp_path: Path
) -> None:
    cases = [
        Case(
            name=f"killed inside the {city} tool call, after its effect",
            kill={"kill_in_tool": city},
            tool_in_flight=city,
        )
        for city in (CITIES if baseline.scheme == ENGINE_STORE else (SAMPLE_CITY,))
    ]
    run_cases(cases, tmp_path, baseline)


def test_a_run_killed_inside_any_model_call_repeats_only_that_request(
    baseline: Baseline, tmp_path: Path
) -> None:
    cases = [
        Case(
            name=f"killed inside model request for turn {turn}",
            kill={"kill_in_model": turn},
            model_in_flight=True,
        )
        for turn in (range(MODEL_TURNS) if baseline.scheme == ENGINE_STORE else (SAMPLE_TURN,))
    ]
    run_cases(cases, tmp_path, baseline)


def test_a_run_killed_after_its_final_write_has_no_lease_left_once_continued(
    baseline: Baseline, tmp_path: Path
) -> None:
    # The final answer and the lease release are one atomic write, so a process
    # killed right after it leaves no dead owner on the finished run.
    (case,) = write_cases(baseline, range(baseline.writes, baseline.writes + 1))
    case.check_lease_released = True
    run_cases([case], tmp_path, baseline)
