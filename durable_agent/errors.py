"""Every exception durable-agent raises.

The tree:

    DurableAgentError
    ├── ConfigurationError (ValueError, TypeError)  bad arguments to Agent, Task, a backend
    ├── RunNotFoundError (KeyError)                  no run with that id in the store
    ├── RunExistsError                               create_run with an id already taken
    │   └── RunConflictError (ValueError)            a start that differs from the stored run
    ├── RunBusyError                                 another live process holds the run's lease
    ├── ConcurrentUpdateError                        a stale seq or lost lease on append
    │   └── LeaseLostError                           the lease was taken over by another owner
    ├── CorruptRunError (ValueError)                 a stored record that does not validate
    │   └── SchemaVersionError                       a record written by a newer durable-agent
    ├── UnstorableValueError (ValueError)            a value a store could not read back
    ├── StoreUnavailableError (ConnectionError)      the store cannot be reached or written
    ├── InvalidTransitionError                       a trigger the machine forbids in a state
    ├── RunStateError                                the run is in a state that forbids the call
    ├── RunFailedError                               the run stopped in ERROR (cause attached)
    │   └── RunTimeoutError (TimeoutError)           the run's deadline passed (recorded)
    ├── RunWaitingError                              the run paused for a human decision
    ├── WaitTimeoutError (TimeoutError)              a wait for a run to rest ran out of time
    ├── RunCancelledError                            the run was cancelled
    ├── DecisionError (ValueError)                   a decision that does not fit the run
    ├── ModelError                                   a chat model failed
    │   ├── ModelNotAvailableError (ImportError)     a model string whose adapter is missing
    │   ├── ModelHTTPError                           an HTTP status from a provider
    │   ├── ModelConnectionError (ConnectionError)   no answer: refused, reset, broken body
    │   ├── ModelTimeoutError (TimeoutError)         the per-call timeout passed
    │   ├── ModelResponseError                       an answer that cannot be used
    │   ├── OutputValidationError                    structured output failed validation
    │   └── ScriptExhaustedError                     a ScriptedModel asked for a turn it lacks
    ├── ToolError                                    a tool could not be called
    │   ├── ToolNotFoundError                        the model named a tool the agent lacks
    │   ├── ToolArgumentsError                       arguments failed validation
    │   └── ToolResultError (TypeError)              a tool returned a value JSON cannot hold
    └── RedactedError                                stands in, in an exception chain, for an
                                                     exception whose text held a secret

`ToolRetry` is not an error of the library: a tool raises it to send a message
back to the model as the call's error result.
"""

from __future__ import annotations

from durable_agent._process import describe_owner

__all__ = [
    "ConcurrentUpdateError",
    "ConfigurationError",
    "CorruptRunError",
    "DecisionError",
    "DurableAgentError",
    "InvalidTransitionError",
    "LeaseLostError",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelNotAvailableError",
    "ModelResponseError",
    "ModelTimeoutError",
    "OutputValidationError",
    "RedactedError",
    "RunBusyError",
    "RunCancelledError",
    "RunConflictError",
    "RunExistsError",
    "RunFailedError",
    "RunNotFoundError",
    "RunStateError",
    "RunTimeoutError",
    "RunWaitingError",
    "SchemaVersionError",
    "ScriptExhaustedError",
    "StoreUnavailableError",
    "ToolArgumentsError",
    "ToolError",
    "ToolNotFoundError",
    "ToolResultError",
    "ToolRetry",
    "UnstorableValueError",
    "WaitTimeoutError",
]


class DurableAgentError(Exception):
    """Base class of every error raised by durable-agent."""


class ConfigurationError(DurableAgentError, ValueError, TypeError):
    """An argument has the wrong type or value; nothing was stored."""


