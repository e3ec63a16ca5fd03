"""A SQLite store holding one run in every state, made the way users make runs.

DONE, ERROR, WAITING and CANCELLED come from `Agent` + `ScriptedModel`;
MODEL_CALL and TOOL_EXEC from a child process that a `KillSwitchBackend`
SIGKILLs right after its first or second durable write (so a dead process
still holds their leases); PENDING, which the engine never rests in (it stores
a run with its start), is written with the backend API.

The agent factories are also what ``durable-agent runs resume --agent
tests.cli.scenario:calculator`` imports: they open the store named by
``DURABLE_AGENT_DB``.

Run as ``python -m tests.cli.scenario crash URL RUN_ID KILL_AFTER`` it is the
child process that gets killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

from durable_agent import (
    Agent,
    ModelHTTPError,
    RunFailedError,
    RunState,
    ScriptedFailure,
    ScriptedModel,
    Task,
    ToolCall,
    tool,
)
from durable_agent.backend import Backend
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import CreatedEvent, RunHeader, SystemMessage, UserMessage
from durable_agent.testing.crash import KillSwitchBackend

ROOT: Final = Path(__file__).resolve().parents[2]

RUNS: Final = {
    RunState.DONE: "run-done",
    RunState.ERROR: "run-error",
    RunState.WAITING: "run-waiting",
    RunState.CANCELLED: "run-cancelled",
    RunState.PENDING: "run-pending",
    RunState.MODEL_CALL: "run-model-call",
    RunState.TOOL_EXEC: "run-tool-exec",
}
"""The id of the run in each state."""

SESSION: Final = "s-cli"
REFUND_REQUIREMENT: Final = "call_0_0:confirmation"
"""The requirement the WAITING run waits for (its first call of the first turn)."""


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(requires_confirmation=True)
def refund(order: str, amount: float) -> str:
    """Refund an order; a human approves each refund first."""
    return f"refunded {amount:.2f} EUR for order {order}"


def _db() -> str:
    return os.environ["DURABLE_AGENT_DB"]


def calculator(db: str | Backend | None = None, *, lease_ttl: float = 30.0) -> Agent:
    """Two parallel additions, then the answer."""
    model = ScriptedModel(
        [[ToolCall("add", {"a": 7, "b": 7}), ToolCall("add", {"a": 1, "b": 1})], "14 and 2"],
        name="scripted-calculator",
    )
    return Agent(
        model,
        db=db or _db(),
        tools=[add],
        system_prompt="You are a careful calculator.",
        name="calculator",
        retry=1,
        lease_ttl=lease_ttl,
    )


def flaky(db: str | Backend) -> Agent:
    """The calculator, whose first model call fails with HTTP 400 (not retried)."""
    model = ScriptedModel(
        ["14"], failures=[ScriptedFailure(turn=0, error=ModelHTTPError(400, "bad request"))]
    )
    return Agent(model, db=db, tools=[add], name="calculator", retry=1)


def refunds(db: str | Backend | None = None) -> Agent:
    """Asks for a refund a human must approve, then answers."""
    model = ScriptedModel(
        [ToolCall("refund", {"order": "A-1001", "amount": 49.9}), "Refund issued."],
        name="scripted-support",
    )
    return Agent(model, db=db or _db(), tools=[refund], name="support", retry=1)


async def _populate(path: Path) -> None:
    async with SqliteBackend(path, session_id=SESSION, user_id="u1") as db:
        await calculator(db).do_async(Task("What is 7 + 7 and 1 + 1?", run_id=RUNS[RunState.DONE]))
        with contextlib.suppress(RunFailedError):
            await flaky(db).do_async(Task("What is 7 + 7?", run_id=RUNS[RunState.ERROR]))
        waiting = refunds(db)
        await waiting.do_async(
            Task("Refund order A-1001", run_id=RUNS[RunState.WAITING]), return_output=True
        )
        await waiting.do_async(
            Task("Refund order B-2", run_id=RUNS[RunState.CANCELLED]), return_output=True
        )
        await waiting.cancel_run_async(RUNS[RunState.CANCELLED], reason="customer withdrew")
        created = CreatedEvent(
            seq=1,
            state=RunState.PENDING,
            messages=(SystemMessage(content="Be brief."), UserMessage(content="Say hi.")),
        )
        header = RunHeader(
            run_id=RUNS[RunState.PENDING],
            session_id="s-other",
            user_id="u2",
            state=RunState.PENDING,
            seq=1,
        )
        await db.create_run(header, [created])


async def _crash(url: str, run_id: str, kill_after: int) -> None:
    path = url.removeprefix("sqlite:///")
    async with KillSwitchBackend(SqliteBackend(path), kill_after=kill_after) as db:
        # An hour-long lease: the dead owner still holds it for the whole test session.
        await calculator(db, lease_ttl=3600).do_async(Task("What is 7 + 7?", run_id=run_id))


def build_store(directory: Path) -> str:
    """Make ``directory/runs.db`` with one run per state; return its URL."""
    path = directory / "runs.db"
    url = f"sqlite:///{path}"
    for state, kill_after in ((RunState.MODEL_CALL, 1), (RunState.TOOL_EXEC, 2)):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.cli.scenario",
                "crash",
                url,
                RUNS[state],
                str(kill_after),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == -9, done.stderr  # SIGKILLed by the KillSwitchBackend
    asyncio.run(_populate(path))
    return url


if __name__ == "__main__":
    _, command, url, run_id, kill_after = sys.argv
    assert command == "crash"
    asyncio.run(_crash(url, run_id, int(kill_after)))
