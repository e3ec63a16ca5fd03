"""Where a run changed hands, read from the log: crash, takeover, handover, older logs."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from durable_agent._inspect import inspect_run
from durable_agent._process import host_id
from durable_agent._timeline import markers
from durable_agent.fsm import RunState
from durable_agent.records import (
    AssistantMessage,
    CreatedEvent,
    DecisionEvent,
    Event,
    LeaseTaken,
    ModelResponseEvent,
    RequirementRecord,
    RunHeader,
    StoredRun,
    ToolCallPart,
    ToolStartedEvent,
    UserMessage,
    WaitingEvent,
)

T0 = datetime(2025, 5, 2, 7, 0, tzinfo=UTC)


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


def stamp(owner: str, generation: int, seconds: float) -> LeaseTaken:
    return LeaseTaken(owner=owner, generation=generation, at=T0 + timedelta(seconds=seconds))


def run(*events: Event) -> StoredRun:
    last = events[-1]
    header = RunHeader(run_id="r", state=last.state, seq=last.seq)
    return StoredRun(header=header, events=events)


def created(owner: str | None) -> Event:
    return CreatedEvent(
        seq=1,
        state=RunState.PENDING,
        at=T0,
        messages=(UserMessage(content="hi"),),
        lease_taken=stamp(owner, 1, 0) if owner else None,
    )


def calls(seq: int) -> Event:
    message = AssistantMessage(tool_calls=(ToolCallPart(id="c1", name="t"),))
    return ModelResponseEvent(
        seq=seq, state=RunState.TOOL_EXEC, trigger="tool_calls", at=T0 + timedelta(seconds=1),
        message=message, model="m",
    )  # fmt: skip


def started(seq: int, attempt: int, lease: LeaseTaken | None = None) -> Event:
    return ToolStartedEvent(
        seq=seq, state=RunState.TOOL_EXEC, call_id="c1", name="t", attempt=attempt,
        at=T0 + timedelta(seconds=seq), lease_taken=lease,
    )  # fmt: skip


def test_a_dead_owner_that_left_the_run_mid_step_is_a_crash() -> None:
    dead = f"{host_id()}:{_dead_pid()}:aaaa"
    mine = f"{host_id()}:{os.getpid()}:bbbb"
    log = run(created(dead), calls(2), started(3, 1), started(4, 2, stamp(mine, 2, 9.5)))
    [marker] = markers(log)
    assert (marker.seq, marker.kind, marker.left_in) == (4, "crash", RunState.TOOL_EXEC)
    assert marker.stranded_seconds == 6.5  # from seq 3 (at +3 s) to the takeover (+9.5 s)
    assert "gone" in (marker.previous_process or "")
    assert "this process" in (marker.process or "")
    assert marker.text.startswith("CRASH: process")


def test_an_owner_of_another_host_whose_lease_was_taken_is_a_takeover() -> None:
    far = "elsewhere~pidns1:42:aaaa"
    mine = f"{host_id()}:{os.getpid()}:bbbb"
    log = run(created(far), calls(2), started(3, 1), started(4, 2, stamp(mine, 2, 40)))
    [marker] = markers(log)
    assert marker.kind == "takeover"
    assert "elsewhere" in marker.text


def test_a_new_owner_after_a_run_at_rest_is_a_handover() -> None:
    first = f"{host_id()}:{_dead_pid()}:aaaa"
    ui = f"{host_id()}:{os.getpid()}:bbbb"
    requirement = RequirementRecord(id="c1:confirmation", kind="confirmation", call_id="c1",
                                    tool_name="t")  # fmt: skip
    log = run(
        created(first),
        calls(2),
        WaitingEvent(seq=3, state=RunState.WAITING, trigger="needs_human",
                     requirements=(requirement,)),
        DecisionEvent(seq=4, state=RunState.TOOL_EXEC, trigger="decided",
                      requirement_id="c1:confirmation", action="confirm", decided_by="ana",
                      lease_taken=stamp(ui, 2, 60)),
    )
    [marker] = markers(log)
    assert marker.kind == "handover"
    assert marker.left_in is RunState.WAITING
    assert inspect_run(log).data()["events"][-1]["decided_by"] == "ana"


def test_an_older_log_without_owners_still_shows_a_repeated_call_once() -> None:
    log = run(created(None), calls(2), started(3, 1), started(4, 2))
    [marker] = markers(log)
    assert (marker.seq, marker.kind) == (4, "interrupted")
    assert marker.previous_owner is None
    assert "no owners recorded" in marker.text


def test_a_run_that_one_process_drove_throughout_has_no_marker() -> None:
    mine = f"{host_id()}:{os.getpid()}:bbbb"
    assert markers(run(created(mine), calls(2), started(3, 1))) == []
