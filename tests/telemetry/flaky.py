"""A store that fails its second append and every release: a run left stranded, a lease owed.

Also runnable as a script (``python tests/telemetry/flaky.py``): it strands a
run with logging left unconfigured, for the test that nothing is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from durable_agent import Agent, ScriptedModel, ToolCall
from durable_agent.backends.memory import MemoryBackend
from durable_agent.errors import StoreUnavailableError
from durable_agent.records import Event, Lease


class FlakyBackend(MemoryBackend):
    """Fails append number ``fail_append`` and every lease release."""

    def __init__(self, fail_append: int = 2) -> None:
        super().__init__()
        self.appends = 0
        self.fail_append = fail_append

    async def append(self, run_id: str, events: Sequence[Event], **kwargs: Any) -> Lease:
        self.appends += 1
        if self.appends == self.fail_append:
            raise StoreUnavailableError("the store went away")
        return await super().append(run_id, events, **kwargs)

    async def release_lease(self, run_id: str, lease: Lease) -> None:
        raise StoreUnavailableError("the store went away")


async def echo(text: str) -> str:
    """Say ``text`` back."""
    return text


def agent(backend: FlakyBackend) -> Agent:
    """An agent whose run strands on ``backend`` (its second append fails)."""
    script: list[str | ToolCall] = [ToolCall("echo", {"text": "hi"}), "done"]
    return Agent(ScriptedModel(script), db=backend, tools=[echo], retry=1)


async def strand() -> None:
    """Start a run that ends stranded with its lease owed; swallow the store error."""
    with contextlib.suppress(StoreUnavailableError):
        await agent(FlakyBackend()).do_async("hello")


if __name__ == "__main__":
    asyncio.run(strand())
