"""`AnthropicModel`: the Messages API through the official ``anthropic`` SDK.

The SDK is imported when this module is, and this module only when a model
string such as ``"anthropic/claude-haiku-4-5"`` is resolved or
`AnthropicModel` is imported, so ``import durable_agent`` never pays for it.

The SDK's own retries are off (``max_retries=0``): the engine's ``retry`` is the
only retry. SDK exceptions are translated here into `durable_agent.errors`
types, chained with ``from exc``.

Mapping the provider-neutral history: system messages go to the ``system``
parameter; tool calls become ``tool_use`` blocks and tool results
``tool_result`` blocks (with ``is_error``) in a user turn, consecutive turns of
one role merged into one message, as the API wants them.

Structured output goes through a tool whose input schema is the output schema:
with no other tools it is forced (``tool_choice`` names it); with other tools
it is offered beside them with ``tool_choice`` ``any``, so the model may call
tools first but cannot end with free text, and a call to it is the final
answer. Its input becomes the assistant message's content, as JSON text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from durable_agent._redact import redact
from durable_agent.errors import ModelError, ModelResponseError
from durable_agent.models import (
    ModelDelta,
    ModelResponse,
    OutputSchema,
    ToolDefinition,
)
from durable_agent.models._http import (
    LoopHTTPClients,
    check_max_tokens,
    check_timeout,
    install_hint,
    safe_name,
)
from durable_agent.models._provider_common import (
    Credentials,
    SDKErrors,
    SDKModel,
    broke_off,
    client_error,
    loop_http_clients,
    malformed,
    translate_sdk_error,
)
from durable_agent.records import (
    AssistantMessage,
    JSONValue,
    Message,
    SystemMessage,
    ToolCallPart,
    ToolResultMessage,
    Usage,
    UserMessage,
)

try:
    import anthropic
    from anthropic.types import Message as AnthropicMessage
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess test
    raise install_hint("anthropic", "anthropic") from _missing

if TYPE_CHECKING:
    from anthropic.types import MessageParam, ToolChoiceParam, ToolParam

__all__ = ["AnthropicModel"]

_PROVIDER = "Anthropic"
_KEY_ENV = "ANTHROPIC_API_KEY"
_RETRYABLE_STREAM_ERRORS = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)
"""Error types of a stream's ``error`` event that another attempt may get past."""
_DEFAULT_OUTPUT_DESCRIPTION = "Give the final answer in this shape. Call this only to finish."


