"""`OpenAIModel`: the Chat Completions API through the official ``openai`` SDK.

Chat Completions (not the Responses API), so any OpenAI-compatible server
works through ``base_url``. The SDK is imported when this module is, and this
module only when a model string such as ``"openai/gpt-4o-mini"`` is resolved or
`OpenAIModel` is imported, so ``import durable_agent`` never pays for it.

The SDK's own retries are off (``max_retries=0``): the engine's ``retry`` is the
only retry, and every failed attempt is recorded in the run's history. SDK
exceptions are translated here into `durable_agent.errors` types, chained with
``from exc``.
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
    parse_arguments,
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
    import openai
    from openai.types.chat import ChatCompletion
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess test
    raise install_hint("openai", "openai") from _missing

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolUnionParam
    from openai.types.chat.completion_create_params import ResponseFormat

__all__ = ["OpenAIModel"]

_PROVIDER = "OpenAI"
_KEY_ENV = "OPENAI_API_KEY"
_ERROR_PREFIX = "Error: "
"""Put before an error tool result's text: Chat Completions has no error flag."""


class OpenAIModel(SDKModel[openai.AsyncOpenAI, openai.DefaultAsyncHttpxClient]):
    """A chat model served by the OpenAI Chat Completions API (or a compatible server).

    Args:
        model: the model name, such as ``"gpt-4o-mini"``.
        api_key: the API key; defaults to the ``OPENAI_API_KEY`` environment
            variable. A missing key raises `ConfigurationError` here, before any run.
        base_url: the API root (``https://api.openai.com/v1`` by default, or the
            ``OPENAI_BASE_URL`` environment variable).
        timeout: seconds one request may take in total; a timeout is retryable.
        headers: extra HTTP headers sent with every request.
        client: a ready ``openai.AsyncOpenAI``; its retries are turned off, and
            ``api_key``/``base_url``/``headers`` are not used.
        max_tokens: an output token limit sent as ``max_completion_tokens``.
    """

    _label = "OpenAIModel"
    _prefix = "openai"
    _provider = _PROVIDER
    _key_env = _KEY_ENV
    _base_url_env = "OPENAI_BASE_URL"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
        headers: Mapping[str, str] | None = None,
        client: openai.AsyncOpenAI | None = None,
        max_tokens: int | None = None,
    ) -> None:
        owner = f"OpenAIModel({model!r})"
        self.model = model
        self.timeout = check_timeout(timeout, owner)
        if max_tokens is not None:
            check_max_tokens(max_tokens, owner)
        self.max_tokens = max_tokens
        self._connect(
            owner=owner, api_key=api_key, base_url=base_url, headers=headers,
            client=client, credentials=_credentials, http=_HTTP,
        )

    def _new_client(self, http: openai.DefaultAsyncHttpxClient) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(**self._client_options(http))

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None = None,
    ) -> AsyncIterator[ModelDelta | ModelResponse]:
        """Stream the answer (``stream=True``, usage included): text deltas, then the answer."""
        # The streaming generator itself, not a generator around it: each layer
        # costs every item a hop and the first delta an allocation (it cleans
        # its failures of secrets as `redacted` does).
        from durable_agent.models._openai_stream import stream_completion

        return stream_completion(self, messages, tools, output_schema)

    def _options(
        self, messages: Sequence[Message], tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None,
    ) -> dict[str, Any]:
        """The request's keyword arguments."""
        options: dict[str, Any] = {
            "model": self.model, "messages": to_openai_messages(messages), "timeout": self.timeout,
        }
        if tools:
            options["tools"] = _tools(tools)
        if output_schema is not None:
            options["response_format"] = response_format(output_schema)
        if self.max_tokens is not None:
            options["max_completion_tokens"] = self.max_tokens
        return options

    async def _request(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None,
    ) -> ModelResponse:
        client = self._client()
        options = self._options(messages, tools, output_schema)
        deadline = asyncio.get_running_loop().time() + self.timeout
        completion = await self._call(
            client, lambda: client.chat.completions.create(**options), deadline=deadline
        )
        if not isinstance(completion, ChatCompletion):
            raise _malformed(f"expected a chat completion, got {type(completion).__name__}")
        try:
            return self._answer(completion)
        except (AttributeError, TypeError, KeyError, IndexError) as exc:
            # A 200 whose JSON is not a completion: the SDK does not validate it.
            raise _malformed(f"not the Chat Completions shape ({exc})") from exc

    def _translated(self, exc: Exception, client: openai.AsyncOpenAI) -> ModelError | None:
        """Our error for an SDK (or stream) failure, or None for one that is not the SDK's."""
        mine = translate_sdk_error(exc, errors=_ERRORS, model=self, base_url=client.base_url)
        if mine is not None:
            return mine
        if isinstance(exc, openai.APIError) and exc.request is not None and isinstance(
            exc.body, dict
        ):
            # An error event inside a stream (the status was 200): the server broke off.
            kind = exc.body.get("type")
            return broke_off(
                _PROVIDER, kind, exc.body, exc.message, retryable=kind != "invalid_request_error"
            )
        if isinstance(exc, openai.OpenAIError):
            return client_error(_PROVIDER, exc)
        return None

    def _answer(self, completion: ChatCompletion) -> ModelResponse:
        """Turn a completion into our message; stop reasons that end a run raise."""
        choice = completion.choices[0]
        reply = choice.message
        finish = choice.finish_reason
        calls = list(reply.tool_calls or ())
        content = reply.content
        refusal = reply.refusal
        where = f"{_PROVIDER} model {self.model!r}"
        if refusal:
            raise ModelResponseError(f"{where} refused to answer: {redact(refusal)[:300]}")
        if finish == "length":
            limit = (
                f"max_tokens={self.max_tokens} (OpenAIModel(max_tokens=...))"
                if self.max_tokens is not None
                else "the model's output token limit"
            )
            raise ModelResponseError(
                f"{where} stopped at {limit} before finishing (finish_reason 'length'); "
                "raise the limit or ask for a shorter answer"
            )
        if finish == "content_filter":
            raise ModelResponseError(
                f"{where} withheld its answer: the provider's content filter stopped it "
                "(finish_reason 'content_filter')"
            )
        parts: list[ToolCallPart] = []
        for call in calls:
            if call.type != "function":
                raise ModelResponseError(
                    f"{where} made a {call.type!r} tool call, which durable-agent does not support"
                )
            parts.append(
                ToolCallPart(
                    id=call.id,
                    name=call.function.name,
                    arguments=parse_arguments(
                        call.function.arguments, provider=_PROVIDER, tool=call.function.name
                    ),
                )
            )
        usage = completion.usage
        return ModelResponse(
            message=AssistantMessage(content=content, tool_calls=tuple(parts)),
            model=f"openai/{completion.model or self.model}",
            usage=Usage(
                input_tokens=usage.prompt_tokens if usage else 0,
                output_tokens=usage.completion_tokens if usage else 0,
                requests=1,
            ),
            request_id=completion._request_id or completion.id or None,
        )


