"""Every row of the transition table, and every trigger the table forbids."""

from __future__ import annotations

import pytest

from durable_agent.errors import InvalidTransitionError
from durable_agent.fsm import (
    FINAL_STATES,
    MACHINE,
    TRANSITIONS,
    RunState,
    fire,
    fire_on_machine,
    next_state,
    restore_state,
    triggers_from,
)

TRIGGERS = sorted({row.trigger for row in TRANSITIONS})


def _failed_state_for(row_condition: str | None) -> RunState | None:
    return {
        "failed_in_model_call": RunState.MODEL_CALL,
        "failed_in_tool_exec": RunState.TOOL_EXEC,
    }.get(row_condition or "")


@pytest.mark.parametrize("row", TRANSITIONS, ids=lambda r: f"{r.trigger}:{r.source}->{r.dest}")
def test_every_table_row_moves_source_to_dest(row: object) -> None:
    from durable_agent.fsm import Transition

    assert isinstance(row, Transition)
    failed = _failed_state_for(row.condition)
    assert next_state(row.source, row.trigger, failed_state=failed) is row.dest


def _allowed(state: RunState, trigger: str) -> bool:
    return any(r.source is state and r.trigger == trigger for r in TRANSITIONS)


@pytest.mark.parametrize("state", list(RunState))
@pytest.mark.parametrize("trigger", TRIGGERS)
def test_triggers_outside_the_table_are_refused(state: RunState, trigger: str) -> None:
    if _allowed(state, trigger):
        return
    with pytest.raises(InvalidTransitionError, match=f"{trigger!r} is not allowed in state"):
        next_state(state, trigger, failed_state=RunState.MODEL_CALL)


@pytest.mark.parametrize("state", list(RunState))
@pytest.mark.parametrize("trigger", TRIGGERS)
@pytest.mark.parametrize("failed", [None, RunState.MODEL_CALL, RunState.TOOL_EXEC])
def test_the_fast_lookup_agrees_with_the_machine(
    state: RunState, trigger: str, failed: RunState | None
) -> None:
    def outcome(fn: object) -> object:
        try:
            return fn(state, trigger, failed_state=failed)  # type: ignore[operator]
        except InvalidTransitionError as exc:
            return type(exc)

    assert outcome(next_state) == outcome(fire_on_machine)


def test_resume_returns_to_the_state_that_failed() -> None:
    assert next_state(RunState.ERROR, "resume", failed_state=RunState.MODEL_CALL) is (
        RunState.MODEL_CALL
    )
    assert next_state(RunState.ERROR, "resume", failed_state=RunState.TOOL_EXEC) is (
        RunState.TOOL_EXEC
    )


def test_resume_without_a_failed_state_is_refused() -> None:
    with pytest.raises(InvalidTransitionError):
        next_state(RunState.ERROR, "resume", failed_state=None)


def test_unknown_trigger_is_refused() -> None:
    with pytest.raises(InvalidTransitionError, match="'explode'"):
        next_state(RunState.PENDING, "explode")


def test_final_states_have_no_outgoing_edges() -> None:
    for state in FINAL_STATES:
        assert triggers_from(state) == ()


def test_every_non_final_state_can_be_cancelled() -> None:
    for state in RunState:
        if state not in FINAL_STATES:
            assert next_state(state, "cancel") is RunState.CANCELLED


def test_fire_moves_a_plain_object_without_registering_it() -> None:
    class Run:
        state = RunState.PENDING
        failed_state: RunState | None = None

    run = Run()
    assert fire(run, "start") is RunState.MODEL_CALL
    assert run.state is RunState.MODEL_CALL
    assert MACHINE.models == []


def test_failed_fire_leaves_the_state_alone() -> None:
    class Run:
        state = RunState.DONE
        failed_state: RunState | None = None

    run = Run()
    with pytest.raises(InvalidTransitionError):
        fire(run, "start")
    assert run.state is RunState.DONE


def test_restore_state_checks_the_name() -> None:
    assert restore_state("TOOL_EXEC") is RunState.TOOL_EXEC
    with pytest.raises(ValueError, match="SLEEPING"):
        restore_state("SLEEPING")


def test_machine_states_match_the_enum() -> None:
    assert set(MACHINE.states) == {s.value for s in RunState}
