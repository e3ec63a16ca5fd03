"""Both real SDKs against the local fake servers: one `Provider` per SDK, shared helpers.

Every test here runs once per provider (the ``provider`` fixture). Nothing
leaves 127.0.0.1: the root conftest refuses other addresses and clears the
API-key variables; this one also clears the SDKs' other environment knobs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from durable_agent import RetryPolicy, ToolContext
from durable_agent.backend import Backend
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.models import ChatModel
from durable_agent.models.anthropic import AnthropicModel
from durable_agent.models.openai import OpenAIModel
from durable_agent.testing import FakeAnthropicServer, FakeOpenAIServer, RecordedRequest
from durable_agent.testing.fake_servers import ScriptItem

T = TypeVar("T")

API_KEY = "sk-test-Zq8vW3rLx0-durable-secret"
"""A distinctive key: tests scan stores for it."""

FAST = RetryPolicy(attempts=3, initial_delay=0.001, max_delay=0.01)

FakeServer = FakeOpenAIServer | FakeAnthropicServer


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine on a fresh event loop (no pytest plugin)."""
    return asyncio.run(coro)


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    content: str
    is_error: bool


@dataclass(frozen=True)
class Provider:
    """What a test needs to know about one SDK and its fake server."""

    name: str
    model_name: str
    key_env: str
    url_env: str

    def server(self, script: Any = (), **options: Any) -> FakeServer:
        cls = FakeOpenAIServer if self.name == "openai" else FakeAnthropicServer
        return cls(script, **options)

    def model(self, server: FakeServer, **options: Any) -> ChatModel:
        options.setdefault("api_key", API_KEY)
        if "base_url" not in options:
            options["base_url"] = server.base_url
        if self.name == "openai":
            return OpenAIModel(self.model_name, **options)
        return AnthropicModel(self.model_name, **options)

    @property
    def model_string(self) -> str:
        return f"{self.name}/{self.model_name}"

    def tool_results(self, request: RecordedRequest) -> list[ToolResult]:
        """The tool results a request carries, in order, in neutral terms."""
        out: list[ToolResult] = []
        for message in request.body["messages"]:
            if self.name == "openai":
                if message["role"] == "tool":
                    out.append(ToolResult(message["tool_call_id"], message["content"], False))
                continue
            if isinstance(message["content"], list):
                out.extend(
                    ToolResult(b["tool_use_id"], b["content"], b["is_error"])
                    for b in message["content"]
                    if b["type"] == "tool_result"
                )
        return out

    def tool_call_ids(self, request: RecordedRequest) -> list[str]:
        """The ids of the assistant tool calls a request's history carries."""
        ids: list[str] = []
        for message in request.body["messages"]:
            if message["role"] != "assistant":
                continue
            if self.name == "openai":
                ids.extend(c["id"] for c in message.get("tool_calls") or ())
            else:
                ids.extend(b["id"] for b in message["content"] if b["type"] == "tool_use")
        return ids


PROVIDERS = {
    "openai": Provider("openai", "gpt-4o-mini", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "anthropic": Provider(
        "anthropic", "claude-haiku-4-5", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"
    ),
}


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request: pytest.FixtureRequest) -> Provider:
    return PROVIDERS[request.param]


@pytest.fixture(autouse=True)
def _clean_sdk_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "OPENAI_BASE_URL",
        "OPENAI_ADMIN_KEY",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "OPENAI_CUSTOM_HEADERS",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_CUSTOM_HEADERS",
        "ANTHROPIC_PROFILE",
    ):
        monkeypatch.delenv(var, raising=False)


StoreFactory = Callable[[], Backend]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StoreFactory]:
    """Fresh `SqliteBackend` views of one file: a new 'process' per call."""
    opened: list[Backend] = []

    def factory() -> Backend:
        backend = SqliteBackend(tmp_path / "runs.db", session_id="s1", user_id="u1")
        opened.append(backend)
        return backend

    yield factory
    for backend in opened:
        asyncio.run(backend.close())


class Ledger:
    """Counts real tool executions by city."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def tools(self) -> list[Any]:
        async def lookup(city: str, ctx: ToolContext) -> str:
            """Look up the weather in a city."""
            self.calls[city] += 1
            return f"sunny in {city}"

        return [lookup]


async def serve(server: FakeServer, body: Callable[[FakeServer], Coroutine[Any, Any, T]]) -> T:
    """Run ``body`` while ``server`` listens on this loop."""
    async with server:
        return await body(server)


def script(*items: ScriptItem) -> list[ScriptItem]:
    return list(items)