_HTTP: LoopHTTPClients[openai.DefaultAsyncHttpxClient] = loop_http_clients(
    openai.DefaultAsyncHttpxClient
)
"""Connections to the provider: one pool per event loop, shared by every model."""
_ERRORS = SDKErrors.of(openai)
_malformed = partial(malformed, _PROVIDER)


def _credentials(client: openai.AsyncOpenAI) -> Credentials:
    secret = client.api_key if isinstance(client.api_key, str) else None
    return Credentials(secret, key=secret)


def to_openai_messages(messages: Sequence[Message]) -> list[ChatCompletionMessageParam]:
    """The provider-neutral history as Chat Completions messages."""
    out: list[dict[str, object]] = []
    for message in messages:
        match message:
            case SystemMessage():
                out.append({"role": "system", "content": message.content})
            case UserMessage():
                out.append({"role": "user", "content": message.content})
            case AssistantMessage():
                item: dict[str, object] = {"role": "assistant", "content": message.content}
                if message.tool_calls:
                    item["tool_calls"] = [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {
                                "name": call.name,
                                "arguments": json.dumps(call.arguments),
                            },
                        }
                        for call in message.tool_calls
                    ]
                out.append(item)
            case ToolResultMessage():
                content = message.content
                if message.is_error and not content.startswith(_ERROR_PREFIX):
                    content = _ERROR_PREFIX + content
                out.append({"role": "tool", "tool_call_id": message.call_id, "content": content})
    return cast("list[ChatCompletionMessageParam]", out)


def _tools(tools: Sequence[ToolDefinition]) -> list[ChatCompletionToolUnionParam]:
    out: list[dict[str, object]] = []
    for tool in tools:
        function: dict[str, object] = {"name": tool.name, "parameters": tool.parameters}
        if tool.description:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return cast("list[ChatCompletionToolUnionParam]", out)


def response_format(output: OutputSchema) -> ResponseFormat:
    """A ``json_schema`` response format; strict when the schema allows it.

    Strict mode needs every object to list all its properties as required and
    to forbid others. ``additionalProperties: false`` is added where it is
    missing; a schema with optional properties is sent non-strict rather than
    changed in meaning (the engine validates the answer either way).
    """
    schema, strict = _strict_schema(output.schema)
    spec: dict[str, object] = {
        "name": safe_name(output.name),
        "schema": schema if strict else output.schema,
        "strict": strict,
    }
    if output.description:
        spec["description"] = output.description
    return cast("ResponseFormat", {"type": "json_schema", "json_schema": spec})


def _strict_schema(schema: dict[str, JSONValue]) -> tuple[dict[str, JSONValue], bool]:
    ok = True

    def walk(node: JSONValue) -> JSONValue:
        nonlocal ok
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        copy = {key: walk(value) for key, value in node.items()}
        properties = copy.get("properties")
        if copy.get("type") == "object" or isinstance(properties, dict):
            if copy.get("additionalProperties", False) is not False:
                ok = False
            copy["additionalProperties"] = False
            names = set(properties) if isinstance(properties, dict) else set()
            required = copy.get("required", [])
            if not isinstance(required, list) or names != set(required):
                ok = False
        return copy

    walked = walk(schema)
    assert isinstance(walked, dict)
    return walked, ok
