"""Quick start, offline: the seed example on SQLite, with a failure and a continue.

Goal: show the shape of every durable-agent program (a backend, an `Agent`, a
`Task`, ``do_async``) and its recovery pattern. The model's second turn fails
with an HTTP 503; the failure is recorded before it is raised, so
``continue_run_async`` picks the run up at the model call that failed, without
calling the tool again. A `ScriptedModel` plays the LLM: no network, no API key.

Run with: python examples/quickstart_offline.py
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path

from durable_agent import (
    Agent,
    ModelHTTPError,
    ScriptedFailure,
    ScriptedModel,
    Task,
    ToolCall,
)
from durable_agent.backends.sqlite import SqliteBackend

tool_runs: Counter[str] = Counter()


def add(a: int, b: int) -> int:
    """Add two integers."""
    tool_runs["add"] += 1
    return a + b


async def main(directory: Path) -> None:
    # Turn 0 asks for the tool, turn 1 answers. Turn 1 fails once with HTTP 503,
    # like an overloaded provider; with retry=1 there is no retry, so the run
    # stops in ERROR and the caller sees the exception.
    model = ScriptedModel(
        [ToolCall("add", {"a": 7, "b": 7}), "14"],
        failures=[ScriptedFailure(turn=1, error=ModelHTTPError(503, "overloaded"))],
    )

    db = SqliteBackend(db_file=str(directory / "durable.db"), session_id="s1", user_id="u1")
    agent = Agent(model, db=db, retry=1, tools=[add])
    task = Task("What is 7 + 7? Reply with just the number.")
    try:
        result = await agent.do_async(task, return_output=True)
    except Exception as exc:
        print(f"first attempt failed: {exc}")
        assert agent.last_run is not None
        print(f"stored state: {agent.last_run.state}, it failed in {agent.last_run.failed_state}")
        run_id = agent.last_run.run_id
        result = await agent.continue_run_async(run_id=run_id, return_output=True)

    print(f"state: {result.state}, answer: {result.output!r}")
    print(f"stored events: {result.history_length}, model requests: {result.usage.requests}")
    print(f"the add tool ran {tool_runs['add']} time(s)")
    assert result.output == "14"
    assert tool_runs["add"] == 1, "a recorded tool result must not be recomputed"

    # Runs are data: list them by session, user or state, and load any of them.
    page = await db.list_runs(session_id="s1")
    print(f"runs in session s1: {[(r.run_id[:8], str(r.state)) for r in page.runs]}")
    stored = await db.load_run(result.run_id)
    print("its log: " + ", ".join(e.trigger or e.kind for e in stored.events))
    await db.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
