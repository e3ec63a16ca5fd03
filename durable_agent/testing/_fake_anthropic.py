"""`FakeAnthropicServer`: a local fake of the Anthropic Messages API."""

from __future__ import annotations

import json
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

__all__ = ["FakeAnthropicServer"]

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


class FakeAnthropicServer(ScriptedServer):
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
        messages = dicts(body.get("messages"))
        if not isinstance(body.get("model"), str) or not isinstance(body.get("max_tokens"), int):
            return "model: Field required / max_tokens: Field required"
        if not messages or messages[0].get("role") != "user":
            return "messages: the first message must use the 'user' role"
        offered = {str(t.get("name")) for t in dicts(body.get("tools"))}
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
            blocks = dicts(content) if isinstance(content, list) else []
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
            else estimate([request.body.get("system"), request.body.get("messages")])
        )
        output = reply.output_tokens if reply.output_tokens is not None else estimate(content)
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
        tools = dicts(request.body.get("tools"))
        if not tools:
            raise ValueError("Reply(output=...) needs a tool to answer with; the request has none")
        return str(tools[-1].get("name"))

    def stream_events(
        self, body: JSONValue, request: RecordedRequest, chunk_size: int
    ) -> list[tuple[bytes, bool]]:
        assert isinstance(body, dict)
        usage = body["usage"]
        assert isinstance(usage, dict)
        start = {**body, "content": [], "stop_reason": None,
                 "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}
        out = [(sse({"type": "message_start", "message": start}, "message_start"), False)]
        out.append((sse({"type": "ping"}, "ping"), False))
        for index, block in enumerate(dicts(body["content"])):
            delta: list[tuple[JSONValue, bool]]
            if block["type"] == "text":
                opened: JSONValue = {"type": "text", "text": ""}
                text = block["text"]
                assert isinstance(text, str)
                delta = [
                    ({"type": "text_delta", "text": p}, True) for p in pieces(text, chunk_size)
                ]
            else:
                opened = {**block, "input": {}}
                raw = json.dumps(block["input"])
                delta = [
                    ({"type": "input_json_delta", "partial_json": p}, False)
                    for p in pieces(raw, chunk_size)
                ]
            out.append((sse({"type": "content_block_start", "index": index,
                             "content_block": opened}, "content_block_start"), False))
            out.extend(
                (sse({"type": "content_block_delta", "index": index, "delta": d},
                     "content_block_delta"), is_text)
                for d, is_text in delta
            )
            out.append((sse({"type": "content_block_stop", "index": index},
                            "content_block_stop"), False))
        out.append((sse({"type": "message_delta",
                         "delta": {"stop_reason": body["stop_reason"], "stop_sequence": None},
                         "usage": {"output_tokens": usage["output_tokens"]}},
                        "message_delta"), False))
        out.append((sse({"type": "message_stop"}, "message_stop"), False))
        return out

    def stream_error_event(self, status: int, message: str, request_id: str) -> bytes:
        return sse(self.error_body(status, message, request_id), "error")
