"""Injected HTTP faults through each real SDK: classified, recorded, retried only by the engine."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from durable_agent import Agent, RetryPolicy, RunFailedError, RunState
from durable_agent.errors import (
    ModelConnectionError,
    ModelHTTPError,
    ModelResponseError,
    ModelTimeoutError,
)
from durable_agent.records import FailedEvent, ModelAttemptFailedEvent, UserMessage
from durable_agent.testing import Fault
from tests.providers.conftest import API_KEY, FAST, Provider, StoreFactory, run

HI = [UserMessage(content="hi")]


def attempts_of(store: StoreFactory, run_id: str) -> list[ModelAttemptFailedEvent]:
    stored = run(store().load_run(run_id))
    return [e for e in stored.events if isinstance(e, ModelAttemptFailedEvent)]


def test_one_500_is_one_request_the_sdk_does_not_retry(provider: Provider) -> None:
    with provider.server([Fault.http(500), "never sent"]).running_in_thread() as server:
        model = provider.model(server)
        with pytest.raises(ModelHTTPError) as raised:
            run(model.request(HI, tools=[]))
        assert len(server.requests) == 1
        assert server.requests[0].headers["x-stainless-retry-count"] == "0"
    error = raised.value
    assert (error.status_code, error.retryable, error.request_id) == (500, True, "req_0000")
    assert isinstance(error.__cause__, Exception)
    assert type(error.__cause__).__module__.startswith(provider.name), "chained from the SDK's"


def test_the_trap_a_default_sdk_client_retries_a_500_on_its_own(provider: Provider) -> None:
    """Why max_retries=0: the SDK's default retries hide a 500 from the durability layer."""
    sdk = pytest.importorskip(provider.name)
    fault = Fault.http(500, retry_after_ms=1)
    with provider.server([fault, fault, "ok"]).running_in_thread() as server:

        async def bare_call() -> None:
            if provider.name == "openai":
                client = sdk.AsyncOpenAI(api_key=API_KEY, base_url=server.base_url)
                await client.chat.completions.create(
                    model=provider.model_name, messages=[{"role": "user", "content": "hi"}]
                )
            else:
                client = sdk.AsyncAnthropic(api_key=API_KEY, base_url=server.base_url)
                await client.messages.create(
                    model=provider.model_name,
                    max_tokens=16,
                    messages=[{"role": "user", "content": "hi"}],
                )
            await client.close()

        run(bare_call())
        assert len(server.requests) == 3


@pytest.mark.parametrize("header", ["retry_after", "retry_after_ms", "http_date"])
def test_429_retry_after_is_honoured_and_recorded(
    provider: Provider, store: StoreFactory, header: str
) -> None:
    wait = 0.3
    if header == "retry_after":
        fault = Fault.http(429, "slow down", retry_after=wait)
    elif header == "retry_after_ms":
        fault = Fault.http(429, "slow down", retry_after_ms=wait * 1000)
    else:
        wait = 1.0  # an HTTP date has whole seconds
        fault = Fault.http(429, "slow down", retry_after=formatdate(time.time() + 2, usegmt=True))
    # Without the header the policy would wait 20 s: a fast finish proves it was used.
    policy = RetryPolicy(attempts=2, initial_delay=20.0, max_delay=30.0)
    with provider.server([fault, "ok"]).running_in_thread() as server:
        agent = Agent(provider.model(server), db=store(), retry=policy)
        started = time.monotonic()
        out = run(agent.do_async("hi", return_output=True))
        elapsed = time.monotonic() - started
        gap = server.requests[1].at - server.requests[0].at
    assert out.output == "ok"
    (attempt,) = attempts_of(store, out.run_id)
    assert attempt.error.status_code == 429
    assert attempt.error.retryable
    assert attempt.retry_in is not None
    if header == "http_date":
        assert 0.5 <= attempt.retry_in <= 2.0
    else:
        assert attempt.retry_in == pytest.approx(wait)
    assert gap >= attempt.retry_in * 0.9
    # A run that ignored the header would wait the policy's 20 s before its retry.
    assert elapsed < policy.initial_delay


def test_retry_after_is_capped_by_the_policy(provider: Provider, store: StoreFactory) -> None:
    policy = RetryPolicy(attempts=2, initial_delay=0.01, max_delay=0.2)
    with provider.server([Fault.http(429, retry_after=3600), "ok"]).running_in_thread() as server:
        out = run(
            Agent(provider.model(server), db=store(), retry=policy).do_async(
                "hi", return_output=True
            )
        )
    assert attempts_of(store, out.run_id)[0].retry_in == pytest.approx(0.2)


def test_401_fails_the_run_at_once_with_what_to_fix(
    provider: Provider, store: StoreFactory
) -> None:
    with provider.server(["never"], api_key="the-right-key").running_in_thread() as server:
        agent = Agent(provider.model(server, api_key="a-wrong-key"), db=store(), retry=FAST)
        with pytest.raises(RunFailedError, match="HTTP 401") as raised:
            run(agent.do_async("hi"))
        assert len(server.requests) == 1, "no retry"
    cause = raised.value.__cause__
    assert isinstance(cause, ModelHTTPError)
    assert not cause.retryable
    assert provider.key_env in str(cause)
    assert agent.last_run is not None
    assert agent.last_run.state is RunState.ERROR
    stored = run(store().load_run(agent.last_run.run_id))
    assert not [e for e in stored.events if isinstance(e, ModelAttemptFailedEvent)]
    failed = stored.events[-1]
    assert isinstance(failed, FailedEvent)
    assert (failed.error.status_code, failed.error.retryable) == (401, False)
    assert failed.error.request_id == "req_0000"


