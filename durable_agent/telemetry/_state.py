"""What `durable_agent.telemetry.configure` set, and the instruments built from it.

Nothing here imports OpenTelemetry unless telemetry was configured with it or
the application already imported it (`durable_agent.telemetry._otel` does the
importing).
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from durable_agent.telemetry._otel import Instruments

enabled: bool | None = None
"""None: follow OpenTelemetry's global providers; True / False: as configured."""
capture_content = False
"""Record message contents, tool arguments and results (redacted) on spans."""
tracer_provider: Any = None
meter_provider: Any = None

_lock = threading.Lock()
_cache: dict[tuple[int, int, bool], Instruments] = {}


def instruments() -> Instruments | None:
    """The tracer and meters to use now, or None when no provider is set (nothing to record)."""
    if enabled is False:
        return None
    if "opentelemetry" not in sys.modules and tracer_provider is None and meter_provider is None:
        return None
    from durable_agent.telemetry import _otel

    tracing, metering = _otel.providers(tracer_provider, meter_provider, explicit=bool(enabled))
    if tracing is None and metering is None:
        return None
    key = (id(tracing), id(metering), capture_content)
    found = _cache.get(key)
    if found is None:
        with _lock:
            found = _cache.get(key)
            if found is None:
                found = _otel.Instruments(tracing, metering, capture_content=capture_content)
                _cache.clear()  # providers changed: the old instruments are not used again
                _cache[key] = found
    return found


def reset_cache() -> None:
    """Forget built instruments (after `configure`); stores stop reporting their commits."""
    import durable_agent.backend as contract

    with _lock:
        _cache.clear()
        contract.commit_observer = None
