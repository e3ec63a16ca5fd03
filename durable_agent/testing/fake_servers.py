"""`FakeOpenAIServer` and `FakeAnthropicServer`: local protocol servers for offline tests.

Each is a real HTTP server on 127.0.0.1 that speaks enough of its provider's
API (Chat Completions; Messages) for the official SDK: it answers each request
with the next item of a script, records every request, and injects faults:

```python
async with FakeOpenAIServer(
    [Fault.http(500), ToolCall("lookup", {"city": "Oslo"}), "Sunny in Oslo."]
) as server:
    model = OpenAIModel("gpt-4o-mini", base_url=server.base_url, api_key="test")
    ...
    assert len(server.requests) == 3
```

A script item is a final text (`str`), a `ToolCall`, a list of them (parallel
calls in one answer), a `Reply` (text, tool calls, structured output, usage,
stop reason, delay) or a `Fault` (an HTTP error with body and ``Retry-After``,
a hang past the client's timeout, malformed JSON, a connection dropped
mid-body). Instead of a list, a function of the `RecordedRequest` may choose
each answer. Like the real APIs, the servers refuse malformed conversations
(a tool result that answers no call) with HTTP 400, and with ``api_key=...``
they refuse other keys with HTTP 401.
"""

from __future__ import annotations

from durable_agent.testing._fake_anthropic import FakeAnthropicServer
from durable_agent.testing._fake_http import RecordedRequest
from durable_agent.testing._fake_openai import FakeOpenAIServer
from durable_agent.testing._fake_script import Fault, FaultKind, Reply, Responder, ScriptItem

__all__ = [
    "FakeAnthropicServer",
    "FakeOpenAIServer",
    "Fault",
    "FaultKind",
    "RecordedRequest",
    "Reply",
    "Responder",
    "ScriptItem",
]
