"""Crash-test the README's tour agent: kill it after every durable write, resume, compare.

Goal: show `durable_agent.testing.crashtest` on the calculator agent of the
README's API tour (a `ScriptedModel` that calls ``add`` and answers "14").
Each kill point runs the task in a new process that SIGKILLs itself right after
that durable write, then continues the run in another new process, on a scratch
store (``tour.db`` is never touched). ``add`` is pure by inspection (its body
calls nothing), so running it again after a crash is harmless, and every
answer matches: the report passes. The same check from a shell:
``durable-agent crashtest examples/crashtest_tour.py:agent "What is 7 + 7?"``.

Run with: python examples/crashtest_tour.py
"""

from __future__ import annotations

import sys

from durable_agent import Agent, ScriptedModel, ToolCall
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.testing import crashtest


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


agent = Agent(
    ScriptedModel([ToolCall("add", {"a": 7, "b": 7}), "14"]),
    db=SqliteBackend("tour.db", session_id="s1", user_id="u1"),
    retry=3,
    tools=[add],
    system_prompt="You are a careful calculator.",
    name="calculator",
)

if __name__ == "__main__":
    report = crashtest(agent, "What is 7 + 7?")
    print(report.text())
    sys.exit(0 if report.ok else 1)
