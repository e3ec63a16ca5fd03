"""Traces, metrics and logs of agent runs (docs/observability.md).

Traces and metrics go through the OpenTelemetry API (``pip install
"durable-agent[otel]"``) and follow its GenAI semantic conventions. By default
the library follows OpenTelemetry's global providers: once the application
sets a tracer or meter provider, every new run segment is recorded; until then
(or without OpenTelemetry installed) nothing is recorded and nothing is
imported. `configure` picks providers explicitly, turns telemetry off, or
turns on the capture of message contents and tool arguments, which is off by
default. Secrets marked with `durable_agent.mark_secret` (API keys, headers)
are never recorded.

Logs go to ``logging.getLogger("durable_agent")`` and its children (the
engine's under ``durable_agent.engine``); every record carries ``run_id``,
``seq`` and ``state`` in its ``extra``. The library adds a `logging.NullHandler`
only: nothing prints unless the application configures logging.
"""

from __future__ import annotations

from typing import Any

from durable_agent.telemetry import _state

__all__ = ["capture_content", "configure", "meter"]


def configure(
    *,
    enabled: bool | None = True,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    capture_content: bool = False,
) -> None:
    """Choose how runs are recorded; applies to segments that begin afterwards.

    Args:
        enabled: True records with the providers given, or the global ones
            (even before the application sets them); False records nothing;
            None follows the global providers (the default behaviour: record
            once the application has set one).
        tracer_provider: an OpenTelemetry ``TracerProvider`` (default: the global one).
        meter_provider: an OpenTelemetry ``MeterProvider`` (default: the global one).
        capture_content: also record message contents (``gen_ai.input.messages``,
            ``gen_ai.output.messages``), tool arguments and results and error
            messages on spans, redacted. Off by default: they may hold personal
            data, and a trace backend is rarely the place for it.

    Raises `ConfigurationError` when ``enabled`` is True and the OpenTelemetry
    API is not installed.
    """
    if enabled:
        # Fails now, with the install command, rather than when a run starts.
        from durable_agent.telemetry import _otel  # noqa: F401
    _state.enabled = enabled
    _state.tracer_provider = tracer_provider
    _state.meter_provider = meter_provider
    _state.capture_content = capture_content
    _state.reset_cache()


def capture_content() -> bool:
    """Whether message contents and tool arguments are recorded on spans."""
    return _state.capture_content


def meter() -> Any:
    """The OpenTelemetry ``Meter`` the library records with, or None when metrics are off.

    For parts built on top of the engine (workers: slots busy, claimable
    backlog) to add their instruments under the same scope.
    """
    instruments = _state.instruments()
    return instruments.meter if instruments is not None else None
