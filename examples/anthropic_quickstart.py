"""Quick start on Anthropic: a tool-using run that survives an overloaded API.

Goal: show ``Agent("anthropic/claude-haiku-4-5", ...)`` with a tool, and what
durability buys when the provider fails half-way: the model asks for the tool,
the tool runs and its result is recorded, then the next model request fails
with HTTP 529 (overloaded). ``continue_run_async`` resumes at that request with
the recorded tool result: the tool does not run again.

With ``ANTHROPIC_API_KEY`` set, this calls the real API (which may well not
fail). Without it (as in CI), it starts a local `FakeAnthropicServer` scripted
to fail like that, and points ``ANTHROPIC_BASE_URL`` at it.

Run with: python examples/anthropic_quickstart.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

from durable_agent import Agent, RunFailedError, Task, ToolCall
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.testing import FakeAnthropicServer, Fault

tool_runs: Counter[str] = Counter()


def add(a: int, b: int) -> int:
    """Add two integers."""
    tool_runs["add"] += 1
    return a + b


async def main(directory: Path) -> None:
    async with AsyncExitStack() as stack:
        if not os.environ.get("ANTHROPIC_API_KEY"):
            script = [ToolCall("add", {"a": 7, "b": 7}), Fault.http(529, "Overloaded"), "14"]
            server = await stack.enter_async_context(FakeAnthropicServer(script))
            os.environ["ANTHROPIC_API_KEY"] = "offline-demo-key"
            os.environ.setdefault("ANTHROPIC_BASE_URL", server.base_url)
            print(f"no ANTHROPIC_API_KEY: using a local fake server at {server.base_url}")

        db = SqliteBackend(db_file=str(directory / "durable.db"), session_id="s1", user_id="u1")
        agent = Agent(
            "anthropic/claude-haiku-4-5",
            db=db,
            retry=1,
            tools=[add],
            system_prompt="Use the add tool for arithmetic. Reply with just the number.",
        )
        task = Task("What is 7 + 7?")
        try:
            result = await agent.do_async(task, return_output=True)
        except RunFailedError as exc:
            print(f"failed after the tool ran, recorded: {exc.__cause__}")
            result = await agent.continue_run_async(task=task, return_output=True)
        print(f"answer: {result.output}  ({result.state.value})")
        print(f"the add tool ran {tool_runs['add']} time(s)")
        await db.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
