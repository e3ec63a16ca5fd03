"""A value a store could not read back is refused before it is written, and the refusal is
recorded on the run: the model is told within its retry budget, a tool's unstorable result
fails its call, and the stored log always loads.

Run on every durable built-in backend: each one reads events back through the same decoder,
whose JSON parser stops at 200 levels; these runs would have bricked on all of them.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from durable_agent import (
    Agent,
    ChatModel,
    ModelResponse,
    OutputSchema,
    RunFailedError,
    RunState,
    ScriptedModel,
    Task,
    ToolCall,
    ToolDefinition,
    UnstorableValueError,
    open_backend,
    tool,
)
from durable_agent.backend import Backend
from durable_agent.records import (
    MAX_DEPTH,
    AssistantMessage,
    FailedEvent,
    Message,
    ModelResponseEvent,
    OutputRejectedEvent,
    StoredRun,
    ToolCallPart,
    ToolFinishedEvent,
    ToolStartedEvent,
    Usage,
    decode_event,
    encode_event,
)
from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)


def nested(depth: int) -> Any:
    """A list ``depth`` levels deep."""
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture(params=["sqlite", "jsonfile", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store on each durable built-in backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    if request.param == "jsonfile":
        return f"file://{tmp_path / 'runs'}"
    server: str = request.getfixturevalue("redis_url")
    return f"{server}?prefix=unstorable-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def stores(url: str) -> Iterator[list[Backend]]:
    """Backends opened by a test, closed after it."""
    opened: list[Backend] = []
    yield opened
    for backend in opened:
        asyncio.run(backend.close())


class Counter:
    """How many times each tool ran."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}

    def __call__(self, name: str) -> None:
        self.runs[name] = self.runs.get(name, 0) + 1


def agent_on(url: str, stores: list[Backend], model: ChatModel, tools: Sequence[Any] = (),
             retry: int = 3) -> Agent:
    """An Agent on its own backend object, as a new process would open it."""
    backend = open_backend(url)
    stores.append(backend)
    return Agent(model, db=backend, tools=tools, retry=retry)


def load(url: str, stores: list[Backend], run_id: str) -> StoredRun:
    backend = open_backend(url)
    stores.append(backend)
    return asyncio.run(backend.load_run(run_id))


def kinds(stored: StoredRun) -> list[str]:
    return [e.kind for e in stored.events]


def rejections(stored: StoredRun) -> list[OutputRejectedEvent]:
    return [e for e in stored.events if isinstance(e, OutputRejectedEvent)]


def failures(stored: StoredRun) -> list[FailedEvent]:
    return [e for e in stored.events if isinstance(e, FailedEvent)]


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


# -- tool results that cannot be stored -------------------------------------------------


def test_a_tool_returning_a_lone_surrogate_runs_once_and_its_failure_is_recorded(
    url: str, stores: list[Backend]
) -> None:
    ran = Counter()
    fixed = False

    @tool
    def listdir() -> str:
        """List a folder holding a latin-1 file name (os.listdir gives a lone surrogate)."""
        ran("listdir")
        return "café.txt" if fixed else "caf\udce9.txt"

    script: list[Any] = [ToolCall("listdir"), "listed"]
    agent = agent_on(url, stores, ScriptedModel(script), [listdir])
    with pytest.raises(RunFailedError, match=r"returned a result that cannot be stored") as failed:
        agent.do(Task("ls", run_id="surrogate-result"))
    assert ran.runs == {"listdir": 1}
    assert "call call_0_0" in str(failed.value)
    assert "lone surrogate '\\udce9'" in str(failed.value)
    stored = load(url, stores, "surrogate-result")
    [failure] = failures(stored)
    assert failure.call_id == "call_0_0"
    assert failure.failed_state is RunState.TOOL_EXEC
    assert stored.header.state is RunState.ERROR
    assert not any(isinstance(e, ToolFinishedEvent) for e in stored.events)
    # Loading or showing the run runs nothing.
    out = asyncio.run(agent_on(url, stores, ScriptedModel(script), [listdir]).get_run_async(
        "surrogate-result"
    ))
    assert out.state is RunState.ERROR
    assert ran.runs == {"listdir": 1}

    # A continue re-runs the failed call as a new recorded attempt, like after a raise.
    fixed = True
    again = agent_on(url, stores, ScriptedModel(script), [listdir])
    assert again.continue_run(run_id="surrogate-result") == "listed"
    assert ran.runs == {"listdir": 2}
    stored = load(url, stores, "surrogate-result")
    intents = [e.attempt for e in stored.events if isinstance(e, ToolStartedEvent)]
    assert intents == [1, 2]  # every execution has its own intent: none was silent
    [finished] = [e for e in stored.events if isinstance(e, ToolFinishedEvent)]
    assert finished.result.content == "café.txt"


def test_an_unstorable_result_fails_only_its_own_call_among_parallel_calls(
    url: str, stores: list[Backend]
) -> None:
    ran = Counter()

    @tool
    def read(name: str) -> list[str]:
        """Read."""
        ran(name)
        return ["bad\udcff"] if name == "bad" else [name]

    model = ScriptedModel([[ToolCall("read", {"name": "good"}), ToolCall("read", {"name": "bad"})],
                           "done"])
    agent = agent_on(url, stores, model, [read])
    with pytest.raises(RunFailedError, match=r"call call_0_1\) returned a result that cannot"):
        agent.do(Task("go", run_id="parallel"))
    assert ran.runs == {"good": 1, "bad": 1}
    stored = load(url, stores, "parallel")
    [finished] = [e for e in stored.events if isinstance(e, ToolFinishedEvent)]
    assert finished.result.content == '["good"]'
    [failure] = failures(stored)
    assert failure.call_id == "call_0_1"
    assert "the tool's result[0]: text holds a lone surrogate" in failure.error.message


