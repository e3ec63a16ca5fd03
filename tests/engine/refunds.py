"""The refund desk the human-in-the-loop tests drive: four tools, each needing a person or not.

``refund`` needs a confirmation, ``ship`` is executed outside (the caller gives
its result), ``transfer`` needs a field from the user, ``lookup`` needs nobody;
`Refunds` counts how often each really ran.
"""

from __future__ import annotations

from collections import Counter

from durable_agent import Agent, ScriptedModel, Tool, ToolCall, tool
from tests.engine.conftest import StoreFactory


class Refunds:
    """A refund desk whose effects are counted."""

    def __init__(self) -> None:
        self.ran: Counter[str] = Counter()

    def tools(self) -> list[Tool]:
        @tool(requires_confirmation=True)
        def refund(order: str, amount: float) -> str:
            """Refund an order."""
            self.ran["refund"] += 1
            return f"refunded {amount} for {order}"

        @tool(external_execution=True)
        def ship(order: str) -> str:
            """Ship an order (done by the warehouse system)."""
            self.ran["ship"] += 1
            return "never called"

        @tool(requires_user_input=["account"])
        def transfer(amount: float, account: str) -> str:
            """Transfer money to an account."""
            self.ran["transfer"] += 1
            return f"sent {amount} to {account}"

        def lookup(order: str) -> str:
            """Look an order up."""
            self.ran["lookup"] += 1
            return f"{order}: paid"

        return [refund, ship, transfer, lookup]


def agent_for(store: StoreFactory, desk: Refunds, script: list[object]) -> Agent:
    return Agent(ScriptedModel(script), db=store(), tools=desk.tools())  # type: ignore[arg-type]


REFUND = ToolCall("refund", {"order": "A1", "amount": 12.5})
