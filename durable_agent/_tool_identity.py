"""Tool identity: what an intent records of its tool, and what a resume makes of a change.

Each tool intent names the tool as it was (`ToolSignature`: name, hash of the
argument schema, ``idempotent``) and the agent's ``version=``. A call in flight
at a crash whose tool is gone, or whose schema or ``idempotent`` setting
changed before the resume, is never run (or reported "unknown") as if nothing
happened: it waits for a human with a requirement saying what changed. A new
run records its tools too, so starting a caller-chosen run id again with other
tools, another task or another output format is refused (`start_conflicts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from durable_agent.records import (
    CreatedEvent,
    Message,
    OutputFormat,
    SystemMessage,
    ToolCallPart,
    ToolSignature,
    ToolStartedEvent,
    UserMessage,
)
from durable_agent.tools import Tool

__all__ = ["identity_change", "intent_fields", "start_conflicts", "tool_signatures"]


def intent_fields(
    tool: Tool | None, call: ToolCallPart, attempt: int, agent_version: str | None
) -> dict[str, Any]:
    """The fields of the `ToolStartedEvent` for ``call``'s ``attempt``."""
    fields: dict[str, Any] = {"call_id": call.id, "name": call.name, "attempt": attempt}
    if tool is not None:
        fields["schema_hash"] = tool.schema_hash
        fields["idempotent"] = tool.idempotent
    if agent_version is not None:
        fields["agent_version"] = agent_version
    return fields


def tool_signatures(tools: Mapping[str, Tool]) -> tuple[ToolSignature, ...]:
    """The signatures of ``tools``, sorted by name (as a run records them)."""
    return tuple(tools[name].signature() for name in sorted(tools))


def identity_change(
    call: ToolCallPart,
    intent: ToolStartedEvent | None,
    tools: Mapping[str, Tool],
    agent_version: str | None,
) -> str | None:
    """What changed about the tool of an in-flight ``call`` since its ``intent``, or None.

    A tool that is gone always counts; a schema or ``idempotent`` change only
    when the intent recorded them (records before schema version 2 did not).
    """
    tool = tools.get(call.name)
    if tool is None:
        recorded = intent.schema_hash if intent is not None else None
        same = sorted(t.name for t in tools.values() if recorded and t.schema_hash == recorded)
        hint = f"; {', '.join(same)} takes the same arguments (renamed?)" if same else ""
        return (
            f"tool {call.name!r} is no longer registered (removed or renamed){hint}; the call "
            "was in flight at a crash and may have taken effect"
        )
    if intent is None or intent.schema_hash is None:
        return None
    changes = []
    if intent.schema_hash != tool.schema_hash:
        changes.append(
            f"its argument schema changed (hash {intent.schema_hash} -> {tool.schema_hash})"
        )
    if intent.idempotent is not None and intent.idempotent != tool.idempotent:
        changes.append(f"idempotent={intent.idempotent} -> idempotent={tool.idempotent}")
    if not changes:
        return None
    version = ""
    if intent.agent_version != agent_version:
        version = f" (agent version {intent.agent_version!r} -> {agent_version!r})"
    return (
        f"tool {call.name!r} changed since the call started{version}: {'; '.join(changes)}; "
        "the call was in flight at a crash and may have taken effect"
    )


def start_conflicts(
    created: CreatedEvent,
    messages: Sequence[Message],
    tools: Mapping[str, Tool],
    output_format: OutputFormat | None,
) -> list[str]:
    """How a start with ``messages``, ``tools`` and ``output_format`` differs from ``created``.

    Empty when it is the same start (an idempotent retry). Tools are compared
    only when the run recorded them (schema version 2 and later).
    """
    differences = []
    stored_task, given_task = _task(created.messages), _task(messages)
    if stored_task != given_task:
        differences.append(
            f"the task description differs (stored {_short(stored_task)}, "
            f"given {_short(given_task)})"
        )
    if _system(created.messages) != _system(messages):
        differences.append("the system prompt differs")
    if created.tools is not None:
        stored = {t.name: t for t in created.tools}
        given = {t.name: t for t in tool_signatures(tools)}
        parts = []
        if gone := sorted(set(stored) - set(given)):
            parts.append(f"{', '.join(gone)} not given")
        if new := sorted(set(given) - set(stored)):
            parts.append(f"{', '.join(new)} not in the stored run")
        if changed := sorted(n for n in set(stored) & set(given) if stored[n] != given[n]):
            parts.append(f"{', '.join(changed)} changed (schema or idempotent)")
        if parts:
            differences.append(f"the tools differ: {'; '.join(parts)}")
    stored_format = created.output_format.model_dump() if created.output_format else None
    given_format = output_format.model_dump() if output_format else None
    if stored_format != given_format:
        name = created.output_format.name if created.output_format else "none"
        differences.append(
            f"the output format differs (stored {name}, given "
            f"{output_format.name if output_format else 'none'})"
        )
    return differences


def _task(messages: Sequence[Message]) -> str | None:
    return next((m.content for m in messages if isinstance(m, UserMessage)), None)


def _system(messages: Sequence[Message]) -> str | None:
    return next((m.content for m in messages if isinstance(m, SystemMessage)), None)


def _short(text: str | None, width: int = 40) -> str:
    if text is None:
        return "none"
    return repr(text if len(text) <= width else text[: width - 1] + "…")
