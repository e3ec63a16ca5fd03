"""The seed's recovery patterns through each real SDK: one HTTP 500, ``retry=1``, then continue."""

from __future__ import annotations

from collections import Counter

import pytest

from durable_agent import Agent, RunFailedError, RunState, Task, ToolCall
from durable_agent.errors import ModelHTTPError
from durable_agent.records import FailedEvent, ModelResponseEvent, ToolFinishedEvent
from durable_agent.testing import Fault, Reply
from tests.providers.conftest import API_KEY, Ledger, Provider, StoreFactory, run

SEED_TASK = "What is 7 + 7? Reply with just the number."


@pytest.mark.parametrize("agent_kind", ["same agent", "new agent"])
@pytest.mark.parametrize("by", ["run_id", "task"])
def test_seed_pattern_one_500_then_continue_answers_with_two_requests_in_total(
    provider: Provider, store: StoreFactory, agent_kind: str, by: str
) -> None:
    with provider.server([Fault.http(500), "14"]).running_in_thread() as server:
        agent = Agent(provider.model(server), db=store(), retry=1)
        task = Task(SEED_TASK)
        with pytest.raises(RunFailedError) as raised:
            run(agent.do_async(task, return_output=True))
        assert isinstance(raised.value.__cause__, ModelHTTPError)
        assert raised.value.__cause__.status_code == 500
        assert agent.last_run is not None
        assert agent.last_run.state is RunState.ERROR

        resumer = (
            agent
            if agent_kind == "same agent"
            else Agent(provider.model(server), db=store(), retry=1)
        )
        if by == "run_id":
            out = run(resumer.continue_run_async(run_id=agent.last_run.run_id, return_output=True))
        else:
            out = run(resumer.continue_run_async(task=task, return_output=True))
        assert out.output == "14"
        assert out.state is RunState.DONE
        assert len(server.requests) == 2, "the SDK retried on its own"


def test_the_seed_pattern_works_from_the_model_string_and_environment(
    provider: Provider, store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with provider.server([Fault.http(500), "14"], api_key=API_KEY).running_in_thread() as server:
        monkeypatch.setenv(provider.key_env, API_KEY)
        monkeypatch.setenv(provider.url_env, server.base_url)
        agent = Agent(provider.model_string, db=store(), retry=1)
        task = Task(SEED_TASK)
        try:
            result = run(agent.do_async(task, return_output=True))
        except Exception:
            assert agent._agent_run_output is not None
            run_id = agent._agent_run_output.run_id
            result = run(agent.continue_run_async(run_id=run_id, return_output=True))
        assert result.output == "14"
        assert len(server.requests) == 2


def test_a_failed_second_request_resumes_with_the_recorded_tool_result_and_no_rerun(
    provider: Provider, store: StoreFactory
) -> None:
    ledger = Ledger()
    items = [ToolCall("lookup", {"city": "Oslo"}), Fault.http(503), "Sunny in Oslo."]
    with provider.server(items).running_in_thread() as server:
        agent = Agent(provider.model(server), db=store(), tools=ledger.tools(), retry=1)
        task = Task("Weather in Oslo?")
        with pytest.raises(RunFailedError):
            run(agent.do_async(task))
        out = run(
            Agent(
                provider.model(server), db=store(), tools=ledger.tools(), retry=1
            ).continue_run_async(task=task, return_output=True)
        )
        assert out.output == "Sunny in Oslo."
        assert ledger.calls == Counter({"Oslo": 1}), "the recorded tool result is reused"
        _, failed, resumed = server.requests
        call_id = provider.tool_call_ids(resumed)[0]
        assert provider.tool_results(resumed)[0].call_id == call_id
        assert "sunny in Oslo" in provider.tool_results(resumed)[0].content
        assert resumed.body["messages"] == failed.body["messages"], "the same request again"

    stored = run(store().load_run(out.run_id))
    failures = [e for e in stored.events if isinstance(e, FailedEvent)]
    assert [f.error.status_code for f in failures] == [503]
    assert failures[0].error.request_id == "req_0001"
    assert len([e for e in stored.events if isinstance(e, ToolFinishedEvent)]) == 1


def test_usage_is_recorded_per_call_and_summed_across_a_resume(
    provider: Provider, store: StoreFactory
) -> None:
    items = [
        Reply(tool_calls=[ToolCall("lookup", {"city": "Oslo"})], input_tokens=10, output_tokens=3),
        Fault.http(500),
        Reply(text="done", input_tokens=20, output_tokens=5),
    ]
    ledger = Ledger()
    with provider.server(items).running_in_thread() as server:
        agent = Agent(provider.model(server), db=store(), tools=ledger.tools(), retry=1)
        with pytest.raises(RunFailedError):
            run(agent.do_async("weather?"))
        assert agent.last_run is not None
        out = run(agent.continue_run_async(run_id=agent.last_run.run_id, return_output=True))
    assert (out.usage.input_tokens, out.usage.output_tokens) == (30, 8)
    stored = run(store().load_run(out.run_id))
    answers = [e for e in stored.events if isinstance(e, ModelResponseEvent)]
    assert [(a.usage.input_tokens, a.usage.output_tokens) for a in answers] == [(10, 3), (20, 5)]
    assert all(a.model == provider.model_string for a in answers)
