"""A user's script that calls every public function with its documented arguments.

`test_public_typing.py` runs ``mypy --strict`` on it (every call must type-check
with no ``Any`` leaking into the user's code) and then runs it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from pydantic import BaseModel

from durable_agent import (
    Agent,
    Backend,
    Requirement,
    RetryPolicy,
    RunOutput,
    RunPage,
    RunState,
    ScriptedModel,
    Task,
    Tool,
    ToolCall,
    ToolContext,
    cancel_run,
    decide_run,
    open_backend,
    tool,
)
from durable_agent.backends import JsonFileBackend, MemoryBackend, SqliteBackend
from durable_agent.compat import SqliteDatabase
from durable_agent.diagram import Diagram, machine_diagram, run_diagram


class Answer(BaseModel):
    """A structured answer."""

    value: int


@tool(requires_confirmation=True, idempotent=False)
def refund(amount: int, ctx: ToolContext) -> str:
    """Refund an amount."""
    return f"refunded {amount} ({ctx.idempotency_key})"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def sync_api(folder: Path) -> None:
    db: Backend = SqliteDatabase(db_file=str(folder / "sync.db"), session_id="s1", user_id="u1")
    model = ScriptedModel([ToolCall("add", {"a": 7, "b": 7}), "14"])
    # Two agents share one store: only the last one closes it (closing an agent
    # closes its store).
    agent = Agent(
        model, db=db, retry=RetryPolicy(attempts=2), tools=[add, Tool(add, name="plus")],
        system_prompt="Be careful.", name="calc", lease_ttl=10.0,
    )
    text: object = agent.do(Task("7 + 7?", run_id="sync-1"))
    assert text == "14"
    output: RunOutput = agent.get_run("sync-1")
    state: RunState = output.state
    assert state is RunState.DONE
    again: object = agent.continue_run("sync-1", return_output=True)
    assert isinstance(again, RunOutput)
    with Agent(ScriptedModel([ToolCall("refund", {"amount": 2})]), db=db, tools=[refund]) as agent:
        paused = agent.do(Task("refund 2", run_id="sync-2"), return_output=True)
        assert isinstance(paused, RunOutput), paused
        assert paused.state is RunState.WAITING, paused
        cancelled: RunOutput = agent.cancel_run("sync-2", reason="not needed")
        assert cancelled.state is RunState.CANCELLED
        last: RunOutput | None = agent.last_run
        assert last is not None
        diagram: Diagram = last.diagram(format="mermaid")
        assert "DONE" in diagram.text


async def async_api(folder: Path) -> None:
    model = ScriptedModel([ToolCall("refund", {"amount": 5}), "refunded"])
    async with Agent(model, db=SqliteBackend(folder / "async.db"), tools=[refund]) as agent:
        waiting: RunOutput = await agent.do_async(Task("refund 5", run_id="a-1"),
                                                  return_output=True, timeout=60)
        requirements: tuple[Requirement, ...] = waiting.requirements
        decided: RunOutput = await agent.decide_run_async(
            "a-1", requirements=[requirements[0].confirm()]
        )
        assert decided.state is RunState.TOOL_EXEC
        done: RunOutput = await agent.continue_run_async(
            run_id="a-1", return_output=True, timeout=60.0
        )
        assert done.state is RunState.DONE
        fetched: RunOutput = await agent.get_run_async("a-1")
        assert fetched.output == "refunded"
        page: RunPage = await agent.db.list_runs(states=[RunState.DONE], limit=10)
        assert [h.run_id for h in page.runs] == ["a-1"]
    async with Agent(ScriptedModel(['{"value": 3}']), db=MemoryBackend()) as structured:
        parsed: object = await structured.do_async(Task("three", response_format=Answer))
        assert parsed == Answer(value=3)
    store = open_backend(f"sqlite:///{folder / 'url.db'}", session_id="s")
    async with Agent(ScriptedModel([ToolCall("refund", {"amount": 1})]), db=store,
                     tools=[refund]) as other:
        paused: RunOutput = await other.do_async("refund 1", return_output=True)
        (requirement,) = paused.requirements
        after_decide: RunState = await decide_run(
            store, paused.run_id, approvals={requirement.id: "not today"}
        )
        assert after_decide is RunState.TOOL_EXEC
        after_cancel: RunState = await cancel_run(store, paused.run_id, reason="enough")
        assert after_cancel is RunState.CANCELLED
        stored = await store.load_run(paused.run_id)
        assert "CANCELLED" in run_diagram(stored, format="mermaid").text
    async with JsonFileBackend(folder / "files") as files:
        assert (await files.list_runs()).runs == ()
    assert "PENDING" in machine_diagram().text


def main() -> None:
    folder = Path(sys.argv[1])
    sync_api(folder)
    asyncio.run(async_api(folder))
    print("ok")


if __name__ == "__main__":
    main()
