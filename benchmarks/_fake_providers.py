"""The fake provider servers and the models on them, for the provider benchmarks (f, j).

The servers (`durable_agent.testing`'s fakes) run in a child process, so their
work never shares the measured process's event loop or its GIL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from durable_agent.models import ChatModel
from durable_agent.models.anthropic import AnthropicModel
from durable_agent.models.openai import OpenAIModel

__all__ = ["KEY", "fake_servers", "make_model"]

KEY = "bench-key"
"""The API key every benchmark client sends (the fake servers take any)."""

_CHILD = """
import contextlib, json, sys
from durable_agent.testing import FakeAnthropicServer, FakeOpenAIServer, Reply
{servers}
with contextlib.ExitStack() as stack:
    for server in servers.values():
        stack.enter_context(server.running_in_thread())
    print(json.dumps({{name: s.base_url for name, s in servers.items()}}), flush=True)
    sys.stdin.read()
"""


@contextmanager
def fake_servers(servers: str) -> Iterator[dict[str, str]]:
    """The fake servers in a child process; yields their base URLs by name.

    ``servers`` is Python source that sets ``servers``, a dict of names to
    `FakeOpenAIServer` / `FakeAnthropicServer` (``Reply`` is imported too).
    """
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(servers=servers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        yield json.loads(child.stdout.readline())
    finally:
        child.stdin.close()
        child.stdout.close()
        child.wait(timeout=30)


def make_model(provider: str, base_url: str) -> ChatModel:
    """The adapter of ``provider`` (``"openai"`` or ``"anthropic"``) on a fake server."""
    if provider == "openai":
        return OpenAIModel("gpt-4o-mini", api_key=KEY, base_url=base_url)
    return AnthropicModel("claude-haiku-4-5", api_key=KEY, base_url=base_url)
