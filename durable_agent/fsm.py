"""The run state machine: the single source of truth for states and edges.

The engine, the diagram generator, the docs and the crash tests read
`TRANSITIONS`; nothing else lists states or edges.

`transitions` is used as the table and its guard checker, not as the place
where work happens (DESIGN.md §1). Measured on this machine with transitions
0.9.3: a synchronous ``Machine`` fires a transition in ~8 µs, an
``AsyncMachine`` in 30-85 µs and it swallows ``CancelledError``; building a
machine per run costs ~0.3 ms. So there is one module-level synchronous
machine, runs are never registered with it, and no callback does I/O. A run is
any object with a ``state`` attribute (and ``failed_state`` for ``resume``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from transitions import Machine

from durable_agent.errors import InvalidTransitionError

__all__ = [
    "FINAL_STATES",
    "MACHINE",
    "TRANSITIONS",
    "RunState",
    "StateHolder",
    "Transition",
    "fire",
    "fire_on_machine",
    "next_state",
    "restore_state",
    "triggers_from",
]


class RunState(StrEnum):
    """The states of a run."""

    PENDING = "PENDING"
    """Created and stored; no effect has started."""
    MODEL_CALL = "MODEL_CALL"
    """A model call is intended or in flight (the transition into it is the intent record)."""
    TOOL_EXEC = "TOOL_EXEC"
    """The model asked for tool calls; they are being run and their results recorded."""
    WAITING = "WAITING"
    """Paused for a human decision."""
    DONE = "DONE"
    """Finished with a final answer (final)."""
    ERROR = "ERROR"
    """Stopped by a failure that is recorded; ``resume`` returns to the state that failed."""
    CANCELLED = "CANCELLED"
    """Cancelled on request (final)."""


FINAL_STATES: Final = frozenset({RunState.DONE, RunState.CANCELLED})
"""States a run never leaves."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the table: ``trigger`` moves a run from ``source`` to ``dest``.

    ``condition`` names a boolean attribute of the run that must be true for
    this row to apply; it disambiguates rows that share trigger and source.
    """

    trigger: str
    source: RunState
    dest: RunState
    condition: str | None = None


_S = RunState
_NON_FINAL: Final = tuple(s for s in RunState if s not in FINAL_STATES)

TRANSITIONS: Final[tuple[Transition, ...]] = (
    Transition("start", _S.PENDING, _S.MODEL_CALL),
    Transition("tool_calls", _S.MODEL_CALL, _S.TOOL_EXEC),
    Transition("final_answer", _S.MODEL_CALL, _S.DONE),
    Transition("tools_done", _S.TOOL_EXEC, _S.MODEL_CALL),
    Transition("needs_human", _S.TOOL_EXEC, _S.WAITING),
    Transition("decided", _S.WAITING, _S.TOOL_EXEC),
    Transition("fail", _S.MODEL_CALL, _S.ERROR),
    Transition("fail", _S.TOOL_EXEC, _S.ERROR),
    Transition("resume", _S.ERROR, _S.MODEL_CALL, condition="failed_in_model_call"),
    Transition("resume", _S.ERROR, _S.TOOL_EXEC, condition="failed_in_tool_exec"),
    *(Transition("cancel", s, _S.CANCELLED) for s in _NON_FINAL),
)
"""Every edge of the machine, in the order the docs draw them."""


class StateHolder(Protocol):
    """What the machine needs of a run: its state and, for ``resume``, where it failed."""

    state: RunState
    failed_state: RunState | None


def _build_machine() -> Machine:
    machine = Machine(
        model=None,
        states=[s.value for s in RunState],
        initial=RunState.PENDING.value,
        auto_transitions=False,
    )
    for row in TRANSITIONS:
        machine.add_transition(
            row.trigger,
            row.source.value,
            row.dest.value,
            conditions=[row.condition] if row.condition else [],
        )
    return machine


MACHINE: Final = _build_machine()
"""The one shared synchronous machine. Runs are never added to it as models."""


class _Probe:
    """The plain object the machine fires on, so a caller's run is never half-moved.

    The engine adopts a new state only after the event that records it is
    durable; until then the run keeps its old state.
    """

    __slots__ = ("failed_state", "state")

    def __init__(self, state: RunState, failed_state: RunState | None) -> None:
        self.state: str = state.value
        self.failed_state = failed_state

    # Guards named by `Transition.condition`; `transitions` resolves them by name on the model.
    @property
    def failed_in_model_call(self) -> bool:
        return self.failed_state is RunState.MODEL_CALL

    @property
    def failed_in_tool_exec(self) -> bool:
        return self.failed_state is RunState.TOOL_EXEC


def next_state(state: RunState, trigger: str, *, failed_state: RunState | None = None) -> RunState:
    """Return the state ``trigger`` leads to from ``state``, or raise `InvalidTransitionError`.

    Pure: the caller's objects are not mutated. The engine calls this to check
    a transition before it writes the event that records it. Unguarded rows
    are answered from `_ROUTES`, a lookup built from `TRANSITIONS` (firing the
    machine costs ~8 µs, most of it in its logging; the engine checks every
    append); guarded rows are fired on the shared machine, which evaluates the
    guard. tests/unit/test_fsm.py checks both paths agree with the machine.
    """
    route = _ROUTES.get((state, trigger))
    if route is not None:
        return route
    return fire_on_machine(state, trigger, failed_state=failed_state)


def fire_on_machine(
    state: RunState, trigger: str, *, failed_state: RunState | None = None
) -> RunState:
    """`next_state` computed by firing the shared `transitions` machine on a probe."""
    event = MACHINE.events.get(trigger)
    if event is None or state.value not in event.transitions:
        raise InvalidTransitionError(trigger, state.value)
    probe = _Probe(state, failed_state)
    if not event.trigger(probe):  # a guard refused every row
        raise InvalidTransitionError(trigger, state.value)
    return RunState(probe.state)


def _unguarded_routes() -> dict[tuple[RunState, str], RunState]:
    guarded = {(row.source, row.trigger) for row in TRANSITIONS if row.condition}
    return {
        (row.source, row.trigger): row.dest
        for row in TRANSITIONS
        if (row.source, row.trigger) not in guarded
    }


_ROUTES: Final = _unguarded_routes()


def fire(run: StateHolder, trigger: str) -> RunState:
    """Move ``run`` along ``trigger`` and return the new state (checked by the table)."""
    dest = next_state(run.state, trigger, failed_state=run.failed_state)
    run.state = dest
    return dest


def restore_state(value: str) -> RunState:
    """Check a stored state name against the machine and return it (no callback fires)."""
    MACHINE.get_state(value)  # raises ValueError for a name the machine does not know
    return RunState(value)


def triggers_from(state: RunState) -> tuple[str, ...]:
    """The triggers the table allows from ``state``, in table order, without repeats."""
    seen: dict[str, None] = {}
    for row in TRANSITIONS:
        if row.source is state:
            seen.setdefault(row.trigger, None)
    return tuple(seen)
