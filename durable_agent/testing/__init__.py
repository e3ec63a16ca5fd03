"""Helpers for testing agents and stores offline: crash tests, crash injection, fake servers.

`crashtest` kills your own agent after every durable write, resumes it in a
new process and reports what ran again (docs/testing.md).

`FakeOpenAIServer` and `FakeAnthropicServer` are real HTTP servers on
127.0.0.1 that the official SDKs talk to: scripted answers (`Reply`, or just a
`str` / `ToolCall`), injected faults (`Fault`) and recorded requests
(`RecordedRequest`). See docs/testing.md.
"""

from durable_agent.testing.crash import KillSwitchBackend
from durable_agent.testing.crashtest import (
    CrashReport,
    CrashtestError,
    KillPoint,
    ToolFinding,
    crashtest,
)
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
    "CrashReport",
    "CrashtestError",
    "FakeAnthropicServer",
    "FakeOpenAIServer",
    "Fault",
    "KillPoint",
    "KillSwitchBackend",
    "RecordedRequest",
    "Reply",
    "Responder",
    "ScriptItem",
    "ToolFinding",
    "crashtest",
]
