"""The run header and the small value records it and the events hold.

`Usage`, `ErrorInfo`, `Lease`, `RunHeader` and `utcnow`; `durable_agent.records`
re-exports them, and is where to import them from.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from durable_agent._messages import Record
from durable_agent._redact import redact
from durable_agent._storable import escape_surrogates
from durable_agent.fsm import RunState

__all__ = ["ErrorInfo", "Lease", "RunHeader", "Usage", "utcnow"]

# `Lease.renewed`'s way of building an instance without validation: pydantic's
# own slots, set through their descriptors.
_new = object.__new__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (what every record stores)."""
    return datetime.now(UTC)

# -- small value records ----------------------------------------------------


class Usage(BaseModel):
    """Tokens and requests spent on model calls."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0

    def __add__(self, other: Usage) -> Usage:
        # The validator itself: ``Usage(...)``'s ``__init__`` wrapper costs about a
        # third of the call, once per model answer a run folds in.
        total: Usage = Usage.__pydantic_validator__.validate_python(
            {
                "input_tokens": self.input_tokens + other.input_tokens,
                "output_tokens": self.output_tokens + other.output_tokens,
                "requests": self.requests + other.requests,
            }
        )
        return total


class ErrorInfo(BaseModel):
    """A failure as stored: the exception's type and message, never its object.

    Lone surrogates in its text are escaped (``\\udce9``): an exception about
    a file name or a tool's odd output must still be recordable.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    type: str
    message: str
    retryable: bool = False
    status_code: int | None = None
    request_id: str | None = None

    @field_validator("type", "message", "request_id")
    @classmethod
    def _storable_text(cls, text: str | None) -> str | None:
        return None if text is None else escape_surrogates(text)

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Describe ``exc`` by its qualified type name and message, secrets redacted.

        Every stored error passes here, so this is where exception text becomes
        stored data: `durable_agent.redact` removes every marked secret from it.
        """
        kind = type(exc)
        return cls(
            type=f"{kind.__module__}.{kind.__qualname__}",
            message=redact(str(exc) or kind.__name__),
            retryable=bool(getattr(exc, "retryable", False)),
            status_code=getattr(exc, "status_code", None),
            request_id=getattr(exc, "request_id", None),
        )


class Lease(BaseModel):
    """Who may write to a run, until when, and the fencing ``generation``.

    Every acquisition increments ``generation``; an append carrying an older
    generation is refused, so a process whose lease lapsed can never write
    after the new owner took over (DESIGN.md §3 rule 5).
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    owner: str
    host: str
    pid: int
    generation: int
    expires_at: float
    ttl: float
    cancel_requested: str | None = None
    """Set by the store when someone asked to cancel the run: the holder must stop
    at its next transition boundary (the reason is the value)."""

    def renewed(self, expires_at: float, cancel_requested: str | None) -> Lease:
        """This lease until ``expires_at``, with the run's pending cancellation, if any.

        For a store, once per append: a copy with two fields set, not
        revalidated (every other field is this lease's own, already valid),
        built directly (pydantic's ``__copy__`` costs ~4x as much) and sharing
        this lease's set of fields given (nothing mutates it; a ``model_copy``
        copies it first).
        """
        # The new instance's own __dict__ filled in place, and pydantic's slots set
        # through their descriptors: ~6,500 instructions instead of ~11,300 for
        # ``object.__setattr__`` of a whole __dict__ and of each slot.
        lease = _new(type(self))
        fields = lease.__dict__
        fields.update(self.__dict__)
        fields["expires_at"] = expires_at
        fields["cancel_requested"] = cancel_requested
        _set_fields_set(lease, self.__pydantic_fields_set__)
        _set_extra(lease, None)
        _set_private(lease, None)
        return lease


class RunHeader(Record):
    """What a store keeps about a run besides its events; one row per run."""

    run_id: str
    session_id: str | None = None
    user_id: str | None = None
    agent_name: str = "agent"
    state: RunState = RunState.PENDING
    seq: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    lease: Lease | None = None
    lease_generation: int = 0
    cancel_requested: str | None = None
    """The reason of a pending cancellation request, until the run is CANCELLED."""
    # Set by `Agent.submit_async` for workers (DESIGN.md §6); the defaults let
    # headers stored before workers existed load unchanged.
    queue: str = "default"
    priority: int = 0
    """Higher is claimed first; equal priorities are claimed oldest first."""
    not_before: datetime | None = None
    """No worker claims the run before this time (a delayed submit)."""
