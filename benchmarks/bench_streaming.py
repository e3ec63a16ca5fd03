"""(h) Streaming overhead: time to first delta and cost per delta, against the bare SDK stream.

The fake OpenAI and Anthropic servers run in a separate process and stream a
reply of `DELTAS` text deltas of 4 characters. For each SDK, one process
measures, alternately and with warm connections:

* bare: ``client.chat.completions.create(stream=True, ...)`` /
  ``client.messages.create(stream=True, ...)`` with the official async client,
  iterated to the end;
* adapter: ``OpenAIModel.stream`` / ``AnthropicModel.stream`` alone;
* agent: ``agent.stream_async(task)`` on a ``MemoryBackend``: a whole durable
  one-call run (create, start, streamed model call, final answer stored, lease
  released), consumed to its `Finished` event;
* agent on SQLite (informational): the same with ``SqliteBackend`` at
  ``synchronous=FULL``, whose fsync of the run's first write comes before the
  first delta.

Each sample starts on a settled event loop (`settled`: the previous sample's
clean-up done). Time to first delta is from the call to the first text delta
the caller sees; per-delta cost is (whole stream - time to first delta) / deltas. Targets: the
agent's time to first delta <= 1 ms more than the bare SDK's, on the memory
store (the median of paired samples); per-delta cost is reported.

Run alone: ``python benchmarks/bench_streaming.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from _common import (
    Row,
    gated,
    info,
    median,
    open_sqlite,
    run_script,
    scratch_dir,
)
from _fake_providers import KEY, fake_servers, make_model

from durable_agent import Agent, Task
from durable_agent.backends.memory import MemoryBackend
from durable_agent.models import ChatModel, ModelDelta
from durable_agent.records import UserMessage
from durable_agent.streaming import TextDelta

NAME = "h) streaming"
TARGET_TTFD_MS = 1.0
PROMPT = "Tell me a long story."
DELTAS = 200

SERVERS = f"""
text = "abcd" * {DELTAS}
servers = {{
    "openai": FakeOpenAIServer(lambda request: Reply(text=text, chunk_size=4)),
    "anthropic": FakeAnthropicServer(lambda request: Reply(text=text, chunk_size=4)),
}}
"""

Timed = Callable[[], AsyncIterator[None]]
"""A stream to time: yields once per text delta the caller sees."""


def bare_stream(provider: str, base_url: str) -> tuple[Timed, Any]:
    messages: Any = [{"role": "user", "content": PROMPT}]
    if provider == "openai":
        import openai

        client: Any = openai.AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0)

        async def openai_deltas() -> AsyncIterator[None]:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield None

        return openai_deltas, client
    import anthropic

    client = anthropic.AsyncAnthropic(api_key=KEY, base_url=base_url, max_retries=0)

    async def anthropic_deltas() -> AsyncIterator[None]:
        stream = await client.messages.create(
            model="claude-haiku-4-5", max_tokens=1024, messages=messages, stream=True
        )
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                yield None

    return anthropic_deltas, client


def adapter_stream(model: ChatModel) -> Timed:
    hi = [UserMessage(content=PROMPT)]

    async def deltas() -> AsyncIterator[None]:
        async for item in model.stream(hi, tools=[]):
            if isinstance(item, ModelDelta):
                yield None

    return deltas


def agent_stream(agent: Agent) -> Timed:
    async def deltas() -> AsyncIterator[None]:
        async with agent.stream_async(Task(PROMPT)) as stream:
            async for event in stream:
                if isinstance(event, TextDelta):
                    yield None

    return deltas


async def settled() -> None:
    """Let the loop finish what the last stream left behind before the next one is timed.

    At ``[DONE]`` the openai SDK leaves its SSE generators unclosed; the event
    loop closes them one by one over its next passes (measured: four
    generators, a self-pipe wake-up each). Back to back, that clean-up lands in
    whichever sample comes next, and costs it according to where that path
    first passes the loop: before its request for `stream_async` (its run
    task starts, its first write), after the request is out for the bare SDK.
    Every path gets the same pause, so each sample times its own work only.
    """
    await asyncio.sleep(0.002)


async def timed(stream: Timed) -> tuple[float, float]:
    """(seconds to the first delta, seconds per later delta) of one stream."""
    started = time.perf_counter()
    first = 0.0
    count = 0
    async for _ in stream():
        if count == 0:
            first = time.perf_counter() - started
        count += 1
    total = time.perf_counter() - started
    return first, (total - first) / max(count - 1, 1)


async def measure(
    provider: str, base_url: str, repeats: int, directory: Path
) -> dict[str, list[tuple[float, float]]]:
    bare, client = bare_stream(provider, base_url)
    model = make_model(provider, base_url)
    memory = Agent(model, db=MemoryBackend(), retry=1)
    sqlite = open_sqlite(directory / "runs.db")
    durable = Agent(model, db=sqlite, retry=1)
    streams = {
        "bare": bare,
        "adapter": adapter_stream(model),
        "agent": agent_stream(memory),
        "sqlite": agent_stream(durable),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in streams}
    try:
        for stream in streams.values():  # warm connections and caches
            for _ in range(3):
                await timed(stream)
        gc.collect()
        for _ in range(repeats):
            for name, stream in streams.items():  # alternated: drift hits all alike
                await settled()
                samples[name].append(await timed(stream))
    finally:
        await client.close()
        await sqlite.close()
    return samples


def run(quick: bool) -> list[Row]:
    repeats = 15 if quick else 60
    rows: list[Row] = []
    us, ms = 1e6, 1e3
    with fake_servers(SERVERS) as urls, scratch_dir() as tmp:
        for provider in ("openai", "anthropic"):
            directory = tmp / provider
            directory.mkdir()
            samples = asyncio.run(measure(provider, urls[provider], repeats, directory))
            ttfd = {name: median([s[0] for s in values]) for name, values in samples.items()}
            per = {name: median([s[1] for s in values]) for name, values in samples.items()}
            extra = median(
                [a[0] - b[0] for a, b in zip(samples["agent"], samples["bare"], strict=True)]
            )
            extra_sqlite = median(
                [a[0] - b[0] for a, b in zip(samples["sqlite"], samples["bare"], strict=True)]
            )
            rows += [
                info(
                    NAME, f"{provider}: bare SDK time to first delta", f"{ttfd['bare'] * ms:.2f} ms"
                ),
                info(
                    NAME, f"{provider}: adapter (model.stream) time to first delta",
                    f"{ttfd['adapter'] * ms:.2f} ms",
                ),
                info(
                    NAME, f"{provider}: stream_async on MemoryBackend time to first delta",
                    f"{ttfd['agent'] * ms:.2f} ms",
                ),
                gated(
                    NAME, f"{provider}: stream_async - bare SDK, time to first delta",
                    extra * ms, " ms", TARGET_TTFD_MS, ".2f",
                ),
                info(
                    NAME, f"{provider}: stream_async on SQLite FULL time to first delta",
                    f"{ttfd['sqlite'] * ms:.2f} ms (the run's first write is fsynced first)",
                ),
                info(
                    NAME, f"{provider}: stream_async on SQLite FULL - bare SDK, first delta",
                    f"{extra_sqlite * ms:.2f} ms",
                ),
                info(
                    NAME, f"{provider}: per delta, bare SDK / adapter / stream_async",
                    f"{per['bare'] * us:.1f} / {per['adapter'] * us:.1f} / "
                    f"{per['agent'] * us:.1f} us (+{(per['agent'] - per['bare']) * us:.1f} us)",
                ),
            ]
    return rows


def main() -> None:
    run_script(__doc__ or NAME, run)


if __name__ == "__main__":
    main()
