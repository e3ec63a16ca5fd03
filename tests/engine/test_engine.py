"""The engine on every backend: runs finish, failures are recorded, resumes repeat nothing."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from durable_agent import (
    Agent,
    ModelHTTPError,
    RetryPolicy,
    RunBusyError,
    RunFailedError,
    RunNotFoundError,
    RunState,
    ScriptedFailure,
    ScriptedModel,
    Task,
    ToolCall,
    ToolContext,
    ToolRetry,
)
from durable_agent.backend import LeaseOwner
from durable_agent.records import (
    FailedEvent,
    ModelAttemptFailedEvent,
    ModelResponseEvent,
    ToolFinishedEvent,
    ToolStartedEvent,
)
from tests._barriers import wait_until
from tests.engine.conftest import StoreFactory, run

FAST = RetryPolicy(attempts=3, initial_delay=0.001, max_delay=0.01)


class Ledger:
    """Counts real tool executions, by call."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.keys: list[str] = []

    def tools(self, fail_on: set[str] | None = None) -> list[object]:
        fail_on = fail_on if fail_on is not None else set()

        async def lookup(city: str, ctx: ToolContext) -> str:
            """Look up the weather in a city."""
            self.calls[city] += 1
            self.keys.append(ctx.idempotency_key)
            if city in fail_on:
                fail_on.discard(city)
                raise RuntimeError(f"weather service down for {city}")
            return f"sunny in {city}"

        return [lookup]


def three_turn_script(**kwargs: object) -> ScriptedModel:
    return ScriptedModel(
        [
            ToolCall("lookup", {"city": "Oslo"}),
            [ToolCall("lookup", {"city": "Rome"}), ToolCall("lookup", {"city": "Lima"})],
            ToolCall("lookup", {"city": "Kyiv"}),
            "all sunny",
        ],
        **kwargs,  # type: ignore[arg-type]
    )


