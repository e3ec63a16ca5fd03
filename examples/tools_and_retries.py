"""Tools, parallel calls, ToolRetry and RetryPolicy, offline.

Goal: show how tools are written (plain sync or async functions with type
hints; the JSON schema the model sees comes from them), that the calls of one
model turn run concurrently with each result recorded as it completes, how a
tool sends a correctable error back to the model with `ToolRetry`, how a tool
with an outside effect uses ``ctx.idempotency_key``, and how `RetryPolicy`
retries a flaky model call (each failed attempt is recorded too).

Run with: python examples/tools_and_retries.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from durable_agent import (
    Agent,
    ModelHTTPError,
    RetryPolicy,
    ScriptedFailure,
    ScriptedModel,
    Task,
    ToolCall,
    ToolContext,
    ToolRetry,
    tool,
)
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import (
    Event,
    ModelAttemptFailedEvent,
    ModelResponseEvent,
    ToolFinishedEvent,
    ToolStartedEvent,
)

TEMPERATURES = {"Oslo": 4, "Lima": 19}

outbox: dict[str, str] = {}
"""A stand-in for an email service that deduplicates by idempotency key."""


async def get_weather(city: str) -> str:
    """Current temperature in a city, in degrees Celsius."""
    await asyncio.sleep(0.05)  # parallel calls of one turn overlap
    if city not in TEMPERATURES:
        # Not a failure of the run: the model reads this and can correct itself.
        raise ToolRetry(f"unknown city {city!r}; known cities: {', '.join(TEMPERATURES)}")
    return f"{TEMPERATURES[city]} C in {city}"


@tool(name="send_report")
def send(to: str, text: str, ctx: ToolContext) -> str:
    """Email a short report. Outside effect: keyed by the call's idempotency key."""
    # After a crash between the effect and its recorded result, this call runs
    # again with the same key (at-least-once); the key makes the effect happen once.
    outbox.setdefault(ctx.idempotency_key, f"to {to}: {text}")
    return f"sent (message id {ctx.idempotency_key})"


def describe(event: Event) -> str:
    """A few words about what an event recorded."""
    match event:
        case ToolStartedEvent():
            return f"intent: {event.name} [{event.call_id}]"
        case ToolFinishedEvent():
            error = " (error result)" if event.result.is_error else ""
            return f"result: {event.result.content}{error}"
        case ModelAttemptFailedEvent():
            return f"attempt {event.attempt}: {event.error.message}, retry in {event.retry_in:.2f}s"
        case ModelResponseEvent():
            calls = ", ".join(c.name for c in event.message.tool_calls)
            return f"model asks for {calls}" if calls else f"answer: {event.message.content}"
        case _:
            return ""


async def main(directory: Path) -> None:
    model = ScriptedModel(
        [
            # Turn 0: three calls at once; one names a city the tool does not know.
            [
                ToolCall("get_weather", {"city": "Oslo"}),
                ToolCall("get_weather", {"city": "Lima"}),
                ToolCall("get_weather", {"city": "Atlantis"}),
            ],
            ToolCall("send_report", {"to": "team@example.com", "text": "Oslo 4 C, Lima 19 C"}),
            "Reported: Oslo 4 C, Lima 19 C (Atlantis is not a real city).",
        ],
        # The provider rate-limits turn 1 twice; the third attempt succeeds.
        failures=[ScriptedFailure(turn=1, error=ModelHTTPError(429, "slow down"), times=2)],
    )
    retry = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.1)

    async with SqliteBackend(directory / "durable.db") as db:
        agent = Agent(model, db=db, retry=retry, tools=[get_weather, send])
        print("the model sees:", agent.tools["get_weather"].definition().parameters)
        result = await agent.do_async(Task("Weather report for the team"), return_output=True)
        print(f"state: {result.state}, answer: {result.output!r}")

        stored = await db.load_run(result.run_id)
        print("stored log:")
        for event in stored.events:
            label = event.trigger or event.kind
            print(f"  {event.seq:>2} {event.state:<10} {label:<20} {describe(event)}".rstrip())

    errors = [m for m in result.messages if m.role == "tool" and m.is_error]
    assert [m.content for m in errors] == ["unknown city 'Atlantis'; known cities: Oslo, Lima"]
    assert result.usage.requests == 5, "3 model turns + 2 failed attempts, each recorded"
    assert len(outbox) == 1
    print(f"outbox: {list(outbox.values())}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
