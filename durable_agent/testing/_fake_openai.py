"""`FakeOpenAIServer`: a local fake of the OpenAI Chat Completions API."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from durable_agent.records import JSONValue
from durable_agent.testing._fake_http import RecordedRequest
from durable_agent.testing._fake_script import (
    Reply,
    ScriptedServer,
    dicts,
    estimate,
    pieces,
    sse,
)

__all__ = ["FakeOpenAIServer"]

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


class FakeOpenAIServer(ScriptedServer):
    """A fake of the OpenAI Chat Completions API (``POST /v1/chat/completions``).

    Point a client at `base_url` (``http://127.0.0.1:<port>/v1``). Answers
    carry an ``x-request-id`` header (``req_0000``, ``req_0001``, ...). A
    request with ``"stream": true`` is answered with ``chat.completion.chunk``
    server-sent events ending in ``data: [DONE]``, with a last usage chunk when
    ``stream_options.include_usage`` is set, as the API documents.
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
        for i, message in enumerate(dicts(messages)):
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
                pending = {str(c.get("id")) for c in dicts(message.get("tool_calls"))}
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
            else estimate(request.body.get("messages"))
        )
        completion = reply.output_tokens if reply.output_tokens is not None else estimate(message)
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

    def stream_events(
        self, body: JSONValue, request: RecordedRequest, chunk_size: int
    ) -> list[tuple[bytes, bool]]:
        assert isinstance(body, dict)
        choices = body["choices"]
        assert isinstance(choices, list)
        assert isinstance(choices[0], dict)
        message = choices[0]["message"]
        assert isinstance(message, dict)
        base = {
            "id": body["id"],
            "object": "chat.completion.chunk",
            "created": body["created"],
            "model": body["model"],
            "system_fingerprint": "fp_fake",
        }

        def chunk(delta: JSONValue, finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse({**base, "choices": [choice]})

        out = [(chunk({"role": "assistant", "content": "", "refusal": None}), False)]
        content = message.get("content")
        out.extend(
            (chunk({"content": piece}), True)
            for piece in pieces(content if isinstance(content, str) else "", chunk_size)
        )
        refusal = message.get("refusal")
        if isinstance(refusal, str):
            out.append((chunk({"refusal": refusal}), False))
        for index, call in enumerate(dicts(message.get("tool_calls"))):
            function = call["function"]
            assert isinstance(function, dict)
            head = {"index": index, "id": call["id"], "type": "function",
                    "function": {"name": function["name"], "arguments": ""}}
            out.append((chunk({"tool_calls": [head]}), False))
            arguments = function["arguments"]
            assert isinstance(arguments, str)
            out.extend(
                (chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]}), False)
                for part in pieces(arguments, chunk_size)
            )
        out.append((chunk({}, str(choices[0]["finish_reason"])), False))
        options = request.body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            out.append((sse({**base, "choices": [], "usage": body["usage"]}), False))
        out.append((sse("[DONE]"), False))
        return out

    def stream_error_event(self, status: int, message: str, request_id: str) -> bytes:
        return sse(self.error_body(status, message, request_id))
