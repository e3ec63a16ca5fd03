"""Helpers for testing agents and stores offline: crash injection and fake provider servers.

`FakeOpenAIServer` and `FakeAnthropicServer` are real HTTP servers on
127.0.0.1 that the official SDKs talk to: scripted answers (`Reply`, or just a
`str` / `ToolCall`), injected faults (`Fault`) and recorded requests
(`RecordedRequest`). See docs/testing.md.
"""

from durable_agent.testing.crash import KillSwitchBackend
from durable_agent.testing.fake_servers import (
    FakeAnthropicServer,
    FakeOpenAIServer,
    Fault,
    RecordedRequest,
    Reply,
    Responder,
    ScriptItem,
)

__all__ = [
    "FakeAnthropicServer",
    "FakeOpenAIServer",
    "Fault",
    "KillSwitchBackend",
    "RecordedRequest",
    "Reply",
    "Responder",
    "ScriptItem",
]
