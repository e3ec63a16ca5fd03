"""A tool result, a tool error or a human decision a store could not read back is refused
before it is written: the refusal fails only its own call (or leaves the run waiting), every
stored event reads back what was written, and the store itself refuses such an append whole.

Run on every durable built-in backend, as `test_unstorable.py` is.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from durable_agent import (
    RunFailedError,
    RunState,
    ScriptedModel,
    Task,
    ToolCall,
    UnstorableValueError,
    open_backend,
    tool,
)
from durable_agent.backend import Backend
from durable_agent.records import (
    AssistantMessage,
    ModelResponseEvent,
    ToolFinishedEvent,
    ToolStartedEvent,
    decode_event,
    encode_event,
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
