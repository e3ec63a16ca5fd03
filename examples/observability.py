"""Traces and metrics of a run that is killed and resumed in another process, offline.

Goal: show what `durable_agent.telemetry` records with OpenTelemetry. A child
process starts a run with two tool turns and is SIGKILLed inside the second
tool call; this process resumes it. Each process is one *segment* of the run:
an ``invoke_agent`` span with ``chat`` and ``execute_tool`` children. The
killed segment's own span never ended, so it was never exported, but its
finished children were, and the resumed segment's span links to it through the
span context stored in the run's log. Usage on the chat spans adds up to the
usage stored with the run, and no prompt, argument or result text is recorded
(content capture is off by default).

The child exports to a JSON-lines file and this process to the SDK's
in-memory exporter and metric reader; a real deployment wires an OTLP exporter
instead (docs/observability.md).

Run with: python examples/observability.py
(needs ``pip install "durable-agent[otel]" opentelemetry-sdk``; the dev extra has both)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError:
    print('This example needs the OpenTelemetry SDK: pip install "durable-agent[otel]" '
          "opentelemetry-sdk")
    sys.exit(0)

from durable_agent import Agent, ScriptedModel, Task, ToolCall, telemetry
from durable_agent.run import RunContext

RUN_ID = "weather-run"


class JsonLinesExporter(SpanExporter):
    """One JSON line per finished span, fsynced, so what ended before a SIGKILL is kept."""

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
        """Today's weather in ``city``."""
        if hold is not None and city == "Rome":
            hold.touch()  # noqa: ASYNC240 (tell the parent we are inside the call ...)
            await asyncio.Event().wait()  # ... and wait for the SIGKILL
        return f"sunny in {city}"

    script: list[str | ToolCall] = [
        ToolCall("lookup", {"city": "Oslo"}),
        ToolCall("lookup", {"city": "Rome"}),
        "Sunny in Oslo and in Rome.",
    ]
    return Agent(ScriptedModel(script), db=db, tools=[lookup], name="weather", retry=1)


def child(db: str, spans: Path, ready: Path) -> None:
    """The first process: traced to a file, killed inside the second tool call."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(spans)))
    telemetry.configure(tracer_provider=provider)
    asyncio.run(make_agent(db, ready).do_async(Task("Weather in Oslo and Rome?", run_id=RUN_ID)))


def start_and_kill(db: str, folder: Path) -> list[dict[str, Any]]:
    spans, ready = folder / "spans.jsonl", folder / "ready"
    proc = subprocess.Popen([sys.executable, __file__, "--child", db, str(spans), str(ready)])
    deadline = time.monotonic() + 60  # a bound for a broken child, not a wait for success
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the child never reached its second tool call")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    print(f"process {proc.pid}: started the run, SIGKILLed inside its second tool call")
    return [json.loads(line) for line in spans.read_text().splitlines()]


def show(name: str, attrs: dict[str, Any], indent: str) -> None:
    keep = ("gen_ai.tool.call.id", "durable_agent.attempt", "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens", "gen_ai.response.finish_reasons")
    shown = " ".join(
        f"{k.rsplit('.', 1)[-1]}={list(v) if isinstance(v, tuple | list) else v}"
        for k in keep
        if (v := attrs.get(k)) is not None
    )
    print(f"{indent}{name:<22} {shown}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = f"sqlite:///{folder / 'runs.db'}"
        first = start_and_kill(db, folder)

        exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
        tracing = TracerProvider()
        tracing.add_span_processor(SimpleSpanProcessor(exporter))
        telemetry.configure(tracer_provider=tracing, meter_provider=MeterProvider(
            metric_readers=[reader]))
        agent = make_agent(db, hold=None)
        answer = asyncio.run(agent.continue_run_async(run_id=RUN_ID))
        print(f"process {os.getpid()}: resumed it: {answer!r}\n")

        stored = asyncio.run(agent.db.load_run(RUN_ID))
        usage = RunContext.from_stored(stored).usage
        asyncio.run(agent.db.close())

    parent = first[0]["parent_id"][2:] if first else "?"
    print(f"segment 1  invoke_agent weather  span {parent}  (never exported: killed)")
    for span in first:
        show(span["name"], span["attributes"], "  ")
    (segment,) = [s for s in exporter.get_finished_spans() if s.name.startswith("invoke_agent")]
    attrs = dict(segment.attributes or {})
    link = segment.links[0].context if segment.links else None
    print(f"segment 2  invoke_agent weather  span {segment.context.span_id:016x}  "
          f"links to {f'{link.span_id:016x}' if link else 'nothing'}  "
          f"{attrs['durable_agent.run.state.start']} -> {attrs['durable_agent.run.state']}, "
          f"seq {attrs['durable_agent.run.seq.start']}..{attrs['durable_agent.run.seq.end']}")
    for event in segment.events:
        if event.name != "durable_agent.append":
            print(f"  event {event.name}")
    for span in exporter.get_finished_spans():
        if span is not segment:
            show(span.name, dict(span.attributes or {}), "  ")

    chats = [s["attributes"] for s in first if s["name"].startswith("chat ")]
    chats += [dict(s.attributes or {}) for s in exporter.get_finished_spans()
              if s.name.startswith("chat ")]
    traced = sum(int(a["gen_ai.usage.input_tokens"]) for a in chats)
    print(f"\ninput tokens on chat spans: {traced}; stored with the run: {usage.input_tokens}")
    assert traced == usage.input_tokens
    assert link is not None
    assert f"{link.span_id:016x}" == parent
    data = reader.get_metrics_data()
    names = sorted({m.name for rm in data.resource_metrics for sm in rm.scope_metrics
                    for m in sm.metrics}) if data else []
    print("metrics recorded:", ", ".join(names))
    telemetry.configure(enabled=None)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
