"""Human in the loop: requirements, decisions, in-doubt calls, cancellation and deadlines."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from durable_agent import (
    Agent,
    DecisionError,
    RunCancelledError,
    RunState,
    RunTimeoutError,
    RunWaitingError,
    ScriptedModel,
    Task,
    Tool,
    ToolCall,
    tool,
)
from durable_agent.records import CancelledEvent, DecisionEvent, FailedEvent, WaitingEvent
from tests._barriers import wait_until_async
from tests.engine.conftest import StoreFactory, run


class Refunds:
    """A refund desk whose effects are counted."""

    def __init__(self) -> None:
        self.ran: Counter[str] = Counter()

    def tools(self) -> list[Tool]:
        @tool(requires_confirmation=True)
        def refund(order: str, amount: float) -> str:
            """Refund an order."""
            self.ran["refund"] += 1
            return f"refunded {amount} for {order}"

        @tool(external_execution=True)
        def ship(order: str) -> str:
            """Ship an order (done by the warehouse system)."""
            self.ran["ship"] += 1
            return "never called"

        @tool(requires_user_input=["account"])
        def transfer(amount: float, account: str) -> str:
            """Transfer money to an account."""
            self.ran["transfer"] += 1
            return f"sent {amount} to {account}"

        def lookup(order: str) -> str:
            """Look an order up."""
            self.ran["lookup"] += 1
            return f"{order}: paid"

        return [refund, ship, transfer, lookup]


def agent_for(store: StoreFactory, desk: Refunds, script: list[object]) -> Agent:
    return Agent(ScriptedModel(script), db=store(), tools=desk.tools())  # type: ignore[arg-type]


REFUND = ToolCall("refund", {"order": "A1", "amount": 12.5})


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


# -- cancellation ----------------------------------------------------------------


def test_a_waiting_run_is_cancelled_at_once_and_cannot_be_continued(
    store: StoreFactory,
) -> None:
    agent = agent_for(store, Refunds(), [REFUND, "ok"])
    out = run(agent.do_async("x", return_output=True))
    cancelled = run(agent.cancel_run_async(out.run_id, reason="customer withdrew"))
    assert cancelled.state is RunState.CANCELLED
    last = run(store().load_run(out.run_id)).events[-1]
    assert isinstance(last, CancelledEvent)
    assert (last.reason, last.from_state) == ("customer withdrew", RunState.WAITING)
    with pytest.raises(RunCancelledError, match="customer withdrew"):
        run(agent.continue_run_async(run_id=out.run_id))


def test_a_running_run_stops_at_the_next_boundary_when_cancelled_elsewhere(
    store: StoreFactory,
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(step: str) -> str:
        """A slow step."""
        entered.set()
        await release.wait()
        finished.append(step)
        return step

    model = ScriptedModel([ToolCall("slow", {"step": "one"}), ToolCall("slow", {"step": "two"}),
                           "never"])
    agent = Agent(model, db=store(), tools=[slow])
    # Another agent object: it shares this process's lease owner, and the run
    # is driven by another task of this process, so it only records the request.
    canceller = Agent(ScriptedModel(["x"]), db=store())

    async def scenario() -> None:
        running = asyncio.ensure_future(agent.do_async("go", return_output=True))
        await entered.wait()
        assert agent.last_run is not None  # set before the first write: the id is known
        run_id = (await store().list_runs(states=[RunState.TOOL_EXEC])).runs[0].run_id
        assert agent.last_run.run_id == run_id
        pending = await canceller.cancel_run_async(run_id, reason="stop")
        assert pending.state is RunState.TOOL_EXEC, "the holder records CANCELLED itself"
        release.set()
        out = await running
        assert out.state is RunState.CANCELLED

    run(scenario())
    assert finished == ["one"], "the current call finished; no further call started"
    assert model.calls == 1
    assert agent.last_run is not None
    events = run(store().load_run(agent.last_run.run_id)).events
    assert [e.kind for e in events][-2:] == ["tool_finished", "cancelled"] or [
        e.kind for e in events
    ][-1] == "cancelled"
    assert any(e.kind == "tool_finished" for e in events), "history complete"


def test_cancelling_a_finished_run_is_refused(store: StoreFactory) -> None:
    from durable_agent import RunStateError

    agent = agent_for(store, Refunds(), ["done"])
    out = run(agent.do_async("x", return_output=True))
    with pytest.raises(RunStateError, match="finished run cannot be cancelled"):
        run(agent.cancel_run_async(out.run_id))


# -- deadlines and outer cancellation -------------------------------------------


def test_a_timeout_is_recorded_and_the_run_can_be_continued(store: StoreFactory) -> None:
    calls: list[int] = []

    async def slow() -> str:
        """Slow the first time."""
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(30)
        return "fast now"

    agent = Agent(ScriptedModel([ToolCall("slow"), "finished"]), db=store(), tools=[slow])
    task = Task("x")
    # The deadline must pass inside the tool: 2 s leaves a loaded machine ample time to
    # get there (a model answer and two writes), and the test waits it out once.
    with pytest.raises(RunTimeoutError, match=r"deadline of 2\.0 s") as raised:
        run(agent.do_async(task, timeout=2.0))
    assert isinstance(raised.value, TimeoutError)
    assert task.run_id is not None
    stored = run(store().load_run(task.run_id))
    assert stored.header.state is RunState.ERROR
    last = stored.events[-1]
    assert isinstance(last, FailedEvent)
    assert last.error.type.endswith("RunTimeoutError")
    assert last.failed_state is RunState.TOOL_EXEC
    assert run(agent.continue_run_async(task=task)) == "finished"


def test_an_outer_cancellation_propagates_and_leaves_a_resumable_run(
    store: StoreFactory,
) -> None:
    model = ScriptedModel(["late answer"], delay=30)
    agent = Agent(model, db=store())
    task = Task("x")

    triggers: list[asyncio.Task[None]] = []

    async def expire_once_asked(deadline: asyncio.Timeout) -> None:
        # The caller's deadline passes while the run waits for its model.
        await wait_until_async(lambda: model.calls == 1, awaiting="the run's model request")
        deadline.reschedule(asyncio.get_running_loop().time())

    async def under_a_deadline() -> None:
        async with asyncio.timeout(None) as deadline:
            triggers.append(asyncio.create_task(expire_once_asked(deadline)))
            await agent.do_async(task)

    async def outer() -> None:
        with pytest.raises(TimeoutError):
            await under_a_deadline()
        await triggers[0]

    run(outer())
    assert task.run_id is not None
    header = run(store().get_run(task.run_id))
    assert header.state is RunState.ERROR
    assert header.lease is None, "the lease is released on the way out"
    quick = Agent(ScriptedModel(["late answer"]), db=store())
    assert run(quick.continue_run_async(task=task)) == "late answer"


def test_waiting_events_are_stored_with_the_requirements(store: StoreFactory) -> None:
    agent = agent_for(store, Refunds(), [REFUND, "ok"])
    out = run(agent.do_async("x", return_output=True))
    waiting = [e for e in run(store().load_run(out.run_id)).events if isinstance(e, WaitingEvent)]
    assert [r.id for r in waiting[0].requirements] == [out.requirements[0].id]
    assert waiting[0].trigger == "needs_human"


class _SlowAppends:
    """A MemoryBackend whose appends pause before or after writing, to be cut short."""

    @staticmethod
    def build(pause: str) -> object:
        from durable_agent.backends.memory import MemoryBackend

        class Slow(MemoryBackend):
            entered = asyncio.Event()

            async def append(self, run_id, events, *, expected_seq, lease, release=False):  # type: ignore[no-untyped-def]
                if self.entered.is_set() or not any(e.kind == "tool_finished" for e in events):
                    return await super().append(
                        run_id, events, expected_seq=expected_seq, lease=lease, release=release
                    )
                if pause == "before":
                    self.entered.set()
                    await asyncio.sleep(30)
                renewed = await super().append(
                    run_id, events, expected_seq=expected_seq, lease=lease, release=release
                )
                self.entered.set()
                await asyncio.sleep(30)  # the write landed; the caller is cut off now
                return renewed

        return Slow()


@pytest.mark.parametrize("pause", ["before", "after"])
def test_an_append_cut_short_by_cancellation_is_settled_by_the_store(pause: str) -> None:
    db = _SlowAppends.build(pause)
    calls: list[str] = []

    async def step(name: str) -> str:
        """A step."""
        calls.append(name)
        return name

    model = ScriptedModel([ToolCall("step", {"name": "a"}), "done"])
    agent = Agent(model, db=db, tools=[step])  # type: ignore[arg-type]
    task = Task("go")

    async def scenario() -> None:
        running = asyncio.ensure_future(agent.do_async(task))
        await db.entered.wait()  # type: ignore[attr-defined]  # inside the tool result's append
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    run(scenario())
    assert task.run_id is not None
    stored = run(db.load_run(task.run_id))  # type: ignore[attr-defined]
    seqs = [e.seq for e in stored.events]
    assert seqs == list(range(1, len(seqs) + 1)), "no gap, no duplicate"
    assert stored.header.state is RunState.ERROR, "the interruption is recorded"
    landed = any(e.kind == "tool_finished" for e in stored.events)
    assert landed is (pause == "after")
    assert stored.header.lease is None
    out = run(agent.continue_run_async(task=task, return_output=True))
    assert out.state is RunState.DONE
    assert calls == (["a"] if pause == "after" else ["a", "a"])


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


def test_a_cancellation_reaches_the_canceller_even_when_the_record_fails() -> None:
    from durable_agent import StoreUnavailableError
    from durable_agent.backends.memory import MemoryBackend

    class Failing(MemoryBackend):
        broken = False

        async def append(self, run_id, events, *, expected_seq, lease, release=False):  # type: ignore[no-untyped-def]
            if self.broken:
                raise StoreUnavailableError("store went away")
            return await super().append(
                run_id, events, expected_seq=expected_seq, lease=lease, release=release
            )

    db = Failing()
    model = ScriptedModel(["late"], delay=30)
    agent = Agent(model, db=db)

    async def scenario() -> None:
        running = asyncio.ensure_future(agent.do_async("x"))
        await wait_until_async(lambda: model.calls == 1, awaiting="the run's model request")
        db.broken = True
        running.cancel()
        with pytest.raises(asyncio.CancelledError) as raised:
            await running
        notes = getattr(raised.value, "__notes__", [])
        assert any("could not be recorded" in n and "store went away" in n for n in notes)

    run(scenario())
