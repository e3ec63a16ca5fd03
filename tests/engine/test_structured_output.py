"""Structured output: validated final answers, repaired within the retry budget."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from durable_agent import (
    Agent,
    ConfigurationError,
    OutputValidationError,
    RetryPolicy,
    RunFailedError,
    RunState,
    ScriptedModel,
    Task,
)
from durable_agent.records import CreatedEvent, FailedEvent, OutputRejectedEvent
from tests.engine.conftest import StoreFactory, run


class Sum(BaseModel):
    """The sum of two numbers."""

    value: int
    explanation: str


GOOD = '{"value": 14, "explanation": "7 + 7"}'


def test_a_valid_answer_is_returned_as_the_model_instance(store: StoreFactory) -> None:
    agent = Agent(ScriptedModel([GOOD]), db=store())
    answer = run(agent.do_async(Task("7 + 7?", response_format=Sum)))
    assert answer == Sum(value=14, explanation="7 + 7")
    assert agent.last_run is not None
    assert agent.last_run.output == GOOD
    created = run(store().load_run(agent.last_run.run_id)).events[0]
    assert isinstance(created, CreatedEvent)
    assert created.output_format is not None
    assert created.output_format.name == "Sum"
    assert "value" in str(created.output_format.json_schema)


def test_an_invalid_answer_is_sent_back_and_repaired(store: StoreFactory) -> None:
    model = ScriptedModel(['{"value": "fourteen"}', GOOD])
    agent = Agent(model, db=store(), retry=RetryPolicy(attempts=2, initial_delay=0))
    out = run(agent.do_async(Task("7 + 7?", response_format=Sum), return_output=True))
    assert out.state is RunState.DONE
    assert out.parsed == Sum(value=14, explanation="7 + 7")
    stored = run(store().load_run(out.run_id))
    rejected = [e for e in stored.events if isinstance(e, OutputRejectedEvent)]
    assert len(rejected) == 1
    assert "value" in rejected[0].error.message
    # The model saw its refused answer and why, before answering again.
    feedback = [m for m in out.messages if m.role == "user"][-1]
    assert "does not match the required output format" in feedback.content


def test_an_answer_still_invalid_after_the_budget_fails_the_run(store: StoreFactory) -> None:
    model = ScriptedModel(["not json", "still not json"])
    agent = Agent(model, db=store(), retry=RetryPolicy(attempts=2, initial_delay=0))
    with pytest.raises(RunFailedError, match="failed validation after 2") as raised:
        run(agent.do_async(Task("7 + 7?", response_format=Sum)))
    assert isinstance(raised.value.__cause__, OutputValidationError)
    assert agent.last_run is not None
    last = run(store().load_run(agent.last_run.run_id)).events[-1]
    assert isinstance(last, FailedEvent)
    assert last.error.type.endswith("OutputValidationError")


def test_response_format_must_be_a_pydantic_model() -> None:
    with pytest.raises(ConfigurationError, match="response_format"):
        Task("x", response_format=dict)  # type: ignore[arg-type]