class AnthropicModel(SDKModel[anthropic.AsyncAnthropic, anthropic.DefaultAsyncHttpxClient]):
    """A chat model served by the Anthropic Messages API.

    Args:
        model: the model name, such as ``"claude-haiku-4-5"``.
        api_key: the API key; defaults to the ``ANTHROPIC_API_KEY`` environment
            variable. A missing key raises `ConfigurationError` here, before any run.
        base_url: the API root (``https://api.anthropic.com`` by default, or the
            ``ANTHROPIC_BASE_URL`` environment variable).
        timeout: seconds one request may take in total; a timeout is retryable.
        headers: extra HTTP headers sent with every request.
        client: a ready ``anthropic.AsyncAnthropic``; its retries are turned
            off, and ``api_key``/``base_url``/``headers`` are not used.
        max_tokens: the output token limit of each answer (the API requires one).
    """

    _label = "AnthropicModel"
    _prefix = "anthropic"
    _provider = _PROVIDER
    _key_env = _KEY_ENV
    _base_url_env = "ANTHROPIC_BASE_URL"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
        headers: Mapping[str, str] | None = None,
        client: anthropic.AsyncAnthropic | None = None,
        max_tokens: int = 1024,
    ) -> None:
        owner = f"AnthropicModel({model!r})"
        check_max_tokens(max_tokens, owner)
        self.model = model
        self.timeout = check_timeout(timeout, owner)
        self.max_tokens = max_tokens
        self._connect(
            owner=owner, api_key=api_key, base_url=base_url, headers=headers,
            client=client, credentials=_credentials, http=_HTTP,
        )

    def _new_client(self, http: anthropic.DefaultAsyncHttpxClient) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(**self._client_options(http))

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None = None,
    ) -> AsyncIterator[ModelDelta | ModelResponse]:
        """Stream the answer (Messages streaming): text deltas, then the answer."""
        # The streaming generator itself, not a generator around it (see OpenAIModel.stream).
        from durable_agent.models._anthropic_stream import stream_message

        return stream_message(self, messages, tools, output_schema)

    def _prepare(
        self, messages: Sequence[Message], tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None,
    ) -> tuple[dict[str, Any], str | None]:
        """The request's keyword arguments, and the name of the output tool if any."""
        system, turns = to_anthropic_messages(messages)
        options: dict[str, Any] = {
            "model": self.model, "max_tokens": self.max_tokens, "messages": turns,
            "timeout": self.timeout,
        }
        if system:
            options["system"] = system
        offered = _tools(tools)
        output_tool: str | None = None
        if output_schema is not None:
            output_tool = _output_tool_name(output_schema, tools)
            offered.append(
                {
                    "name": output_tool,
                    "description": output_schema.description or _DEFAULT_OUTPUT_DESCRIPTION,
                    "input_schema": output_schema.schema,
                }
            )
            choice: dict[str, object] = (
                {"type": "any"} if tools else {"type": "tool", "name": output_tool}
            )
            options["tool_choice"] = cast("ToolChoiceParam", choice)
        if offered:
            options["tools"] = cast("list[ToolParam]", offered)
        return options, output_tool

    async def _request(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None,
    ) -> ModelResponse:
        client = self._client()
        options, output_tool = self._prepare(messages, tools, output_schema)
        deadline = asyncio.get_running_loop().time() + self.timeout
        answer = await self._call(
            client, lambda: client.messages.create(**options), deadline=deadline
        )
        if not isinstance(answer, AnthropicMessage):
            raise _malformed(f"expected a message, got {type(answer).__name__}")
        try:
            return self._answer(answer, output_tool)
        except (AttributeError, TypeError, KeyError, IndexError) as exc:
            # A 200 whose JSON is not a message: the SDK does not validate it.
            raise _malformed(f"not the Messages API's shape ({exc})") from exc

    def _translated(self, exc: Exception, client: anthropic.AsyncAnthropic) -> ModelError | None:
        """Our error for an SDK (or stream) failure, or None for one that is not the SDK's."""
        if isinstance(exc, anthropic.APIStatusError) and exc.status_code < 400:
            # An error event inside a stream (the status was 200): the server broke off.
            body = exc.body if isinstance(exc.body, dict) else {}
            error = body.get("error")
            kind = error.get("type") if isinstance(error, dict) else None
            return broke_off(
                _PROVIDER, kind, exc.body, exc.message,
                retryable=kind in _RETRYABLE_STREAM_ERRORS,
            )
        mine = translate_sdk_error(exc, errors=_ERRORS, model=self, base_url=client.base_url)
        if mine is None and isinstance(exc, anthropic.AnthropicError):
            return client_error(_PROVIDER, exc)
        return mine

    def _answer(self, answer: AnthropicMessage, output_tool: str | None) -> ModelResponse:
        """Turn a message into ours; stop reasons that end a run raise."""
        blocks = list(answer.content)
        stop = answer.stop_reason
        usage = answer.usage
        where = f"{_PROVIDER} model {self.model!r}"
        texts = [b.text for b in blocks if b.type == "text"]
        if stop == "max_tokens":
            raise ModelResponseError(
                f"{where} stopped at max_tokens={self.max_tokens} before finishing "
                "(stop_reason 'max_tokens'); pass a larger AnthropicModel(max_tokens=...) or "
                "ask for a shorter answer"
            )
        if stop == "model_context_window_exceeded":
            raise ModelResponseError(
                f"{where} stopped: the conversation fills its context window "
                "(stop_reason 'model_context_window_exceeded'); shorten the history"
            )
        if stop == "refusal":
            said = " ".join(texts).strip()
            raise ModelResponseError(
                f"{where} refused to answer (stop_reason 'refusal')"
                + (f": {redact(said)[:300]}" if said else "")
            )
        calls: list[ToolCallPart] = []
        final: str | None = None
        for block in blocks:
            if block.type != "tool_use":
                continue
            if not isinstance(block.input, dict):
                raise _malformed(f"tool {block.name!r} input is not a JSON object")
            arguments = cast("dict[str, JSONValue]", block.input)
            if block.name == output_tool:
                if final is None:
                    final = json.dumps(arguments)
            else:
                calls.append(ToolCallPart(id=block.id, name=block.name, arguments=arguments))
        if calls:
            # Tool calls beside the output tool: the tools run first and the
            # model answers again, so the early output call is dropped unseen.
            content = "\n".join(texts) or None
        elif final is not None:
            content = final
        else:
            content = "\n".join(texts)
        input_tokens = (
            usage.input_tokens
            + (usage.cache_creation_input_tokens or 0)
            + (usage.cache_read_input_tokens or 0)
        )
        return ModelResponse(
            message=AssistantMessage(content=content, tool_calls=tuple(calls)),
            model=f"anthropic/{answer.model or self.model}",
            usage=Usage(input_tokens=input_tokens, output_tokens=usage.output_tokens, requests=1),
            request_id=answer._request_id or answer.id or None,
        )