@pytest.mark.parametrize(
    ("status", "fix"),
    [
        (400, "fix it"),
        (403, "permission denied"),
        (404, "check the model name"),
        (413, "too large"),
        (422, "fix its parameters"),
    ],
)
def test_client_errors_are_not_retried_and_say_what_to_fix(
    provider: Provider, status: int, fix: str
) -> None:
    with (
        provider.server([Fault.http(status, "nope")]).running_in_thread() as server,
        pytest.raises(ModelHTTPError) as raised,
    ):
        run(provider.model(server).request(HI, tools=[]))
    assert raised.value.status_code == status
    assert not raised.value.retryable
    assert fix in str(raised.value)
    assert "nope" in str(raised.value), "the provider's own message is kept"


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 529])
def test_transient_statuses_are_retryable(provider: Provider, status: int) -> None:
    with (
        provider.server([Fault.http(status)]).running_in_thread() as server,
        pytest.raises(ModelHTTPError) as raised,
    ):
        run(provider.model(server).request(HI, tools=[]))
    assert raised.value.retryable
    assert raised.value.status_code == status


def test_malformed_json_and_a_dropped_connection_are_recorded_and_retried(
    provider: Provider, store: StoreFactory
) -> None:
    items = [Fault.malformed_json(), Fault.drop_connection(), "ok"]
    with provider.server(items).running_in_thread() as server:
        out = run(
            Agent(provider.model(server), db=store(), retry=FAST).do_async("hi", return_output=True)
        )
        assert len(server.requests) == 3
    assert out.output == "ok"
    first, second = attempts_of(store, out.run_id)
    assert first.error.type == f"{ModelResponseError.__module__}.ModelResponseError"
    assert first.error.retryable
    assert "not JSON" in first.error.message
    assert second.error.type == f"{ModelConnectionError.__module__}.ModelConnectionError"
    assert second.error.retryable
    assert [first.attempt, second.attempt] == [1, 2]


def test_a_hang_past_the_timeout_is_recorded_as_a_retryable_timeout(
    provider: Provider, store: StoreFactory
) -> None:
    # 1 s: the "ok" after the hang must arrive within it too, on a loaded machine.
    with provider.server([Fault.hang(), "ok"]).running_in_thread() as server:
        model = provider.model(server, timeout=1.0)
        started = time.monotonic()
        out = run(Agent(model, db=store(), retry=FAST).do_async("hi", return_output=True))
        elapsed = time.monotonic() - started
    assert out.output == "ok"
    (attempt,) = attempts_of(store, out.run_id)
    assert attempt.error.type == f"{ModelTimeoutError.__module__}.ModelTimeoutError"
    assert attempt.error.retryable
    assert "within 1 s" in attempt.error.message
    # Under the 60 s hang: the client gave up, the server did not end the hang.
    assert 0.95 <= elapsed < 30


def test_a_hang_with_retry_one_fails_the_run_with_the_timeout(
    provider: Provider, store: StoreFactory
) -> None:
    with provider.server([Fault.hang()]).running_in_thread() as server:
        agent = Agent(provider.model(server, timeout=0.3), db=store(), retry=1)
        with pytest.raises(RunFailedError) as raised:
            run(agent.do_async("hi"))
    assert isinstance(raised.value.__cause__, ModelTimeoutError)
    assert isinstance(raised.value.__cause__, TimeoutError)


def test_an_unreachable_server_is_a_retryable_connection_error(provider: Provider) -> None:
    with provider.server([]).running_in_thread() as server:
        model = provider.model(server)
    # The server is stopped: its port refuses connections now.
    with pytest.raises(ModelConnectionError) as raised:
        run(model.request(HI, tools=[]))
    assert raised.value.retryable
    assert isinstance(raised.value, ConnectionError)


def test_an_exhausted_fake_script_is_a_clear_non_retryable_error(provider: Provider) -> None:
    with (
        provider.server([]).running_in_thread() as server,
        pytest.raises(ModelHTTPError, match="no scripted answer for request #1"),
    ):
        run(provider.model(server).request(HI, tools=[]))


def test_a_server_error_message_never_carries_the_key(provider: Provider) -> None:
    leaky = Fault.http(401, f"Incorrect API key provided: {API_KEY}")
    with (
        provider.server([leaky]).running_in_thread() as server,
        pytest.raises(ModelHTTPError) as raised,
    ):
        run(provider.model(server).request(HI, tools=[]))
    assert API_KEY not in str(raised.value)
    assert "[redacted]" in str(raised.value)


@pytest.mark.parametrize(
    "body",
    [{"id": "x"}, [1, 2], "plain text", {"choices": "nope", "content": "nope"}],
    ids=["no-fields", "a-list", "not-json", "wrong-types"],
)
def test_a_200_that_is_not_the_apis_shape_is_a_retryable_malformed_answer(
    provider: Provider, body: object
) -> None:
    with (
        provider.server([Fault.http(200, body=body)]).running_in_thread() as server,
        pytest.raises(ModelResponseError, match="cannot be read") as raised,
    ):
        run(provider.model(server).request(HI, tools=[]))
    assert raised.value.retryable
