"""(f) Per-call overhead of Agent + SDK against the bare SDK call, on a local fake server.

The fake OpenAI and Anthropic servers run in a separate process (so their CPU
is not billed to either side) and answer every request with a short text. For
each SDK, one process measures, alternately and with warm connections:

* bare: ``client.chat.completions.create(...)`` / ``client.messages.create(...)``
  with the official async client, retries off;
* adapter: ``OpenAIModel.request`` / ``AnthropicModel.request`` alone;
* agent: ``Agent(model, db=MemoryBackend()).do_async(task)``: a whole durable
  one-call run (create, start, model call, final answer, lease release), so the
  ratio is the engine's and the adapter's cost per model call;
* agent on SQLite (informational): the same with a ``SqliteBackend`` at
  ``synchronous=FULL``, where the fsyncs of the run's writes dominate.

Target: agent / bare <= 1.2x (median of paired repeats).

Run alone: ``python benchmarks/bench_provider_overhead.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

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

from durable_agent import Agent, ScriptedModel, Task
from durable_agent.backends.memory import MemoryBackend
from durable_agent.records import UserMessage

NAME = "f) provider overhead"
TARGET_RATIO = 1.2
PROMPT = "What is 7 + 7? Reply with just the number."

SLOW = 0.05
"""Seconds the slow servers wait before answering: a fast real provider's latency."""

SERVERS = f"""
servers = {{
    "openai": FakeOpenAIServer(lambda request: "14"),
    "anthropic": FakeAnthropicServer(lambda request: "14"),
    "openai-slow": FakeOpenAIServer(lambda request: Reply(text="14", delay={SLOW})),
    "anthropic-slow": FakeAnthropicServer(lambda request: Reply(text="14", delay={SLOW})),
}}
"""


def bare_call(provider: str, base_url: str) -> tuple[Callable[[], Awaitable[Any]], Any]:
    if provider == "openai":
        import openai

        client: Any = openai.AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0)

        def call() -> Awaitable[Any]:
            return cast(
                "Awaitable[Any]",
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
                ),
            )

        return call, client
    import anthropic

    client = anthropic.AsyncAnthropic(api_key=KEY, base_url=base_url, max_retries=0)

    def call_anthropic() -> Awaitable[Any]:
        return cast(
            "Awaitable[Any]",
            client.messages.create(
                model="claude-haiku-4-5",
                max_tokens=1024,
                messages=[{"role": "user", "content": PROMPT}],
            ),
        )

    return call_anthropic, client


async def per_call(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    """Seconds per call over ``calls`` sequential calls (after a warm-up)."""
    for _ in range(10):
        await call()
    gc.collect()
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls


async def measure(provider: str, base_url: str, calls: int, sqlite_dir: Path) -> dict[str, float]:
    bare, client = bare_call(provider, base_url)
    model = make_model(provider, base_url)
    agent = Agent(model, db=MemoryBackend(), retry=1)
    sqlite = open_sqlite(sqlite_dir / "runs.db")
    durable = Agent(model, db=sqlite, retry=1)
    hi = [UserMessage(content=PROMPT)]
    try:
        return {
            "bare": await per_call(bare, calls),
            "adapter": await per_call(lambda: model.request(hi, tools=[]), calls),
            "agent": await per_call(lambda: agent.do_async(Task(PROMPT)), calls),
            "sqlite": await per_call(lambda: durable.do_async(Task(PROMPT)), max(calls // 4, 10)),
        }
    finally:
        await client.close()
        await sqlite.close()


async def measure_slow(provider: str, base_url: str, calls: int) -> float:
    """Agent / bare per call when the provider takes `SLOW` seconds to answer."""
    bare, client = bare_call(provider, base_url)
    agent = Agent(make_model(provider, base_url), db=MemoryBackend(), retry=1)
    try:
        return await per_call(lambda: agent.do_async(Task(PROMPT)), calls) / await per_call(
            bare, calls
        )
    finally:
        await client.close()


async def engine_alone(calls: int) -> float:
    """Seconds per one-call run with a zero-latency `ScriptedModel`: the engine's own cost."""
    agent = Agent(ScriptedModel(["14"] * (calls + 10)), db=MemoryBackend(), retry=1)
    return await per_call(lambda: agent.do_async(Task(PROMPT)), calls)


def run(quick: bool) -> list[Row]:
    calls = 100 if quick else 300
    repeats = 3 if quick else 7
    slow_calls = 5 if quick else 20
    rows: list[Row] = []
    us = 1e6
    engine = median([asyncio.run(engine_alone(calls)) for _ in range(repeats)])
    rows.append(
        info(NAME, "engine alone per one-call run (ScriptedModel)", f"{engine * us:.0f} us")
    )
    with fake_servers(SERVERS) as urls, scratch_dir() as tmp:
        for provider in ("openai", "anthropic"):
            samples: list[dict[str, float]] = []
            for i in range(repeats):
                directory = tmp / f"{provider}-{i}"
                directory.mkdir()
                samples.append(asyncio.run(measure(provider, urls[provider], calls, directory)))
            bare = median([s["bare"] for s in samples])
            adapter = median([s["adapter"] for s in samples])
            agent = median([s["agent"] for s in samples])
            sqlite = median([s["sqlite"] for s in samples])
            ratio = median([s["agent"] / s["bare"] for s in samples])
            slow = asyncio.run(measure_slow(provider, urls[f"{provider}-slow"], slow_calls))
            rows += [
                info(NAME, f"{provider}: bare SDK call", f"{bare * us:.0f} us"),
                info(
                    NAME,
                    f"{provider}: adapter request (model.request)",
                    f"{adapter * us:.0f} us ({adapter / bare:.2f}x)",
                ),
                info(NAME, f"{provider}: Agent run on MemoryBackend", f"{agent * us:.0f} us"),
                gated(
                    NAME, f"{provider}: Agent / bare SDK per call", ratio, "x", TARGET_RATIO, ".2f"
                ),
                info(
                    NAME,
                    f"{provider}: Agent / bare with {SLOW * 1000:.0f} ms provider latency",
                    f"{slow:.3f}x",
                ),
                info(
                    NAME,
                    f"{provider}: Agent run on SQLite FULL (fsyncs included)",
                    f"{sqlite * us:.0f} us ({sqlite / bare:.2f}x)",
                ),
            ]
    return rows


def main() -> None:
    run_script(__doc__ or NAME, run)


if __name__ == "__main__":
    main()
