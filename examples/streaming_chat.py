"""A streaming chat turn through the OpenAI SDK, offline: text as it comes, durable anyway.

Goal: show ``agent.stream_async`` in a chat loop: the answer is printed as it
is generated, tool calls and their results appear as they happen, and the
connection cut mid-answer (injected by the local fake server) is visible as
discarded text followed by a retried stream, as the ``retry=`` policy says.
Only complete answers are stored; a follower (``follow``, here in the same
process; in a web server, in another) replays the stored events of the run.

It runs against a local `FakeOpenAIServer` that streams server-sent events as
the real API does, so no key and no network are needed.

Run with: python examples/streaming_chat.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from durable_agent import Agent, RetryPolicy, ToolCall, follow, tool
from durable_agent.models.openai import OpenAIModel
from durable_agent.streaming import (
    Finished,
    ModelCallStarted,
    StoredEvent,
    TextDelta,
    TextDiscarded,
    ToolCallsAsked,
    ToolFinished,
)
from durable_agent.testing import FakeOpenAIServer, Fault, Reply


@tool
def weather(city: str) -> str:
    """Today's weather in a city."""
    return f"sunny and 21 °C in {city}"


SCRIPT = [
    ToolCall("weather", {"city": "Oslo"}),
    Fault.cut_stream(after=2, text="It is sunny in Oslo, so a walk along"),
    Reply(text="It is sunny and 21 °C in Oslo: a good day for a walk by the fjord.",
          chunk_size=6, chunk_delay=0.01),
]


async def main(directory: Path) -> None:
    async with FakeOpenAIServer(SCRIPT) as server:
        model = OpenAIModel("gpt-4o-mini", base_url=server.base_url, api_key="offline-demo-key")
        retry = RetryPolicy(attempts=2, initial_delay=0.05)
        async with Agent(model, db=f"sqlite:///{directory / 'chat.db'}", tools=[weather],
                         retry=retry) as agent:
            print("you: What is the weather in Oslo?")
            async with agent.stream_async("What is the weather in Oslo?") as stream:
                async for event in stream:
                    match event:
                        case ModelCallStarted() if event.attempt > 1:
                            print(f"\n[attempt {event.attempt} streams anew]")
                        case TextDelta():
                            print(event.text, end="", flush=True)
                        case TextDiscarded():
                            print(f"\n[discarded {len(event.text)} characters: {event.reason}]")
                        case ToolCallsAsked():
                            print(f"[asks for {', '.join(c.name for c in event.calls)}]")
                        case ToolFinished():
                            print(f"[tool result: {event.result}]")
                        case Finished():
                            print(f"\n[done: {event.output.state.value}, "
                                  f"{event.output.usage.output_tokens} output tokens]")
            run_id = stream.run_id
            stored = [e async for e in follow(agent.db, run_id) if isinstance(e, StoredEvent)]
            print(f"the store holds {len(stored)} events for run {run_id}: "
                  + ", ".join(e.record.kind for e in stored))
            assert stream.output is not None
            assert stream.output.output is not None
            assert stream.output.output.startswith("It is sunny and 21 °C")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
