"""Each requirement kind gets its form, and each form records the right decision.

A server without ``--agent``: decisions are recorded and the run is handed to
the fleet (it sits in TOOL_EXEC, unleased, for a worker that has the tools);
resume records who asked and hands the run over the same way. Refused
decisions change nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import DecisionEvent, StoredRun, TransitionEvent
from tests.ui import scenario, server
from tests.ui.conftest import copy_store
from tests.ui.test_security import csrf_of, request


@pytest.fixture(scope="module")
def plain(pristine_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[server.Server, str]
]:
    db = copy_store(pristine_runs, tmp_path_factory.mktemp("ui-forms"))
    running = server.start(db, extra=["--token-name", "ops-token"])
    yield running, db
    running.stop()


def load(db: str, run_id: str) -> StoredRun:
    async def read() -> StoredRun:
        async with SqliteBackend(db.removeprefix("sqlite:///")) as store:
            return await store.load_run(run_id)

    return asyncio.run(read())


def decide(running: server.Server, run_id: str, **form: str) -> tuple[int, dict[str, object]]:
    headers = {
        "Authorization": f"Bearer {running.token}",
        "Origin": running.url,
        "Accept": "application/json",
    }
    status, body = request(
        f"{running.url}/run/decide?id={run_id}",
        data={"csrf": csrf_of(running), **form},
        headers=headers,
    )
    answer: dict[str, object] = json.loads(body)
    return status, answer


def page_of(running: server.Server, run_id: str) -> str:
    status, page = request(
        f"{running.url}/run?id={run_id}", headers={"Authorization": f"Bearer {running.token}"}
    )
    assert status == 200
    return page


def test_an_external_call_gets_a_result_form_and_records_the_typed_result(
    plain: tuple[server.Server, str],
) -> None:
    running, db = plain
    assert 'name="value"' in page_of(running, scenario.EXTERNAL)
    status, answer = decide(running, scenario.EXTERNAL, requirement="call_0_0:external",
                            action="result", value='{"in_stock": 12}')  # fmt: skip
    assert status == 200, answer
    assert "handed to the fleet: a worker serving agent 'stock'" in str(answer["message"])
    assert "runs resume lookup-waiting --agent" in str(answer["message"])
    run = load(db, scenario.EXTERNAL)
    decision = run.events[-1]
    assert isinstance(decision, DecisionEvent)
    assert (decision.action, decision.value) == ("result", {"in_stock": 12})
    assert decision.decided_by == "ops-token"  # no --user: the token's name
    assert run.header.state.value == "TOOL_EXEC"


def test_a_user_input_call_gets_a_field_per_input(plain: tuple[server.Server, str]) -> None:
    running, db = plain
    page = page_of(running, scenario.USER_INPUT)
    assert 'name="field.street"' in page
    assert 'name="field.city"' in page
    status, answer = decide(running, scenario.USER_INPUT, requirement="call_0_0:user_input",
                            action="input", **{"field.street": "Rua Augusta 1",
                                               "field.city": "Lisboa"})  # fmt: skip
    assert status == 200, answer
    decision = load(db, scenario.USER_INPUT).events[-1]
    assert isinstance(decision, DecisionEvent)
    assert dict(decision.inputs) == {"street": "Rua Augusta 1", "city": "Lisboa"}


def test_a_decision_that_does_not_fit_is_refused_and_records_nothing(
    plain: tuple[server.Server, str],
) -> None:
    running, db = plain
    before = load(db, scenario.WAITING)
    for form in (
        {"requirement": "no-such-call", "action": "confirm"},
        {"requirement": scenario.REQUIREMENT, "action": "result", "value": "1"},
        {"requirement": scenario.REQUIREMENT, "action": "explode"},
    ):
        status, answer = decide(running, scenario.WAITING, **form)
        assert status == 409, answer
        assert answer["ok"] is False
    after = load(db, scenario.WAITING)
    assert after.events == before.events  # nothing recorded (only the lease was taken, given back)
    assert after.header.state == before.header.state


def test_resume_without_an_agent_hands_the_run_to_the_fleet_and_records_who_asked(
    plain: tuple[server.Server, str],
) -> None:
    running, db = plain
    headers = {"Authorization": f"Bearer {running.token}", "Origin": running.url,
               "Accept": "application/json"}  # fmt: skip
    status, body = request(f"{running.url}/run/resume?id={scenario.FAILED}",
                           data={"csrf": csrf_of(running)}, headers=headers)  # fmt: skip
    assert status == 200, body
    message = json.loads(body)["message"]
    assert "handed to the fleet: a worker serving agent 'calculator'" in message
    assert "runs resume calc-error --agent" in message
    run = load(db, scenario.FAILED)
    resumed = run.events[-1]
    assert isinstance(resumed, TransitionEvent)
    assert (resumed.trigger, resumed.requested_by) == ("resume", "ops-token")
    # Back in the state that failed, with no lease: what a worker claims.
    assert (run.header.state.value, run.header.lease) == ("MODEL_CALL", None)
    status, body = request(f"{running.url}/run/resume?id={scenario.FAILED}",
                           data={"csrf": csrf_of(running)}, headers=headers)  # fmt: skip
    assert status == 200, "a run handed over and not yet claimed may be handed on again"
    assert len(load(db, scenario.FAILED).events) == len(run.events), "nothing recorded twice"
    status, body = request(f"{running.url}/run/resume?id={scenario.DONE}",
                           data={"csrf": csrf_of(running)}, headers=headers)  # fmt: skip
    assert status == 409
    assert "nothing to resume" in json.loads(body)["error"]