@pytest.mark.parametrize("number", [math.nan, math.inf])
def test_a_nan_or_infinite_tool_result_is_refused_not_stored_as_nonstandard_json(
    url: str, stores: list[Backend], number: float
) -> None:
    ran = Counter()

    @tool
    def measure() -> dict[str, float]:
        """Measure."""
        ran("measure")
        return {"mean": number}

    agent = agent_on(url, stores, ScriptedModel([ToolCall("measure"), "done"]), [measure])
    with pytest.raises(RunFailedError, match=r"the tool's result\.mean: .* is not a JSON number"):
        agent.do(Task("go", run_id="nan-result"))
    assert ran.runs == {"measure": 1}
    [failure] = failures(load(url, stores, "nan-result"))
    assert failure.call_id == "call_0_0"


def test_a_tool_error_message_with_a_lone_surrogate_is_recorded_escaped(
    url: str, stores: list[Backend]
) -> None:
    @tool
    def open_file() -> str:
        """Open."""
        raise FileNotFoundError("no such file: 'caf\udce9.txt'")

    agent = agent_on(url, stores, ScriptedModel([ToolCall("open_file"), "done"]), [open_file])
    with pytest.raises(RunFailedError, match="FileNotFoundError"):
        agent.do(Task("go", run_id="error-text"))
    [failure] = failures(load(url, stores, "error-text"))
    assert failure.error.message == "no such file: 'caf\\udce9.txt'"


# -- decisions --------------------------------------------------------------------------


def test_an_unstorable_human_result_is_refused_and_the_run_still_waits(
    url: str, stores: list[Backend]
) -> None:
    @tool(external_execution=True)
    def lookup() -> str:
        """Done by a human."""
        raise AssertionError("external")

    agent = agent_on(url, stores, ScriptedModel([ToolCall("lookup"), "done"]), [lookup])
    out = agent.do(Task("go", run_id="decide"), return_output=True)
    [requirement] = out.requirements
    with pytest.raises(UnstorableValueError, match=r"value: NaN is not a JSON number"):
        agent.continue_run(run_id="decide", results={requirement.id: math.nan})
    with pytest.raises(UnstorableValueError, match=r"value(\[0\])+…(\[0\])+: nested more than"):
        agent.continue_run(run_id="decide", results={requirement.id: nested(300)})
    stored = load(url, stores, "decide")
    assert stored.header.state is RunState.WAITING
    assert stored.header.lease is None
    assert agent.continue_run(run_id="decide", results={requirement.id: 1.5}) == "done"


def test_every_stored_event_reads_back_what_was_written(url: str, stores: list[Backend]) -> None:
    # A sweep over the runs above in one store: every event re-encodes to the same record.
    @tool
    def echo(x: Any) -> str:
        """Echo."""
        return "echoed"

    model = ScriptedModel([ToolCall("echo", {"x": nested(80)}), ToolCall("echo", {"x": math.nan}),
                           "caf\udce9", "done"])
    agent = agent_on(url, stores, model, [echo], retry=4)
    assert agent.do(Task("go", run_id="sweep")) == "done"
    stored = load(url, stores, "sweep")
    assert len(rejections(stored)) == 3
    for event in stored.events:
        assert decode_event("sweep", event.seq, encode_event(event)) == event


def test_a_store_refuses_an_unstorable_event_before_writing_any_of_its_append(
    url: str, stores: list[Backend]
) -> None:
    # Code that appends to a backend directly gets the same refusal as the engine.
    agent = agent_on(url, stores, ScriptedModel(["done"]))
    agent.do(Task("go", run_id="direct"))
    backend = open_backend(url)
    stores.append(backend)
    before = asyncio.run(backend.load_run("direct"))

    async def append() -> None:
        owner = agent._engine.owner
        lease = await backend.acquire_lease("direct", owner, ttl=30)
        good = decode_event("direct", 4, encode_event(
            ModelResponseEvent(seq=4, state=RunState.DONE, model="m",
                               message=AssistantMessage(content="fine"))
        ))
        bad = ModelResponseEvent(seq=5, state=RunState.DONE, model="m",
                                 message=AssistantMessage(content="caf\udce9"))
        try:
            await backend.append("direct", [good, bad], expected_seq=3, lease=lease)
        finally:
            await backend.release_lease("direct", lease)

    with pytest.raises(UnstorableValueError, match="lone surrogate"):
        asyncio.run(append())
    after = asyncio.run(backend.load_run("direct"))
    assert after.events == before.events
    assert after.header.seq == before.header.seq


def test_durable_agent_runs_show_reads_a_run_refused_for_deep_arguments(tmp_path: Path) -> None:
    from tests.cli.conftest import run_cli

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    opened: list[Backend] = []
    try:
        deep = ToolCall("echo", {"x": nested(300)})
        agent = agent_on(url, opened, ScriptedModel([deep]), retry=1)
        with pytest.raises(RunFailedError):
            agent.do(Task("go", run_id="shown"))
    finally:
        for backend in opened:
            asyncio.run(backend.close())
    done = run_cli("runs", "show", "shown", db=url)
    assert done.returncode == 0, done.stderr
    assert "UnstorableValueError" in done.stdout
    assert "nested more than 64" in done.stdout
