"""Forking a run: a prefix of its log in a new run, continued without redoing what it recorded."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from durable_agent import (
    Agent,
    ChatModel,
    ConfigurationError,
    ModelResponse,
    OutputSchema,
    RunExistsError,
    RunNotFoundError,
    RunState,
    ScriptedModel,
    Task,
    Tool,
    ToolCall,
    ToolContext,
    ToolDefinition,
)
from durable_agent.backend import Backend
from durable_agent.records import (
    AssistantMessage,
    CreatedEvent,
    ForkOrigin,
    Message,
    ModelResponseEvent,
    ToolFinishedEvent,
    ToolStartedEvent,
    encode_event,
)
from tests.engine.conftest import StoreFactory, run

SCRIPT: list[str | ToolCall | list[ToolCall]] = [
    ToolCall("lookup", {"city": "Oslo"}),
    [ToolCall("lookup", {"city": "Rome"}), ToolCall("lookup", {"city": "Lima"})],
    ToolCall("lookup", {"city": "Kyiv"}),
    "Oslo, Rome, Lima and Kyiv are sunny",
]
ANSWER = "Oslo, Rome, Lima and Kyiv are sunny"


class CountingModel(ChatModel):
    """A `ScriptedModel` that counts the requests it answers, by turn."""

    def __init__(self) -> None:
        self.inner = ScriptedModel(list(SCRIPT))
        self.turns: list[int] = []

    @property
    def name(self) -> str:
        return self.inner.name

    async def request(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None = None,
    ) -> ModelResponse:
        self.turns.append(sum(isinstance(m, AssistantMessage) for m in messages))
        return await self.inner.request(messages, tools=tools, output_schema=output_schema)


class Effects:
    """The lookup tool, and every execution of it: (call id, idempotency key)."""

    def __init__(self, *, idempotent: bool = True) -> None:
        self.runs: list[tuple[str, str]] = []

        async def lookup(city: str, ctx: ToolContext) -> str:
            """Look up the weather in a city."""
            self.runs.append((ctx.call_id, ctx.idempotency_key))
            return f"{city}: sunny"

        self.tool = Tool(lookup, idempotent=idempotent)


def make_agent(db: Backend, effects: Effects) -> tuple[Agent, CountingModel]:
    model = CountingModel()
    return Agent(model, db=db, tools=[effects.tool], retry=1), model


def source_run(store: StoreFactory) -> tuple[str, list[str]]:
    """Run the three-tool-turn task to DONE; return its id and its encoded log."""
    agent, _ = make_agent(store(), Effects())
    out = agent.do(Task("weather?", run_id="source"), return_output=True)
    assert out.state is RunState.DONE
    return "source", _log(store(), "source")


def _log(db: Backend, run_id: str) -> list[str]:
    return [encode_event(e) for e in run(db.load_run(run_id)).events]


def test_a_fork_at_every_seq_reuses_the_prefix_and_leaves_the_source_unchanged(
    store: StoreFactory,
) -> None:
    source, log = source_run(store)
    events = run(store().load_run(source)).events
    for at in range(1, len(log) + 1):
        prefix = events[:at]
        finished = {e.result.call_id for e in prefix if isinstance(e, ToolFinishedEvent)}
        started = {e.call_id for e in prefix if isinstance(e, ToolStartedEvent)}
        answered = sum(isinstance(e, ModelResponseEvent) for e in prefix)
        effects = Effects()
        agent, model = make_agent(store(), effects)

        out = agent.fork_run(source, at_seq=at, new_run_id=f"fork-{at}")

        assert out.state is RunState.DONE, at
        assert out.output == ANSWER
        assert _log(store(), source) == log, f"fork at {at} changed the source"
        ran = [call for call, _ in effects.runs]
        assert not set(ran) & finished, f"fork at {at} redid a recorded tool result"
        assert len(ran) == len(set(ran)), f"fork at {at} ran a call twice"
        assert all(key.startswith(f"fork-{at}:") for _, key in effects.runs)
        # Every turn the prefix answered is replayed, never asked again.
        assert all(turn >= answered for turn in model.turns), (at, model.turns)
        fork = run(store().load_run(f"fork-{at}"))
        assert [encode_event(e) for e in fork.events[1:at]] == log[1:at]
        first = fork.events[0]
        assert isinstance(first, CreatedEvent)
        assert first.forked_from == ForkOrigin(run_id=source, seq=at)
        # A call in flight at the fork point is in doubt: an idempotent tool runs again.
        for call in started - finished:
            attempts = [e.attempt for e in fork.events[at:] if isinstance(e, ToolStartedEvent)
                        and e.call_id == call]
            assert attempts == [2], (at, call, attempts)


def test_a_fork_of_a_fork_copies_the_forks_prefix_and_names_it_as_its_origin(
    store: StoreFactory,
) -> None:
    source, log = source_run(store)
    agent, _ = make_agent(store(), Effects())
    first = agent.fork_run(source, at_seq=5, new_run_id="first")
    first_log = _log(store(), "first")
    effects = Effects()
    again, _ = make_agent(store(), effects)

    out = again.fork_run("first", at_seq=len(first_log) - 1, new_run_id="second")

    assert first.state is out.state is RunState.DONE
    assert out.output == ANSWER
    assert effects.runs == [], "every tool result was in the first fork's prefix"
    second = run(store().load_run("second")).events
    origin = second[0]
    assert isinstance(origin, CreatedEvent)
    assert origin.forked_from == ForkOrigin(run_id="first", seq=len(first_log) - 1)
    assert _log(store(), "first") == first_log
    assert _log(store(), source) == log


def test_a_fork_inside_the_window_of_a_non_idempotent_tool_waits_for_a_human(
    store: StoreFactory,
) -> None:
    source, _ = source_run(store)
    events = run(store().load_run(source)).events
    intent = next(e for e in events if isinstance(e, ToolStartedEvent))
    effects = Effects(idempotent=False)
    agent, _ = make_agent(store(), effects)

    out = agent.fork_run(source, at_seq=intent.seq, new_run_id="doubt")

    assert out.state is RunState.WAITING
    assert [r.kind for r in out.requirements] == ["in_doubt"]
    assert effects.runs == []
    done = agent.continue_run("doubt", approvals={out.requirements[0].id: True},
                              return_output=True)
    assert done.state is RunState.DONE
    assert done.output == ANSWER


def test_run_false_stores_the_fork_without_running_it(store: StoreFactory) -> None:
    source, _ = source_run(store)
    effects = Effects()
    agent, model = make_agent(store(), effects)

    out = agent.fork_run(source, at_seq=2, new_run_id="later", run=False)

    assert out.state is RunState.MODEL_CALL
    assert (effects.runs, model.turns) == ([], [])
    assert agent.continue_run("later") == ANSWER


def test_a_fork_gets_a_random_id_and_the_agents_name(store: StoreFactory) -> None:
    source, _ = source_run(store)
    agent = Agent(ScriptedModel(list(SCRIPT)), db=store(), tools=[Effects().tool],
                  name="forker")
    out = agent.fork_run(source, at_seq=3)
    assert out.run_id != source
    assert run(store().get_run(out.run_id)).agent_name == "forker"


@pytest.mark.parametrize("at_seq", [0, -1, 99])
def test_a_seq_outside_the_log_is_refused_naming_the_run_and_its_range(
    store: StoreFactory, at_seq: int
) -> None:
    source, log = source_run(store)
    agent, _ = make_agent(store(), Effects())
    with pytest.raises(ConfigurationError) as refused:
        agent.fork_run(source, at_seq=at_seq)
    message = str(refused.value)
    assert f"run 'source' at seq {at_seq}" in message
    assert f"seq 1 to {len(log)}" in message
    assert "runs show source" in message
    assert run(store().list_runs()).runs[0].run_id == source  # nothing stored


@pytest.mark.parametrize("at_seq", ["3", 2.0, True, None])
def test_a_seq_that_is_not_an_int_is_refused(store: StoreFactory, at_seq: object) -> None:
    source, _ = source_run(store)
    agent, _ = make_agent(store(), Effects())
    with pytest.raises(ConfigurationError, match="at_seq must be an int"):
        agent.fork_run(source, at_seq=at_seq)  # type: ignore[arg-type]


def test_an_unknown_run_is_refused_naming_it_and_the_store(store: StoreFactory) -> None:
    agent, _ = make_agent(store(), Effects())
    with pytest.raises(RunNotFoundError) as missing:
        agent.fork_run("nope", at_seq=1)
    assert "run 'nope' not found" in str(missing.value)
    assert "db=" in str(missing.value)


def test_a_taken_fork_id_is_refused_and_the_existing_run_is_kept(store: StoreFactory) -> None:
    source, log = source_run(store)
    agent, _ = make_agent(store(), Effects())
    with pytest.raises(RunExistsError, match="as 'source': that run id is taken"):
        agent.fork_run(source, at_seq=2, new_run_id=source)
    assert _log(store(), source) == log


def test_forking_at_the_cancellation_is_refused_with_the_seq_before(
    store: StoreFactory,
) -> None:
    agent, _ = make_agent(store(), Effects())
    out = agent.fork_run(source_run(store)[0], at_seq=2, new_run_id="to-cancel", run=False)
    cancelled = agent.cancel_run(out.run_id)
    assert cancelled.state is RunState.CANCELLED
    with pytest.raises(ConfigurationError, match="fork at seq 2 to continue from before"):
        agent.fork_run("to-cancel", at_seq=3)


def test_forked_from_is_left_out_of_runs_that_are_not_forks_and_old_records_read_back() -> None:
    from durable_agent.fsm import RunState as State
    from durable_agent.records import UserMessage, decode_event

    plain = CreatedEvent(seq=1, state=State.PENDING, messages=(UserMessage(content="hi"),))
    assert "forked_from" not in encode_event(plain)
    forked = plain.model_copy(update={"forked_from": ForkOrigin(run_id="a", seq=3)})
    assert decode_event("b", 1, encode_event(forked)) == forked
    # A record from before forks existed reads as not forked.
    old = '{"schema_version":1,"seq":1,"state":"PENDING","kind":"created","messages":[]}'
    first = decode_event("old", 1, old)
    assert isinstance(first, CreatedEvent)
    assert first.forked_from is None
