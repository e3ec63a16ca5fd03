"""One process of the cross-process provider test: start or continue a run through a real SDK.

Run as ``python tests/providers/child.py '<json>'`` with ``provider``,
``model``, ``db``, ``run_id``, ``mode`` (``start`` or ``continue``) and
``ledger``. The API key and base URL come from the provider's environment
variables, as in production. Each real tool execution is appended to the
ledger file and fsynced before the tool returns, so the count survives a
SIGKILL. Prints one JSON line with the outcome unless it is killed first.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from durable_agent import Agent, Task
from durable_agent.backends.sqlite import SqliteBackend

TASK = "What is the weather in Oslo?"


def record(ledger: str, entry: dict[str, Any]) -> None:
    line = (json.dumps({**entry, "pid": os.getpid()}) + "\n").encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


async def main(args: dict[str, Any]) -> dict[str, Any]:
    ledger = args["ledger"]

    async def lookup(city: str) -> str:
        """Look up the weather in a city."""
        record(ledger, {"city": city})
        return f"sunny in {city}"

    backend = SqliteBackend(args["db"])
    agent = Agent(f"{args['provider']}/{args['model']}", db=backend, tools=[lookup], retry=1)
    try:
        if args["mode"] == "start":
            output = await agent.do_async(Task(TASK, run_id=args["run_id"]))
        else:
            output = await agent.continue_run_async(run_id=args["run_id"])
    finally:
        await backend.close()
    return {"output": output, "pid": os.getpid()}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
