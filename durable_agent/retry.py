"""The retry policy of model calls: the only retry (SDK retries are always off)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from durable_agent.errors import ConfigurationError, ModelError

__all__ = ["RetryPolicy", "is_retryable"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a model call is retried.

    ``attempts`` is the total number of attempts (1 = no retry). Delays grow
    exponentially from ``initial_delay`` with ``jitter`` (a fraction added at
    random), capped at ``max_delay``; a provider's ``retry_after`` is honoured
    up to the cap. Only errors `is_retryable` accepts are retried.
    """

    attempts: int = 3
    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigurationError(f"retry attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ConfigurationError(
                f"retry={self.attempts}: the total number of attempts must be at least 1 "
                "(1 means no retry)"
            )
        if self.initial_delay < 0 or self.max_delay < 0 or self.jitter < 0:
            raise ConfigurationError("retry delays and jitter must not be negative")

    def delay_for(self, attempt: int, error: BaseException) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        hinted = getattr(error, "retry_after", None)
        if isinstance(hinted, int | float) and hinted >= 0:
            return min(float(hinted), self.max_delay)
        base = self.initial_delay * self.multiplier ** (attempt - 1)
        return min(base * (1 + random.random() * self.jitter), self.max_delay)


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt of a model call may succeed after ``error``."""
    if isinstance(error, ModelError):
        return error.retryable
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    return bool(getattr(error, "retryable", False))
