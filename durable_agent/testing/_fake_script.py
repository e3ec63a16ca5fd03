"""The scripts of the fake provider servers: `Reply`, `Fault`, and the scripted server base.

A script item says how to answer one request in provider-neutral terms; each
protocol server (`durable_agent.testing._fake_openai`,
`durable_agent.testing._fake_anthropic`) renders it in its API's shapes.
"""

from __future__ import annotations

import json
import threading
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from durable_agent.models.scripted import ToolCall
from durable_agent.records import JSONValue
from durable_agent.testing._fake_http import HTTPFakeServer, Plan, RecordedRequest

__all__ = [
    "Fault",
    "FaultKind",
    "Reply",
    "Responder",
    "ScriptItem",
    "ScriptedServer",
    "dicts",
    "estimate",
    "pieces",
    "sse",
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
        chunk_size: characters per text delta when the request asks to stream.
        chunk_delay: seconds between the events of a streamed answer.
    """

    text: str | None = None
    tool_calls: Sequence[ToolCall] = ()
    output: Mapping[str, JSONValue] | None = None
    refusal: str | None = None
    stop: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    delay: float = 0.0
    chunk_size: int = 8
    chunk_delay: float = 0.0


FaultKind: TypeAlias = Literal[
    "http", "hang", "malformed_json", "drop_connection", "echo_headers",
    "cut_stream", "stall_stream", "stream_error",
]


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
    after: int = 1
    text: str = ""

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
    def echo_headers(cls, status: int = 400) -> Fault:
        """Answer HTTP ``status`` with an error message quoting every request header.

        Secret ones included, as some providers and proxies do: what a test
        needs to prove that header values never reach the store.
        """
        return cls("echo_headers", status=status)

    @classmethod
    def cut_stream(cls, after: int = 1, *, text: str | None = None) -> Fault:
        """Stream ``after`` text deltas of ``text``, then close the connection mid-body.

        For a request that does not stream: the same as `drop_connection`.
        """
        return cls("cut_stream", after=after, text=text or _CUT_TEXT)

    @classmethod
    def stall_stream(
        cls, after: int = 1, *, text: str | None = None, seconds: float = 60.0
    ) -> Fault:
        """Stream ``after`` text deltas, then send nothing more (until the client leaves)."""
        return cls("stall_stream", after=after, text=text or _CUT_TEXT, seconds=seconds)

    @classmethod
    def stream_error(
        cls, after: int = 1, *, text: str | None = None, status: int = 529,
        message: str | None = None,
    ) -> Fault:
        """Stream ``after`` text deltas, then the provider's error event (``status`` picks
        its type: 529 is Anthropic's ``overloaded_error``, 500 a server error)."""
        return cls("stream_error", after=after, text=text or _CUT_TEXT, status=status,
                   message=message)

    @classmethod
    def drop_connection(cls) -> Fault:
        """Send the headers and half the body, then close the connection."""
        return cls("drop_connection")


_CUT_TEXT = "This answer is cut off before it ends"
"""What a stream fault streams before the fault, by default."""

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


def estimate(value: object) -> int:
    """A token count for ``value``: about four characters of its JSON per token."""
    return len(json.dumps(value, default=str)) // 4 + 1


class ScriptedServer(HTTPFakeServer):
    """A fake server answering from a script; subclasses speak one provider's protocol."""

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
            # Secrets and custom headers first: the client keeps only the start
            # of an error message, and those are what a test looks for.
            received = {**request.headers, **secret_headers}
            first = [k for k in received if k in secret_headers or _custom(k)]
            order = first + [k for k in received if k not in first]
            return self._fault(item, request_id, {k: received[k] for k in order}, request)
        try:
            body = self.render(item, request, request.index)
        except ValueError as exc:
            return self._error(400, str(exc), request_id)
        if request.body.get("stream") is True:
            events = self.stream_events(body, request, item.chunk_size)
            return Plan(
                chunks=[chunk for chunk, _ in events],
                headers={self.request_id_header: request_id},
                delay=item.delay,
                chunk_delay=item.chunk_delay,
            )
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

    def _fault(
        self,
        fault: Fault,
        request_id: str,
        received: Mapping[str, str],
        request: RecordedRequest | None = None,
    ) -> Plan:
        headers = {self.request_id_header: request_id}
        stream_fault = fault.kind in ("cut_stream", "stall_stream", "stream_error")
        if stream_fault and request is not None and request.body.get("stream") is True:
            return self._stream_fault(fault, request, request_id)
        match fault.kind:
            case "cut_stream":
                return self._fault(Fault.drop_connection(), request_id, received)
            case "stall_stream":
                return Plan(hang=fault.seconds)
            case "stream_error":
                return self._error(fault.status, fault.message or "stream failed", request_id)
            case "hang":
                return Plan(hang=fault.seconds, delay=fault.delay)
            case "echo_headers":
                said = f"bad request; headers received: {json.dumps(dict(received))}"
                return self._error(fault.status, said, request_id)
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

    def _stream_fault(self, fault: Fault, request: RecordedRequest, request_id: str) -> Plan:
        """The start of a streamed answer of ``fault.text``, then the fault."""
        reply = Reply(text=fault.text, chunk_size=max(1, len(fault.text) // (fault.after + 1)))
        events = self.stream_events(
            self.render(reply, request, request.index), request, reply.chunk_size
        )
        chunks: list[bytes] = []
        deltas = 0
        for chunk, is_text in events:
            chunks.append(chunk)
            deltas += is_text
            if deltas >= fault.after:
                break
        headers = {self.request_id_header: request_id}
        if fault.kind == "stream_error":
            message = fault.message or f"fake {self.provider} failure {fault.status} mid-stream"
            chunks.append(self.stream_error_event(fault.status, message, request_id))
            return Plan(chunks=chunks, headers=headers)
        if fault.kind == "stall_stream":
            return Plan(chunks=chunks, headers=headers, then="hang", hang=fault.seconds)
        return Plan(chunks=chunks, headers=headers, then="cut")

    @abstractmethod
    def stream_events(
        self, body: JSONValue, request: RecordedRequest, chunk_size: int
    ) -> list[tuple[bytes, bool]]:
        """A success body as the provider's server-sent events, in order; each with
        whether it carries a text delta. ``chunk_size``: characters per delta."""

    @abstractmethod
    def stream_error_event(self, status: int, message: str, request_id: str) -> bytes:
        """The provider's error event inside a stream."""

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


def pieces(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of ``size`` characters (one piece when ``size`` is 0)."""
    if not text:
        return []
    if size <= 0:
        return [text]
    return [text[i : i + size] for i in range(0, len(text), size)]


def sse(data: JSONValue | str, event: str | None = None) -> bytes:
    """One server-sent event: an optional ``event:`` line and its ``data:`` line."""
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def _custom(header: str) -> bool:
    return header.startswith("x-") and not header.startswith("x-stainless-")


def dicts(value: JSONValue) -> list[dict[str, JSONValue]]:
    """The JSON objects in ``value`` when it is a list (others are skipped), else none."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