_HTTP: LoopHTTPClients[anthropic.DefaultAsyncHttpxClient] = loop_http_clients(
    anthropic.DefaultAsyncHttpxClient
)
"""Connections to the provider: one pool per event loop, shared by every model."""
_ERRORS = SDKErrors.of(anthropic)
_malformed = partial(malformed, _PROVIDER)


def _credentials(client: anthropic.AsyncAnthropic) -> Credentials:
    return Credentials(
        client.api_key or client.auth_token or None, key=client.api_key, extra=[client.auth_token]
    )


def _output_tool_name(output: OutputSchema, tools: Sequence[ToolDefinition]) -> str:
    taken = {t.name for t in tools}
    name = safe_name(output.name, limit=120)
    while name in taken:
        name += "_output"
    return name


def _tools(tools: Sequence[ToolDefinition]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for tool in tools:
        item: dict[str, object] = {"name": tool.name, "input_schema": tool.parameters}
        if tool.description:
            item["description"] = tool.description
        out.append(item)
    return out


def _tool_id(call_id: str) -> str:
    # Tool-use ids must match [a-zA-Z0-9_-]+; ids recorded from another provider
    # are mapped the same way in the tool_use and its tool_result.
    return safe_name(call_id, limit=128)


def to_anthropic_messages(
    messages: Sequence[Message],
) -> tuple[str, list[MessageParam]]:
    """The provider-neutral history as a ``system`` text and Messages API turns."""
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, object]]]] = []

    def add(role: str, blocks: list[dict[str, object]]) -> None:
        if not blocks:
            return
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))

    for message in messages:
        match message:
            case SystemMessage():
                system.append(message.content)
            case UserMessage():
                add("user", [{"type": "text", "text": message.content}])
            case AssistantMessage():
                blocks: list[dict[str, object]] = []
                if message.content and message.content.strip():
                    blocks.append({"type": "text", "text": message.content})
                blocks.extend(
                    {
                        "type": "tool_use",
                        "id": _tool_id(call.id),
                        "name": call.name,
                        "input": call.arguments,
                    }
                    for call in message.tool_calls
                )
                add("assistant", blocks)
            case ToolResultMessage():
                add(
                    "user",
                    [
                        {
                            "type": "tool_result",
                            "tool_use_id": _tool_id(message.call_id),
                            "content": message.content,
                            "is_error": message.is_error,
                        }
                    ],
                )
    params = [{"role": role, "content": blocks} for role, blocks in turns]
    return "\n\n".join(system), cast("list[MessageParam]", params)