class RunNotFoundError(DurableAgentError, KeyError):
    """The store holds no run with this id."""

    def __init__(self, run_id: str, detail: str = "", *, store: str | None = None) -> None:
        self.run_id = run_id
        self.store = store
        msg = f"run {run_id!r} not found in " + (store or "the store")
        super().__init__(msg + (f"; {detail}" if detail else ""))

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class RunExistsError(DurableAgentError):
    """A run with this id already exists."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} already exists; continue it instead of creating it")


class RunConflictError(RunExistsError, ValueError):
    """A start under a run id that exists with another task, tools or output format.

    Starting with a caller-chosen run id is idempotent only for the same start:
    ``differences`` says what differs, so a retry never silently returns the
    answer to another question.
    """

    def __init__(self, run_id: str, differences: list[str]) -> None:
        self.run_id = run_id
        self.differences = tuple(differences)
        DurableAgentError.__init__(
            self,
            f"run {run_id!r} already exists and was started differently: "
            f"{'; '.join(differences)}. Start a new task under another run id, continue "
            f"the stored run with continue_run_async(run_id={run_id!r}), or pass "
            "Task(..., continue_changed=True) to continue it anyway",
        )


class RunBusyError(DurableAgentError):
    """Another live owner holds the run's lease."""

    def __init__(self, run_id: str, owner: str, expires_in: float) -> None:
        self.run_id = run_id
        self.owner = owner
        self.expires_in = expires_in
        super().__init__(
            f"run {run_id!r} is being run by {describe_owner(owner)}, lease expires in "
            f"{expires_in:.1f}s (owner {owner}); wait for it to finish, or continue it "
            "after the lease expires"
        )


class ConcurrentUpdateError(DurableAgentError):
    """An append expected a `seq` or lease the run no longer has: another writer won."""

    def __init__(self, run_id: str, message: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r}: {message}")


class LeaseLostError(ConcurrentUpdateError):
    """The lease this process held was taken over; it must stop writing."""


class CorruptRunError(DurableAgentError, ValueError):
    """A stored record of the run does not validate; other runs are unaffected."""

    def __init__(self, run_id: str, seq: int | None, detail: str) -> None:
        self.run_id = run_id
        self.seq = seq
        where = f"event seq {seq}" if seq is not None else "header"
        super().__init__(
            f"run {run_id!r}: stored {where} is corrupt ({detail}); the record was left "
            "untouched: export or delete the run, other runs still load"
        )


