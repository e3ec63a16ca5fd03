"""A child process for the tool-identity and reconcile tests: start a charge, die in it, resume.

Run as ``python child.py '<json args>'``; prints one JSON line with the run's
outcome. The ``charge`` tool appends a line to a ledger file (fsynced) for
every real execution, with the idempotency key, so counts survive a SIGKILL.
With ``block`` it then creates the ``entered`` file and waits for ever: the
parent kills the process at that barrier, between the intent and the result
(``block_before_effect``: the same, before the effect, which so never lands).

``tools`` picks the tool set of this deploy: ``v1`` (``charge(card)``),
``renamed`` (the same function registered as ``charge_v2``), ``removed`` (no
charge tool) and ``schema`` (``charge(card, amount)``). ``reconcile`` gives
``charge`` a reconcile function answering ``landed``, ``not_landed`` or
``unknown`` (``landed`` reads the ledger: it answers from the effect itself).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from durable_agent import (
    Agent,
    ReconcileContext,
    Reconciliation,
    RunOutput,
    ScriptedModel,
    Task,
    Tool,
    ToolCall,
    ToolContext,
)
from durable_agent.backends.sqlite import SqliteBackend


def note(ledger: str, line: str) -> None:
    with open(ledger, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def build(args: dict[str, Any]) -> Agent:
    ledger = args["ledger"]

    def effect(card: str, ctx: ToolContext) -> str:
        if not args.get("block_before_effect"):
            note(ledger, f"charge {card} {ctx.idempotency_key}")
        if args.get("block") or args.get("block_before_effect"):
            Path(args["entered"]).touch()
            deadline = time.monotonic() + 300  # the parent kills us long before
            while time.monotonic() < deadline:
                time.sleep(0.05)
        return f"charged {card}"

    def charge(card: str, ctx: ToolContext) -> str:
        """Charge a card."""
        return effect(card, ctx)

    def charge_amount(card: str, amount: int, ctx: ToolContext) -> str:
        """Charge a card an amount."""
        return effect(card, ctx)

    def reconcile(ctx: ReconcileContext) -> Reconciliation:
        note(ledger, f"reconcile {ctx.tool_name} {ctx.idempotency_key} {ctx.arguments['card']}")
        match args["reconcile"]:
            case "landed":
                lines = Path(ledger).read_text().splitlines()
                assert f"charge 4242 {ctx.idempotency_key}" in lines, lines
                return Reconciliation.landed({"charged": ctx.arguments["card"], "found": True})
            case "not_landed":
                return Reconciliation.not_landed()
            case _:
                return Reconciliation.unknown()

    idempotent = bool(args.get("idempotent", True))
    options: dict[str, Any] = {"idempotent": idempotent}
    if args.get("reconcile"):
        options["reconcile"] = reconcile
    tools = {
        "v1": [Tool(charge, **options)],
        "renamed": [Tool(charge, name="charge_v2", **options)],
        "removed": [],
        "schema": [Tool(charge_amount, name="charge", **options)],
    }[args.get("tools", "v1")]
    model = ScriptedModel([ToolCall("charge", {"card": "4242"}), "all done"])
    db = SqliteBackend(args["db"], session_id="safety")
    return Agent(model, db=db, tools=tools, version=args.get("version"))


def describe(out: RunOutput) -> dict[str, Any]:
    return {
        "state": out.state.value,
        "output": out.output,
        "requirements": [
            {"id": r.id, "kind": r.kind, "tool": r.tool_name, "detail": r.detail}
            for r in out.requirements
        ],
    }


async def main(args: dict[str, Any]) -> dict[str, Any]:
    agent = build(args)
    try:
        if args["mode"] == "start":
            out = await agent.do_async(Task("charge it", run_id=args["run_id"]), return_output=True)
        else:
            out = await agent.continue_run_async(
                run_id=args["run_id"],
                approvals=args.get("approvals"),
                results=args.get("results"),
                return_output=True,
            )
        return describe(out)
    finally:
        await agent.db.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
