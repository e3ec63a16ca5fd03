"""durable-agent: LLM agent runs that survive crashes, kills, timeouts and API errors.

A run is an explicit state machine (`RunState`); after every transition its
event is appended to a store, so a run resumes where it stopped, in this
process or another, without repeating a recorded model or tool call.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Every public name, for mypy and IDEs; at run time `__getattr__` below
    # imports each one when first named.
    from durable_agent._follow import follow
    from durable_agent._redact import mark_secret, redact, redact_exception
    from durable_agent._run_stream import RunStream
    from durable_agent.agent import Agent, DurabilityWarning, RunHandle, Task
    from durable_agent.backend import Backend, Capability, LeaseOwner, RunPage
    from durable_agent.backends.jsonfile import JsonFileBackend
    from durable_agent.backends.memory import MemoryBackend
    from durable_agent.backends.redis import RedisBackend
    from durable_agent.backends.sqlite import SqliteBackend
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

_LAZY: dict[str, str] = {
    "mark_secret": "durable_agent._redact",
    "redact": "durable_agent._redact",
    "redact_exception": "durable_agent._redact",
    "Agent": "durable_agent.agent",
    "DurabilityWarning": "durable_agent.agent",
    "RunHandle": "durable_agent.agent",
    "Task": "durable_agent.agent",
    "Backend": "durable_agent.backend",
    "Capability": "durable_agent.backend",
    "LeaseOwner": "durable_agent.backend",
    "RunPage": "durable_agent.backend",
    "RetryPolicy": "durable_agent.engine",
    "cancel_run": "durable_agent.engine",
    "decide_run": "durable_agent.engine",
    "ConcurrentUpdateError": "durable_agent.errors",
    "ConfigurationError": "durable_agent.errors",
    "CorruptRunError": "durable_agent.errors",
    "DecisionError": "durable_agent.errors",
    "DurableAgentError": "durable_agent.errors",
    "InvalidTransitionError": "durable_agent.errors",
    "LeaseLostError": "durable_agent.errors",
    "ModelConnectionError": "durable_agent.errors",
    "ModelError": "durable_agent.errors",
    "ModelHTTPError": "durable_agent.errors",
    "ModelNotAvailableError": "durable_agent.errors",
    "ModelResponseError": "durable_agent.errors",
    "ModelTimeoutError": "durable_agent.errors",
    "OutputValidationError": "durable_agent.errors",
    "RedactedError": "durable_agent.errors",
    "RunBusyError": "durable_agent.errors",
    "RunCancelledError": "durable_agent.errors",
    "RunConflictError": "durable_agent.errors",
    "RunExistsError": "durable_agent.errors",
    "RunFailedError": "durable_agent.errors",
    "RunNotFoundError": "durable_agent.errors",
    "RunStateError": "durable_agent.errors",
    "RunTimeoutError": "durable_agent.errors",
    "RunWaitingError": "durable_agent.errors",
    "SchemaVersionError": "durable_agent.errors",
    "ScriptExhaustedError": "durable_agent.errors",
    "StoreUnavailableError": "durable_agent.errors",
    "ToolArgumentsError": "durable_agent.errors",
    "ToolError": "durable_agent.errors",
    "ToolNotFoundError": "durable_agent.errors",
    "ToolResultError": "durable_agent.errors",
    "ToolRetry": "durable_agent.errors",
    "UnstorableValueError": "durable_agent.errors",
    "WaitTimeoutError": "durable_agent.errors",
    "RunState": "durable_agent.fsm",
    "Requirement": "durable_agent.human",
    "ChatModel": "durable_agent.models",
    "ModelResponse": "durable_agent.models",
    "OutputSchema": "durable_agent.models",
    "ToolDefinition": "durable_agent.models",
    "ScriptedFailure": "durable_agent.models.scripted",
    "ScriptedModel": "durable_agent.models.scripted",
    "ToolCall": "durable_agent.models.scripted",
    "open_backend": "durable_agent.registry",
    "register_backend": "durable_agent.registry",
    "RunOutput": "durable_agent.run",
    "ReconcileContext": "durable_agent.tools",
    "Reconciliation": "durable_agent.tools",
    "Tool": "durable_agent.tools",
    "ToolContext": "durable_agent.tools",
    "tool": "durable_agent.tools",
    # Backends load their drivers (aiosqlite, ...) only when first named; the
    # worker (signals, a fleet's loop) is on top of the facade, loaded when used.
    "MemoryBackend": "durable_agent.backends.memory",
    "SqliteBackend": "durable_agent.backends.sqlite",
    "RedisBackend": "durable_agent.backends.redis",
    "JsonFileBackend": "durable_agent.backends.jsonfile",
    "Worker": "durable_agent.worker",
    "RunRetry": "durable_agent.worker",
    "RunStream": "durable_agent._run_stream",
    "follow": "durable_agent._follow",
}


def __getattr__(name: str) -> object:
    # PEP 562: `import durable_agent` loads nothing but this module, so a CLI,
    # a worker or a test that names one thing pays only for what that name
    # needs (benchmarks/bench_import.py). The value is cached in the module's
    # globals, so a name costs one import and then a plain lookup.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'durable_agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
