"""`FakeOpenAIServer` and `FakeAnthropicServer`: local protocol servers for offline tests.

Each is a real HTTP server on 127.0.0.1 that speaks enough of its provider's
API (Chat Completions; Messages) for the official SDK: it answers each request
with the next item of a script, records every request, and injects faults::

    async with FakeOpenAIServer(
        [Fault.http(500), ToolCall("lookup", {"city": "Oslo"}), "Sunny in Oslo."]
    ) as server:
        model = OpenAIModel("gpt-4o-mini", base_url=server.base_url, api_key="test")
        ...
        assert len(server.requests) == 3

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

import itertools
import json
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from durable_agent.models.scripted import ToolCall
from durable_agent.records import JSONValue
from durable_agent.testing._fake_http import HTTPFakeServer, Plan, RecordedRequest

__all__ = [
    "FakeAnthropicServer",
    "FakeOpenAIServer",
    "Fault",
    "RecordedRequest",
    "Reply",
    "Responder",
    "ScriptItem",
]


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer, in provider-neutral terms.

    Args:
        text: the answer's text.
        tool_calls: tool calls in this answer (several are parallel calls).
        output: structured output: OpenAI sends it as JSON text, Anthropic as a
            call of the output tool the request forces (or else its last tool).
        refusal: the model refuses with this text.
        stop: ``"stop"``, ``"tool_calls"``, ``"length"``, ``"content_filter"``,
            ``"refusal"``, or a provider's own value; by default ``tool_calls``
            when there are calls, else ``stop``.
        input_tokens / output_tokens: the usage reported (estimated from the
            sizes when None).
        delay: seconds to wait before answering.
    """

    text: str | None = None
    tool_calls: Sequence[ToolCall] = ()
    output: Mapping[str, JSONValue] | None = None
    refusal: str | None = None
    stop: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    delay: float = 0.0


FaultKind: TypeAlias = Literal["http", "hang", "malformed_json", "drop_connection"]


