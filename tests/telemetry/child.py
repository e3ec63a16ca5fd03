"""One process of the telemetry crash test: a traced run that stops inside its second tool call.

Run as ``python tests/telemetry/child.py <db> <spans.jsonl> <ready-file> <run_id>``.
It records spans with the OpenTelemetry SDK to ``spans.jsonl`` (one JSON line
per finished span, fsynced at once, so what ended before a SIGKILL is kept),
and drives `SCRIPT` on the SQLite store ``db``. Inside the call for
``ARGMARK-Rome`` it creates ``ready-file`` and waits to be killed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from durable_agent import Agent, ScriptedModel, Task, ToolCall, telemetry

SCRIPT: list[str | ToolCall] = [
    ToolCall("lookup", {"city": "ARGMARK-Oslo"}),
    ToolCall("lookup", {"city": "ARGMARK-Rome"}),
    "ANSWERMARK: sunny everywhere",
]
PROMPT = "PROMPTMARK: what is the weather?"
SYSTEM = "SYSTEMMARK: you are a weather bot"


class FileExporter(SpanExporter):
    """Appends each finished span as one JSON line and fsyncs it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as out:
            for span in spans:
                out.write(span.to_json(indent=None) + "\n")
            out.flush()
            os.fsync(out.fileno())
        return SpanExportResult.SUCCESS


def make_agent(db: str, hold: Path | None) -> Agent:
    async def lookup(city: str) -> str:
        """The weather in ``city``."""
        if hold is not None and city == "ARGMARK-Rome":
            hold.write_text("in the tool")  # noqa: ASYNC240 (the barrier, then the kill)
            await asyncio.Event().wait()  # until SIGKILL
        return f"RESULTMARK: sunny in {city}"

    return Agent(
        ScriptedModel(SCRIPT),
        db=db,
        tools=[lookup],
        system_prompt=SYSTEM,
        name="weather",
        retry=1,
    )


async def main(db: str, spans: Path, ready: Path, run_id: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(spans)))
    telemetry.configure(tracer_provider=provider)
    agent = make_agent(db, ready)
    await agent.do_async(Task(PROMPT, run_id=run_id))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]))
