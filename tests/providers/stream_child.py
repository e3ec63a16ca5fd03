"""One process of the streaming crash test: stream a run (or continue one) through a real SDK.

Run as ``python tests/providers/stream_child.py '<json>'`` with ``provider``,
``model``, ``db``, ``run_id``, ``mode`` (``start`` or ``continue``),
``ledger`` and ``barrier``. The first text delta creates the ``barrier`` file
(fsynced), the signal the parent waits for before it SIGKILLs this process.
Each real tool execution is appended to the ledger and fsynced. Prints one
JSON line: the output, the streamed text and the ephemeral events' kinds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from durable_agent import Agent, Task
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.streaming import Finished, TextDelta

TASK = "What is the weather in Oslo?"


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def main(args: dict[str, Any]) -> dict[str, Any]:
    async def lookup(city: str) -> str:
        """Look up the weather in a city."""
        append(args["ledger"], json.dumps({"city": city, "pid": os.getpid()}))
        return f"sunny in {city}"

    backend = SqliteBackend(args["db"])
    agent = Agent(f"{args['provider']}/{args['model']}", db=backend, tools=[lookup], retry=1)
    if args["mode"] == "start":
        stream = agent.stream_async(Task(TASK, run_id=args["run_id"]))
    else:
        stream = agent.continue_stream_async(args["run_id"])
    text: list[str] = []
    ephemeral: list[dict[str, Any]] = []
    output = None
    try:
        async with stream:
            async for event in stream:
                if isinstance(event, TextDelta):
                    if not text:
                        append(args["barrier"], "first delta out")
                    text.append(event.text)
                elif event.ephemeral:
                    ephemeral.append(event.as_json())
                elif isinstance(event, Finished):
                    output = event.output.output
    finally:
        await backend.close()
    return {"output": output, "text": "".join(text), "ephemeral": ephemeral}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
