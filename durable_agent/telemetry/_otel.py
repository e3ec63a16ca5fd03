"""The OpenTelemetry side: providers, the tracer and the instruments (imports the API).

Imported only by `durable_agent.telemetry._state` when telemetry is on, so the
``otel`` extra is needed only by applications that use it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from durable_agent import backend as _contract
from durable_agent.errors import ConfigurationError

try:
    from opentelemetry import metrics, trace
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ConfigurationError(
        'durable-agent telemetry needs the OpenTelemetry API: pip install "durable-agent[otel]"'
    ) from exc

__all__ = ["SCOPE", "Instruments", "providers"]

SCOPE = "durable_agent"
"""The instrumentation scope name of every span and instrument."""

_DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)
_CHUNK_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
)
"""Seconds between two chunks of a stream: tens of ms from a provider, far less from a fake."""
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


def providers(tracer_provider: Any, meter_provider: Any, *, explicit: bool) -> tuple[Any, Any]:
    """The tracer and meter providers to use, None for each that is not set.

    Unless telemetry was enabled explicitly, the global providers count only
    once the application set them (the API's proxies stand for "not set").
    """
    tracing = tracer_provider
    if tracing is None:
        tracing = trace.get_tracer_provider()
        if not explicit and isinstance(tracing, trace.ProxyTracerProvider):
            tracing = None
    metering = meter_provider
    if metering is None:
        metering = metrics.get_meter_provider()
        if not explicit and type(metering).__name__ == "_ProxyMeterProvider":
            metering = None
    return tracing, metering


class _Batches:
    """Group-commit batch sizes, reported by the stores (`durable_agent.backend.commit_observer`).

    Each commit is recorded in the histogram; the size is also kept for each
    run of the batch until that run's append event picks it up.
    """

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        self.sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def observe(self, store: str, run_ids: Sequence[str]) -> None:
        size = len(run_ids)
        self.histogram.record(size, {"durable_agent.store": store})
        with self._lock:
            if len(self.sizes) > 4096:  # appends nobody traced (no engine hook) must not pile up
                self.sizes.clear()
            for run_id in run_ids:
                self.sizes[run_id] = size

    def pop(self, run_id: str) -> int | None:
        with self._lock:
            return self.sizes.pop(run_id, None)


class Instruments:
    """The tracer (None when no tracer provider is set) and every instrument of the library."""

    def __init__(self, tracer_provider: Any, meter_provider: Any, *, capture_content: bool) -> None:
        from durable_agent import __version__

        self.capture_content = capture_content
        self.tracer: trace.Tracer | None = (
            tracer_provider.get_tracer(SCOPE, __version__) if tracer_provider is not None else None
        )
        meter: metrics.Meter = (meter_provider or metrics.NoOpMeterProvider()).get_meter(
            SCOPE, __version__
        )
        self.meter = meter
        self.runs_started = meter.create_counter(
            "durable_agent.runs.started", unit="{run}", description="Runs stored and started."
        )
        self.runs_finished = meter.create_counter(
            "durable_agent.runs.finished",
            unit="{run}",
            description="Runs that came to rest, by the state they rest in (DONE, ERROR, "
            "WAITING, CANCELLED).",
        )
        self.transitions = meter.create_counter(
            "durable_agent.transitions", unit="{transition}",
            description="State transitions stored.",
        )
        self.attempts_failed = meter.create_counter(
            "durable_agent.model.attempts.failed",
            unit="{attempt}",
            description="Model attempts that raised or whose answer was refused, by error.type.",
        )
        self.takeovers = meter.create_counter(
            "durable_agent.takeovers",
            unit="{run}",
            description="Runs taken over mid-step from a process that stopped driving them.",
        )
        self.append_duration = meter.create_histogram(
            "durable_agent.store.append.duration",
            unit="s",
            description="Time of one store append, as the engine waits for it.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.batch_size = meter.create_histogram(
            "durable_agent.store.commit.batch_size",
            unit="{append}",
            description="Appends that shared one group commit (stores with group commit).",
            explicit_bucket_boundaries_advisory=_BATCH_BUCKETS,
        )
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration (one model attempt).",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used per model attempt, by gen_ai.token.type.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.time_to_first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streamed model attempt.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.time_per_output_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_per_output_chunk",
            unit="s",
            description="Time per output chunk of a streamed model attempt, each after the "
            "first, from the end of the previous chunk.",
            explicit_bucket_boundaries_advisory=_CHUNK_BUCKETS,
        )
        self.tool_duration = meter.create_histogram(
            "durable_agent.tool.duration",
            unit="s",
            description="Time of one tool call.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.batches = _Batches(self.batch_size)
        # The stores report their group commits to whoever builds instruments last.
        _contract.commit_observer = self.batches.observe
