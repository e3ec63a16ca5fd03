"""A refund agent pauses for approval; another process approves; the answer arrives.

Goal: show that a pause for a human is durable. Process 1 starts the run and
exits while it is WAITING. Process 2 (say, a web handler) lists the waiting
runs, approves the refund by requirement id with plain data, and the run
finishes there. The parent then reads the answer from the store. Offline: the
model is a ScriptedModel, the store SQLite in a temporary folder.

Run with: python examples/approval_across_processes.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from durable_agent import Agent, RunState, ScriptedModel, Task, ToolCall, tool
from durable_agent.backends.sqlite import SqliteBackend


def build_agent(db_path: str) -> Agent:
    """The same agent definition in every process: model, tools, store."""

    @tool(requires_confirmation=True)
    def refund(order: str, amount: float) -> str:
        """Refund an order; a human approves each refund first."""
        return f"refunded {amount:.2f} EUR for order {order}"

    model = ScriptedModel(
        [ToolCall("refund", {"order": "A-1001", "amount": 49.9}), "Your refund is on its way."]
    )
    return Agent(model, db=SqliteBackend(db_path, session_id="support"), tools=[refund])


async def start(db_path: str) -> None:
    """Process 1: start the run; it pauses and this process exits."""
    agent = build_agent(db_path)
    out = await agent.do_async(Task("Please refund order A-1001", run_id="refund-A-1001"),
                               return_output=True)
    (req,) = out.requirements
    print(f"[process 1] run {out.run_id} is {out.state}: {req.kind} of "
          f"{req.tool_name}({req.arguments}) as requirement {req.id!r}")
    await agent.db.close()


async def approve(db_path: str) -> None:
    """Process 2: find waiting runs and approve them by id, with plain data."""
    agent = build_agent(db_path)
    page = await agent.db.list_runs(session_id="support", states=[RunState.WAITING])
    for header in page.runs:
        waiting = await agent.get_run_async(header.run_id)
        approvals: dict[str, bool | str] = {r.id: True for r in waiting.requirements}
        print(f"[process 2] approving {list(approvals)} of run {header.run_id}")
        answer = await agent.continue_run_async(run_id=header.run_id, approvals=approvals)
        print(f"[process 2] the run finished: {answer!r}")
    await agent.db.close()


async def show(db_path: str) -> None:
    """Back in the parent: the answer is in the store."""
    async with SqliteBackend(db_path) as store:
        stored = await store.load_run("refund-A-1001")
    print(f"[parent] state {stored.header.state}; events: "
          + ", ".join(e.kind for e in stored.events))


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        db_path = str(Path(folder) / "support.db")
        for step in ("start", "approve"):
            subprocess.run([sys.executable, __file__, step, db_path], check=True)
        asyncio.run(show(db_path))


if __name__ == "__main__":
    if len(sys.argv) == 3:
        asyncio.run({"start": start, "approve": approve}[sys.argv[1]](sys.argv[2]))
    else:
        main()
