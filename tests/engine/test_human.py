"""Human in the loop: requirements, decisions and in-doubt calls.

Cancellation and deadlines are `tests/engine/test_interruptions.py`; the refund
desk both drive, `tests/engine/refunds.py`.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from durable_agent import (
    Agent,
    DecisionError,
    RunState,
    RunWaitingError,
    ScriptedModel,
    Task,
    ToolCall,
    tool,
)
from durable_agent.records import DecisionEvent, FailedEvent, WaitingEvent
from tests.engine.conftest import StoreFactory, run
from tests.engine.refunds import REFUND, Refunds, agent_for


def test_a_confirmation_pauses_the_run_and_lists_the_requirement(store: StoreFactory) -> None:
    desk = Refunds()
    agent = agent_for(store, desk, [REFUND, "done"])
    out = run(agent.do_async("refund A1", return_output=True))
    assert out.state is RunState.WAITING
    (req,) = out.requirements
    assert (req.kind, req.tool_name, req.arguments) == (
        "confirmation", "refund", {"order": "A1", "amount": 12.5}
    )
    assert desk.ran["refund"] == 0
    header = run(store().get_run(out.run_id))
    assert header.state is RunState.WAITING
    assert header.lease is None, "a waiting run holds no lease"


def test_a_pause_is_never_mistaken_for_an_answer(store: StoreFactory) -> None:
    agent = agent_for(store, Refunds(), [REFUND, "done"])
    with pytest.raises(RunWaitingError, match="WAITING for human decisions") as raised:
        run(agent.do_async("refund A1"))
    assert raised.value.run_id
    assert [r.kind for r in raised.value.requirements] == ["confirmation"]  # type: ignore[attr-defined]


def test_confirming_in_the_same_process_runs_the_tool(store: StoreFactory) -> None:
    desk = Refunds()
    agent = agent_for(store, desk, [REFUND, "refunded"])
    out = run(agent.do_async("refund A1", return_output=True))
    done = run(
        agent.continue_run_async(
            run_id=out.run_id, requirements=[r.confirm() for r in out.requirements],
            return_output=True,
        )
    )
    assert done.state is RunState.DONE
    assert done.output == "refunded"
    assert desk.ran["refund"] == 1
    events = run(store().load_run(out.run_id)).events
    decision = next(e for e in events if isinstance(e, DecisionEvent))
    assert decision.action == "confirm"
    assert decision.trigger == "decided"
    # The decision is durable before the tool's intent.
    started = [e.seq for e in events if e.kind == "tool_started"]
    assert decision.seq < started[0]


def test_approving_by_id_from_a_new_process_view(store: StoreFactory) -> None:
    desk = Refunds()
    out = run(agent_for(store, desk, [REFUND, "ok"]).do_async("x", return_output=True))
    rid = out.requirements[0].id
    # Another process: a new agent, a new store object, only plain data.
    other = agent_for(store, desk, [REFUND, "ok"])
    page = run(store().list_runs(states=[RunState.WAITING]))
    assert out.run_id in [h.run_id for h in page.runs]
    assert run(other.continue_run_async(run_id=out.run_id, approvals={rid: True})) == "ok"
    assert desk.ran["refund"] == 1


def test_a_rejection_reaches_the_model_as_the_call_result(store: StoreFactory) -> None:
    desk = Refunds()
    agent = agent_for(store, desk, [REFUND, "understood"])
    out = run(agent.do_async("x", return_output=True))
    done = run(
        agent.continue_run_async(
            run_id=out.run_id, approvals={out.requirements[0].id: "over the limit"},
            return_output=True,
        )
    )
    assert done.state is RunState.DONE
    assert desk.ran["refund"] == 0
    result = next(m for m in done.messages if m.role == "tool")
    assert result.is_error
    assert "over the limit" in result.content


def test_external_execution_takes_the_callers_result(store: StoreFactory) -> None:
    desk = Refunds()
    agent = agent_for(store, desk, [ToolCall("ship", {"order": "A1"}), "shipped"])
    out = run(agent.do_async("ship A1", return_output=True))
    (req,) = out.requirements
    assert req.kind == "external"
    done = run(
        agent.continue_run_async(
            run_id=out.run_id, results={req.id: {"tracking": "Z9"}}, return_output=True
        )
    )
    assert done.output == "shipped"
    assert desk.ran["ship"] == 0
    assert next(m for m in done.messages if m.role == "tool").content == '{"tracking": "Z9"}'


def test_user_input_fields_are_hidden_from_the_model_and_provided_by_a_human(
    store: StoreFactory,
) -> None:
    desk = Refunds()
    transfer = next(t for t in desk.tools() if t.name == "transfer")
    assert "account" not in str(transfer.parameters)
    agent = agent_for(store, desk, [ToolCall("transfer", {"amount": 5}), "sent"])
    out = run(agent.do_async("send 5", return_output=True))
    (req,) = out.requirements
    assert (req.kind, req.fields) == ("user_input", ("account",))
    done = run(
        agent.continue_run_async(
            run_id=out.run_id, requirements=[req.provide(account="DE89")], return_output=True
        )
    )
    assert next(m for m in done.messages if m.role == "tool").content == "sent 5.0 to DE89"


def test_partial_decisions_keep_the_run_waiting_with_the_rest(store: StoreFactory) -> None:
    desk = Refunds()
    script = [[REFUND, ToolCall("ship", {"order": "A1"}), ToolCall("lookup", {"order": "A1"})],
              "all done"]
    agent = agent_for(store, desk, script)
    out = run(agent.do_async("x", return_output=True))
    assert desk.ran["lookup"] == 1, "a call that needs nobody runs at once"
    kinds = {r.kind: r.id for r in out.requirements}
    assert set(kinds) == {"confirmation", "external"}
    half = run(
        agent.continue_run_async(
            run_id=out.run_id, approvals={kinds["confirmation"]: True}, return_output=True
        )
    )
    assert half.state is RunState.WAITING
    assert [r.kind for r in half.requirements] == ["external"]
    assert desk.ran["refund"] == 0, "nothing runs until every requirement is decided"
    done = run(
        agent.continue_run_async(
            run_id=out.run_id, results={kinds["external"]: "sent"}, return_output=True
        )
    )
    assert done.state is RunState.DONE
    assert desk.ran == Counter({"lookup": 1, "refund": 1})


@pytest.mark.parametrize(
    ("decide", "message"),
    [
        ({"approvals": {"nope": True}}, "no open requirement 'nope'"),
        ({"results": {"{rid}": 1}}, "cannot be decided with 'result'"),
        ({"approvals": {"{rid}": 3}}, "must be True, False or a rejection reason"),
    ],
)
def test_invalid_decisions_are_refused_and_nothing_is_stored(
    store: StoreFactory, decide: dict[str, dict[str, object]], message: str
) -> None:
    agent = agent_for(store, Refunds(), [REFUND, "ok"])
    out = run(agent.do_async("x", return_output=True))
    rid = out.requirements[0].id
    kwargs = {k: {key.format(rid=rid): v for key, v in d.items()} for k, d in decide.items()}
    before = run(store().get_run(out.run_id)).seq
    with pytest.raises(DecisionError, match=message):
        run(agent.continue_run_async(run_id=out.run_id, **kwargs))  # type: ignore[arg-type]
    assert run(store().get_run(out.run_id)).seq == before


def test_a_requirement_cannot_be_decided_twice(store: StoreFactory) -> None:
    desk = Refunds()
    agent = agent_for(store, desk, [[REFUND, ToolCall("ship", {"order": "B"})], "ok"])
    out = run(agent.do_async("x", return_output=True))
    first = next(r for r in out.requirements if r.kind == "confirmation")
    run(agent.continue_run_async(run_id=out.run_id, approvals={first.id: True}, return_output=True))
    with pytest.raises(DecisionError, match="already decided"):
        run(agent.continue_run_async(run_id=out.run_id, approvals={first.id: False}))


def test_missing_user_input_fields_are_refused(store: StoreFactory) -> None:
    agent = agent_for(store, Refunds(), [ToolCall("transfer", {"amount": 5}), "sent"])
    out = run(agent.do_async("x", return_output=True))
    with pytest.raises(DecisionError, match=r"needs the fields \['account'\]"):
        run(agent.continue_run_async(run_id=out.run_id, inputs={out.requirements[0].id: {}}))


def test_decisions_for_a_run_that_is_not_waiting_are_refused(store: StoreFactory) -> None:
    agent = agent_for(store, Refunds(), ["plain answer"])
    out = run(agent.do_async("x", return_output=True))
    with pytest.raises(DecisionError, match="is DONE, not WAITING"):
        run(agent.continue_run_async(run_id=out.run_id, approvals={"a": True}))


def test_continue_without_decisions_reports_the_wait_again(store: StoreFactory) -> None:
    agent = agent_for(store, Refunds(), [REFUND, "ok"])
    out = run(agent.do_async("x", return_output=True))
    again = run(agent.continue_run_async(run_id=out.run_id, return_output=True))
    assert again.state is RunState.WAITING
    assert [r.id for r in again.requirements] == [r.id for r in out.requirements]


# -- in-doubt calls of non-idempotent tools ------------------------------------


def test_an_interrupted_non_idempotent_call_waits_instead_of_running_twice(
    store: StoreFactory,
) -> None:
    charged: list[str] = []
    inside = asyncio.Event()

    @tool(idempotent=False)
    async def charge(card: str) -> str:
        """Charge a card."""
        charged.append(card)
        inside.set()
        await asyncio.sleep(30)
        return "charged"

    model = ScriptedModel([ToolCall("charge", {"card": "4242"}), "paid"])
    agent = Agent(model, db=store(), tools=[charge])
    task = Task("charge it")

    async def interrupt() -> None:
        running = asyncio.ensure_future(agent.do_async(task))
        await inside.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    run(interrupt())
    assert charged == ["4242"]
    assert task.run_id is not None
    stored = run(store().load_run(task.run_id))
    assert stored.header.state is RunState.ERROR
    assert isinstance(stored.events[-1], FailedEvent)
    out = run(agent.continue_run_async(run_id=task.run_id, return_output=True))
    assert out.state is RunState.WAITING
    (req,) = out.requirements
    assert req.kind == "in_doubt"
    assert charged == ["4242"], "never re-run automatically"
    done = run(
        agent.continue_run_async(
            run_id=task.run_id, requirements=[req.set_result("charged (checked by hand)")],
            return_output=True,
        )
    )
    assert done.state is RunState.DONE
    assert charged == ["4242"]


def test_an_in_doubt_call_can_be_run_again_or_failed(store: StoreFactory) -> None:
    attempts: list[int] = []
    gate = asyncio.Event()

    @tool(idempotent=False)
    async def charge(card: str) -> str:
        """Charge a card."""
        attempts.append(1)
        if len(attempts) == 1:
            gate.set()
            await asyncio.sleep(30)
        return "charged"

    agent = Agent(ScriptedModel([ToolCall("charge", {"card": "1"}), "ok"]), db=store(),
                  tools=[charge])
    task = Task("x")

    async def interrupt() -> None:
        running = asyncio.ensure_future(agent.do_async(task))
        await gate.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    run(interrupt())
    assert task.run_id is not None
    out = run(agent.continue_run_async(task=task, return_output=True))
    done = run(
        agent.continue_run_async(
            task=task, approvals={out.requirements[0].id: True}, return_output=True
        )
    )
    assert done.state is RunState.DONE
    assert len(attempts) == 2, "re-run on a human's word"


def test_waiting_events_are_stored_with_the_requirements(store: StoreFactory) -> None:
    agent = agent_for(store, Refunds(), [REFUND, "ok"])
    out = run(agent.do_async("x", return_output=True))
    waiting = [e for e in run(store().load_run(out.run_id)).events if isinstance(e, WaitingEvent)]
    assert [r.id for r in waiting[0].requirements] == [out.requirements[0].id]
    assert waiting[0].trigger == "needs_human"


def test_decide_run_records_decisions_without_an_agent(store: StoreFactory) -> None:
    from durable_agent import decide_run

    desk = Refunds()
    agent = agent_for(store, desk, [REFUND, "ok"])
    out = run(agent.do_async("x", return_output=True))
    state = run(decide_run(store(), out.run_id, approvals={out.requirements[0].id: True}))
    assert state is RunState.TOOL_EXEC, "decided; nobody runs it until an agent continues"
    assert desk.ran["refund"] == 0
    assert run(store().get_run(out.run_id)).lease is None
    assert run(agent.continue_run_async(run_id=out.run_id)) == "ok"
    assert desk.ran["refund"] == 1


def test_decide_run_refuses_a_run_that_is_not_waiting(store: StoreFactory) -> None:
    from durable_agent import decide_run

    out = run(agent_for(store, Refunds(), ["done"]).do_async("x", return_output=True))
    with pytest.raises(DecisionError, match="not WAITING"):
        run(decide_run(store(), out.run_id, approvals={"a": True}))


def test_run_output_draws_the_path_it_took(store: StoreFactory) -> None:
    agent = agent_for(store, Refunds(), [REFUND, "ok"])
    out = run(agent.do_async("x", return_output=True))
    assert [s.trigger for s in out.steps] == ["start", "tool_calls", "needs_human"]
    text = out.diagram().text
    assert "TOOL_EXEC --> WAITING : 3. needs_human" in text
    assert "class WAITING current" in text