class SchemaVersionError(CorruptRunError):
    """A record was written by a newer durable-agent with a schema this one cannot read."""

    def __init__(self, run_id: str, seq: int | None, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        DurableAgentError.__init__(
            self,
            f"run {run_id!r}: record at {'seq ' + str(seq) if seq is not None else 'header'} "
            f"has schema_version {found} but this durable-agent reads up to {supported}; "
            "upgrade durable-agent to load it (the record was left untouched)",
        )
        self.run_id = run_id
        self.seq = seq


class UnstorableValueError(DurableAgentError, ValueError):
    """A value cannot be stored because it could not be read back; nothing was written.

    ``path`` names the value inside the record (``arguments.items[3]``), ``reason``
    says what is wrong with it: nested deeper than `records.MAX_DEPTH`, NaN or
    infinity, text with a lone surrogate, something that is not JSON, or a tool
    call id used twice in one answer. Both are free of lone surrogates, so the
    message itself can always be stored.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class StoreUnavailableError(DurableAgentError, ConnectionError):
    """The store could not be opened, reached or written."""


class InvalidTransitionError(DurableAgentError):
    """The state machine forbids this trigger in the current state."""

    def __init__(self, trigger: str, state: str, run_id: str | None = None) -> None:
        self.trigger = trigger
        self.state = state
        self.run_id = run_id
        who = f"run {run_id!r}" if run_id else "run"
        super().__init__(f"{who}: trigger {trigger!r} is not allowed in state {state}")


class RunStateError(DurableAgentError):
    """The run's state forbids the requested call (for example continuing a cancelled run)."""

    def __init__(self, run_id: str, state: str, message: str) -> None:
        self.run_id = run_id
        self.state = state
        super().__init__(f"run {run_id!r} is {state}: {message}")


class RunFailedError(DurableAgentError):
    """The run stopped in ERROR; the original exception is the ``__cause__``.

    The failure is already recorded in the store: ``continue_run_async(run_id=...)``
    resumes at ``failed_state``.
    """

    def __init__(
        self,
        run_id: str,
        state: str,
        failed_state: str | None,
        message: str,
        *,
        next_step: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.state = state
        self.failed_state = failed_state
        # Continuing at once is the right advice for a transient failure; a
        # failure that would happen again (a tool bug) says what to fix first.
        then = f"continue with continue_run_async(run_id={run_id!r})"
        super().__init__(
            f"run {run_id!r} failed in {failed_state or state}: {message}; it is recorded, "
            + (f"{next_step}, then {then}" if next_step else then)
        )


class RunTimeoutError(RunFailedError, TimeoutError):
    """The run's deadline passed; the timeout is recorded and the run can be continued."""


class WaitTimeoutError(DurableAgentError, TimeoutError):
    """Waiting for a run to come to rest took longer than the caller's timeout.

    Nothing is recorded: the run goes on wherever it runs; wait again later.
    """

    def __init__(self, run_id: str, state: str, timeout: float) -> None:
        self.run_id = run_id
        self.state = state
        super().__init__(
            f"run {run_id!r} is still {state} after waiting {timeout:g} s; nothing was "
            f"changed: wait again with agent.wait_run_async({run_id!r}), or check that a "
            "worker serving its agent and queue is running"
        )


class RunWaitingError(DurableAgentError):
    """The run paused for human decisions; there is no answer to return yet.

    ``requirements`` lists what must be decided; pass the decisions to
    ``continue_run_async(run_id=..., approvals=..., results=..., inputs=...)``.
    """

    def __init__(self, run_id: str, requirements: tuple[object, ...]) -> None:
        self.run_id = run_id
        self.requirements = requirements
        ids = ", ".join(
            str(getattr(r, "id", r))
            + (f" ({detail})" if (detail := getattr(r, "detail", None)) else "")
            for r in requirements
        ) or "none"
        super().__init__(
            f"run {run_id!r} is WAITING for human decisions on: {ids}; decide them with "
            f"continue_run_async(run_id={run_id!r}, approvals=/results=/inputs=...)"
        )


class RunCancelledError(DurableAgentError):
    """The run was cancelled; it cannot be continued."""

    def __init__(self, run_id: str, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id!r} was cancelled: {reason}")


class DecisionError(DurableAgentError, ValueError):
    """A decision names an unknown or already decided requirement, or does not fit its kind.

    Nothing was recorded: the run is still WAITING with the same requirements.
    """


class ModelError(DurableAgentError):
    """A chat model call failed.

    ``retryable`` tells the engine's retry policy whether another attempt may succeed.
    """

    retryable: bool = False
    status_code: int | None = None
    request_id: str | None = None


class ModelNotAvailableError(ModelError, ImportError):
    """A model string names a provider whose adapter or SDK is not installed."""


class ModelHTTPError(ModelError):
    """A provider answered with an HTTP error status."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        retryable: bool | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.request_id = request_id
        self.retry_after = retry_after
        self.retryable = (
            retryable
            if retryable is not None
            else status_code in (408, 409, 429) or status_code >= 500
        )
        super().__init__(f"HTTP {status_code}: {message}")


class ModelConnectionError(ModelError, ConnectionError):
    """The provider could not be reached or the connection broke; retryable."""

    retryable = True


class ModelTimeoutError(ModelError, TimeoutError):
    """A model call outlasted its timeout; retryable."""

    retryable = True


class ModelResponseError(ModelError):
    """The provider's answer cannot be used: malformed (retryable) or refused / cut off at a
    token limit (not retryable; the message says which limit or filter)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        self.retryable = retryable
        super().__init__(message)


class OutputValidationError(ModelError):
    """The final answer did not match the task's ``response_format``."""


class ScriptExhaustedError(ModelError):
    """A ScriptedModel was asked for a turn its script does not have."""


class ToolError(DurableAgentError):
    """A tool could not be called."""


class ToolNotFoundError(ToolError):
    """The model called a tool the agent does not have."""


class ToolArgumentsError(ToolError):
    """The model's arguments for a tool failed validation."""


class ToolResultError(ToolError, TypeError):
    """A tool returned a value that is not a str and cannot be turned into JSON.

    Continuing the run as it is would call the tool again and fail the same
    way: ``next_step`` says what to fix first.
    """

    def __init__(self, tool_name: str, message: str) -> None:
        self.tool_name = tool_name
        self.next_step = (
            f"fix tool {tool_name!r} so it returns a str or a JSON-serializable value "
            "(dict, list, str, int, float, bool, None, or a pydantic model)"
        )
        super().__init__(message)


class RedactedError(DurableAgentError):
    """Stands in, in an exception chain, for an exception whose text held a secret.

    Never raised on its own: `durable_agent.redact_exception` puts it where the
    original was (the ``__cause__`` of a `RunFailedError`, say), so a printed
    traceback shows no secret. ``original_type`` is the qualified name of the
    exception it replaces; its message is that exception's text with every
    secret replaced by ``[redacted]``; its traceback, cause and context are the
    original's.
    """

    def __init__(self, original_type: str, message: str) -> None:
        self.original_type = original_type
        super().__init__(f"{original_type}: {message} (secrets redacted)")


class ToolRetry(Exception):
    """Raise from a tool to return ``message`` to the model as the call's error result.

    The run does not fail: the model sees the message and may call the tool again.
    """

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)
