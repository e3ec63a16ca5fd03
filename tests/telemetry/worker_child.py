"""One worker process of the telemetry takeover test: it claims the run and is SIGKILLed in it.

Run as ``python tests/telemetry/worker_child.py <db> <spans.jsonl> <ready-file>``, with
the repository on ``PYTHONPATH``.
It records spans to ``spans.jsonl`` (as `tests/telemetry/child.py` does), writes
its `Worker.id` to ``<ready-file>.id``, and drives the submitted runs of the
``weather`` agent; inside the run's second tool call it creates ``ready-file``
and waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from durable_agent import Worker, telemetry
from tests.telemetry.child import FileExporter, make_agent

LIVENESS_TTL = 2.0
"""Seconds the worker's registration lasts: after the kill, another worker takes over then."""


async def main(db: str, spans: Path, ready: Path) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(spans)))
    telemetry.configure(tracer_provider=provider)
    worker = Worker([make_agent(db, ready)], concurrency=1, liveness_ttl=LIVENESS_TTL)
    ready.with_suffix(".id").write_text(worker.id)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
