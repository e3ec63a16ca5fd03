"""Live run pages over server-sent events, and runs continued by the fleet, end to end.

One server for the module, given the ``charger`` agent (``--agent``): the
refund run (agent ``support``) is not its agent's, so approving it hands it to
the fleet, and a real `Worker` in a child process finishes it. The in-doubt
run is made by SIGKILLing a process inside a non-idempotent tool; the page
resumes it (no worker serves ``charger``: the page's agent continues it after
``--fleet-wait``), shows the in-doubt form, and a person decides it there.
Every update reaches the page over the stream: no reload, no poll.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import DecisionEvent, StoredRun, ToolStartedEvent
from tests.ui import scenario, server
from tests.ui.conftest import copy_store
from tests.ui.test_security import request

DEADLINE = 60.0


@pytest.fixture(scope="module")
def store(pristine_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    db = copy_store(pristine_runs, tmp_path_factory.mktemp("ui-live"))
    scenario.make_in_doubt(db)
    return db


@pytest.fixture(scope="module")
def live(store: str) -> Iterator[server.Server]:
    running = server.start(
        store,
        extra=["--agent", "tests.ui.scenario:charger", "--fleet-wait", "0.5", "--user", "ops-ana"],
    )
    yield running
    running.stop()


@pytest.fixture
def watched(browser: Any, live: server.Server) -> Iterator[tuple[Any, list[str]]]:
    """A logged-in page, and the paths of every request it makes to the inspector."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(DEADLINE * 1000)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url.removeprefix(live.url).split("?")[0]))
    page.goto(live.login)
    yield page, asked
    context.close()


def load(db: str, run_id: str) -> StoredRun:
    async def read() -> StoredRun:
        async with SqliteBackend(db.removeprefix("sqlite:///")) as opened:
            return await opened.load_run(run_id)

    # Playwright's sync API holds this thread's event loop: read the store in another.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result()


def stream(live: server.Server, run_id: str, **headers: str) -> list[dict[str, Any]]:
    """The messages of one stream of a run at rest, read to its end."""
    sent = urllib.request.Request(
        f"{live.url}/events/run?id={run_id}&after={headers.pop('after', '0')}",
        headers={"Authorization": f"Bearer {live.token}", **headers},
    )
    with urllib.request.urlopen(sent, timeout=DEADLINE) as answer:
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        text = answer.read().decode()
    messages = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            messages.append({**fields, "data": json.loads(fields["data"])})
    return messages


def test_the_stream_sends_the_stored_events_after_the_last_seen_and_ends_at_rest(
    live: server.Server, store: str
) -> None:
    stored = load(store, scenario.CRASHED)
    everything = stream(live, scenario.CRASHED)
    *runs, end = everything
    assert end["event"] == "end"
    assert end["data"] == {"state": "DONE"}
    seqs = [e["seq"] for m in runs for e in m["data"]["events"]]
    assert seqs == [e.seq for e in stored.events]
    assert int(runs[-1]["id"]) == stored.header.seq
    assert "CRASH" in runs[-1]["data"]["html"]  # the body the page shows, markers and all
    # A reconnect sends Last-Event-ID: the stream goes on right after it, even
    # when the URL still says where the page began.
    resumed = stream(live, scenario.CRASHED, after="0", **{"Last-Event-ID": "4"})
    assert [e["seq"] for m in resumed[:-1] for e in m["data"]["events"]] == seqs[4:]


def test_the_stream_escapes_stored_text_and_refuses_what_it_cannot_serve(
    live: server.Server,
) -> None:
    [run, _] = stream(live, scenario.HOSTILE)
    assert scenario.PAYLOAD not in run["data"]["html"]
    assert "&lt;script&gt;" in run["data"]["html"]
    status, _ = request(f"{live.url}/events/run?id={scenario.DONE}")
    assert status == 401  # the token rules of every page
    bearer = {"Authorization": f"Bearer {live.token}"}
    refused = [(f"id={scenario.DONE}&after=999", 400), (f"id={scenario.DONE}&after=x", 400),
               ("id=no-such-run", 404)]  # fmt: skip
    for query, code in refused:
        status, _ = request(f"{live.url}/events/run?{query}", headers=bearer)
        assert status == code, query


def test_an_in_doubt_call_from_a_killed_process_is_decided_on_the_page_and_the_run_finishes(
    watched: tuple[Any, list[str]], live: server.Server, store: str
) -> None:
    page, asked = watched
    before = load(store, scenario.IN_DOUBT)
    assert before.header.state.value == "TOOL_EXEC"
    assert isinstance(before.events[-1], ToolStartedEvent), "killed between intent and result"
    assert scenario.charges(store).read_text() == "charge 4242\n"
    page.goto(f"{live.url}/run?id={scenario.IN_DOUBT}")
    page.evaluate("window.__same_page = true")
    page.locator("#actions button", has_text="resume").click()
    # The page's agent takes the run over and finds the call in doubt: WAITING.
    form = page.locator("article.kind-in_doubt")
    form.wait_for()
    # Someone checked the card processor: the charge went through. Skip it with that.
    form.locator("input[name='value']").fill(f"charged 4242 (verified) {scenario.PAYLOAD}")
    form.locator("button", has_text="skip").click()
    page.locator("#run-state", has_text="DONE").wait_for()
    assert page.evaluate("window.__same_page") is True  # updated in place, never reloaded
    assert "Charged." in page.locator("dl.fields").inner_text()
    assert any(scenario.PAYLOAD in t for t in page.locator("pre.text").all_text_contents())
    assert page.evaluate("typeof window.__xss") == "undefined"  # shown as text, never run
    assert "/events/run" in asked
    assert "/fragment/run" not in asked, "the page followed the stream, it did not poll"
    assert scenario.charges(store).read_text() == "charge 4242\n", "the charge never ran twice"
    [decision] = [e for e in load(store, scenario.IN_DOUBT).events
                  if isinstance(e, DecisionEvent)]  # fmt: skip
    assert (decision.action, decision.decided_by) == ("result", "ops-ana")


def test_approving_on_the_page_hands_the_run_to_a_worker_process_and_the_page_follows_it(
    watched: tuple[Any, list[str]], live: server.Server, store: str
) -> None:
    page, asked = watched
    worker = scenario.start_worker(store)
    try:
        page.goto(f"{live.url}/run?id={scenario.WAITING}")
        page.evaluate("window.__same_page = true")
        page.locator("button.approve").click()
        page.locator("#flash", has_text="handed to the fleet").wait_for()
        page.locator("#run-state", has_text="DONE").wait_for()
        assert page.evaluate("window.__same_page") is True
        assert "Refund issued." in page.locator("dl.fields").inner_text()
        assert "/fragment/run" not in asked, "the page followed the stream, it did not poll"
        run = load(store, scenario.WAITING)
        taken = [e.lease_taken for e in run.events if e.lease_taken is not None]
        assert taken[-1].owner.rsplit(":", 2)[1] == str(worker.pid), "the worker process ran it"
    finally:
        stop(worker)


def stop(worker: subprocess.Popen[str]) -> None:
    """SIGTERM (the worker's graceful stop), then reap it; kill it past the deadline."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        worker.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.communicate()
