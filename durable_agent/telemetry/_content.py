"""Opt-in content for spans: messages and tool payloads as GenAI JSON, always redacted.

Only called when content capture is on (`durable_agent.telemetry.configure`).
Every text passes through `durable_agent._redact.redact`, so a secret marked
with `mark_secret` (API keys, headers) never reaches a span.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from durable_agent._redact import redact
from durable_agent.records import AssistantMessage, JSONValue, Message, ToolResultMessage

__all__ = ["arguments_json", "messages_json", "text"]


def _parts(message: Message) -> list[dict[str, Any]]:
    if isinstance(message, AssistantMessage):
        parts: list[dict[str, Any]] = []
        if message.content:
            parts.append({"type": "text", "content": message.content})
        parts.extend(
            {"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments}
            for c in message.tool_calls
        )
        return parts
    if isinstance(message, ToolResultMessage):
        return [{"type": "tool_call_response", "id": message.call_id, "response": message.content}]
    return [{"type": "text", "content": message.content}]


def messages_json(messages: Iterable[Message]) -> str:
    """``gen_ai.input.messages`` / ``gen_ai.output.messages``: role and parts per message."""
    return redact(
        json.dumps([{"role": m.role, "parts": _parts(m)} for m in messages], ensure_ascii=False)
    )


def arguments_json(arguments: dict[str, JSONValue]) -> str:
    """``gen_ai.tool.call.arguments``."""
    return redact(json.dumps(arguments, ensure_ascii=False))


def text(value: str) -> str:
    """Any other captured text (a tool result, an error message)."""
    return redact(value)
