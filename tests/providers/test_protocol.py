"""What each adapter sends and how it reads answers: tools, stop reasons, structured output."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pydantic import BaseModel

from durable_agent import Agent, RetryPolicy, RunFailedError, Task, ToolCall, ToolRetry
from durable_agent.errors import ModelResponseError
from durable_agent.models import OutputSchema, ToolDefinition
from durable_agent.models.anthropic import AnthropicModel
from durable_agent.models.openai import OpenAIModel
from durable_agent.records import (
    AssistantMessage,
    ModelResponseEvent,
    SystemMessage,
    ToolCallPart,
    ToolResultMessage,
    UserMessage,
)
from durable_agent.testing import Fault, Reply
from tests.providers.conftest import (
    FAST,
    PROVIDERS,
    Ledger,
    Provider,
    StoreFactory,
    run,
)

LOOKUP = ToolDefinition(
    "lookup",
    "Look up the weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


class Sum(BaseModel):
    """The sum of two numbers."""

    value: int
    explanation: str


SUM_SCHEMA = OutputSchema("Sum", Sum.model_json_schema(), "The sum of two numbers.")
GOOD = {"value": 14, "explanation": "7 + 7"}


def test_parallel_tool_calls_run_and_all_results_go_back_in_one_request(
    provider: Provider, store: StoreFactory
) -> None:
    ledger = Ledger()
    items = [
        [ToolCall("lookup", {"city": "Rome"}), ToolCall("lookup", {"city": "Lima"})],
        "Rome and Lima are sunny.",
    ]
    with provider.server(items).running_in_thread() as server:
        agent = Agent(provider.model(server), db=store(), tools=ledger.tools())
        out = run(agent.do_async("Weather in Rome and Lima?", return_output=True))
        first, second = server.requests
    assert out.output == "Rome and Lima are sunny."
    assert ledger.calls == Counter({"Rome": 1, "Lima": 1})
    offered = first.body["tools"]
    names = [t["name"] if provider.name == "anthropic" else t["function"]["name"] for t in offered]
    assert names == ["lookup"]
    results = provider.tool_results(second)
    assert [r.call_id for r in results] == provider.tool_call_ids(second)
    assert sorted(r.content for r in results) == ["sunny in Lima", "sunny in Rome"]
    if provider.name == "anthropic":
        # Both results ride in one user turn, right after the assistant's tool_use turn.
        roles = [m["role"] for m in second.body["messages"]]
        assert roles == ["user", "assistant", "user"]
        assert len(second.body["messages"][2]["content"]) == 2


def test_an_error_tool_result_is_flagged_to_the_model(
    provider: Provider, store: StoreFactory
) -> None:
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        if b == 0:
            raise ToolRetry("b must not be zero")
        return a / b

    items = [ToolCall("divide", {"a": 1, "b": 0}), "cannot divide by zero"]
    with provider.server(items).running_in_thread() as server:
        run(Agent(provider.model(server), db=store(), tools=[divide]).do_async("1/0?"))
        (result,) = provider.tool_results(server.requests[1])
    if provider.name == "anthropic":
        assert result.is_error
        assert result.content == "b must not be zero"
    else:
        assert result.content == "Error: b must not be zero"


def test_the_system_prompt_is_sent_the_providers_way(
    provider: Provider, store: StoreFactory
) -> None:
    with provider.server(["ok"]).running_in_thread() as server:
        agent = Agent(provider.model(server), db=store(), system_prompt="Be brief.")
        run(agent.do_async("hi"))
        body = server.requests[0].body
    if provider.name == "anthropic":
        assert body["system"] == "Be brief."
        assert [m["role"] for m in body["messages"]] == ["user"]
    else:
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["model"] == provider.model_name


def test_the_answer_carries_usage_request_id_and_model(provider: Provider) -> None:
    reply = Reply(text="hello", input_tokens=12, output_tokens=4)
    with provider.server([reply]).running_in_thread() as server:
        response = run(provider.model(server).request([UserMessage(content="hi")], tools=[]))
    assert response.message == AssistantMessage(content="hello")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 4)
    assert response.usage.requests == 1
    assert response.request_id == "req_0000"
    assert response.model == provider.model_string


def test_extra_headers_are_sent_and_the_key_is_never_recorded(provider: Provider) -> None:
    with provider.server(["ok"], api_key="sk-right").running_in_thread() as server:
        model = provider.model(server, api_key="sk-right", headers={"x-team": "durable"})
        run(model.request([UserMessage(content="hi")], tools=[]))
        headers = server.requests[0].headers
    assert headers["x-team"] == "durable"
    assert "sk-right" not in json.dumps(dict(headers))
    assert "sk-right" not in repr(model)


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (Reply(text="Once upon a", stop="length"), ["limit", "length"]),
        (Reply(text="", stop="content_filter"), ["filter"]),
        (Reply(refusal="I can't help with that."), ["refused", "I can't help with that."]),
    ],
    ids=["length", "content_filter", "refusal"],
)
def test_stop_reasons_that_end_an_answer_are_clear_non_retryable_errors(
    provider: Provider, reply: Reply, words: list[str]
) -> None:
    with (
        provider.server([reply]).running_in_thread() as server,
        pytest.raises(ModelResponseError) as raised,
    ):
        run(provider.model(server).request([UserMessage(content="hi")], tools=[]))
    assert not raised.value.retryable
    message = str(raised.value)
    if provider.name == "anthropic" and words == ["filter"]:
        words = ["refused"]  # Anthropic reports filtered output as a refusal
    if provider.name == "anthropic" and words == ["limit", "length"]:
        words = ["max_tokens=1024"]
    for word in words:
        assert word in message


def test_the_openai_length_error_names_the_configured_limit() -> None:
    provider = PROVIDERS["openai"]
    with provider.server([Reply(text="x", stop="length")]).running_in_thread() as server:
        model = provider.model(server, max_tokens=5)
        with pytest.raises(ModelResponseError, match=r"max_tokens=5"):
            run(model.request([UserMessage(content="hi")], tools=[]))
        assert server.requests[0].body["max_completion_tokens"] == 5


def test_tool_arguments_that_are_not_json_are_a_retryable_error() -> None:
    provider = PROVIDERS["openai"]
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"city": '},
                        }
                    ],
                },
            }
        ],
    }
    with (
        provider.server([Fault.http(200, body=body)]).running_in_thread() as server,
        pytest.raises(ModelResponseError, match="not JSON") as raised,
    ):
        run(provider.model(server).request([UserMessage(content="hi")], tools=[LOOKUP]))
    assert raised.value.retryable


# -- structured output, adapter side -------------------------------------------------


def test_openai_structured_output_is_a_strict_json_schema_response_format() -> None:
    provider = PROVIDERS["openai"]
    with provider.server([Reply(output=GOOD)]).running_in_thread() as server:
        response = run(
            provider.model(server).request(
                [UserMessage(content="7 + 7?")], tools=[], output_schema=SUM_SCHEMA
            )
        )
        sent = server.requests[0].body["response_format"]
    assert json.loads(response.message.content or "") == GOOD
    assert sent["type"] == "json_schema"
    spec = sent["json_schema"]
    assert (spec["name"], spec["strict"]) == ("Sum", True)
    assert spec["schema"]["additionalProperties"] is False
    assert spec["schema"]["required"] == ["value", "explanation"]


def test_openai_sends_a_schema_with_optional_fields_non_strict_and_unchanged() -> None:
    class Maybe(BaseModel):
        value: int
        note: str = ""

    schema = OutputSchema("Maybe", Maybe.model_json_schema())
    provider = PROVIDERS["openai"]
    with provider.server([Reply(output={"value": 1})]).running_in_thread() as server:
        run(
            provider.model(server).request(
                [UserMessage(content="?")], tools=[], output_schema=schema
            )
        )
        spec = server.requests[0].body["response_format"]["json_schema"]
    assert spec["strict"] is False
    assert spec["schema"] == Maybe.model_json_schema()


def test_anthropic_structured_output_without_tools_forces_the_output_tool() -> None:
    provider = PROVIDERS["anthropic"]
    with provider.server([Reply(output=GOOD)]).running_in_thread() as server:
        response = run(
            provider.model(server).request(
                [UserMessage(content="7 + 7?")], tools=[], output_schema=SUM_SCHEMA
            )
        )
        body = server.requests[0].body
    assert json.loads(response.message.content or "") == GOOD
    assert response.message.tool_calls == ()
    assert body["tool_choice"] == {"type": "tool", "name": "Sum"}
    assert [t["name"] for t in body["tools"]] == ["Sum"]
    assert body["tools"][0]["input_schema"] == SUM_SCHEMA.schema


def test_anthropic_structured_output_with_tools_lets_the_model_call_them_first() -> None:
    provider = PROVIDERS["anthropic"]
    items = [ToolCall("lookup", {"city": "Oslo"}), Reply(output=GOOD)]
    with provider.server(items).running_in_thread() as server:
        model = provider.model(server)
        first = run(
            model.request([UserMessage(content="?")], tools=[LOOKUP], output_schema=SUM_SCHEMA)
        )
        assert first.message.tool_calls[0].name == "lookup"
        history = [
            UserMessage(content="?"),
            first.message,
            ToolResultMessage(call_id=first.message.tool_calls[0].id, name="lookup", content="ok"),
        ]
        final = run(model.request(history, tools=[LOOKUP], output_schema=SUM_SCHEMA))
        body = server.requests[0].body
    assert body["tool_choice"] == {"type": "any"}, "a tool call, but any tool"
    assert [t["name"] for t in body["tools"]] == ["lookup", "Sum"]
    assert json.loads(final.message.content or "") == GOOD
    assert final.message.tool_calls == ()


def test_anthropic_drops_an_early_output_call_made_beside_real_tool_calls() -> None:
    provider = PROVIDERS["anthropic"]
    both = Reply(tool_calls=[ToolCall("lookup", {"city": "Oslo"})], output=GOOD)
    with provider.server([both]).running_in_thread() as server:
        response = run(
            provider.model(server).request(
                [UserMessage(content="?")], tools=[LOOKUP], output_schema=SUM_SCHEMA
            )
        )
    assert [c.name for c in response.message.tool_calls] == ["lookup"]
    assert response.message.content is None


def test_anthropic_output_tool_name_never_shadows_a_real_tool() -> None:
    provider = PROVIDERS["anthropic"]
    clash = OutputSchema("lookup", SUM_SCHEMA.schema)
    with provider.server([Reply(output=GOOD)]).running_in_thread() as server:
        response = run(
            provider.model(server).request(
                [UserMessage(content="?")], tools=[LOOKUP], output_schema=clash
            )
        )
        names = [t["name"] for t in server.requests[0].body["tools"]]
    assert names == ["lookup", "lookup_output"]
    assert json.loads(response.message.content or "") == GOOD


# -- structured output, end to end ------------------------------------------------------


def test_structured_output_valid_answer_returns_the_model_instance(
    provider: Provider, store: StoreFactory
) -> None:
    with provider.server([Reply(output=GOOD)]).running_in_thread() as server:
        agent = Agent(provider.model(server), db=store())
        answer = run(agent.do_async(Task("7 + 7?", response_format=Sum)))
    assert answer == Sum(value=14, explanation="7 + 7")


def test_structured_output_invalid_answer_is_repaired_through_the_sdk(
    provider: Provider, store: StoreFactory
) -> None:
    items = [Reply(output={"value": "fourteen"}), Reply(output=GOOD)]
    with provider.server(items).running_in_thread() as server:
        agent = Agent(provider.model(server), db=store(), retry=RetryPolicy(2, initial_delay=0))
        out = run(agent.do_async(Task("7 + 7?", response_format=Sum), return_output=True))
        second = server.requests[1].body["messages"]
    assert out.parsed == Sum(value=14, explanation="7 + 7")
    text = json.dumps(second)
    assert "fourteen" in text, "the model sees its refused answer"
    assert "does not match the required output format" in text


def test_structured_output_still_invalid_after_the_budget_fails_the_run(
    provider: Provider, store: StoreFactory
) -> None:
    items = [Reply(output={"value": "x"}), Reply(output={"value": "y"})]
    with provider.server(items).running_in_thread() as server:
        agent = Agent(provider.model(server), db=store(), retry=RetryPolicy(2, initial_delay=0))
        with pytest.raises(RunFailedError, match="failed validation"):
            run(agent.do_async(Task("7 + 7?", response_format=Sum)))


# -- one run, two providers ---------------------------------------------------------------


def test_a_run_started_on_openai_is_continued_on_anthropic(store: StoreFactory) -> None:
    ledger = Ledger()
    openai_p, anthropic_p = PROVIDERS["openai"], PROVIDERS["anthropic"]
    first_items = [
        [ToolCall("lookup", {"city": "Oslo"}), ToolCall("lookup", {"city": "Rome"})],
        Fault.http(500),
    ]
    with (
        openai_p.server(first_items).running_in_thread() as openai_server,
        anthropic_p.server(["Oslo and Rome are sunny."]).running_in_thread() as anthropic_server,
    ):
        started = Agent(
            openai_p.model(openai_server),
            db=store(),
            tools=ledger.tools(),
            system_prompt="Be brief.",
            retry=1,
        )
        with pytest.raises(RunFailedError):
            run(started.do_async("Weather in Oslo and Rome?"))
        assert started.last_run is not None
        finisher = Agent(anthropic_p.model(anthropic_server), db=store(), tools=ledger.tools())
        out = run(finisher.continue_run_async(run_id=started.last_run.run_id, return_output=True))
        (request,) = anthropic_server.requests
    assert out.output == "Oslo and Rome are sunny."
    assert ledger.calls == Counter({"Oslo": 1, "Rome": 1})
    assert request.body["system"] == "Be brief."
    # OpenAI's call ids reach Anthropic as tool_use / tool_result pairs the fake accepts.
    assert provider_ids(request) == ["call_0_0", "call_0_1"]
    stored = run(store().load_run(out.run_id))
    models = [e.model for e in stored.events if isinstance(e, ModelResponseEvent)]
    assert models == ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]


def provider_ids(request: object) -> list[str]:
    return PROVIDERS["anthropic"].tool_call_ids(request)  # type: ignore[arg-type]


def test_ids_from_another_provider_are_made_acceptable_to_anthropic() -> None:
    provider = PROVIDERS["anthropic"]
    history = [
        UserMessage(content="?"),
        AssistantMessage(tool_calls=(ToolCallPart(id="call:1/x", name="lookup"),)),
        ToolResultMessage(call_id="call:1/x", name="lookup", content="ok"),
    ]
    with provider.server(["done"]).running_in_thread() as server:
        run(provider.model(server).request(history, tools=[LOOKUP]))
        assert provider.tool_call_ids(server.requests[0]) == ["call_1_x"]
        assert provider.tool_results(server.requests[0])[0].call_id == "call_1_x"


def test_an_empty_assistant_text_is_left_out_for_anthropic() -> None:
    provider = PROVIDERS["anthropic"]
    history = [
        SystemMessage(content="a"),
        SystemMessage(content="b"),
        UserMessage(content="hi"),
        AssistantMessage(content=""),
        UserMessage(content="again"),
    ]
    with provider.server(["ok"]).running_in_thread() as server:
        run(provider.model(server).request(history, tools=[]))
        body = server.requests[0].body
    assert body["system"] == "a\n\nb"
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}],
        }
    ]


def test_models_accept_a_ready_sdk_client_and_turn_its_retries_off(provider: Provider) -> None:
    sdk = pytest.importorskip(provider.name)
    with provider.server([Fault.http(500), "ok"]).running_in_thread() as server:

        async def go() -> str | None:
            if provider.name == "openai":
                client = sdk.AsyncOpenAI(api_key="k", base_url=server.base_url, max_retries=5)
                model: OpenAIModel | AnthropicModel = OpenAIModel(
                    provider.model_name, client=client
                )
            else:
                client = sdk.AsyncAnthropic(api_key="k", base_url=server.base_url, max_retries=5)
                model = AnthropicModel(provider.model_name, client=client)
            try:
                with pytest.raises(Exception, match="HTTP 500"):
                    await model.request([UserMessage(content="hi")], tools=[])
                return (await model.request([UserMessage(content="hi")], tools=[])).message.content
            finally:
                await client.close()

        assert run(go()) == "ok"
        assert len(server.requests) == 2


def test_retry_budget_covers_faults_then_the_answer(
    provider: Provider, store: StoreFactory
) -> None:
    items = [Fault.http(502), Fault.http(529), "ok"]
    with provider.server(items).running_in_thread() as server:
        out = run(
            Agent(provider.model(server), db=store(), retry=FAST).do_async("hi", return_output=True)
        )
        assert len(server.requests) == 3
    assert out.output == "ok"
    assert out.usage.requests == 3
