"""Regenerate the state diagrams of the docs from durable_agent/fsm.py.

Goal: the diagrams in docs/state-machine.md and docs/img/ are drawn from the
one transition table, never by hand. This script rewrites the Mermaid blocks
between the ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` lines
of docs/state-machine.md, and renders docs/img/machine.svg and
docs/img/run-path.svg with Graphviz (``pip install -e ".[diagrams]"``).
tests/cli/test_docs.py fails when the committed Mermaid, or the labels of the
committed SVGs, differ from what this script writes.

Run with: python docs/_tools/gen_diagrams.py
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from pathlib import Path

from durable_agent import (
    Agent,
    ModelHTTPError,
    RunFailedError,
    ScriptedFailure,
    ScriptedModel,
    Task,
    ToolCall,
    tool,
)
from durable_agent.diagram import (
    RunPath,
    machine_diagram,
    machine_mermaid,
    run_diagram,
    run_mermaid,
)
from durable_agent.records import StoredRun

DOCS = Path(__file__).resolve().parents[1]
PAGE = DOCS / "state-machine.md"
IMAGES = DOCS / "img"
EXAMPLE_RUN_ID = "refund-42"


def lookup_order(order: str) -> str:
    """Find an order."""
    return f"order {order}: 2 items, EUR 49.90, paid"


@tool(requires_confirmation=True)
def refund(order: str, amount: float) -> str:
    """Refund an order; a human approves it first."""
    return f"refunded EUR {amount:.2f} on {order}"


def example_run() -> StoredRun:
    """A support run that looks an order up, waits for approval, fails once, and finishes.

    Its path: start, tool_calls, tools_done, tool_calls, needs_human, decided,
    tools_done, fail (an HTTP 503 with retries off), resume, final_answer.
    """

    async def go() -> StoredRun:
        model = ScriptedModel(
            [
                ToolCall("lookup_order", {"order": "42"}),
                ToolCall("refund", {"order": "42", "amount": 49.9}),
                "Order 42 is refunded: EUR 49.90.",
            ],
            failures=[ScriptedFailure(turn=2, error=ModelHTTPError(503, "overloaded"))],
        )
        agent = Agent(model, db="memory://", tools=[lookup_order, refund], retry=1, name="support")
        waiting = await agent.do_async(
            Task("Refund order 42.", run_id=EXAMPLE_RUN_ID), return_output=True
        )
        with contextlib.suppress(RunFailedError):  # the scripted HTTP 503, recorded
            await agent.continue_run_async(
                run_id=EXAMPLE_RUN_ID, approvals={waiting.requirements[0].id: True}
            )
        await agent.continue_run_async(run_id=EXAMPLE_RUN_ID)
        return await agent.db.load_run(EXAMPLE_RUN_ID)

    return asyncio.run(go())


def generated_blocks() -> dict[str, str]:
    """The Mermaid text of each generated block of the page, by name."""
    return {
        "machine": machine_mermaid(),
        "example-run": run_mermaid(RunPath.from_stored(example_run())),
    }


_BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) -->\n```mermaid\n)"
    r"(?P<body>.*?)"
    r"(```\n<!-- end generated -->)",
    re.S,
)


def committed_blocks(text: str) -> dict[str, str]:
    """The Mermaid text of each generated block as committed in the page."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def rewrite(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each generated block replaced by ``blocks[name]``."""
    return _BLOCK.sub(lambda m: m[1] + blocks[m["name"]] + m[4], text)


def main() -> int:
    blocks = generated_blocks()
    page = PAGE.read_text(encoding="utf-8")
    missing = set(blocks) - set(committed_blocks(page))
    if missing:
        print(f"{PAGE}: no generated block for {', '.join(sorted(missing))}", file=sys.stderr)
        return 1
    PAGE.write_text(rewrite(page, blocks), encoding="utf-8")
    IMAGES.mkdir(exist_ok=True)
    machine_diagram(format="svg").save(IMAGES / "machine.svg")
    run_diagram(example_run(), format="svg").save(IMAGES / "run-path.svg")
    for written in (PAGE, IMAGES / "machine.svg", IMAGES / "run-path.svg"):
        print(f"wrote {written.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
