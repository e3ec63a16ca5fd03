"""Telemetry fixtures: the SDK's in-memory span exporter and metric reader, configured per test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from durable_agent import telemetry


@dataclass
class Recorded:
    """What one test recorded: finished spans and metric points."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def capture(self) -> None:
        """Record contents too (for the segments that begin afterwards)."""
        telemetry.configure(
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            capture_content=True,
        )

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = list(self.exporter.get_finished_spans())
        return [s for s in found if name is None or s.name == name]

    def text(self) -> str:
        """Every span and every metric point as JSON text (to search for what must not be there)."""
        spans = "\n".join(s.to_json(indent=None) for s in self.exporter.get_finished_spans())
        data = self.reader.get_metrics_data()
        return spans + "\n" + (data.to_json(indent=None) if data is not None else "")

    def points(self, metric: str) -> list[tuple[dict[str, Any], Any]]:
        """``(attributes, value)`` of each point of ``metric`` (count for histograms)."""
        data = self.reader.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        for p in m.data.data_points:
                            found.append(
                                (
                                    dict(p.attributes or {}),
                                    getattr(p, "value", None) if hasattr(p, "value") else p.count,
                                )
                            )
        return found

    def total(self, metric: str, **attributes: Any) -> float:
        return sum(
            v for a, v in self.points(metric) if all(a.get(k) == w for k, w in attributes.items())
        )


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    metering = MeterProvider(metric_readers=[reader])
    telemetry.configure(tracer_provider=tracing, meter_provider=metering)
    try:
        yield Recorded(exporter, reader, tracing, metering)
    finally:
        telemetry.configure(enabled=None)
        tracing.shutdown()
        metering.shutdown()


def load_spans(text: str) -> list[dict[str, Any]]:
    """Spans a child wrote with ``ReadableSpan.to_json``, one per line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
