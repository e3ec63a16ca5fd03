"""durable-agent: LLM agent runs that survive crashes, kills, timeouts and API errors.

A run is an explicit state machine (`RunState`); after every transition its
event is appended to a store, so a run resumes where it stopped, in this
process or another, without repeating a recorded model or tool call.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from durable_agent._redact import mark_secret, redact, redact_exception
from durable_agent.agent import Agent, DurabilityWarning, RunHandle, Task
from durable_agent.backend import Backend, Capability, LeaseOwner, RunPage
from durable_agent.engine import RetryPolicy, cancel_run, decide_run
from durable_agent.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    CorruptRunError,
    DecisionError,
    DurableAgentError,
    InvalidTransitionError,
    LeaseLostError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    ModelNotAvailableError,
    ModelResponseError,
    ModelTimeoutError,
    OutputValidationError,
    RedactedError,
    RunBusyError,
    RunCancelledError,
    RunConflictError,
    RunExistsError,
    RunFailedError,
    RunNotFoundError,
    RunStateError,
    RunTimeoutError,
    RunWaitingError,
    SchemaVersionError,
    ScriptExhaustedError,
    StoreUnavailableError,
    ToolArgumentsError,
    ToolError,
    ToolNotFoundError,
    ToolResultError,
    ToolRetry,
    UnstorableValueError,
    WaitTimeoutError,
)
from durable_agent.fsm import RunState
from durable_agent.human import Requirement
from durable_agent.models import ChatModel, ModelResponse, OutputSchema, ToolDefinition
from durable_agent.models.scripted import ScriptedFailure, ScriptedModel, ToolCall
from durable_agent.registry import open_backend, register_backend
from durable_agent.run import RunOutput
from durable_agent.tools import ReconcileContext, Reconciliation, Tool, ToolContext, tool

if TYPE_CHECKING:
    from durable_agent._follow import follow
    from durable_agent._run_stream import RunStream
    from durable_agent.backends.jsonfile import JsonFileBackend
    from durable_agent.backends.memory import MemoryBackend
    from durable_agent.backends.redis import RedisBackend
    from durable_agent.backends.sqlite import SqliteBackend
    from durable_agent.worker import RunRetry, Worker

__version__ = "0.1.0"

# A library logs, the application decides what is shown: nothing prints unless
# logging is configured (docs/observability.md).
logging.getLogger("durable_agent").addHandler(logging.NullHandler())

__all__ = [
    "Agent",
    "Backend",
    "Capability",
    "ChatModel",
    "ConcurrentUpdateError",
    "ConfigurationError",
    "CorruptRunError",
    "DecisionError",
    "DurabilityWarning",
    "DurableAgentError",
    "InvalidTransitionError",
    "JsonFileBackend",
    "LeaseLostError",
    "LeaseOwner",
    "MemoryBackend",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelNotAvailableError",
    "ModelResponse",
    "ModelResponseError",
    "ModelTimeoutError",
    "OutputSchema",
    "OutputValidationError",
    "ReconcileContext",
    "Reconciliation",
    "RedactedError",
    "RedisBackend",
    "Requirement",
    "RetryPolicy",
    "RunBusyError",
    "RunCancelledError",
    "RunConflictError",
    "RunExistsError",
    "RunFailedError",
    "RunHandle",
    "RunNotFoundError",
    "RunOutput",
    "RunPage",
    "RunRetry",
    "RunState",
    "RunStateError",
    "RunStream",
    "RunTimeoutError",
    "RunWaitingError",
    "SchemaVersionError",
    "ScriptExhaustedError",
    "ScriptedFailure",
    "ScriptedModel",
    "SqliteBackend",
    "StoreUnavailableError",
    "Task",
    "Tool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolContext",
    "ToolDefinition",
    "ToolError",
    "ToolNotFoundError",
    "ToolResultError",
    "ToolRetry",
    "UnstorableValueError",
    "WaitTimeoutError",
    "Worker",
    "cancel_run",
    "decide_run",
    "follow",
    "mark_secret",
    "open_backend",
    "redact",
    "redact_exception",
    "register_backend",
    "tool",
]

_LAZY = {
    "MemoryBackend": "durable_agent.backends.memory",
    "SqliteBackend": "durable_agent.backends.sqlite",
    "RedisBackend": "durable_agent.backends.redis",
    "JsonFileBackend": "durable_agent.backends.jsonfile",
    "Worker": "durable_agent.worker",
    "RunRetry": "durable_agent.worker",
    # Streaming is imported when first named, like the backends.
    "RunStream": "durable_agent._run_stream",
    "follow": "durable_agent._follow",
}


def __getattr__(name: str) -> Any:
    # Backends load their drivers (aiosqlite, ...) only when first named; the
    # worker (signals, a fleet's loop) is on top of the facade, loaded when used.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'durable_agent' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
