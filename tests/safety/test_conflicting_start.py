"""Starting a caller-chosen run id again: the same start continues, a different one is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import BaseModel

from durable_agent import (
    Agent,
    RunConflictError,
    RunExistsError,
    ScriptedModel,
    Task,
    Tool,
    ToolCall,
)
from durable_agent.backends.sqlite import SqliteBackend


class Refund(BaseModel):
    """A refund decision."""

    amount: int


def lookup(order: str) -> str:
    """Look an order up."""
    return f"order {order}: 20 EUR"


def lookup_v2(order: str, region: str = "eu") -> str:
    """Look an order up, in a region."""
    return f"order {order}: 20 EUR ({region})"


def agent(db: SqliteBackend, tools: list[Tool], *, system: str | None = None) -> Agent:
    model = ScriptedModel([ToolCall("lookup", {"order": "7"}), '{"amount": 20}'])
    return Agent(model, db=db, tools=tools, system_prompt=system)


def start_then(tmp_path: Path, *, again: Task, tools: list[Tool] | None = None,
               system: str | None = None) -> object:
    tmp_path.mkdir(exist_ok=True)

    async def scenario() -> object:
        async with SqliteBackend(tmp_path / "runs.db") as db:
            first = Task("Refund order 7", run_id="order-7", response_format=Refund)
            answer = await agent(db, [Tool(lookup)]).do_async(first)
            assert answer == Refund(amount=20)
            return await agent(db, tools or [Tool(lookup)], system=system).do_async(again)

    return asyncio.run(scenario())


def test_the_same_start_again_returns_the_stored_answer(tmp_path: Path) -> None:
    again = Task("Refund order 7", run_id="order-7", response_format=Refund)
    assert start_then(tmp_path, again=again) == Refund(amount=20)


def test_another_task_description_is_refused_naming_the_run_and_the_difference(
    tmp_path: Path,
) -> None:
    again = Task("Refund order 8", run_id="order-7", response_format=Refund)
    with pytest.raises(RunConflictError) as refused:
        start_then(tmp_path, again=again)
    message = str(refused.value)
    assert "run 'order-7'" in message
    assert "the task description differs (stored 'Refund order 7', given 'Refund order 8')" in (
        message
    )
    assert "continue_changed=True" in message
    assert "another run id" in message
    assert isinstance(refused.value, RunExistsError)
    assert len(refused.value.differences) == 1


def test_other_tools_are_refused_naming_them(tmp_path: Path) -> None:
    again = Task("Refund order 7", run_id="order-7", response_format=Refund)
    with pytest.raises(RunConflictError, match="the tools differ: lookup changed"):
        start_then(tmp_path, again=again, tools=[Tool(lookup_v2, name="lookup")])
    with pytest.raises(RunConflictError, match="lookup not given; lookup_v2 not in the stored run"):
        start_then(tmp_path / "b", again=again, tools=[Tool(lookup_v2)])


def test_another_output_format_or_system_prompt_is_refused(tmp_path: Path) -> None:
    plain = Task("Refund order 7", run_id="order-7")
    differs = r"output format differs \(stored Refund, given none"
    with pytest.raises(RunConflictError, match=differs):
        start_then(tmp_path, again=plain)
    same = Task("Refund order 7", run_id="order-7", response_format=Refund)
    with pytest.raises(RunConflictError, match="the system prompt differs"):
        start_then(tmp_path / "b", again=same, system="Be brief.")


def test_continue_changed_continues_the_stored_run_anyway(tmp_path: Path) -> None:
    again = Task("Refund order 8", run_id="order-7", response_format=Refund,
                 continue_changed=True)
    assert start_then(tmp_path, again=again) == Refund(amount=20)