@dataclass(frozen=True, slots=True)
class Fault:
    """A failure to inject for one request; build one with the class methods."""

    kind: FaultKind
    status: int = 500
    message: str | None = None
    body: JSONValue | None = None
    retry_after: float | str | None = None
    retry_after_ms: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 60.0
    delay: float = 0.0

    @classmethod
    def http(
        cls,
        status: int = 500,
        message: str | None = None,
        *,
        body: JSONValue | None = None,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Answer with HTTP ``status`` and the provider's error body (or ``body`` as given).

        ``retry_after`` is sent as ``Retry-After`` (seconds, or a string such as
        an HTTP date); ``retry_after_ms`` as ``retry-after-ms``.
        """
        return cls(
            "http",
            status=status,
            message=message,
            body=body,
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            headers=dict(headers or {}),
            delay=delay,
        )

    @classmethod
    def hang(cls, seconds: float = 60.0) -> Fault:
        """Never answer: hold the request until the client gives up (or ``seconds`` pass)."""
        return cls("hang", seconds=seconds)

    @classmethod
    def malformed_json(cls) -> Fault:
        """Answer 200 with a JSON body cut off in the middle."""
        return cls("malformed_json")

    @classmethod
    def drop_connection(cls) -> Fault:
        """Send the headers and half the body, then close the connection."""
        return cls("drop_connection")


ScriptItem: TypeAlias = str | ToolCall | Sequence[ToolCall] | Reply | Fault
"""One scripted answer: text, a tool call, parallel tool calls, a `Reply` or a `Fault`."""

Responder: TypeAlias = Callable[[RecordedRequest], ScriptItem]
"""A function choosing the answer to each request, instead of a fixed script."""


def _as_reply(item: ScriptItem) -> Reply | Fault:
    if isinstance(item, Reply | Fault):
        return item
    if isinstance(item, str):
        return Reply(text=item)
    if isinstance(item, ToolCall):
        return Reply(tool_calls=(item,))
    calls = tuple(item)
    if calls and all(isinstance(c, ToolCall) for c in calls):
        return Reply(tool_calls=calls)
    raise TypeError(f"not a script item: {item!r}")


def _estimate(value: object) -> int:
    return len(json.dumps(value, default=str)) // 4 + 1


class _ScriptedServer(HTTPFakeServer):
    provider: ClassVar[str]
    request_id_header: ClassVar[str]

    def __init__(
        self,
        script: Sequence[ScriptItem] | Responder = (),
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self._lock = threading.Lock()
        self._responder: Responder | None = None
        self._queue: deque[Reply | Fault] = deque()
        if callable(script):
            self._responder = script
        else:
            if isinstance(script, str):
                raise TypeError(f"{type(self).__name__}(script) takes a list of items")
            self._queue.extend(_as_reply(item) for item in script)
        self._api_key = api_key
        self._ids = itertools.count()

    def add(self, *items: ScriptItem) -> None:
        """Append answers to the script."""
        with self._lock:
            self._queue.extend(_as_reply(item) for item in items)

    @property
    def remaining(self) -> int:
        """Scripted answers not used yet."""
        with self._lock:
            return len(self._queue)

    def plan(self, request: RecordedRequest, secret_headers: Mapping[str, str]) -> Plan:
        request_id = f"req_{request.index:04d}"
        problem = self.route(request)
        if problem is not None:
            return self._error(problem[0], problem[1], request_id)
        if self._api_key is not None and not self.authorized(secret_headers, self._api_key):
            return self._error(401, "invalid x-api-key / incorrect API key provided", request_id)
        invalid = self.invalid(request)
        if invalid is not None:
            return self._error(400, invalid, request_id)
        item = self._next(request)
        if item is None:
            return self._error(
                400,
                f"{type(self).__name__}: no scripted answer for request #{request.index + 1}; "
                "add one with server.add(...)",
                request_id,
            )
        if isinstance(item, Fault):
            return self._fault(item, request_id)
        try:
            body = self.render(item, request, request.index)
        except ValueError as exc:
            return self._error(400, str(exc), request_id)
        return Plan(
            body=json.dumps(body).encode(),
            headers={self.request_id_header: request_id},
            delay=item.delay,
        )

    def _next(self, request: RecordedRequest) -> Reply | Fault | None:
        if self._responder is not None:
            return _as_reply(self._responder(request))
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def _error(self, status: int, message: str, request_id: str) -> Plan:
        return Plan(
            status=status,
            body=json.dumps(self.error_body(status, message, request_id)).encode(),
            headers={self.request_id_header: request_id},
        )

    def _fault(self, fault: Fault, request_id: str) -> Plan:
        headers = {self.request_id_header: request_id}
        match fault.kind:
            case "hang":
                return Plan(hang=fault.seconds, delay=fault.delay)
            case "malformed_json":
                cut = b'{"id": "broken", "choices": [{"index": 0, "mess'
                return Plan(body=cut, headers=headers)
            case "drop_connection":
                body = json.dumps({"id": "cut", "padding": "x" * 512}).encode()
                return Plan(body=body, headers=headers, drop_after=len(body) // 2)
            case "http":
                if fault.retry_after is not None:
                    headers["retry-after"] = str(fault.retry_after)
                if fault.retry_after_ms is not None:
                    headers["retry-after-ms"] = str(fault.retry_after_ms)
                headers.update(fault.headers)
                if fault.body is None:
                    message = fault.message or f"fake {self.provider} failure {fault.status}"
                    raw = json.dumps(self.error_body(fault.status, message, request_id)).encode()
                elif isinstance(fault.body, str):
                    raw = fault.body.encode()
                    headers.setdefault("content-type", "text/plain")
                else:
                    raw = json.dumps(fault.body).encode()
                return Plan(status=fault.status, body=raw, headers=headers, delay=fault.delay)

    @abstractmethod
    def route(self, request: RecordedRequest) -> tuple[int, str] | None:
        """(status, message) when the method or path is not the provider's endpoint."""

    @abstractmethod
    def authorized(self, secret_headers: Mapping[str, str], api_key: str) -> bool:
        """Whether the request carries ``api_key`` the provider's way."""

    @abstractmethod
    def invalid(self, request: RecordedRequest) -> str | None:
        """Why the real API would refuse this body with HTTP 400, if it would."""

    @abstractmethod
    def error_body(self, status: int, message: str, request_id: str) -> JSONValue:
        """The provider's error body."""

    @abstractmethod
    def render(self, reply: Reply, request: RecordedRequest, index: int) -> JSONValue:
        """The provider's success body for ``reply``."""


def _dicts(value: JSONValue) -> list[dict[str, JSONValue]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


_OPENAI_FINISH = {
    "stop": "stop",
    "tool_calls": "tool_calls",
    "length": "length",
    "content_filter": "content_filter",
    "refusal": "stop",
}
_OPENAI_ERROR_TYPES = {
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


class FakeOpenAIServer(_ScriptedServer):
    """A fake of the OpenAI Chat Completions API (``POST /v1/chat/completions``).

    Point a client at `base_url` (``http://127.0.0.1:<port>/v1``). Answers
    carry an ``x-request-id`` header (``req_0000``, ``req_0001``, ...).
    """

    provider = "OpenAI"
    request_id_header = "x-request-id"

    @property
    def base_url(self) -> str:
        """The API root for ``OpenAIModel(base_url=...)`` or ``OPENAI_BASE_URL``."""
        return f"{self.origin}/v1"

    def route(self, request: RecordedRequest) -> tuple[int, str] | None:
        if request.method == "POST" and request.path.split("?")[0].endswith("/chat/completions"):
            return None
        return 404, f"Unknown request URL: {request.method} {request.path}"

    def authorized(self, secret_headers: Mapping[str, str], api_key: str) -> bool:
        return secret_headers.get("authorization") == f"Bearer {api_key}"

    def invalid(self, request: RecordedRequest) -> str | None:
        body = request.body
        messages = body.get("messages")
        if not isinstance(body.get("model"), str) or not isinstance(messages, list):
            return "'model' and 'messages' are required"
        pending: set[str] = set()
        for i, message in enumerate(_dicts(messages)):
            role = message.get("role")
            if role == "tool":
                call_id = message.get("tool_call_id")
                if call_id not in pending:
                    return (
                        f"Invalid parameter: messages[{i}] with role 'tool' must be a response "
                        "to a preceding message with 'tool_calls'"
                    )
                pending.discard(str(call_id))
                continue
            if pending:
                return (
                    "An assistant message with 'tool_calls' must be followed by tool messages "
                    f"responding to each 'tool_call_id' (missing: {sorted(pending)})"
                )
            if role == "assistant":
                pending = {str(c.get("id")) for c in _dicts(message.get("tool_calls"))}
            elif role not in ("system", "developer", "user"):
                return f"Invalid value for messages[{i}].role: {role!r}"
        if pending:
            return f"tool calls without tool messages: {sorted(pending)}"
        return None

    def error_body(self, status: int, message: str, request_id: str) -> JSONValue:
        kind = _OPENAI_ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        code = "invalid_api_key" if status == 401 else None
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def render(self, reply: Reply, request: RecordedRequest, index: int) -> JSONValue:
        calls: list[JSONValue] = [
            {
                "id": f"call_{index}_{i}",
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(dict(c.args))},
            }
            for i, c in enumerate(reply.tool_calls)
        ]
        content = json.dumps(dict(reply.output)) if reply.output is not None else reply.text
        message: dict[str, JSONValue] = {
            "role": "assistant",
            "content": None if reply.refusal else content,
            "refusal": reply.refusal,
            "annotations": [],
        }
        if calls:
            message["tool_calls"] = calls
        default = "tool_calls" if calls else "stop"
        finish = _OPENAI_FINISH.get(reply.stop or default, reply.stop or default)
        prompt = (
            reply.input_tokens
            if reply.input_tokens is not None
            else _estimate(request.body.get("messages"))
        )
        completion = reply.output_tokens if reply.output_tokens is not None else _estimate(message)
        return {
            "id": f"chatcmpl-fake{index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.body.get("model", "fake"),
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }


_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
    "refusal": "refusal",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class FakeAnthropicServer(_ScriptedServer):
    """A fake of the Anthropic Messages API (``POST /v1/messages``).

    Point a client at `base_url` (``http://127.0.0.1:<port>``). Answers carry
    a ``request-id`` header (``req_0000``, ``req_0001``, ...).
    """

    provider = "Anthropic"
    request_id_header = "request-id"

    @property
    def base_url(self) -> str:
        """The API root for ``AnthropicModel(base_url=...)`` or ``ANTHROPIC_BASE_URL``."""
        return self.origin

    def route(self, request: RecordedRequest) -> tuple[int, str] | None:
        if request.method == "POST" and request.path.split("?")[0].rstrip("/") == "/v1/messages":
            return None
        return 404, f"Not found: {request.method} {request.path}"

    def authorized(self, secret_headers: Mapping[str, str], api_key: str) -> bool:
        return (
            secret_headers.get("x-api-key") == api_key
            or secret_headers.get("authorization") == f"Bearer {api_key}"
        )

    def invalid(self, request: RecordedRequest) -> str | None:
        body = request.body
        if "anthropic-version" not in request.headers:
            return "anthropic-version: header is required"
        messages = _dicts(body.get("messages"))
        if not isinstance(body.get("model"), str) or not isinstance(body.get("max_tokens"), int):
            return "model: Field required / max_tokens: Field required"
        if not messages or messages[0].get("role") != "user":
            return "messages: the first message must use the 'user' role"
        offered = {str(t.get("name")) for t in _dicts(body.get("tools"))}
        choice = body.get("tool_choice")
        if (
            isinstance(choice, dict)
            and choice.get("type") == "tool"
            and choice.get("name") not in offered
        ):
            return f"tool_choice: tool {choice.get('name')!r} not found in tools"
        uses: set[str] = set()
        for i, message in enumerate(messages):
            role = message.get("role")
            if role not in ("user", "assistant"):
                return f"messages.{i}.role: Input should be 'user' or 'assistant'"
            content = message.get("content")
            blocks = _dicts(content) if isinstance(content, list) else []
            if isinstance(content, str):
                blocks = [{"type": "text", "text": content}]
            if any(b.get("type") == "text" and not str(b.get("text", "")).strip() for b in blocks):
                return f"messages.{i}: text content blocks must contain non-whitespace text"
            results = {str(b.get("tool_use_id")) for b in blocks if b.get("type") == "tool_result"}
            if role == "user":
                if results - uses or uses - results:
                    return (
                        f"messages.{i}: each tool_use needs a tool_result in the next user "
                        f"message and each tool_result a tool_use before it (tool_use ids "
                        f"{sorted(uses)}, tool_result ids {sorted(results)})"
                    )
                uses = set()
            else:
                if uses:
                    return f"messages.{i}: tool_use ids without tool_result: {sorted(uses)}"
                uses = {str(b.get("id")) for b in blocks if b.get("type") == "tool_use"}
        if uses:
            return f"tool_use ids without tool_result blocks: {sorted(uses)}"
        return None

    def error_body(self, status: int, message: str, request_id: str) -> JSONValue:
        kind = _ANTHROPIC_ERROR_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": request_id,
        }

    def render(self, reply: Reply, request: RecordedRequest, index: int) -> JSONValue:
        content: list[JSONValue] = []
        text = reply.refusal or reply.text
        if text:
            content.append({"type": "text", "text": text})
        uses: list[tuple[str, JSONValue]] = [(c.name, dict(c.args)) for c in reply.tool_calls]
        if reply.output is not None:
            uses.append((self._output_tool(request), dict(reply.output)))
        content.extend(
            {"type": "tool_use", "id": f"toolu_{index}_{i}", "name": name, "input": args}
            for i, (name, args) in enumerate(uses)
        )
        default = "refusal" if reply.refusal else ("tool_calls" if uses else "stop")
        stop = _ANTHROPIC_STOP.get(reply.stop or default, reply.stop or default)
        prompt = (
            reply.input_tokens
            if reply.input_tokens is not None
            else _estimate([request.body.get("system"), request.body.get("messages")])
        )
        output = reply.output_tokens if reply.output_tokens is not None else _estimate(content)
        return {
            "id": f"msg_fake{index}",
            "type": "message",
            "role": "assistant",
            "model": request.body.get("model", "fake"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": output},
        }

    @staticmethod
    def _output_tool(request: RecordedRequest) -> str:
        choice = request.body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "tool":
            return str(choice.get("name"))
        tools = _dicts(request.body.get("tools"))
        if not tools:
            raise ValueError("Reply(output=...) needs a tool to answer with; the request has none")
        return str(tools[-1].get("name"))
