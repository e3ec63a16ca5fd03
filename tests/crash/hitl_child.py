"""A child process for the human-in-the-loop tests: pause, decide, cancel, die.

Run as ``python hitl_child.py '<json args>'``; prints one JSON line with the
outcome. Tools append a line to a ledger file (fsynced) for every real
execution, so counts survive a SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from durable_agent import (
    Agent,
    RunCancelledError,
    RunOutput,
    RunState,
    ScriptedModel,
    Task,
    ToolCall,
    tool,
)
from durable_agent.backends.sqlite import SqliteBackend


def note(ledger: str, line: str) -> None:
    with open(ledger, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def build(args: dict[str, Any]) -> Agent:
    ledger = args["ledger"]

    @tool(requires_confirmation=True)
    def refund(order: str, amount: float) -> str:
        """Refund an order."""
        note(ledger, f"refund {order}")
        return f"refunded {amount} for {order}"

    @tool(idempotent=False)
    def charge(card: str) -> str:
        """Charge a card (not safe to repeat)."""
        note(ledger, f"charge {card}")
        if args.get("die_in_charge"):
            os.kill(os.getpid(), signal.SIGKILL)
        return f"charged {card}"

    @tool(external_execution=True)
    def ship(order: str) -> str:
        """Ship an order (the warehouse runs it)."""
        note(ledger, f"ship {order}")
        return "never called"

    @tool(requires_user_input=["account"])
    def transfer(amount: float, account: str) -> str:
        """Send money to an account a human provides."""
        note(ledger, f"transfer {amount} {account}")
        return f"sent {amount} to {account}"

    def slow(step: str) -> str:
        """A step that waits for a gate file (in a worker thread, as sync tools run)."""
        note(ledger, f"slow-start {step}")
        Path(args["entered"]).touch()
        deadline = time.monotonic() + 300  # the parent decides when this wait failed
        while not Path(args["gate"]).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gate {args['gate']} never opened")
            time.sleep(0.02)
        note(ledger, f"slow-end {step}")
        return f"{step} done"

    scripts: dict[str, list[object]] = {
        "refund": [ToolCall("refund", {"order": "A1", "amount": 20}), "refund issued"],
        "charge": [ToolCall("charge", {"card": "4242"}), "charged"],
        "slow": [ToolCall("slow", {"step": "one"}), ToolCall("slow", {"step": "two"}), "done"],
        "ship": [ToolCall("ship", {"order": "A1"}), "shipped"],
        "transfer": [ToolCall("transfer", {"amount": 5}), "sent"],
    }
    model = ScriptedModel(scripts[args["script"]])  # type: ignore[arg-type]
    db = SqliteBackend(args["db"], session_id="hitl")
    return Agent(model, db=db, tools=[refund, charge, ship, transfer, slow], lease_ttl=30)


def describe(out: RunOutput) -> dict[str, Any]:
    return {
        "state": out.state.value,
        "output": out.output,
        "requirements": [
            {"id": r.id, "kind": r.kind, "tool": r.tool_name, "arguments": r.arguments}
            for r in out.requirements
        ],
    }


async def main(args: dict[str, Any]) -> dict[str, Any]:
    agent = build(args)
    mode = args["mode"]
    try:
        if mode == "start":
            out = await agent.do_async(Task("go", run_id=args["run_id"]), return_output=True)
        elif mode == "continue":
            out = await agent.continue_run_async(
                run_id=args["run_id"],
                approvals=args.get("approvals"),
                results=args.get("results"),
                inputs=args.get("inputs"),
                return_output=True,
            )
        elif mode == "list_waiting":
            page = await agent.db.list_runs(states=[RunState.WAITING])
            return {"waiting": [h.run_id for h in page.runs]}
        elif mode == "cancel":
            out = await agent.cancel_run_async(args["run_id"], reason=args["reason"])
        else:
            raise SystemExit(f"unknown mode {mode}")
        return describe(out)
    except RunCancelledError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    finally:
        await agent.db.close()


if __name__ == "__main__":
    started = time.monotonic()
    result = asyncio.run(main(json.loads(sys.argv[1])))
    result["elapsed"] = time.monotonic() - started
    print(json.dumps(result), flush=True)
