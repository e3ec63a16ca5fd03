"""Quick start on OpenAI: the seed example through the official SDK, surviving an API error.

Goal: show the first lines users write, ``Agent("openai/gpt-4o-mini", db=db,
retry=1)``, and the recovery pattern around them. ``retry=1`` means one attempt:
the SDK's own retries are off, so an HTTP error reaches the run, is recorded,
and ``continue_run_async`` finishes the run from the model call that failed.

With ``OPENAI_API_KEY`` set, this calls the real API. Without it (as in CI), it
starts a local `FakeOpenAIServer` whose first answer is an HTTP 500, and points
``OPENAI_BASE_URL`` at it, so the recovery is visible offline. A base URL you
set yourself (any OpenAI-compatible server) is used as it is.

Run with: python examples/openai_quickstart.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

from durable_agent import Agent, Task
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.testing import FakeOpenAIServer, Fault


async def main(directory: Path) -> None:
    async with AsyncExitStack() as stack:
        if not os.environ.get("OPENAI_API_KEY"):
            server = await stack.enter_async_context(FakeOpenAIServer([Fault.http(500), "14"]))
            os.environ["OPENAI_API_KEY"] = "offline-demo-key"
            os.environ.setdefault("OPENAI_BASE_URL", server.base_url)
            print(
                f"no OPENAI_API_KEY: using a local fake server at {os.environ['OPENAI_BASE_URL']}"
            )

        db = SqliteBackend(db_file=str(directory / "durable.db"), session_id="s1", user_id="u1")
        agent = Agent("openai/gpt-4o-mini", db=db, retry=1)
        task = Task("What is 7 + 7? Reply with just the number.")
        try:
            result = await agent.do_async(task, return_output=True)
        except Exception as exc:
            print(f"first attempt failed and was recorded: {exc.__cause__}")
            assert agent.last_run is not None
            run_id = agent.last_run.run_id
            result = await agent.continue_run_async(run_id=run_id, return_output=True)
        print(f"answer: {result.output}  (run {result.run_id}, {result.state.value})")
        print(f"usage: {result.usage.input_tokens} in / {result.usage.output_tokens} out tokens")
        await db.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
