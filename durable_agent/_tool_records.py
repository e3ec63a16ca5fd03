"""The stored shapes of a tool's identity and of a reconciliation answer (schema version 2).

Kept apart from `durable_agent.records` only for size; `records` re-exports
every name, and is where code imports them from.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from pydantic import BaseModel, ConfigDict

from durable_agent._messages import _Event

__all__ = ["ReconcileAnswer", "ReconciledEvent", "ToolSignature"]


class ToolSignature(BaseModel):
    """What a tool was when a run used it: enough to tell a later change.

    ``schema_hash`` is a hash of the tool's argument schema (all its
    parameters, the ones a human provides included), so a renamed or retyped
    parameter changes it while a new docstring does not.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    name: str
    schema_hash: str
    idempotent: bool


ReconcileAnswer: TypeAlias = Literal["landed", "not_landed", "unknown"]
"""What a tool's reconcile function said about a call that was in flight at a crash."""


class ReconciledEvent(_Event):
    """A reconcile function's answer about an in-flight call, recorded before it is acted on.

    ``landed`` is followed, in the same append, by the call's result (a
    `ToolFinishedEvent`; the tool is not run); ``not_landed`` by a new intent
    and a run; ``unknown`` by a re-run (idempotent tools) or, for an
    ``idempotent=False`` tool, an in-doubt requirement.
    """

    kind: Literal["reconciled"] = "reconciled"
    call_id: str
    name: str
    attempt: int
    """The intent (`ToolStartedEvent.attempt`) the answer is about."""
    answer: ReconcileAnswer
