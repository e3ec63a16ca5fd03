"""A model answer a store could not read back is refused before it is written, and the
refusal is recorded on the run: the model is told within its retry budget, past it the run
stops in an ERROR that loads and continues.

Run on every durable built-in backend: each one reads events back through the same decoder,
whose JSON parser stops at 200 levels; these runs would have bricked on all of them. Tool
results, human decisions and the store's own refusal are `test_unstorable_results.py`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import pytest

from durable_agent import (
    ChatModel,
    ModelResponse,
    OutputSchema,
    RunFailedError,
    RunState,
    ScriptedModel,
    Task,
    ToolCall,
    ToolDefinition,
    tool,
)
from durable_agent.backend import Backend
from durable_agent.records import (
    MAX_DEPTH,
    AssistantMessage,
    Message,
    ModelResponseEvent,
    ToolCallPart,
    Usage,
)
from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)
from tests.engine.unstorable import (  # noqa: F401  (the fixtures `url` and `stores`)
    Counter,
    agent_on,
    failures,
    kinds,
    load,
    nested,
    opened_stores,
    rejections,
    store_url,
)

# -- model answers that cannot be stored ------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH, 200, 300])
def test_too_deep_tool_arguments_are_sent_back_to_the_model_and_the_run_goes_on(
    url: str, stores: list[Backend], depth: int
) -> None:
    ran = Counter()

    @tool
    def echo(x: Any) -> str:
        """Echo."""
        ran("echo")
        return "echoed"

    model = ScriptedModel([ToolCall("echo", {"x": nested(depth)}), "fixed it"])
    agent = agent_on(url, stores, model, [echo])
    task = Task("go", run_id="deep-repaired")
    assert agent.do(task) == "fixed it"
    assert ran.runs == {}  # the refused call never ran
    stored = load(url, stores, "deep-repaired")
    [rejected] = rejections(stored)
    assert rejected.error.type.endswith("UnstorableValueError")
    assert "arguments of tool call 'call_0_0' (echo).x" in rejected.error.message
    assert f"nested more than {MAX_DEPTH} levels deep" in rejected.error.message
    assert "could not be stored" in rejected.feedback.content
    assert rejected.message.tool_calls == ()
    assert rejected.message.content == "[tool calls not stored: echo]"
    assert stored.header.state is RunState.DONE


def test_tool_arguments_at_the_depth_limit_are_stored_and_read_back(
    url: str, stores: list[Backend]
) -> None:
    seen: list[Any] = []

    @tool
    def echo(x: Any) -> str:
        """Echo."""
        seen.append(x)
        return "echoed"

    # The arguments object is level 1, so its member may nest MAX_DEPTH - 1 levels.
    value = nested(MAX_DEPTH - 1)
    agent = agent_on(url, stores, ScriptedModel([ToolCall("echo", {"x": value}), "done"]), [echo])
    assert agent.do(Task("go", run_id="at-limit")) == "done"
    assert seen == [value]
    stored = load(url, stores, "at-limit")
    answer = next(e for e in stored.events if isinstance(e, ModelResponseEvent))
    assert answer.message.tool_calls[0].arguments == {"x": value}


def test_300_deep_arguments_past_the_budget_stop_the_run_in_error_that_loads_and_continues(
    url: str, stores: list[Backend]
) -> None:
    deep = ToolCall("echo", {"x": nested(300)})
    script: list[Any] = [deep, deep, "recovered"]

    @tool
    def echo(x: Any) -> str:
        """Echo."""
        raise AssertionError("a refused call must never run")

    agent = agent_on(url, stores, ScriptedModel(script), [echo], retry=2)
    with pytest.raises(RunFailedError, match=r"could not be stored after 2 attempt\(s\)") as failed:
        agent.do(Task("go", run_id="deep-error"))
    assert "call_1_0" in str(failed.value)
    assert "nested more than 64" in str(failed.value)
    # Loads through the facade, from another backend object, in ERROR naming the reason.
    other = agent_on(url, stores, ScriptedModel(script), [echo], retry=2)
    out = asyncio.run(other.get_run_async("deep-error"))
    assert out.state is RunState.ERROR
    assert out.failed_state is RunState.MODEL_CALL
    assert out.error is not None
    assert "nested more than 64 levels" in out.error.message
    stored = load(url, stores, "deep-error")
    assert kinds(stored)[-2:] == ["output_rejected", "failed"]
    # Continuing asks the model again; the next answers are refused, then one is stored.
    assert other.continue_run(run_id="deep-error") == "recovered"


def test_an_answer_with_a_lone_surrogate_is_refused_and_repaired(
    url: str, stores: list[Backend]
) -> None:
    agent = agent_on(url, stores, ScriptedModel(["caf\udce9 au lait", "café au lait"]))
    assert agent.do(Task("order", run_id="surrogate-answer")) == "café au lait"
    stored = load(url, stores, "surrogate-answer")
    [rejected] = rejections(stored)
    assert "the answer's text: text holds a lone surrogate '\\udce9'" in rejected.error.message
    # The log keeps what was said, escaped, so the model sees its own answer.
    assert rejected.message.content == "caf\\udce9 au lait"


def test_an_answer_with_a_lone_surrogate_past_the_budget_is_a_recorded_error(
    url: str, stores: list[Backend]
) -> None:
    agent = agent_on(url, stores, ScriptedModel(["\ud800"]), retry=1)
    with pytest.raises(RunFailedError, match="lone surrogate"):
        agent.do(Task("order", run_id="surrogate-error"))
    stored = load(url, stores, "surrogate-error")
    assert kinds(stored) == ["created", "transition", "failed"]
    assert "lone surrogate" in failures(stored)[0].error.message


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_nan_or_infinite_tool_arguments_are_refused_never_stored_as_null(
    url: str, stores: list[Backend], number: float
) -> None:
    seen: list[Any] = []

    @tool
    def scale(factor: float | None) -> str:
        """Scale."""
        seen.append(factor)
        return "scaled"

    model = ScriptedModel(
        [ToolCall("scale", {"factor": number}), ToolCall("scale", {"factor": 2.0}), "done"]
    )
    agent = agent_on(url, stores, model, [scale])
    assert agent.do(Task("go", run_id="nan-args")) == "done"
    assert seen == [2.0]  # the NaN call never ran, nor ran with None
    [rejected] = rejections(load(url, stores, "nan-args"))
    assert "(scale).factor:" in rejected.error.message
    assert "is not a JSON number" in rejected.error.message


class DuplicateIds(ChatModel):
    """Answers with two calls sharing one id ``times`` times, then with distinct ids, then text."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.requests = 0

    @property
    def name(self) -> str:
        return "duplicates"

    async def request(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None = None,
    ) -> ModelResponse:
        self.requests += 1
        if any(m.role == "tool" for m in messages):
            return ModelResponse(AssistantMessage(content="done"), self.name, Usage(requests=1))
        ids = ("same", "same") if self.requests <= self.times else ("one", "two")
        calls = tuple(
            ToolCallPart(id=i, name="note", arguments={"n": n}) for n, i in enumerate(ids)
        )
        return ModelResponse(AssistantMessage(tool_calls=calls), self.name, Usage(requests=1))


def test_two_calls_with_one_id_are_refused_and_the_model_is_told(
    url: str, stores: list[Backend]
) -> None:
    ran: list[int] = []

    @tool
    def note(n: int) -> str:
        """Note."""
        ran.append(n)
        return "noted"

    agent = agent_on(url, stores, DuplicateIds(times=1), [note])
    assert agent.do(Task("go", run_id="dups")) == "done"
    assert sorted(ran) == [0, 1]  # both calls of the repaired answer, none dropped
    stored = load(url, stores, "dups")
    [rejected] = rejections(stored)
    assert "call id 'same' is also the id of tool_calls[0]" in rejected.feedback.content


def test_two_calls_with_one_id_past_the_budget_are_a_recorded_error(
    url: str, stores: list[Backend]
) -> None:
    @tool
    def note(n: int) -> str:
        """Note."""
        return "noted"

    agent = agent_on(url, stores, DuplicateIds(times=5), [note], retry=2)
    with pytest.raises(RunFailedError, match="call id 'same'"):
        agent.do(Task("go", run_id="dups-error"))
    stored = load(url, stores, "dups-error")
    assert kinds(stored) == ["created", "transition", "output_rejected", "failed"]
