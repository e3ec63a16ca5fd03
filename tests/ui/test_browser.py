"""The inspector in headless Chromium, on runs made by real processes (one SIGKILLed)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import DecisionEvent
from tests.ui import scenario
from tests.ui.server import Server


def test_the_list_shows_every_run_and_the_state_counts(page: Any) -> None:
    rows = page.locator("#runs tbody tr[data-run]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.run)")) == sorted(
        [scenario.CRASHED, scenario.WAITING, scenario.HOSTILE, scenario.DONE, scenario.FAILED,
         scenario.EXTERNAL, scenario.USER_INPUT]
    )  # fmt: skip
    assert page.locator("#state-counts .state-WAITING b").inner_text() == "3"
    assert page.locator("#state-counts .state-DONE b").inner_text() == "3"


def test_the_crashed_run_shows_where_its_process_died(page: Any, inspector: Server) -> None:
    page.goto(f"{inspector.url}/run?id={scenario.CRASHED}")
    marker = page.locator("tr.marker-crash")
    text = marker.inner_text()
    assert "CRASH" in text
    assert "gone) stopped in TOOL_EXEC" in text
    assert "stranded" in text
    # The marker sits right before the first event the new process wrote.
    following = marker.locator("xpath=following-sibling::tr[1]")
    assert "attempt 2" in following.inner_text()
    assert page.locator("img.diagram").evaluate("img => img.naturalWidth") > 0


def test_tool_output_with_markup_shows_as_text_and_never_runs(
    page: Any, inspector: Server
) -> None:
    page.goto(f"{inspector.url}/run?id={scenario.HOSTILE}")
    page.locator("details summary").first.wait_for()
    for summary in page.locator("details summary").all():
        summary.click()  # open every full text, so the payload is in the live DOM
    texts = page.locator("pre.text").all_inner_texts()
    assert any(scenario.PAYLOAD in t for t in texts)
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("script").count() == 1  # the inspector's own, nothing else


def test_approving_a_waiting_run_finishes_it_without_a_reload(
    page: Any, inspector: Server, module_store: str
) -> None:
    listing = page.context.new_page()  # the list, open meanwhile, must refresh by itself
    listing.set_default_timeout(60_000)
    listing.goto(f"{inspector.url}/?q={scenario.WAITING}")
    listing.evaluate("window.__same_page = true")
    page.goto(f"{inspector.url}/run?id={scenario.WAITING}")
    page.evaluate("window.__same_page = true")
    page.locator("button.approve").click()
    page.locator("#run-state", has_text="DONE").wait_for()
    assert page.evaluate("window.__same_page") is True  # updated in place, not reloaded
    assert "Refund issued." in page.locator("dl.fields").inner_text()
    assert page.locator("#decide").count() == 0

    async def decisions() -> list[DecisionEvent]:
        async with SqliteBackend(module_store.removeprefix("sqlite:///")) as db:
            run = await db.load_run(scenario.WAITING)
        return [e for e in run.events if isinstance(e, DecisionEvent)]

    # Playwright's sync API holds this thread's event loop: read the store in another.
    with ThreadPoolExecutor(1) as pool:
        [decision] = pool.submit(asyncio.run, decisions()).result()
    assert decision.decided_by == "ops-ana"
    listing.locator(f"tr[data-run='{scenario.WAITING}'] .state", has_text="DONE").wait_for()
    assert listing.evaluate("window.__same_page") is True
