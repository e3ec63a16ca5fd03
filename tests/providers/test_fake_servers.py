"""The fake servers themselves: lifecycle, the wire, scripts, and refusing bad conversations."""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import time
from typing import Any

import pytest

from durable_agent import Agent, ToolCall
from durable_agent.errors import ModelConnectionError, ModelHTTPError
from durable_agent.records import UserMessage
from durable_agent.testing import (
    FakeAnthropicServer,
    FakeOpenAIServer,
    Fault,
    RecordedRequest,
    Reply,
)
from tests.providers.conftest import API_KEY, PROVIDERS, Provider, run


def post(
    port: int, path: str, body: Any, headers: dict[str, str] | None = None, *, chunked: bool = False
) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        data = json.dumps(body).encode()
        if chunked:
            conn.request(
                "POST",
                path,
                body=iter([data[:5], data[5:]]),
                headers=headers or {},
                encode_chunked=True,
            )
        else:
            conn.request("POST", path, body=data, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        return response.status, dict(response.getheaders()), json.loads(raw) if raw else None
    finally:
        conn.close()


def test_a_server_runs_on_the_callers_loop_as_an_async_context_manager() -> None:
    async def go() -> list[RecordedRequest]:
        async with FakeOpenAIServer(["one", "two"]) as server:
            assert server.base_url.startswith("http://127.0.0.1:")
            model = PROVIDERS["openai"].model(server)
            for _ in range(2):
                await model.request([UserMessage(content="hi")], tools=[])
            return await server.wait_for_requests_async(2, within=5)

    requests = run(go())
    assert [r.index for r in requests] == [0, 1]
    assert all(r.path == "/v1/chat/completions" and r.method == "POST" for r in requests)
    assert requests[0].headers["authorization"] == "[redacted]"


def test_a_plain_http_client_and_chunked_bodies_are_understood() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with FakeOpenAIServer(["a", "b"]).running_in_thread() as server:
        status, headers, answer = post(server.port, "/v1/chat/completions", body)
        assert status == 200
        assert headers["x-request-id"] == "req_0000"
        assert answer["choices"][0]["message"]["content"] == "a"
        status, _, answer = post(server.port, "/v1/chat/completions", body, chunked=True)
        assert (status, answer["choices"][0]["message"]["content"]) == (200, "b")
        assert server.requests[1].body == body


def test_a_responder_function_chooses_each_answer() -> None:
    def echo(request: RecordedRequest) -> str:
        return f"request {request.index}: {request.body['messages'][-1]['content'][0]['text']}"

    with FakeAnthropicServer(echo).running_in_thread() as server:
        model = PROVIDERS["anthropic"].model(server)
        answer = run(model.request([UserMessage(content="ping")], tools=[]))
    assert answer.message.content == "request 0: ping"


def test_add_extends_the_script_and_remaining_counts_it() -> None:
    server = FakeOpenAIServer(["a"])
    server.add("b", ToolCall("t"), Fault.hang())
    assert server.remaining == 4


def test_unknown_paths_are_404_in_the_providers_shape(provider: Provider) -> None:
    with provider.server(["never"]).running_in_thread() as server:
        status, _, body = post(server.port, "/v1/nothing", {})
    assert status == 404
    assert "error" in body
    assert server.remaining == 1, "a refused request uses no script item"


def test_a_wrong_key_gets_401_and_the_right_one_passes(provider: Provider) -> None:
    with provider.server(["ok"], api_key=API_KEY).running_in_thread() as server:
        wrong = provider.model(server, api_key="nope")
        with pytest.raises(ModelHTTPError, match="HTTP 401"):
            run(wrong.request([UserMessage(content="hi")], tools=[]))
        answer = run(provider.model(server).request([UserMessage(content="hi")], tools=[]))
    assert answer.message.content == "ok"


@pytest.mark.parametrize(
    ("server_cls", "path", "body", "reason"),
    [
        (
            FakeOpenAIServer,
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "tool", "tool_call_id": "x", "content": "r"}]},
            "must be a response to a preceding message with 'tool_calls'",
        ),
        (
            FakeOpenAIServer,
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]},
                    {"role": "user", "content": "again"},
                ],
            },
            "must be followed by tool messages",
        ),
        (
            FakeAnthropicServer,
            "/v1/messages",
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                    },
                    {"role": "user", "content": "no result"},
                ],
            },
            "each tool_use needs a tool_result",
        ),
        (
            FakeAnthropicServer,
            "/v1/messages",
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": " "}]},
            "non-whitespace text",
        ),
    ],
)
def test_conversations_the_real_api_refuses_are_refused_with_400(
    server_cls: type[FakeOpenAIServer] | type[FakeAnthropicServer],
    path: str,
    body: dict[str, Any],
    reason: str,
) -> None:
    headers = {"anthropic-version": "2023-06-01"}
    with server_cls(["never"]).running_in_thread() as server:
        status, _, answer = post(server.port, path, body, headers)
    assert status == 400
    assert reason in json.dumps(answer)


def test_a_text_fault_body_is_sent_as_is(provider: Provider) -> None:
    fault = Fault.http(502, body="<html>bad gateway</html>")
    with (
        provider.server([fault]).running_in_thread() as server,
        pytest.raises(ModelHTTPError) as raised,
    ):
        run(provider.model(server).request([UserMessage(content="hi")], tools=[]))
    assert raised.value.status_code == 502
    assert "bad gateway" in str(raised.value)


def test_a_delayed_reply_arrives_after_the_delay(provider: Provider) -> None:
    with provider.server([Reply(text="late", delay=0.2)]).running_in_thread() as server:
        started = time.monotonic()
        answer = run(provider.model(server).request([UserMessage(content="hi")], tools=[]))
        elapsed = time.monotonic() - started
    assert answer.message.content == "late"
    assert elapsed >= 0.2


def test_one_http_client_per_event_loop_closed_when_the_loop_ends(provider: Provider) -> None:
    from durable_agent.models import anthropic as anthropic_adapter
    from durable_agent.models import openai as openai_adapter

    shared = (openai_adapter if provider.name == "openai" else anthropic_adapter)._HTTP
    seen: list[Any] = []

    async def spy() -> None:
        seen.append(shared.get())

    with provider.server(["a", "b", "c"]).running_in_thread() as server:
        model = provider.model(server)
        agent = Agent(model, db="memory://")
        assert [agent.do("hi") for _ in range(3)] == ["a", "b", "c"]
        run(spy())
    gc.collect()
    assert all(client.is_closed for client in seen), "closed at its loop's shutdown"


def test_models_dropped_while_their_loop_runs_leak_nothing(provider: Provider) -> None:
    """Many short-lived models (an Agent per web request) share one pool per loop."""

    async def go(server: Any) -> None:
        for _ in range(5):
            model = provider.model(server)
            await model.request([UserMessage(content="hi")], tools=[])
            del model
            gc.collect()

    with provider.server(lambda request: "ok").running_in_thread() as server:
        run(go(server))
        ports = {r.headers.get("host") for r in server.requests}
    assert len(ports) == 1


def test_stopping_a_server_cuts_a_held_request() -> None:
    async def go() -> None:
        server = FakeOpenAIServer([Fault.hang()])
        await server.start()
        model = PROVIDERS["openai"].model(server, timeout=5)
        call = asyncio.create_task(model.request([UserMessage(content="hi")], tools=[]))
        await server.wait_for_requests_async(1, within=60)
        await server.stop()
        with pytest.raises(ModelConnectionError):
            await call

    run(go())
