"""A SQLite store filled by real runs for the inspector's tests and screenshots.

- ``trip-crashed``: a child process is SIGKILLed by a `KillSwitchBackend`
  right after its third durable write (a tool result; the other call in
  flight); a second child continues it to DONE: the log names both owners.
- ``refund-waiting``: waits for approval of a refund (``support`` agent).
- ``hostile``: a tool whose output and a model answer hold ``<script>`` and
  ``"><img onerror=…>``; DONE.
- ``calc-done`` (DONE) and ``calc-error`` (ERROR, HTTP 400 from the model).
- ``lookup-waiting`` (an external result to enter) and ``address-waiting``
  (user input: street and city), both WAITING.

Not in the shared store, made by the tests that need them: ``charge-in-doubt``
(`make_in_doubt`: a child process is SIGKILLed inside the non-idempotent
``charge`` tool, after its intent and its effect, before its result), and a
`Worker` serving ``support`` in a child process (`start_worker`).

Run as ``python -m tests.ui.scenario start|resume|charge|worker PATH`` it is a
child process. The agent factories are what ``durable-agent ui --agent
tests.ui.scenario:support`` imports: they open the store named by
``DURABLE_AGENT_DB``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Final

from durable_agent import (
    Agent,
    ModelHTTPError,
    RunFailedError,
    ScriptedFailure,
    ScriptedModel,
    Task,
    ToolCall,
    Worker,
    tool,
)
from durable_agent.backend import Backend
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.testing.crash import KillSwitchBackend

ROOT: Final = Path(__file__).resolve().parents[2]
CRASHED: Final = "trip-crashed"
WAITING: Final = "refund-waiting"
HOSTILE: Final = "hostile"
DONE: Final = "calc-done"
FAILED: Final = "calc-error"
EXTERNAL: Final = "lookup-waiting"
USER_INPUT: Final = "address-waiting"
IN_DOUBT: Final = "charge-in-doubt"
REQUIREMENT: Final = "call_0_0:confirmation"
PAYLOAD: Final = '<script>window.__xss = 1</script>"><img src=x onerror="window.__xss = 2">'
"""What the hostile tool returns: it must show as text and never run."""


def _db() -> str:
    return os.environ["DURABLE_AGENT_DB"]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def slow_add(a: int, b: int) -> int:
    """Add two integers, slowly on the first try (in flight when the process dies)."""
    await asyncio.sleep(30 if os.environ.get("SLOW_ADD") else 0)
    return a + b


@tool(requires_confirmation=True)
def refund(order: str, amount: float) -> str:
    """Refund an order; a human approves each refund first."""
    return f"refunded {amount:.2f} EUR for order {order}"


@tool(external_execution=True)
def warehouse_stock(sku: str) -> str:
    """Ask the warehouse (a person runs this and types the answer)."""
    raise AssertionError("external: never run here")


@tool(requires_user_input=["street", "city"])
def ship_to(order: str, street: str, city: str) -> str:
    """Ship an order; a person provides the address."""
    return f"{order} ships to {street}, {city}"


def charges(db: str) -> Path:
    """The file the ``charge`` tool appends a line to for every real charge (next to the store)."""
    return Path(db.removeprefix("sqlite:///")).with_name("charges.log")


@tool(idempotent=False)
def charge(card: str) -> str:
    """Charge a card (not safe to repeat: an interrupted charge waits for a human)."""
    with charges(_db()).open("a") as ledger:
        ledger.write(f"charge {card}\n")
        ledger.flush()
        os.fsync(ledger.fileno())
    if os.environ.get("DIE_IN_CHARGE"):  # after the effect, before its result is stored
        os.kill(os.getpid(), signal.SIGKILL)
    return f"charged {card}"


def charger(db: str | Backend | None = None) -> Agent:
    """Charges a card once, then answers."""
    model = ScriptedModel([ToolCall("charge", {"card": "4242"}), "Charged."], name="scripted")
    return Agent(model, db=db or _db(), tools=[charge], name="charger", retry=1)


def hostile_tool(query: str) -> str:
    """Look something up (returns markup that must never run)."""
    return PAYLOAD


def trips(db: str | Backend) -> Agent:
    """Two parallel calls, the second slow, then the answer."""
    model = ScriptedModel(
        [[ToolCall("add", {"a": 2, "b": 3}), ToolCall("slow_add", {"a": 4, "b": 5})], "5 and 9"],
        name="scripted-planner",
    )
    return Agent(model, db=db, tools=[add, slow_add], name="planner", retry=1)


def support(db: str | Backend | None = None) -> Agent:
    """Asks for a refund a human must approve, then answers."""
    model = ScriptedModel(
        [ToolCall("refund", {"order": "A-1001", "amount": 49.9}), "Refund issued."],
        name="scripted-support",
    )
    return Agent(model, db=db or _db(), tools=[refund], name="support", retry=1)


def _hostile(db: Backend) -> Agent:
    model = ScriptedModel(
        [ToolCall("hostile_tool", {"query": PAYLOAD}), f"Found: {PAYLOAD}"], name="scripted"
    )
    return Agent(model, db=db, tools=[hostile_tool], name="researcher", retry=1)


def _calculator(db: Backend, *, fail: bool) -> Agent:
    failures = [ScriptedFailure(turn=0, error=ModelHTTPError(400, "bad request"))] if fail else []
    model = ScriptedModel([ToolCall("add", {"a": 7, "b": 7}), "14"], failures=failures)
    return Agent(model, db=db, tools=[add], name="calculator", retry=1)


async def _child(phase: str, path: str) -> None:
    os.environ["DURABLE_AGENT_DB"] = f"sqlite:///{path}"
    if phase == "charge":
        await charger().do_async(Task("Charge card 4242", run_id=IN_DOUBT))
        return
    if phase == "worker":
        # Serves until SIGTERM (a graceful stop); the test waits for store states.
        await Worker([support()], concurrency=1).run()
        return
    inner = SqliteBackend(path)
    if phase == "start":
        async with KillSwitchBackend(inner, kill_after=3) as db:
            await trips(db).do_async(Task("What are 2 + 3 and 4 + 5?", run_id=CRASHED))
    else:
        async with inner:
            await trips(inner).continue_run_async(run_id=CRASHED)


def _asks(db: Backend, call: ToolCall, tools: list[object], name: str) -> Agent:
    model = ScriptedModel([call, "Done."], name="scripted")
    return Agent(model, db=db, tools=tools, name=name, retry=1)  # type: ignore[arg-type]


async def _populate(path: Path) -> None:
    async with SqliteBackend(path, session_id="s-ui", user_id="ana") as db:
        await _calculator(db, fail=False).do_async(Task("What is 7 + 7?", run_id=DONE))
        with contextlib.suppress(RunFailedError):
            await _calculator(db, fail=True).do_async(Task("What is 7 + 7?", run_id=FAILED))
        await _hostile(db).do_async(Task(f"Look up {PAYLOAD}", run_id=HOSTILE))
        await _asks(db, ToolCall("warehouse_stock", {"sku": "B-7"}), [warehouse_stock],
                    "stock").do_async(Task("Is B-7 in stock?", run_id=EXTERNAL),
                                      return_output=True)  # fmt: skip
        await _asks(db, ToolCall("ship_to", {"order": "A-1001"}), [ship_to],
                    "shipping").do_async(Task("Ship A-1001", run_id=USER_INPUT),
                                         return_output=True)  # fmt: skip
        await support(db).do_async(
            Task("Refund order A-1001", run_id=WAITING), return_output=True
        )


def _spawn(phase: str, url: str, *, slow: bool = False, die: bool = False) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if slow:
        env["SLOW_ADD"] = "1"
    if die:
        env["DIE_IN_CHARGE"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "tests.ui.scenario", phase, url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode


def build_store(directory: Path) -> str:
    """Make ``directory/runs.db`` with the runs above; return its URL."""
    path = directory / "runs.db"
    url = f"sqlite:///{path}"
    code = _spawn("start", str(path), slow=True)
    assert code == -9, f"the first process was not SIGKILLed (exit {code})"
    code = _spawn("resume", str(path), slow=False)
    assert code == 0, f"the resuming process failed (exit {code})"
    asyncio.run(_populate(path))
    return url


def make_in_doubt(db: str) -> None:
    """Add ``charge-in-doubt`` to the store ``db``: its process SIGKILLed inside ``charge``.

    The run is left in TOOL_EXEC with the call's intent and no result, under
    the lease of a process that is gone: whoever resumes it finds the call in
    doubt (it is not idempotent) and waits for a human.
    """
    code = _spawn("charge", db.removeprefix("sqlite:///"), die=True)
    assert code == -9, f"the charging process was not SIGKILLed (exit {code})"


def start_worker(db: str) -> subprocess.Popen[str]:
    """A `Worker` serving ``support`` on the store ``db``, in a child process (stop: SIGTERM)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ui.scenario", "worker", db.removeprefix("sqlite:///")],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


if __name__ == "__main__":
    _, phase, where = sys.argv
    asyncio.run(_child(phase, where))
