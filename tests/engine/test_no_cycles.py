"""Runs leave no reference cycles among the engine's and the stores' own objects.

A cycle is freed only by the cyclic collector, whose passes over a thousand
live runs cost more than the rest of a transition (benchmark b); each cycle
per effect also promotes the objects it holds to older generations. So these
tests run real runs with the collector disabled, then let ``gc.collect()``
find what only it could free (``DEBUG_SAVEALL`` keeps it in ``gc.garbage``),
and fail on any object of ``durable_agent`` code among it, reported by type
and module.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from durable_agent import Agent, ScriptedModel, Task, ToolCall
from durable_agent.backend import Backend
from durable_agent.backends.jsonfile import JsonFileBackend
from durable_agent.backends.memory import MemoryBackend
from durable_agent.backends.sqlite import SqliteBackend

_PACKAGE = str(Path(sys.modules["durable_agent"].__file__ or "").parent)


def _module_of(obj: object) -> str | None:
    """The module whose code made ``obj``: its class's, or its code's for functions and frames."""
    code: types.CodeType | None = None
    if isinstance(obj, types.FrameType):
        code = obj.f_code
    elif isinstance(obj, types.CoroutineType):
        code = obj.cr_code
    elif isinstance(obj, types.GeneratorType):
        code = obj.gi_code
    elif isinstance(obj, types.AsyncGeneratorType):
        code = obj.ag_code
    elif isinstance(obj, types.FunctionType):
        return obj.__module__
    elif isinstance(obj, types.MethodType):
        return _module_of(obj.__func__)
    if code is not None:
        return "durable_agent" if code.co_filename.startswith(_PACKAGE) else code.co_filename
    return type(obj).__module__


def _ours(module: str | None) -> bool:
    return module is not None and (module == "durable_agent" or module.startswith("durable_agent."))


@contextmanager
def collector_disabled() -> Iterator[Counter[str]]:
    """Yield a Counter that, on exit, holds what only the collector could free, ours only."""
    found: Counter[str] = Counter()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield found
    finally:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            for obj in gc.garbage:
                module = _module_of(obj)
                if _ours(module):
                    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
                    found[f"{type(obj).__name__} {name} ({module})"] += 1
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
            if was_enabled:
                gc.enable()


async def slow_lookup(key: int) -> str:
    """Outlasts a third of the lease's TTL, so the heartbeat renews the lease."""
    # The effect itself, not a barrier: the heartbeat's earlier timer on the
    # same loop fires first however busy the machine.
    await asyncio.sleep(0.15)
    return f"slow-{key}"


async def lookup(key: int) -> str:
    return f"value-{key}"


def _script(turns: int, tool: str) -> list[str | ToolCall]:
    script: list[str | ToolCall] = [ToolCall(tool, {"key": i}) for i in range(turns)]
    script.append("done")
    return script


StoreMaker = Callable[[Path], Backend]

STORES: dict[str, StoreMaker] = {
    "memory": lambda _: MemoryBackend(),
    "sqlite": lambda folder: SqliteBackend(folder / "runs.db"),
    "jsonfile": lambda folder: JsonFileBackend(folder / "runs"),
}


@pytest.mark.parametrize("name", sorted(STORES))
def test_concurrent_runs_leave_no_cycles_of_engine_or_store_objects(
    name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        backend = STORES[name](tmp_path)
        try:
            agent = Agent(ScriptedModel(_script(3, "lookup")), db=backend, tools=[lookup])
            await agent.do_async(Task("warm-up"))
            outputs = await asyncio.gather(
                *(agent.do_async(Task(f"task {i}"), return_output=True) for i in range(20))
            )
            assert [o.output for o in outputs] == ["done"] * 20
        finally:
            await backend.close()

    with collector_disabled() as found:
        asyncio.run(main())
    assert not found, f"reference cycles among durable_agent objects: {dict(found)}"


def test_renewing_a_lease_during_a_long_effect_leaves_no_cycles(tmp_path: Path) -> None:
    async def main() -> int:
        backend = SqliteBackend(tmp_path / "runs.db")
        try:
            renewals = 0
            renew = backend.renew_lease

            async def counted(run_id: str, lease: object) -> object:
                nonlocal renewals
                renewals += 1
                return await renew(run_id, lease)  # type: ignore[arg-type]

            object.__setattr__(backend, "renew_lease", counted)
            agent = Agent(
                ScriptedModel(_script(2, "slow_lookup")), db=backend, tools=[slow_lookup],
                lease_ttl=0.3,
            )
            outputs = await asyncio.gather(
                *(agent.do_async(Task(f"task {i}"), return_output=True) for i in range(5))
            )
            assert [o.output for o in outputs] == ["done"] * 5
            del agent, outputs, counted
            object.__delattr__(backend, "renew_lease")
            return renewals
        finally:
            await backend.close()

    with collector_disabled() as found:
        renewals = asyncio.run(main())
    assert renewals > 0, "the lease was never renewed: the test no longer covers the heartbeat"
    assert not found, f"reference cycles among durable_agent objects: {dict(found)}"
