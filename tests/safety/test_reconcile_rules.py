"""Reconcile functions obey the tools' rules: deadline, cancellation, recorded failures.

An in-flight call is made in process: the tool waits on an event nobody sets
and the run's deadline interrupts it, which records an ERROR without a result
(the call may have run). A new agent then resumes it with a reconcile
function. A deadline is used as a fault here, never as a barrier: the run
times out whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from durable_agent import (
    Agent,
    ConfigurationError,
    ReconcileContext,
    Reconciliation,
    RunFailedError,
    RunState,
    RunTimeoutError,
    ScriptedModel,
    Task,
    Tool,
    ToolCall,
)
from durable_agent.backends.sqlite import SqliteBackend
from tests._barriers import wait_until_async


def script() -> ScriptedModel:
    return ScriptedModel([ToolCall("charge", {"card": "4242"}), "all done"])


async def charge_hangs(card: str) -> str:
    """Charge a card (never returns)."""
    await asyncio.Event().wait()
    return "unreachable"


async def in_flight(db: SqliteBackend) -> str:
    """A run whose charge call has an intent and no result; return its id."""
    task = Task("charge it")
    hangs = Tool(charge_hangs, name="charge", idempotent=False)
    with pytest.raises(RunTimeoutError):
        await Agent(script(), db=db, tools=[hangs]).do_async(task, timeout=0.2)
    assert task.run_id is not None
    return task.run_id


def charge_with(reconcile: object, *, idempotent: bool = False) -> Tool:
    def charge(card: str) -> str:
        """Charge a card."""
        raise AssertionError("a reconciled call must not run")

    return Tool(charge, idempotent=idempotent, reconcile=reconcile)  # type: ignore[arg-type]


def test_a_reconcile_function_that_raises_fails_the_run_and_is_asked_again_after_the_fix(
    tmp_path: Path,
) -> None:
    asked: list[str] = []

    def broken(ctx: ReconcileContext) -> Reconciliation:
        asked.append(ctx.idempotency_key)
        raise ConnectionError("the payment API is down")

    def fixed(ctx: ReconcileContext) -> Reconciliation:
        asked.append(ctx.idempotency_key)
        return Reconciliation.landed("charged 4242")

    async def scenario() -> None:
        async with SqliteBackend(tmp_path / "runs.db") as db:
            run_id = await in_flight(db)
            agent = Agent(script(), db=db, tools=[charge_with(broken)])
            with pytest.raises(RunFailedError, match=r"reconcile function of tool 'charge'.*down"):
                await agent.continue_run_async(run_id)
            assert (await agent.get_run_async(run_id)).state is RunState.ERROR
            agent = Agent(script(), db=db, tools=[charge_with(fixed)])
            assert await agent.continue_run_async(run_id) == "all done"
            stored = await db.load_run(run_id)
            answers = [e for e in stored.events if e.kind == "reconciled"]
            assert [a.answer for a in answers] == ["landed"]
            assert asked == [f"{run_id}:3:call_0_0"] * 2

    asyncio.run(scenario())


def test_a_reconcile_function_past_the_deadline_is_recorded_as_a_timeout(tmp_path: Path) -> None:
    async def hangs(ctx: ReconcileContext) -> Reconciliation:
        await asyncio.Event().wait()
        return Reconciliation.unknown()

    async def scenario() -> None:
        async with SqliteBackend(tmp_path / "runs.db") as db:
            run_id = await in_flight(db)
            agent = Agent(script(), db=db, tools=[charge_with(hangs)])
            with pytest.raises(RunTimeoutError):
                await agent.continue_run_async(run_id, timeout=0.2)
            out = await agent.get_run_async(run_id)
            assert out.state is RunState.ERROR
            assert out.failed_state is RunState.TOOL_EXEC

    asyncio.run(scenario())


def test_a_cancelled_reconcile_records_the_interruption_and_propagates(tmp_path: Path) -> None:
    entered = asyncio.Event

    async def scenario() -> None:
        started = entered()

        async def hangs(ctx: ReconcileContext) -> Reconciliation:
            started.set()
            await asyncio.Event().wait()
            return Reconciliation.unknown()

        async with SqliteBackend(tmp_path / "runs.db") as db:
            run_id = await in_flight(db)
            agent = Agent(script(), db=db, tools=[charge_with(hangs)])
            task = asyncio.create_task(agent.continue_run_async(run_id))
            await wait_until_async(started.is_set, awaiting="the reconcile function to start")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            out = await agent.get_run_async(run_id)
            assert (out.state, out.failed_state) == (RunState.ERROR, RunState.TOOL_EXEC)
            assert out.error is not None
            assert "cancelled" in out.error.message

    asyncio.run(scenario())


def test_a_reconcile_function_must_answer_with_a_reconciliation(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SqliteBackend(tmp_path / "runs.db") as db:
            run_id = await in_flight(db)
            agent = Agent(script(), db=db, tools=[charge_with(lambda ctx: True)])
            with pytest.raises(RunFailedError, match=r"must return Reconciliation.landed"):
                await agent.continue_run_async(run_id)

    asyncio.run(scenario())


def test_a_landed_result_that_cannot_be_stored_fails_the_run_not_the_store(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with SqliteBackend(tmp_path / "runs.db") as db:
            run_id = await in_flight(db)
            nan = charge_with(lambda ctx: Reconciliation.landed({"amount": float("nan")}))
            with pytest.raises(RunFailedError, match="reconcile function"):
                await Agent(script(), db=db, tools=[nan]).continue_run_async(run_id)
            good = charge_with(lambda ctx: Reconciliation.landed({"amount": 5}))
            agent = Agent(script(), db=db, tools=[good])
            assert await agent.continue_run_async(run_id) == "all done"
            stored = await db.load_run(run_id)
            (finished,) = [e for e in stored.events if e.kind == "tool_finished"]
            assert json.loads(finished.result.content) == {"amount": 5}

    asyncio.run(scenario())


def test_reconcile_must_be_a_function() -> None:
    with pytest.raises(ConfigurationError, match="reconcile= must be a function"):
        charge_with("landed")
