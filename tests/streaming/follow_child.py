"""The two processes of the follower test: a runner that streams a run, and a follower.

``python tests/streaming/follow_child.py run '<json>'`` streams a run whose
tool ``gate(n)`` waits for the file ``go<n>`` in ``gates`` (so the test decides
when the run moves on); it creates ``started`` once the run exists.
``python tests/streaming/follow_child.py follow '<json>'`` follows the run
from ``after_seq`` and appends one JSON line per event to ``out`` (fsynced
before the next is read), so a SIGKILL loses no line it wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from durable_agent import Agent, ScriptedModel, Task, ToolCall, follow, open_backend

ANSWER = "Both gates are open now, and the run is over."


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def runner(args: dict[str, Any]) -> None:
    gates = Path(args["gates"])

    async def gate(n: int) -> str:
        """Wait for the test to open gate n."""
        deadline = time.monotonic() + 120
        while not (gates / f"go{n}").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {n} never opened")
            await asyncio.sleep(0.01)
        return f"gate {n} open"

    model = ScriptedModel(
        [ToolCall("gate", {"n": 1}), ToolCall("gate", {"n": 2}), ANSWER],
        chunk_size=3, chunk_delay=0.005,
    )
    async with Agent(model, db=open_backend(args["db"]), tools=[gate]) as agent:
        stream = agent.stream_async(Task("open the gates", run_id=args["run_id"]))
        async with stream:
            async for _ in stream:
                if not (gates / "started").exists():
                    append(str(gates / "started"), "yes")


async def follower(args: dict[str, Any]) -> None:
    backend = open_backend(args["db"])
    try:
        async for event in follow(
            backend, args["run_id"], after_seq=args["after_seq"], poll=0.01, max_poll=0.1
        ):
            entry: dict[str, Any] = {"kind": event.kind, "ephemeral": event.ephemeral}
            if hasattr(event, "seq"):
                entry["seq"] = event.seq
            if event.kind == "text_delta":
                entry["text"] = event.text
            append(args["out"], json.dumps(entry))
    finally:
        await backend.close()


if __name__ == "__main__":
    role, payload = sys.argv[1], json.loads(sys.argv[2])
    asyncio.run(runner(payload) if role == "run" else follower(payload))
