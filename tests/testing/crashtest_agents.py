"""Agents the crash-test tests run in child processes (importable, so children can load them).

``mixed`` has one tool of each kind: ``charge`` changes the outside world
without reading its idempotency key (the careless one crashtest must flag),
``book`` does the same but is ``idempotent=False`` (in doubt, a human decides),
``refund`` passes its key on, and ``add`` is pure. Their effects go to the file
``CRASHTEST_EFFECTS`` names (one line per effect), when set.
"""

from __future__ import annotations

import os

from durable_agent import Agent, ScriptedModel, ToolCall, ToolContext, tool


def _effect(line: str) -> None:
    path = os.environ.get("CRASHTEST_EFFECTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def charge(cents: int, ctx: ToolContext) -> str:
    """Charge the customer; ignores the idempotency key (a re-run charges again)."""
    _effect(f"charge {cents} attempt {ctx.attempt}")
    return f"charged {cents}"


@tool(idempotent=False)
def book(room: str, ctx: ToolContext) -> str:
    """Book a room; ignores its key, but a call in doubt waits for a human."""
    _effect(f"book {room}")
    return f"booked {room}"


def refund(cents: int, ctx: ToolContext) -> str:
    """Refund, passing the idempotency key on to the payment service."""
    _effect(f"refund {cents} key {ctx.idempotency_key}")
    return f"refunded {cents}"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def mixed() -> Agent:
    """A new agent each call (the children build their own)."""
    return Agent(
        ScriptedModel(
            [
                ToolCall("charge", {"cents": 500}),
                ToolCall("book", {"room": "12"}),
                [ToolCall("refund", {"cents": 100}), ToolCall("add", {"a": 1, "b": 2})],
                "charged, booked, refunded, added",
            ]
        ),
        db="memory://",
        tools=[charge, book, refund, add],
        name="mixed",
    )


careful = Agent(
    ScriptedModel([[ToolCall("refund", {"cents": 100}), ToolCall("add", {"a": 1, "b": 2})],
                   "done"]),
    db="memory://",
    tools=[refund, add],
    name="careful",
)
"""An agent defined at module level: crashtest finds it by the object."""


@tool(requires_confirmation=True)
def delete_everything() -> str:
    """Needs a human's approval first."""
    return "deleted"


asks = Agent(
    ScriptedModel([ToolCall("delete_everything"), "gone"]),
    db="memory://",
    tools=[delete_everything],
    name="asks",
)
"""Its clean run waits for a human: crashtest cannot run it on its own."""


def recursive() -> Agent:
    """A factory whose import-time twin (below) calls crashtest, as a careless script would."""
    return careful


if os.environ.get("CRASHTEST_RECURSE"):
    from durable_agent.testing import crashtest

    crashtest(recursive, "again")


def drifting() -> Agent:
    """Takes one tool turn in the first two builds, none later: not deterministic.

    Each build counts itself in the file ``CRASHTEST_COUNTER`` names: crashtest's own
    process loads it first, then the clean run's child; every child after them drifts.
    """
    path = os.environ["CRASHTEST_COUNTER"]
    with open(path, "a", encoding="utf-8") as f:
        f.write("x")
    with open(path, encoding="utf-8") as f:
        first = len(f.read()) <= 2
    script: list[str | ToolCall] = [ToolCall("add", {"a": 1, "b": 1}), "2"] if first else ["2"]
    return Agent(ScriptedModel(script), db="memory://", tools=[add], name="drifting")
