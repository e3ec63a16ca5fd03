"""Chat models: the `ChatModel` contract and the model-string registry.

A model is anything with one async `ChatModel.request` method taking the
provider-neutral history and the tool definitions; `ChatModel.stream` is the
optional streaming twin (text deltas, then the same `ModelResponse`), which
falls back to one request for models that do not stream. Vendor adapters live one
module per vendor and import their SDK lazily, so ``import durable_agent``
imports no SDK; model strings such as ``"openai/gpt-4o-mini"`` resolve here.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from durable_agent.errors import ConfigurationError, ModelNotAvailableError
from durable_agent.records import AssistantMessage, JSONValue, Message, Usage

__all__ = [
    "ChatModel",
    "ModelDelta",
    "ModelResponse",
    "OutputSchema",
    "ToolDefinition",
    "register_model_provider",
    "resolve_model",
]


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """What a model is told about a tool: its name, description and JSON schema."""

    name: str
    description: str
    parameters: dict[str, JSONValue]


@dataclass(frozen=True, slots=True)
class OutputSchema:
    """Structured output the final answer must match: a JSON schema with a name.

    Adapters pass it on in the provider's own way (OpenAI: a strict
    ``json_schema`` response format; Anthropic: a forced tool) and return the
    JSON text as the assistant message's ``content``.
    """

    name: str
    schema: dict[str, JSONValue]
    description: str = ""


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """One model answer with what it cost."""

    message: AssistantMessage
    model: str
    usage: Usage = field(default_factory=Usage)
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ModelDelta:
    """A piece of a streamed answer's text, as the provider sent it (not stored)."""

    text: str


class ChatModel(ABC):
    """The contract every model implements: one request, no retries of its own.

    Retries belong to the engine (its ``retry`` policy is the only retry), so an
    implementation raises on failure; a `durable_agent.errors.ModelError` with
    ``retryable=True``, a `ConnectionError` or a `TimeoutError` is retried.
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """The model's name as recorded in each model-response event."""

    @abstractmethod
    async def request(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None = None,
    ) -> ModelResponse:
        """Send the whole history and return the model's next message.

        ``messages`` is the run's live history: read it, do not keep or change it.

        With ``output_schema`` the final answer (a message without tool calls)
        must be JSON text matching it; the engine validates it.
        """

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None = None,
    ) -> AsyncIterator[ModelDelta | ModelResponse]:
        """Stream the next message: `ModelDelta` text pieces, then its `ModelResponse`.

        Optional: the default sends one `request` and yields its text as one
        delta, so any model can back `Agent.stream_async`. The last item is
        always the complete `ModelResponse` (usage included); for a text answer
        its content equals the deltas joined. A failure mid-stream raises as `request` does
        (a `ConnectionError` or retryable `ModelError` is retried by the engine).
        """
        response = await self.request(messages, tools=tools, output_schema=output_schema)
        if response.message.content:
            yield ModelDelta(response.message.content)
        yield response


_PROVIDERS: dict[str, str] = {
    "openai": "durable_agent.models.openai:OpenAIModel",
    "anthropic": "durable_agent.models.anthropic:AnthropicModel",
}


def register_model_provider(prefix: str, target: str) -> None:
    """Make ``"<prefix>/<model>"`` strings build ``target`` (``"module:Class"``).

    The class is imported only when such a string is resolved, and called with
    the model name as its only argument. Refuses to replace a known prefix.
    """
    if prefix in _PROVIDERS and _PROVIDERS[prefix] != target:
        raise ConfigurationError(
            f"model provider {prefix!r} is already registered as {_PROVIDERS[prefix]!r}"
        )
    if ":" not in target:
        raise ConfigurationError(f"provider target {target!r} must look like 'module:Class'")
    _PROVIDERS[prefix] = target


def resolve_model(spec: str) -> ChatModel:
    """Build the model a ``"provider/model-name"`` string names.

    Raises `ModelNotAvailableError` when the provider's adapter or SDK is not
    installed, with the install command, and `ConfigurationError` for a string
    that names no known provider.
    """
    prefix, sep, model_name = spec.partition("/")
    if not sep or not model_name:
        raise ConfigurationError(
            f"model {spec!r} must look like 'provider/model-name' (known providers: "
            f"{', '.join(sorted(_PROVIDERS))}) or be a ChatModel instance such as ScriptedModel"
        )
    target = _PROVIDERS.get(prefix)
    if target is None:
        raise ConfigurationError(
            f"unknown model provider {prefix!r} in {spec!r}; known: "
            f"{', '.join(sorted(_PROVIDERS))}, or register one with register_model_provider()"
        )
    module_name, _, class_name = target.partition(":")
    if importlib.util.find_spec(module_name) is None:
        raise ModelNotAvailableError(
            f"model {spec!r}: the {prefix} adapter ({module_name}) is not available in this "
            f"version of durable-agent; pass a ChatModel instance instead (for offline "
            f"use: durable_agent.ScriptedModel)"
        )
    module = importlib.import_module(module_name)
    factory = getattr(module, class_name)
    model = factory(model_name)
    if not isinstance(model, ChatModel):
        raise ConfigurationError(f"{target} did not build a ChatModel for {spec!r}")
    return model