def test_run_with_tools_finishes_and_records_every_step(store: StoreFactory) -> None:
    ledger = Ledger()
    model = three_turn_script()
    agent = Agent(model, db=store(), tools=ledger.tools())
    out = run(agent.do_async(Task("weather?"), return_output=True))
    assert out.state is RunState.DONE
    assert out.output == "all sunny"
    assert model.calls == 4
    assert ledger.calls == Counter({"Oslo": 1, "Rome": 1, "Lima": 1, "Kyiv": 1})
    stored = run(store().load_run(out.run_id))
    seqs = [e.seq for e in stored.events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert stored.header.state is RunState.DONE
    assert stored.header.lease is None, "the lease is released when the run ends"
    assert out.usage.requests == 4
    assert out.history_length == len(stored.events)
    # Every tool result follows its intent.
    started = [e.seq for e in stored.events if isinstance(e, ToolStartedEvent)]
    finished = [e.seq for e in stored.events if isinstance(e, ToolFinishedEvent)]
    assert len(started) == len(finished) == 4
    assert all(s < f for s, f in zip(sorted(started), sorted(finished), strict=True))


def test_return_output_false_returns_the_answer(store: StoreFactory) -> None:
    agent = Agent(ScriptedModel(["14"]), db=store())
    assert run(agent.do_async("What is 7 + 7?")) == "14"
    assert agent.last_run is not None
    assert agent.last_run.state is RunState.DONE


def test_runs_are_tagged_with_the_backend_session_and_user(store: StoreFactory) -> None:
    agent = Agent(ScriptedModel(["ok"]), db=store())
    out = run(agent.do_async("hi", return_output=True))
    header = run(store().get_run(out.run_id))
    assert (header.session_id, header.user_id) == ("s1", "u1")
    page = run(store().list_runs(session_id="s1", user_id="u1", states=[RunState.DONE]))
    assert out.run_id in [h.run_id for h in page.runs]


def _fail_then(store: StoreFactory) -> tuple[Agent, Ledger, ScriptedModel, Task]:
    """A run that records two tool turns, then its model fails once (retry=1)."""
    ledger = Ledger()
    model = three_turn_script(
        failures=[ScriptedFailure(turn=2, error=ModelHTTPError(500, "boom"), times=1)]
    )
    agent = Agent(model, db=store(), tools=ledger.tools(), retry=1)
    task = Task("weather?")
    with pytest.raises(RunFailedError) as raised:
        run(agent.do_async(task, return_output=True))
    assert isinstance(raised.value.__cause__, ModelHTTPError)
    assert raised.value.failed_state == "MODEL_CALL"
    assert agent.last_run is not None
    assert agent.last_run.state is RunState.ERROR
    assert agent._agent_run_output is agent.last_run
    return agent, ledger, model, task


def _assert_resumed_without_repeats(out_state: RunState, ledger: Ledger, calls: int) -> None:
    assert out_state is RunState.DONE
    assert ledger.calls == Counter({"Oslo": 1, "Rome": 1, "Lima": 1, "Kyiv": 1})
    # 2 answered + 1 failed attempt + 2 after the resume; nothing answered is asked again.
    assert calls == 5


def test_seed_pattern_same_agent_and_run_id(store: StoreFactory) -> None:
    agent, ledger, model, _ = _fail_then(store)
    assert agent._agent_run_output is not None
    run_id = agent._agent_run_output.run_id
    out = run(agent.continue_run_async(run_id=run_id, return_output=True))
    assert out.output == "all sunny"
    _assert_resumed_without_repeats(out.state, ledger, model.calls)


def test_seed_pattern_same_agent_and_task(store: StoreFactory) -> None:
    agent, ledger, model, task = _fail_then(store)
    out = run(agent.continue_run_async(task=task, return_output=True))
    _assert_resumed_without_repeats(out.state, ledger, model.calls)


def test_seed_pattern_new_agent_and_run_id(store: StoreFactory) -> None:
    agent, ledger, model, _ = _fail_then(store)
    assert agent.last_run is not None
    fresh = Agent(model, db=store(), tools=ledger.tools(), retry=1)
    out = run(fresh.continue_run_async(run_id=agent.last_run.run_id, return_output=True))
    _assert_resumed_without_repeats(out.state, ledger, model.calls)


def test_seed_pattern_new_agent_and_task(store: StoreFactory) -> None:
    _, ledger, model, task = _fail_then(store)
    fresh = Agent(model, db=store(), tools=ledger.tools(), retry=1)
    out = run(fresh.continue_run_async(task=task, return_output=True))
    _assert_resumed_without_repeats(out.state, ledger, model.calls)


def test_failure_is_recorded_before_it_is_raised(store: StoreFactory) -> None:
    agent, _, _, _ = _fail_then(store)
    assert agent.last_run is not None
    stored = run(store().load_run(agent.last_run.run_id))
    last = stored.events[-1]
    assert isinstance(last, FailedEvent)
    assert last.failed_state is RunState.MODEL_CALL
    assert last.error.status_code == 500
    assert stored.header.state is RunState.ERROR


def test_retryable_errors_are_retried_and_each_attempt_recorded(store: StoreFactory) -> None:
    model = ScriptedModel(
        ["done"], failures=[ScriptedFailure(0, ModelHTTPError(503, "busy"), times=2)]
    )
    agent = Agent(model, db=store(), retry=FAST)
    out = run(agent.do_async("go", return_output=True))
    assert out.output == "done"
    assert model.calls == 3
    stored = run(store().load_run(out.run_id))
    attempts = [e for e in stored.events if isinstance(e, ModelAttemptFailedEvent)]
    assert [a.attempt for a in attempts] == [1, 2]
    answer = next(e for e in stored.events if isinstance(e, ModelResponseEvent))
    assert answer.attempt == 3


def test_non_retryable_errors_fail_at_once(store: StoreFactory) -> None:
    model = ScriptedModel(["done"], failures=[ScriptedFailure(0, ModelHTTPError(401, "key"))])
    agent = Agent(model, db=store(), retry=FAST)
    with pytest.raises(RunFailedError, match="HTTP 401"):
        run(agent.do_async("go"))
    assert model.calls == 1


def test_retry_one_means_a_single_attempt(store: StoreFactory) -> None:
    model = ScriptedModel(["done"], failures=[ScriptedFailure(0, ConnectionError("reset"))])
    agent = Agent(model, db=store(), retry=1)
    with pytest.raises(RunFailedError):
        run(agent.do_async("go"))
    assert model.calls == 1


def test_tool_exception_fails_the_run_and_continue_reruns_only_that_call(
    store: StoreFactory,
) -> None:
    ledger = Ledger()
    model = three_turn_script()
    agent = Agent(model, db=store(), tools=ledger.tools(fail_on={"Lima"}))
    with pytest.raises(RunFailedError, match="weather service down for Lima") as raised:
        run(agent.do_async("weather?"))
    assert raised.value.failed_state == "TOOL_EXEC"
    assert agent.last_run is not None
    assert agent.last_run.state is RunState.ERROR
    stored = run(store().load_run(agent.last_run.run_id))
    # Rome's result, which finished beside the failing call, is recorded.
    results = [e.result.call_id for e in stored.events if isinstance(e, ToolFinishedEvent)]
    assert results == ["call_0_0", "call_1_0"]
    out = run(agent.continue_run_async(run_id=agent.last_run.run_id, return_output=True))
    assert out.state is RunState.DONE
    assert ledger.calls == Counter({"Oslo": 1, "Rome": 1, "Lima": 2, "Kyiv": 1})
    assert model.calls == 4


def test_tool_retry_goes_back_to_the_model_as_an_error_result(store: StoreFactory) -> None:
    attempts: list[int] = []

    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        attempts.append(1)
        if b == 0:
            raise ToolRetry("b must not be zero; pick another divisor")
        return a / b

    model = ScriptedModel(
        [ToolCall("divide", {"a": 1, "b": 0}), ToolCall("divide", {"a": 1, "b": 4}), "0.25"]
    )
    out = run(Agent(model, db=store(), tools=[divide]).do_async("1/0?", return_output=True))
    assert out.state is RunState.DONE
    tool_results = [m for m in out.messages if m.role == "tool"]
    assert tool_results[0].is_error
    assert "must not be zero" in tool_results[0].content
    assert not tool_results[1].is_error
    assert tool_results[1].content == "0.25"


def test_invalid_arguments_and_unknown_tools_are_reported_to_the_model(
    store: StoreFactory,
) -> None:
    def square(x: int) -> int:
        """Square x."""
        return x * x

    model = ScriptedModel(
        [
            [ToolCall("square", {"x": "not a number"}), ToolCall("cube", {"x": 2})],
            "sorry",
        ]
    )
    out = run(Agent(model, db=store(), tools=[square]).do_async("?", return_output=True))
    errors = [m.content for m in out.messages if m.role == "tool"]
    assert "invalid arguments for tool 'square'" in errors[0]
    assert "unknown tool 'cube'" in errors[1]
    assert "square" in errors[1]


def test_continue_of_a_done_run_makes_no_call(store: StoreFactory) -> None:
    ledger = Ledger()
    model = three_turn_script()
    agent = Agent(model, db=store(), tools=ledger.tools())
    out = run(agent.do_async("weather?", return_output=True))
    again = run(
        Agent(model, db=store(), tools=ledger.tools()).continue_run_async(
            run_id=out.run_id, return_output=True
        )
    )
    assert again.output == out.output
    assert model.calls == 4
    assert sum(ledger.calls.values()) == 4


def test_caller_chosen_run_id_makes_starting_idempotent(store: StoreFactory) -> None:
    model = ScriptedModel(["once"])
    agent = Agent(model, db=store())
    first = run(agent.do_async(Task("x", run_id="order-42"), return_output=True))
    second = run(agent.do_async(Task("x", run_id="order-42"), return_output=True))
    assert first.run_id == second.run_id == "order-42"
    assert second.output == "once"
    assert model.calls == 1


def test_unknown_run_id_raises_run_not_found(store: StoreFactory) -> None:
    agent = Agent(ScriptedModel(["x"]), db=store())
    with pytest.raises(RunNotFoundError, match="nope"):
        run(agent.continue_run_async(run_id="nope"))
    with pytest.raises(KeyError):
        run(agent.continue_run_async(run_id="nope"))


def test_a_live_lease_makes_continue_raise_run_busy(store: StoreFactory) -> None:
    _, _, model, task = _fail_then(store)
    assert task.run_id is not None
    backend = store()
    # A live owner on another host holds the lease.
    other = LeaseOwner(host="elsewhere", pid=1)
    run(backend.acquire_lease(task.run_id, other, ttl=60))
    agent = Agent(model, db=backend)
    with pytest.raises(RunBusyError, match="elsewhere") as raised:
        run(agent.continue_run_async(run_id=task.run_id))
    assert raised.value.owner == other.id


def test_a_dead_owner_on_this_host_is_taken_over_at_once(store: StoreFactory) -> None:
    import subprocess
    import sys

    _, ledger, model, task = _fail_then(store)
    assert task.run_id is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no live process
    dead = LeaseOwner(host=LeaseOwner.current().host, pid=child.pid)
    backend = store()
    run(backend.acquire_lease(task.run_id, dead, ttl=600))
    started = time.monotonic()
    out = run(
        Agent(model, db=backend, tools=ledger.tools()).continue_run_async(
            run_id=task.run_id, return_output=True
        )
    )
    assert out.state is RunState.DONE
    # A bound that only a wait for the 600 s lease can break, however loaded the machine.
    assert time.monotonic() - started < 60, "no waiting for the 600 s lease to expire"


def test_an_expired_lease_is_taken_over(store: StoreFactory) -> None:
    _, ledger, model, task = _fail_then(store)
    assert task.run_id is not None
    backend = store()
    lease = run(backend.acquire_lease(task.run_id, LeaseOwner(host="elsewhere", pid=1), ttl=0.01))
    wait_until(lambda: time.time() > lease.expires_at, awaiting="the 0.01 s lease to expire")
    out = run(
        Agent(model, db=backend, tools=ledger.tools()).continue_run_async(
            run_id=task.run_id, return_output=True
        )
    )
    assert out.state is RunState.DONE


def test_the_idempotency_key_is_stable_across_a_rerun(store: StoreFactory) -> None:
    ledger = Ledger()
    model = three_turn_script()
    agent = Agent(model, db=store(), tools=ledger.tools(fail_on={"Kyiv"}))
    with pytest.raises(RunFailedError):
        run(agent.do_async("weather?"))
    assert agent.last_run is not None
    run(agent.continue_run_async(run_id=agent.last_run.run_id))
    kyiv_keys = [k for k in ledger.keys if k.endswith(":call_2_0")]
    assert len(kyiv_keys) == 2
    assert kyiv_keys[0] == kyiv_keys[1]
    assert kyiv_keys[0].startswith(agent.last_run.run_id + ":")


def test_sync_twins_work_outside_an_event_loop(store: StoreFactory) -> None:
    agent = Agent(ScriptedModel(["sync ok"]), db=store())
    assert agent.do("hi") == "sync ok"
    assert agent.last_run is not None
    assert agent.continue_run(run_id=agent.last_run.run_id) == "sync ok"


def test_usage_counts_every_request_across_a_failure_and_a_resume(store: StoreFactory) -> None:
    agent, _, model, task = _fail_then(store)
    out = run(agent.continue_run_async(task=task, return_output=True))
    # 2 answered before the failure, the failed one, then 2 after the resume.
    assert out.usage.requests == model.calls == 5
